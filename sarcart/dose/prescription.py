"""Prescription files (``configs/prescriptions/*.yaml``): dose, fractionation, objectives, hard limits, painting.

All doses in a prescription file are *course totals* (Gy over all fractions, as clinicians write
them); the planner optimises one fraction and divides by ``fractions`` internally. Unknown keys are
rejected. See docs/dose.md for the shipped files and how their limits were converted.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sarcart.config import load_model
from sarcart.dose.objectives import Constraint, Objective


class PaintingSpec(BaseModel):
    """A boost sub-volume painted to a higher dose, with a linear ramp to the base prescription."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    boost_structure: str = "HYPOXIA"
    boost_gy: float = Field(gt=0, description="course dose to the grown boost structure")
    grow_mm: float = Field(3.0, ge=0, description="margin added to the boost structure")
    ramp_mm: float = Field(5.0, ge=0, description="linear ramp from boost to base dose")
    weight: float = Field(50.0, ge=0)


class PlanSettings(BaseModel):
    """Engine and optimiser settings of a prescription."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dose_grid_mm: float = Field(3.0, gt=0)
    n_beams: int = Field(15, ge=1, le=72)
    first_gantry_deg: float = 0.0
    bixel_margin_mm: float = Field(5.0, ge=0)
    max_iter: int = Field(100, ge=1, description="L-BFGS iterations per constraint round")
    outer_rounds: int = Field(4, ge=1, description="constraint rounds (penalty x4 while a limit is violated)")
    rel_tol: float = Field(1e-4, gt=0, description="a round ends when the objective falls by less than this "
                           "(relative) over 5 iterations")
    abs_tol: float = Field(1e-3, ge=0, description="... or by less than this (objective units, Gy^2 per "
                           "fraction) over 5 iterations")
    check_every: int = Field(10, ge=0, description="while a limit is violated, raise its weight every this many "
                             "iterations instead of at the end of a round (0: at round ends only)")
    threads: int = Field(1, ge=0, description="torch CPU threads while planning (0: leave torch's setting); one "
                         "thread is fastest on a shared machine (docs/dose.md)")
    far_mm: float = Field(20.0, ge=0, description="organ voxels farther than this from the target are subsampled")
    far_stride: int = Field(3, ge=1, description="subsampling stride per axis beyond far_mm (1: every voxel)")
    aperture_iter: int = Field(60, ge=1, description="aperture optimisation iterations per round")
    final_checks: int = Field(1, ge=0, description="aperture runs when the final dose violates a limit on the "
                              "organ's full mask (far voxels are subsampled during optimisation)")
    aperture_corrections: int = Field(2, ge=0, description="aperture runs on the exact-dose-corrected model (until "
                                      "the exact dose meets the limits)")
    method: Literal["lbfgs", "adam"] = "lbfgs"
    smoothing: float = Field(0.02, ge=0, description="weight of the fluence smoothness penalty")
    levels: int = Field(7, ge=2, description="intensity levels for leaf sequencing")
    ring_inner_mm: float = Field(5.0, ge=0)
    ring_outer_mm: float = Field(20.0, gt=0)
    ring_max_fraction: float = Field(0.75, gt=0, description="ring max dose as a fraction of the prescription")
    body_max_fraction: float = Field(1.05, gt=0)
    calc_margin_mm: float = Field(100.0, gt=0, description="dose is computed in the BODY within the PTV box + this")
    second_check: bool = True


class PlanPrescription(BaseModel):
    """Contents of a prescription YAML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    site: str = ""
    description: str = ""
    dose_gy: float = Field(gt=0, le=100, description="course dose to the target")
    fractions: int = Field(ge=1, le=50)
    target: str = "PTV"
    gtv: str = "GTV"
    ptv_margin_mm: float = Field(3.0, ge=0, le=30)
    target_exclude: list[str] = Field(default_factory=list, description="organs whose PRV is cut from the target "
                                      "for the coverage objectives (evaluation PTV); their limits stay hard")
    target_exclude_margin_mm: float = Field(3.0, ge=0, le=30, description="PRV margin of target_exclude")
    objectives: list[Objective] = Field(default_factory=list)
    constraints: list[Constraint] = Field(default_factory=list)
    painting: PaintingSpec | None = None
    alpha_beta_gy: dict[str, float] = Field(default_factory=dict)
    settings: PlanSettings = Field(default_factory=PlanSettings)

    @property
    def dose_per_fraction_gy(self) -> float:
        return self.dose_gy / self.fractions

    def per_fraction(self) -> tuple[list[Objective], list[Constraint]]:
        """Objectives and constraints with every dose divided by the number of fractions."""
        f = 1.0 / self.fractions
        objs = [o.model_copy(update={"dose_gy": o.dose_gy * f}) for o in self.objectives]
        cons = [c.model_copy(update={"dose_gy": c.dose_gy * f}) for c in self.constraints]
        return objs, cons


def load_prescription(path: str | os.PathLike[str]) -> PlanPrescription:
    """Read and validate a prescription YAML file.

    Raises:
        ConfigError: missing file, invalid YAML, unknown keys, values out of range.
    """
    return load_model(PlanPrescription, path, what="prescription", hint="see configs/prescriptions/ for examples")
