"""Skipping bad training samples (data.skip_bad_samples) and `bevbridge check-data`, by fault injection on copies of
a tiny synthetic world. Each test's docstring says which bug it catches."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bevbridge.data import skipped_samples
from bevbridge.data.batch import collate
from bevbridge.data.check import check_data
from bevbridge.data.integrity import TooManyBadSamples
from tests.test_data_faults import (CONFIG, bevbridge, copy_world, dataset, one_line_error,  # noqa: F401
                                    tiny_world, train_args)


@pytest.fixture
def one_bad_image(tiny_world, tmp_path):
    """A copy whose training sample 1 has a truncated CAM_FRONT JPEG; returns (root, that file, its token)."""
    root = copy_world(tiny_world, tmp_path / "world")
    info = dataset(root).samples[1]
    path = root / info["cams"]["CAM_FRONT"]["filename"]
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 9 // 10])
    return root, path, info["token"]


def _file_log(tmp_path):
    handler = logging.FileHandler(tmp_path / "log.txt")  # DataLoader workers (forked) append to it too
    logging.getLogger("bevbridge").addHandler(handler)
    logging.getLogger("bevbridge").setLevel(logging.INFO)
    return handler


def test_skip_replaces_a_bad_sample_logs_it_once_and_counts_it_across_workers(one_bad_image, tmp_path):
    """Catches: a bad file killing the run although skipping is on; a bad sample logged once per worker or per
    epoch; counts kept in a worker that the main process (the engine) never sees; a replacement that depends on
    which worker or epoch met the bad sample first."""
    root, bad_file, bad_token = one_bad_image
    ds = dataset(root, skip_bad_samples=True, max_bad_fraction=0.5, train=True)
    assert skipped_samples(ds).count == 0
    handler = _file_log(tmp_path)
    try:
        tokens = []
        for epoch in range(2):
            ds.set_epoch(epoch)
            loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate, shuffle=False)
            tokens.append([t for b in loader for t in b.tokens])
    finally:
        logging.getLogger("bevbridge").removeHandler(handler)
        handler.close()
    good = [s["token"] for s in ds.samples]
    assert tokens[0] == tokens[1] == [good[0], good[2], good[2]]  # index 1 -> the next good one, index 2
    lines = [line for line in (tmp_path / "log.txt").read_text().splitlines() if "skipping bad sample" in line]
    assert len(lines) == 1 and str(bad_file) in lines[0] and bad_token in lines[0], lines
    stats = skipped_samples(DataLoader(ds).dataset)
    assert (stats.count, stats.total, stats.allowed, stats.tokens) == (1, 3, 1, (bad_token,))
    # the replacement is drawn with index 1's augmentation, whoever loads it
    assert torch.equal(ds[1].images, ds[1].images) and ds[1].token == good[2]


def test_skip_refuses_past_the_fraction_limit(one_bad_image):
    """Catches: skipping without a bound (a wrong dataroot or a half-copied dataset would train on what is left),
    and a limit error that does not say which file."""
    root, bad_file, _ = one_bad_image
    ds = dataset(root, skip_bad_samples=True, max_bad_fraction=0.0)
    ds[0]
    with pytest.raises(TooManyBadSamples, match=f"more than max_bad_fraction=0 allows 0 of 3.*{bad_file}"):
        ds[1]
    off = dataset(root)  # skipping off (the default): the file's own error
    with pytest.raises(ValueError, match=f"{bad_file}: truncated JPEG"):
        off[1]
    assert skipped_samples(off) is None


@pytest.mark.parametrize("skip", [True, False])
def test_train_on_a_bad_sample_exits_with_one_line_naming_the_file(one_bad_image, tmp_path, skip):
    """Catches: the fraction limit (skip on, max_bad_fraction 0), or the bad file itself (skip off), ending the run
    with a DataLoader worker's traceback instead of one line naming the file."""
    root, bad_file, _ = one_bad_image
    extra = ["data.skip_bad_samples=true", "data.max_bad_fraction=0"] if skip else []
    r = bevbridge(*train_args(root, tmp_path / "run", *extra), "--max-steps", "1", cwd=tmp_path)
    line = one_line_error(r)
    assert str(bad_file) in line and ("max_bad_fraction" in line) == skip, line


