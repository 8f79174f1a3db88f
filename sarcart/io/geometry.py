"""Image geometry in DICOM patient coordinates (LPS, millimetres) and volumes that carry it.

Convention used throughout sarcart
----------------------------------
* A volume's array is indexed ``[i, j, k]`` (shape ``(nx, ny, nz)``), the ITK / NIfTI index order:
  ``i`` runs along a DICOM image row (the first ImageOrientationPatient vector), ``j`` down the
  columns (the second vector), ``k`` from slice to slice.
* ``direction`` is the 3 x 3 matrix whose *columns* are the unit vectors of the ``i``, ``j``, ``k``
  axes in LPS, stored row-major as 9 numbers (as ``SimpleITK.Image.GetDirection`` does).
* ``origin_mm`` is the LPS position of the *centre* of voxel ``(0, 0, 0)``.
* world = origin + direction @ (spacing * index).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from sarcart.errors import GeometryMismatchError, InvalidImageError

_ORTHO_TOL = 1e-4


def _triple(name: str, value: Sequence[float], *, positive: bool = False) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise InvalidImageError(f"{name} must be three numbers, got {value!r}") from exc
    if len(out) != 3 or not all(np.isfinite(out)):
        raise InvalidImageError(f"{name} must be three finite numbers, got {value!r}")
    if positive and min(out) <= 0:
        raise InvalidImageError(f"{name} must be positive, got {out}; pass the voxel size in millimetres")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a 3D volume in LPS millimetres.

    Args:
        shape: ``(nx, ny, nz)`` number of voxels along ``i, j, k``.
        spacing_mm: voxel size along ``i, j, k`` in mm.
        origin_mm: LPS position (mm) of the centre of voxel ``(0, 0, 0)``.
        direction: 9 numbers, row-major 3 x 3 matrix with the axis unit vectors as columns.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = field(default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InvalidImageError(f"shape must be three positive integers, got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing_mm", _triple("spacing_mm", self.spacing_mm, positive=True))
        object.__setattr__(self, "origin_mm", _triple("origin_mm", self.origin_mm))
        d = np.asarray(self.direction, dtype=float).reshape(-1)
        if d.size != 9:
            raise InvalidImageError(f"direction must hold 9 numbers (3 x 3, row-major), got {d.size}")
        m = d.reshape(3, 3)
        if not np.allclose(m.T @ m, np.eye(3), atol=_ORTHO_TOL):
            raise InvalidImageError(
                f"direction must be orthonormal (columns are unit axis vectors), got {m.round(5).tolist()}; "
                "oblique stacks with gantry tilt are not supported, resample them first"
            )
        object.__setattr__(self, "direction", tuple(float(v) for v in d))

    # ------------------------------------------------------------------ derived quantities
    @property
    def direction_matrix(self) -> np.ndarray:
        """3 x 3 float64 matrix, columns = LPS unit vectors of the i, j, k axes."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def affine(self) -> np.ndarray:
        """4 x 4 voxel-index -> LPS (mm) matrix."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing_mm)[None, :]
        a[:3, 3] = self.origin_mm
        return a

    @property
    def voxel_volume_cc(self) -> float:
        """Volume of one voxel in cm^3."""
        return float(np.prod(self.spacing_mm)) / 1000.0

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Field of view along i, j, k in mm (number of voxels x spacing)."""
        return tuple(float(n * s) for n, s in zip(self.shape, self.spacing_mm))  # type: ignore[return-value]

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Map continuous indices ``(..., 3)`` (i, j, k) to LPS mm ``(..., 3)``."""
        idx = np.asarray(index, dtype=float)
        return idx @ self.affine[:3, :3].T + np.asarray(self.origin_mm)

    def world_to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """Map LPS points ``(..., 3)`` in mm to continuous indices ``(..., 3)``."""
        p = np.asarray(points_mm, dtype=float) - np.asarray(self.origin_mm)
        inv = np.linalg.inv(self.affine[:3, :3])
        return p @ inv.T

    def world_grid(self) -> np.ndarray:
        """LPS coordinates of every voxel centre, float32 array of shape ``(nx, ny, nz, 3)``."""
        axes = [np.arange(n, dtype=np.float32) for n in self.shape]
        ii, jj, kk = np.meshgrid(*axes, indexing="ij")
        idx = np.stack([ii, jj, kk], axis=-1)
        return self.index_to_world(idx).astype(np.float32)

    # ------------------------------------------------------------------ comparisons
    def is_close(self, other: "Geometry", *, tol_mm: float = 1e-3) -> bool:
        """True when both grids have the same shape and voxel centres within ``tol_mm``."""
        return not self.differences(other, tol_mm=tol_mm)

    def differences(self, other: "Geometry", *, tol_mm: float = 1e-3) -> list[str]:
        """Human-readable list of what differs between two grids (empty when they match)."""
        out = []
        if self.shape != other.shape:
            out.append(f"shape {self.shape} vs {other.shape}")
        if not np.allclose(self.spacing_mm, other.spacing_mm, atol=tol_mm):
            out.append(f"spacing_mm {self.spacing_mm} vs {other.spacing_mm}")
        if not np.allclose(self.origin_mm, other.origin_mm, atol=tol_mm):
            out.append(f"origin_mm {self.origin_mm} vs {other.origin_mm}")
        if not np.allclose(self.direction, other.direction, atol=1e-4):
            out.append(f"direction {np.round(self.direction, 4).tolist()} vs {np.round(other.direction, 4).tolist()}")
        return out

    def require_same(self, other: "Geometry", *, what: str, tol_mm: float = 1e-3) -> None:
        """Raise :class:`GeometryMismatchError` naming ``what`` when the grids differ."""
        diff = self.differences(other, tol_mm=tol_mm)
        if diff:
            raise GeometryMismatchError(
                f"{what} is not on the same voxel grid: {'; '.join(diff)}. "
                "Resample it onto the image grid first (nothing is resampled silently)"
            )

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "spacing_mm": list(self.spacing_mm),
            "origin_mm": list(self.origin_mm),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        return cls(
            shape=tuple(d["shape"]),  # type: ignore[arg-type]
            spacing_mm=tuple(d["spacing_mm"]),  # type: ignore[arg-type]
            origin_mm=tuple(d["origin_mm"]),  # type: ignore[arg-type]
            direction=tuple(d["direction"]),
        )

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Geometry":
        if image.GetDimension() != 3:
            raise InvalidImageError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(
            shape=tuple(image.GetSize()),  # type: ignore[arg-type]
            spacing_mm=tuple(image.GetSpacing()),  # type: ignore[arg-type]
            origin_mm=tuple(image.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(image.GetDirection()),
        )

    def apply_to_sitk(self, image: sitk.Image) -> sitk.Image:
        """Set this geometry on a SimpleITK image of matching size (in place; returns it)."""
        if tuple(image.GetSize()) != self.shape:
            raise GeometryMismatchError(f"SimpleITK image size {image.GetSize()} differs from shape {self.shape}")
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_mm)
        image.SetDirection(self.direction)
        return image

    def reference_image(self) -> sitk.Image:
        """An empty SimpleITK image on this grid, e.g. as a resampling reference."""
        img = sitk.Image(list(self.shape), sitk.sitkUInt8)
        return self.apply_to_sitk(img)


@dataclass(frozen=True)
class Volume:
    """A 3D array (optionally with trailing vector components) and its :class:`Geometry`.

    Args:
        array: ``(nx, ny, nz)`` scalar or ``(nx, ny, nz, c)`` vector array, any dtype.
        geometry: the voxel grid.
    """

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            raise InvalidImageError(f"array must be a numpy array, got {type(self.array).__name__}")
        if self.array.ndim not in (3, 4) or tuple(self.array.shape[:3]) != self.geometry.shape:
            raise GeometryMismatchError(
                f"array shape {self.array.shape} does not match geometry shape {self.geometry.shape} "
                "(arrays are indexed [i, j, k] = (x, y, z), optionally with a trailing component axis)"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, new array."""
        return Volume(array, self.geometry)

    def to_sitk(self) -> sitk.Image:
        """SimpleITK image (vector image when the array has a component axis)."""
        arr = self.array
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if arr.ndim == 4:
            img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0, 3)), isVector=True)
        else:
            img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
        return self.geometry.apply_to_sitk(img)

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        arr = sitk.GetArrayFromImage(image)
        arr = arr.transpose(2, 1, 0, 3) if image.GetNumberOfComponentsPerPixel() > 1 else arr.transpose(2, 1, 0)
        return cls(np.ascontiguousarray(arr), Geometry.from_sitk(image))
