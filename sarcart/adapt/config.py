"""Configuration of the adaptive pipeline (``configs/adapt/*.yaml``; unknown keys are rejected).

One pydantic model per stage, gathered in :class:`AdaptConfig`. The resolved configuration is saved
next to every fraction's outputs (``config.json``) and logged to MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sarcart.config import load_model

#: configs/ of the source tree (the shipped prescriptions and adapt configurations)
CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
#: prescription file per site (definitive hypofractionated course, FACTS.md / docs/dose.md)
DEFAULT_PRESCRIPTIONS = {"retroperitoneum": "retroperitoneum_48gy_6fx.yaml",
                         "upper_extremity": "extremity_54gy_6fx.yaml", "lower_extremity": "extremity_54gy_6fx.yaml"}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SegmentSettings(_Frozen):
    """Segmentation stage: the network where it is shipped and trusted, propagation otherwise."""

    model: str | None = Field("trufi", description="shipped model name, bundle path or MLflow URI; null: "
                              "propagation only")
    network_structures: tuple[str, ...] = Field(("KIDNEY_L", "KIDNEY_R"),
                                                description="structures taken from the network when it has them; the "
                                                "others are propagated from the reference. Default: the kidneys only: "
                                                "propagation beats the shipped trufi network on the GTV (docs/qa.md), "
                                                "and network BOWEL lost to propagation on the 6 mm demo course "
                                                "(docs/adapt.md) although it wins at the network's own resolution")
    body_from_image: bool = Field(True, description="BODY by an intensity rule (largest bright component, filled) "
                                  "instead of propagation")
    flagged_fallback: bool = Field(True, description="replace a network structure that QA flags by propagation")
    demons_spacing_mm: tuple[float, ...] = (12.0, 6.0)
    demons_iterations: tuple[int, ...] = (60, 30)
    smoothing_mm: float = Field(10.0, gt=0, description="Gaussian regularisation of the demons field (mm)")


class PaintingSettings(_Frozen):
    """Radiomics -> risk -> prescription map, cheap on CPU (small kernel, GTV bounding box)."""

    enabled: bool = True
    kernel_radius: int = Field(1, ge=1, le=3)
    bin_count: int = Field(16, ge=4, le=128)
    features: tuple[str, ...] = ("firstorder_Mean", "firstorder_Variance", "glcm_JointEntropy")
    habitats: int = Field(3, ge=2, le=6)
    risk_model: str | None = Field("adapt-risk", description="risk model: shipped name (adapt-risk, trained on the "
                                   "phantom's hypoxia: docs/models/adapt-risk.md), .skops file or MLflow URI; null: "
                                   "the darkest habitat is the high-risk region (unsupervised rule)")
    boost_fraction: float = Field(0.2, ge=0.0, le=0.5, description="boost dose = (1 + this) x prescription")
    risk_low: float = Field(0.2, ge=0, le=1)
    risk_high: float = Field(0.8, ge=0, le=1)
    smoothing_mm: float = Field(3.0, ge=0)
    compensate: bool = Field(False, description="plan against what the painted prescription still needs after the "
                             "fractions delivered so far (sarcart.adapt.compensate)")
    max_change: float = Field(0.15, ge=0, le=0.5, description="bound of the compensation per voxel (relative)")


class DecisionSettings(_Frozen):
    """Adapt-or-not rules applied to the predicted plan (reference segments on today's anatomy)."""

    min_d95_fraction: float = Field(0.95, gt=0, le=1.1, description="target D95 >= this x prescription")
    constraint_tolerance: float = Field(0.05, ge=0, description="a limit the reference plan already missed counts "
                                        "as failed only when today's value is worse by more than this (relative)")
    max_qf_increase: float = Field(0.02, ge=0, description="painting QF may exceed the reference plan's by this")
    min_boost_dice: float = Field(0.7, ge=0, le=1, description="painting target changed when the Dice of today's boost "
                                  "region with the reference one (propagated) is below this")
    couch_shift: Literal["target_centroid", "none"] = Field("target_centroid", description="isocentre shift of the "
                                                            "predicted plan (online alignment on the target)")
    force: Literal["auto", "always", "never"] = "auto"


class AdaptConfig(_Frozen):
    """Everything ``sarcart adapt`` and ``sarcart course init`` read."""

    prescription: str | None = Field(None, description="prescription YAML; null: the shipped file of the site")
    dose_grid_mm: float | None = Field(None, gt=0, description="override the prescription's dose grid")
    n_beams: int | None = Field(None, ge=3, le=72, description="override the prescription's number of beams")
    segment: SegmentSettings = SegmentSettings()
    painting: PaintingSettings = PaintingSettings()
    decision: DecisionSettings = DecisionSettings()
    mlflow: bool = True
    figures: bool = True


def load_adapt_config(path: str | os.PathLike[str] | None = None) -> AdaptConfig:
    """Read an adapt configuration (``None``: the defaults, as in ``configs/adapt/default.yaml``)."""
    return load_model(AdaptConfig, path, what="adapt configuration", hint="see configs/adapt/default.yaml")


def prescription_path(config: AdaptConfig, site: str) -> Path:
    """The prescription file of the course (explicit, else the shipped file of the site)."""
    if config.prescription:
        return Path(config.prescription)
    return CONFIG_ROOT / "prescriptions" / DEFAULT_PRESCRIPTIONS[site]
