"""Grids, seeded random streams and smooth random fields used by the anatomy and motion models.

Smooth fields are white Gaussian noise on a coarse grid, Gaussian filtered and scaled to unit
standard deviation, then evaluated on any rectilinear sub-grid by separable linear interpolation
(exactly trilinear interpolation, and much cheaper than interpolating point by point).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sarcart.errors import InvalidImageError
from sarcart.io.geometry import Geometry


def rng_for(seed: int, *keys: int | str) -> np.random.Generator:
    """An independent random stream for ``(seed, *keys)``; strings are hashed stably."""
    entropy = [int(seed) & 0xFFFFFFFF]
    for k in keys:
        if isinstance(k, str):
            entropy.append(int.from_bytes(k.encode()[:8].ljust(8, b"\0"), "little") & 0xFFFFFFFF)
            entropy.append(len(k))
        else:
            entropy.append(int(k) & 0xFFFFFFFF)
    return np.random.default_rng(entropy)


@dataclass(frozen=True)
class Grid:
    """World coordinates (LPS mm) of an axis-aligned voxel grid, axis by axis.

    Only identity-direction grids are supported (the synthetic sites use them; real images are
    resampled nowhere, their grids are identity in the reference data).
    """

    geometry: Geometry

    def __post_init__(self) -> None:
        if not np.allclose(self.geometry.direction_matrix, np.eye(3), atol=1e-6):
            raise InvalidImageError("the phantom works on grids with identity direction (axial LPS)")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    def axis(self, a: int) -> np.ndarray:
        """World coordinates (mm, float32) of the voxel centres along axis ``a``."""
        g = self.geometry
        return (g.origin_mm[a] + g.spacing_mm[a] * np.arange(g.shape[a])).astype(np.float32)

    def index_range(self, a: int, lo_mm: float, hi_mm: float) -> slice:
        """Slice of voxel indices along axis ``a`` whose centres lie within [lo_mm, hi_mm] (clipped)."""
        g = self.geometry
        n = g.shape[a]
        i0 = int(np.clip(np.floor((lo_mm - g.origin_mm[a]) / g.spacing_mm[a]), -1, n + 1))
        i1 = int(np.clip(np.ceil((hi_mm - g.origin_mm[a]) / g.spacing_mm[a]), -1, n + 1)) + 1
        return slice(max(i0, 0), max(min(i1, g.shape[a]), 0))

    def box(self, lo_mm: tuple[float, float, float], hi_mm: tuple[float, float, float]
            ) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray]:
        """Slices of a world-space box and broadcastable coordinates ``(nx,1,1), (1,ny,1), (1,1,nz)``."""
        sl = tuple(self.index_range(a, lo_mm[a], hi_mm[a]) for a in range(3))
        x = self.axis(0)[sl[0]][:, None, None]
        y = self.axis(1)[sl[1]][None, :, None]
        z = self.axis(2)[sl[2]][None, None, :]
        return sl, x, y, z  # type: ignore[return-value]

    def full(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates of the whole grid."""
        _, x, y, z = self.box((-np.inf,) * 3, (np.inf,) * 3)  # type: ignore[arg-type]
        return x, y, z


