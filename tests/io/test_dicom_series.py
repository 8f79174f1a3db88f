"""DICOM MR series: round trips checked against an independent reader (SimpleITK/GDCM) and bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from helpers import require_tool
from sarcart.errors import InvalidDicomError
from sarcart.io.dicom_series import read_dicom_series
from sarcart.io.dicom_write import write_dicom_series
from sarcart.io.geometry import Geometry, Volume

# sagittal-ish orientation: i along -S... a permutation with a flipped axis exercises the normal's sign
_DIRECTION = tuple(np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float).T.reshape(-1))


def _make_series(folder: Path, *, shape=(12, 9, 6), direction=_DIRECTION, seed: int = 0, **kwargs) -> Volume:
    g = Geometry(shape, (1.25, 0.9, 3.0), (10.0, -20.0, 35.0), direction)
    arr = np.random.default_rng(seed).integers(0, 4000, size=shape).astype(np.uint16)
    vol = Volume(arr, g)
    write_dicom_series(vol, folder, uid_seed=f"test-{seed}", **kwargs)
    return vol


def _gdcm_read(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_round_trip_geometry_and_values_match_gdcm(tmp_path) -> None:
    vol = _make_series(tmp_path / "s")
    ours = read_dicom_series(tmp_path / "s")
    assert ours.volume.geometry.is_close(vol.geometry, tol_mm=1e-4)
    np.testing.assert_array_equal(ours.volume.array, vol.array)
    gdcm = Volume.from_sitk(_gdcm_read(tmp_path / "s"))
    assert ours.volume.geometry.is_close(gdcm.geometry, tol_mm=1e-3), ours.volume.geometry.differences(gdcm.geometry)
    np.testing.assert_array_equal(ours.volume.array, gdcm.array.astype(np.float32))
    assert len(set(ours.sop_instance_uids)) == vol.geometry.shape[2]


def test_float_values_are_quantised_within_half_a_step(tmp_path) -> None:
    g = Geometry((6, 5, 3), (1.0, 1.0, 2.0))
    arr = np.random.default_rng(3).normal(100.0, 30.0, size=g.shape).astype(np.float32)
    write_dicom_series(Volume(arr, g), tmp_path / "f")
    back = read_dicom_series(tmp_path / "f").volume.array
    step = (arr.max() - arr.min()) / 65535
    assert np.abs(back - arr).max() <= step * 0.5 + 1e-4


def test_sorting_ignores_file_names_and_instance_numbers(tmp_path) -> None:
    vol = _make_series(tmp_path / "s")
    files = sorted((tmp_path / "s").glob("*.dcm"))
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    rng = np.random.default_rng(7)
    for n, f in enumerate(rng.permutation(files)):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = int(rng.integers(1, 99))
        ds.save_as(shuffled / f"img{n:03d}.dcm")
    back = read_dicom_series(shuffled)
    np.testing.assert_array_equal(back.volume.array, vol.array)
    assert back.volume.geometry.is_close(vol.geometry, tol_mm=1e-4)


def test_several_series_need_a_choice(tmp_path) -> None:
    a = _make_series(tmp_path / "mix", seed=1)
    _make_series(tmp_path / "mix" / "other", seed=2)
    with pytest.raises(InvalidDicomError, match="holds 2 image series.*series_uid"):
        read_dicom_series(tmp_path / "mix")
    uid = pydicom.dcmread(next((tmp_path / "mix").glob("*.dcm"))).SeriesInstanceUID
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "mix", series_uid=uid).volume.array, a.array)
    with pytest.raises(InvalidDicomError, match="not in"):
        read_dicom_series(tmp_path / "mix", series_uid="1.2.3")


def test_missing_slice_is_reported(tmp_path) -> None:
    _make_series(tmp_path / "s", shape=(8, 8, 7))
    os.unlink(tmp_path / "s" / "MR_0004.dcm")
    with pytest.raises(InvalidDicomError, match=r"non-uniform slice spacing.*about 1 slice\(s\) missing"):
        read_dicom_series(tmp_path / "s")


def test_a_series_cut_at_one_end_is_reported_from_its_declared_slice_count(tmp_path) -> None:
    _make_series(tmp_path / "s", shape=(8, 8, 10))
    files = sorted((tmp_path / "s").glob("MR_*.dcm"))
    # the writer declares the count, read back by pydicom independently of sarcart's reader
    assert {int(pydicom.dcmread(f).ImagesInAcquisition) for f in files} == {len(files)}
    for f in files[7:]:  # the last three slices never arrived: the rest is still a uniform stack
        os.unlink(f)
    with pytest.raises(InvalidDicomError, match=r"holds 7 of the 10 slices its ImagesInAcquisition"):
        read_dicom_series(tmp_path / "s")
    # without the attribute nothing tells the cut: the 7 slices read as a complete, uniform stack
    for f in files[:7]:
        ds = pydicom.dcmread(f)
        del ds.ImagesInAcquisition
        ds.save_as(f)
    assert read_dicom_series(tmp_path / "s").volume.array.shape == (8, 8, 7)


def test_duplicate_slice_is_reported(tmp_path) -> None:
    _make_series(tmp_path / "s")
    ds = pydicom.dcmread(tmp_path / "s" / "MR_0002.dcm")
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.save_as(tmp_path / "s" / "copy.dcm")
    with pytest.raises(InvalidDicomError, match="share position"):
        read_dicom_series(tmp_path / "s")


def test_mixed_orientations_are_rejected(tmp_path) -> None:
    _make_series(tmp_path / "s")
    ds = pydicom.dcmread(tmp_path / "s" / "MR_0003.dcm")
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(tmp_path / "s" / "MR_0003.dcm")
    with pytest.raises(InvalidDicomError, match="mixes 2 slice orientations"):
        read_dicom_series(tmp_path / "s")


def test_gantry_tilt_is_rejected_not_resampled(tmp_path) -> None:
    _make_series(tmp_path / "s", direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    for f in (tmp_path / "s").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.2 * (z - 35.0), z]  # shear along y with z: a tilted stack
        ds.save_as(f)
    with pytest.raises(InvalidDicomError, match="gantry tilt"):
        read_dicom_series(tmp_path / "s")


def test_non_image_objects_only(tmp_path) -> None:
    _make_series(tmp_path / "s")
    ds = pydicom.dcmread(tmp_path / "s" / "MR_0001.dcm", stop_before_pixels=True)
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns"):
        delattr(ds, tag)
    ds.Modality = "RTSTRUCT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    (tmp_path / "only").mkdir()
    ds.save_as(tmp_path / "only" / "rs.dcm")
    with pytest.raises(InvalidDicomError, match="no image slices, only non-image objects.*RTSTRUCT"):
        read_dicom_series(tmp_path / "only")
    # beside a series, non-image objects are ignored (with a warning)
    shutil.copy(tmp_path / "only" / "rs.dcm", tmp_path / "s" / "rs.dcm")
    assert read_dicom_series(tmp_path / "s").volume.geometry.shape == (12, 9, 6)


def test_unreadable_and_truncated_files(tmp_path) -> None:
    _make_series(tmp_path / "s")
    (tmp_path / "s" / "notes.txt").write_text("hello")
    with pytest.raises(InvalidDicomError, match="not readable DICOM: notes.txt"):
        read_dicom_series(tmp_path / "s")
    os.unlink(tmp_path / "s" / "notes.txt")
    f = tmp_path / "s" / "MR_0002.dcm"
    data = f.read_bytes()
    f.write_bytes(data[:-100])  # pixel data cut short
    with pytest.raises(InvalidDicomError, match="MR_0002"):
        read_dicom_series(tmp_path / "s")
    f.write_bytes(data[:-500])  # header cut short too
    with pytest.raises(InvalidDicomError, match="MR_0002.*truncated"):
        read_dicom_series(tmp_path / "s")


def test_enhanced_mr_is_refused_with_a_fix(tmp_path) -> None:
    _make_series(tmp_path / "s")
    ds = pydicom.dcmread(tmp_path / "s" / "MR_0001.dcm")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.save_as(tmp_path / "s" / "MR_0001.dcm")
    with pytest.raises(InvalidDicomError, match="Enhanced.*single-frame"):
        read_dicom_series(tmp_path / "s")


def test_missing_folder(tmp_path) -> None:
    with pytest.raises(InvalidDicomError, match="not found"):
        read_dicom_series(tmp_path / "nope")


@pytest.mark.integration
def test_dciodvfy_reports_no_errors_for_an_mr_slice(tmp_path) -> None:
    tool = require_tool("dciodvfy", "dicom3tools")
    _make_series(tmp_path / "s", body_part="LEG", laterality="L")
    _make_series(tmp_path / "a", seed=4, body_part="ABDOMEN")
    for folder in ("s", "a"):
        res = subprocess.run([tool, str(tmp_path / folder / "MR_0001.dcm")], capture_output=True, text=True)
        errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], errors
