"""What the captioner needs from its detector, and how it picks objects from the detector's outputs.

The detector is BEVFormer-tiny (bevbridge/models/bevformer/model.py); tests use a stand-in with the same outputs
(tests/tod3cap_standin.py). The interface, all of it a BEVModel (models/contract.py) plus ``match``::

    out = detector(batch)             # {"bev": [B, C, H, W] BEV features,
                                      #  "det": {"cls_scores": [L, B, Nq, K] class logits per decoder layer,
                                      #          "box_codes": [L, B, Nq, 10] box codes (x, y, log l, log w, z,
                                      #                       log h, sin, cos, vx, vy; metres),
                                      #          "query_feats": [L, B, Nq, C] decoder outputs (object embeddings),
                                      #          "queries_per_group": n (queries [0, n) are the first group), ...}}
    detector.loss(out, batch)         # {"loss": scalar, named terms}
    detector.match(out, batch)        # per sample (query_idx [k], gt_idx [k]): the Hungarian matching of the last
                                      # decoder layer's queries to batch.gt_boxes[b] (the one its loss uses)
    detector.predict(out, batch)      # list[Prediction]: the detections (boxes, scores, labels)
    detector.data_needs()             # DataNeeds

Objects for the captioner are (sample, query) pairs: in training the matched queries with their ground-truth index
(:func:`matched_objects`), at inference the top-k (query, class) scores of the last layer's first group, as TOD3Cap
captions them (:func:`top_objects`). Their embeddings are read with :func:`gather_objects`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Objects", "matched_objects", "top_objects", "gather_objects", "decode_box_codes"]


@dataclass
class Objects:
    """N objects of a batch: ``sample [N]`` (batch index), ``query [N]`` (decoder query index); in training
    ``gt [N]`` (index into ``batch.gt_boxes[sample]``), at inference ``score [N]`` and ``label [N]``."""

    sample: torch.Tensor
    query: torch.Tensor
    gt: torch.Tensor | None = None
    score: torch.Tensor | None = None
    label: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.sample)


def matched_objects(matches: list[tuple[torch.Tensor, torch.Tensor]], per_sample: int,
                    generator: torch.Generator | None = None) -> Objects:
    """Up to ``per_sample`` matched (query, gt) pairs per sample, a random subset without repetition.

    TOD3Cap draws exactly 8 per sample, repeating objects when a sample has fewer; repeating only re-weights the
    per-sample mean of the caption loss, and in MTA's DCA (a contrastive loss over the batch's objects) a repeated
    object would be its own negative, so objects are not repeated here."""
    samples, queries, gts = [], [], []
    for b, (q, g) in enumerate(matches):
        if len(q) > per_sample:
            keep = torch.randperm(len(q), generator=generator)[:per_sample].sort().values.to(q.device)
            q, g = q[keep], g[keep]
        samples.append(torch.full_like(q, b))
        queries.append(q)
        gts.append(g)
    dev = matches[0][0].device if matches else torch.device("cpu")
    cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long, device=dev)  # noqa: E731
    return Objects(cat(samples), cat(queries), gt=cat(gts))


def top_objects(det: dict, k: int) -> Objects:
    """The top ``k`` (query, class) scores (sigmoid of the last layer's logits, first group) of each sample: the
    objects TOD3Cap captions at inference (a query may appear once per class it scores high in)."""
    n = det["queries_per_group"]
    cls = det["cls_scores"][-1, :, :n].float().sigmoid()  # [B, n, K]
    B, _, K = cls.shape
    k = min(k, n * K)
    scores, idx = cls.flatten(1).topk(k, dim=1)  # [B, k]
    sample = torch.arange(B, device=cls.device)[:, None].expand(B, k)
    return Objects(sample.flatten(), torch.div(idx, K, rounding_mode="floor").flatten(), score=scores.flatten(),
                   label=(idx % K).flatten())


def gather_objects(det: dict, objs: Objects) -> dict[str, torch.Tensor]:
    """The last decoder layer's outputs for ``objs``: ``box_code [N, 10]``, ``query [N, C]``, ``cls_logits [N, K]``
    (with their gradients)."""
    s, q = objs.sample, objs.query
    return {"box_code": det["box_codes"][-1][s, q], "query": det["query_feats"][-1][s, q],
            "cls_logits": det["cls_scores"][-1][s, q]}


def decode_box_codes(code: torch.Tensor) -> torch.Tensor:
    """Box codes ``[..., 10]`` -> boxes ``[..., 9]`` (x, y, z, l, w, h, yaw, vx, vy): BEVFormer's decoding."""
    from bevbridge.models.bevformer.detr_head import decode_boxes

    return decode_boxes(code)
