"""`sarcart convert` and `sarcart rtstruct`, run as a user would (a subprocess)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from sarcart.io.dicom_series import read_dicom_series
from sarcart.io.dicom_write import write_dicom_series
from sarcart.io.geometry import Geometry, Volume
from sarcart.io.nifti import read_mask, read_nifti, write_mask
from sarcart.io.rtstruct import read_rtstruct


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sarcart.cli", *args], capture_output=True, text=True)


def test_rtstruct_then_convert_round_trip(tmp_path) -> None:
    g = Geometry((30, 25, 6), (1.5, 1.5, 3.0), (-20.0, 10.0, -5.0))
    img = np.random.default_rng(0).integers(0, 1000, g.shape).astype(np.uint16)
    write_dicom_series(Volume(img, g), tmp_path / "mr")
    gtv = np.zeros(g.shape, bool)
    gtv[8:20, 5:15, 1:5] = True
    kid = np.zeros(g.shape, bool)
    kid[22:28, 18:24, 2:4] = True
    write_mask(Volume(gtv, g), tmp_path / "masks" / "GTV_Mass.nii.gz")
    write_mask(Volume(kid, g), tmp_path / "masks" / "Kidney_L.nii.gz")
    res = _run("rtstruct", "--series", str(tmp_path / "mr"), "--masks", str(tmp_path / "masks"),
               "--out", str(tmp_path / "rs.dcm"))
    assert res.returncode == 0, res.stderr
    ss = read_rtstruct(tmp_path / "rs.dcm", read_dicom_series(tmp_path / "mr"))
    assert (ss.masks["GTV"].array == gtv).all() and (ss.masks["KIDNEY_L"].array == kid).all()
    res = _run("convert", "--series", str(tmp_path / "mr"), "--rtstruct", str(tmp_path / "rs.dcm"),
               "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    back = read_nifti(tmp_path / "out" / "image.nii.gz")
    assert back.geometry.is_close(g, tol_mm=1e-4) and (back.array == img).all()
    assert (read_mask(tmp_path / "out" / "masks" / "GTV.nii.gz").array == gtv).all()
    assert (read_mask(tmp_path / "out" / "masks" / "KIDNEY_L.nii.gz").array == kid).all()


def test_cli_errors_are_one_clear_line(tmp_path) -> None:
    res = _run("convert", "--series", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "series folder not found" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "empty").mkdir()
    res = _run("rtstruct", "--series", str(tmp_path / "empty"), "--masks", str(tmp_path / "empty"),
               "--out", str(tmp_path / "x.dcm"))
    assert res.returncode == 2 and "no .nii/.nii.gz masks" in res.stderr
