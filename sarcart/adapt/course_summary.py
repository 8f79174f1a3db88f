"""Course level: dose accumulation over the delivered fractions on the reference anatomy, and the course report.

Each delivered fraction's dose (``fxNN/delivered/dose.nii.gz``, Gy per fraction) is pulled back onto the
reference plan's dose grid through the inverse of the fraction's estimated deformation
(``deformation_estimated.nii.gz``, today -> reference, from the segmentation's registration; inverted
with :func:`sarcart.adapt.accumulate.invert_field`), then summed in physical dose and, fraction by
fraction, in BED and EQD2 with voxel-wise alpha/beta (:mod:`sarcart.adapt.accumulate`, Fowler 1989,
doi 10.1259/0007-1285-62-740-679). The planned dose for comparison is the reference plan's dose scaled
to the number of fractions delivered. What the painted prescription still needs per remaining fraction
(:func:`~sarcart.adapt.accumulate.remaining_prescription`) is saved as ``remaining_prescription.nii.gz``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

import sarcart
from sarcart.adapt.accumulate import Accumulation, alpha_beta_map, dose_on_reference, invert_field
from sarcart.adapt.config import AdaptConfig
from sarcart.io.course import Course
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)

STRUCTURES = ("PTV", "GTV", "BOWEL", "KIDNEYS", "KIDNEY_L", "KIDNEY_R")


def field_on(field_: Volume, geometry) -> Volume:
    """A displacement field resampled (linear, 0 outside) onto another grid."""
    img = sitk.Resample(sitk.Cast(field_.to_sitk(), sitk.sitkVectorFloat64), geometry.reference_image(),
                        sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    return Volume.from_sitk(sitk.Cast(img, sitk.sitkVectorFloat32))


DOSE_ON_REFERENCE = "dose_on_reference.nii.gz"


def fraction_dose_on_reference(course: Course, index: int, geometry) -> Volume:
    """Fraction ``index``'s delivered dose (Gy) on the reference dose grid: ``delivered/dose_on_reference.nii.gz``
    when it is there on that grid, else pulled back through the inverted estimated deformation (and cached)."""
    from sarcart.io.nifti import read_nifti, write_nifti

    d = course.fraction(index).delivered_dir
    cached = d / DOSE_ON_REFERENCE
    if cached.is_file():
        vol = read_nifti(cached)
        if vol.geometry.is_close(geometry):
            return vol
    dose = read_nifti(d / "dose.nii.gz")
    to_ref = read_nifti(d / "deformation_estimated.nii.gz")  # fraction -> reference
    out = dose_on_reference(dose, field_on(invert_field(to_ref), geometry))  # reference -> fraction
    write_nifti(out, cached)
    return out


def delivered_fractions(course: Course) -> list[int]:
    """Fractions (>= 1) with a delivered dose, in order."""
    return [f.index for f in course.fractions if f.index >= 1 and (f.delivered_dir / "dose.nii.gz").is_file()]


def accumulate_course(course: Course, reference_masks: dict[str, Volume]) -> dict[str, Any]:
    """Accumulated physical / BED / EQD2 dose (Gy) on the reference dose grid (module docstring).

    Args:
        reference_masks: reference structures on the reference plan's dose grid (alpha/beta map, DVHs).
    """
    from sarcart.io.nifti import read_nifti

    planned_course = read_nifti(course.reference.plan_dir / "dose.nii.gz")
    geom = planned_course.geometry
    acc = Accumulation(alpha_beta_map(reference_masks))
    done = delivered_fractions(course)
    for k in done:
        acc.add(fraction_dose_on_reference(course, k, geom))
    totals = acc.totals()
    n = course.config.prescription.fractions
    planned = planned_course.array * (len(done) / n)
    return {"fractions": done, "geometry": geom, "planned": planned_course.with_array(planned.astype(np.float32)),
            **{k: planned_course.with_array(v) for k, v in totals.items()}}


def _dvh_numbers(dose: Volume, masks: dict[str, Volume]) -> dict[str, dict[str, float]]:
    from sarcart.dose.dvh import DVH

    return {n: {k: v for k, v in DVH.from_mask(n, dose, masks[n]).summary().items()}
            for n in STRUCTURES if n in masks and masks[n].array.any()}


def reference_masks_on_dose_grid(course: Course, geometry) -> dict[str, Volume]:
    """Reference structures (with targets and ``KIDNEYS``) resampled onto the reference dose grid."""
    from sarcart.adapt.course_init import read_fraction_image, read_structures, with_targets
    from sarcart.dose.volumes import resample

    image, series = read_fraction_image(course.reference)
    masks = with_targets(read_structures(course.reference, series if series is not None else image.geometry), course)
    kid = [masks[k].array for k in ("KIDNEY_L", "KIDNEY_R") if k in masks]
    if kid:
        masks["KIDNEYS"] = masks["GTV"].with_array(np.logical_or.reduce(kid))
    return {n: resample(m, geometry, is_mask=True) for n, m in masks.items()}


def course_summary(course: Course) -> dict[str, Any]:
    """Accumulation, planned vs accumulated DVH numbers, painting QF and the per-fraction table."""
    from sarcart.dose.evaluation import painting_quality
    from sarcart.io.nifti import read_nifti

    geom = read_nifti(course.reference.plan_dir / "dose.nii.gz").geometry
    masks = reference_masks_on_dose_grid(course, geom)
    acc = accumulate_course(course, masks)
    out: dict[str, Any] = {"note": sarcart.NOT_FOR_CLINICAL_USE, "fractions_delivered": acc["fractions"],
                           "planned": _dvh_numbers(acc["planned"], masks),
                           "accumulated_physical": _dvh_numbers(acc["physical_gy"], masks),
                           "accumulated_eqd2": _dvh_numbers(acc["eqd2_gy"], masks)}
    pfile = course.reference.plan_dir / "painting.nii.gz"
    if pfile.is_file() and acc["fractions"]:
        from sarcart.dose.volumes import resample

        pmap = resample(read_nifti(pfile), geom, is_mask=False).array
        scale = len(acc["fractions"]) / course.config.prescription.fractions
        sel = masks["PTV"].array & (pmap > 0)
        for key in ("planned", "physical_gy"):
            q = painting_quality(acc[key].array[sel], scale * pmap[sel])
            out[f"painting_qf_{key}"] = q["qf"]
    rows = []
    for k in acc["fractions"]:
        f = course.fraction(k).plan_dir / "fraction_metrics.json"
        if f.is_file():
            rows.append(fraction_row(json.loads(f.read_text())))
    out["per_fraction"] = rows
    out["_acc"], out["_masks"] = acc, masks
    return out


def fraction_row(m: dict[str, Any]) -> dict[str, Any]:
    """One line of the course table from a fraction's metrics.json."""
    h = m["headline"]["delivered"]
    truth = m.get("truth", {})
    dice = truth.get("dice", {})
    reg = truth.get("registration_error_mm", {}).get("body", {})
    true_dose = truth.get("dose_on_true_contours", {})
    kid_true = [true_dose[k]["mean_gy"] for k in ("KIDNEY_L", "KIDNEY_R") if k in true_dose]
    return {"fx": m["fraction"], "adapted": m["adapted"], "QA flags": len(m["segmentation"]["flags"]),
            "Dice GTV": dice.get("GTV", float("nan")), "Dice bowel": dice.get("BOWEL", float("nan")),
            "PTV D95 Gy": h["PTV_D95_gy"], "bowel D0.5cc Gy": h["BOWEL_D0.5cc_gy"],
            "bowel D0.5cc (true) Gy": true_dose.get("BOWEL", {}).get("D0.5cc_gy", float("nan")),
            "kidney mean Gy": h["KIDNEYS_mean_gy"],
            "kidney mean (true) Gy": float(np.mean(kid_true)) if kid_true else float("nan"),
            "QF": h["painting_QF"],
            "risk AUROC (true hypoxia)": truth.get("painting_vs_true_hypoxia", {}).get("risk_auroc", float("nan")),
            "reg err mean mm": reg.get("mean_mm", float("nan")),
            "reg err p95 mm": reg.get("p95_mm", float("nan")), "time s": m["timings_s"].get("total", float("nan")),
            **{f"t {k}": v for k, v in m["timings_s"].items() if k != "total"}}


