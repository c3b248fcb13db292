"""Peak memory of reading a TOD3Cap-sized caption file: the whole JSON at once vs the streamed per-split table.

    .venv/bin/python benchmarks/bench_captions.py [--size-gb 1.5] [--keep 0.15 0.7] [--no-json-load]

Generates a caption file of about ``--size-gb`` GB in a temp folder (TOD3Cap's real file is ~1.5 GB for ~2.3M
descriptions: 2.3M entries of ~650 bytes, keyed by 32-hex annotation tokens, ``final_caption`` plus four other text
fields that are ignored), then measures in fresh subprocesses (peak resident memory, ``ru_maxrss``, and seconds):

- ``json.load`` of the whole file (what the dataset did before: every process and loader worker held it);
- building the per-split table by streaming (bevbridge/data/captions.py) for a val-sized (``--keep`` 0.15) and a
  train-sized (0.7) share of the tokens;
- loading the built table (what every process and worker holds afterwards), and its size in bytes.

Every child first imports bevbridge.data.captions (torch comes with it, as in any dataset process); the first row
is that baseline, so each row's own cost is its peak minus the baseline.

Default size is 0.15 GB so that ``make bench`` stays short; the RESULTS.md row uses ``--size-gb 1.5``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENTRY_BYTES = 650  # ~1.5 GB / 2.3M descriptions

_CHILD = r"""
import json, resource, sys, time
import numpy as np
mode, path, keep, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
import bevbridge.data.captions  # what every dataset process imports anyway (torch included)
t = time.perf_counter()
if mode == "import":
    n = 0
elif mode == "json":
    with open(path) as f:
        data = json.load(f)
    n = len(data)
elif mode == "build":
    from bevbridge.data.captions import build_caption_table
    tokens = np.load(path + ".tokens.npy")
    want = tokens[: int(len(tokens) * keep)]
    table = build_caption_table(path, want)
    table.save(__import__("pathlib").Path(out))
    n = len(table)
else:
    from bevbridge.data.captions import CaptionTable
    table = CaptionTable.load(__import__("pathlib").Path(out))
    n = len(table)
    print("NBYTES", table.nbytes())
print("RESULT", n, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2)
"""


def generate(path: Path, size_gb: float, seed: int = 0) -> int:
    """Write ~size_gb of TOD3Cap-shaped JSON; returns the number of entries (tokens saved beside it, shuffled)."""
    import numpy as np

    rng = random.Random(seed)
    n = int(size_gb * 1e9 / ENTRY_BYTES)
    words = ("car truck pedestrian bus barrier cone parked moving left right front back ego meters away road "
             "intersection crosswalk white black red blue towards across slowly standing waiting").split()
    tokens = []
    with open(path, "w") as f:
        f.write("{")
        for i in range(n):
            tok = f"{rng.getrandbits(128):032x}"
            tokens.append(tok)
            sent = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
            rec = {"final_caption": sent(40), "appearance_caption": sent(12), "motion_caption": sent(12),
                   "localization_caption": sent(14), "environment_caption": sent(12)}
            f.write(("," if i else "") + json.dumps(tok) + ": " + json.dumps(rec))
        f.write("}")
    order = np.array([t.encode() for t in tokens])
    np.random.default_rng(seed).shuffle(order)
    np.save(str(path) + ".tokens.npy", order)
    return n


def run(mode: str, path: Path, keep: float, out: Path) -> tuple[int, float, float, int | None]:
    res = subprocess.run([sys.executable, "-c", _CHILD, mode, str(path), str(keep), str(out)], capture_output=True,
                         text=True, env={**__import__("os").environ, "BEVBRIDGE_NO_PROGRESS": "1"})
    if res.returncode != 0:
        raise RuntimeError(f"{mode} failed: {res.stderr[-2000:]}")
    nbytes = None
    for line in res.stdout.splitlines():
        if line.startswith("NBYTES"):
            nbytes = int(line.split()[1])
        if line.startswith("RESULT"):
            _, n, secs, gb = line.split()
    return int(n), float(secs), float(gb), nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=0.15)
    ap.add_argument("--keep", type=float, nargs="+", default=[0.15, 0.7])
    ap.add_argument("--no-json-load", action="store_true", help="skip the whole-file json.load row")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-captions-") as d:
        path = Path(d) / "final_caption_bbox_token.json"
        t = time.perf_counter()
        n = generate(path, args.size_gb)
        size = path.stat().st_size / 1e9
        print(f"caption file: {n:,} entries, {size:.2f} GB (generated in {time.perf_counter() - t:.0f} s)")
        print(f"{'what':<46} {'entries':>10} {'seconds':>8} {'peak RSS GB':>12} {'table MB':>9}")
        _, _, base, _ = run("import", path, 1.0, Path(d) / "unused")
        print(f"{'baseline: a process that imported bevbridge':<46} {'':>10} {'':>8} {base:>12.2f} {'':>9}")
        if not args.no_json_load:
            k, secs, gb, _ = run("json", path, 1.0, Path(d) / "unused")
            print(f"{'json.load of the whole file':<46} {k:>10,} {secs:>8.1f} {gb:>12.2f} {'':>9}")
        for keep in args.keep:
            out = Path(d) / f"table_{keep}.npz"
            k, secs, gb, _ = run("build", path, keep, out)
            print(f"{f'stream + build table ({keep:.0%} of tokens)':<46} {k:>10,} {secs:>8.1f} {gb:>12.2f} "
                  f"{'':>9}")
            k, secs, gb, nbytes = run("load", path, keep, out)
            print(f"{f'load the built table ({keep:.0%} of tokens)':<46} {k:>10,} {secs:>8.1f} {gb:>12.2f} "
                  f"{nbytes / 1e6:>9.0f}")


if __name__ == "__main__":
    main()
