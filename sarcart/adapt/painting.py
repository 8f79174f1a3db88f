"""Radiomics stage of a fraction: voxel feature maps in the GTV, habitats, risk, prescription map.

Kept cheap for the couch: maps of a few features with a small kernel (``kernel_radius`` voxels),
computed on the GTV's bounding box only, the image z-scored inside the GTV and discretised into a
fixed number of bins (IBSI recommendation for MR without calibrated units; Zwanenburg et al.,
Radiology 2020, doi 10.1148/radiol.2020191145). Habitats: k-means on the standardised maps
(:mod:`sarcart.radiomics.habitats`); later fractions are clustered from the reference's centroids and
numbered like the reference's. Risk: by default the shipped ``adapt-risk`` model
(:mod:`sarcart.adapt.risk`; logistic regression on these maps plus depth and distance to necrosis,
trained on the phantom's HYPOXIA: docs/models/adapt-risk.md); with ``risk_model: null`` the *darkest
habitat* (lowest mean intensity) is the high-risk region — an unsupervised rule that scores below chance
on the phantom (AUROC 0.42-0.46), kept for comparison.
Prescription: linear dose painting by numbers (Bentzen, Lancet Oncol 2005, doi
10.1016/S1470-2045(05)01737-7) from the base prescription to ``(1 + boost_fraction)`` times it,
inside the PTV (the map is 0 outside it, as the planner expects).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from sarcart.adapt.config import PaintingSettings
from sarcart.errors import ConfigError, InvalidImageError
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)


@dataclass
class PaintingResult:
    """Outputs on today's image grid (doses are course doses, Gy)."""

    prescription: Volume   # float32 Gy, 0 outside the PTV
    risk: Volume           # float32 0..1, 0 outside the GTV
    habitats: Volume       # uint8 1..k in the GTV
    habitat_model: Any     # sarcart.radiomics.habitats.HabitatModel
    boost_gy: float
    base_gy: float

    @property
    def boost_region(self) -> np.ndarray:
        """Voxels prescribed more than halfway from the base to the boost dose."""
        return self.prescription.array > self.base_gy + 0.5 * (self.boost_gy - self.base_gy)


def _features(names: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in names:
        cls, _, feat = n.partition("_")
        if not feat:
            raise ConfigError(f"feature names look like 'firstorder_Mean', got {n!r}")
        out.setdefault(cls, []).append(feat)
    return out


def gtv_feature_maps(image: Volume, gtv: Volume, settings: PaintingSettings, *, device: str = "cpu"):
    """Feature maps (:class:`~sarcart.radiomics.maps.io.FeatureMaps`) on the GTV bounding box."""
    from sarcart.radiomics.maps.engine import compute_feature_maps
    from sarcart.radiomics.maps.io import FeatureMaps, crop_volume
    from sarcart.radiomics.maps.settings import MapSettings

    roi = np.asarray(gtv.array, bool)
    if roi.sum() < 10 * settings.habitats:
        raise InvalidImageError(f"GTV has {int(roi.sum())} voxels; painting needs at least {10 * settings.habitats}")
    img = crop_volume(image, roi, settings.kernel_radius)
    roi_c = crop_volume(gtv, roi, settings.kernel_radius).array.astype(bool)
    arr = img.array.astype(np.float64)
    arr = (arr - arr[roi_c].mean()) / max(float(arr[roi_c].std()), 1e-6)
    ms = MapSettings(kernel_radius=settings.kernel_radius, bin_count=settings.bin_count)
    res = compute_feature_maps(arr, roi_c, ms, features=_features(settings.features), spacing_mm=img.geometry.spacing_mm,
                               device=device)
    maps = {k: Volume(v, img.geometry) for k, v in res.maps.items()}
    return FeatureMaps(maps, Volume(roi_c, img.geometry), {"n_voxels": res.n_voxels, "seconds": res.seconds})


def _paste(values: np.ndarray, crop: Volume, full: Volume, dtype) -> Volume:
    """Put a cropped array back on the full grid (0 elsewhere)."""
    lo = np.rint(full.geometry.world_to_index(np.asarray(crop.geometry.origin_mm))).astype(int)
    out = np.zeros(full.geometry.shape, dtype=dtype)
    sl = tuple(slice(a, a + n) for a, n in zip(lo, values.shape))
    out[sl] = values
    return full.with_array(out)


def painting_map(image: Volume, masks: dict[str, Volume], base_gy: float, *, settings: PaintingSettings | None = None,
                 reference=None, device: str = "cpu") -> PaintingResult:
    """Habitats, risk and the painted course-dose prescription of today's image (module docstring).

    Args:
        image: today's image.
        masks: today's structures; needs ``GTV`` and ``PTV`` (``NECROSIS`` gets the base dose when present).
        base_gy: the course prescription (Gy) of the target.
        reference: the reference fraction's habitat model (None: this is the reference; fit one).
    """
    from sarcart.radiomics.habitats import HabitatConfig, assign, fit_habitats, refit_to_reference
    from sarcart.radiomics.prescription import PaintingConfig, prescription_map

    s = settings or PaintingSettings()
    gtv, ptv = masks["GTV"], masks["PTV"]
    risk_model = None
    if s.risk_model:
        from sarcart.adapt.risk import load_risk_model, map_names, stage_maps

        risk_model = load_risk_model(s.risk_model)
        fm = stage_maps(image, gtv, s, necrosis=masks.get("NECROSIS"), extra=map_names(risk_model), device=device)
    else:
        fm = gtv_feature_maps(image, gtv, s, device=device)
    cfg = HabitatConfig(features=s.features, k=s.habitats, max_voxels=5000)
    model = fit_habitats(fm, cfg) if reference is None else refit_to_reference(fm, reference)
    hab_c = assign(fm, model)
    if risk_model is not None:
        from sarcart.radiomics.risk import predict_risk

        risk_c = predict_risk(risk_model, fm).array
    else:
        risk_c = (hab_c.array == 1).astype(np.float32)
    crop = fm.roi
    risk = _paste(risk_c, crop, gtv, np.float32)
    habitats = _paste(hab_c.array, crop, gtv, np.uint8)
    boost = base_gy * (1.0 + s.boost_fraction)
    pc = PaintingConfig(base_dose_gy=base_gy, boost_dose_gy=boost, risk_low=s.risk_low, risk_high=s.risk_high,
                        smoothing_mm=s.smoothing_mm)
    pres = prescription_map(risk, gtv, pc, necrosis=masks.get("NECROSIS"))
    pres = pres.with_array(np.where(ptv.array, pres.array, 0.0).astype(np.float32))
    return PaintingResult(pres, risk, habitats, model, boost, base_gy)
