"""Planning objectives and hard constraints on a dose vector (PyTorch, differentiable).

Every term is a one-sided quadratic penalty in Gy^2 averaged over the structure's voxels, so that
terms of different structures are comparable and zero when satisfied:

* ``min`` / ``max``: voxels below / above ``dose_gy``;
* ``mean``: the structure's mean above ``dose_gy``;
* ``dvh_max`` (``V(dose_gy) <= volume``) and ``dvh_min`` (``V(dose_gy) >= volume``): the voxels
  that must move to satisfy the DVH point are penalised (Wu & Mohan 2000, doi 10.1118/1.598932);
* ``geud_max``: generalised EUD ``(mean d^a)^(1/a)`` above ``dose_gy`` (Niemierko 1997, doi
  10.1118/1.598063);
* ``painting``: squared deviation from a voxel-wise prescription map (Bentzen 2005, doi
  10.1016/S1470-2045(05)01737-7), relative to the local prescription.

A :class:`Constraint` uses the same penalty forms, weighted by the structure's volume (Gy^2 cm^3, so
that a limit on a large organ is not diluted), and is enforced as a hard limit by the optimiser
(growing penalty weights until it holds), so that painting yields to organ-at-risk limits.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sarcart.errors import ConfigError

Kind = Literal["min", "max", "mean", "dvh_max", "dvh_min", "geud_max", "painting"]


class Objective(BaseModel):
    """One weighted planning objective on a structure."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    structure: str
    kind: Kind
    dose_gy: float = Field(0.0, ge=0, description="dose level (ignored for painting)")
    volume_percent: float | None = Field(None, ge=0, le=100, description="DVH objectives: volume in percent")
    volume_cc: float | None = Field(None, ge=0, description="DVH objectives: volume in cm^3")
    spare_cc: float | None = Field(None, ge=0, description="dvh_max: at least this volume stays below dose_gy")
    a: float = Field(8.0, description="gEUD exponent (> 1 for serial organs)")
    weight: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> Objective:
        given = sum(v is not None for v in (self.volume_cc, self.volume_percent, self.spare_cc))
        if self.kind in ("dvh_max", "dvh_min") and given != 1:
            raise ValueError(f"{self.kind} on {self.structure} needs exactly one of volume_cc, volume_percent, spare_cc")
        return self


