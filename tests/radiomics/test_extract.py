"""ROI extraction: tidy table, volume/file inputs, provenance, CSV/Parquet, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sarcart.errors import InvalidImageError
from sarcart.io.nifti import write_mask, write_nifti
from sarcart.radiomics.extract import Case, extract_features, extract_table, write_table
from sarcart.radiomics.params import load_params

FAST = {"setting": {"binWidth": 10, "label": 1}, "imageType": {"Original": {}},
        "featureClass": {"firstorder": None, "glcm": ["Contrast", "JointEntropy"], "shape": ["VoxelVolume"]}}


def test_volumes_and_files_give_the_same_row(blob, tmp_path) -> None:
    img, roi = blob
    write_nifti(img, tmp_path / "img.nii.gz")
    write_mask(roi, tmp_path / "roi.nii.gz")
    a = extract_features(img, roi, FAST, image_id="a")
    b = extract_features(tmp_path / "img.nii.gz", tmp_path / "roi.nii.gz", FAST, image_id="a")
    feats = [k for k in a if k.startswith("original_")]
    assert feats and all(a[k] == pytest.approx(b[k], rel=1e-6) for k in feats)  # NIfTI stores float32 spacing
    x = img.array[roi.array].astype(float)
    assert a["original_firstorder_Mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert a["original_shape_VoxelVolume"] == pytest.approx(roi.array.sum() * 1.2 * 1.2 * 2.5, rel=1e-9)
    assert a["original_firstorder_ExcessKurtosis"] == pytest.approx(a["original_firstorder_Kurtosis"] - 3)


def test_table_is_tidy_with_provenance(blob, tmp_path) -> None:
    img, roi = blob
    shifted = img.with_array((img.array + 100).astype(np.int16))
    p = load_params(FAST)
    table = extract_table([Case(img, roi, "p1"), Case(shifted, roi, "p2", roi="GTV")], p)
    assert list(table["image_id"]) == ["p1", "p2"] and (table["settings_hash"] == p.settings_hash).all()
    assert table["pyradiomics_version"].iloc[0] == "v3.0.1"
    cols = [c for c in table.columns if c.startswith("original_")]
    assert all(len(c.split("_", 2)) == 3 for c in cols)  # <filter>_<class>_<feature>
    diff = table.loc[1, "original_firstorder_Mean"] - table.loc[0, "original_firstorder_Mean"]
    assert diff == pytest.approx(100.0)
    for suffix in (".csv", ".parquet"):
        path = write_table(table, tmp_path / f"t{suffix}", p)
        back = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        assert np.allclose(back[cols].to_numpy(float), table[cols].to_numpy(float), rtol=1e-9)
        assert (tmp_path / "t.params.yaml").is_file()


def test_errors_name_the_problem(blob, tmp_path) -> None:
    img, roi = blob
    with pytest.raises(InvalidImageError, match="label 3"):
        extract_features(img, roi, FAST, label=3)
    with pytest.raises(InvalidImageError, match="not found"):
        extract_features(tmp_path / "nope.nii.gz", roi, FAST)
    with pytest.raises(InvalidImageError, match=".csv or .parquet"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.xlsx")
