"""Metrics against analytic answers and an independent implementation; ring; bootstrap; reports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from sarcart.training.evaluation import write_report
from sarcart.training.metrics import (
    bootstrap_ci,
    mask_metrics,
    paired_difference_ci,
    ring,
    score_case,
    summarise,
)


def _ball(shape, centre, radius_mm, spacing):
    idx = np.indices(shape).astype(float)
    d2 = sum(((idx[a] - centre[a]) * spacing[a]) ** 2 for a in range(3))
    return d2 <= radius_mm ** 2


def _surface_distances(a, b, spacing):
    """Independent: distances (mm) from the surface voxels of a to the surface of b (scipy EDT)."""
    sa = a & ~ndimage.binary_erosion(a)
    sb = b & ~ndimage.binary_erosion(b)
    return ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]


def test_concentric_balls_give_the_analytic_distances():
    sp = (0.5, 0.5, 0.5)
    shape = (80, 80, 80)
    c = (40, 40, 40)
    inner, outer = _ball(shape, c, 10.0, sp), _ball(shape, c, 13.0, sp)
    m = mask_metrics(inner, outer, sp)
    # Dice by voxel counts; and the continuous value 2 r1^3 / (r1^3 + r2^3) within discretisation
    assert m["dice"] == pytest.approx(2 * inner.sum() / (inner.sum() + outer.sum()), rel=1e-6)
    assert m["dice"] == pytest.approx(2 * 10 ** 3 / (10 ** 3 + 13 ** 3), abs=0.01)
    # every surface point is 3 mm from the other surface (within one voxel)
    assert m["hd95_mm"] == pytest.approx(3.0, abs=0.5)
    assert m["msd_mm"] == pytest.approx(3.0, abs=0.5)
    assert m["surface_dice_2mm"] < 0.05  # 3 mm apart: nothing within 2 mm
    near = mask_metrics(inner, _ball(shape, c, 11.0, sp), sp)
    assert near["surface_dice_2mm"] > 0.95  # 1 mm apart: everything within 2 mm


def test_hd95_agrees_with_an_independent_computation_on_anisotropic_grids():
    sp = (0.8, 1.1, 3.0)
    rng = np.random.default_rng(3)
    a = _ball((60, 50, 24), (28, 25, 12), 14.0, sp)
    b = _ball((60, 50, 24), (33, 22, 13), 12.0, sp) | (rng.random((60, 50, 24)) > 0.999)
    m = mask_metrics(a, b, sp)
    dab, dba = _surface_distances(a, b, sp), _surface_distances(b, a, sp)
    d = np.concatenate([dab, dba])
    # HD95: the larger of the two directed 95th percentiles; MSD: mean over both surfaces
    assert m["hd95_mm"] == pytest.approx(max(np.percentile(dab, 95), np.percentile(dba, 95)), rel=0.02, abs=0.1)
    assert m["msd_mm"] == pytest.approx(d.mean(), rel=0.02, abs=0.05)
    # Dice against SimpleITK's overlap filter
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(sitk.GetImageFromArray(a.astype(np.uint8)), sitk.GetImageFromArray(b.astype(np.uint8)))
    assert m["dice"] == pytest.approx(f.GetDiceCoefficient(), rel=1e-6)


def test_a_one_slice_shift_along_z_costs_one_slice_thickness():
    sp = (1.0, 1.0, 3.0)
    a = np.zeros((30, 30, 20), bool)
    a[10:20, 10:20, 5:15] = True
    b = np.roll(a, 1, axis=2)
    m = mask_metrics(a, b, sp)
    assert m["hd95_mm"] == pytest.approx(3.0, abs=1e-3)
    assert m["dice"] == pytest.approx(2 * 9 / 20)


def test_empty_predictions_are_penalised_and_empty_pairs_not_scored():
    sp = (2.0, 2.0, 2.0)
    ref = np.zeros((10, 10, 10), bool)
    ref[3:6, 3:6, 3:6] = True
    m = mask_metrics(np.zeros_like(ref), ref, sp)
    assert m["dice"] == 0 and m["hd95_mm"] == pytest.approx(np.sqrt(3) * 20)
    assert all(np.isnan(v) for v in mask_metrics(np.zeros_like(ref), np.zeros_like(ref), sp).values())


def test_ring_is_the_shell_up_to_30_mm_around_the_ptv():
    sp = (2.0, 2.0, 2.0)
    ptv = np.zeros((60, 20, 20), bool)
    ptv[10:14, 8:12, 8:12] = True
    r = ring(ptv, sp, width_mm=30.0)
    assert not (r & ptv).any()
    # along +x from the PTV face at i=13: 30 mm = 15 voxels -> i = 28 inside, 29 outside
    assert r[28, 10, 10] and not r[29, 10, 10]


def test_oars_are_scored_inside_the_ring_too():
    sp = (2.0, 2.0, 2.0)
    gtv = np.zeros((60, 30, 30), bool)
    gtv[5:10, 10:20, 10:20] = True
    bowel = np.zeros_like(gtv)
    bowel[12:50, 10:20, 10:20] = True  # reaches from 2 voxels to far beyond 3 cm
    pred_bowel = bowel.copy()
    pred_bowel[40:50] = False  # errors only far from the target
    rows = score_case({"GTV": gtv, "BOWEL": pred_bowel}, {"GTV": gtv, "BOWEL": bowel}, sp, ptv_margin_mm=0.0)
    by = {(r["structure"], r["region"]): r for r in rows}
    assert by[("GTV", "all")]["dice"] == 1.0 and ("GTV", "ring") not in by
    assert by[("BOWEL", "all")]["dice"] < 0.9
    assert by[("BOWEL", "ring")]["dice"] == 1.0  # the ring ends at i = 9 + 15 = 24 < 40


def test_bootstrap_interval_and_summary():
    v = np.random.default_rng(0).normal(0.8, 0.05, 200)
    lo, hi = bootstrap_ci(v, np.mean, n=1000)
    se = v.std(ddof=1) / np.sqrt(v.size)
    assert lo < v.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)  # normal-theory width
    assert bootstrap_ci(np.full(5, 0.7)) == (pytest.approx(0.7), pytest.approx(0.7))
    rows = [{"case": str(i), "structure": "GTV", "region": "all", "dice": d, "hd95_mm": 2.0, "msd_mm": 1.0,
             "surface_dice_2mm": 0.9} for i, d in enumerate([0.7, 0.8, 0.9])]
    s = {m["metric"]: m for m in summarise(rows)}
    assert s["dice"]["mean"] == pytest.approx(0.8) and s["dice"]["median"] == pytest.approx(0.8)
    assert s["dice"]["n"] == 3


def test_report_files(tmp_path):
    rows = [{"case": f"c{i}", "structure": s, "region": "all", "dice": 0.5 + 0.1 * i, "hd95_mm": 5.0 - i,
             "msd_mm": 1.0, "surface_dice_2mm": 0.8, "volume_ref_cc": 1.0, "volume_pred_cc": 1.0}
            for i in range(3) for s in ("GTV", "BOWEL")]
    summary = write_report(pd.DataFrame(rows), tmp_path, meta={"model": "m"})
    assert pd.read_csv(tmp_path / "metrics.csv").shape == (6, 9)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["n_cases"] == 3 == summary["n_cases"]
    gtv = next(m for m in on_disk["metrics"] if m["structure"] == "GTV" and m["metric"] == "dice")
    assert gtv["mean"] == pytest.approx(0.6)
    assert (tmp_path / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_noise_and_contrast_to_noise_of_a_known_image():
    from sarcart.training.metrics import contrast_to_noise, noise_sigma

    rng = np.random.default_rng(1)
    sp = (1.5, 1.5, 3.0)
    img = np.full((80, 80, 20), 100.0, np.float32)
    ball = _ball(img.shape, (40, 40, 10), 15.0, sp)
    img[ball] = 130.0
    noisy = img + rng.normal(0, 5.0, img.shape).astype(np.float32)
    assert noise_sigma(noisy) == pytest.approx(5.0, rel=0.05)  # the edges of the ball barely matter
    assert contrast_to_noise(noisy, ball, sp, sigma=5.0) == pytest.approx(30.0 / 5.0, rel=0.05)


def test_paired_difference_is_the_mean_of_per_case_differences_with_a_normal_theory_width():
    rng = np.random.default_rng(1)
    a = rng.normal(0.8, 0.1, 300)
    b = a - 0.03 + rng.normal(0.0, 0.02, 300)   # paired: the shared per-case term cancels
    a[5], b[7] = np.nan, np.nan                   # pairs with a NaN are dropped
    keep = np.isfinite(a) & np.isfinite(b)
    d = (a - b)[keep]
    m, lo, hi = paired_difference_ci(a, b, n=1000)
    assert m == pytest.approx(d.mean())
    assert hi - lo == pytest.approx(2 * 1.96 * d.std(ddof=1) / np.sqrt(d.size), rel=0.15)
    assert lo < 0.03 < hi


def test_patient_clustered_difference_equals_the_bootstrap_of_patient_means_and_ignores_duplicated_images():
    rng = np.random.default_rng(3)
    a = rng.normal(0.85, 0.05, 12)
    b = a - 0.02 + rng.normal(0.0, 0.03, 12)
    d = a - b
    # each patient imaged twice with identical errors: the images add no independent evidence
    a2, b2, pid = np.repeat(a, 2), np.repeat(b, 2), np.repeat(np.arange(12), 2)
    m, lo, hi = paired_difference_ci(a2, b2, groups=pid, n=1000)
    # equal group sizes: the clustered interval is the plain bootstrap of the 12 patient means (same draws)
    assert m == pytest.approx(d.mean())
    assert (lo, hi) == pytest.approx(bootstrap_ci(d, np.mean, n=1000))
    # resampling images instead of patients would pretend 24 independent cases: about 1/sqrt(2) as wide
    _, lo_i, hi_i = paired_difference_ci(a2, b2, n=1000)
    assert (hi_i - lo_i) / (hi - lo) == pytest.approx(1 / np.sqrt(2), rel=0.2)
