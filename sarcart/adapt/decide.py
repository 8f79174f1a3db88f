"""Adapt-or-not: is the predicted plan (reference segments on today's anatomy) good enough?

The predicted plan fails — and the fraction is re-optimised, warm-started from the previous
fraction's plan — when any of these holds (thresholds in :class:`~sarcart.adapt.config.DecisionSettings`):

1. target coverage: D95 of the evaluation PTV (the PTV without the excluded organs' PRV, where the
   plan is asked to cover; the PTV when there is none) below ``min_d95_fraction`` x prescription;
2. a hard limit is violated that the reference plan met, or one the reference plan already missed is
   worse than the reference's value by more than ``constraint_tolerance`` (relative);
3. painting: the quality factor QF on today's prescription map exceeds the reference plan's QF by
   more than ``max_qf_increase`` (QF = mean |D/D_presc - 1|, Vanderstraeten et al. 2006,
   doi 10.1016/j.ijrobp.2006.07.1376, via :func:`sarcart.dose.evaluation.painting_quality`);
4. the painting target changed: the Dice of today's boost region with the reference's, carried onto
   today's anatomy by the registration, is below ``min_boost_dice``.

``force: always|never`` overrides the rules (the reasons are still reported).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sarcart.adapt.config import DecisionSettings


@dataclass
class Decision:
    """The decision, its reasons (empty when the predicted plan passes) and every check made."""

    adapt: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def summary(self) -> str:
        head = "re-optimise" if self.adapt else "deliver the predicted plan"
        return head + (": " + "; ".join(self.reasons) if self.reasons else " (every check passed)")


def coverage_structure(metrics: Mapping[str, Any], target: str = "PTV") -> str:
    """The evaluation PTV when the plan has one, else the PTV."""
    return f"{target}_EVAL" if f"{target}_EVAL" in metrics["structures"] else target


def decide(predicted: Mapping[str, Any], reference: Mapping[str, Any], *, boost_dice: float | None = None,
           settings: DecisionSettings | None = None) -> Decision:
    """Apply the rules of the module docstring.

    Args:
        predicted / reference: :func:`sarcart.dose.outputs.plan_metrics` of the predicted and reference plans.
        boost_dice: Dice of today's boost region with the propagated reference one (None: no painting).
    """
    s = settings or DecisionSettings()
    checks: list[dict[str, Any]] = []
    rx = float(predicted["prescription"]["dose_gy"])
    cov = coverage_structure(predicted)
    d95 = float(predicted["structures"][cov]["D95_gy"])
    checks.append({"check": f"{cov} D95", "value": d95, "limit": s.min_d95_fraction * rx,
                   "passed": d95 >= s.min_d95_fraction * rx - 1e-9})
    ref_cons = {(c["structure"], c["kind"], c["dose_gy"]): c for c in reference.get("constraints", [])}
    for c in predicted.get("constraints", []):
        ref = ref_cons.get((c["structure"], c["kind"], c["dose_gy"]))
        ok = bool(c["met"])
        if not ok and ref is not None and not ref["met"]:
            ok = float(c["value"]) <= float(ref["value"]) * (1.0 + s.constraint_tolerance) + 1e-9
        checks.append({"check": f"{c['structure']} {c['kind']} {c['dose_gy']:g} Gy", "value": float(c["value"]),
                       "limit": float(c["limit"]), "passed": ok,
                       "reference_value": None if ref is None else float(ref["value"])})
    if "painting" in predicted and "painting" in reference:
        qf, qf_ref = float(predicted["painting"]["qf"]), float(reference["painting"]["qf"])
        checks.append({"check": "painting QF", "value": qf, "limit": qf_ref + s.max_qf_increase,
                       "passed": qf <= qf_ref + s.max_qf_increase, "reference_value": qf_ref})
    if boost_dice is not None:
        checks.append({"check": "boost region Dice vs reference", "value": boost_dice, "limit": s.min_boost_dice,
                       "passed": boost_dice >= s.min_boost_dice})
    reasons = [f"{c['check']} {c['value']:.3g} (limit {c['limit']:.3g})" for c in checks if not c["passed"]]
    adapt = bool(reasons) if s.force == "auto" else s.force == "always"
    if s.force != "auto":
        reasons = [f"forced: {s.force}", *reasons]
    return Decision(adapt, reasons, checks)
