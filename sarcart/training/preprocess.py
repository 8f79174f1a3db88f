"""Deterministic preprocessing shared by training, validation and the predictor.

One path for every image: reorient to the LPS axes (array axis 0 = patient right->left, 1 =
anterior->posterior, 2 = inferior->superior, so flips can respect anatomy), resample to the plan's
target spacing keeping the field of view (linear for images, nearest for label maps), and normalise
with a per-image z-score inside the body after percentile clipping (nnU-Net's MR scheme, Isensee et
al. 2021, doi 10.1038/s41592-020-01008-z). :func:`to_original_grid` takes class probabilities back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from sarcart.errors import InvalidImageError
from sarcart.io.geometry import Geometry, Volume
from sarcart.models.plan import Normalisation, Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """An image on the plan grid.

    Attributes:
        array: float32 ``(nx, ny, nz)`` normalised image on the plan grid (LPS axes).
        grid: the plan grid's geometry (LPS-aligned direction, target spacing).
        body_fraction: share of voxels inside the body mask (for input checks).
    """

    array: np.ndarray
    grid: Geometry
    body_fraction: float


def reorient_lps(image: sitk.Image) -> sitk.Image:
    """Permute/flip axes so the direction is (close to) identity: array axes along L, P, S."""
    return sitk.DICOMOrient(image, "LPS")


def grid_for(geometry: Geometry, spacing_mm: tuple[float, float, float], *,
             shift_vox: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Geometry:
    """The LPS-aligned grid of ``spacing_mm`` covering the same field of view as ``geometry``.

    The field of view (voxel edges) is kept: ``n = round(extent / spacing)`` voxels, centred on
    the original field of view. ``shift_vox`` moves the whole grid by that fraction of its own voxel
    along each LPS axis (the sub-voxel phases of :func:`sarcart.training.predict.subvoxel_shifts`).
    """
    ref = reorient_lps(geometry.reference_image())
    g = Geometry.from_sitk(ref)
    ext = np.asarray(g.extent_mm)
    sp = np.asarray(spacing_mm, float)
    n = np.maximum(np.round(ext / sp), 1).astype(int)
    d = g.direction_matrix
    # centre of the field of view stays put
    centre = g.index_to_world((np.asarray(g.shape) - 1) / 2.0)
    origin = centre - d @ (sp * (n - 1) / 2.0) + d @ (sp * np.asarray(shift_vox, float))
    return Geometry(shape=tuple(n), spacing_mm=tuple(sp), origin_mm=tuple(origin), direction=g.direction)


def resample(volume: Volume, grid: Geometry, *, nearest: bool = False, default: float = 0.0) -> np.ndarray:
    """Resample a scalar volume onto ``grid`` (linear, or nearest neighbour for labels); array [i, j, k]."""
    img = volume.to_sitk()
    if not nearest:
        img = sitk.Cast(img, sitk.sitkFloat32)
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(img, grid.reference_image(), sitk.Transform(), interp, default, img.GetPixelID())
    return np.ascontiguousarray(sitk.GetArrayFromImage(out).transpose(2, 1, 0))


def body_mask(array: np.ndarray, norm: Normalisation) -> np.ndarray:
    """Voxels brighter than ``norm.body_threshold`` x the 99th percentile (all voxels if that is < 10 %)."""
    thr = norm.body_threshold * float(np.percentile(array, 99))
    body = array > thr
    if body.mean() < 0.1:
        body = np.ones_like(body)
    return body


def normalise(array: np.ndarray, norm: Normalisation) -> tuple[np.ndarray, float]:
    """Clip to the body's percentiles, then z-score with the body's mean and std.

    Returns ``(float32 array, body fraction)``.

    Raises:
        InvalidImageError: non-finite values, or a constant image.
    """
    if not np.isfinite(array).all():
        raise InvalidImageError("image holds NaN or infinite values; fix the input image before segmenting")
    body = body_mask(array, norm)
    vals = array[body]
    lo, hi = np.percentile(vals, norm.clip_percentiles)
    clipped = np.clip(array, lo, hi)
    inside = clipped[body]
    std = float(inside.std())
    if std <= 0:
        raise InvalidImageError("image is constant inside the body; it cannot be normalised")
    return ((clipped - float(inside.mean())) / std).astype(np.float32), float(body.mean())


def prepare_image(image: Volume, plan: Plan, *,
                  shift_vox: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Prepared:
    """Image -> normalised float32 array on the plan grid (LPS axes, target spacing), optionally
    moved by ``shift_vox`` plan voxels (see :func:`grid_for`)."""
    if image.array.ndim != 3:
        raise InvalidImageError(f"image must be a scalar 3D volume, got shape {image.array.shape}")
    grid = grid_for(image.geometry, plan.target_spacing_mm, shift_vox=shift_vox)
    arr = resample(image, grid)
    norm, frac = normalise(arr, plan.normalisation)
    return Prepared(array=norm, grid=grid, body_fraction=frac)


def prepare_labels(labels: Volume, grid: Geometry) -> np.ndarray:
    """Integer label map -> uint8 array on ``grid`` (nearest neighbour)."""
    return resample(labels.with_array(labels.array.astype(np.uint8)), grid, nearest=True).astype(np.uint8)


def to_original_grid(probs: np.ndarray, grid: Geometry, original: Geometry) -> np.ndarray:
    """Class probabilities ``(C, nx, ny, nz)`` on the plan grid -> ``(C, *original.shape)`` float32.

    Linear interpolation per class; outside the plan grid the background gets probability 1.
    """
    if probs.ndim != 4 or tuple(probs.shape[1:]) != grid.shape:
        raise InvalidImageError(f"probabilities must be (C, {grid.shape}), got {probs.shape}")
    out = np.empty((probs.shape[0], *original.shape), dtype=np.float32)
    for c in range(probs.shape[0]):
        vol = Volume(np.ascontiguousarray(probs[c], dtype=np.float32), grid)
        out[c] = resample(vol, original, default=1.0 if c == 0 else 0.0)
    return out
