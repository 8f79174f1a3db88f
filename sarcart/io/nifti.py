"""NIfTI read/write through SimpleITK (which converts NIfTI's RAS to LPS on the way in and out)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sarcart.errors import InvalidImageError
from sarcart.io.atomic import atomic_write
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _check_suffix(path: Path) -> None:
    if not path.name.endswith(_NIFTI_SUFFIXES):
        raise InvalidImageError(f"NIfTI path must end in .nii or .nii.gz, got {path.name!r}")


def read_nifti(path: str | os.PathLike[str]) -> Volume:
    """Read a NIfTI file into a :class:`Volume` (array indexed [i, j, k], LPS geometry).

    Raises:
        InvalidImageError: when the file is missing, unreadable or not 3D.
    """
    p = Path(path)
    _check_suffix(p)
    if not p.is_file():
        raise InvalidImageError(f"NIfTI file not found: {p}; check the path")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise InvalidImageError(f"cannot read NIfTI file {p}: {str(exc).strip().splitlines()[-1]}") from exc
    if image.GetDimension() != 3:
        raise InvalidImageError(f"{p} is {image.GetDimension()}D; sarcart reads 3D volumes only")
    return Volume.from_sitk(image)


def write_nifti(volume: Volume, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write a :class:`Volume` as NIfTI atomically (temporary file, then rename).

    Boolean arrays are written as uint8. Returns the path written.
    """
    p = Path(path)
    _check_suffix(p)
    image = volume.to_sitk()
    suffix = ".nii.gz" if p.name.endswith(".nii.gz") else ".nii"
    return atomic_write(p, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=compress,
                                                       compressionLevel=1 if compress else -1), suffix=suffix)


def read_mask(path: str | os.PathLike[str]) -> Volume:
    """Read a binary mask (any non-zero voxel is inside); returns a boolean :class:`Volume`."""
    vol = read_nifti(path)
    if vol.array.ndim != 3:
        raise InvalidImageError(f"mask {path} has {vol.array.shape[-1]} components; expected a scalar mask")
    return vol.with_array(vol.array != 0)


def write_mask(mask: Volume, path: str | os.PathLike[str]) -> Path:
    """Write a boolean mask as uint8 NIfTI."""
    return write_nifti(mask.with_array(np.asarray(mask.array != 0, dtype=np.uint8)), path)
