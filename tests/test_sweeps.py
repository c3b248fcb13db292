"""Radar PCD decoding: the vectorised reader equals the devkit's RadarPointCloud.from_file."""

from __future__ import annotations

import numpy as np
import pytest

from bevbridge.data.sweeps import RADAR_FIELDS, read_radar_pcd


@pytest.mark.parametrize("filters", [True, False])
def test_read_radar_pcd_equals_the_devkit(synth_world, filters):
    from nuscenes.utils.data_classes import RadarPointCloud

    kw = {} if filters else {"invalid_states": list(range(18)), "dynprop_states": list(range(8)),
                             "ambig_states": list(range(5))}
    files = sorted(synth_world.dataroot.glob("*/RADAR_*/*.pcd"))[::3]
    nonempty = 0
    for f in files:
        want = RadarPointCloud.from_file(str(f), **kw).points.T
        got = read_radar_pcd(f, filters)
        assert got.shape == want.shape and got.shape[1] == len(RADAR_FIELDS), f
        assert np.array_equal(got, want), f
        nonempty += len(got) > 0
    assert nonempty > 50 and len(files) > 100


def test_an_empty_sweep_gives_no_points(tmp_path):
    from bevbridge.data.synth.radar import write_radar_pcd

    from bevbridge.data.synth.radar import RADAR_DTYPE

    pts = np.zeros(0, dtype=RADAR_DTYPE)
    write_radar_pcd(tmp_path / "empty.pcd", pts)
    assert read_radar_pcd(tmp_path / "empty.pcd").shape == (0, len(RADAR_FIELDS))
