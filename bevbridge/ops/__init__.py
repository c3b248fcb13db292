"""Pure-PyTorch ops (no compiled extensions), each tested against a slow, obvious float64 reference.

- ``msda``: multi-scale deformable attention (``ms_deform_attn``, ``MSDeformAttn``)
- ``frustum``, ``bev_pool``: the LSS lift (camera frustum -> ego points) and BEVPoolv2-style voxel pooling
- ``voxelize``: pillar/voxel voxelization and the BEV scatter (radar, LiDAR)
- ``iou3d``, ``nms``: rotated BEV / 3D IoU; rotated, circle and scale NMS
- ``gaussian``, ``box_coder``: CenterPoint heatmap targets, encoding and decoding

Benchmarks: ``benchmarks/bench_ops.py`` (results in ``benchmarks/RESULTS.md``).
"""
