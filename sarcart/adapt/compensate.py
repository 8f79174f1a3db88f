"""Re-planning against what the painted prescription still needs (opt-in: ``painting.compensate``).

Before fraction k is planned, the doses delivered so far (fractions 1..k-1, each pulled back onto the
reference anatomy: :func:`sarcart.adapt.course_summary.fraction_dose_on_reference`) are summed and carried
onto today's anatomy through today's registration (D_today(x) = D_ref(x + u(x)), u = today -> reference).
Today's prescription map P (course dose, Gy) becomes the dose still needed, spread over the remaining
fractions (:func:`sarcart.adapt.accumulate.remaining_prescription`) and expressed again as a course-equivalent
map, per voxel of the painted region:

    P'(x) = n * clip((P(x) - D_today(x)) / (n - m), (1 - c) P(x) / n, (1 + c) P(x) / n)

with n fractions prescribed, m delivered and c = ``max_change`` (a bounded correction: registration error
must not turn into a hot or cold spot). With every delivered fraction exactly as planned P' = P.
Physical dose is compensated, not EQD2 (fraction doses are within a few percent of each other).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from sarcart.adapt.accumulate import remaining_prescription
from sarcart.io.course import Course
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)


def compensated_prescription(course: Course, index: int, prescription: Volume, displacement: Volume, *,
                             max_change: float = 0.15) -> tuple[Volume, dict[str, Any]]:
    """Today's course-equivalent prescription corrected for the dose delivered so far (module docstring).

    Args:
        course: the course (reference plan and delivered fractions on disk).
        index: today's fraction number.
        prescription: today's painted prescription (course dose, Gy; 0 outside the painted region).
        displacement: today -> reference displacement (mm) on today's image grid.
        max_change: bound of the per-voxel correction, relative to the uncorrected prescription.

    Returns:
        ``(map, info)``; the map is ``prescription`` itself when nothing has been delivered yet.
    """
    from sarcart.adapt.course_summary import delivered_fractions, fraction_dose_on_reference
    from sarcart.inference.propagation import warp
    from sarcart.io.nifti import read_nifti

    done = [k for k in delivered_fractions(course) if k < index]
    n = course.config.prescription.fractions
    if not done or len(done) >= n:
        return prescription, {"fractions_used": done, "applied": False}
    geom = read_nifti(course.reference.plan_dir / "dose.nii.gz").geometry
    delivered = np.sum([fraction_dose_on_reference(course, k, geom).array for k in done], axis=0)
    today = warp(Volume(delivered.astype(np.float32), geom), displacement).array
    p = prescription.array.astype(np.float64)
    need = remaining_prescription(p, today, n - len(done))
    need = np.clip(need, (1.0 - max_change) * p / n, (1.0 + max_change) * p / n)
    out = np.where(p > 0, need * n, 0.0).astype(np.float32)
    sel = p > 0
    info = {"fractions_used": done, "applied": True,
            "mean_relative_change": float(np.mean(out[sel] / p[sel] - 1.0)) if sel.any() else 0.0,
            "max_abs_relative_change": float(np.max(np.abs(out[sel] / p[sel] - 1.0))) if sel.any() else 0.0}
    log.info("compensation over fractions %s: mean change %+.1f %%", done, 100 * info["mean_relative_change"])
    return prescription.with_array(out), info
