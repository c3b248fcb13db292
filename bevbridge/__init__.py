"""bevbridge: pure-PyTorch bird's-eye-view perception (CTAB, BEVFormer v2, BridgeTA, MTA) on one shared core."""

__version__ = "0.1.0"
