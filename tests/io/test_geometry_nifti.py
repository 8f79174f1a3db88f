"""Geometry and NIfTI: checked against SimpleITK's and nibabel's own index/world mappings."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from sarcart.errors import GeometryMismatchError, InvalidImageError
from sarcart.io.geometry import Geometry, Volume
from sarcart.io.nifti import read_mask, read_nifti, write_mask, write_nifti


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture
def oblique() -> Geometry:
    return Geometry((7, 5, 4), (1.5, 0.8, 3.0), (-12.0, 40.5, 101.0), tuple(_rotation(0.2, -0.4, 1.1).reshape(-1)))


def test_index_to_world_matches_simpleitk(oblique: Geometry) -> None:
    img = oblique.reference_image()
    rng = np.random.default_rng(1)
    idx = rng.uniform(-1, 6, size=(20, 3))
    ours = oblique.index_to_world(idx)
    theirs = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(map(float, p))) for p in idx])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(oblique.world_to_index(ours), idx, atol=1e-9)


def test_world_grid_corner_and_volume(oblique: Geometry) -> None:
    grid = oblique.world_grid()
    assert grid.shape == (7, 5, 4, 3)
    np.testing.assert_allclose(grid[6, 4, 3], oblique.index_to_world(np.array([6, 4, 3])), atol=1e-4)
    assert oblique.voxel_volume_cc == pytest.approx(1.5 * 0.8 * 3.0 / 1000)


def test_nifti_round_trip_and_nibabel_affine(tmp_path, oblique: Geometry) -> None:
    arr = np.arange(np.prod(oblique.shape), dtype=np.float32).reshape(oblique.shape)
    path = write_nifti(Volume(arr, oblique), tmp_path / "a.nii.gz")
    back = read_nifti(path)
    assert back.geometry.is_close(oblique, tol_mm=1e-4)
    np.testing.assert_array_equal(back.array, arr)
    # nibabel reads the same file independently: RAS affine = diag(-1, -1, 1) @ our LPS affine
    nii = nib.load(str(path))
    ras_from_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(nii.affine, ras_from_lps @ oblique.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(nii.dataobj), arr)


def test_vector_volume_round_trip(tmp_path) -> None:
    g = Geometry((4, 3, 2), (2.0, 2.0, 2.0))
    arr = np.random.default_rng(0).normal(size=(4, 3, 2, 3)).astype(np.float32)
    back = read_nifti(write_nifti(Volume(arr, g), tmp_path / "u.nii.gz"))
    np.testing.assert_array_equal(back.array, arr)


def test_mask_round_trip_is_boolean(tmp_path) -> None:
    g = Geometry((4, 4, 4), (1.0, 1.0, 1.0))
    m = np.zeros(g.shape, bool)
    m[1:3, 1:3, 2] = True
    back = read_mask(write_mask(Volume(m, g), tmp_path / "m.nii.gz"))
    assert back.array.dtype == bool and (back.array == m).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape=(4, 4, 4), spacing_mm=(0.0, 1.5, 3.0)), "spacing_mm must be positive"),
        (dict(shape=(4, 0, 4), spacing_mm=(1, 1, 1)), "shape must be three positive integers"),
        (dict(shape=(4, 4, 4), spacing_mm=(1, 1, 1), direction=(1, 0, 0, 1, 1, 0, 0, 0, 1)), "orthonormal"),
    ],
)
def test_invalid_geometry_is_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        Geometry(**kwargs)


def test_volume_shape_mismatch_and_require_same() -> None:
    g = Geometry((4, 4, 4), (1.0, 1.0, 1.0))
    with pytest.raises(GeometryMismatchError, match="does not match geometry shape"):
        Volume(np.zeros((4, 4, 5)), g)
    other = Geometry((4, 4, 4), (1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 2.0))
    with pytest.raises(GeometryMismatchError, match="origin_mm"):
        g.require_same(other, what="mask 'GTV'")


def test_read_nifti_errors(tmp_path) -> None:
    with pytest.raises(InvalidImageError, match="must end in .nii"):
        read_nifti(tmp_path / "x.mha")
    with pytest.raises(InvalidImageError, match="not found"):
        read_nifti(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(InvalidImageError, match="cannot read"):
        read_nifti(bad)
    sitk.WriteImage(sitk.Image([4, 4], sitk.sitkUInt8), str(tmp_path / "two_d.nii.gz"))
    with pytest.raises(InvalidImageError, match="3D"):
        read_nifti(tmp_path / "two_d.nii.gz")
