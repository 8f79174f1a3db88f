"""``sarcart course init``: the reference plan of a course, on the reference fraction ``fx00``.

Reads fx00's image (DICOM ``mr/`` or ``image.nii.gz``) and planning structures (``rtstruct.dcm``),
builds the targets (:mod:`sarcart.adapt.targets`), the painted prescription of the reference
(:mod:`sarcart.adapt.painting`; its habitat model becomes the course's reference) and plans it from
scratch (:func:`sarcart.dose.plan.plan_fraction`). Everything goes into ``fx00/plan/``: RTPLAN,
RTDOSE, dose.nii.gz, dvh.csv, metrics.json, plan_state.npz (warm start of fx01), delivery.json
(segments for the predicted plans), painting.nii.gz, habitats.json and the resolved configuration.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from sarcart.adapt.config import AdaptConfig, prescription_path
from sarcart.adapt.predicted import centroid_mm, save_delivery
from sarcart.adapt.targets import PRESETS, Margin, build_targets
from sarcart.errors import ConfigError, CourseLayoutError
from sarcart.io.course import Course, Fraction
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)

PLANNED = ("BODY", "GTV", "CTV", "PTV", "BOWEL", "KIDNEY_L", "KIDNEY_R", "BONE", "GAS", "NECROSIS")


def read_fraction_image(fx: Fraction):
    """``(image, series)``: the DICOM series in ``mr/`` when present (series is then returned), else the NIfTI."""
    from sarcart.io.dicom_series import read_dicom_series
    from sarcart.io.nifti import read_nifti

    if fx.mr_dir.is_dir():
        series = read_dicom_series(fx.mr_dir)
        return series.volume, series
    if fx.image.is_file():
        return read_nifti(fx.image), None
    raise CourseLayoutError(f"{fx.root}: neither mr/ nor image.nii.gz; copy the day's series into {fx.mr_dir}")


def read_structures(fx: Fraction, reference) -> dict[str, Volume]:
    """Approved structures of a fraction (fx00: its rtstruct.dcm) rasterised on ``reference`` (series or geometry)."""
    from sarcart.io.rtstruct import read_rtstruct

    path = fx.approved_rtstruct()
    if path is None:
        raise CourseLayoutError(f"{fx.root}: no approved structure set (rtstruct.dcm / approved/rtstruct.dcm)")
    masks = read_rtstruct(path, reference).masks
    return {n: m.with_array(m.array.astype(bool)) for n, m in masks.items() if m.array.any()}


def course_prescription(course: Course, config: AdaptConfig):
    """The prescription file of the course, checked against course.yaml, with the config's overrides."""
    from sarcart.dose.prescription import load_prescription

    p = load_prescription(prescription_path(config, course.config.site))
    rx = course.config.prescription
    if abs(p.dose_gy - rx.dose_gy) > 1e-6 or p.fractions != rx.fractions:
        raise ConfigError(f"course.yaml prescribes {rx.dose_gy:g} Gy in {rx.fractions} fractions but the prescription "
                          f"file {p.name} has {p.dose_gy:g} Gy in {p.fractions}; set `prescription:` in the adapt config")
    upd = {k: v for k, v in (("dose_grid_mm", config.dose_grid_mm), ("n_beams", config.n_beams)) if v is not None}
    if upd:
        p = p.model_copy(update={"settings": p.settings.model_copy(update=upd)})
    p = p.model_copy(update={"ptv_margin_mm": rx.ptv_margin_mm})
    return p


