"""The atomic writer (modes, stale temp files of killed writers, the lock) and reading a run's scalars.jsonl after a
kill. Each test's docstring says which bug it catches."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bevbridge import atomic
from bevbridge.atomic import atomic_path, atomic_write_text, clean_stale_temps
from bevbridge.engine.run_log import RunLog, read_scalars

REPO = Path(__file__).resolve().parents[1]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, expected):
    """Catches: files written through the atomic writer created 0600 (tempfile.mkstemp), so others on a shared
    machine cannot read a shared info cache or a run's metrics."""
    import numpy as np

    from bevbridge.data.info_table import InfoTable

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "metrics.json", "{}")
        InfoTable({"s_token": np.array([b"t"])}, {"schema": 3}).save(tmp_path / "cache.npz")
    finally:
        os.umask(old)
    assert mode(tmp_path / "metrics.json") == expected and mode(tmp_path / "cache.npz") == expected


KILLED_WRITER = """
import os, signal, sys
from bevbridge.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half of it")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    """Catches: `.tmp` files left by a killed process staying forever (a full disk after many kills)."""
    target = tmp_path / "metrics.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], env=env, timeout=60)
    assert r.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and not target.exists()
    atomic_write_text(target, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_only_stale_temp_files_of_the_writers_own_pattern_are_removed(tmp_path):
    """Catches: cleaning that deletes what it does not own: another live process's temp file (same host), a temp
    file of another host on a shared filesystem that is still being written, or files of other names."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid is free
    try:
        host = atomic._HOST
        names = {
            f".m.json.{host}-{dead.pid}-0123abcd.tmp": False,  # same host, process gone: removed
            f".m.json.{host}-{live.pid}-0123abcd.tmp": True,  # same host, alive: kept
            ".m.json.otherhost-1-0123abcd.tmp": True,  # another host, fresh: kept
            ".m.json.farhost-1-89abcdef.tmp": False,  # another host, 2 h old: removed
            ".m.json.k2j_x9ab.tmp": True,  # the earlier mkstemp pattern, fresh: kept
            ".m.json.q8w_e7rt.tmp": False,  # the earlier mkstemp pattern, 2 h old: removed
            ".m.json.notes.tmp": True,  # not the pattern (7 chars): kept however old
            "m.json.tmp": True,  # not hidden: kept
            ".other.json.otherhost-1-0123abcd.tmp": True,  # another target (kept by a write of m.json)
        }
        for name in names:
            (tmp_path / name).write_text("x")
        old = time.time() - 2 * 3600
        for name in (".m.json.farhost-1-89abcdef.tmp", ".m.json.q8w_e7rt.tmp", ".m.json.notes.tmp"):
            os.utime(tmp_path / name, (old, old))
        atomic_write_text(tmp_path / "m.json", "{}")
        kept = {p.name for p in tmp_path.iterdir()}
        for name, keep in names.items():
            assert (name in kept) == keep, name
        os.utime(tmp_path / ".other.json.otherhost-1-0123abcd.tmp", (old, old))
        assert [p.name for p in clean_stale_temps(tmp_path)] == [".other.json.otherhost-1-0123abcd.tmp"]
    finally:
        live.kill()
        live.wait()


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    """Catches: an exception inside the writer leaving half a file in place or a temp file behind."""
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new, half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_scalars_with_a_partial_last_line_are_read_and_appended_to(tmp_path, caplog):
    """Catches: a run killed mid-write leaving a partial last line of scalars.jsonl that breaks every reader
    (json.JSONDecodeError in plots and the demo report), and a resumed run gluing its rows onto that line."""
    (tmp_path / "scalars.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/loss": 1.5}\n'
                                            '{"step": 3, "train/lo')
    with caplog.at_level(logging.WARNING, logger="bevbridge"):
        rows = read_scalars(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert any("scalars.jsonl" in r.getMessage() and "3" in r.getMessage() for r in caplog.records)
    run_log = RunLog(tmp_path)  # the resumed run appends
    run_log.scalars(3, {"loss": 1.0}, prefix="train/")
    run_log.close()
    assert [r["step"] for r in read_scalars(tmp_path)] == [1, 2, 3]
