"""bevbridge: pure-PyTorch bird's-eye-view perception (CTAB, BEVFormer v2, BridgeTA, MTA) on one shared core."""

import os as _os

# OpenMP worker threads (torch's intra-op pool) spin while they wait for work. When anything else runs on the
# machine -- our own DataLoader workers, the evaluation's devkit, another job -- spinning threads steal the cores
# they wait for: a CTAB training step measured 8x slower here (benchmarks/RESULTS.md). Passive waiting costs little
# on an idle machine. It must be set before torch is imported; a value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