def applicable_prescription(presc, masks: dict[str, Volume]) -> tuple[Any, list[str]]:
    """Drop "at least X cc spared" limits that no plan can meet today (organ volume <= X cc), with a note.

    The retroperitoneal kidney limit (200 cc of both kidneys below 18.8 Gy) becomes "every voxel below"
    plus a negative allowance when the contoured kidneys total less than 200 cc (the phantom's kidneys
    total ~200 cc); an infeasible hard limit would make the optimiser sacrifice the target. The limit is
    left out of that fraction's planning and checks, and the note goes into the QA flags for review.
    """
    kid = [masks[k].array.astype(bool) for k in ("KIDNEY_L", "KIDNEY_R") if k in masks]
    volumes = {n: float(m.array.sum() * m.geometry.voxel_volume_cc) for n, m in masks.items()}
    if kid:
        volumes["KIDNEYS"] = float(np.logical_or.reduce(kid).sum() * next(iter(masks.values())).geometry.voxel_volume_cc)
    keep, notes = [], []
    for c in presc.constraints:
        vol = volumes.get(c.structure)
        if c.kind == "dvh_max" and c.spare_cc is not None and vol is not None and vol <= c.spare_cc:
            notes.append(f"{c.structure}: '{c.spare_cc:g} cc below {c.dose_gy:g} Gy' not applicable ({vol:.1f} cc "
                         "contoured); limit left out, review")
            continue
        keep.append(c)
    return (presc.model_copy(update={"constraints": keep}) if notes else presc), notes


def with_targets(masks: dict[str, Volume], course: Course) -> dict[str, Volume]:
    """Structures plus CTV (pre-operative intent) and PTV by the site's guideline margins (mm)."""
    preset = PRESETS[(course.config.intent, course.config.site)]
    if course.config.intent == "definitive":
        preset = type(preset)(ptv=Margin(course.config.prescription.ptv_margin_mm))
    tg = build_targets(masks, preset)
    return {**{n: m for n, m in masks.items() if n not in tg}, **tg}


def plan_masks(masks: dict[str, Volume]) -> dict[str, Volume]:
    """The structures the planner uses."""
    return {n: m for n, m in masks.items() if n in PLANNED and m.array.any()}


def init_course(course: Course, config: AdaptConfig, *, device: str = "cpu") -> dict[str, Any]:
    """Plan the reference fraction into ``fx00/plan`` and return a summary (timings, metrics)."""
    from sarcart.adapt.painting import painting_map
    from sarcart.dose.outputs import plan_metrics, write_plan_outputs
    from sarcart.dose.plan import plan_fraction
    from sarcart.io.dicom_write import PatientStudy
    from sarcart.io.nifti import write_nifti

    t: dict[str, float] = {}
    t0 = time.perf_counter()
    ref = course.reference
    image, series = read_fraction_image(ref)
    masks = with_targets(read_structures(ref, series if series is not None else image.geometry), course)
    presc, notes = applicable_prescription(course_prescription(course, config), masks)
    for n in notes:
        log.warning("reference plan: %s", n)
    t["read"] = time.perf_counter() - t0
    out = ref.plan_dir
    out.mkdir(parents=True, exist_ok=True)
    pmap = None
    if config.painting.enabled:
        t1 = time.perf_counter()
        pr = painting_map(image, masks, presc.dose_gy, settings=config.painting, device=device)
        pmap = pr.prescription
        write_nifti(pmap, out / "painting.nii.gz")
        write_nifti(pr.habitats, out / "habitats.nii.gz")
        (out / "habitats.json").write_text(pr.habitat_model.to_json())
        t["painting"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    result = plan_fraction(image, plan_masks(masks), presc, painting=pmap, device=device)
    t["plan"] = time.perf_counter() - t1
    patient = PatientStudy.from_dataset(series.header) if series is not None else None
    write_plan_outputs(result, out, patient=patient,
                       frame_of_reference_uid=series.frame_of_reference_uid if series is not None else "")
    save_delivery(result, out, target_centroid_mm=centroid_mm(masks[presc.target]))
    (out / "adapt_config.json").write_text(config.model_dump_json(indent=1))
    metrics = plan_metrics(result)
    t["total"] = time.perf_counter() - t0
    (out / "timings.json").write_text(json.dumps(t, indent=1))
    log.info("reference plan written to %s in %.1f s", out, t["total"])
    return {"plan_dir": str(out), "timings_s": t, "metrics": metrics,
            "ptv_cc": float(np.asarray(masks["PTV"].array).sum() * image.geometry.voxel_volume_cc)}
