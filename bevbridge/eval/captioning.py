"""Dense 3D captioning metrics: m@IoU=k with BLEU-4, METEOR, ROUGE-L and CIDEr (pycocoevalcap, PTB tokenizer).

MTA Sec. 4.1 ("Captioning Metrics"), after Scan2Cap [8]: for the N ground-truth box-caption pairs (b_i, c_i), with
(b^_i, c^_i) the prediction matched to GT i,

    m@IoU=k = (1 / N) * sum_i  m(c^_i, c_i) * 1{ IoU(b^_i, b_i) > k }

where m is a captioning metric, so an unmatched GT (no prediction with IoU > k) counts zero. Choices made here:

- Matching: each GT box is matched to the prediction of the same sample with the highest IoU (Scan2Cap's
  assignment); several GTs may match the same prediction.
- m is the per-caption score returned by pycocoevalcap (sentence-level BLEU-4, METEOR per segment, ROUGE-L,
  CIDEr-D). CIDEr's document frequencies come from the references of ALL N GT objects, so they do not depend on k.
  Captions and references go through the PTB tokenizer first (lower-cased, punctuation dropped).
- ``iou_mode="3d"`` (default; MTA): exact rotated 3D IoU. ``iou_mode="scale"``: IoU of the sizes alone, as if the
  boxes shared centre and heading (the devkit's ``scale_iou``), which TOD3Cap's released evaluation uses. That code
  also matches the other way round (each prediction to its best GT) and scales corpus-level scores by
  kept/#predictions; this module keeps MTA's GT-centred formula in both modes, so only the IoU differs.
- With the GT objects' class labels given, ``class_named@{k}`` is the fraction of GT objects matched with
  IoU > k whose matched caption names exactly their class (bevbridge/eval/caption_class.py).
- Scores are returned on pycocoevalcap's scale (BLEU/METEOR/ROUGE in [0, 1], CIDEr in [0, 10]); the MTA and
  TOD3Cap tables print them x100.

METEOR and the PTB tokenizer are Java programs bundled with pycocoevalcap: :func:`require_java` checks for ``java``
before any work. SPICE is not used (it downloads Stanford CoreNLP at run time).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bevbridge.eval.box_iou import box_iou

__all__ = ["IOU_THRESHOLDS", "CAPTION_METRICS", "JavaNotFoundError", "require_java", "CaptionMeter", "m_at_iou"]

IOU_THRESHOLDS: tuple[float, ...] = (0.25, 0.5)
CAPTION_METRICS: tuple[str, ...] = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
_PLACEHOLDER = "none"  # stands in for a missing/empty candidate so the scorers run; its scores are forced to 0


@contextlib.contextmanager
def _java_stderr_captured():
    """Send file descriptor 2 (where the Java tools print progress) to a temp file; yields a reader for it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)

        def read() -> str:
            tmp.seek(0)
            return tmp.read().decode(errors="replace").strip()

        try:
            yield read
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class JavaNotFoundError(RuntimeError):
    """Java is missing: METEOR and the PTB tokenizer cannot run."""


def require_java() -> str:
    """The path of ``java``, or a clear error saying what is missing and how to install it."""
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            "captioning metrics need a Java runtime: pycocoevalcap's PTB tokenizer and METEOR are Java programs, "
            "and no 'java' was found on PATH. Install one (Debian/Ubuntu: sudo apt-get install "
            "openjdk-17-jre-headless) or put an existing java on PATH.")
    return java


@dataclass
class _Match:
    """One GT object: its reference captions, the best-IoU prediction's caption (None if none) and that IoU."""

    refs: list[str]
    candidate: str | None
    iou: float
    label: int = -1  # the GT object's class (DETECTION_CLASSES index), -1 if not given


