"""Voxel-wise maps against pyradiomics' voxel-based mode, run here on the same settings (float64).

Tolerance (issue 6): |sarcart - pyradiomics| <= 1e-5 x max(|value|, the feature's range over the ROI) per
voxel. pyradiomics runs with ``voxelBatch: 1`` (every kernel on its own), except in the test that
documents what its default batching does differently.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import shared_path
from pyrad_reference import disagreements, pyradiomics_maps, roi_box

from sarcart.radiomics.maps import FEATURES, MapSettings, compute_feature_maps
from sarcart.radiomics.maps.glcm import glcm_matrices
from sarcart.radiomics.maps.kernel import KernelGeometry, gather, iter_chunks

N_MAPS = sum(len(v) for v in FEATURES.values())


def _case(folder: str, image: str, label: str, n_voxels: int | None) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    img = sitk.ReadImage(str(shared_path(folder, image)))
    roi = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_path(folder, label)))).transpose(2, 1, 0) == 1
    if n_voxels:
        roi = roi_box(roi, n_voxels)
    return img, sitk.GetArrayFromImage(img).transpose(2, 1, 0), roi


def _compare(img: sitk.Image, arr: np.ndarray, roi: np.ndarray, setting: dict, voxel: dict) -> None:
    ref = pyradiomics_maps(img, roi, setting, {**voxel, "voxelBatch": 1})
    ours = compute_feature_maps(arr, roi, MapSettings.from_pyradiomics({**setting, **voxel}),
                                spacing_mm=img.GetSpacing()).maps
    assert len(ref) == N_MAPS == len(ours)
    assert disagreements(ours, ref, roi) == {}


@pytest.mark.parametrize("setting,voxel", [
    ({"binWidth": 25}, {"kernelRadius": 1}),
    ({"binWidth": 5, "gldm_a": 1, "voxelArrayShift": 50}, {"kernelRadius": 2}),
    ({"binCount": 16}, {"kernelRadius": 1, "maskedKernel": False, "initValue": -1.0}),
])
def test_breast1_whole_roi(setting: dict, voxel: dict) -> None:
    img, arr, roi = _case("pyradiomics_cases", "breast1_image.nrrd", "breast1_label.nrrd", None)
    _compare(img, arr, roi, setting, voxel)


def test_brain1_crop() -> None:
    img, arr, roi = _case("pyradiomics_cases", "brain1_image.nrrd", "brain1_label.nrrd", 150)
    _compare(img, arr, roi, {"binWidth": 50}, {"kernelRadius": 1})


def test_real_sarcoma_crop() -> None:
    img, arr, roi = _case("sts_mr_t1", "STS_026/image.nii.gz", "STS_026/gtv.nii.gz", 200)
    _compare(img, arr, roi, {"binCount": 32}, {"kernelRadius": 1})


def test_default_batching_differs_only_where_documented() -> None:
    """With its default voxelBatch, pyradiomics returns NaN for JointAverage wherever a kernel has a direction
    without voxel pairs, and MCC fails for the whole batch (0 = initValue) when any kernel has one."""
    img, arr, roi = _case("pyradiomics_cases", "breast1_image.nrrd", "breast1_label.nrrd", None)
    setting = {"binWidth": 25}
    ref = pyradiomics_maps(img, roi, setting, {"kernelRadius": 1})
    ours = compute_feature_maps(arr, roi, MapSettings.from_pyradiomics(setting), spacing_mm=img.GetSpacing()).maps
    assert set(disagreements(ours, ref, roi)) == {"glcm_JointAverage", "glcm_MCC"}
    settings = MapSettings.from_pyradiomics(setting)
    geo = KernelGeometry.build(1)
    hoods = gather(arr, roi, settings, geometry=geo)
    empty = np.zeros(hoods.raw.shape[0], dtype=bool)
    for chunk in iter_chunks(hoods):
        empty[chunk.rows.numpy()] = (glcm_matrices(chunk, geo, chunk.levels.device).sum((2, 3)) == 0).any(1).numpy()
    nan_ref = np.isnan(ref["glcm_JointAverage"][tuple(hoods.voxel_index.T)])
    assert empty.any() and np.array_equal(nan_ref, empty)
    assert np.all(ref["glcm_MCC"][roi] == 0) and (ours["glcm_MCC"][roi] > 0.5).mean() > 0.5
