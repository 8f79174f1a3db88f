"""Dose engine: water tank against the closed-form beam model, heterogeneity, gradients, modes, geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from phantoms import water_box

from sarcart.dose.beams import Beam, beam_coordinates, radiological_depth
from sarcart.dose.engine import BixelGrid, DoseEngine
from sarcart.dose.machine import mrlinac_6fff, mrlinac_6fff_two_term, water_6x, water_6x_two_term

OPEN_10X10 = BixelGrid(tuple(np.arange(-50.0, 50.01, 5.0)), tuple(np.arange(-50.0, 50.01, 5.0)))


def _cax_and_profile(vol, g, model, sad):
    ci, ck = g.shape[0] // 2, g.shape[2] // 2
    j10 = round((100.0 - g.spacing_mm[1] / 2) / g.spacing_mm[1])  # voxel centre at 10 cm depth
    cax = [np.ravel_multi_index((ci, j, ck), g.shape) for j in range(g.shape[1])]
    prof = [np.ravel_multi_index((i, j10, ck), g.shape) for i in range(g.shape[0])]
    beam = Beam(0.0, (0.0, 0.0, 0.0), sad_mm=sad)  # source anterior; isocentre 10 cm deep
    return np.array(cax + prof), beam, j10


@pytest.mark.parametrize("model_fn", [water_6x, mrlinac_6fff, water_6x_two_term])
def test_water_tank_matches_closed_form(model_fn):
    model = model_fn()
    vol, g = water_box(2.0, surface_y=-100.0)
    pts, beam, j10 = _cax_and_profile(vol, g, model, model.sad_mm)
    eng = DoseEngine(vol, pts, [beam], [OPEN_10X10], model, dtype=torch.float64)
    w = torch.ones(OPEN_10X10.size, dtype=torch.float64)  # 1 MU through every beamlet
    dose = eng.dose(w).numpy()
    ssd = model.sad_mm - 100.0
    depth = torch.as_tensor(np.arange(g.shape[1]) * 2.0 + 1.0, dtype=torch.float64)
    ref = model.water_dose(depth, ssd_mm=ssd).numpy()
    n = g.shape[1]
    assert np.max(np.abs(dose[:n] - ref) / ref.max()) < 0.005
    x = g.index_to_world(np.c_[np.arange(g.shape[0]), np.full(g.shape[0], j10), np.zeros(g.shape[0])])[:, 0]
    ref_p = model.water_dose(torch.full((len(x),), 101.0, dtype=torch.float64), torch.as_tensor(x), ssd_mm=ssd).numpy()
    assert np.max(np.abs(dose[n:] - ref_p) / ref_p.max()) < 0.01


@pytest.mark.parametrize("model_fn", [water_6x, water_6x_two_term])
def test_sparse_and_matrix_free_agree(model_fn):
    vol, g = water_box(3.0, size=(150.0, 240.0, 90.0))
    pts, beam, _ = _cax_and_profile(vol, g, model_fn(), 1000.0)
    eng = DoseEngine(vol, pts, [beam], [OPEN_10X10], model_fn(), dtype=torch.float64)
    w = torch.rand(OPEN_10X10.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    infl = eng.influence()
    a, b = eng.dose(w), infl.dose(w)
    assert float((a - b).abs().max() / a.max()) < 0.01
    # columns of unit beamlet patterns through the sparse operator: the same doses (linearity, all terms)
    pick = torch.zeros(OPEN_10X10.size, 2, dtype=torch.float64)
    pick[:, 0], pick[7, 1] = w, 1.0
    cols = infl.columns(pick)
    assert torch.allclose(cols[:, 0], b, rtol=1e-9, atol=1e-12)
    assert torch.allclose(cols[:, 1], infl.dose(pick[:, 1]), rtol=1e-9, atol=1e-12)
    # the tail is a separate separable operator; the exact primary matrix keeps the primary's reach
    assert (infl.tail is not None) == (eng.model.tail_share > 0)
    # dense matrix columns are the doses of unit weights: A @ w equals the dose (linearity)
    small = DoseEngine(vol, pts[::8], [beam], [BixelGrid((-10.0, -5.0, 0.0, 5.0), (-5.0, 0.0, 5.0))], water_6x(),
                       dtype=torch.float64)
    ww = torch.tensor([1.0, 2.0, 0.5, 0.0, 3.0, 1.5], dtype=torch.float64)
    assert torch.allclose(small.dense_matrix() @ ww, small.dose(ww), rtol=1e-9, atol=1e-12)


def test_gas_and_bone_slabs_shift_the_depth_dose_by_their_water_equivalent_thickness():
    vol, g = water_box(2.0, size=(120.0, 240.0, 60.0))
    rho = vol.array.copy()
    y = g.world_grid()[..., 1]
    slab = (y > -60.0) & (y < -40.0)  # 20 mm slab from 40 to 60 mm depth
    ci, ck = g.shape[0] // 2, g.shape[2] // 2
    pts = np.array([np.ravel_multi_index((ci, j, ck), g.shape) for j in range(g.shape[1])])
    beam = Beam(0.0, (0.0, 0.0, 0.0), sad_mm=1000.0)
    doses = {}
    for name, value in (("water", 1.0), ("gas", 0.001), ("bone", 1.5)):
        r = rho.copy()
        r[slab] = value
        eng = DoseEngine(vol.with_array(r), pts, [beam], [OPEN_10X10], water_6x(), dtype=torch.float64)
        doses[name] = eng.dose(torch.ones(OPEN_10X10.size, dtype=torch.float64)).numpy()
    depth = np.arange(g.shape[1]) * 2.0 + 1.0
    beyond = (depth > 80) & (depth < 200)
    # pencil-beam physics: downstream dose = water dose at (depth - (1 - rho) * 20 mm), times the
    # inverse-square of the true distance (independent of the slab)
    for name, value in (("gas", 0.001), ("bone", 1.5)):
        shifted = np.interp(depth[beyond] - (1 - value) * 20.0, depth, doses["water"])
        isq = ((900.0 + depth[beyond] - (1 - value) * 20.0) / (900.0 + depth[beyond])) ** 2
        assert np.allclose(doses[name][beyond], shifted * isq, rtol=0.01), name


@pytest.mark.parametrize("model_fn", [mrlinac_6fff, mrlinac_6fff_two_term])
def test_gradcheck_weights_and_leaf_positions_float64(model_fn):
    vol, _g = water_box(6.0, size=(60.0, 60.0, 36.0))
    pts = np.arange(0, vol.array.size, 7)
    grid = BixelGrid((-10.0, -5.0, 0.0, 5.0, 10.0), (-8.3, -4.15, 0.0, 4.15))
    eng = DoseEngine(vol, pts, [Beam(30.0, (0.0, 20.0, 0.0), 900.0)], [grid], model_fn(), dtype=torch.float64)
    w = torch.rand(grid.size, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: eng.dose(x)[::5], (w,), eps=1e-6, atol=1e-9, fast_mode=True)
    infl = eng.influence()
    assert torch.autograd.gradcheck(lambda x: infl.dose(x)[::5], (w,), eps=1e-6, atol=1e-9, fast_mode=True)
    left = torch.tensor([[-6.0, -4.0, -7.0]], dtype=torch.float64, requires_grad=True)
    right = torch.tensor([[5.0, 6.5, 3.0]], dtype=torch.float64, requires_grad=True)
    mu = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, m: eng.aperture_dose(0, a, b, m)[::5], (left, right, mu), fast_mode=True,
                                    eps=1e-6, atol=1e-9)


def test_aperture_dose_equals_open_beamlets():
    vol, _g = water_box(3.0, size=(120.0, 200.0, 60.0))
    pts = np.arange(0, vol.array.size, 3)
    grid = BixelGrid(tuple(np.arange(-20.0, 20.01, 4.0)), tuple(np.arange(-12.45, 12.46, 4.15)))
    eng = DoseEngine(vol, pts, [Beam(0.0, (0.0, 0.0, 0.0), 900.0)], [grid], mrlinac_6fff(), dtype=torch.float64)
    rows, cols = grid.shape
    w = torch.zeros(rows, cols, dtype=torch.float64)
    w[1:5, 2:7] = 3.0  # a 5-column x 4-row opening of 3 MU
    left = torch.full((1, rows), 0.0, dtype=torch.float64)
    right = torch.full((1, rows), 0.0, dtype=torch.float64)
    left[0, 1:5], right[0, 1:5] = grid.u_edges[2], grid.u_edges[7]
    a = eng.aperture_dose(0, left, right, torch.tensor([3.0], dtype=torch.float64))
    b = eng.dose(w.reshape(-1))
    assert float((a - b).abs().max() / b.max()) < 1e-6


def test_beam_geometry_iec_conventions():
    beam = Beam(90.0, (10.0, 20.0, 30.0), 900.0)
    assert np.allclose(beam.source_mm, [910.0, 20.0, 30.0])  # gantry 90: source on the patient's left (+x)
    pts = torch.tensor([[10.0, 20.0, 30.0], [10.0, 20.0, 40.0], [-90.0, 20.0, 30.0]], dtype=torch.float64)
    _u, v, z = beam_coordinates(pts, beam)
    assert torch.allclose(z, torch.tensor([900.0, 900.0, 1000.0], dtype=torch.float64))
    assert torch.allclose(v, torch.tensor([0.0, 10.0, 0.0], dtype=torch.float64))
    vol, g = water_box(2.0)
    d = radiological_depth(vol.array, g, Beam(0.0, (0.0, 0.0, 0.0), 1000.0),
                           torch.tensor([[0.0, 0.0, 0.0], [0.0, 50.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(d, torch.tensor([100.0, 150.0], dtype=torch.float64), atol=1.0)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    vol, _g = water_box(3.0, size=(90.0, 150.0, 60.0))
    pts = np.arange(0, vol.array.size, 5)
    w = torch.rand(OPEN_10X10.size, dtype=torch.float64)
    cpu = DoseEngine(vol, pts, [Beam(0.0, (0.0, 0.0, 0.0), 900.0)], [OPEN_10X10], mrlinac_6fff()).dose(w)
    gpu = DoseEngine(vol, pts, [Beam(0.0, (0.0, 0.0, 0.0), 900.0)], [OPEN_10X10], mrlinac_6fff(), device="cuda").dose(w)
    assert torch.allclose(cpu, gpu.cpu(), rtol=1e-4, atol=1e-7)
