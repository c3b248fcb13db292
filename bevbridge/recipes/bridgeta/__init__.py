"""BridgeTA (papers/bridgeta.txt): teacher-assistant distillation of a LiDAR-camera BEVFusion into BEVFusion-C."""
