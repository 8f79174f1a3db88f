"""`sarcart radiomics extract|maps|habitats` from the outside, and maps with pyradiomics' preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from pyrad_reference import disagreements, pyradiomics_maps

from sarcart.cli import main
from sarcart.io.nifti import read_nifti, write_mask, write_nifti
from sarcart.radiomics.extract import extract_features
from sarcart.radiomics.maps.io import feature_maps, read_maps

PARAMS = """\
setting:
  binWidth: 20
  label: 1
  normalize: true
  normalizeScale: 100
  resampledPixelSpacing: [1.5, 1.5, 2.0]
  interpolator: sitkBSpline
  resegmentRange: [-2.5, 2.5]
  resegmentMode: sigma
voxelSetting:
  kernelRadius: 1
featureClass:
  firstorder:
  glszm:
imageType:
  Original: {}
"""


@pytest.fixture()
def files(blob, tmp_path):
    img, roi = blob
    write_nifti(img, tmp_path / "img.nii.gz")
    write_mask(roi, tmp_path / "gtv.nii.gz")
    (tmp_path / "p.yaml").write_text(PARAMS)
    return tmp_path


def test_maps_with_preprocessing_match_pyradiomics(files) -> None:
    """Normalisation, B-spline resampling and sigma re-segmentation are pyradiomics' own; the maps agree."""
    fm = feature_maps(files / "img.nii.gz", files / "gtv.nii.gz", files / "p.yaml")
    image = sitk.ReadImage(str(files / "img.nii.gz"))
    from radiomics import featureextractor

    settings = {"binWidth": 20, "label": 1, "normalize": True, "normalizeScale": 100,
                "resampledPixelSpacing": [1.5, 1.5, 2.0], "interpolator": "sitkBSpline",
                "resegmentRange": [-2.5, 2.5], "resegmentMode": "sigma"}
    pre, msk = featureextractor.RadiomicsFeatureExtractor.loadImage(
        image, sitk.Cast(sitk.ReadImage(str(files / "gtv.nii.gz")), sitk.sitkUInt32), None, **settings)
    assert fm.roi.geometry.shape == pre.GetSize()
    ref = pyradiomics_maps(pre, fm.roi.array, {"binWidth": 20}, {"kernelRadius": 1, "voxelBatch": 1},
                           classes=("firstorder", "glszm"))
    ours = {k: v.array for k, v in fm.maps.items()}
    assert set(ours) == set(ref) and disagreements(ours, ref, fm.roi.array) == {}
    raw = sitk.GetArrayFromImage(msk).transpose(2, 1, 0) == 1
    assert fm.roi.array.sum() < raw.sum()  # re-segmentation removed outliers


def test_extract_cli_matches_the_api(files) -> None:
    out = files / "f.csv"
    assert main(["radiomics", "extract", "--image", str(files / "img.nii.gz"), "--mask", str(files / "gtv.nii.gz"),
                 "--params", str(files / "p.yaml"), "--id", "case1", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    row = extract_features(files / "img.nii.gz", files / "gtv.nii.gz", files / "p.yaml", image_id="case1")
    assert table.loc[0, "image_id"] == "case1"
    assert table.loc[0, "original_firstorder_Mean"] == pytest.approx(row["original_firstorder_Mean"], rel=1e-9)
    assert (files / "f.params.yaml").is_file()


def test_maps_and_habitats_cli(files) -> None:
    maps = files / "maps"
    assert main(["radiomics", "maps", "--image", str(files / "img.nii.gz"), "--mask", str(files / "gtv.nii.gz"),
                 "--params", str(files / "p.yaml"), "--features", "firstorder_Mean,firstorder_Variance,glszm",
                 "--out", str(maps)]) == 0
    names = sorted(p.name for p in maps.glob("*_*.nii.gz"))
    assert "firstorder_Mean.nii.gz" in names and "glszm_ZoneEntropy.nii.gz" in names and len(names) == 18
    info = json.loads((maps / "maps.json").read_text())
    assert info["n_voxels"] == int(read_nifti(maps / "roi.nii.gz").array.sum())
    fm = read_maps(maps, files / "gtv.nii.gz")  # the mask is resampled onto the maps' grid
    assert fm.roi.geometry.is_close(fm.maps["firstorder_Mean"].geometry)
    hab = files / "hab"
    feats = "firstorder_Mean,firstorder_Variance"
    assert main(["radiomics", "habitats", "--maps", str(maps), "--mask", str(maps / "roi.nii.gz"), "--k", "2",
                 "--out", str(hab)]) == 2  # default habitat features are not among these maps
    assert main(["radiomics", "habitats", "--maps", str(maps), "--mask", str(maps / "roi.nii.gz"), "--k", "2",
                 "--features", feats, "--out", str(hab)]) == 0
    assert main(["radiomics", "habitats", "--maps", str(maps), "--mask", str(maps / "roi.nii.gz"),
                 "--reference", str(hab / "habitats.json"), "--out", str(files / "hab2")]) == 0
    a = read_nifti(hab / "habitats.nii.gz").array
    b = read_nifti(files / "hab2" / "habitats.nii.gz").array
    assert np.mean(a[a > 0] == b[a > 0]) > 0.99  # same maps, reference labelling: the same habitats
