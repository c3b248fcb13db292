"""Fault injection on the data side: corrupt sensor files, a corrupt info cache, tables missing a channel, skipping bad
training samples, concurrent cache builds, and `bevbridge check-data`.

Every fault is made for real on a copy of a tiny synthetic world (never the shared one), and each test's docstring
says which bug it catches.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bevbridge.data.integrity import CorruptDataFile, MissingChannels
from bevbridge.data.nuscenes import NuScenesDataset

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ctab" / "rcbevdet_r50_det_synth.yaml"


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    """2 scenes x 3 keyframes (synth_train: scene 0, synth_val: scene 1), 72x128 images; generated once (~1 s)."""
    from bevbridge.data import synth

    return synth.generate(tmp_path_factory.mktemp("tiny") / "world", scenes=2, samples_per_scene=3,
                          image_size=(72, 128), seed=0, version="v1.0-mini")


def copy_world(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def dataset(root: Path, split: str = "synth_train", **kw) -> NuScenesDataset:
    opts = dict(image_size=(64, 112), radar_sweeps=3, lidar_sweeps=1)
    return NuScenesDataset(root, "v1.0-mini", split, **{**opts, **kw})


def bevbridge(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("bevbridge")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "bevbridge.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "BEVBRIDGE_NO_PROGRESS": "1"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def train_args(root: Path, out: Path, *overrides: str) -> list[str]:
    return ["train", str(CONFIG), f"data.dataroot={root}", "data.train_split=synth_train",
            "data.val_split=synth_val", "data.batch_size=3", *overrides, "--out", str(out)]


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The CLI failed with one error line and no traceback; returns that line."""
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith(("bevbridge ", "error:"))]
    assert len(errors) == 1, r.stderr
    return errors[0]


# ------------------------------------------------------------------------------------------------ corrupt files
def _truncate(frac: float):
    return lambda raw: raw[: int(len(raw) * frac)]


FILE_FAULTS = {  # name: (which file of sample 0, how to damage its bytes, expected words in the error)
    "jpeg_truncated": ("cam", _truncate(0.9), "truncated JPEG"),  # headers intact: OpenCV decodes grey rows
    "jpeg_garbage": ("cam", lambda raw: bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8)),
                     "not a decodable image"),
    "jpeg_empty": ("cam", lambda raw: b"", "empty file"),
    "jpeg_other_size": ("cam", lambda raw: _jpeg(40, 60), "the image is 60x40, the tables say 128x72"),
    "pcd_truncated_header": ("radar", lambda raw: raw[:120], "no DATA line"),
    "pcd_truncated_data": ("radar", lambda raw: raw[:-25], "truncated"),
    "pcd_empty": ("radar", lambda raw: b"", "empty file"),
    "bin_truncated": ("lidar", lambda raw: raw[:-7], "not a whole number of 5-float32 points"),
    "bin_empty": ("lidar", lambda raw: b"", "empty file"),
}


def _jpeg(h: int, w: int) -> bytes:
    import cv2

    return cv2.imencode(".jpg", np.zeros((h, w, 3), np.uint8))[1].tobytes()


@pytest.fixture(scope="module")
def faulty(tiny_world, tmp_path_factory):
    root = copy_world(tiny_world, tmp_path_factory.mktemp("faulty") / "world")
    return root, dataset(root)


@pytest.mark.parametrize("fault", sorted(FILE_FAULTS))
def test_a_corrupt_sensor_file_is_one_line_naming_it(faulty, fault):
    """Catches: a truncated JPEG decoded with grey rows and trained on (OpenCV only prints a warning), a radar PCD
    failing with `ValueError: substring not found` and no path, a `.pcd.bin` losing points silently or failing in
    a reshape without a path, an image of another size than the tables (intrinsics would be wrong)."""
    root, ds = faulty
    which, damage, words = FILE_FAULTS[fault]
    info = ds.samples[0]
    rec = {"cam": info["cams"]["CAM_BACK"], "radar": info["radars"]["RADAR_FRONT"][0], "lidar": info["lidar"]}[which]
    path = root / rec["filename"]
    good = path.read_bytes()
    path.write_bytes(damage(good))
    try:
        with pytest.raises(CorruptDataFile) as exc:
            ds[0]
    finally:
        path.write_bytes(good)
    msg = str(exc.value)
    assert str(path) in msg and words in msg and info["token"] in msg and "\n" not in msg, msg
    assert exc.value.path == str(path)
    ds[0]  # restored: loads again


