"""Preprocessing: LPS reorientation, field-of-view-preserving resampling, normalisation, the way back."""

from __future__ import annotations

import numpy as np
import pytest

from sarcart.errors import InvalidImageError
from sarcart.io.geometry import Geometry, Volume
from sarcart.models.plan import Normalisation
from sarcart.training.preprocess import grid_for, normalise, resample, to_original_grid


def _geom(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape=(30, 24, 12), spacing=(1.0, 1.5, 3.0)):
    return Geometry(shape=shape, spacing_mm=spacing, origin_mm=(-10.0, 5.0, 20.0), direction=direction)


def test_grid_keeps_the_field_of_view_and_is_lps_aligned():
    g = _geom(direction=(-1, 0, 0, 0, 0, 1, 0, 1, 0))  # i towards patient right, j feet->head, k back
    grid = grid_for(g, (2.0, 2.0, 2.0))
    assert np.allclose(grid.direction_matrix, np.eye(3))
    corners = g.index_to_world(np.array([[-0.5, -0.5, -0.5], [29.5, 23.5, 11.5]]))
    lo, hi = corners.min(0), corners.max(0)
    gc = grid.index_to_world(np.array([[-0.5, -0.5, -0.5], np.asarray(grid.shape) - 0.5]))
    assert np.allclose(gc[0], lo) and np.allclose(gc[1], hi)  # extents are exact multiples of 2 mm here


def test_a_shifted_grid_moves_by_that_fraction_of_its_voxel_along_lps():
    g = _geom(direction=(-1, 0, 0, 0, 0, 1, 0, 1, 0))
    base = grid_for(g, (2.0, 2.0, 2.5))
    moved = grid_for(g, (2.0, 2.0, 2.5), shift_vox=(0.5, 0.0, -0.5))
    assert moved.shape == base.shape and moved.spacing_mm == base.spacing_mm
    assert np.allclose(np.subtract(moved.origin_mm, base.origin_mm), (1.0, 0.0, -1.25))


def test_subvoxel_shifts_cover_the_axes_the_plan_coarsens_in_lps_order():
    from sarcart.training.predict import subvoxel_shifts

    # array i along -x at 1.0 mm, j along +z at 1.5 mm, k along +y at 3.0 mm: LPS spacing (1.0, 3.0, 1.5),
    # so x (3x) and z (2x) are coarsened and y (1x) is not
    g = _geom(direction=(-1, 0, 0, 0, 0, 1, 0, 1, 0))
    shifts = subvoxel_shifts(g, (3.0, 3.0, 3.0))
    assert shifts[0] == (0.0, 0.0, 0.0)
    assert sorted(shifts) == [(0.0, 0.0, 0.0), (0.0, 0.0, 0.5), (0.5, 0.0, 0.0), (0.5, 0.0, 0.5)]
    # nothing coarsened 1.5x or more: a single pass
    assert subvoxel_shifts(g, (1.2, 3.0, 1.5)) == [(0.0, 0.0, 0.0)]
    with pytest.raises(ValueError, match="3 values"):
        subvoxel_shifts(g, (3.0, 3.0))


def test_resampling_a_flipped_image_puts_patient_left_at_high_index():
    g = _geom(direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(2.0, 2.0, 2.0))
    arr = np.zeros(g.shape, np.float32)
    arr[:5] = 1.0  # low i = high LPS x = patient left
    grid = grid_for(g, (2.0, 2.0, 2.0))
    out = resample(Volume(arr, g), grid)
    assert np.allclose(out[-5:], 1.0) and np.allclose(out[:-5], 0.0)


def test_round_trip_to_a_coarse_grid_and_back_keeps_a_ball():
    g = _geom(shape=(48, 40, 20), spacing=(1.0, 1.0, 3.0))
    idx = np.indices(g.shape).astype(float)
    ball = ((idx[0] - 24) ** 2 + (idx[1] - 20) ** 2 + ((idx[2] - 10) * 3) ** 2) <= 12 ** 2
    grid = grid_for(g, (2.5, 2.5, 3.0))
    coarse = resample(Volume(ball.astype(np.float32), g), grid)
    probs = np.stack([1 - coarse, coarse])
    back = to_original_grid(probs, grid, g)
    assert back.shape == (2, *g.shape)
    assert np.allclose(back.sum(0), 1.0, atol=1e-5)
    pred = back[1] > 0.5
    assert 2 * (pred & ball).sum() / (pred.sum() + ball.sum()) > 0.95


def test_normalisation_is_a_zscore_inside_the_body():
    rng = np.random.default_rng(0)
    arr = np.zeros((40, 40, 10), np.float32)
    arr[5:35, 5:35] = rng.normal(500, 50, (30, 30, 10))
    out, frac = normalise(arr, Normalisation())
    body = arr > 0.05 * np.percentile(arr, 99)
    lo, hi = np.percentile(arr[body], (0.5, 99.5))
    ref = np.clip(arr[body], lo, hi)
    assert frac == pytest.approx(body.mean())
    assert out[body].mean() == pytest.approx(0.0, abs=1e-4)
    assert out[body].std() == pytest.approx(1.0, abs=1e-4)
    assert out[0, 0, 0] == pytest.approx((lo - ref.mean()) / ref.std(), rel=1e-4)  # background clipped to p0.5
    with pytest.raises(InvalidImageError, match="NaN"):
        normalise(np.full((4, 4, 4), np.nan, np.float32), Normalisation())