class CaptionMeter:
    """Accumulates GT-to-prediction matches sample by sample; :meth:`compute` scores them all at once.

    >>> meter = CaptionMeter(iou_mode="3d")
    >>> meter.update(gt_boxes, gt_captions, pred_boxes, pred_captions)   # per sample, same frame
    >>> meter.compute()["CIDEr@0.5"]
    """

    def __init__(self, iou_mode: str = "3d", iou_thresholds: Sequence[float] = IOU_THRESHOLDS):
        if iou_mode not in ("3d", "scale"):
            raise ValueError(f"unknown IoU mode {iou_mode!r}; expected '3d' or 'scale'")
        self.iou_mode = iou_mode
        self.iou_thresholds = tuple(float(k) for k in iou_thresholds)
        self.matches: list[_Match] = []

    def __len__(self) -> int:
        return len(self.matches)

    def update(self, gt_boxes: Any, gt_captions: Sequence[str | Sequence[str]], pred_boxes: Any,
               pred_captions: Sequence[str], gt_labels: Sequence[int] | None = None) -> None:
        """One sample: ``gt_boxes [n, >=7]`` with one caption (or a list of reference captions) each,
        ``pred_boxes [m, >=7]`` with one caption each; boxes (x, y, z, l, w, h, yaw, ...) in one frame;
        ``gt_labels [n]`` (optional) the GT classes, for ``class_named@k``."""
        labels = [-1] * len(gt_boxes) if gt_labels is None else [int(x) for x in gt_labels]
        n, m = len(gt_boxes), len(pred_boxes)
        if len(gt_captions) != n or len(pred_captions) != m:
            raise ValueError(f"CaptionMeter.update: {n} GT boxes with {len(gt_captions)} captions, {m} predicted "
                             f"boxes with {len(pred_captions)} captions; need one caption per box")
        refs = [[c] if isinstance(c, str) else list(c) for c in gt_captions]
        for i, r in enumerate(refs):
            if not r or any(not isinstance(s, str) or not s.strip() for s in r):
                raise ValueError(f"CaptionMeter.update: GT object {i} has an empty reference caption: {r!r}")
        if m == 0:
            self.matches += [_Match(r, None, 0.0, lab) for r, lab in zip(refs, labels)]
            return
        iou = box_iou(gt_boxes, pred_boxes, self.iou_mode)  # [n, m]
        best = iou.argmax(1) if n else np.zeros(0, dtype=np.int64)
        for i, r in enumerate(refs):
            self.matches.append(_Match(r, str(pred_captions[best[i]]), float(iou[i, best[i]]), labels[i]))

    def merge(self, other: CaptionMeter | Sequence[_Match]) -> CaptionMeter:
        """Add another meter's matches (e.g. gathered from other ranks with ``all_gather_object``); returns self."""
        self.matches += list(other.matches if isinstance(other, CaptionMeter) else other)
        return self

    def compute(self) -> dict[str, float]:
        """``{metric}@{k}`` for metric in CAPTION_METRICS and k in the IoU thresholds, ``recall@{k}`` (fraction of GT
        objects matched with IoU > k) and ``num_gt``."""
        N = len(self.matches)
        out: dict[str, float] = {"num_gt": float(N)}
        if N == 0:
            raise ValueError("CaptionMeter.compute: no GT objects were added")
        scores = score_captions([m.refs for m in self.matches], [m.candidate for m in self.matches])
        ious = np.array([m.iou for m in self.matches])
        for k in self.iou_thresholds:
            kept = ious > k
            for name in CAPTION_METRICS:
                out[f"{name}@{k:g}"] = float((scores[name] * kept).sum() / N)
            out[f"recall@{k:g}"] = float(kept.mean())
            labelled = kept & np.array([m.label >= 0 for m in self.matches])
            if labelled.any():
                from bevbridge.eval.caption_class import names_exactly

                named = [names_exactly(m.candidate, m.label) for m, keep in zip(self.matches, labelled) if keep]
                out[f"class_named@{k:g}"] = float(np.mean(named))
        return out


def score_captions(refs: Sequence[Sequence[str]], candidates: Sequence[str | None]) -> dict[str, np.ndarray]:
    """Per-object scores ``{metric: [N]}`` of each candidate against its references (0 for a missing or empty
    candidate); CIDEr's document frequencies come from all N reference sets."""
    require_java()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    N = len(refs)
    one_line = lambda text: " ".join(text.split())  # noqa: E731 - the tokenizer reads one sentence per line
    sentences = {("ref", i, j): [{"caption": one_line(r)}] for i in range(N) for j, r in enumerate(refs[i])}
    sentences.update({("cand", i): [{"caption": one_line(c) if c and c.strip() else _PLACEHOLDER}]
                      for i, c in enumerate(candidates)})
    with _java_stderr_captured() as java_said:
        try:
            tokens = PTBTokenizer().tokenize(sentences)  # one JVM for every sentence
            gts = {i: [tokens[("ref", i, j)][0] for j in range(len(refs[i]))] for i in range(N)}
            res = {i: [tokens[("cand", i)][0]] for i in range(N)}
        except (OSError, KeyError, IndexError) as e:  # it writes a temp file beside its jar, then runs java
            raise RuntimeError(f"pycocoevalcap's PTB tokenizer failed ({e!r}); java said: {java_said()!r}") from e
    for i in range(N):
        if any(not r for r in gts[i]):
            raise ValueError(f"GT object {i}: a reference caption is empty after tokenization: {refs[i]!r}")
    empty = np.array([not c or not c.strip() or not res[i][0] for i, c in enumerate(candidates)])
    for i in np.nonzero(empty)[0]:
        res[int(i)] = [_PLACEHOLDER]

    out: dict[str, np.ndarray] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # BleuScorer prints its corpus statistics
        out["BLEU-4"] = np.asarray(Bleu(4).compute_score(gts, res)[1][3], dtype=np.float64)
    meteor = Meteor()
    try:
        out["METEOR"] = np.asarray(meteor.compute_score(gts, res)[1], dtype=np.float64)
    finally:
        del meteor  # stops its java process
    out["ROUGE-L"] = np.asarray(Rouge().compute_score(gts, res)[1], dtype=np.float64)
    out["CIDEr"] = np.asarray(Cider().compute_score(gts, res)[1], dtype=np.float64)
    for name in out:
        out[name][empty] = 0.0
    return out


def m_at_iou(gt_boxes: Sequence[Any], gt_captions: Sequence[Sequence[str | Sequence[str]]],
             pred_boxes: Sequence[Any], pred_captions: Sequence[Sequence[str]], iou_mode: str = "3d",
             iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict[str, float]:
    """m@IoU=k over a list of samples (one entry per sample in each argument); see :class:`CaptionMeter`."""
    if not (len(gt_boxes) == len(gt_captions) == len(pred_boxes) == len(pred_captions)):
        raise ValueError("m_at_iou: the four arguments must list the same number of samples")
    meter = CaptionMeter(iou_mode, iou_thresholds)
    for args in zip(gt_boxes, gt_captions, pred_boxes, pred_captions):
        meter.update(*args)
    return meter.compute()
