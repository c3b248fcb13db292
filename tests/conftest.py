"""Shared test setup: offline, deterministic, quiet; the session-wide synthetic world fixture."""

import dataclasses
import functools
import json
import os
from pathlib import Path

# Before anything imports torch (its OpenMP runtime reads this once): spinning OpenMP threads make every test
# 5-20x slower when anything else competes for the 2 cores (bevbridge/__init__.py sets the same for the CLI).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# No per-example deadline: on a loaded 2-core machine one example of a geometry property can take > 200 ms, which
# says nothing about the property (hypothesis's default deadline made test_geometry flaky under load).
settings.register_profile("bevbridge", deadline=None)
settings.load_profile("bevbridge")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BEVBRIDGE_NO_PROGRESS", "1")


@pytest.fixture(scope="session", autouse=True)
def _private_info_cache(tmp_path_factory):
    """Dataset info caches of this session go to a temp folder, never to the user's ~/.cache."""
    old = os.environ.get("BEVBRIDGE_CACHE_DIR")
    os.environ["BEVBRIDGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("bevbridge_cache"))
    yield
    if old is None:
        os.environ.pop("BEVBRIDGE_CACHE_DIR", None)
    else:
        os.environ["BEVBRIDGE_CACHE_DIR"] = old


# ------------------------------------------------------------------------------------------ synthetic world fixture
# Small on purpose: 3 scenes (2 train + 1 val) x 4 keyframes, 72x128 images (nuScenes' 900x1600 scaled by 0.08).
SYNTH_TEST_PARAMS = dict(scenes=3, samples_per_scene=4, image_size=(72, 128), seed=0, version="v1.0-mini")


@dataclasses.dataclass(frozen=True)
class SynthWorld:
    """A written synthetic world: ``dataroot``/``version`` for the devkit, the custom ``train_split``/``val_split``
    names (in DIR/VERSION/splits.json), the generation ``params``, and a shared devkit handle ``nusc``."""

    dataroot: Path
    version: str
    train_split: str
    val_split: str
    scenes: tuple[str, ...]
    params: dict

    @functools.cached_property
    def nusc(self):
        from nuscenes.nuscenes import NuScenes

        return NuScenes(self.version, dataroot=str(self.dataroot), verbose=False)

    def split_scenes(self, split: str) -> list[str]:
        return json.loads((self.dataroot / self.version / "splits.json").read_text())[split]


@pytest.fixture(scope="session")
def synth_world(tmp_path_factory) -> SynthWorld:
    """A small synthetic nuScenes-format world, generated once per test session (about 2 s)."""
    from bevbridge.data import synth

    root = synth.generate(tmp_path_factory.mktemp("synth") / "nuscenes", **SYNTH_TEST_PARAMS)
    names, _ = synth.scene_names(SYNTH_TEST_PARAMS["scenes"])
    return SynthWorld(root, SYNTH_TEST_PARAMS["version"], synth.TRAIN_SPLIT, synth.VAL_SPLIT, tuple(names),
                      dict(SYNTH_TEST_PARAMS))
