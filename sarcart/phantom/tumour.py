"""Tumour shape and its inner ground truths: lobulated GTV, necrotic core, hypoxic subregions, oedema rim.

The GTV is the zero level set of an implicit function: the normalised ellipsoidal radius plus a
smooth random field (lobulation), ``f(x) = rho(x) / k + lam * n(x)``; GTV = ``f < 1``. The scale
``k`` is found by bisection so that the GTV has the requested volume. Necrosis, hypoxia and oedema
are chosen by ranking a score and keeping a requested fraction of the voxels, so the realised
fractions match the requested ones to within one voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sarcart.phantom.fields import Grid, SmoothField, lerp_separable


@dataclass(frozen=True)
class TumourShape:
    """Parameters of a lobulated tumour (world mm).

    Attributes:
        centre_mm: LPS centre. semi_axes_mm: ellipsoid semi-axes before scaling (x', y', z').
        rotation: 3 x 3 matrix whose columns are the ellipsoid axes in LPS.
        lobulation: amplitude of the smooth random perturbation of the normalised radius.
        corr_mm: correlation length of the lobulation field.
    """

    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    rotation: tuple[float, ...]
    lobulation: float
    corr_mm: float

    @property
    def bound_mm(self) -> float:
        """Radius of a sphere around the centre that surely contains the tumour (mm)."""
        return float(max(self.semi_axes_mm)) * (1.0 + 2.5 * self.lobulation) + 2.0


def rotation_matrix(yaw_deg: float, tilt_deg: float = 0.0) -> tuple[float, ...]:
    """Rotation about z by ``yaw_deg`` then about the new x by ``tilt_deg`` (row-major 3 x 3)."""
    a, b = np.radians(yaw_deg), np.radians(tilt_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).reshape(-1).tolist())


@dataclass
class TumourField:
    """The tumour implicit function evaluated in a box of the grid."""

    slices: tuple[slice, slice, slice]
    rho: np.ndarray          # normalised ellipsoidal radius (unscaled), float32
    noise: np.ndarray        # lobulation field (unit sd), float32
    shape: TumourShape
    scale: float = 1.0

    def f(self, scale: float | None = None) -> np.ndarray:
        """Implicit function; the GTV is ``f < 1`` (float32, box shape)."""
        k = self.scale if scale is None else scale
        return self.rho / np.float32(k) + np.float32(self.shape.lobulation) * self.noise


def tumour_field(grid: Grid, shape: TumourShape, rng: np.random.Generator, *, margin_mm: float = 0.0
                 ) -> TumourField:
    """Evaluate ``rho`` and the lobulation field in the box around the tumour (plus ``margin_mm``)."""
    c = np.asarray(shape.centre_mm, dtype=np.float32)
    r = shape.bound_mm * 1.6 + margin_mm
    sl, x, y, z = grid.box(tuple(c - r), tuple(c + r))  # type: ignore[arg-type]
    rot = np.asarray(shape.rotation, dtype=np.float32).reshape(3, 3)
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    rho2 = np.zeros(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=np.float32)
    for a in range(3):  # coordinate along ellipsoid axis a = column a of rot
        q = dx * rot[0, a] + dy * rot[1, a] + dz * rot[2, a]
        rho2 += (q / np.float32(shape.semi_axes_mm[a])) ** 2
    field = SmoothField.random(rng, tuple(c - r), tuple(c + r), corr_mm=shape.corr_mm)  # type: ignore[arg-type]
    noise = field.on_axes(x, y, z)
    return TumourField(sl, np.sqrt(rho2), noise, shape)


def calibrate_volume(tf: TumourField, target_cc: float, voxel_cc: float, *, allowed: np.ndarray | None = None
                     ) -> float:
    """Find the scale ``k`` giving ``target_cc`` inside ``allowed`` (bisection on log k); sets ``tf.scale``."""
    lo, hi = 0.2, 3.0
    for _ in range(30):
        mid = float(np.sqrt(lo * hi))
        inside = tf.f(mid) < 1.0
        if allowed is not None:
            inside &= allowed
        vol = float(np.count_nonzero(inside)) * voxel_cc
        if vol < target_cc:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.002:
            break
    tf.scale = float(np.sqrt(lo * hi))
    return tf.scale


def select_fraction(score: np.ndarray, mask: np.ndarray, fraction: float) -> np.ndarray:
    """The ``fraction`` of ``mask`` voxels with the lowest ``score`` (boolean, same shape)."""
    out = np.zeros(mask.shape, dtype=bool)
    n = round(float(fraction) * np.count_nonzero(mask))
    if n <= 0:
        return out
    vals = score[mask]
    idx = np.argpartition(vals, min(n, vals.size) - 1)[:n]
    where = np.flatnonzero(mask.reshape(-1))[idx]
    out.reshape(-1)[where] = True
    return out


def necrotic_core(gtv: np.ndarray, depth: np.ndarray, fraction: float, *, rng: np.random.Generator,
                  spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Irregular central core holding ``fraction`` of the GTV voxels, never on the GTV surface.

    Args:
        gtv: boolean box mask. depth: larger = deeper inside (e.g. ``1 - f``), same shape.
    """
    if fraction <= 0.0:
        return np.zeros_like(gtv)
    noise = _box_noise(gtv.shape, rng, corr_vox=_vox(8.0, spacing_mm))
    core_ok = gtv & (depth > 0.12)
    share = fraction * int(np.count_nonzero(gtv)) / max(int(np.count_nonzero(core_ok)), 1)
    return select_fraction(-depth + 0.15 * noise, core_ok, share)


def hypoxic_regions(viable: np.ndarray, depth: np.ndarray, necrosis: np.ndarray, *, fraction: float,
                    rng: np.random.Generator, spacing_mm: tuple[float, float, float],
                    placement: str = "biological") -> np.ndarray:
    """Hypoxic subregions: ``fraction`` of the viable tumour.

    ``biological`` prefers deep voxels and the neighbourhood of necrosis (far from the vascularised
    rim), with smooth random variation; ``random`` takes smooth random subregions independent of
    depth and necrosis, so that nothing but an image signature can reveal them.
    """
    if fraction <= 0.0 or not viable.any():
        return np.zeros_like(viable)
    if placement == "random":
        noise = _box_noise(viable.shape, rng, corr_vox=_vox(7.0, spacing_mm))
        return select_fraction(-noise, viable, fraction)
    near_nec = (ndimage.gaussian_filter(necrosis.astype(np.float32), _vox(6.0, spacing_mm), truncate=2.5)
                if necrosis.any() else np.zeros(viable.shape, dtype=np.float32))
    noise = _box_noise(viable.shape, rng, corr_vox=_vox(7.0, spacing_mm))
    score = -(depth / max(float(depth[viable].max()), 1e-6)) - 1.5 * near_nec - 0.45 * noise
    hyp = select_fraction(score, viable, fraction)
    return hyp


def edema_rim(outside_dist: np.ndarray, thickness_mm: float, rng: np.random.Generator, *,
              spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Peritumoural rim: ``0 < distance < thickness * (1 + 0.6 n)`` with a smooth field ``n``."""
    if thickness_mm <= 0.0:
        return np.zeros(outside_dist.shape, dtype=bool)
    noise = _box_noise(outside_dist.shape, rng, corr_vox=_vox(10.0, spacing_mm))
    return (outside_dist > 0) & (outside_dist < thickness_mm * (1.0 + 0.6 * noise))


def heterogeneity(shape: tuple[int, ...], rng: np.random.Generator, spacing_mm: tuple[float, float, float], *,
                  corr_mm: float = 4.0) -> np.ndarray:
    """Unit-sd smooth noise in a box (tumour texture)."""
    return _box_noise(shape, rng, corr_vox=_vox(corr_mm, spacing_mm))


def _vox(mm: float, spacing_mm: tuple[float, float, float]) -> tuple[float, float, float]:
    return tuple(mm / s for s in spacing_mm)  # type: ignore[return-value]


def _box_noise(shape: tuple[int, ...], rng: np.random.Generator, corr_vox: tuple[float, float, float]) -> np.ndarray:
    """Unit-sd smooth noise: filtered white noise on a coarse grid (step = corr/2), trilinear upsampled."""
    step = [max(c / 2.0, 1.0) for c in corr_vox]
    pad = 6
    coarse_shape = tuple(int(np.ceil(n / st)) + 1 + 2 * pad for n, st in zip(shape, step))
    white = rng.standard_normal(coarse_shape).astype(np.float32)
    coarse = ndimage.gaussian_filter(white, [c / st for c, st in zip(corr_vox, step)], mode="wrap")
    n = lerp_separable(coarse, tuple(np.arange(k) / st + pad for k, st in zip(shape, step)))  # type: ignore[arg-type]
    sd = float(n.std())
    return (n - float(n.mean())) / sd if sd > 0 else n
