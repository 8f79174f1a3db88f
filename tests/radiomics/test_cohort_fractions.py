"""Per-fraction MR normalisation, carried outlines (against the phantom's true GTV) and delta-radiomics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from cohort_support import FAST_PARAMS, dice, gtv, tiny_cohort, tiny_rows, write_manifest  # noqa: F401

from sarcart.errors import ConfigError
from sarcart.io.geometry import Geometry, Volume
from sarcart.io.nifti import read_nifti
from sarcart.radiomics.cohort import CohortConfig, extract_cohort
from sarcart.radiomics.delta import delta_table, patient_table, slopes
from sarcart.radiomics.fractions import CarryConfig, body_mask, carry_outline, zscore_normalise


def test_zscore_is_invariant_to_gain_and_offset() -> None:
    rng = np.random.default_rng(3)
    arr = np.zeros((30, 30, 8))
    arr[5:25, 5:25] = 100 + 10 * rng.normal(size=(20, 20, 8))
    vol = Volume(arr, Geometry(arr.shape, (1.0, 1.0, 2.0)))
    body = body_mask(vol)
    assert body[5:25, 5:25].mean() > 0.99 and not body[:5].any()  # the Otsu body is the bright square
    a = zscore_normalise(vol).array
    b = zscore_normalise(vol.with_array(3.7 * arr + 250.0)).array
    np.testing.assert_allclose(a, b, atol=1e-3)
    inside = a[5:25, 5:25]
    assert inside.mean() == pytest.approx(0.0, abs=1e-3) and inside.std() == pytest.approx(100.0, rel=1e-4)


def test_features_of_rescaled_fraction_agree_after_normalisation(tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    row = tiny_rows(tiny_cohort)[0]
    image = sitk.ReadImage(str(tiny_cohort / str(row["image"])))
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32) * 1.8 + 40.0, str(tmp_path / "gain.nii.gz"))
    rows = [{**row, "image": str(tiny_cohort / str(row["image"])), "mask": str(tiny_cohort / str(row["mask"]))},
            {**row, "fraction": 1, "image": str(tmp_path / "gain.nii.gz"), "mask": str(tiny_cohort / str(row["mask"]))}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    cfg = CohortConfig(processes=False, workers=1, normalisation="zscore")
    t = extract_cohort(manifest, tmp_path / "z.parquet", FAST_PARAMS, config=cfg, show_progress=False).table
    raw = extract_cohort(manifest, tmp_path / "r.parquet", {**FAST_PARAMS, "setting": {
        "resampledPixelSpacing": None, "normalize": False}}, config=CohortConfig(processes=False, workers=1),
        show_progress=False).table
    for f in ("original_firstorder_Mean", "original_firstorder_90Percentile", "original_glcm_Contrast"):
        assert t[f].iloc[1] == pytest.approx(t[f].iloc[0], rel=1e-4, abs=1e-3)
    assert raw["original_firstorder_Mean"].iloc[1] == pytest.approx(1.8 * raw["original_firstorder_Mean"].iloc[0] + 40)
    assert (t["normalisation"] == "zscore").all() and (raw["normalisation"] == "none").all()


def test_carried_outline_matches_the_true_gtv(tiny_cohort: Path) -> None:  # noqa: F811
    patient = min(p.name for p in tiny_cohort.glob("SYN-*"))
    fx0, fx1 = (read_nifti(tiny_cohort / patient / f"fx{f:02d}" / "image.nii.gz") for f in (0, 1))
    g0, g1 = gtv(tiny_cohort, patient, 0), gtv(tiny_cohort, patient, 1)
    carried = carry_outline(fx1, fx0, fx0.with_array(g0), CarryConfig("deformable"))
    # baseline: the fx00 outline put on the fx01 grid by world coordinates alone (no registration)
    ref = sitk.Resample(sitk.Cast(fx0.with_array(g0.astype(np.uint8)).to_sitk(), sitk.sitkUInt8),
                        fx1.geometry.reference_image(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    unregistered = Volume.from_sitk(ref).array != 0
    d_reg, d_none = dice(carried.array, g1), dice(unregistered, g1)
    assert d_reg >= 0.8 and d_reg > d_none + 0.05, (d_reg, d_none)


def test_cohort_carries_outline_when_contour_is_missing(tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    rows = [{**r, "image": str(tiny_cohort / str(r["image"])), "mask": str(tiny_cohort / str(r["mask"]))}
            for r in tiny_rows(tiny_cohort)[:2]]
    rows[1]["mask"] = ""
    run = extract_cohort(write_manifest(tmp_path / "m.csv", rows), tmp_path / "c.parquet", FAST_PARAMS,
                         config=CohortConfig(processes=False, workers=1, carry=CarryConfig("rigid")), show_progress=False)
    assert list(run.table["mask_source"]) == ["manifest", "carried:0"]
    saved = list((tmp_path / "c.cache" / "masks").glob("*.nii.gz"))
    assert len(saved) == 1
    carried = read_nifti(saved[0]).array != 0
    truth = gtv(tiny_cohort, str(rows[1]["patient"]), 1)
    assert dice(carried, truth) >= 0.75
    volume = run.table["original_shape_VoxelVolume"].iloc[1]
    assert volume == pytest.approx(carried.sum() * 54.0)


def test_delta_and_slope_values() -> None:
    t = pd.DataFrame({"patient": ["a"] * 3 + ["b"] * 2, "fraction": [0, 2, 1, 1, 5], "y": [1, 1, 1, 0, 0],
                      "original_firstorder_Mean": [10.0, 14.0, 12.0, 0.0, 3.0],
                      "original_shape_VoxelVolume": [100.0, 80.0, 90.0, 50.0, 50.0]})
    d = delta_table(t)
    a = d[d.patient == "a"].set_index("fraction")
    assert a.loc[2, "delta_abs_original_firstorder_Mean"] == 4.0
    assert a.loc[2, "delta_rel_original_shape_VoxelVolume"] == pytest.approx(-0.2)
    assert np.isnan(d[(d.patient == "b") & (d.fraction == 5)]["delta_rel_original_firstorder_Mean"].iloc[0])
    s = slopes(t)
    assert s.loc["a", "slope_original_firstorder_Mean"] == pytest.approx(2.0)
    assert s.loc["b", "slope_original_firstorder_Mean"] == pytest.approx(3.0 / 4.0)
    p = patient_table(t, include=("baseline", "delta", "slope"))
    assert p.loc["a", "original_firstorder_Mean"] == 10.0 and p.loc["a", "y"] == 1
    assert p.loc["a", "delta_rel_original_firstorder_Mean"] == pytest.approx(0.4)
    t.loc[1, "y"] = 0
    with pytest.raises(ConfigError, match="vary between fractions"):
        patient_table(t)
