"""Cohort extraction: values against pyradiomics run directly, resumability, provenance, failures, Dask."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk
from cohort_support import FAST_PARAMS, tiny_cohort, tiny_rows, write_manifest  # noqa: F401

from sarcart.errors import ConfigError
from sarcart.radiomics.cohort import CohortConfig, extract_cohort
from sarcart.radiomics.manifest import read_manifest
from sarcart.radiomics.params import load_params

THREAD = CohortConfig(processes=False, workers=1)


def _direct_pyradiomics(image: Path, labels: Path, tmp: Path) -> dict[str, float]:
    """Features by pyradiomics itself on a GTV mask made here from the label values 13 and 14."""
    from radiomics import featureextractor

    lab = sitk.ReadImage(str(labels))
    arr = np.isin(sitk.GetArrayFromImage(lab), (13, 14)).astype(np.uint8)
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(lab)
    sitk.WriteImage(mask, str(tmp / "gtv.nii.gz"))
    ext = featureextractor.RadiomicsFeatureExtractor(dict(load_params(FAST_PARAMS).data))
    res = ext.execute(str(image), str(tmp / "gtv.nii.gz"), label=1)
    return {k: float(v) for k, v in res.items() if not k.startswith("diagnostics_")}


def test_features_match_pyradiomics_and_are_resumed(tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    manifest = write_manifest(tiny_cohort / "m_basic.csv", tiny_rows(tiny_cohort))
    out = tmp_path / "features.parquet"
    run = extract_cohort(manifest, out, FAST_PARAMS, config=THREAD, show_progress=False)
    assert run.computed == 4 and run.cached == 0 and run.failures.empty
    table = run.table
    assert list(table["patient"]) == sorted(table["patient"]) and list(table["fraction"]) == [0, 1, 0, 1]
    row = table.iloc[1]
    ref = _direct_pyradiomics(tiny_cohort / row.patient / "fx01" / "image.nii.gz",
                              tiny_cohort / row.patient / "fx01" / "labels.nii.gz", tmp_path)
    for name in ("original_firstorder_Mean", "original_firstorder_Entropy", "original_glcm_Contrast",
                 "original_shape_MeshVolume"):
        assert row[name] == pytest.approx(ref[name], rel=1e-9)
    # the voxel volume is the GTV voxel count times the voxel volume (native grid)
    n_vox = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(tiny_cohort / row.patient / "fx01" / "labels.nii.gz"))),
                    (13, 14)).sum()
    assert row["original_shape_VoxelVolume"] == pytest.approx(n_vox * 3 * 3 * 6)
    # carried manifest columns and provenance
    assert list(table["response"]) == [0, 0, 1, 1] and list(table["age"]) == [40, 40, 41, 41]
    img = tiny_cohort / row.patient / "fx01" / "image.nii.gz"
    assert row["image_sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()
    assert row["settings_hash"] == load_params(FAST_PARAMS).settings_hash and row["mask_source"] == "manifest"
    meta = json.loads(pq.read_schema(out).metadata[b"sarcart.cohort"])
    assert meta["settings_hash"] == row["settings_hash"] and meta["n_cases"] == 4
    assert (tmp_path / "features.params.yaml").is_file() and (tmp_path / "features.failures.csv").is_file()
    # a second run extracts nothing and gives the same table
    again = extract_cohort(manifest, out, FAST_PARAMS, config=THREAD, show_progress=False)
    assert again.computed == 0 and again.cached == 4
    pd.testing.assert_frame_equal(again.table, table)
    # other settings: everything is extracted again
    other = {**FAST_PARAMS, "setting": {"resampledPixelSpacing": None, "binCount": 16}}
    assert extract_cohort(manifest, out, other, config=THREAD, show_progress=False).computed == 4


def test_changed_file_is_extracted_again(tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    rows = [{**r, "image": str(tiny_cohort / str(r["image"])), "mask": str(tiny_cohort / str(r["mask"]))}
            for r in tiny_rows(tiny_cohort)[:2]]
    copy = tmp_path / "image.nii.gz"
    copy.write_bytes(Path(str(rows[0]["image"])).read_bytes())
    rows[0]["image"] = str(copy)
    manifest = write_manifest(tmp_path / "m.csv", rows)
    cfg = CohortConfig(processes=False, workers=1, cache_dir=tmp_path / "cache")
    first = extract_cohort(manifest, tmp_path / "a.parquet", FAST_PARAMS, config=cfg, show_progress=False)
    assert first.computed == 2 and first.failures.empty
    image = sitk.ReadImage(str(copy))
    sitk.WriteImage(image + 1, str(copy))  # new content
    run = extract_cohort(manifest, tmp_path / "a.parquet", FAST_PARAMS, config=cfg, show_progress=False)
    assert run.computed == 1 and run.cached == 1


def test_failing_cases_are_reported_and_do_not_stop_the_rest(tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    good = tiny_rows(tiny_cohort)[:1]
    patient = good[0]["patient"]
    labels = sitk.ReadImage(str(tiny_cohort / patient / "fx00" / "labels.nii.gz"))
    empty = sitk.Image(labels.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(labels)
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    shifted = sitk.Cast(labels == 13, sitk.sitkUInt8)
    shifted.SetOrigin(tuple(o + 4.0 for o in labels.GetOrigin()))
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nii.gz"))
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    image = str(tiny_cohort / patient / "fx00" / "image.nii.gz")
    bad = [{"patient": "B1", "fraction": 0, "image": str(tmp_path / "broken.nii.gz"), "mask": str(tmp_path / "empty.nii.gz")},
           {"patient": "B2", "fraction": 0, "image": image, "mask": str(tmp_path / "empty.nii.gz")},
           {"patient": "B3", "fraction": 0, "image": image, "mask": str(tmp_path / "shifted.nii.gz")},
           {"patient": "B4", "fraction": 0, "image": image, "mask": ""},
           {"patient": "B5", "fraction": 0, "image": str(tmp_path / "missing.nii.gz"), "mask": str(tmp_path / "empty.nii.gz")}]
    rows = [{**r, "roi": "GTV", "response": 1} for r in bad] + [{**good[0], "image": image,
                                                                 "mask": str(tiny_cohort / str(good[0]["mask"]))}]
    run = extract_cohort(write_manifest(tmp_path / "m.csv", rows), tmp_path / "f.parquet", FAST_PARAMS, config=THREAD,
                         show_progress=False)
    assert list(run.table["patient"]) == [patient]
    reasons = dict(zip(run.failures["patient"], run.failures["reason"]))
    assert reasons == {"B1": "unreadable", "B2": "empty_mask", "B3": "geometry_mismatch", "B4": "no_contour",
                       "B5": "missing_file"}
    written = pd.read_csv(tmp_path / "f.failures.csv")
    assert list(written["reason"]) == [reasons[p] for p in written["patient"]]


def test_local_process_cluster_gives_the_same_table(tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    manifest = write_manifest(tmp_path / "m.csv", [
        {**r, "image": str(tiny_cohort / str(r["image"])), "mask": str(tiny_cohort / str(r["mask"]))}
        for r in tiny_rows(tiny_cohort)[:2]])
    threaded = extract_cohort(manifest, tmp_path / "t.parquet", FAST_PARAMS, config=THREAD, show_progress=False)
    procs = extract_cohort(manifest, tmp_path / "p.parquet", FAST_PARAMS,
                           config=CohortConfig(workers=2, processes=True), show_progress=False)
    assert procs.computed == 2
    pd.testing.assert_frame_equal(procs.table, threaded.table)


def test_manifest_validation(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("patient,fraction,image\nA,0,a.nii.gz\n")
    with pytest.raises(ConfigError, match="lacks the columns"):
        read_manifest(p)
    p.write_text("patient,fraction,image,mask\nA,0,a.nii.gz,m.nii.gz\nA,0,b.nii.gz,m.nii.gz\n")
    with pytest.raises(ConfigError, match="listed twice"):
        read_manifest(p)
    p.write_text("patient,fraction,image,mask\nA,first,a.nii.gz,m.nii.gz\n")
    with pytest.raises(ConfigError, match="fraction must be an integer"):
        read_manifest(p)
    p.write_text("patient,fraction,image,mask,outcome\nA,2,a.nii.gz,,1\nA,1,/abs/b.nii.gz,m.nii.gz,1\nA,3,c.nii.gz,,1\n")
    cases = read_manifest(p)
    assert [c.order for c in cases] == [1, 0, 2]
    assert cases[0].image == (tmp_path / "a.nii.gz") and str(cases[1].image) == "/abs/b.nii.gz"
    assert [c.carry_from for c in cases] == [1, None, 1] and cases[0].extra == {"outcome": 1}
    with pytest.raises(ConfigError, match="processes=False"):
        CohortConfig(processes=False, workers=2)
