"""Evaluation with the official metrics; scores plain tensors/arrays and never imports a model.

- ``detection_export``: ego-frame boxes -> the nuScenes devkit's results JSON (global frame), and back.
- ``detection``: run the devkit's ``DetectionEval`` on a results file (mAP, NDS, TP errors, per-class AP).
- ``segmentation``: :class:`~bevbridge.eval.segmentation.SegmentationMeter`, BEVFusion's IoU over thresholds.
- ``captioning``: m@IoU=k dense-captioning metrics (Scan2Cap / MTA) with pycocoevalcap.

Submodules are imported lazily by their users (the devkit and pycocoevalcap are slow to import).
"""
