"""Dose-volume histograms: a DVH value type with D95/D2/Dmean/V(x Gy)/D0.5cc accessors.

A :class:`DVH` keeps the dose of every volume sample (voxel or sub-voxel) with its volume, so every
statistic is exact for the samples (no binning). Definitions (as in ICRU 83 and dicompyler-core):

* ``D(x)`` (``x`` in percent): the minimum dose received by the hottest ``x`` % of the volume;
  ``D_cc(v)``: the same for the hottest ``v`` cm^3. ``D(2)`` is the near-maximum, ``D(98)`` the
  near-minimum; ``D(50)`` the median.
* ``V(d)``: volume (cm^3) receiving at least ``d`` Gy; ``V_percent(d)`` in percent of the structure.

Boundary supersampling: from RTSTRUCT contours (:func:`dvh_from_contours`) each contour plane is
rasterised at ``supersample x supersample`` sub-pixels per dose pixel (sub-pixel centre inside the
polygon, even-odd rule for holes) and the dose is interpolated trilinearly at the sub-pixel centres,
so partially covered boundary voxels count with their covered fraction; each plane's samples span
the contour-plane spacing (as dicompyler-core does). From a voxel mask (:meth:`DVH.from_mask`) whole
voxels count: there is no sub-voxel information in a mask.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from sarcart.errors import InvalidDicomError, InvalidImageError
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DVH:
    """Dose samples of one structure.

    Attributes:
        name: structure name.
        dose_gy: ``(n,)`` float64 dose of each sample, sorted from hottest to coldest.
        volume_cc: ``(n,)`` float64 volume of each sample.
    """

    name: str
    dose_gy: np.ndarray
    volume_cc: np.ndarray

    def __post_init__(self) -> None:
        d, v = np.asarray(self.dose_gy, float).ravel(), np.asarray(self.volume_cc, float).ravel()
        if d.shape != v.shape:
            raise InvalidImageError(f"dose_gy and volume_cc differ in length ({d.size} vs {v.size})")
        order = np.argsort(-d, kind="stable")
        object.__setattr__(self, "dose_gy", d[order])
        object.__setattr__(self, "volume_cc", v[order])

    @classmethod
    def from_mask(cls, name: str, dose: Volume, mask: Volume) -> DVH:
        """DVH of the voxels of a boolean mask on the dose grid (whole voxels)."""
        dose.geometry.require_same(mask.geometry, what=f"mask {name!r}", tol_mm=1e-2)
        sel = mask.array.astype(bool)
        if not sel.any():
            raise InvalidImageError(f"mask {name!r} is empty; no DVH")
        d = dose.array[sel].astype(float)
        return cls(name, d, np.full(d.shape, dose.geometry.voxel_volume_cc))

    # ------------------------------------------------------------------ accessors
    @property
    def total_cc(self) -> float:
        return float(self.volume_cc.sum())

    @property
    def mean(self) -> float:
        return float(np.dot(self.dose_gy, self.volume_cc) / self.total_cc)

    @property
    def max(self) -> float:
        return float(self.dose_gy[0])

    @property
    def min(self) -> float:
        return float(self.dose_gy[-1])

    def D_cc(self, volume_cc: float) -> float:
        """Minimum dose (Gy) of the hottest ``volume_cc`` cm^3 (0 beyond the structure's volume)."""
        cum = np.cumsum(self.volume_cc)
        i = int(np.searchsorted(cum, volume_cc * (1 - 1e-9) - 1e-12, side="left"))
        return float(self.dose_gy[i]) if i < len(cum) else 0.0

    def D(self, percent: float) -> float:
        """Minimum dose (Gy) of the hottest ``percent`` % of the volume (D95, D2...)."""
        if not 0 <= percent <= 100:
            raise InvalidImageError(f"percent must be in [0, 100], got {percent}")
        return self.D_cc(percent / 100.0 * self.total_cc)

    def V(self, dose_gy: float) -> float:
        """Volume (cm^3) receiving at least ``dose_gy``."""
        return float(self.volume_cc[self.dose_gy >= dose_gy].sum())

    def V_percent(self, dose_gy: float) -> float:
        return 100.0 * self.V(dose_gy) / self.total_cc

    def cumulative(self, bin_gy: float = 0.01, max_gy: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(dose_edges, volume_cc)``: cumulative DVH sampled at ``0, bin, 2 bin, ...``."""
        top = self.max if max_gy is None else max_gy
        edges = np.arange(0.0, top + 2 * bin_gy, bin_gy)
        asc_d, asc_v = self.dose_gy[::-1], np.cumsum(self.volume_cc[::-1])[::-1]
        idx = np.searchsorted(asc_d, edges, side="left")
        vol = np.where(idx < len(asc_d), asc_v[np.minimum(idx, len(asc_d) - 1)], 0.0)
        return edges, vol

    def summary(self) -> dict[str, float]:
        """The usual clinical numbers in one dict (Gy, cc)."""
        return {"volume_cc": self.total_cc, "mean_gy": self.mean, "min_gy": self.min, "max_gy": self.max,
                "D98_gy": self.D(98), "D95_gy": self.D(95), "D50_gy": self.D(50), "D2_gy": self.D(2),
                "D0.5cc_gy": self.D_cc(0.5)}


def _plane_samples(poly_sets: list[np.ndarray], dose: Volume, z_mm: float, supersample: int, *,
                   full_volume: bool = True) -> tuple[np.ndarray, float]:
    """Dose at the sub-pixel centres inside the polygons of one plane, and the sub-pixel area (mm^2)."""
    from matplotlib.path import Path as MplPath

    g = dose.geometry
    d = g.direction_matrix
    if not np.allclose(np.abs(d), np.eye(3), atol=1e-4):
        raise InvalidImageError("contour DVHs need an axis-aligned dose grid")
    sx, sy, _ = g.spacing_mm
    pts = np.concatenate(poly_sets)
    lo = np.floor(g.world_to_index(pts.min(axis=0))[:2]) - 1
    hi = np.ceil(g.world_to_index(pts.max(axis=0))[:2]) + 1
    off = (np.arange(supersample) + 0.5) / supersample - 0.5
    fi = (np.arange(lo[0], hi[0] + 1)[:, None] + off[None, :]).ravel()
    fj = (np.arange(lo[1], hi[1] + 1)[:, None] + off[None, :]).ravel()
    ii, jj = np.meshgrid(fi, fj, indexing="ij")
    k = float(g.world_to_index(np.array([g.origin_mm[0], g.origin_mm[1], z_mm]))[2])
    idx = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k)], axis=1)
    xy = g.index_to_world(idx)[:, :2]
    inside = np.zeros(len(xy), dtype=bool)
    for poly in poly_sets:
        inside ^= MplPath(poly[:, :2]).contains_points(xy)
    sel = idx[inside]
    if not full_volume:
        upper = np.asarray(g.shape, dtype=float) - 0.5
        sel = sel[np.all((sel >= -0.5) & (sel <= upper), axis=1)]
    vals = ndimage.map_coordinates(dose.array, sel.T, order=1, mode="nearest" if not full_volume else "constant",
                                   cval=0.0)
    return vals.astype(np.float64), (sx / supersample) * (sy / supersample)


def dvh_from_contours(dose: Volume, rtstruct: str | os.PathLike[str], roi: int | str, *,
                      supersample: int = 4, full_volume: bool = True) -> DVH:
    """DVH of one RTSTRUCT ROI on a dose grid with boundary supersampling (see the module docstring).

    Args:
        dose: the dose volume (Gy), axis-aligned grid.
        rtstruct: RTSTRUCT file.
        roi: ROI number or name.
        supersample: sub-pixels per dose pixel along each in-plane axis.
        full_volume: count the parts of the structure outside the dose grid (at 0 Gy), as
            dicompyler-core does; ``False`` keeps only the part inside the grid, as planning systems
            that report DVHs over the dose calculation volume do.
    """
    import pydicom

    ds = pydicom.dcmread(Path(rtstruct))
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    number = roi if isinstance(roi, int) else next((n for n, s in names.items() if s == roi), None)
    if number not in names:
        raise InvalidDicomError(f"ROI {roi!r} is not in {rtstruct}; available: {names}")
    contours = next((c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) == number), None)
    planes: dict[float, list[np.ndarray]] = {}
    for c in (contours.get("ContourSequence", []) if contours is not None else []):
        if str(c.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
            continue
        pts = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
        planes.setdefault(round(float(pts[0, 2]), 2), []).append(pts)
    if not planes:
        raise InvalidImageError(f"ROI {names[number]!r} has no closed planar contours")
    zs = np.array(sorted(planes))
    thickness = float(np.min(np.diff(zs))) if len(zs) > 1 else float(dose.geometry.spacing_mm[2])
    doses, vols = [], []
    for z in zs:
        vals, area = _plane_samples(planes[z], dose, float(z), supersample, full_volume=full_volume)
        doses.append(vals)
        vols.append(np.full(vals.shape, area * thickness / 1000.0))
    return DVH(names[number], np.concatenate(doses), np.concatenate(vols))
