"""Motion between fractions and the true displacement field from each fraction to the reference.

A point ``p`` of fraction ``f`` (LPS mm, on that day's grid) corresponds to ``p + u(p)`` in the
reference anatomy (fx00). The field is built on a coarse grid (the image grid subsampled by
``PhantomConfig.deformation_factors``, same origin) and *defined* everywhere by trilinear
interpolation of it, which is exactly what SimpleITK's ``DisplacementFieldTransform`` (linear
interpolator) computes from the saved ``deformation_to_ref.nii.gz``. Components:

``u(p) = t + w_rest(q) [b w_breath(q) e_z + a_bowel w_bowel(q) n_bowel(q) + a_soft w_soft(q) n_soft(q)]
        + (q - c)(1/s - 1) w_tumour(q)``  with ``q = p + t``,

* ``t``: rigid set-up shift (N(0, sd) per axis);
* ``b``: breathing state, a superior-inferior organ shift (abdomen only), weight ``w_breath``;
* ``n_bowel``, ``n_soft``: smooth random vector fields (peristalsis in the bowel region, a small
  soft-tissue warp everywhere in the body), unit rms per component before weighting;
* tumour response: scaling by ``s = v^(1/3)`` about the GTV centre ``c``, ``v = (1 - shrink)^f``
  the requested volume factor; ``w_tumour`` is 1 out to the GTV radius R and falls to 0 at 2R
  (cosine), and ``w_rest = 1 - w_tumour`` keeps the GTV itself rigid apart from the shrinkage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from sarcart.io.geometry import Geometry, Volume
from sarcart.phantom.anatomy import Anatomy
from sarcart.phantom.config import PhantomConfig
from sarcart.phantom.fields import SmoothField, lerp_separable, rng_for


def deformation_geometry(image: Geometry, factors: tuple[int, int, int]) -> Geometry:
    """Coarse grid covering ``image``: same origin, spacing x factors, last sample at or beyond its end."""
    shape = tuple(math.ceil((n - 1) / f) + 1 for n, f in zip(image.shape, factors))
    spacing = tuple(s * f for s, f in zip(image.spacing_mm, factors))
    return Geometry(shape, spacing, image.origin_mm, image.direction)  # type: ignore[arg-type]


@dataclass(frozen=True)
class MotionParams:
    """The random draws of one fraction's motion (all mm except the factors)."""

    shift_mm: tuple[float, float, float]
    breathing_mm: float
    volume_factor: float
    linear_factor: float

    def to_dict(self) -> dict[str, Any]:
        return {"setup_shift_mm": list(self.shift_mm), "breathing_si_mm": self.breathing_mm,
                "tumour_volume_factor": self.volume_factor, "tumour_linear_factor": self.linear_factor}


def motion_params(config: PhantomConfig, seed: int, index: int, *, abdomen: bool) -> MotionParams:
    """Set-up shift, breathing state and tumour volume factor of fraction ``index`` (fx00: none)."""
    if index == 0:
        return MotionParams((0.0, 0.0, 0.0), 0.0, 1.0, 1.0)
    rng = rng_for(seed, "motion", index)
    shift = rng.normal(0.0, config.setup_shift_sd_mm, 3)
    breath = float(rng.normal(0.0, config.breathing_sd_mm)) if abdomen else 0.0
    v = (1.0 - config.shrink_per_fraction) ** index
    return MotionParams(tuple(float(s) for s in shift), breath, float(v), float(v ** (1.0 / 3.0)))  # type: ignore


def _tumour_weight(q: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    r = np.linalg.norm(q - centre, axis=-1)
    t = np.clip((r - radius) / radius, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def displacement_field(anatomy: Anatomy, config: PhantomConfig, *, seed: int, index: int
                       ) -> tuple[Volume, MotionParams]:
    """The coarse displacement field ``(mx, my, mz, 3)`` float32 (mm, LPS) of fraction ``index``."""
    cg = deformation_geometry(anatomy.image_geometry, config.deformation_factors)
    mp = motion_params(config, seed, index, abdomen=anatomy.breathing_weight is not None)
    if index == 0:
        return Volume(np.zeros(cg.shape + (3,), dtype=np.float32), cg), mp
    p = cg.world_grid().astype(np.float64)
    t = np.asarray(mp.shift_mm)
    q = p + t
    c = np.asarray(anatomy.tumour_centre_mm)
    w_t = _tumour_weight(q, c, anatomy.tumour_radius_mm)
    local = np.zeros(p.shape, dtype=np.float64)
    if anatomy.breathing_weight is not None and mp.breathing_mm != 0.0:
        local[..., 2] += mp.breathing_mm * anatomy.breathing_weight.at_points(q)
    rng = rng_for(seed, "warp", index)
    lo, hi = tuple(q.reshape(-1, 3).min(0)), tuple(q.reshape(-1, 3).max(0))
    for weight, amp, corr in ((anatomy.bowel_weight, config.peristalsis_mm, 25.0),
                              (anatomy.soft_weight, config.soft_tissue_mm, 40.0)):
        if weight is None or amp <= 0.0:
            continue
        n = SmoothField.random(rng, lo, hi, corr_mm=corr, components=3)  # type: ignore[arg-type]
        local += amp * weight.at_points(q)[..., None] * n.at_points(q)
    local *= (1.0 - w_t)[..., None]
    local += (q - c) * (1.0 / mp.linear_factor - 1.0) * w_t[..., None]
    u = (t + local).astype(np.float32)
    return Volume(u, cg), mp


def dense_field(field: Volume, image: Geometry) -> np.ndarray:
    """Trilinear interpolation of the coarse field at every voxel of ``image`` -> ``(nx, ny, nz, 3)``."""
    coarse = field.geometry
    coords = []
    for a in range(3):
        world = image.origin_mm[a] + image.spacing_mm[a] * np.arange(image.shape[a])
        coords.append((world - coarse.origin_mm[a]) / coarse.spacing_mm[a])
    return lerp_separable(field.array, tuple(coords))  # type: ignore[arg-type]


def pull(anatomy: Anatomy, state: np.ndarray, field: Volume | None) -> np.ndarray:
    """Sample the packed reference ``state`` (extended grid) at ``p + u(p)`` for every image voxel.

    Nearest-neighbour sampling (the label convention of SimpleITK's sitkNearestNeighbor); outside the
    extended grid the reference is air (synthetic sites) or its edge value (real anatomy).
    """
    if field is None or not np.any(field.array):
        return anatomy.crop(state).copy()
    img = anatomy.image_geometry
    u = dense_field(field, img)
    coords = np.empty((3,) + img.shape, dtype=np.float32)
    for a in range(3):
        base = np.arange(img.shape[a], dtype=np.float32) + np.float32(anatomy.pad[a])
        shape = [1, 1, 1]
        shape[a] = -1
        coords[a] = base.reshape(shape) + u[..., a] / np.float32(img.spacing_mm[a])
    del u
    mode = "nearest" if anatomy.edge_mode == "nearest" else "constant"
    return ndimage.map_coordinates(state, coords, order=0, mode=mode, cval=0, prefilter=False)
