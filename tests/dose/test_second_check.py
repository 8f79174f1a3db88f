"""Second-check building blocks: the point gamma against pymedphys, the independent dose against the engine."""

from __future__ import annotations

import numpy as np
import pytest

from sarcart.dose.second_check import point_gamma
from sarcart.io.geometry import Geometry, Volume


def test_point_gamma_matches_pymedphys():
    from pymedphys import gamma

    g = Geometry((40, 30, 6), (2.0, 2.0, 2.0))
    w = g.world_grid()
    ref = np.exp(-((w[..., 0] - 40) ** 2 + (w[..., 1] - 30) ** 2) / 400.0) * 10.0
    shifted = np.exp(-((w[..., 0] - 41.5) ** 2 + (w[..., 1] - 30) ** 2) / 400.0) * 10.2
    rng = np.random.default_rng(0)
    pick = rng.integers(0, [40, 30, 6], size=(150, 3))
    pts = g.index_to_world(pick.astype(float))
    ours = point_gamma(Volume(ref.astype(np.float32), g), pts, shifted[tuple(pick.T)], dose_gy=0.2, dta_mm=2.0)
    axes = tuple(np.arange(n) * 2.0 for n in g.shape)
    pm = gamma(axes, shifted, axes, ref, 2.0, 2.0, lower_percent_dose_cutoff=0, interp_fraction=10,
               max_gamma=5.0, global_normalisation=10.0, interp_algo="scipy", quiet=True)
    theirs = pm[tuple(pick.T)]
    assert np.corrcoef(ours, theirs)[0, 1] > 0.98
    assert np.mean(ours <= 1) == pytest.approx(np.mean(theirs <= 1), abs=0.03)
