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


@pytest.mark.parametrize("model_fn", ["mrlinac_6fff", "mrlinac_6fff_two_term"])
def test_check_dose_matches_the_engine_for_an_irregular_aperture(model_fn):
    # two implementations of the same kernel (all its terms): per-point ray marching and 2D quadrature over
    # a 0.05 mm fluence raster (second check; leaf ends and row edges fall on cell edges, so the raster is
    # exact) vs separable maps and depth nodes (engine, erf leaf ends)
    from types import SimpleNamespace

    import torch
    from phantoms import water_box

    from sarcart.dose import machine
    from sarcart.dose.beams import Beam
    from sarcart.dose.engine import BixelGrid, DoseEngine
    from sarcart.dose.second_check import check_dose
    from sarcart.dose.sequencing import Segment

    model = getattr(machine, model_fn)()
    vol, g = water_box(3.0, size=(120.0, 150.0, 60.0), surface_y=-90.0)
    rows = machine.MachineConfig().row_edges_mm().numpy()[26:32]  # 5 rows around the axis
    grid = BixelGrid(tuple(np.arange(-24.9, 24.91, 4.15)), tuple(rows))
    beam = Beam(0.0, (0.0, 0.0, 0.0), model.sad_mm)
    left, right = np.array([-20.0, -15.3, -18.1, -9.7, -20.0]), np.array([12.0, 17.4, 20.0, 6.2, 14.8])
    seg = Segment(0, left, right, 3.0, np.zeros((3, 2)), np.zeros((3, 2)))
    ijk = np.argwhere(np.ones(g.shape, bool))[::97]
    pts = g.index_to_world(ijk.astype(float))
    # in and around the field, beyond the build-up (there the two ray marchings' depths differ by ~1 mm)
    pts = pts[(np.abs(pts[:, 0]) < 35) & (np.abs(pts[:, 2]) < 20) & (pts[:, 1] > -75.0)]
    eng = DoseEngine(vol, np.ravel_multi_index(g.world_to_index(pts).round().astype(int).T, g.shape), [beam], [grid],
                     model, dtype=torch.float64)
    ref = eng.aperture_dose(0, torch.tensor(left[None]), torch.tensor(right[None]), torch.tensor([3.0])).numpy()
    result = SimpleNamespace(model=model, density=vol, beams=[beam], grids=[grid], segments=[seg])
    chk = check_dose(result, pts, cell_mm=0.05, step_mm=1.0)
    assert np.max(np.abs(chk - ref)) / ref.max() < 0.02
    assert np.mean(np.abs(chk - ref)) / ref.max() < 0.005
