"""Configuration of the phantom (``PhantomConfig``) and of a cohort (``CohortSpec``, the ``--spec`` YAML).

Both are frozen pydantic models that reject unknown keys. ``CohortSpec`` extends ``PhantomConfig``
with the cohort fields, so one flat YAML file holds everything::

    patients: 4
    fractions: 6
    site: mixed
    seed: 7
    snr: 20
    hypoxia_cnr: 1.0
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sarcart.config import load_model, validate_model

SiteName = Literal["retroperitoneum", "upper_extremity", "lower_extremity"]
SiteChoice = Literal["retroperitoneum", "upper_extremity", "lower_extremity", "mixed"]
SITES: tuple[str, ...] = ("retroperitoneum", "upper_extremity", "lower_extremity")
SITE_CODES: dict[str, str] = {"retroperitoneum": "RP", "upper_extremity": "UE", "lower_extremity": "LE"}
#: tumour (GTV) volume range per site in cc, sampled log-uniformly
TUMOUR_CC: dict[str, tuple[float, float]] = {
    "retroperitoneum": (30.0, 800.0),
    "upper_extremity": (50.0, 1000.0),
    "lower_extremity": (100.0, 3000.0),
}
#: prescription per site (Blitzer et al., J Clin Med 2022;11:1042, FACTS.md): total Gy over 6 fractions
PRESCRIPTION_GY: dict[str, float] = {"retroperitoneum": 48.0, "upper_extremity": 54.0, "lower_extremity": 48.0}
#: prescribed fractions of the trial's course (the number synthesised does not change the dose per fraction)
TRIAL_FRACTIONS = 6
BODY_PART: dict[str, str] = {"retroperitoneum": "ABDOMEN", "upper_extremity": "ARM", "lower_extremity": "LEG"}

Triple = tuple[float, float, float]


class PhantomConfig(BaseModel):
    """Everything that shapes one synthetic patient (grid, sequence, image quality, motion)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spacing_mm: Triple = Field(default=(1.5, 1.5, 3.0), description="voxel size (mm) along x, y, z")
    fov_mm: Triple = Field(default=(400.0, 400.0, 430.0), description="field of view (mm) along x, y, z")
    tr_ms: float = Field(default=3.0, gt=0.5, le=20.0, description="repetition time; TE = TR/2 (UNVERIFIED)")
    flip_deg: float = Field(default=60.0, gt=0.0, lt=180.0, description="flip angle (UNVERIFIED)")
    snr: float = Field(default=20.0, gt=0.0, le=1000.0, description="mean muscle signal / noise sigma")
    bias_amplitude: float = Field(default=0.2, ge=0.0, lt=0.9, description="coil bias field, +- fraction")
    psf_sigma_vox: float = Field(default=0.5, ge=0.0, le=3.0, description="Gaussian PSF sd (voxels)")
    texture_sd: float = Field(default=0.03, ge=0.0, le=0.5, description="smooth within-tissue PD variation")
    tumour_texture_sd: float = Field(default=0.08, ge=0.0, le=0.5, description="tumour heterogeneity (PD)")
    banding: bool = Field(default=False, description="off-resonance banding from a smooth B0 map")
    b0_max_hz: float = Field(default=200.0, ge=0.0, le=2000.0, description="peak off-resonance with banding")
    hypoxia_cnr: float = Field(default=1.0, ge=0.0, le=50.0,
                               description="mean normoxic - hypoxic viable tumour signal / sigma; 0 = none")
    hypoxia_placement: Literal["biological", "random"] = Field(
        default="biological", description="biological: deep and next to necrosis; random: smooth random "
        "subregions independent of depth and necrosis (a null for radiomics studies)")
    tumour_t1_ms: float = Field(default=600.0, gt=0.0, description="viable tumour T1 (UNVERIFIED)")
    tumour_t2_ms: float = Field(default=80.0, gt=0.0, description="viable tumour T2 (UNVERIFIED)")
    tumour_cc: tuple[float, float] | None = Field(default=None, description="override the site's GTV range")
    necrosis_probability: float | None = Field(
        default=None, ge=0.0, le=1.0, description="chance that a tumour has a necrotic core; default: rising "
        "with the tumour's size within the range, from 0.25 at the smallest to 0.75 at the largest")
    necrotic_fraction: tuple[float, float] = Field(
        default=(0.05, 0.35), description="range of the necrotic fraction of the GTV when there is necrosis")
    shrink_per_fraction: float = Field(default=0.03, ge=0.0, lt=0.5,
                                       description="GTV volume lost per fraction (fraction of the previous)")
    setup_shift_sd_mm: float = Field(default=3.0, ge=0.0, le=20.0, description="rigid set-up shift sd per axis")
    breathing_sd_mm: float = Field(default=4.0, ge=0.0, le=20.0, description="SI organ shift sd (abdomen)")
    peristalsis_mm: float = Field(default=4.0, ge=0.0, le=20.0, description="rms bowel displacement")
    soft_tissue_mm: float = Field(default=1.0, ge=0.0, le=10.0, description="rms smooth soft-tissue warp")
    regenerate_gas: bool = Field(default=True, description="new gas pockets every fraction (GAS not warped)")
    deformation_factors: tuple[int, int, int] = Field(
        default=(4, 4, 2), description="deformation grid = image grid subsampled by these factors")
    counts_per_muscle: float = Field(default=600.0, gt=0.0, le=4000.0,
                                     description="integer counts of the nominal muscle signal")
    workers: int = Field(default=2, ge=1, le=64, description="processes used to write fractions")

    @model_validator(mode="after")
    def _check(self) -> PhantomConfig:
        if min(self.spacing_mm) <= 0 or min(self.fov_mm) <= 0:
            raise ValueError(f"spacing_mm and fov_mm must be positive, got {self.spacing_mm}, {self.fov_mm}")
        if min(self.deformation_factors) < 1:
            raise ValueError(f"deformation_factors must be >= 1, got {self.deformation_factors}")
        if self.tumour_cc is not None and not 0 < self.tumour_cc[0] <= self.tumour_cc[1]:
            raise ValueError(f"tumour_cc must be (low, high) with 0 < low <= high, got {self.tumour_cc}")
        if not 0 <= self.necrotic_fraction[0] <= self.necrotic_fraction[1] <= 0.9:
            raise ValueError(f"necrotic_fraction must be (low, high) with 0 <= low <= high <= 0.9 (a viable rim "
                             f"must remain), got {self.necrotic_fraction}")
        if any(s < 50.0 for s in self.fov_mm):
            raise ValueError(f"fov_mm must be at least 50 mm along every axis, got {self.fov_mm}")
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image grid size: ceil(fov / spacing) per axis (267 x 267 x 144 by default)."""
        return tuple(math.ceil(f / s - 1e-6) for f, s in zip(self.fov_mm, self.spacing_mm))  # type: ignore

    @property
    def te_ms(self) -> float:
        return self.tr_ms / 2.0

    def tumour_range_cc(self, site: str) -> tuple[float, float]:
        return self.tumour_cc if self.tumour_cc is not None else TUMOUR_CC[site]


class CohortSpec(PhantomConfig):
    """A cohort: who (patients, sites), how many fractions, the seed, and the phantom settings."""

    patients: int = Field(default=1, ge=1, le=10000)
    fractions: int = Field(default=6, ge=1, le=40, description="daily fractions F (fx01..fxF) after fx00")
    site: SiteChoice = "mixed"
    seed: int = Field(default=0, ge=0, lt=2**32)
    genomic_link: float = Field(default=0.6, ge=0.0, le=1.0,
                                description="correlation of genomic grade score with hypoxic fraction")
    from_real: Path | None = Field(default=None, description="sts_mr_t1 folder: real extremity anatomy")

    @model_validator(mode="after")
    def _check_real(self) -> CohortSpec:
        if self.from_real is not None and self.site not in ("upper_extremity", "lower_extremity"):
            raise ValueError(f"from_real needs an extremity site (upper_extremity or lower_extremity), "
                             f"got site={self.site!r}")
        return self

    def site_of(self, index: int) -> str:
        """Site of patient ``index`` (0-based); ``mixed`` cycles RP, UE, LE."""
        return SITES[index % 3] if self.site == "mixed" else self.site

    def patient_name(self, index: int) -> str:
        return f"SYN-{SITE_CODES[self.site_of(index)]}-{index + 1:03d}"

    def phantom(self) -> PhantomConfig:
        """The phantom part of the spec."""
        keys = PhantomConfig.model_fields
        return PhantomConfig(**{k: v for k, v in self.model_dump().items() if k in keys})


def make_spec(**fields: object) -> CohortSpec:
    """Build a :class:`CohortSpec`, turning validation problems into :class:`ConfigError`."""
    return validate_model(CohortSpec, dict(fields), where="cohort spec", hint="see docs/phantom.md for the fields")


def load_spec(path: str | os.PathLike[str], **overrides: object) -> CohortSpec:
    """Read a cohort spec YAML (unknown keys are rejected); ``overrides`` replace file values."""
    return load_model(CohortSpec, path, what="cohort spec", hint="see docs/phantom.md for the fields; examples in "
                      "configs/cohorts/", **overrides)


def save_spec(spec: CohortSpec, path: str | os.PathLike[str]) -> Path:
    """Write the resolved spec as YAML (readable back with :func:`load_spec`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = spec.model_dump(mode="json")
    text = "# sarcart synthetic cohort spec (resolved) - research software, not for clinical use\n"
    p.write_text(text + yaml.safe_dump(data, sort_keys=False))
    return p
