"""The service runs the whole adaptive pipeline for a patient with a course (issue 8, item 6).

dcmtk storescu sends the day's series of a synthetic patient whose course was set up (`course init`);
dcmtk storescp receives RTSTRUCT, RTPLAN and RTDOSE. Checked another way: the RTDOSE received equals the
delivered dose the pipeline wrote as NIfTI (to the RTDOSE's quantisation step), every object passes
dciodvfy, and a patient without a course gets contours only.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from helpers import require_tool, synth_patients
from svc_support import (
    free_port,
    make_series,
    received_datasets,
    start_storescp,
    threshold_segmenter,
    wait_for,
)

from sarcart.service.config import ServiceConfig
from sarcart.service.server import Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    from sarcart.adapt.config import AdaptConfig, PaintingSettings, SegmentSettings
    from sarcart.adapt.course_init import init_course
    from sarcart.io.course import load_course

    root = tmp_path_factory.mktemp("courses")
    synth_patients(root / "cohort")
    c = load_course(next((root / "cohort").glob("*/course.yaml")).parent, strict=True)
    cfg = AdaptConfig(dose_grid_mm=6.0, n_beams=9, segment=SegmentSettings(model=None),
                      painting=PaintingSettings(habitats=2), mlflow=False, figures=False)
    (root / "adapt.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    init_course(c, cfg)
    return c, root / "adapt.yaml"


def _received(folder: Path) -> dict[str, tuple[Path, pydicom.Dataset]]:
    return {ds.Modality: (f, ds) for f, ds in received_datasets(folder)}


def test_a_series_of_a_patient_with_a_course_is_adapted_and_plan_and_dose_are_sent(course, tmp_path) -> None:
    storescu, storescp = require_tool("storescu", "dcmtk"), require_tool("storescp", "dcmtk")
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    c, adapt_yaml = course
    pacs_port = free_port()
    cfg = ServiceConfig.model_validate(dict(
        ae_title="SARCART", port=free_port(), http_port=free_port(), storage=tmp_path / "svc",
        allowed_aets=["CONSOLE"], token="secret-token-1", series_idle_s=1.0, send_backoff_s=0.2,
        destinations=[f"PACS@127.0.0.1:{pacs_port}"], courses=c.root.parent, adapt_config=adapt_yaml))
    pacs = start_storescp(storescp, tmp_path / "pacs", pacs_port)
    svc = Service(cfg, segmenter=threshold_segmenter)
    svc.start(http=False)
    try:
        send = [storescu, "-aet", "CONSOLE", "-aec", "SARCART", "+sd", "+r", "127.0.0.1", str(cfg.port)]
        assert subprocess.run([*send, str(c.fraction(1).mr_dir)], capture_output=True).returncode == 0
        job = wait_for(lambda: (svc.db.query("SELECT * FROM jobs WHERE state IN ('done','failed')") or [None])[0],
                       900, "the adapt job")
        assert job["state"] == "done", job["error"]
        got = wait_for(lambda: (lambda r: r if {"RTSTRUCT", "RTPLAN", "RTDOSE"} <= set(r) else None)(
            _received(tmp_path / "pacs")), 60, "RTSTRUCT, RTPLAN and RTDOSE at the destination")
        assert '"fraction": 1' in job["summary"] and "sarcart adapt" in job["model"]
        # the dose sent is the plan's course dose: the fraction dose the pipeline wrote x the prescribed fractions
        # (to the RTDOSE quantisation step)
        from sarcart.io.nifti import read_nifti
        from sarcart.io.rtdose import read_rtdose

        sent = read_rtdose(got["RTDOSE"][0]).dose
        delivered = read_nifti(c.fraction(1).delivered_dir / "dose.nii.gz")
        assert sent.geometry.shape == delivered.geometry.shape
        step = float(got["RTDOSE"][1].DoseGridScaling)
        course_dose = delivered.array.astype(np.float64) * c.config.prescription.fractions
        assert np.abs(sent.array - course_dose).max() <= step + 1e-5 * course_dose.max()
        assert delivered.array.max() > 1.0  # a real plan (Gy per fraction), not an empty grid
        for modality in ("RTSTRUCT", "RTPLAN", "RTDOSE"):
            out = subprocess.run([dciodvfy, str(got[modality][0])], capture_output=True, text=True)
            assert "Error" not in out.stderr + out.stdout, (modality, out.stderr[-800:])
        # another patient, no course: contours only
        make_series(tmp_path / "other", patient_id="NO-COURSE-1")
        assert subprocess.run([*send, str(tmp_path / "other")], capture_output=True).returncode == 0
        job2 = wait_for(lambda: (svc.db.query("SELECT * FROM jobs WHERE id > ? AND state IN ('done','failed')",
                                              (job["id"],)) or [None])[0], 120, "the contour-only job")
        assert job2["state"] == "done" and job2["model"] == "threshold-test v1"
    finally:
        svc.stop()
        pacs.terminate()
