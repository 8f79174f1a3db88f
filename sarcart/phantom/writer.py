"""Write synthetic patients in the course layout (see ``docs/phantom.md`` and ``sarcart/io/course.py``).

Per fraction ``fxNN/``: ``mr/`` (DICOM MR series), ``image.nii.gz``, ``labels.nii.gz`` + ``labels.json``,
``hypoxia.nii.gz``, ``rtstruct.dcm``, ``truth.json`` and, for fx >= 1, ``deformation_to_ref.nii.gz``.
The reference anatomy is built once per patient in this process; fractions are rendered and written
by ``PhantomConfig.workers`` processes forked after it (they inherit the anatomy without copying it).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from sarcart.io.course import CourseConfig, Prescription, write_course
from sarcart.io.dicom_series import DicomSeries
from sarcart.io.dicom_write import MrAcquisition, PatientStudy, make_uid, write_dicom_series
from sarcart.io.geometry import Volume
from sarcart.io.labels import write_labels
from sarcart.io.nifti import write_mask, write_nifti
from sarcart.io.rtstruct_write import write_rtstruct
from sarcart.phantom import tissues as T
from sarcart.phantom.anatomy import Anatomy
from sarcart.phantom.config import BODY_PART, PRESCRIPTION_GY, TRIAL_FRACTIONS, CohortSpec, PhantomConfig
from sarcart.phantom.generate import FractionData, build_anatomy, make_fraction
from sarcart.phantom.patients import PatientParams

log = logging.getLogger(__name__)
_STUDY_DAY0 = 20260105


def uid_seed(spec_seed: int, patient: str, index: int) -> str:
    """Seed string of every UID of one fraction (deterministic cohorts)."""
    return f"sarcart-synth|{spec_seed}|{patient}|fx{index:02d}"


def patient_study(patient: PatientParams, index: int, seed_text: str) -> PatientStudy:
    """Synthetic DICOM identity of one fraction (one study per fraction)."""
    return PatientStudy(
        patient_name=f"SYNTHETIC^{patient.name.replace('-', '')}",
        patient_id=patient.name,
        patient_birth_date=f"{2026 - patient.age:04d}0101",
        patient_sex=patient.sex,
        study_instance_uid=make_uid(seed_text, "study"),
        study_id=f"fx{index:02d}",
        study_date=str(_STUDY_DAY0 + index),
        study_time="080000",
        study_description=f"sarcart synthetic TRUFI fx{index:02d}",
    )


def roi_masks(fd: FractionData) -> dict[str, np.ndarray]:
    """Non-empty ground-truth ROIs in :data:`tissues.RTSTRUCT_ROIS` order."""
    lab = fd.labels.array
    out: dict[str, np.ndarray] = {}
    for name in T.RTSTRUCT_ROIS:
        mask = fd.hypoxia.array if name == "HYPOXIA" else np.isin(lab, T.STRUCTURES[name])
        if mask.any():
            out[name] = mask
    return out


def write_fraction(fd: FractionData, folder: str | os.PathLike[str], patient: PatientParams, *,
                   config: PhantomConfig, seed_text: str, timings: dict[str, float] | None = None) -> Path:
    """Write one fraction folder; returns it. ``timings`` accumulates seconds per stage."""
    clock = _Clock(timings)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    acq = MrAcquisition(repetition_time_ms=config.tr_ms, echo_time_ms=config.te_ms, flip_angle_deg=config.flip_deg)
    laterality = patient.side if patient.site != "retroperitoneum" else None
    paths = write_dicom_series(
        fd.image, out / "mr", patient=patient_study(patient, fd.index, seed_text),
        series_instance_uid=make_uid(seed_text, "series"), frame_of_reference_uid=make_uid(seed_text, "for"),
        series_description=f"TRUFI 3D synthetic fx{fd.index:02d}", acquisition=acq, uid_seed=seed_text,
        body_part=BODY_PART[patient.site], laterality=laterality,
    )
    clock.lap("dicom")
    write_nifti(fd.image, out / "image.nii.gz")
    write_labels(fd.labels, T.LABEL_SPEC, out / "labels.nii.gz")
    write_mask(fd.hypoxia, out / "hypoxia.nii.gz")
    if fd.deformation is not None:
        write_nifti(fd.deformation, out / "deformation_to_ref.nii.gz")
    clock.lap("nifti")
    series = _written_series(paths, fd.image)
    write_rtstruct(roi_masks(fd), series, out / "rtstruct.dcm", label="GROUND_TRUTH",
                   description=f"synthetic ground truth fx{fd.index:02d}", uid_seed=seed_text)
    clock.lap("rtstruct")
    (out / "truth.json").write_text(json.dumps(_jsonable(fd.truth), indent=1))
    return out


def _written_series(paths: list[Path], image: Volume) -> DicomSeries:
    """The series just written, from its slice headers (no pixel data is read back)."""
    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    first = heads[0]
    return DicomSeries(
        volume=image, series_instance_uid=str(first.SeriesInstanceUID),
        study_instance_uid=str(first.StudyInstanceUID), frame_of_reference_uid=str(first.FrameOfReferenceUID),
        sop_class_uid=str(first.SOPClassUID), sop_instance_uids=[str(h.SOPInstanceUID) for h in heads],
        header=first, files=list(paths),
    )


class _Clock:
    """Adds wall and CPU seconds since the last lap to ``timings[stage]`` and ``timings[stage + ":cpu"]``."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.t, self.c = time.perf_counter(), time.process_time()

    def lap(self, stage: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self.timings is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.t
            self.timings[stage + ":cpu"] = self.timings.get(stage + ":cpu", 0.0) + cpu - self.c
        self.t, self.c = now, cpu


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


# --------------------------------------------------------------------------- per-patient driver
_WORK: dict[str, Any] = {}


def _init_worker() -> None:
    """In a forked worker, log through a plain stderr handler: the parent's rich console (and its
    refresh thread's lock) must not be used after fork."""
    root = logging.getLogger()
    level = root.level
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(logging.StreamHandler())
    root.setLevel(level)


def _fraction_job(index: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Worker: render and write fraction ``index`` of the patient set up in ``_WORK``."""
    w = _WORK
    timings: dict[str, float] = {}
    clock = _Clock(timings)
    fd = make_fraction(w["anatomy"], w["config"], w["patient"], index=index, state=w["state"])
    clock.lap("warp+render")
    write_fraction(fd, w["root"] / f"fx{index:02d}", w["patient"], config=w["config"],
                   seed_text=uid_seed(w["spec_seed"], w["patient"].name, index), timings=timings)
    return fd.truth, timings


def write_patient(spec: CohortSpec, patient: PatientParams, out_dir: str | os.PathLike[str], *,
                  on_fraction: Callable[[int], None] | None = None,
                  timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Build, render and write one patient (course.yaml + fx00..fxF); returns its cohort.csv row.

    Args:
        on_fraction: called with each fraction index when it is written (progress bars).
        timings: accumulates seconds per stage (``anatomy`` here; worker stages summed over fractions).
    """
    config = spec.phantom()
    root = Path(out_dir) / patient.name
    clock = _Clock(timings)
    anatomy = build_anatomy(config, patient, real_root=spec.from_real)
    state = anatomy.packed()
    clock.lap("anatomy")
    write_course(root, CourseConfig(
        patient=patient.name, site=patient.site, synthetic=True,  # type: ignore[arg-type]
        prescription=Prescription(dose_gy=PRESCRIPTION_GY[patient.site],
                                  fractions=max(TRIAL_FRACTIONS, spec.fractions), ptv_margin_mm=3.0),
        notes="sarcart synthetic TRUFI patient (phantom ground truth); research only, not for clinical use",
    ))
    _WORK.update(anatomy=anatomy, config=config, patient=patient, state=state, root=root, spec_seed=spec.seed)
    truths: dict[int, dict[str, Any]] = {}

    def done(i: int, result: tuple[dict[str, Any], dict[str, float]]) -> None:
        truths[i] = result[0]
        if timings is not None:
            for k, v in result[1].items():
                timings[k] = timings.get(k, 0.0) + v
        if on_fraction:
            on_fraction(i)

    indices = list(range(spec.fractions + 1))
    try:
        if config.workers <= 1:
            for i in indices:
                done(i, _fraction_job(i))
        else:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=min(config.workers, len(indices)), mp_context=ctx,
                                     initializer=_init_worker) as pool:
                futures = {pool.submit(_fraction_job, i): i for i in indices}
                for fut in as_completed(futures):
                    done(futures[fut], fut.result())
    finally:
        _WORK.clear()
    return cohort_row(patient, anatomy, truths, spec=spec)


def cohort_row(patient: PatientParams, anatomy: Anatomy, truths: dict[int, dict[str, Any]], *, spec: CohortSpec
               ) -> dict[str, Any]:
    """One row of cohort.csv: covariates plus realised fx00 volumes and fractions."""
    ref = truths[0]["volumes_cc"]
    gtv = ref["GTV"]
    viable = gtv - ref["NECROSIS"]
    last = truths[max(truths)]["volumes_cc"]["GTV"]
    row = patient.covariates()
    row.update({
        "patient": patient.name,
        "volume_cc": row.pop("volume_cc"),
        "tumour_cc": round(gtv, 3),
        "hypoxic_cc": round(ref["HYPOXIA"], 3),
        "hypoxic_fraction_realised": round(ref["HYPOXIA"] / viable, 5) if viable > 0 else 0.0,
        "necrotic_fraction_realised": round(ref["NECROSIS"] / gtv, 5) if gtv > 0 else 0.0,
        "edema_cc": round(ref["EDEMA"], 3),
        "tumour_cc_last_fraction": round(last, 3),
        "fractions": spec.fractions,
        "snr": spec.snr,
        "hypoxia_cnr": spec.hypoxia_cnr,
        "laterality": patient.side if patient.site != "retroperitoneum" else "",
        "isocentre_body_mm": " ".join(f"{v:g}" for v in anatomy.info.get("isocentre_body_mm", [])),
    })
    return row
