"""`bevbridge demo --out DIR` replaces only a folder the demo wrote (its marker file), never another run."""

from __future__ import annotations

import argparse

import pytest

from bevbridge.engine import build, demo


class _Stop(Exception):
    """Raised where the demo would start its (slow) work: the folder handling is done by then."""


def _args(out):
    return argparse.Namespace(config=None, overrides=[], out=str(out), minutes=1)


def test_demo_replaces_only_its_own_folder(tmp_path, monkeypatch):
    """Would catch: any folder holding a config.yaml (every training run has one) deleted by `demo --out`."""
    monkeypatch.setattr(build, "ensure_dataset", lambda data: (_ for _ in ()).throw(_Stop()))
    run = tmp_path / "my_run"
    (run / "checkpoints" / "step_00001000").mkdir(parents=True)
    (run / "config.yaml").write_text("name: my_run\n")
    with pytest.raises(build.BuildError, match=r"my_run exists and was not written by `bevbridge demo` \(it has no "
                                               r"\.bevbridge-demo\)"):
        demo.run_demo(_args(run))
    assert (run / "checkpoints" / "step_00001000").is_dir()  # untouched

    out = tmp_path / "demo"
    with pytest.raises(_Stop):
        demo.run_demo(_args(out))  # a new folder: created and marked
    assert (out / demo.DEMO_MARKER).is_file()
    (out / "old_report.html").write_text("old")
    with pytest.raises(_Stop):
        demo.run_demo(_args(out))  # the demo's own folder: replaced
    assert not (out / "old_report.html").exists() and (out / demo.DEMO_MARKER).is_file()
