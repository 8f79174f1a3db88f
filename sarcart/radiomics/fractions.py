"""Per-fraction preparation for delta-radiomics: MR intensity normalisation and carried tumour outlines.

MR intensities have no absolute unit and drift between fractions (coil loading, receiver gain, bias
field), so features of different fractions are compared only after a per-fraction normalisation:

* ``none``: the parameter set decides (sarcart's ``mr_default`` z-scores each image over the whole field
  of view, x 100, inside pyradiomics);
* ``zscore``: z-score over the *body* of each fraction (Otsu foreground, Otsu 1979,
  doi:10.1109/TSMC.1979.4310076), x ``normalizeScale`` (100 in ``mr_default``); pyradiomics' own
  normalisation is then switched off. Unlike a whole-image z-score, this does not depend on how much air
  the field of view holds; it is invariant to any gain a x + b (a > 0) of the fraction's image.

A fraction without a contour gets the outline of the patient's previous contoured fraction, carried by
image registration (SimpleITK; rigid Euler 3D on Mattes mutual information, then, with ``deformable``,
fast symmetric-forces demons - :mod:`sarcart.inference.propagation`). Both images are first cut to the
source outline's bounding box plus a margin, so registration looks at the tumour region only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sarcart.errors import ConfigError, InvalidImageError
from sarcart.io.geometry import Geometry, Volume

log = logging.getLogger(__name__)

Normalisation = Literal["none", "zscore"]
NORMALISATIONS: tuple[str, ...] = ("none", "zscore")


def body_mask(image: Volume) -> np.ndarray:
    """Foreground (body) of an MR image: voxels above the Otsu threshold of the whole volume (bool)."""
    from skimage.filters import threshold_otsu

    arr = np.asarray(image.array, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise InvalidImageError("image holds non-finite values; cannot normalise it")
    if arr.max() == arr.min():
        raise InvalidImageError("image is constant; cannot find the body to normalise on")
    return arr > threshold_otsu(arr)


def zscore_normalise(image: Volume, region: np.ndarray | None = None, *, scale: float = 100.0) -> Volume:
    """``scale * (x - mean_R) / sd_R`` over region ``R`` (default :func:`body_mask`); float32 volume.

    Args:
        image: MR volume, any real dtype, shape (nx, ny, nz).
        region: boolean array of the image's shape; ``None`` for the Otsu body.
        scale: multiplier (pyradiomics' ``normalizeScale``).

    Raises:
        InvalidImageError: empty region or zero spread inside it.
    """
    r = body_mask(image) if region is None else np.asarray(region, dtype=bool)
    if r.shape != image.array.shape or not r.any():
        raise InvalidImageError(f"normalisation region must be a non-empty mask of shape {image.array.shape}")
    vals = np.asarray(image.array, dtype=np.float64)[r]
    sd = float(vals.std())
    if sd <= 0:
        raise InvalidImageError("normalisation region has zero intensity spread")
    out = (np.asarray(image.array, dtype=np.float64) - float(vals.mean())) / sd * scale
    return image.with_array(out.astype(np.float32))


@dataclass(frozen=True)
class CarryConfig:
    """How an outline is carried onto a fraction without a contour.

    Attributes:
        method: ``rigid`` (Euler 3D, mutual information) or ``deformable`` (rigid, then demons).
        margin_mm: margin around the source outline's bounding box that registration looks at.
    """

    method: Literal["rigid", "deformable"] = "deformable"
    margin_mm: float = 30.0

    def __post_init__(self) -> None:
        if self.method not in ("rigid", "deformable"):
            raise ConfigError(f"carry method must be 'rigid' or 'deformable', got {self.method!r}")
        if not self.margin_mm >= 5.0:
            raise ConfigError(f"carry margin_mm must be >= 5 mm, got {self.margin_mm}")


def _world_box(mask: Volume, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(mask.array)
    if idx.size == 0:
        raise InvalidImageError("the source contour of a carried outline is empty")
    corners = np.array([[a, b, c] for a in (idx[:, 0].min(), idx[:, 0].max())
                        for b in (idx[:, 1].min(), idx[:, 1].max()) for c in (idx[:, 2].min(), idx[:, 2].max())])
    world = mask.geometry.index_to_world(corners.astype(float))
    return world.min(0) - margin_mm, world.max(0) + margin_mm


def _crop_world(vol: Volume, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[Volume, np.ndarray]:
    """The part of ``vol`` inside the world box; returns (cropped volume, index offset)."""
    g = vol.geometry
    corners = np.array([[x, y, z] for x in (lo_mm[0], hi_mm[0]) for y in (lo_mm[1], hi_mm[1])
                        for z in (lo_mm[2], hi_mm[2])])
    idx = g.world_to_index(corners)
    lo = np.clip(np.floor(idx.min(0)).astype(int), 0, np.array(g.shape) - 1)
    hi = np.clip(np.ceil(idx.max(0)).astype(int) + 1, lo + 1, np.array(g.shape))
    if np.any(hi - lo < 4):
        raise InvalidImageError("the fraction's image does not overlap the carried outline's region")
    geo = Geometry(tuple(int(v) for v in hi - lo), g.spacing_mm, tuple(g.index_to_world(lo.astype(float))),  # type: ignore[arg-type]
                   g.direction)
    return Volume(np.ascontiguousarray(vol.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]), geo), lo


def carry_outline(fixed_image: Volume, moving_image: Volume, moving_mask: Volume,
                  config: CarryConfig | None = None) -> Volume:
    """The outline ``moving_mask`` (drawn on ``moving_image``) carried onto ``fixed_image``'s grid.

    Args:
        fixed_image: the fraction without a contour, shape (nx, ny, nz).
        moving_image: the contoured fraction.
        moving_mask: its boolean outline, on ``moving_image``'s grid.
        config: registration method and margin.

    Returns:
        Boolean volume on ``fixed_image``'s grid.

    Raises:
        GeometryMismatchError: the source mask is not on the source image's grid.
        InvalidImageError: empty source outline, no overlap between the fractions' fields of view.
    """
    from sarcart.inference.propagation import RegistrationConfig, propagate, register

    cfg = config or CarryConfig()
    moving_mask.geometry.require_same(moving_image.geometry, what="the carried outline's source mask", tol_mm=0.01)
    mask = moving_mask.with_array(np.asarray(moving_mask.array) != 0)
    lo_mm, hi_mm = _world_box(mask, cfg.margin_mm)
    fixed_crop, offset = _crop_world(fixed_image, lo_mm, hi_mm)
    moving_crop, m_off = _crop_world(moving_image, lo_mm, hi_mm)
    mask_crop = Volume(mask.array[m_off[0]:m_off[0] + moving_crop.shape[0], m_off[1]:m_off[1] + moving_crop.shape[1],
                                  m_off[2]:m_off[2] + moving_crop.shape[2]], moving_crop.geometry)
    as_float = [v.with_array(np.asarray(v.array, dtype=np.float32)) for v in (fixed_crop, moving_crop)]
    disp = register(as_float[0], as_float[1], RegistrationConfig(deformable=cfg.method == "deformable"))
    carried = propagate({"roi": mask_crop}, disp)["roi"].array
    out = np.zeros(fixed_image.array.shape, dtype=bool)
    sx, sy, sz = carried.shape
    out[offset[0]:offset[0] + sx, offset[1]:offset[1] + sy, offset[2]:offset[2] + sz] = carried
    log.info("carried outline: %d -> %d voxels (%s)", int(mask.array.sum()), int(out.sum()), cfg.method)
    return fixed_image.with_array(out)
