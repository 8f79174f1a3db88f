"""Voxel-wise maps: kernel tables, discretisation, analytic and independent checks, settings, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from sarcart.errors import ConfigError, InvalidImageError
from sarcart.radiomics.maps import MapSettings, compute_feature_maps, parse_feature_list, resolve_features
from sarcart.radiomics.maps.kernel import KernelGeometry, discretise


def test_kernel_tables_of_radius_1() -> None:
    geo = KernelGeometry.build(1)
    assert geo.size == 27 and len(geo.angles) == 13
    # pairs per direction: 18 along an axis, 12 along a face diagonal, 8 along a space diagonal
    assert len(geo.pair_p) == 3 * 18 + 6 * 12 + 4 * 8
    centre = 13
    assert (geo.neighbours[centre] < 27).sum() == 26 and (geo.neighbours[0] < 27).sum() == 7
    assert geo.lines.shape[1] == 3 and ((geo.lines < 27).sum() == 13 * 27)  # every position once per direction
    flat = KernelGeometry.build(1, (True, True, False))  # a single-slice crop: in-plane directions only
    assert len(flat.angles) == 4


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
@pytest.mark.parametrize("kw", [{"bin_width": 25.0, "bin_count": None}, {"bin_width": 25.0, "bin_count": 7},
                                {"bin_width": 0.37, "bin_count": None}])
def test_discretisation_equals_pyradiomics(dtype: type, kw: dict) -> None:
    from radiomics import imageoperations

    x = (np.random.default_rng(3).normal(300, 80, 500)).astype(dtype)
    ours, _ = discretise(x, **kw)
    settings = {"binWidth": kw["bin_width"]} if kw["bin_count"] is None else {"binCount": kw["bin_count"]}
    ref, _ = imageoperations.binImage(x, np.ones(x.shape, bool), **settings)
    assert np.array_equal(ours, ref)


def _masked_filter(img: np.ndarray, roi: np.ndarray, fn, fill: float) -> np.ndarray:
    return fn(np.where(roi, img, fill), size=3, mode="constant", cval=fill)


def test_first_order_against_scipy_filters(blob) -> None:
    img, roi = blob
    a, r = img.array.astype(float), roi.array
    out = compute_feature_maps(img.array, r, MapSettings(bin_width=10), features={"firstorder": None},
                               spacing_mm=img.geometry.spacing_mm).maps
    count = ndimage.uniform_filter(r.astype(float), 3, mode="constant") * 27
    mean = ndimage.uniform_filter(np.where(r, a, 0.0), 3, mode="constant") * 27 / np.maximum(count, 1)
    assert np.allclose(out["firstorder_Mean"][r], mean[r], rtol=1e-12)
    assert np.array_equal(out["firstorder_Minimum"][r], _masked_filter(a, r, ndimage.minimum_filter, np.inf)[r])
    assert np.array_equal(out["firstorder_Maximum"][r], _masked_filter(a, r, ndimage.maximum_filter, -np.inf)[r])
    assert np.all(out["firstorder_Mean"][~r] == 0.0)  # initValue outside the ROI


@pytest.mark.parametrize("radius", [1, 2])
def test_zone_counts_against_scipy_labelling(blob, radius: int) -> None:
    """ZonePercentage = zones / voxels of each kernel; zones counted here with scipy's 26-connected labelling."""
    img, roi = blob
    settings = MapSettings(bin_width=40, kernel_radius=radius)
    out = compute_feature_maps(img.array, roi.array, settings, features={"glszm": ["ZonePercentage"]}).maps
    from sarcart.radiomics.maps.kernel import discretise as disc

    levels = np.zeros(img.array.shape, int)
    levels[roi.array] = disc(img.array[roi.array], bin_width=40, bin_count=None)[0]
    rng = np.random.default_rng(0)
    for v in rng.choice(np.argwhere(roi.array), 25, replace=False):
        sl = tuple(slice(max(c - radius, 0), c + radius + 1) for c in v)
        lv, inside = levels[sl], roi.array[sl]
        zones = sum(ndimage.label(inside & (lv == g), structure=np.ones((3, 3, 3)))[1] for g in np.unique(lv[inside]))
        assert out["glszm_ZonePercentage"][tuple(v)] == pytest.approx(zones / inside.sum(), rel=1e-12)


