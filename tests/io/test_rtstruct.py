"""RTSTRUCT reading and writing: analytic shapes, the real sarcoma data, dciodvfy and plastimatch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers import require_tool, shared_path
from sarcart.errors import ConfigError, GeometryMismatchError, InvalidDicomError, InvalidImageError
from sarcart.io.dicom_series import read_dicom_series
from sarcart.io.dicom_write import write_dicom_series
from sarcart.io.geometry import Geometry, Volume
from sarcart.io.nifti import read_mask, read_nifti
from sarcart.io.rtstruct import list_rois, read_rtstruct
from sarcart.io.rtstruct_write import RoiStyle, write_rtstruct
from sarcart.io.structures import canonical_name, load_synonyms


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture
def series(tmp_path):
    g = Geometry((40, 36, 8), (1.0, 1.2, 2.5), (-20.0, -25.0, 10.0))
    write_dicom_series(Volume(np.zeros(g.shape, np.uint16), g), tmp_path / "mr", uid_seed="rt")
    return read_dicom_series(tmp_path / "mr")


def _ring_with_island(shape: tuple[int, int, int]) -> np.ndarray:
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(i - 20.3, j - 17.6)
    m2 = (r < 14) & ~((r > 6) & (r < 10)) | (np.abs(i - 3) < 2) & (np.abs(j - 30) < 3)
    m = np.zeros(shape, bool)
    m[:, :, 2:6] = m2[:, :, None]
    m[22, 5, 7] = True  # a single-voxel structure on its own slice
    return m


def test_round_trip_with_holes_and_islands_is_exact(series, tmp_path) -> None:
    m = _ring_with_island(series.volume.geometry.shape)
    path = write_rtstruct({"GTV": Volume(m, series.volume.geometry)}, series, tmp_path / "rs.dcm", uid_seed="x")
    back = read_rtstruct(path, series).masks["GTV"].array
    assert (back == m).all()


def test_circle_contour_area_matches_pixel_centre_count(series, tmp_path) -> None:
    """A finely sampled circle drawn in mm fills exactly the voxels whose centres lie inside it."""
    g = series.volume.geometry
    m = np.zeros(g.shape, bool)
    m[18:22, 16:20, 4] = True
    path = write_rtstruct({"GTV": Volume(m, g)}, series, tmp_path / "rs.dcm")
    ds = pydicom.dcmread(path)
    centre, radius = g.index_to_world(np.array([19.4, 17.2, 4.0])), 11.3
    t = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    pts = np.column_stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t), np.full(t.size, centre[2])])
    c = ds.ROIContourSequence[0].ContourSequence[0]
    c.ContourData = [f"{v:.4f}" for v in pts.reshape(-1)]
    c.NumberOfContourPoints = len(pts)
    ds.save_as(path)
    got = read_rtstruct(path, series).masks["GTV"].array[:, :, 4]
    world = g.world_grid()[:, :, 4, :2]
    expected = np.hypot(world[..., 0] - centre[0], world[..., 1] - centre[1]) < radius
    assert (got == expected).all()
    assert got.sum() * 1.0 * 1.2 == pytest.approx(np.pi * radius**2, rel=0.03)


def test_styles_names_and_list_rois(series, tmp_path) -> None:
    g = series.volume.geometry
    m = np.zeros(g.shape, bool)
    m[5:9, 5:9, 3] = True
    flags = RoiStyle(color=(1, 2, 3), interpreted_type="ORGAN", description="QA: low confidence", observation="x")
    path = write_rtstruct({"Bowel_sm": m, "GTV_Mass": m}, series, tmp_path / "rs.dcm", styles={"Bowel_sm": flags})
    rois = list_rois(path)
    assert [(r.name, r.canonical) for r in rois] == [("Bowel_sm", "BOWEL"), ("GTV_Mass", "GTV")]
    assert rois[0].description == "QA: low confidence"
    ds = pydicom.dcmread(path)
    assert list(ds.ROIContourSequence[0].ROIDisplayColor) == [1, 2, 3]
    assert "NOT FOR CLINICAL USE" in ds.StructureSetDescription
    ss = read_rtstruct(path, series)
    assert set(ss.masks) == {"BOWEL", "GTV"}
    assert set(read_rtstruct(path, series, canonical=False).masks) == {"Bowel_sm", "GTV_Mass"}
    assert set(read_rtstruct(path, series, names=["GTV"]).masks) == {"GTV"}


def test_bad_masks_are_refused(series, tmp_path) -> None:
    g = series.volume.geometry
    with pytest.raises(InvalidImageError, match="mask 'GTV' is empty"):
        write_rtstruct({"GTV": np.zeros(g.shape, bool)}, series, tmp_path / "a.dcm")
    with pytest.raises(GeometryMismatchError, match="shape"):
        write_rtstruct({"GTV": np.ones((3, 3, 3), bool)}, series, tmp_path / "a.dcm")
    shifted = Geometry(g.shape, g.spacing_mm, (0.0, 0.0, 0.0))
    with pytest.raises(GeometryMismatchError, match="mask 'GTV' is not on the same voxel grid"):
        write_rtstruct({"GTV": Volume(np.ones(g.shape, bool), shifted)}, series, tmp_path / "a.dcm")


def test_frame_of_reference_mismatch_and_wrong_object(series, tmp_path) -> None:
    g = series.volume.geometry
    m = np.zeros(g.shape, bool)
    m[5:9, 5:9, 3] = True
    path = write_rtstruct({"GTV": m}, series, tmp_path / "rs.dcm")
    other = Geometry(g.shape, g.spacing_mm, g.origin_mm)
    write_dicom_series(Volume(np.zeros(g.shape, np.uint16), other), tmp_path / "mr2", uid_seed="other")
    with pytest.raises(GeometryMismatchError, match="frame of reference"):
        read_rtstruct(path, read_dicom_series(tmp_path / "mr2"))
    assert read_rtstruct(path, other).masks["GTV"].array.sum() == 16  # a bare grid: no FoR check
    with pytest.raises(InvalidDicomError, match="not an RT Structure Set"):
        read_rtstruct(series.files[0], series)


def test_synonym_table_and_override(tmp_path) -> None:
    assert canonical_name("GTV_Mass_MR_T1") == "GTV"
    assert canonical_name("Kidney Lt") == "KIDNEY_L"
    assert canonical_name("R_Kidney") == "KIDNEY_R"
    assert canonical_name("bowel gas") == "GAS"
    assert canonical_name("Spinal Cord") is None
    table = tmp_path / "syn.yaml"
    table.write_text("GTV: ['SARCOMA_.*']\n")
    assert canonical_name("Sarcoma_1", load_synonyms(table)) == "GTV"
    table.write_text("TUMOUR: ['X']\n")
    with pytest.raises(ConfigError, match="unknown canonical structure 'TUMOUR'"):
        load_synonyms(table)


# ---------------------------------------------------------------- real data (../shared/data)
def test_real_rtstruct_matches_reference_mask() -> None:
    case = shared_path("sts_mr_t1_dicom", "STS_002")
    series = read_dicom_series(case / "image")
    rs = next((case / "mask").glob("*.dcm"))
    ss = read_rtstruct(rs, series)
    assert [r.name for r in ss.rois] == ["GTV_Mass_MR_T1"]
    ref = read_mask(shared_path("sts_mr_t1", "STS_002", "gtv.nii.gz"))
    series.volume.geometry.require_same(ref.geometry, what="reference mask", tol_mm=1e-3)
    assert dice(ss.masks["GTV"].array, ref.array) >= 0.95


@pytest.mark.slow
def test_all_real_cases_round_trip_through_dicom(tmp_path) -> None:
    root = shared_path("sts_mr_t1")
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(cases) == 34
    worst = 1.0
    for case in cases:
        img, gtv = read_nifti(case / "image.nii.gz"), read_mask(case / "gtv.nii.gz")
        out = tmp_path / case.name
        write_dicom_series(img, out / "mr", uid_seed=case.name)
        series = read_dicom_series(out / "mr")
        assert series.volume.geometry.is_close(img.geometry, tol_mm=1e-3), case.name
        np.testing.assert_allclose(series.volume.array, img.array, atol=0.02 * np.ptp(img.array) / 65535 + 1e-3)
        write_rtstruct({"GTV": gtv}, series, out / "rs.dcm")
        worst = min(worst, dice(read_rtstruct(out / "rs.dcm", series).masks["GTV"].array, gtv.array))
    assert worst >= 0.97


@pytest.mark.integration
def test_dciodvfy_and_plastimatch_read_our_rtstruct(series, tmp_path) -> None:
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    plastimatch = require_tool("plastimatch", "plastimatch")
    g = series.volume.geometry
    masks = {"GTV": _ring_with_island(g.shape)}
    box = np.zeros(g.shape, bool)
    box[3:15, 20:33, 1:7] = True
    masks["KIDNEY_L"] = box
    path = write_rtstruct(masks, series, tmp_path / "rs.dcm")
    res = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
    errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
    assert errors == [], errors
    # holes are nested contours under the even-odd rule: plastimatch needs --xor-contours (its
    # default ORs contours and fills holes; see docs/io.md)
    out = tmp_path / "plastimatch"
    subprocess.run(
        [plastimatch, "convert", "--input", str(path), "--referenced-ct", str(tmp_path / "mr"),
         "--output-prefix", str(out), "--prefix-format", "nii.gz", "--xor-contours"],
        check=True, capture_output=True,
    )
    for name, m in masks.items():
        theirs = read_mask(out / f"{name}.nii.gz")
        assert theirs.geometry.is_close(g, tol_mm=1e-3)
        assert dice(theirs.array, m) >= 0.97, name


@pytest.mark.integration
def test_plastimatch_on_the_real_case(tmp_path) -> None:
    plastimatch = require_tool("plastimatch", "plastimatch")
    img = read_nifti(shared_path("sts_mr_t1", "STS_002", "image.nii.gz"))
    gtv = read_mask(shared_path("sts_mr_t1", "STS_002", "gtv.nii.gz"))
    write_dicom_series(img, tmp_path / "mr", uid_seed="sts2")
    series = read_dicom_series(tmp_path / "mr")
    path = write_rtstruct({"GTV": gtv}, series, tmp_path / "rs.dcm")
    subprocess.run(
        [plastimatch, "convert", "--input", str(path), "--referenced-ct", str(tmp_path / "mr"),
         "--output-prefix", str(tmp_path / "pl"), "--prefix-format", "nii.gz"],
        check=True, capture_output=True,
    )
    theirs = read_mask(tmp_path / "pl" / "GTV.nii.gz")
    mine = read_rtstruct(path, series).masks["GTV"].array
    assert dice(theirs.array, mine) >= 0.97