def _lerp_matrix(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and weight of linear interpolation at continuous indices ``coords``."""
    c = np.clip(np.asarray(coords, dtype=np.float64), 0.0, n - 1)
    i0 = np.minimum(np.floor(c).astype(np.int64), max(n - 2, 0))
    w = (c - i0).astype(np.float32)
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, w


def lerp_separable(array: np.ndarray, coords: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Trilinear interpolation of ``array`` (nx, ny, nz[, c]) on the rectilinear grid of continuous
    indices ``coords`` = (ci, cj, ck), 1D each; indices outside are clamped to the edge.

    Returns:
        float32 array of shape ``(len(ci), len(cj), len(ck)[, c])``.
    """
    out = np.asarray(array, dtype=np.float32)
    for axis in (2, 1, 0):  # last axis first: later (larger) passes copy contiguous blocks
        i0, i1, w = _lerp_matrix(coords[axis], out.shape[axis])
        shape = [1] * out.ndim
        shape[axis] = len(w)
        a0 = np.take(out, i0, axis=axis)
        a1 = np.take(out, i1, axis=axis)
        a1 -= a0
        a1 *= w.reshape(shape)
        a1 += a0
        out = a1
    return out


@dataclass(frozen=True)
class SmoothField:
    """A smooth random scalar or vector field with unit standard deviation per component.

    Attributes:
        coarse: ``(mx, my, mz[, c])`` float32 samples on the coarse grid.
        origin_mm: world position of coarse sample (0, 0, 0).
        step_mm: coarse sample spacing (mm) along x, y, z.
    """

    coarse: np.ndarray
    origin_mm: tuple[float, float, float]
    step_mm: tuple[float, float, float]

    @classmethod
    def random(cls, rng: np.random.Generator, lo_mm: tuple[float, float, float],
               hi_mm: tuple[float, float, float], *, corr_mm: float, components: int = 0) -> SmoothField:
        """White noise filtered by a Gaussian of sd ``corr_mm`` over the box [lo_mm, hi_mm] (padded)."""
        step = max(corr_mm / 2.0, 1.0)
        pad = 3.0 * corr_mm
        lo = np.asarray(lo_mm, dtype=float) - pad
        n = np.ceil((np.asarray(hi_mm, dtype=float) + pad - lo) / step).astype(int) + 1
        shape = tuple(int(v) for v in n) + ((components,) if components else ())
        noise = rng.standard_normal(shape).astype(np.float32)
        sigma = (corr_mm / step,) * 3 + ((0.0,) if components else ())
        smooth = ndimage.gaussian_filter(noise, sigma, mode="wrap")
        axes = (0, 1, 2)
        smooth = smooth - smooth.mean(axis=axes, keepdims=True)
        smooth = smooth / np.maximum(smooth.std(axis=axes, keepdims=True), 1e-12)
        return cls(smooth.astype(np.float32), tuple(float(v) for v in lo), (float(step),) * 3)  # type: ignore[arg-type]

    @classmethod
    def weight_from_mask(cls, mask: np.ndarray, geometry: Geometry, *, smooth_mm: float = 10.0,
                         step_mm: float = 6.0) -> SmoothField:
        """A smooth weight in [0, 1] that is 1 well inside ``mask`` and falls to 0 about ``smooth_mm``
        outside it: block mean to about ``step_mm``, Gaussian blur, doubled and clipped."""
        f = [max(round(step_mm / s), 1) for s in geometry.spacing_mm]
        n = [max(d // k, 1) for d, k in zip(mask.shape, f)]
        m = mask[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]].astype(np.float32)
        block = m.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean(axis=(1, 3, 5))
        step = tuple(s * k for s, k in zip(geometry.spacing_mm, f))
        blurred = ndimage.gaussian_filter(block, [smooth_mm / s for s in step], mode="constant")
        origin = tuple(o + sp * (k - 1) / 2.0 for o, sp, k in zip(geometry.origin_mm, geometry.spacing_mm, f))
        return cls(np.clip(2.0 * blurred, 0.0, 1.0).astype(np.float32), origin, step)  # type: ignore[arg-type]

    def on_axes(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Values on the rectilinear grid of world coordinates ``x, y, z`` (any shapes, raveled)."""
        coords = tuple((np.ravel(v).astype(np.float64) - o) / s
                       for v, o, s in zip((x, y, z), self.origin_mm, self.step_mm))
        return lerp_separable(self.coarse, coords)  # type: ignore[arg-type]

    def at_points(self, points_mm: np.ndarray) -> np.ndarray:
        """Values at scattered world points ``(..., 3)`` (trilinear)."""
        p = np.asarray(points_mm, dtype=np.float64)
        idx = (p - np.asarray(self.origin_mm)) / np.asarray(self.step_mm)
        flat = idx.reshape(-1, 3).T
        if self.coarse.ndim == 3:
            return ndimage.map_coordinates(self.coarse, flat, order=1, mode="nearest").reshape(p.shape[:-1])
        comps = [ndimage.map_coordinates(self.coarse[..., c], flat, order=1, mode="nearest")
                 for c in range(self.coarse.shape[-1])]
        return np.stack(comps, axis=-1).reshape(p.shape[:-1] + (len(comps),))


def smoothstep(x: np.ndarray, edge0: float, edge1: float) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1``, cubic Hermite in between (float32)."""
    t = np.clip((np.asarray(x, dtype=np.float32) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
