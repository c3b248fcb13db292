"""A procedural world written in nuScenes' format, so the official devkit (and everything built on it) loads it.

Use :func:`generate` to write one, :func:`ensure_world` to reuse a cached one with the same parameters, and
:func:`is_complete` to check. Files, one concern each: ``roads`` (road network), ``route`` (ego path), ``objects``
(what is where and how it moves), ``world`` (global placement, ego, boxes over time), ``ground`` (texture raster),
``rig`` (sensor calibration), ``raycast`` (shared vectorised ray casting), ``camera`` / ``lidar`` / ``radar`` (the
sensors), ``captions`` (TOD3Cap-style text), ``recorder`` (one scene's drive), ``tables`` (devkit tables),
``mapjson`` (map expansion + semantic prior), ``writer`` (the whole world, atomically).
"""

from .captions import CAPTIONS_FILENAME
from .recorder import SceneRecorder, Sweeps
from .writer import (DEFAULT_IMAGE_SIZE, DEFAULT_SAMPLES_PER_SCENE, DEFAULT_SCENES, MANIFEST, TRAIN_SPLIT, VAL_SPLIT,
                     ensure_world, generate, generation_params, is_complete, scene_names, scene_specs)

__all__ = ["generate", "ensure_world", "is_complete", "generation_params", "scene_names", "scene_specs",
           "SceneRecorder", "Sweeps", "CAPTIONS_FILENAME",
           "DEFAULT_IMAGE_SIZE", "DEFAULT_SAMPLES_PER_SCENE", "DEFAULT_SCENES", "MANIFEST", "TRAIN_SPLIT",
           "VAL_SPLIT"]
