"""Dose accumulation on the reference anatomy: physical dose, EQD2 and BED per voxel.

Each delivered fraction's dose is pulled back onto the reference (fx00) grid through the
deformation from the reference to that fraction (x_ref -> x_ref + u(x_ref)): D_ref(x) = D_k(x + u(x)).
Because fraction doses differ between voxels and fractions, biological sums are taken fraction by
fraction with the linear-quadratic model (Fowler, Br J Radiol 1989;62:679, doi 10.1259/0007-1285-62-740-679):

    BED  = sum_k d_k (1 + d_k / (alpha/beta))
    EQD2 = BED / (1 + 2 / (alpha/beta))  = sum_k d_k (d_k + alpha/beta) / (2 + alpha/beta)

with alpha/beta per voxel from the structure it belongs to (FACTS.md section 6: sarcoma 4 Gy,
bowel 3 Gy, kidney 2 Gy; 3 Gy elsewhere by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from sarcart.errors import ConfigError, GeometryMismatchError
from sarcart.inference.propagation import warp
from sarcart.io.geometry import Volume

#: alpha/beta (Gy) per canonical structure (FACTS.md section 6); later entries win where structures overlap
DEFAULT_ALPHA_BETA: dict[str, float] = {"BODY": 3.0, "BOWEL": 3.0, "KIDNEY_L": 2.0, "KIDNEY_R": 2.0,
                                        "PTV": 4.0, "CTV": 4.0, "GTV": 4.0}


def bed(doses_per_fraction_gy: np.ndarray, alpha_beta_gy: np.ndarray | float) -> np.ndarray:
    """Biologically effective dose (Gy) of a fraction-by-fraction dose stack ``(n_fractions, ...)``."""
    d = np.asarray(doses_per_fraction_gy, dtype=np.float64)
    ab = np.asarray(alpha_beta_gy, dtype=np.float64)
    if np.any(ab <= 0):
        raise ConfigError("alpha/beta must be positive (Gy)")
    return (d * (1.0 + d / ab)).sum(axis=0)


def eqd2(doses_per_fraction_gy: np.ndarray, alpha_beta_gy: np.ndarray | float) -> np.ndarray:
    """Equivalent dose in 2 Gy fractions (Gy) of a dose stack ``(n_fractions, ...)``."""
    ab = np.asarray(alpha_beta_gy, dtype=np.float64)
    return bed(doses_per_fraction_gy, ab) / (1.0 + 2.0 / ab)


def alpha_beta_map(structures: Mapping[str, Volume], table: Mapping[str, float] | None = None,
                   *, default_gy: float = 3.0) -> np.ndarray:
    """Voxel-wise alpha/beta (Gy) from structure masks; the order of ``table`` sets precedence."""
    table = table or DEFAULT_ALPHA_BETA
    shape = next(iter(structures.values())).geometry.shape if structures else None
    if shape is None:
        raise ConfigError("no structures given for the alpha/beta map")
    out = np.full(shape, default_gy, dtype=np.float32)
    for name, ab in table.items():
        if name in structures:
            out[structures[name].array.astype(bool)] = ab
    return out


def invert_field(field_: Volume, *, iterations: int = 30) -> Volume:
    """Inverse of a displacement field on the same grid (SimpleITK's iterative inversion)."""
    f = sitk.Cast(field_.to_sitk(), sitk.sitkVectorFloat64)
    inv = sitk.InvertDisplacementField(f, maximumNumberOfIterations=iterations, maxErrorToleranceThreshold=0.01,
                                       meanErrorToleranceThreshold=0.001, enforceBoundaryCondition=True)
    return Volume.from_sitk(sitk.Cast(inv, sitk.sitkVectorFloat32))


def dose_on_reference(dose: Volume, ref_to_fraction: Volume) -> Volume:
    """Pull a fraction's dose onto the reference grid: D_ref(x) = D(x + u(x)), linear interpolation."""
    return warp(dose, ref_to_fraction)


@dataclass
class Accumulation:
    """Running sum of delivered doses on the reference grid."""

    alpha_beta_gy: np.ndarray
    fractions: list[np.ndarray] = field(default_factory=list)

    def add(self, dose_on_ref: Volume | np.ndarray) -> None:
        arr = dose_on_ref.array if isinstance(dose_on_ref, Volume) else np.asarray(dose_on_ref)
        if arr.shape != self.alpha_beta_gy.shape:
            raise GeometryMismatchError(f"dose shape {arr.shape} differs from the reference grid "
                                        f"{self.alpha_beta_gy.shape}; map it onto the reference first")
        self.fractions.append(arr.astype(np.float32))

    def totals(self) -> dict[str, np.ndarray]:
        """Physical dose, BED and EQD2 (Gy) summed over the fractions added so far."""
        stack = np.stack(self.fractions) if self.fractions else np.zeros((0, *self.alpha_beta_gy.shape), np.float32)
        return {"physical_gy": stack.sum(axis=0), "bed_gy": bed(stack, self.alpha_beta_gy).astype(np.float32),
                "eqd2_gy": eqd2(stack, self.alpha_beta_gy).astype(np.float32)}


def remaining_prescription(target_total_gy: np.ndarray, delivered_gy: np.ndarray,
                           fractions_left: int) -> np.ndarray:
    """Per-fraction physical dose still needed (>= 0) to reach a total, spread over the remaining fractions."""
    if fractions_left < 1:
        raise ConfigError(f"fractions_left must be >= 1, got {fractions_left}")
    return np.clip(np.asarray(target_total_gy) - np.asarray(delivered_gy), 0.0, None) / fractions_left


def dose_volume_summary(doses: Sequence[float]) -> dict[str, float]:
    """Mean and range of a list of per-fraction values (for the course report)."""
    a = np.asarray(doses, dtype=float)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())} if a.size else {}
