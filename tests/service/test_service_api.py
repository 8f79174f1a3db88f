"""HTTP API: token protection, job views, metrics, review decisions, approved RTSTRUCT upload."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from sarcart.io.dicom_series import read_dicom_series
from sarcart.io.rtstruct_write import write_rtstruct
from sarcart.service.api import create_app
from sarcart.service.config import ServiceConfig
from sarcart.service.db import ServiceDB
from sarcart.service.pipelines import DispatchPipeline, ImportPipeline, SegmentationPipeline
from sarcart.service.scp import StorageSCP
from sarcart.service.worker import Worker
from svc_support import make_series, threshold_segmenter

TOKEN = "secret-token-1"


@pytest.fixture
def done_job(tmp_path):
    """A job processed through the real worker and pipeline, instances registered as the SCP would."""
    truth = make_series(tmp_path / "svc" / "instances" / "series1")
    cfg = ServiceConfig(storage=tmp_path / "svc", allowed_aets=["CONSOLE"], token=TOKEN, series_idle_s=0.01)
    db = ServiceDB(tmp_path / "svc" / "queue.db")
    assert StorageSCP(cfg, db).reconcile() == truth.shape[2]
    worker = Worker(cfg, db, DispatchPipeline(SegmentationPipeline(threshold_segmenter), ImportPipeline(db)))
    import time

    time.sleep(0.05)
    assert worker.poll_series() == 1 and worker.run_one()
    client = TestClient(create_app(cfg, db))
    return client, db, truth, tmp_path


def _h() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_token_protects_everything_but_health(done_job) -> None:
    client, *_ = done_job
    assert client.get("/health").json()["status"] == "ok"
    for url in ("/jobs", "/jobs/1", "/metrics", "/review/1", "/jobs/1/slice.png"):
        assert client.get(url).status_code == 401, url
        assert client.get(url, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert client.get("/jobs", headers=_h()).status_code == 200
    assert client.get(f"/jobs?token={TOKEN}").status_code == 200


def test_job_views_have_no_patient_identifiers(done_job) -> None:
    client, *_ = done_job
    jobs = client.get("/jobs", headers=_h()).json()
    assert [j["state"] for j in jobs] == ["done"]
    detail = client.get("/jobs/1", headers=_h()).json()
    assert detail["summary"]["flagged"] == ["BODY"] and detail["model"] == "threshold-test v1"
    text = str(detail) + str(jobs)
    assert "PAT-0001" not in text and "TEST^PATIENT" not in text
    assert client.get("/jobs/99", headers=_h()).status_code == 404


def test_metrics_count_what_happened(done_job) -> None:
    client, db, truth, _ = done_job
    text = client.get("/metrics", headers=_h()).text
    assert f"sarcart_instances_received_total {truth.shape[2]}" in text
    assert 'sarcart_jobs{state="done"} 1' in text and "sarcart_job_latency_seconds_count 1" in text


def test_decisions_are_audited(done_job) -> None:
    client, db, *_ = done_job
    r = client.post("/jobs/1/decisions", headers=_h(), json={"structure": "GTV", "decision": "approve", "user": "dr.a"})
    assert r.status_code == 200
    bad = client.post("/jobs/1/decisions", headers=_h(), json={"structure": "LIVER", "decision": "approve", "user": "a"})
    assert bad.status_code == 422 and "available: BODY, GTV" in bad.text
    rows = db.query("SELECT actor, action, structure, decision, model FROM audit")
    assert rows == [{"actor": "dr.a", "action": "review", "structure": "GTV", "decision": "approve",
                     "model": "threshold-test v1"}]


def test_slice_png_shows_the_contour(done_job) -> None:
    client, *_ = done_job
    from io import BytesIO

    from PIL import Image

    r = client.get("/jobs/1/slice.png?plane=axial&index=3", headers=_h())
    img = np.asarray(Image.open(BytesIO(r.content)).convert("RGB"))
    red = (img[..., 0] == 255) & (img[..., 1] == 0) & (img[..., 2] == 0)  # GTV outline colour
    rows, cols = np.nonzero(red)
    # the box spans i 10..21 and j 8..17 (1.5 mm pixels drawn at 2x): outline bounding box in display pixels
    assert (cols.min() // 2, cols.max() // 2, rows.min() // 2, rows.max() // 2) == (10, 21, 8, 17)
    assert client.get("/jobs/1/slice.png?plane=oblique", headers=_h()).status_code == 422


def test_uploaded_rtstruct_becomes_the_approved_set(done_job) -> None:
    client, db, truth, tmp_path = done_job
    series = read_dicom_series(tmp_path / "svc" / "instances" / "series1")
    edited = truth.copy()
    edited[10:14] = False  # the clinician trimmed the GTV
    path = write_rtstruct({"GTV": edited}, series, tmp_path / "edited.dcm")
    r = client.post("/jobs/1/rtstruct?user=dr.b", headers=_h(), files={"file": ("rs.dcm", path.read_bytes())})
    assert r.status_code == 200 and r.json()["approved_structures"] == ["GTV"]
    from sarcart.io.nifti import read_mask

    approved = read_mask(tmp_path / "svc" / "results" / "job-000001" / "approved" / "masks" / "GTV.nii.gz")
    assert (approved.array == edited).all()
    assert db.query("SELECT actor, action FROM audit") == [{"actor": "http:dr.b", "action": "approved-structure-set"}]
    r = client.post("/jobs/1/rtstruct", headers=_h(), files={"file": ("x.dcm", b"garbage")})
    assert r.status_code in (400, 422)
