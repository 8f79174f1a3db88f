"""What the service does with a completed series.

* MR series → :class:`SegmentationPipeline`: contours, QA flags, RTSTRUCT (sent to the destinations).
* RTSTRUCT → :class:`ImportPipeline`: an edited structure set from the planning system becomes the
  approved set of the job that produced contours for the series it references.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import pydicom

import sarcart
from sarcart.errors import SarcartError
from sarcart.io.dicom_series import DicomSeries, read_dicom_series
from sarcart.io.geometry import Volume
from sarcart.io.nifti import write_mask, write_nifti
from sarcart.io.rtstruct_write import RoiStyle, write_rtstruct
from sarcart.io.structures import STYLE
from sarcart.service.db import ServiceDB
from sarcart.service.review import approve_rtstruct_upload
from sarcart.service.worker import PipelineResult

log = logging.getLogger(__name__)

#: predictor signature: series -> (masks by canonical name, QA report, model name+version)
Segmenter = Callable[[DicomSeries], tuple[dict[str, Volume], dict[str, Any], str]]


def qa_style(name: str, qa: dict[str, Any], model: str) -> RoiStyle:
    """ROI style carrying the QA flags into the RTSTRUCT (ROI description / observation)."""
    color, kind = STYLE.get(name, ((255, 255, 0), "ORGAN"))
    flags = qa.get("flags", [])
    text = ("REVIEW: " + ", ".join(flags)) if flags else "no QA flag"
    return RoiStyle(color=color, interpreted_type=kind, algorithm="AUTOMATIC", description=text[:64],
                    observation=f"{text}; model {model}; {json.dumps(qa, default=str)[:900]}")


class SegmentationPipeline:
    """Read the series, segment, write image/masks/qa.json/RTSTRUCT into the job folder."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    def run(self, job: dict[str, Any], series_dir: Path, out_dir: Path) -> PipelineResult:
        series = read_dicom_series(series_dir)  # missing slices, mixed series ... -> clear job error
        if series.modality != "MR":
            raise SarcartError(f"series modality is {series.modality!r}; the service contours MR series only")
        masks, qa, model = self.segmenter(series)
        masks = {n: m for n, m in masks.items() if m.array.any()}
        if not masks:
            raise SarcartError("the model found no structure in this series; check the input (QA: empty output)")
        write_nifti(series.volume, out_dir / "image.nii.gz")
        for name, m in masks.items():
            write_mask(m, out_dir / "masks" / f"{name}.nii.gz")
        qa = {**qa, "model": model, "notice": sarcart.NOT_FOR_CLINICAL_USE}
        (out_dir / "qa.json").write_text(json.dumps(qa, indent=1, default=str))
        per = qa.get("structures", {})
        # each ROI names the model that drew it (a kept patient model may draw only some structures)
        styles = {n: qa_style(n, per.get(n, {}), per.get(n, {}).get("model", model)) for n in masks}
        rs = write_rtstruct(masks, series, out_dir / "rtstruct.dcm", label="sarcart auto",
                            description=f"auto-contours by {model}", styles=styles)
        flagged = sorted(n for n in masks if per.get(n, {}).get("flags"))
        return PipelineResult([rs], model=model, summary={"structures": sorted(masks), "flagged": flagged})


class ImportPipeline:
    """An RTSTRUCT sent to the service becomes the approved set of the job of the series it references."""

    def __init__(self, db: ServiceDB) -> None:
        self.db = db

    def run(self, job: dict[str, Any], series_dir: Path, out_dir: Path) -> PipelineResult:
        files = sorted(series_dir.glob("*.dcm"))
        if len(files) != 1:
            raise SarcartError(f"expected one RTSTRUCT instance in its series, found {len(files)}")
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        refs = {str(s.SeriesInstanceUID) for f in ds.get("ReferencedFrameOfReferenceSequence", [])
                for st in f.get("RTReferencedStudySequence", []) for s in st.get("RTReferencedSeriesSequence", [])}
        rows = [r for uid in refs for r in self.db.query(
            "SELECT * FROM jobs WHERE series_uid=? AND kind='segment' AND state='done' ORDER BY id DESC", (uid,))]
        if not rows:
            raise SarcartError("the RTSTRUCT references no series this service has contoured "
                               f"(referenced series: {sorted(refs) or 'none'}); send it after the MR series")
        target = rows[0]
        series = self.db.series(job["series_uid"]) or {}
        names = approve_rtstruct_upload(target, self.db, files[0].read_bytes(),
                                        actor=f"dicom:{series.get('calling_aet', '?')}")
        return PipelineResult([], model=target.get("model") or "", summary={"approved_job": target["id"],
                                                                           "approved_structures": names})


class DispatchPipeline:
    """Routes a job to the pipeline of its kind."""

    def __init__(self, segment: SegmentationPipeline, importer: ImportPipeline) -> None:
        self.by_kind = {"segment": segment, "import_rtstruct": importer}

    def run(self, job: dict[str, Any], series_dir: Path, out_dir: Path) -> PipelineResult:
        pipe = self.by_kind.get(job["kind"])
        if pipe is None:
            raise SarcartError(f"unknown job kind {job['kind']!r}")
        return pipe.run(job, series_dir, out_dir)