def test_a_missing_sensor_file_stays_a_file_not_found_error(faulty):
    """Catches: the error classes changing what callers catch (a missing file must stay a FileNotFoundError)."""
    root, ds = faulty
    path = root / ds.samples[1]["cams"]["CAM_FRONT"]["filename"]
    good = path.read_bytes()
    path.unlink()
    try:
        with pytest.raises(FileNotFoundError, match=f"camera image \\(CAM_FRONT\\) missing: {path}"):
            ds[1]
    finally:
        path.write_bytes(good)


# ------------------------------------------------------------------------------------------------- info cache
def test_a_truncated_info_cache_is_rebuilt_with_one_line_naming_it(tiny_world, tmp_path, caplog):
    """Catches: a truncated or empty `.npz` cache raising `BadZipFile` at every start instead of being rebuilt."""
    cache = tmp_path / "infos.npz"
    dataset(tiny_world, cache_path=cache)
    for damage in (lambda raw: raw[: len(raw) // 2], lambda raw: b""):
        cache.write_bytes(damage(cache.read_bytes()))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="bevbridge"):
            ds = dataset(tiny_world, cache_path=cache)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and str(cache) in warnings[0] and "corrupt" in warnings[0], warnings
        assert len(ds) == 3 and ds[0].images.shape[0] == 6
    (tmp_path / "notes.npz").write_text("not a cache")  # a file the user named that is not ours: refused, kept
    with pytest.raises(Exception, match="not a schema-3 cache"):
        dataset(tiny_world, cache_path=tmp_path / "notes.npz")
    assert (tmp_path / "notes.npz").read_text() == "not a cache"


BUILD_ONCE = textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    from bevbridge.log import setup_logging
    from bevbridge.data.nuscenes import NuScenesDataset
    setup_logging()
    root, cache, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    Path(sys.argv[4]).touch()  # ready
    while not go.exists():
        time.sleep(0.01)
    ds = NuScenesDataset(root, "v1.0-mini", "synth_train", image_size=(64, 112), radar_sweeps=3, cache_path=cache)
    print("samples", len(ds))
""")


def test_two_processes_on_a_missing_cache_build_it_once(tiny_world, tmp_path):
    """Catches: every torchrun rank building the info cache at the same time (time and memory x ranks)."""
    cache, go = tmp_path / "cache" / "infos.npz", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "BEVBRIDGE_NO_PROGRESS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD_ONCE, str(tiny_world), str(cache), str(go),
                               str(tmp_path / f"ready{k}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for k in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{k}").exists() for k in range(2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both start opening the missing cache at once
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    logs = "".join(err for _, err in outs)
    assert all("samples 3" in out for out, _ in outs)
    assert logs.count("info cache: 6 samples of v1.0-mini") == 1, logs  # built once
    assert "built by another process, loaded" in logs, logs
    assert (tmp_path / "cache" / "infos.npz.lock").exists()


# ---------------------------------------------------------------------------------------------- missing channels
def drop_keyframes(root: Path, channel: str, sample_tokens) -> None:
    """Remove the keyframe sample_data of ``channel`` for these samples, relinking the sensor's prev/next chain."""
    folder = root / "v1.0-mini"
    sensors = {s["token"]: s["channel"] for s in json.loads((folder / "sensor.json").read_text())}
    calib = {c["token"]: sensors[c["sensor_token"]]
             for c in json.loads((folder / "calibrated_sensor.json").read_text())}
    records = json.loads((folder / "sample_data.json").read_text())
    by_token = {r["token"]: r for r in records}
    victims = {r["token"] for r in records if r["is_key_frame"] and r["sample_token"] in set(sample_tokens)
               and calib[r["calibrated_sensor_token"]] == channel}
    assert victims
    for t in victims:
        r = by_token[t]
        if r["prev"]:
            by_token[r["prev"]]["next"] = r["next"]
        if r["next"]:
            by_token[r["next"]]["prev"] = r["prev"]
    (folder / "sample_data.json").write_text(json.dumps([r for r in records if r["token"] not in victims]))


CHANNEL_CASES = {"CAM_BACK": "synth_train", "RADAR_FRONT_LEFT": "synth_train", "LIDAR_TOP": "synth_val"}


@pytest.fixture(scope="module")
def channel_worlds(tiny_world, tmp_path_factory):
    """One copy per case; samples 1 and 2 of the case's split lack the channel."""
    out = {}
    for channel, split in CHANNEL_CASES.items():
        root = copy_world(tiny_world, tmp_path_factory.mktemp(f"no_{channel}") / "world")
        scene = json.loads((root / "v1.0-mini" / "splits.json").read_text())[split][0]
        scenes = {s["token"]: s["name"] for s in json.loads((root / "v1.0-mini" / "scene.json").read_text())}
        samples = [s for s in json.loads((root / "v1.0-mini" / "sample.json").read_text())
                   if scenes[s["scene_token"]] == scene]
        victims = [s["token"] for s in sorted(samples, key=lambda s: s["timestamp"])[1:]]
        drop_keyframes(root, channel, victims)
        out[channel] = (root, split, victims)
    return out


@pytest.mark.parametrize("channel", sorted(CHANNEL_CASES))
def test_a_sample_missing_a_channel_is_refused_when_the_dataset_opens(channel_worlds, channel, caplog):
    """Catches: a missing camera found hours in as a bare `KeyError`, a missing radar silently dropped, a missing
    LIDAR_TOP crashing the cache build with `KeyError: 'LIDAR_TOP'`; and the documented ways around each."""
    root, split, victims = channel_worlds[channel]
    with pytest.raises(MissingChannels) as exc:
        dataset(root, split)
    msg = str(exc.value)
    assert f"2 lack {channel}" in msg and all(v in msg for v in victims) and "\n" not in msg, msg
    if channel == "CAM_BACK":  # a config without that camera opens
        ds = dataset(root, split, cameras=("CAM_FRONT", "CAM_FRONT_LEFT"))
        assert ds[1].images.shape[0] == 2
    elif channel.startswith("RADAR"):  # allowed: those samples use the 4 radars they have; or radar off
        with caplog.at_level(logging.WARNING, logger="bevbridge"):
            ds = dataset(root, split, allow_missing_radars=True)
        assert any("2 of 3 samples lack a radar" in r.getMessage() for r in caplog.records)
        assert len(ds[1].radar) > 0
        assert dataset(root, split, radar_sweeps=0).samples[1]["token"] == victims[0]
    else:  # LIDAR_TOP cannot be left out; the other split of the same tables opens
        assert len(dataset(root, "synth_train")) == 3


@pytest.mark.parametrize("channel", [  # one in the fast suite: the three take the same path through the CLI
    "CAM_BACK", pytest.param("RADAR_FRONT_LEFT", marks=pytest.mark.slow),
    pytest.param("LIDAR_TOP", marks=pytest.mark.slow)])
def test_train_on_tables_missing_a_channel_exits_with_one_line(channel_worlds, channel, tmp_path):
    """Catches: the CLI printing a traceback (or starting to train) when the tables lack a channel (~10 s each)."""
    root, split, victims = channel_worlds[channel]
    r = bevbridge(*train_args(root, tmp_path / "run"), "--max-steps", "1", cwd=tmp_path)
    line = one_line_error(r)
    assert channel in line and victims[0] in line and split in line, line
