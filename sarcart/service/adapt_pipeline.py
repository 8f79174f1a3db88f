"""The whole adaptive pipeline for a completed MR series whose patient has a course (``sarcart adapt``).

With ``courses`` configured, the service looks for the course of the series' PatientID (a folder under
``courses`` whose ``course.yaml`` names that patient). Found and set up (``sarcart course init``): the
series becomes the next undelivered fraction (or the fraction that already holds this very series, so a
resent series re-runs the same fraction), is copied into ``fxNN/mr/`` and runs through
:func:`sarcart.adapt.pipeline.adapt_fraction`; RTSTRUCT, RTPLAN and RTDOSE are sent. A patient without a
course gets contours only (:class:`~sarcart.service.pipelines.SegmentationPipeline`); a course that was
never set up fails the job with the command that fixes it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pydicom

from sarcart import tracking
from sarcart.errors import CourseLayoutError, SarcartError
from sarcart.service.pipelines import SegmentationPipeline
from sarcart.service.worker import PipelineResult

log = logging.getLogger(__name__)


class AdaptPipeline:
    """Route an MR series to ``sarcart adapt`` when its patient has a course, else contour it only."""

    def __init__(self, courses: Path, fallback: SegmentationPipeline, *, adapt_config: Path | None = None,
                 device: str = "cpu", store: str | None = None) -> None:
        self.courses = Path(courses)
        self.fallback = fallback
        self.adapt_config = adapt_config
        self.device = device
        self.store = store

    def find_course(self, patient_id: str) -> Path | None:
        """The course folder of ``patient_id`` under ``courses`` (None when the patient has none)."""
        from sarcart.io.course import load_course

        if not patient_id or not self.courses.is_dir():
            return None
        for yaml_file in sorted(self.courses.glob("*/course.yaml")):
            try:
                if load_course(yaml_file.parent).config.patient == patient_id:
                    return yaml_file.parent
            except SarcartError as exc:  # a broken course of another patient must not stop this one
                log.warning("skipping %s: %s", yaml_file.parent.name, exc)
        return None

    def run(self, job: dict[str, Any], series_dir: Path, out_dir: Path) -> PipelineResult:
        first = next(iter(sorted(series_dir.glob("*.dcm"))), None)
        header = pydicom.dcmread(first, stop_before_pixels=True) if first is not None else None
        root = self.find_course(str(header.get("PatientID", ""))) if header is not None else None
        if root is None or header is None or header.get("Modality") != "MR":
            return self.fallback.run(job, series_dir, out_dir)
        return self._adapt(root, str(header.SeriesInstanceUID), series_dir, out_dir)

    def _adapt(self, root: Path, series_uid: str, series_dir: Path, out_dir: Path) -> PipelineResult:
        from sarcart.adapt.config import load_adapt_config
        from sarcart.adapt.pipeline import adapt_fraction
        from sarcart.io.course import load_course

        course = load_course(root)
        if not (course.reference.plan_dir / "metrics.json").is_file():
            raise CourseLayoutError(f"the course of this patient ({root.name}) has no reference plan; run "
                                    f"`sarcart course init --patient-dir {root}` first")
        k = fraction_for(course, series_uid)
        fx = course.fraction(k)
        _install_series(series_dir, fx.mr_dir, series_uid)
        cfg = load_adapt_config(self.adapt_config)
        log.info("patient %s: series -> fraction %d of the course", tracking.hash_id(course.config.patient), k)
        res = adapt_fraction(course, k, out_dir / "adapt", config=cfg, device=self.device, store=self.store)
        files = [res.paths[n] for n in ("rtstruct", "rtplan", "rtdose") if n in res.paths]
        model = str(res.metrics.get("segmentation", {}).get("model", "")) or "propagation"
        summary = {"fraction": k, "adapted": bool(res.decision.adapt), "total_s": res.timings_s.get("total"),
                   "outputs": sorted(p.name for p in files)}
        return PipelineResult(files, model=f"sarcart adapt ({model})", summary=summary)


def fraction_for(course: Any, series_uid: str) -> int:
    """The fraction a series belongs to: the one holding it already, else the first one not yet planned."""
    n = course.config.prescription.fractions
    for k in range(1, n + 1):
        fx = course.fraction(k)
        if fx.mr_dir.is_dir() and _series_uid(fx.mr_dir) == series_uid:
            return k
    for k in range(1, n + 1):
        if not (course.fraction(k).plan_dir / "rtplan.dcm").is_file():
            return k
    raise CourseLayoutError(f"all {n} fractions of this course have a plan; a further series needs a new course "
                            "(or remove a fraction's plan/ folder to redo it)")


def _series_uid(folder: Path) -> str | None:
    first = next(iter(sorted(folder.glob("*.dcm"))), None)
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID) if first is not None else None


def _install_series(series_dir: Path, mr_dir: Path, series_uid: str) -> None:
    """Copy the received series into ``fxNN/mr/``; another series already there is moved aside, not lost."""
    if mr_dir.is_dir():
        if _series_uid(mr_dir) == series_uid:
            return
        aside = mr_dir.with_name(f"mr.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
        mr_dir.rename(aside)
        log.warning("%s held another series; moved to %s", mr_dir, aside.name)
    tmp = mr_dir.with_name("mr.incoming")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(series_dir, tmp)
    tmp.rename(mr_dir)