class Constraint(BaseModel):
    """A hard organ-at-risk limit: ``max`` dose, ``mean`` dose or ``dvh_max`` (V(dose_gy) <= volume)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    structure: str
    kind: Literal["max", "mean", "dvh_max"]
    dose_gy: float = Field(gt=0)
    volume_cc: float | None = Field(None, ge=0)
    volume_percent: float | None = Field(None, ge=0, le=100)
    spare_cc: float | None = Field(None, ge=0, description="dvh_max: at least this volume stays below dose_gy")
    source: str = Field("", description="where the limit comes from (paper, protocol, conversion)")

    @model_validator(mode="after")
    def _check(self) -> Constraint:
        given = sum(v is not None for v in (self.volume_cc, self.volume_percent, self.spare_cc))
        if self.kind == "dvh_max" and given != 1:
            raise ValueError(f"dvh_max on {self.structure} needs exactly one of volume_cc, volume_percent, spare_cc")
        return self

    def as_objective(self, *, dose_scale: float = 1.0, weight: float = 1.0) -> Objective:
        """The penalty term of this constraint at ``dose_gy * dose_scale``."""
        return Objective(structure=self.structure, kind=self.kind, dose_gy=self.dose_gy * dose_scale,
                         volume_cc=self.volume_cc, volume_percent=self.volume_percent, spare_cc=self.spare_cc,
                         weight=weight)

    def margin(self, dose: torch.Tensor, voxel_cc: float, weights: torch.Tensor | None = None,
               outside: float = 0.0) -> float:
        """Slack of the constraint (>= 0 when met): Gy for max/mean, cm^3 for dvh_max.

        ``weights`` ``(n,)``: voxels each sample stands for (subsampled structures; default 1);
        ``outside``: voxels of the structure outside the calculation volume (dose 0 there).
        """
        if self.kind == "max":
            return self.dose_gy - float(dose.max())
        if self.kind == "mean":
            total = dose.sum() if weights is None else (dose * weights).sum()
            n = (dose.numel() if weights is None else float(weights.sum())) + outside
            return self.dose_gy - float(total) / n
        n = (dose.numel() if weights is None else float(weights.sum())) + outside
        above = dose > self.dose_gy
        count = float(above.sum()) if weights is None else float(weights[above].sum())
        return _allowed_count(self, n, voxel_cc) * voxel_cc - count * voxel_cc


def _allowed_count(term: Objective | Constraint, n: float, voxel_cc: float) -> float:
    """Number of voxels allowed above (dvh_max) or required above (dvh_min) the level (``n`` voxels in all)."""
    if term.spare_cc is not None:  # whole voxels whose volume fits in (organ - spared) volume
        return max(math.floor(n - term.spare_cc / voxel_cc + 1e-6), 0)
    if term.volume_cc is not None:
        return int(term.volume_cc / voxel_cc)
    return int((term.volume_percent or 0.0) / 100.0 * n)


def penalty(term: Objective, dose: torch.Tensor, *, voxel_cc: float, target_map: torch.Tensor | None = None,
            weights: torch.Tensor | None = None, outside: float = 0.0) -> torch.Tensor:
    """Penalty (Gy^2, mean over voxels) of one term for the structure's voxel doses ``dose`` ``(n,)``.

    ``weights`` ``(n,)``: the number of voxels each sample stands for when a structure is subsampled
    far from the target (default: every voxel counts once); means, DVH volumes and gEUD are weighted.
    ``outside``: voxels of the structure outside the calculation volume, at dose 0: they count in the
    organ's volume (means, gEUD, ``spare_cc``/percent DVH limits) but not for ``min``/``dvh_min``/painting.
    """
    if dose.numel() == 0:
        return dose.new_zeros(())
    if term.kind in ("min", "dvh_min", "painting"):
        outside = 0.0
    n = (float(dose.numel()) if weights is None else float(weights.sum())) + outside

    def _wmean(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        return (x.sum() if w is None else (x * w).sum()) / n

    level = term.dose_gy
    if term.kind == "min":
        return _wmean(torch.relu(level - dose).pow(2), weights)
    if term.kind == "max":
        return _wmean(torch.relu(dose - level).pow(2), weights)
    if term.kind == "mean":
        return torch.relu(_wmean(dose, weights) - level).pow(2)
    if term.kind == "geud_max":
        geud = _wmean(dose.clamp_min(0).pow(term.a), weights).clamp_min(1e-30).pow(1.0 / term.a)
        return torch.relu(geud - level).pow(2)
    if term.kind == "painting":
        if target_map is None or target_map.shape != dose.shape:
            raise ConfigError(f"painting on {term.structure} needs a prescription map of {dose.numel()} voxels")
        return _wmean(((dose - target_map) / target_map.clamp_min(1e-6) * target_map.mean()).pow(2), weights)
    k = _allowed_count(term, n, voxel_cc)
    order = torch.argsort(dose, descending=True)
    ranked = dose[order]
    if weights is None:
        before = torch.arange(dose.numel(), device=dose.device, dtype=dose.dtype)
        wr = torch.ones_like(ranked)
    else:
        wr = weights[order]
        before = torch.cumsum(wr, 0) - wr  # voxels hotter than this sample
    if term.kind == "dvh_max":  # all but the k hottest voxels must be below the level
        return (wr * torch.relu(ranked - level).pow(2) * (before >= k - 0.5)).sum() / n
    # dvh_min: the k hottest voxels must reach the level
    return (wr * torch.relu(level - ranked).pow(2) * (before < k - 0.5)).sum() / n
