"""The written cohort (``sarcart synth`` on a tiny grid): layout, values against the spec, ground truth."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers import require_tool

from sarcart.io.course import load_course
from sarcart.io.dicom_series import read_dicom_series
from sarcart.io.labels import read_labels
from sarcart.io.nifti import read_mask, read_nifti
from sarcart.io.rtstruct import read_rtstruct
from sarcart.phantom import tissues as T
from sarcart.phantom.config import PRESCRIPTION_GY, load_spec

PATIENTS = {"SYN-RP-001": "retroperitoneum", "SYN-UE-002": "upper_extremity", "SYN-LE-003": "lower_extremity"}


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "cohort.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def test_layout_and_cohort_csv_match_the_spec(tiny_cohort: Path) -> None:
    spec = load_spec(tiny_cohort / "cohort_spec.yaml")
    assert (spec.patients, spec.fractions, spec.site, spec.seed, spec.snr, spec.hypoxia_cnr) == (3, 2, "mixed", 11, 25, 1.5)
    assert spec.spacing_mm == (4.0, 4.0, 6.0) and spec.shape == (100, 100, 72)
    rows = _rows(tiny_cohort)
    assert [r["patient"] for r in rows] == list(PATIENTS)
    for r in rows:
        assert r["site"] == PATIENTS[r["patient"]] and int(r["fractions"]) == 2 and float(r["snr"]) == 25
        # realised GTV matches the requested volume (calibrated over the allowed voxels)
        assert float(r["tumour_cc"]) == pytest.approx(float(r["volume_cc"]), rel=0.02)
        assert float(r["hypoxic_fraction_realised"]) == pytest.approx(float(r["hypoxic_fraction"]), abs=0.01)
        course = load_course(tiny_cohort / r["patient"], strict=True)
        assert course.config.synthetic and course.config.site == r["site"]
        assert course.config.prescription.fractions == 6  # the trial's 6, not the 2 synthesised
        assert course.config.prescription.dose_gy == PRESCRIPTION_GY[r["site"]]
        assert [f.name for f in course.fractions] == ["fx00", "fx01", "fx02"]
        for fx in course.fractions:
            for name in ("image.nii.gz", "labels.nii.gz", "labels.json", "hypoxia.nii.gz", "rtstruct.dcm", "truth.json"):
                assert (fx.root / name).is_file(), f"{fx.root}/{name}"
            assert fx.deformation_to_ref.is_file() == (fx.index > 0)
            assert len(list(fx.mr_dir.glob("*.dcm"))) == 72


def test_dicom_series_holds_the_nifti_values_and_identity(tiny_cohort: Path) -> None:
    fx = tiny_cohort / "SYN-UE-002" / "fx01"
    series = read_dicom_series(fx / "mr")
    image = read_nifti(fx / "image.nii.gz")
    assert series.volume.geometry.is_close(image.geometry)
    np.testing.assert_array_equal(series.volume.array, image.array.astype(np.float32))
    ds = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    assert "RescaleSlope" not in ds and ds.BodyPartExamined == "ARM" and ds.Laterality in ("L", "R")
    assert ds.PatientID == "SYN-UE-002" and float(ds.RepetitionTime) == 3.0 and float(ds.FlipAngle) == 60.0
    other = pydicom.dcmread(next((tiny_cohort / "SYN-UE-002" / "fx00" / "mr").glob("*.dcm")), stop_before_pixels=True)
    assert other.StudyInstanceUID != ds.StudyInstanceUID and other.FrameOfReferenceUID != ds.FrameOfReferenceUID
    assert image.array.max() <= 4095


def test_labels_rtstruct_and_hypoxia_are_consistent(tiny_cohort: Path) -> None:
    for patient, site in PATIENTS.items():
        fx = tiny_cohort / patient / "fx00"
        labels, spec = read_labels(fx / "labels.nii.gz")
        assert spec == T.LABEL_SPEC
        hyp = read_mask(fx / "hypoxia.nii.gz").array
        assert hyp.any() and np.all(labels.array[hyp] == T.TUMOUR)  # HYPOXIA inside viable tumour only
        series = read_dicom_series(fx / "mr")
        ss = read_rtstruct(fx / "rtstruct.dcm", series)
        expected = {"GTV", "BODY", "BONE", "HYPOXIA"} | ({"BOWEL", "GAS", "KIDNEY_L", "KIDNEY_R"}
                                                        if site == "retroperitoneum" else set())
        assert expected <= set(ss.masks)
        assert ("EDEMA" in ss.masks) == bool((labels.array == T.EDEMA).any())
        if site == "retroperitoneum":
            assert "EDEMA" not in ss.masks
        for name in ("GTV", "BODY", "KIDNEY_L"):
            if name in ss.masks:
                truth = np.isin(labels.array, T.STRUCTURES[name])
                assert _dice(ss.masks[name].array, truth) >= 0.95, (patient, name)


def _resample_ref(ref: Path, field: sitk.Image, target: sitk.Image) -> np.ndarray:
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    out = sitk.Resample(sitk.ReadImage(str(ref)), target, tx, sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


@pytest.mark.parametrize("patient", list(PATIENTS))
def test_saved_deformation_maps_fx00_onto_each_fraction(tiny_cohort: Path, patient: str) -> None:
    """fx00 labels resampled through deformation_to_ref (SimpleITK, NN) reproduce the fraction's labels.

    Checked over the voxels whose mapped point lies inside the fx00 grid; GAS is excluded because it
    is regenerated every fraction (BOWEL, their union with the lumen, is checked).
    """
    root = tiny_cohort / patient
    for fx in ("fx01", "fx02"):
        field = sitk.ReadImage(str(root / fx / "deformation_to_ref.nii.gz"))
        assert field.GetNumberOfComponentsPerPixel() == 3 and field.GetSpacing() == (16.0, 16.0, 12.0)
        target = sitk.ReadImage(str(root / fx / "labels.nii.gz"))
        warped = _resample_ref(root / "fx00" / "labels.nii.gz", field, target)
        ones = sitk.Image(target.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(target)
        ref_ones = sitk.Image(target.GetSize(), sitk.sitkUInt8) + 1
        ref_ones.CopyInformation(sitk.ReadImage(str(root / "fx00" / "labels.nii.gz")))
        tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        inside = sitk.GetArrayFromImage(sitk.Resample(ref_ones, target, tx, sitk.sitkNearestNeighbor, 0)
                                        ).transpose(2, 1, 0) > 0
        lab = sitk.GetArrayFromImage(target).transpose(2, 1, 0)
        for name in ("BODY", "BONE", "GTV", "NECROSIS", "BOWEL", "KIDNEY_L", "KIDNEY_R", "EDEMA"):
            a = np.isin(warped, T.STRUCTURES[name]) & inside
            b = np.isin(lab, T.STRUCTURES[name]) & inside
            if a.sum() + b.sum() > 0:
                assert _dice(a, b) >= 0.99, (patient, fx, name, _dice(a, b))
        hyp = _resample_ref(root / "fx00" / "hypoxia.nii.gz", field, target) > 0
        assert _dice(hyp & inside, read_mask(root / fx / "hypoxia.nii.gz").array & inside) >= 0.99
        truth = json.loads((root / fx / "truth.json").read_text())
        assert truth["fraction"] == int(fx[2:]) and truth["snr_requested"] == 25
        assert truth["hypoxia_cnr_noise_free"] == pytest.approx(1.5, abs=1e-6)


@pytest.mark.integration
def test_dciodvfy_accepts_an_mr_slice_and_the_rtstruct(tiny_cohort: Path) -> None:
    tool = require_tool("dciodvfy", "dicom3tools")
    fx = tiny_cohort / "SYN-RP-001" / "fx01"
    for path in (sorted((fx / "mr").glob("*.dcm"))[30], fx / "rtstruct.dcm"):
        res = subprocess.run([tool, str(path)], check=False, capture_output=True, text=True, timeout=120)
        errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


def test_spec_with_unknown_key_is_refused_by_the_cli(tmp_path: Path) -> None:
    from sarcart.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_text("patients: 1\nfractions: 1\nsite: retroperitoneum\nbogus_key: 3\n")
    assert main(["synth", "--out", str(tmp_path / "x"), "--spec", str(spec)]) == 2  # ConfigError -> exit 2
    assert not (tmp_path / "x").exists()