def course_report(course: Course, out_dir: Path, *, config: AdaptConfig | None = None) -> dict[str, Any]:
    """Write ``course_summary.json``, the accumulated doses and ``report.html`` into ``out_dir``."""
    from sarcart.adapt.accumulate import remaining_prescription
    from sarcart.adapt.pages import course_page
    from sarcart.io.nifti import read_nifti, write_nifti

    out_dir.mkdir(parents=True, exist_ok=True)
    s = course_summary(course)
    acc, masks = s.pop("_acc"), s.pop("_masks")
    for key in ("physical_gy", "eqd2_gy", "bed_gy", "planned"):
        write_nifti(acc[key], out_dir / f"accumulated_{key}.nii.gz" if key != "planned" else out_dir / "planned_gy.nii.gz")
    left = course.config.prescription.fractions - len(s["fractions_delivered"])
    pfile = course.reference.plan_dir / "painting.nii.gz"
    if left > 0 and pfile.is_file():
        from sarcart.dose.volumes import resample

        target = resample(read_nifti(pfile), acc["geometry"], is_mask=False).array
        need = remaining_prescription(target, acc["physical_gy"].array, left)
        write_nifti(acc["physical_gy"].with_array(need.astype(np.float32)), out_dir / "remaining_prescription.nii.gz")
    (out_dir / "course_summary.json").write_text(json.dumps(s, indent=1, default=float))
    s["report"] = str(course_page(course, out_dir, s, acc, masks))
    return s
