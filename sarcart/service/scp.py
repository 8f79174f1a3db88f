"""DICOM Storage SCP (pynetdicom): durable storage of MR images and RT structure sets.

An instance is acknowledged (status 0x0000) only after its bytes are on disk (temporary file,
fsync, rename, fsync of the folder) and recorded in the queue database, so a sender that got
success never loses an instance, and one that did not will re-send it (duplicates, same
SOPInstanceUID, are idempotent). Only MR Image Storage, RT Structure Set Storage and Verification
are negotiated; associations from calling AE titles not in the allow-list are rejected.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, RTStructureSetStorage, Verification  # type: ignore[attr-defined]

from sarcart.service.config import ServiceConfig
from sarcart.service.db import ServiceDB
from sarcart.tracking import hash_id

log = logging.getLogger(__name__)

ACCEPTED_SOP_CLASSES = {str(MRImageStorage): "MR", str(RTStructureSetStorage): "RTSTRUCT"}
_STATUS_OK, _STATUS_BAD_DATA, _STATUS_NO_RESOURCES = 0x0000, 0xA900, 0xA700


def durable_write(data: bytes, path: Path) -> None:
    """Write bytes so they survive a crash: temp file, fsync, rename, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _safe(uid: str) -> str:
    return "".join(ch for ch in uid if ch.isdigit() or ch == ".")[:64] or "unknown"


class StorageSCP:
    """Receives instances into ``<storage>/instances/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``."""

    def __init__(self, config: ServiceConfig, db: ServiceDB) -> None:
        self.config = config
        self.db = db
        self.root = Path(config.storage) / "instances"
        self.root.mkdir(parents=True, exist_ok=True)
        self._server: Any = None

    # ------------------------------------------------------------------ handlers
    def handle_store(self, event: Any) -> int:
        calling = event.assoc.requestor.ae_title.strip() if hasattr(event.assoc.requestor, "ae_title") else "?"
        try:
            ds = event.dataset
            sop_class = str(event.request.AffectedSOPClassUID)
            sop_uid = str(ds.SOPInstanceUID)
            series_uid = str(ds.SeriesInstanceUID)
        except (AttributeError, ValueError, KeyError, pydicom.errors.InvalidDicomError) as exc:
            log.warning("refused an instance from %s: unreadable or missing UIDs (%s)", calling, exc)
            return _STATUS_BAD_DATA
        if sop_class not in ACCEPTED_SOP_CLASSES:  # defensive: contexts already restrict this
            return _STATUS_BAD_DATA
        folder = self.root / _safe(series_uid)
        path = folder / f"{_safe(sop_uid)}.dcm"
        try:
            if not path.exists():
                durable_write(event.encoded_dataset(), path)
            new = self.db.add_instance({
                "sop_uid": sop_uid, "series_uid": series_uid, "study_uid": str(ds.get("StudyInstanceUID", "")),
                "sop_class": sop_class, "modality": ACCEPTED_SOP_CLASSES[sop_class], "calling_aet": calling,
                "path": str(path), "folder": str(folder), "patient_hash": hash_id(str(ds.get("PatientID", ""))),
            })
        except OSError as exc:
            log.error("could not store an instance from %s: %s", calling, exc)
            return _STATUS_NO_RESOURCES
        if not new:
            log.info("duplicate instance from %s ignored (already stored)", calling)
        return _STATUS_OK

    def reconcile(self) -> int:
        """At start-up: drop partial temp files, register stored files missing from the database."""
        added = 0
        for tmp in self.root.rglob(".*.part"):
            tmp.unlink(missing_ok=True)
        known = {r["path"] for r in self.db.query("SELECT path FROM instances")}
        for f in sorted(self.root.rglob("*.dcm")):
            if str(f) in known:
                continue
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
                log.warning("unreadable stored file %s moved aside: %s", f, exc)
                f.rename(f.with_suffix(".corrupt"))
                continue
            self.db.add_instance({
                "sop_uid": str(ds.SOPInstanceUID), "series_uid": str(ds.SeriesInstanceUID),
                "study_uid": str(ds.get("StudyInstanceUID", "")), "sop_class": str(ds.SOPClassUID),
                "modality": ACCEPTED_SOP_CLASSES.get(str(ds.SOPClassUID), str(ds.get("Modality", ""))),
                "calling_aet": "recovered", "path": str(f), "folder": str(f.parent),
                "patient_hash": hash_id(str(ds.get("PatientID", ""))),
            })
            added += 1
        return added

    # ------------------------------------------------------------------ server
    def start(self) -> None:
        """Start the SCP in a background thread (non-blocking)."""
        ae = AE(ae_title=self.config.ae_title)
        ae.require_calling_aet = list(self.config.allowed_aets)
        ae.network_timeout = 30
        ae.dimse_timeout = 60
        for cx in (MRImageStorage, RTStructureSetStorage, Verification):
            ae.add_supported_context(cx)
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_REJECTED, _log_rejected)]
        self._server = ae.start_server(("0.0.0.0", self.config.port), block=False, evt_handlers=handlers)
        log.info("storage SCP %s listening on port %d", self.config.ae_title, self.config.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def _log_rejected(event: Any) -> None:
    log.warning("association rejected (calling AE %r not allowed or bad request)",
                getattr(event.assoc.requestor, "ae_title", "?"))
