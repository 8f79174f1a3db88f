"""ICC(2,1)/ICC(3,1) against Shrout & Fleiss' published example, pingouin and simulation; perturbations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import shared_path

from sarcart.errors import ConfigError
from sarcart.io.geometry import Geometry, Volume
from sarcart.radiomics.perturb import (
    PerturbationConfig,
    adapt_volume,
    noise_sd,
    perturb,
    randomise_contour,
    replicate_rng,
    rotate_translate,
)
from sarcart.radiomics.reproducibility import between_fractions, icc, icc_table, robust_features

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; their Table 4 gives ICC(2,1) = .29, ICC(3,1) = .71
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)


def test_icc_reproduces_shrout_fleiss_table() -> None:
    r = icc(SHROUT_FLEISS)
    assert round(float(r["icc21"]), 2) == 0.29 and round(float(r["icc31"]), 2) == 0.71
    for kind in ("icc21", "icc31"):
        assert r[f"{kind}_low"] < r[kind] < r[f"{kind}_high"]


def test_icc_confidence_intervals_match_pingouin() -> None:
    pg = pytest.importorskip("pingouin")
    rng = np.random.default_rng(5)
    y = rng.normal(size=(15, 1)) * 2 + rng.normal(size=(15, 3)) + np.array([0.0, 0.5, 1.0])
    long = pd.DataFrame([(i, j, y[i, j]) for i in range(15) for j in range(3)], columns=["s", "r", "v"])
    ref = pg.intraclass_corr(long, targets="s", raters="r", ratings="v").set_index("Type")
    ours = icc(y)
    for kind, name in (("icc21", "ICC(A,1)"), ("icc31", "ICC(C,1)")):
        assert ours[kind] == pytest.approx(ref.loc[name, "ICC"], abs=1e-9)
        lo, hi = ref.loc[name, "CI95"]  # pingouin rounds its CI to 2 decimals
        assert ours[f"{kind}_low"] == pytest.approx(lo, abs=0.006) and ours[f"{kind}_high"] == pytest.approx(hi, abs=0.006)


def test_icc_ci_covers_the_true_value_95_percent_of_the_time() -> None:
    # two-way model y_ij = s_i + r_j + e_ij with var(s) = 4, var(r) = 0.25, var(e) = 1:
    # ICC(3,1) = 4 / 5, ICC(2,1) = 4 / 5.25 (McGraw & Wong 1996)
    rng = np.random.default_rng(11)
    n, k, reps = 25, 3, 400
    y = (rng.normal(0, 2, size=(n, 1, reps)) + rng.normal(0, 0.5, size=(1, k, reps))
         + rng.normal(0, 1, size=(n, k, reps)))
    r = icc(y)
    cover3 = np.mean((r["icc31_low"] <= 0.8) & (0.8 <= r["icc31_high"]))
    cover2 = np.mean((r["icc21_low"] <= 4 / 5.25) & (4 / 5.25 <= r["icc21_high"]))
    assert 0.92 <= cover3 <= 0.98 and 0.91 <= cover2 <= 0.99, (cover3, cover2)


def test_icc_table_long_format_robust_list_and_between_fractions() -> None:
    rng = np.random.default_rng(2)
    subject = rng.normal(size=20)
    rows = []
    for i in range(20):
        for rep in range(3):
            rows.append({"patient": f"P{i}", "fraction": rep, "original_firstorder_Stable": subject[i] + 0.05 * rng.normal(),
                         "original_firstorder_Noisy": rng.normal(), "original_firstorder_Drift": subject[i] + rep * 2.0})
    long = pd.DataFrame(rows)
    t = icc_table(long, subject="patient", rater="fraction")
    assert t.loc["original_firstorder_Stable", "icc21_low"] > 0.95 and t.loc["original_firstorder_Noisy", "icc21"] < 0.3
    # a systematic shift between raters lowers absolute agreement, not consistency
    assert t.loc["original_firstorder_Drift", "icc31"] == pytest.approx(1.0)
    assert t.loc["original_firstorder_Drift", "icc21"] < 0.5
    assert robust_features(t) == ["original_firstorder_Stable"]
    pd.testing.assert_frame_equal(between_fractions(long), t)
    wide = long.pivot(index="patient", columns="fraction", values="original_firstorder_Noisy").to_numpy()
    assert t.loc["original_firstorder_Noisy", "icc31"] == pytest.approx(float(icc(wide)["icc31"]))
    with pytest.raises(ConfigError, match="appear once"):
        icc_table(pd.concat([long, long]), subject="patient", rater="fraction")


def _ellipsoid(shape: tuple[int, int, int] = (40, 40, 16)) -> tuple[Volume, Volume]:
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    roi = ((ii - 20) / 10.0) ** 2 + ((jj - 19) / 7.0) ** 2 + ((kk - 8) / 4.5) ** 2 <= 1
    img = 100.0 + 50.0 * roi + 0.5 * ii
    geo = Geometry(shape, (1.0, 1.0, 2.0), (5.0, -3.0, 10.0))
    return Volume(img, geo), Volume(roi, geo)


def test_noise_estimate_on_pure_gaussian_noise() -> None:
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(50, 7.0, size=(64, 64, 6)), Geometry((64, 64, 6), (1.0, 1.0, 1.0)))
    assert noise_sd(vol) == pytest.approx(7.0, rel=0.05)


def test_geometric_perturbations() -> None:
    img, roi = _ellipsoid()
    same_img, same_roi = rotate_translate(img, roi, 0.0, np.zeros(3))
    np.testing.assert_allclose(same_img.array, img.array, atol=1e-6)
    assert (same_roi.array == roi.array).all()
    _, turned = rotate_translate(img, roi, 90.0, np.zeros(3))  # the 10 x 7 ellipse turns by a quarter
    ext = np.ptp(np.argwhere(turned.array), axis=0)
    assert ext[0] < ext[1] and abs(int(turned.array.sum()) - int(roi.array.sum())) < 0.05 * roi.array.sum()
    _, moved = rotate_translate(img, roi, 0.0, np.array([1.0, 0.0, 0.0]))  # one whole voxel along i
    assert (moved.array[:-1] == roi.array[1:]).all()
    for tau in (-0.1, 0.15):
        assert adapt_volume(roi, tau).array.sum() == round((1 + tau) * roi.array.sum())
    grown = adapt_volume(roi, 0.15).array
    assert (grown | roi.array).sum() == grown.sum()  # growing keeps the original ROI


def test_contour_randomisation_and_chain_are_reproducible() -> None:
    img, roi = _ellipsoid()
    new = randomise_contour(img, roi, replicate_rng(0, "c", 1), supervoxel_cc=0.05).array
    d = 2 * (new & roi.array).sum() / (new.sum() + roi.array.sum())
    assert 0.6 < d < 1.0
    cfg = PerturbationConfig(supervoxel_cc=0.05)
    a = perturb(img, roi, cfg, replicate_rng(3, "case", 2))
    b = perturb(img, roi, cfg, replicate_rng(3, "case", 2))
    c = perturb(img, roi, cfg, replicate_rng(3, "case", 3))
    assert np.array_equal(a[0].array, b[0].array) and np.array_equal(a[1].array, b[1].array)
    assert not np.array_equal(a[0].array, c[0].array)


@pytest.mark.slow
def test_real_sarcoma_volume_is_robust_under_perturbation(tmp_path: Path) -> None:
    from sarcart.radiomics.cohort import CohortConfig
    from sarcart.radiomics.robustness import perturbation_features, perturbation_icc

    root = shared_path("sts_mr_t1")
    cases = ["STS_025", "STS_002", "STS_041"]  # small GTVs (fast) of different sizes (9.7k, 17k, 19k voxels)
    pd.DataFrame([{"patient": c, "fraction": 1, "image": str(root / c / "image.nii.gz"),
                   "mask": str(root / c / "gtv.nii.gz")} for c in cases]).to_csv(tmp_path / "m.csv", index=False)
    params = {"base": "mr_default", "featureClass": {"shape": ["VoxelVolume", "Sphericity"], "firstorder": ["Mean"]}}
    long = perturbation_features(tmp_path / "m.csv", params, perturbation=PerturbationConfig(replicates=2),
                                 config=CohortConfig(processes=False, workers=1), show_progress=False)
    assert len(long) == 9
    vols = long.pivot(index="case", columns="replicate", values="original_shape_VoxelVolume")
    assert (vols[1] / vols[0]).between(0.7, 1.3).all() and (vols[1] != vols[0]).all()
    t = perturbation_icc(long)
    # ICC(2,1) from the two-way ANOVA mean squares written out here (Shrout & Fleiss 1979, case 2)
    x = vols.to_numpy(dtype=float)
    n, k = x.shape
    grand = x.mean()
    msr = k * ((x.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    msc = n * ((x.mean(axis=0) - grand) ** 2).sum() / (k - 1)
    sse = ((x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + grand) ** 2).sum()
    mse = sse / ((n - 1) * (k - 1))
    icc21 = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    assert t.loc["original_shape_VoxelVolume", "icc21"] == pytest.approx(icc21, rel=1e-9)
    assert t.loc["original_shape_VoxelVolume", "icc21"] > 0.8  # tumours of very different size stay apart
