"""Target volumes as the sarcoma guidelines define them, with margins in millimetres.

* Hypofractionated definitive treatment (the trial sarcart follows, Blitzer et al. J Clin Med
  2022;11:1042): PTV = GTV + 3 mm.
* Pre-operative extremity (RTOG, Wang et al. IJROBP 2011;81:e525, doi 10.1016/j.ijrobp.2011.04.038):
  CTV = GTV + 3 cm longitudinally and 1.5 cm radially, including peritumoural T2 oedema, cropped at
  bone and skin; PTV = CTV + 5 mm with image guidance (RTOG 0630).
* Pre-operative retroperitoneum (Baldini et al. 2015 consensus; margins UNVERIFIED in FACTS.md,
  configurable): CTV = GTV + 1.5 cm, trimmed at bone, kidney and liver, and reaching at most 5 mm into
  bowel and air; PTV = CTV + 5 mm.

Margins are ellipsoidal: a voxel is within the margin when (dx/rx)² + (dy/ry)² + (dz/rz)² ≤ 1 for
its offset (dx, dy, dz) in mm from the nearest structure voxel, computed with an exact Euclidean
distance transform in scaled coordinates (Maurer-type EDT of scipy), so anisotropic voxels are
handled correctly. "Longitudinal" is the patient's superior-inferior axis (LPS z).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy.ndimage import distance_transform_edt

from sarcart.errors import ConfigError, GeometryMismatchError, InvalidImageError
from sarcart.io.geometry import Volume


@dataclass(frozen=True)
class Margin:
    """An ellipsoidal margin in mm: ``radial`` in the axial plane (LPS x, y), ``longitudinal`` along z."""

    radial_mm: float
    longitudinal_mm: float | None = None

    def __post_init__(self) -> None:
        lon = self.radial_mm if self.longitudinal_mm is None else self.longitudinal_mm
        if self.radial_mm < 0 or lon < 0:
            raise ConfigError(f"margins must be >= 0 mm, got radial {self.radial_mm}, longitudinal {lon}")

    @property
    def world_mm(self) -> tuple[float, float, float]:
        lon = self.radial_mm if self.longitudinal_mm is None else self.longitudinal_mm
        return (self.radial_mm, self.radial_mm, lon)


def _index_radii(mask: Volume, margin: Margin) -> np.ndarray:
    """Margin radius along each index axis (the grid must be aligned with LPS axes)."""
    d = np.abs(mask.geometry.direction_matrix)
    if not np.allclose(np.sort(d, axis=0)[-1], 1.0, atol=1e-3):
        raise GeometryMismatchError("ellipsoidal margins need a grid aligned with the patient axes (axial, "
                                    "coronal or sagittal slices); resample oblique images first")
    world_axis = d.argmax(axis=0)  # which LPS axis each index axis runs along
    return np.asarray([margin.world_mm[a] for a in world_axis], dtype=float)


def expand(mask: Volume, margin: Margin) -> Volume:
    """Grow a boolean mask by an ellipsoidal margin (mm). A zero margin returns the mask itself."""
    m = np.asarray(mask.array, dtype=bool)
    if m.ndim != 3:
        raise InvalidImageError(f"mask must be 3D, got shape {m.shape}")
    if not m.any():
        raise InvalidImageError("cannot expand an empty mask; check the structure (is it on this image?)")
    radii = _index_radii(mask, margin)
    if np.all(radii == 0):
        return mask.with_array(m.copy())
    if np.any(radii == 0):
        raise ConfigError("a margin of 0 mm along one axis only is not supported; use a small positive value")
    spacing = np.asarray(mask.geometry.spacing_mm) / radii  # distances in units of the ellipsoid radius
    dist = distance_transform_edt(~m, sampling=spacing)
    return mask.with_array(dist <= 1.0 + 1e-9)


def distance_mm(mask: Volume) -> np.ndarray:
    """Euclidean distance (mm) of every voxel from the mask (0 inside)."""
    return distance_transform_edt(~np.asarray(mask.array, bool), sampling=mask.geometry.spacing_mm)


@dataclass(frozen=True)
class TargetConfig:
    """Margins and trimming rules of one site and intent (all distances in mm)."""

    ctv: Margin | None = None           # None: no CTV (PTV straight from the GTV)
    ptv: Margin = Margin(3.0)
    include_edema: bool = False
    crop_to_body_mm: float = 0.0        # keep the CTV this far inside the skin
    exclude: tuple[str, ...] = ()       # structures removed from the CTV (bone, kidney, liver)
    limited: Mapping[str, float] | None = None  # structure -> max depth (mm) the CTV may reach into it


DEFINITIVE = TargetConfig()
EXTREMITY_PREOP = TargetConfig(ctv=Margin(15.0, 30.0), ptv=Margin(5.0), include_edema=True,
                               crop_to_body_mm=3.0, exclude=("BONE",))
RETROPERITONEUM_PREOP = TargetConfig(ctv=Margin(15.0), ptv=Margin(5.0), exclude=("BONE", "KIDNEY_L", "KIDNEY_R", "LIVER"),
                                     limited={"BOWEL": 5.0, "GAS": 5.0})
PRESETS = {
    ("definitive", "retroperitoneum"): DEFINITIVE, ("definitive", "upper_extremity"): DEFINITIVE,
    ("definitive", "lower_extremity"): DEFINITIVE, ("preoperative", "upper_extremity"): EXTREMITY_PREOP,
    ("preoperative", "lower_extremity"): EXTREMITY_PREOP, ("preoperative", "retroperitoneum"): RETROPERITONEUM_PREOP,
}


def build_targets(structures: Mapping[str, Volume], config: TargetConfig) -> dict[str, Volume]:
    """CTV (when configured) and PTV from the GTV and the organs in ``structures``.

    Args:
        structures: boolean masks by canonical name on one grid; needs ``GTV``, and ``BODY`` for
            cropping, ``EDEMA`` when included, and the structures named in ``exclude``/``limited``
            when present (absent ones are skipped).

    Returns:
        ``{"CTV": ..., "PTV": ...}`` (no CTV key for definitive treatment).
    """
    if "GTV" not in structures:
        raise InvalidImageError(f"a GTV is needed to build targets; got {', '.join(structures) or 'nothing'}")
    gtv = structures["GTV"]
    for name, v in structures.items():
        gtv.geometry.require_same(v.geometry, what=f"structure {name!r}")
    out: dict[str, Volume] = {}
    source = gtv
    if config.ctv is not None:
        core = gtv.array.copy()
        if config.include_edema and "EDEMA" in structures:
            core |= structures["EDEMA"].array
        ctv = expand(gtv, config.ctv).array | core
        for name in config.exclude:
            if name in structures:
                ctv &= ~structures[name].array | gtv.array
        if config.limited:
            near_gtv = distance_mm(gtv)
            for name, depth in config.limited.items():
                if name in structures:
                    ctv &= ~(structures[name].array & (near_gtv > depth))
        if "BODY" in structures:
            inside = distance_mm(structures["BODY"].with_array(~structures["BODY"].array)) > config.crop_to_body_mm
            ctv &= inside | gtv.array
        out["CTV"] = gtv.with_array(ctv)
        source = out["CTV"]
    ptv = expand(source, config.ptv).array
    if "BODY" in structures:
        ptv &= structures["BODY"].array
    out["PTV"] = gtv.with_array(ptv)
    return out
