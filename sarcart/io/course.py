"""The course data model: one patient folder used by every command (synth, serve, adapt, finetune).

Layout (documented in ``docs/course.md``)::

    <patient>/
      course.yaml                 site, intent, prescription, number of daily fractions
      fx00/                       reference (planning) fraction
        mr/                       DICOM MR series of the day
        image.nii.gz              the same image as NIfTI
        rtstruct.dcm              structures of record (fx00: planning contours; synthetic: ground truth)
        labels.nii.gz/.json       ground-truth label map (synthetic cohorts only)
        hypoxia.nii.gz            ground-truth HYPOXIA mask (synthetic cohorts only)
        plan/                     reference plan (rtplan.dcm, rtdose.dcm, dose.nii.gz)
      fx01/ ... fxNN/             daily fractions, as fx00 plus
        deformation_to_ref.nii.gz     true displacement (mm, LPS) from this fraction to fx00 (synthetic)
        predicted/                    automatic contours: rtstruct.dcm, labels.nii.gz, qa.json
        approved/                     clinician-approved contours: rtstruct.dcm
        delivered/                    delivered dose: dose.nii.gz
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sarcart.config import load_model
from sarcart.errors import ConfigError, CourseLayoutError
from sarcart.io.atomic import atomic_write_text

SITES = ("retroperitoneum", "upper_extremity", "lower_extremity")
Site = Literal["retroperitoneum", "upper_extremity", "lower_extremity"]
_FX = re.compile(r"fx(\d{2})")


class Prescription(BaseModel):
    """Prescribed dose to the target (physical dose, Gy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dose_gy: float = Field(gt=0, le=100, description="total prescribed dose to the target")
    fractions: int = Field(ge=1, le=50, description="number of treatment fractions")
    target: str = Field(default="PTV", description="structure the dose is prescribed to")
    ptv_margin_mm: float = Field(default=3.0, ge=0, le=30, description="GTV -> PTV margin")

    @property
    def dose_per_fraction_gy(self) -> float:
        return self.dose_gy / self.fractions


class CourseConfig(BaseModel):
    """Contents of ``course.yaml``; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: int = Field(default=1, ge=1, le=1)
    patient: str = Field(min_length=1, max_length=64, description="folder name / pseudonym of the patient")
    site: Site
    intent: Literal["definitive", "preoperative"] = "definitive"
    prescription: Prescription
    synthetic: bool = Field(default=False, description="fractions hold phantom ground truth")
    notes: str = ""

    @model_validator(mode="after")
    def _check(self) -> "CourseConfig":
        if "/" in self.patient or "\\" in self.patient:
            raise ValueError(f"patient must be a plain folder name, got {self.patient!r}")
        return self


@dataclass(frozen=True)
class Fraction:
    """Paths of one fraction folder (``fxNN``); nothing is read until asked."""

    root: Path
    index: int

    @property
    def name(self) -> str:
        return f"fx{self.index:02d}"

    @property
    def is_reference(self) -> bool:
        return self.index == 0

    mr_dir = property(lambda self: self.root / "mr")
    image = property(lambda self: self.root / "image.nii.gz")
    rtstruct = property(lambda self: self.root / "rtstruct.dcm")
    labels = property(lambda self: self.root / "labels.nii.gz")
    hypoxia = property(lambda self: self.root / "hypoxia.nii.gz")
    deformation_to_ref = property(lambda self: self.root / "deformation_to_ref.nii.gz")
    predicted_dir = property(lambda self: self.root / "predicted")
    approved_dir = property(lambda self: self.root / "approved")
    plan_dir = property(lambda self: self.root / "plan")
    delivered_dir = property(lambda self: self.root / "delivered")

    def approved_rtstruct(self) -> Path | None:
        """The approved structure set: ``approved/rtstruct.dcm``; for fx00 its ``rtstruct.dcm``."""
        approved = self.approved_dir / "rtstruct.dcm"
        if approved.is_file():
            return approved
        if self.is_reference and self.rtstruct.is_file():
            return self.rtstruct
        return None

    @property
    def has_ground_truth(self) -> bool:
        return self.labels.is_file()


@dataclass(frozen=True)
class Course:
    """A patient's course: its configuration and fraction folders."""

    root: Path
    config: CourseConfig

    @property
    def fractions(self) -> list[Fraction]:
        """Fraction folders present on disk, in order (fx00 first)."""
        found = sorted(int(m.group(1)) for p in self.root.iterdir() if p.is_dir() and (m := _FX.fullmatch(p.name)))
        return [Fraction(self.root / f"fx{i:02d}", i) for i in found]

    @property
    def reference(self) -> Fraction:
        return self.fraction(0)

    def fraction(self, index: int) -> Fraction:
        n = self.config.prescription.fractions
        if not 0 <= index <= n:
            raise CourseLayoutError(f"fraction must be 0..{n} for this course ({n} fractions), got {index}")
        return Fraction(self.root / f"fx{index:02d}", index)

    def problems(self) -> list[str]:
        """What is missing from the layout (empty when the course is complete enough to run)."""
        out = []
        ref = self.reference
        if not ref.root.is_dir():
            out.append("fx00/ (the reference fraction) is missing")
        else:
            if not ref.mr_dir.is_dir() and not ref.image.is_file():
                out.append("fx00 has neither mr/ nor image.nii.gz")
            if not ref.rtstruct.is_file():
                out.append("fx00/rtstruct.dcm (the planning structures) is missing")
        for fx in self.fractions:
            if fx.index > self.config.prescription.fractions:
                out.append(f"{fx.name}/ is beyond the prescribed {self.config.prescription.fractions} fractions")
        return out


def load_course(patient_dir: str | os.PathLike[str], *, strict: bool = False) -> Course:
    """Read and validate ``<patient_dir>/course.yaml``.

    Args:
        strict: also require a complete reference fraction (mr/ or image, rtstruct.dcm).

    Raises:
        CourseLayoutError: missing folder or file, invalid YAML, unknown keys, out-of-range values.
    """
    root = Path(patient_dir)
    cfg_path = root / "course.yaml"
    if not cfg_path.is_file():
        raise CourseLayoutError(
            f"{cfg_path} not found: a patient folder needs course.yaml (create it with "
            "`sarcart course init` or see docs/course.md)"
        )
    try:
        config = load_model(CourseConfig, cfg_path, what="course", hint="see docs/course.md")
    except ConfigError as exc:
        raise CourseLayoutError(str(exc)) from exc
    course = Course(root, config)
    if strict and (problems := course.problems()):
        raise CourseLayoutError(f"{root}: " + "; ".join(problems))
    return course


def write_course(patient_dir: str | os.PathLike[str], config: CourseConfig) -> Course:
    """Create the patient folder and write ``course.yaml``."""
    root = Path(patient_dir)
    root.mkdir(parents=True, exist_ok=True)
    text = "# sarcart course (see docs/course.md) - research software, not for clinical use\n"
    text += yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    atomic_write_text(root / "course.yaml", text)
    return Course(root, config)
