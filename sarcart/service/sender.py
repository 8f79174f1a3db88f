"""C-STORE of results to the configured destinations, with retries and dead letters."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pydicom
from pynetdicom import AE

from sarcart.service.config import Destination
from sarcart.service.db import ServiceDB

log = logging.getLogger(__name__)


def send_file(path: str | Path, dest: Destination, *, calling_aet: str = "SARCART", timeout_s: float = 30) -> str:
    """C-STORE one DICOM file; returns '' on success, else the reason (never raises for network faults)."""
    try:
        ds = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        return f"cannot read {path}: {exc}"
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 10)
    ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    except (OSError, RuntimeError) as exc:  # pragma: no cover - pynetdicom reports most faults as not established
        return f"association with {dest} failed: {exc}"
    if not assoc.is_established:
        return f"association with {dest} not established (down, refused or rejected)"
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        return f"no C-STORE response from {dest} (connection lost or timed out)"
    if code not in (0x0000, 0xB000, 0xB007, 0xB006):
        return f"{dest} answered C-STORE status 0x{code:04X}"
    return ""


class Sender:
    """Background loop that delivers pending sends and records retries and dead letters."""

    def __init__(self, db: ServiceDB, *, calling_aet: str, max_attempts: int, backoff_s: float) -> None:
        self.db = db
        self.calling_aet = calling_aet
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Try every due send once; returns how many were attempted."""
        due = self.db.due_sends()
        for s in due:
            error = send_file(s["path"], Destination.parse(s["destination"]), calling_aet=self.calling_aet)
            state = self.db.send_result(s["id"], ok=not error, error=error, max_attempts=self.max_attempts,
                                        backoff_s=self.backoff_s)
            if state == "dead":
                log.error("dead letter: %s -> %s after %d attempts: %s", Path(s["path"]).name, s["destination"],
                          self.max_attempts, error)
            elif error:
                log.warning("send to %s failed (will retry): %s", s["destination"], error)
        return len(due)

    def start(self, interval_s: float = 0.5) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.run_once()
                self._stop.wait(interval_s)

        self._thread = threading.Thread(target=loop, name="sarcart-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