@pytest.mark.slow
def test_a_training_run_skips_one_corrupt_image_and_completes(one_bad_image, tmp_path):
    """Catches: one corrupt file costing a whole run when skipping is on (through the real engine, a DataLoader
    worker and two epochs), and the bad sample being logged more than once."""
    root, bad_file, bad_token = one_bad_image
    run = tmp_path / "run"
    r = bevbridge(*train_args(root, run, "data.skip_bad_samples=true", "data.max_bad_fraction=0.5"),
                  "--max-steps", "2", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trained to step 2" in r.stdout
    lines = [line for line in (run / "train.log").read_text().splitlines() if "skipping bad sample" in line]
    assert len(lines) == 1 and str(bad_file) in lines[0] and bad_token in lines[0], lines
    assert "1 skipped so far" in lines[0]


# --------------------------------------------------------------------------------------------------- check-data
def _damage(root, rel: str, how) -> str:
    p = root / rel
    p.write_bytes(how(p.read_bytes()))
    return rel


@pytest.fixture(scope="module")
def checked(tiny_world, tmp_path_factory):
    """A copy with one fault of each kind, and the CLI's result on it (run once)."""
    tmp = tmp_path_factory.mktemp("check")
    root = copy_world(tiny_world, tmp / "world")
    train = dataset(root).samples
    val = dataset(root, "synth_val").samples
    rng = np.random.default_rng(0)
    faults = {
        "truncated_jpeg": _damage(root, train[0]["cams"]["CAM_BACK"]["filename"], lambda b: b[: len(b) * 9 // 10]),
        "garbage_jpeg": _damage(root, train[1]["cams"]["CAM_FRONT"]["filename"],
                                lambda b: bytes(rng.integers(0, 256, 3000, np.uint8))),
        "corrupt_jpeg_data": _damage(root, train[2]["cams"]["CAM_FRONT"]["filename"],
                                     lambda b: b[:1500] + bytes(rng.integers(0, 256, 300, np.uint8)) + b[1800:]),
        "truncated_pcd": _damage(root, val[0]["radars"]["RADAR_FRONT"][0]["filename"], lambda b: b[:-30]),
        "empty_pcd": _damage(root, val[1]["radars"]["RADAR_BACK_LEFT"][0]["filename"], lambda b: b""),
        "truncated_bin": _damage(root, val[2]["lidar"]["filename"], lambda b: b[:-6]),
        "empty_bin": _damage(root, train[0]["lidar"]["filename"], lambda b: b""),
    }
    missing = train[1]["radars"]["RADAR_FRONT"][1]["filename"]  # an older sweep
    (root / missing).unlink()
    r = bevbridge("check-data", str(CONFIG), f"data.dataroot={root}",
                  "data.train_split=synth_train", "data.val_split=synth_val", "--out", str(tmp / "report.json"),
                  cwd=tmp)
    return root, faults, missing, r, json.loads((tmp / "report.json").read_text())


def test_check_data_reports_every_missing_and_corrupt_file(checked):
    """Catches: bad files found one crash at a time (hours into a run) instead of all at once; a corrupt JPEG whose
    markers are intact (only libjpeg's warning tells) passing; a non-zero exit status missing; a traceback."""
    root, faults, missing, r, report = checked
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    corrupt = {row["path"]: row for row in report["corrupt_files"]}
    assert set(corrupt) == set(faults.values()), corrupt
    assert [row["path"] for row in report["missing_files"]] == [missing]
    reasons = {name: corrupt[path]["reason"] for name, path in faults.items()}
    assert "truncated JPEG" in reasons["truncated_jpeg"] and "not a decodable" in reasons["garbage_jpeg"]
    assert "Corrupt JPEG data" in reasons["corrupt_jpeg_data"], reasons
    assert "truncated" in reasons["truncated_pcd"] and "empty" in reasons["empty_pcd"]
    assert "5-float32" in reasons["truncated_bin"] and "empty" in reasons["empty_bin"]
    assert all(row["samples"] for row in corrupt.values())
    assert report["radar_sweeps"] == 4 and report["ok"] is False  # the config's sweeps
    assert "PROBLEMS FOUND" in r.stdout and faults["truncated_jpeg"] in r.stdout


def test_check_data_on_clean_data_exits_zero(tiny_world, tmp_path):
    """Catches: false alarms on intact data (e.g. a JPEG end marker or PCD size check that is too strict)."""
    report = check_data(tiny_world, "v1.0-mini", ["synth_train", "synth_val"], radar_sweeps=8, lidar_sweeps=2,
                        workers=2)
    assert report["ok"] and report["files_checked"] > 100, report
    r = bevbridge("check-data", "--dataroot", str(tiny_world), "--version", "v1.0-mini", "--split", "synth_val",
                  "--out", str(tmp_path / "r.json"), cwd=tmp_path)
    assert r.returncode == 0 and "OK: nothing missing or corrupt" in r.stdout, r.stderr


def test_check_data_after_parallel_opencv_work_in_the_same_process_does_not_hang(tiny_world, tmp_path):
    """Catches: check-data's worker pool forked from a process whose OpenCV thread pool is running (any earlier
    parallel cv2 call, as a dataset item or an image warp makes): each forked worker's cv2.setNumThreads() then waits
    for ever. It hung CI's test run in the previous test (the pytest process had loaded images). Run in a subprocess
    with a time limit so that a regression fails here instead of hanging the suite."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import cv2, numpy as np
        from bevbridge.data.check import check_data
        img = np.ones((900, 1600, 3), np.uint8)
        for _ in range(3):
            cv2.warpAffine(img, np.eye(2, 3), (1600, 900))  # starts OpenCV's thread pool in this process
        r = check_data({str(tiny_world)!r}, "v1.0-mini", ["synth_val"], radar_sweeps=1, lidar_sweeps=1, workers=2)
        print("ok" if r["ok"] else "not ok", r["files_checked"])
    """)
    try:
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("check_data hung after parallel OpenCV work in the same process (forked workers)")
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]
