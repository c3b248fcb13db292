"""`bevbridge eval-detections` and the devkit DetectionEval wrapper."""

from __future__ import annotations

from test_cli import bevbridge


def test_eval_detections_missing_results_file_is_one_clear_line(tmp_path):
    r = bevbridge("eval-detections", "--dataroot", str(tmp_path), "--version", "v1.0-mini", "--split", "mini_val",
                  "--results", str(tmp_path / "missing.json"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"bevbridge eval-detections: results file not found: {tmp_path}/missing.json"]


def test_eval_detections_missing_tables_are_named(tmp_path):
    results = tmp_path / "r.json"
    results.write_text('{"meta": {}, "results": {}}')
    r = bevbridge("eval-detections", "--dataroot", str(tmp_path), "--version", "v1.0-mini", "--split", "mini_val",
                  "--results", str(results))
    assert r.returncode == 1 and f"{tmp_path}/v1.0-mini is not a folder" in r.stderr
