"""Registration and contour propagation recover a known analytic deformation."""

from __future__ import annotations

import numpy as np
import pytest

from sarcart.io.geometry import Geometry, Volume
from sarcart.inference.propagation import RegistrationConfig, displacement_error_mm, propagate, register, warp

G = Geometry((64, 60, 36), (2.0, 2.0, 2.5), (-64.0, -60.0, -45.0))
CENTRES = [(-20, -15, -10), (18, 10, 5), (0, 25, 15), (-25, 20, -20), (25, -25, 20), (5, -5, -25)]


def _image(points: np.ndarray) -> np.ndarray:
    """Analytic 'anatomy' in world coordinates: a body ellipsoid and six bright blobs."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    body = 400.0 / (1 + np.exp(((x / 55) ** 2 + (y / 52) ** 2 + (z / 40) ** 2 - 1) * 12))
    blobs = sum(900.0 * np.exp(-((x - a) ** 2 + (y - b) ** 2 + (z - c) ** 2) / (2 * 7.0**2)) for a, b, c in CENTRES)
    return (body + blobs).astype(np.float32)


def _truth_displacement(points: np.ndarray) -> np.ndarray:
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    shift = np.array([3.0, -2.0, 4.0])
    u = np.stack([2.5 * np.sin(2 * np.pi * y / 120), 2.0 * np.cos(2 * np.pi * x / 130), 1.5 * np.sin(2 * np.pi * z / 90)],
                 axis=-1)
    return (u + shift).astype(np.float32)


@pytest.fixture(scope="module")
def case():
    pts = G.world_grid()
    u = _truth_displacement(pts)
    fixed = Volume(_image(pts + u), G)  # fixed(x) = moving(x + u(x))
    moving = Volume(_image(pts), G)
    return fixed, moving, Volume(u, G)


def test_registration_recovers_the_displacement(case) -> None:
    fixed, moving, truth = case
    est = register(fixed, moving, RegistrationConfig(demons_spacing_mm=(4.0, 2.0), demons_iterations=(80, 40)))
    inside = fixed.array > 500  # near the blobs, where the image constrains the displacement
    err = displacement_error_mm(est, truth, inside)
    before = displacement_error_mm(Volume(np.zeros_like(truth.array), G), truth, inside)
    assert before["mean_mm"] > 4.0
    assert err["mean_mm"] < 1.0 and err["p95_mm"] < 2.0, err
    # the warped moving image matches the fixed image far better than the unregistered one
    res_after = np.abs(warp(moving, est).array - fixed.array)[inside].mean()
    res_before = np.abs(moving.array - fixed.array)[inside].mean()
    assert res_after < 0.25 * res_before


def test_propagated_contours_match_the_truth(case) -> None:
    fixed, moving, truth = case
    pts = G.world_grid()
    blob = lambda p, c: np.linalg.norm(p - np.asarray(c, float), axis=-1) < 9.0  # noqa: E731
    masks_moving = {f"B{n}": Volume(blob(pts, c), G) for n, c in enumerate(CENTRES)}
    true_fixed = {f"B{n}": blob(pts + truth.array, c) for n, c in enumerate(CENTRES)}
    est = register(fixed, moving, RegistrationConfig(demons_spacing_mm=(4.0, 2.0), demons_iterations=(80, 40)))
    got = propagate(masks_moving, est)
    for name, t in true_fixed.items():
        g = got[name].array
        dice = 2 * (g & t).sum() / (g.sum() + t.sum())
        unreg = masks_moving[name].array
        dice0 = 2 * (unreg & t).sum() / (unreg.sum() + t.sum())
        assert dice > 0.9 and dice > dice0, (name, dice, dice0)