def test_constant_kernels_give_the_textbook_values() -> None:
    img = np.full((7, 7, 7), 100, dtype=np.int16)
    roi = np.zeros(img.shape, bool)
    roi[1:6, 1:6, 1:6] = True
    out = compute_feature_maps(img, roi, MapSettings()).maps
    r = roi
    assert np.all(out["firstorder_Variance"][r] == 0)
    assert np.allclose(out["firstorder_Entropy"][r], 0, atol=1e-15)  # -log2(1 + eps), as pyradiomics
    assert np.allclose(out["glcm_JointEnergy"][r], 1) and np.all(out["glcm_Contrast"][r] == 0)
    assert np.allclose(out["glcm_Correlation"][r], 1)  # pyradiomics' convention for a flat kernel
    assert np.all(out["ngtdm_Coarseness"][r] == 1e6)  # pyradiomics' convention: no grey-tone difference
    corner, centre = (1, 1, 1), (3, 3, 3)  # one zone per kernel: 8 and 27 ROI voxels
    assert out["glszm_ZonePercentage"][corner] == pytest.approx(1 / 8)
    assert out["glszm_ZonePercentage"][centre] == pytest.approx(1 / 27)
    assert out["gldm_LargeDependenceEmphasis"][centre] == pytest.approx(np.mean(
        [(1 + n) ** 2 for n in (ndimage.uniform_filter(np.ones((3, 3, 3)), 3, mode="constant") * 27 - 1).ravel()]))


def test_results_do_not_depend_on_chunking(blob) -> None:
    img, roi = blob
    s = MapSettings(bin_width=30)
    big = compute_feature_maps(img.array, roi.array, s, features={"glcm": None, "glrlm": None}).maps
    small = compute_feature_maps(img.array, roi.array, s, features={"glcm": None, "glrlm": None},
                                 chunk_budget=200_000).maps
    for k in big:
        assert np.allclose(big[k], small[k], rtol=1e-10, atol=1e-12, equal_nan=True), k


def test_invalid_inputs_and_settings(blob) -> None:
    img, roi = blob
    with pytest.raises(InvalidImageError, match="shape"):
        compute_feature_maps(img.array[:-1], roi.array, MapSettings())
    with pytest.raises(InvalidImageError, match="empty"):
        compute_feature_maps(img.array, np.zeros_like(roi.array), MapSettings())
    bad = img.array.astype(float)
    bad[tuple(np.argwhere(roi.array)[0])] = np.nan
    with pytest.raises(InvalidImageError, match="NaN"):
        compute_feature_maps(bad, roi.array, MapSettings())
    for setting in ({"force2D": True}, {"distances": [1, 2]}, {"weightingNorm": "euclidean"},
                    {"symmetricalGLCM": False}):
        with pytest.raises(ConfigError):
            MapSettings.from_pyradiomics(setting)
    with pytest.raises(ConfigError, match="deprecated or unknown"):
        resolve_features({"glcm": ["SumVariance"]})
    with pytest.raises(ConfigError):
        MapSettings(kernel_radius=0)


def test_feature_list_parsing() -> None:
    assert parse_feature_list("glcm, firstorder_Mean,firstorder_Median") == {"glcm": None,
                                                                             "firstorder": ["Mean", "Median"]}
    assert resolve_features({"shape": None, "ngtdm": None}) == {"ngtdm": resolve_features(None)["ngtdm"]}


@pytest.mark.gpu
def test_cuda_matches_cpu(blob) -> None:
    img, roi = blob
    s = MapSettings(bin_width=15)
    cpu = compute_feature_maps(img.array, roi.array, s).maps
    gpu = compute_feature_maps(img.array, roi.array, s, device="cuda").maps
    for k in cpu:
        assert np.allclose(cpu[k], gpu[k], rtol=1e-9, atol=1e-12, equal_nan=True), k
    assert torch.cuda.is_available()
