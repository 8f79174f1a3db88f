"""The service end to end with real DICOM peers: dcmtk storescu sends, dcmtk storescp receives.

The model is a test double with a known answer (threshold), so these tests check the service:
storage, series completion, jobs, RTSTRUCT content and delivery, retries, faults and recovery.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pydicom
import pytest

from helpers import require_tool
from sarcart.io.dicom_series import read_dicom_series
from sarcart.io.rtstruct import list_rois, read_rtstruct
from sarcart.service.config import ServiceConfig
from sarcart.service.server import Service
from svc_support import (
    free_port,
    make_series,
    received_datasets,
    service_process,
    start_storescp,
    threshold_segmenter,
    wait_for,
)

pytestmark = pytest.mark.integration
TOKEN = "secret-token-1"


def _config(tmp_path: Path, **kw) -> ServiceConfig:
    base = dict(ae_title="SARCART", port=free_port(), http_port=free_port(), storage=tmp_path / "svc",
                allowed_aets=["CONSOLE"], token=TOKEN, series_idle_s=1.0, send_backoff_s=0.2, send_attempts=3)
    return ServiceConfig.model_validate({**base, **kw})


def _storescu(tool: str, cfg: ServiceConfig, folder: Path, aet: str = "CONSOLE") -> subprocess.CompletedProcess:
    return subprocess.run([tool, "-aet", aet, "-aec", cfg.ae_title, "+sd", "+r", "127.0.0.1", str(cfg.port),
                           str(folder)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def tools() -> dict[str, str]:
    return {"storescu": require_tool("storescu", "dcmtk"), "storescp": require_tool("storescp", "dcmtk"),
            "dciodvfy": require_tool("dciodvfy", "dicom3tools")}


def test_series_in_rtstruct_out(tmp_path, tools) -> None:
    truth = make_series(tmp_path / "mr")
    pacs_port = free_port()
    cfg = _config(tmp_path, destinations=[f"PACS@127.0.0.1:{pacs_port}"])
    pacs = start_storescp(tools["storescp"], tmp_path / "pacs", pacs_port)
    svc = Service(cfg, segmenter=threshold_segmenter)
    svc.start(http=False)
    try:
        res = _storescu(tools["storescu"], cfg, tmp_path / "mr")
        assert res.returncode == 0, res.stderr
        assert svc.db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == truth.shape[2]
        # a second send of the same series is idempotent
        assert _storescu(tools["storescu"], cfg, tmp_path / "mr").returncode == 0
        assert svc.db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == truth.shape[2]
        job = wait_for(lambda: (svc.db.query("SELECT * FROM jobs WHERE state IN ('done','failed')") or [None])[0],
                       60, "the job")
        assert job["state"] == "done", job["error"]
        wait_for(lambda: svc.db.query("SELECT * FROM sends WHERE state='sent'"), 60, "the RTSTRUCT to be sent")
    finally:
        svc.stop()
        pacs.terminate()
    received = [f for f in (tmp_path / "pacs").iterdir() if pydicom.dcmread(f).Modality == "RTSTRUCT"]
    assert len(received) == 1
    series = read_dicom_series(tmp_path / "mr")
    ss = read_rtstruct(received[0], series)
    assert (ss.masks["GTV"].array == truth).all()
    rois = {r.name: r for r in list_rois(received[0])}
    assert rois["BODY"].description.startswith("REVIEW: volume change")
    assert "threshold-test v1" in rois["GTV"].interpretation
    ds = pydicom.dcmread(received[0])
    assert ds.PatientID == "PAT-0001" and "NOT FOR CLINICAL USE" in ds.StructureSetDescription
    out = subprocess.run([tools["dciodvfy"], str(received[0])], capture_output=True, text=True)
    assert [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")] == []


def test_unknown_aet_and_non_mr_objects_are_refused(tmp_path, tools) -> None:
    make_series(tmp_path / "mr")
    cfg = _config(tmp_path)
    svc = Service(cfg, segmenter=threshold_segmenter)
    svc.start(http=False)
    try:
        res = _storescu(tools["storescu"], cfg, tmp_path / "mr", aet="INTRUDER")
        assert res.returncode != 0
        ct = tmp_path / "ct"
        ct.mkdir()
        ds = pydicom.dcmread(tmp_path / "mr" / "MR_0001.dcm")
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.Modality = "CT"
        ds.save_as(ct / "ct.dcm")
        res = _storescu(tools["storescu"], cfg, ct)
        assert res.returncode != 0 or "no presentation context" in (res.stdout + res.stderr).lower()
        assert svc.db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
        # the service is still up and accepts a good sender afterwards
        assert _storescu(tools["storescu"], cfg, tmp_path / "mr").returncode == 0
    finally:
        svc.stop()


def test_missing_slice_fails_the_job_with_a_clear_error(tmp_path, tools) -> None:
    make_series(tmp_path / "mr")
    os.unlink(tmp_path / "mr" / "MR_0004.dcm")
    cfg = _config(tmp_path)
    svc = Service(cfg, segmenter=threshold_segmenter)
    svc.start(http=False)
    try:
        assert _storescu(tools["storescu"], cfg, tmp_path / "mr").returncode == 0
        job = wait_for(lambda: (svc.db.query("SELECT * FROM jobs WHERE state IN ('done','failed')") or [None])[0],
                       60, "the job")
    finally:
        svc.stop()
    assert job["state"] == "failed" and "slice(s) missing" in job["error"]


def test_series_cut_at_its_end_fails_then_the_rest_completes_it(tmp_path, tools) -> None:
    """The console sends 6 of 10 slices and stops: the uniform 6-slice stack is not taken for the whole series."""
    make_series(tmp_path / "mr", shape=(32, 28, 10))
    (tmp_path / "rest").mkdir()
    for f in sorted((tmp_path / "mr").glob("*.dcm"))[6:]:
        f.rename(tmp_path / "rest" / f.name)
    cfg = _config(tmp_path)
    svc = Service(cfg, segmenter=threshold_segmenter)
    svc.start(http=False)
    try:
        assert _storescu(tools["storescu"], cfg, tmp_path / "mr").returncode == 0
        failed = wait_for(lambda: (svc.db.query("SELECT * FROM jobs WHERE state='failed'") or [None])[0], 60,
                          "the job on the partial series")
        assert "holds 6 of the 10 slices" in failed["error"]
        assert _storescu(tools["storescu"], cfg, tmp_path / "rest").returncode == 0  # the rest arrives
        done = wait_for(lambda: (svc.db.query("SELECT * FROM jobs WHERE state='done'") or [None])[0], 90,
                        "a successful job once the series is whole")
        assert svc.db.series(done["series_uid"])["n_instances"] == 10
    finally:
        svc.stop()


def test_destination_down_retries_then_dead_letter(tmp_path, tools) -> None:
    make_series(tmp_path / "mr")
    cfg = _config(tmp_path, destinations=[f"PACS@127.0.0.1:{free_port()}"])  # nobody listens there
    svc = Service(cfg, segmenter=threshold_segmenter)
    svc.start(http=False)
    try:
        assert _storescu(tools["storescu"], cfg, tmp_path / "mr").returncode == 0
        dead = wait_for(lambda: svc.db.query("SELECT * FROM sends WHERE state='dead'"), 90, "a dead letter")
    finally:
        svc.stop()
    assert dead[0]["attempts"] == 3 and "not established" in dead[0]["last_error"]


def test_sigkill_during_transfer_loses_nothing(tmp_path, tools) -> None:
    truth = make_series(tmp_path / "mr", shape=(32, 28, 40))
    cfg = _config(tmp_path, series_idle_s=2.0).model_dump(mode="json")
    proc = service_process(cfg)
    sender = subprocess.Popen([tools["storescu"], "-aet", "CONSOLE", "-aec", "SARCART", "+sd", "+r",
                               "127.0.0.1", str(cfg["port"]), str(tmp_path / "mr")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    db_files = Path(cfg["storage"]) / "instances"
    wait_for(lambda: sum(1 for _ in db_files.rglob("*.dcm")) >= 5, 60, "some instances")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sender.wait(timeout=60)
    stored_before = {f.name for f in db_files.rglob("*.dcm")}
    assert 0 < len(stored_before) <= truth.shape[2]
    proc = service_process(cfg)  # restart: recovery, then the console re-sends the whole series
    try:
        res = _storescu(tools["storescu"], ServiceConfig.model_validate(cfg), tmp_path / "mr")
        assert res.returncode == 0, res.stdout
        from sarcart.service.db import ServiceDB

        db = ServiceDB(Path(cfg["storage"]) / "queue.db")
        # the partial series registered at recovery may complete (and fail, missing slices) before the
        # re-send arrives; the re-send re-opens the series and its job succeeds
        job = wait_for(lambda: (db.query("SELECT * FROM jobs WHERE state='done'") or [None])[0], 90,
                       "a successful job after restart")
        assert job["summary"] and "GTV" in job["summary"]
        assert db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == truth.shape[2]
        assert stored_before <= {f.name for f in db_files.rglob("*.dcm")}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_two_series_sent_at_once_are_not_mixed(tmp_path, tools) -> None:
    """Instances of two series interleaved on two associations group by SeriesInstanceUID: two jobs, two RTSTRUCTs."""
    make_series(tmp_path / "a", seed="series-a", shape=(32, 28, 10))
    make_series(tmp_path / "b", seed="series-b", shape=(32, 28, 6))
    pacs_port = free_port()
    cfg = _config(tmp_path, destinations=[f"PACS@127.0.0.1:{pacs_port}"])
    pacs = start_storescp(tools["storescp"], tmp_path / "pacs", pacs_port)
    svc = Service(cfg, segmenter=threshold_segmenter)
    svc.start(http=False)
    try:
        senders = [subprocess.Popen([tools["storescu"], "-aet", "CONSOLE", "-aec", cfg.ae_title, "+sd", "+r",
                                     "127.0.0.1", str(cfg.port), str(tmp_path / s)]) for s in ("a", "b")]
        assert [p.wait(timeout=120) for p in senders] == [0, 0]
        jobs = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(
            svc.db.query("SELECT * FROM jobs WHERE state='done'")), 90, "two jobs")
        rts = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(received_datasets(tmp_path / "pacs")), 60,
                       "two complete RTSTRUCTs")
    finally:
        svc.stop()
        pacs.terminate()
    sent = {read_dicom_series(tmp_path / s).series_instance_uid: n for s, n in (("a", 10), ("b", 6))}
    got = {}
    for _, ds in rts:
        ref = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        got[ref.SeriesInstanceUID] = len(ref.ContourImageSequence)
    assert got == sent and {j["series_uid"] for j in jobs} == set(sent)


def test_corrupted_instance_fails_its_job_and_the_service_stays_up(tmp_path, tools) -> None:
    """Pixel data shorter than Rows x Columns: stored as received, the job fails naming the problem."""
    make_series(tmp_path / "bad", seed="bad")
    f = tmp_path / "bad" / "MR_0003.dcm"
    ds = pydicom.dcmread(f)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(f)
    make_series(tmp_path / "good", seed="good")
    cfg = _config(tmp_path)
    svc = Service(cfg, segmenter=threshold_segmenter)
    svc.start(http=False)
    try:
        _storescu(tools["storescu"], cfg, tmp_path / "bad")
        bad = wait_for(lambda: (svc.db.query("SELECT * FROM jobs WHERE state IN ('done','failed')") or [None])[0],
                       60, "the job of the corrupted series")
        assert _storescu(tools["storescu"], cfg, tmp_path / "good").returncode == 0
        good = wait_for(lambda: (svc.db.query("SELECT * FROM jobs WHERE id > ? AND state IN ('done','failed')",
                                              (bad["id"],)) or [None])[0], 60, "the next job")
    finally:
        svc.stop()
    assert bad["state"] == "failed" and bad["error"]
    assert good["state"] == "done"


def test_truncated_association_keeps_what_arrived(tmp_path, tools) -> None:
    """An association aborted half-way: the instances stored before stay, the service accepts the re-send."""
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    truth = make_series(tmp_path / "mr", shape=(32, 28, 10))
    cfg = _config(tmp_path)
    svc = Service(cfg, segmenter=threshold_segmenter)
    svc.start(http=False)
    try:
        ae = AE(ae_title="CONSOLE")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", cfg.port, ae_title=cfg.ae_title)
        assert assoc.is_established
        files = sorted((tmp_path / "mr").glob("*.dcm"))
        statuses = [assoc.send_c_store(pydicom.dcmread(p)).Status for p in files[:4]]
        assoc.abort()  # the console dies mid-series
        assert statuses == [0, 0, 0, 0]
        assert svc.db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 4
        assert _storescu(tools["storescu"], cfg, tmp_path / "mr").returncode == 0
        job = wait_for(lambda: (svc.db.query("SELECT * FROM jobs WHERE state='done'") or [None])[0], 90,
                       "a successful job after the re-send")
        assert svc.db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == truth.shape[2]
    finally:
        svc.stop()
    assert "GTV" in job["summary"]
