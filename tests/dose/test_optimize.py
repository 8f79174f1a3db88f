"""Optimiser against scipy's L-BFGS-B on the same influence matrix; gradients by finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from phantoms import water_box
from scipy.optimize import minimize

from sarcart.dose.beams import Beam
from sarcart.dose.engine import BixelGrid, DoseEngine
from sarcart.dose.machine import mrlinac_6fff
from sarcart.dose.objectives import Constraint, Objective, penalty
from sarcart.dose.optimize import PlanProblem, minimize_nonneg, optimize_plan


def _problem():
    """Two beams on a water box, a target in the middle and an organ at risk beside it."""
    vol, g = water_box(6.0, size=(90.0, 120.0, 36.0), surface_y=-60.0)
    w = g.world_grid()
    target = (np.abs(w[..., 0]) <= 12) & (np.abs(w[..., 1]) <= 12) & (np.abs(w[..., 2]) <= 9)
    oar = (w[..., 0] > 15) & (w[..., 0] <= 33) & (np.abs(w[..., 1]) <= 12) & (np.abs(w[..., 2]) <= 9)
    pts = np.flatnonzero(target | oar)
    grid = BixelGrid(tuple(np.arange(-24.0, 24.01, 8.0)), (-12.45, -4.15, 4.15, 12.45))
    beams = [Beam(0.0, (0.0, 0.0, 0.0), 900.0), Beam(90.0, (0.0, 0.0, 0.0), 900.0)]
    eng = DoseEngine(vol, pts, beams, [grid, grid], mrlinac_6fff(), dtype=torch.float64)
    a = eng.dense_matrix()
    flat_t, flat_o = target.ravel()[pts], oar.ravel()[pts]
    structs = {"PTV": torch.as_tensor(np.flatnonzero(flat_t)), "OAR": torch.as_tensor(np.flatnonzero(flat_o))}
    objs = [Objective(structure="PTV", kind="min", dose_gy=8.0, weight=100.0),
            Objective(structure="PTV", kind="max", dose_gy=8.4, weight=30.0),
            Objective(structure="OAR", kind="mean", dose_gy=0.5, weight=5.0),
            Objective(structure="OAR", kind="geud_max", dose_gy=1.0, a=6.0, weight=5.0)]  # conflicts with coverage
    return a, PlanProblem(structs, objs, [], voxel_cc=g.voxel_volume_cc), eng


def _start(a, problem):
    x0 = torch.ones(a.shape[1], dtype=torch.float64)
    return x0 * 8.0 / float((a @ x0)[problem.structures["PTV"]].mean())


def test_objective_within_half_percent_of_scipy_lbfgsb():
    a, problem, _ = _problem()
    f = lambda w: problem.value(a @ w)
    x0 = _start(a, problem)
    ours = minimize_nonneg(f, x0, max_iter=500, rel_tol=1e-10)

    def fg(x):
        t = torch.as_tensor(x, dtype=torch.float64).requires_grad_(True)
        v = f(t)
        v.backward()
        return float(v.detach()), t.grad.numpy()

    ref = minimize(fg, x0.numpy(), jac=True, method="L-BFGS-B", bounds=[(0, None)] * a.shape[1],
                   options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
    assert ref.fun > 0.1  # the objectives conflict: the optimum is not trivially zero
    assert ours.fun <= ref.fun * 1.005, (ours.fun, ref.fun)
    assert float(ours.x.min()) >= 0.0


def test_adam_reaches_the_same_neighbourhood():
    a, problem, _ = _problem()
    x0 = _start(a, problem)
    lb = minimize_nonneg(lambda w: problem.value(a @ w), x0, max_iter=300).fun
    ad = minimize_nonneg(lambda w: problem.value(a @ w), x0, method="adam", max_iter=1000, lr=0.05).fun
    assert lb * 0.999 <= ad <= lb * 1.10


def test_finite_differences_through_the_full_objective():
    _, problem, eng = _problem()
    infl = eng.influence()
    w = torch.rand(eng.n_bixels, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 40.0
    f = lambda x: problem.value(infl.dose(x))
    x = w.clone().requires_grad_(True)
    f(x).backward()
    h = 1e-4
    for i in (0, 5, 11, 17, 23):
        e = torch.zeros_like(w)
        e[i] = h
        fd = (float(f(w + e)) - float(f(w - e))) / (2 * h)
        assert x.grad[i].item() == pytest.approx(fd, rel=1e-4, abs=1e-9)


def test_dvh_penalties_on_known_vectors():
    d = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    # V(2.5 Gy) <= 1 voxel: voxels ranked after the hottest one must drop below 2.5 -> (4-2.5)^2 + (3-2.5)^2
    o = Objective(structure="X", kind="dvh_max", dose_gy=2.5, volume_cc=1.0)
    assert float(penalty(o, d, voxel_cc=1.0)) == pytest.approx((1.5 ** 2 + 0.5 ** 2) / 5)
    o = Objective(structure="X", kind="dvh_min", dose_gy=4.5, volume_cc=2.0)  # the 2 hottest must reach 4.5
    assert float(penalty(o, d, voxel_cc=1.0)) == pytest.approx(0.5 ** 2 / 5)
    o = Objective(structure="X", kind="geud_max", dose_gy=0.0, a=1.0)
    assert float(penalty(o, d, voxel_cc=1.0)) == pytest.approx(9.0)  # gEUD(a=1) = mean = 3


def test_hard_constraint_wins_over_coverage():
    a, problem, _ = _problem()
    problem.constraints = [Constraint(structure="OAR", kind="max", dose_gy=3.0)]
    problem.rho, problem.scale = [10.0], [1.0]
    res = optimize_plan(problem, lambda w: a @ w, _start(a, problem), max_iter=200, outer=6)
    dose = a @ res.x
    assert float(dose[problem.structures["OAR"]].max()) <= 3.0 + 1e-6
