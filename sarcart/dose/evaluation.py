"""Plan evaluation: conformity/homogeneity, dose-painting quality (QF, +-5 %, QVH), BED/EQD2.

Formulas:

* RTOG conformity index ``CI = V_RI / TV`` (reference isodose volume over target volume) and Paddick's
  ``CI = TV_RI^2 / (TV * V_RI)`` (Paddick, J Neurosurg 2000;93 Suppl 3:219, doi 10.3171/jns.2000.93.supplement_3.0219).
* ICRU 83 homogeneity index ``HI = (D2 - D98) / D50`` (ICRU Report 83, 2010; DOI not verified).
* Dose painting: ``Q = D_plan / D_presc`` per voxel; quality factor ``QF = mean |Q - 1|`` (0 is
  perfect; Vanderstraeten et al. 2006, UNVERIFIED in FACTS.md, DOI not verified) and its percent score
  ``100 (1 - QF)`` as implemented in cbri92/DosePainting; the fraction of voxels with
  ``|Q - 1| <= 5 %``; the quality-volume histogram (fraction of voxels with ``Q >= q``).
* ``BED = n d (1 + d / (alpha/beta))`` and ``EQD2 = BED / (1 + 2 / (alpha/beta))`` voxel-wise, with
  ``d = D / n`` (Fowler 1989, doi 10.1259/0007-1285-62-740-679).
"""

from __future__ import annotations

import numpy as np

from sarcart.errors import InvalidImageError

#: alpha/beta (Gy) per structure, FACTS.md section 6 (sarcoma 4 Gy; bowel 3; kidney 2 - late effects)
ALPHA_BETA_GY: dict[str, float] = {"GTV": 4.0, "CTV": 4.0, "PTV": 4.0, "HYPOXIA": 4.0, "BOWEL": 3.0,
                                   "KIDNEY_L": 2.0, "KIDNEY_R": 2.0, "KIDNEYS": 2.0}


def bed(dose_gy: np.ndarray | float, fractions: int, alpha_beta_gy: float) -> np.ndarray:
    """Biologically effective dose (Gy) of a total physical dose given in ``fractions`` equal fractions."""
    if fractions < 1 or alpha_beta_gy <= 0:
        raise InvalidImageError(f"need fractions >= 1 and alpha/beta > 0, got {fractions}, {alpha_beta_gy}")
    d = np.asarray(dose_gy, dtype=float)
    return d * (1.0 + d / fractions / alpha_beta_gy)


def eqd2(dose_gy: np.ndarray | float, fractions: int, alpha_beta_gy: float) -> np.ndarray:
    """Equivalent dose in 2 Gy fractions (Gy)."""
    return bed(dose_gy, fractions, alpha_beta_gy) / (1.0 + 2.0 / alpha_beta_gy)


def iso_bed_dose(dose_gy: float, fractions_from: int, fractions_to: int, alpha_beta_gy: float) -> float:
    """Total dose in ``fractions_to`` fractions with the same BED as ``dose_gy`` in ``fractions_from``."""
    b = float(bed(dose_gy, fractions_from, alpha_beta_gy))
    a = 1.0 / (fractions_to * alpha_beta_gy)
    return float((-1.0 + np.sqrt(1.0 + 4.0 * a * b)) / (2.0 * a))


def conformity(dose: np.ndarray, target: np.ndarray, reference_gy: float) -> dict[str, float]:
    """RTOG and Paddick conformity indices of the ``reference_gy`` isodose (boolean target mask)."""
    t = target.astype(bool)
    ri = dose >= reference_gy
    tv, vri, tv_ri = float(t.sum()), float(ri.sum()), float((ri & t).sum())
    if tv == 0:
        raise InvalidImageError("target mask is empty")
    return {"ci_rtog": vri / tv, "ci_paddick": (tv_ri ** 2) / (tv * vri) if vri else 0.0}


def homogeneity(dose_in_target: np.ndarray) -> float:
    """ICRU 83 HI = (D2 - D98) / D50 of the target voxel doses."""
    d = np.sort(np.asarray(dose_in_target, float))[::-1]
    if d.size == 0:
        raise InvalidImageError("no target voxels")
    pick = lambda p: d[min(int(np.ceil(p / 100.0 * d.size)) - 1, d.size - 1)]
    return float((pick(2) - pick(98)) / pick(50))


def painting_quality(dose: np.ndarray, prescription: np.ndarray, *, q_grid: np.ndarray | None = None
                     ) -> dict[str, object]:
    """QF, its percent score, the fraction within +-5 % and the QVH over the prescribed voxels.

    Args:
        dose / prescription: ``(n,)`` doses (Gy) of the voxels of the painted region.
        q_grid: ``Q`` values of the QVH (default 0.80 ... 1.20 in steps of 0.005).
    """
    p = np.asarray(prescription, float)
    if p.size == 0 or p.min() <= 0:
        raise InvalidImageError("prescription map must be positive on the painted voxels")
    q = np.asarray(dose, float) / p
    grid = np.arange(0.80, 1.2001, 0.005) if q_grid is None else q_grid
    qf = float(np.mean(np.abs(q - 1.0)))
    return {"qf": qf, "qf_score": 100.0 * (1.0 - qf), "within_5pct": float(np.mean(np.abs(q - 1.0) <= 0.05)),
            "q_mean": float(q.mean()), "qvh_q": grid.tolist(), "qvh_fraction": [float(np.mean(q >= g)) for g in grid]}
