"""BEVFusion's map-segmentation models (camera-only and LiDAR-camera): BridgeTA's student and teacher."""
