"""Voxel-wise dose prescription from a risk map: linear dose painting by numbers.

D(r) = D_base + (D_boost - D_base) * clip((r_s - r_low) / (r_high - r_low), 0, 1), where r_s is the risk
smoothed by a Gaussian of ``smoothing_mm`` (normalised convolution inside the ROI, so nothing bleeds in
from outside), then clipped to [min_dose_gy, max_dose_gy]. NECROSIS voxels get the base dose (no boost to
necrotic tissue). Outside the ROI the map holds the base dose, so a planning target larger than the ROI
(PTV) is prescribed the base dose there. Doses are course doses in Gy.

Linear mapping: Bentzen, Lancet Oncol 2005;6:112, doi:10.1016/S1470-2045(05)01737-7 (dose painting by
numbers); D(I) = Dmin + (Dmax - Dmin)(I - Imin)/(Imax - Imin) as in FACTS.md section 8. The boost level
is a research setting (UNVERIFIED for sarcoma); research software, not for clinical use.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sarcart.config import load_model
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)


class PaintingConfig(BaseModel):
    """Dose-painting settings (YAML keys; unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base_dose_gy: float = Field(54.0, gt=0, le=100, description="course dose where risk <= risk_low")
    boost_dose_gy: float = Field(64.8, gt=0, le=120, description="course dose where risk >= risk_high")
    risk_low: float = Field(0.2, ge=0, le=1, description="risk mapped to the base dose")
    risk_high: float = Field(0.8, ge=0, le=1, description="risk mapped to the boost dose")
    smoothing_mm: float = Field(3.0, ge=0, le=30, description="Gaussian sigma applied to the risk inside the ROI")
    min_dose_gy: float | None = Field(None, ge=0, description="lower bound (default: base dose)")
    max_dose_gy: float | None = Field(None, ge=0, description="upper bound (default: boost dose)")

    @model_validator(mode="after")
    def _check(self) -> PaintingConfig:
        if self.boost_dose_gy < self.base_dose_gy:
            raise ValueError(f"boost_dose_gy ({self.boost_dose_gy}) must be >= base_dose_gy ({self.base_dose_gy})")
        if self.risk_high <= self.risk_low:
            raise ValueError(f"risk_high ({self.risk_high}) must exceed risk_low ({self.risk_low})")
        lo, hi = self.bounds
        if hi < lo:
            raise ValueError(f"max_dose_gy ({hi}) must be >= min_dose_gy ({lo})")
        return self

    @property
    def bounds(self) -> tuple[float, float]:
        lo = self.min_dose_gy if self.min_dose_gy is not None else self.base_dose_gy
        hi = self.max_dose_gy if self.max_dose_gy is not None else self.boost_dose_gy
        return lo, hi


def load_painting(path: str | os.PathLike[str] | None, **overrides: float | None) -> PaintingConfig:
    """Painting settings from a YAML file (or defaults), with keyword overrides (None = keep)."""
    return load_model(PaintingConfig, path, what="painting settings", **overrides)


def smooth_in_roi(values: np.ndarray, roi: np.ndarray, spacing_mm: tuple[float, float, float], *,
                  sigma_mm: float) -> np.ndarray:
    """Gaussian smoothing restricted to the ROI (normalised convolution: G*(v m) / G*m)."""
    from scipy import ndimage

    if sigma_mm <= 0:
        return values.astype(np.float64)
    sigma = [sigma_mm / s for s in spacing_mm]
    m = roi.astype(np.float64)
    num = ndimage.gaussian_filter(values * m, sigma, mode="constant")
    den = ndimage.gaussian_filter(m, sigma, mode="constant")
    return np.where(roi, num / np.where(den > 0, den, 1.0), 0.0)


def prescription_map(risk: Volume, roi: Volume, config: PaintingConfig, *, necrosis: Volume | None = None) -> Volume:
    """Course-dose prescription (float32 Gy) on the risk map's grid (see the module docstring).

    Raises:
        GeometryMismatchError: ROI or necrosis not on the risk map's grid.
    """
    risk.geometry.require_same(roi.geometry, what="ROI")
    inside = roi.array.astype(bool)
    r = smooth_in_roi(np.asarray(risk.array, dtype=np.float64), inside, risk.geometry.spacing_mm,
                      sigma_mm=config.smoothing_mm)
    frac = np.clip((r - config.risk_low) / (config.risk_high - config.risk_low), 0.0, 1.0)
    dose = config.base_dose_gy + (config.boost_dose_gy - config.base_dose_gy) * frac
    dose = np.clip(dose, *config.bounds)
    if necrosis is not None:
        risk.geometry.require_same(necrosis.geometry, what="NECROSIS mask")
        dose = np.where(necrosis.array.astype(bool), config.base_dose_gy, dose)
    out = np.where(inside, dose, config.base_dose_gy).astype(np.float32)
    log.info("prescription: %.1f-%.1f Gy in the ROI (mean %.1f Gy)", out[inside].min(), out[inside].max(),
             out[inside].mean())
    return risk.with_array(out)
