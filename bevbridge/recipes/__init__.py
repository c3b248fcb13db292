"""Training-time recipes: modules that wrap a deployable model with what only training needs.

- BridgeTA (papers/bridgeta.txt): a frozen LiDAR-camera teacher, a teacher assistant and the dual-path multi-level
  distillation losses around the camera-only student (``bevbridge/recipes/bridgeta/``).
- MTA (papers/mta.txt): BEV-language and detection-captioning alignment around the TOD3Cap captioner
  (``bevbridge/recipes/mta/``).

A recipe is an ``nn.Module`` that follows the model contract (bevbridge/models/contract.py: ``forward``, ``loss``,
``predict``, ``scalars``, ``data_needs``, ``kind``) and names its deployable model in ``deployable_attr``:

    class BridgeTA(nn.Module):
        kind = "bridgeta"
        deployable_attr = "student"                  # self.student is a full model of kind "bevfusion"
        def __init__(self, cfg):
            self.student = BEVFusionSeg(cfg.student)
            self.teacher = freeze(BEVFusionSeg(cfg.teacher))      # eval mode for good, not optimised
            self.assistant = ...                                  # trained, dropped at deployment
        def predict(self, outputs, batch):           # the deployable model's predictions
            return self.student.predict(outputs["student"], batch)

The engine treats it like any model: its forward and loss run inside the one module DDP wraps (so the assistant's
and the projectors' gradients are reduced), frozen sub-models stay in eval mode and out of the optimizer, and each
checkpoint also holds ``deployable.safetensors``: the student under its own keys, so ``bevbridge eval
configs/bridgeta/bevfusion_cam_seg_synth.yaml --ckpt <a BridgeTA run>`` evaluates the distilled student directly.
Each recipe's schema (``config.py``) sits beside it and is listed in bevbridge/config/schema.py's ModelSection.
"""
