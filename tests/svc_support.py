"""Support for service tests: a synthetic series, a test segmenter with a known answer, free ports,
dcmtk storescp as a destination, and a service process for crash tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sarcart.io.dicom_series import DicomSeries
from sarcart.io.dicom_write import PatientStudy, write_dicom_series
from sarcart.io.geometry import Geometry, Volume

BOX = (slice(10, 22), slice(8, 18), slice(2, 6))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_series(folder: Path, *, seed: str = "svc", shape=(32, 28, 8), patient_id: str = "PAT-0001") -> np.ndarray:
    """An MR series with a bright box (the 'tumour') in a body; returns the true box mask."""
    g = Geometry(shape, (1.5, 1.5, 3.0), (-24.0, -21.0, -12.0))
    arr = np.full(shape, 600, np.uint16)
    arr[:2], arr[-2:] = 0, 0
    truth = np.zeros(shape, bool)
    truth[BOX] = True
    arr[truth] = 3000
    write_dicom_series(Volume(arr, g), folder, uid_seed=seed,
                       patient=PatientStudy(patient_name="TEST^PATIENT", patient_id=patient_id))
    return truth


def threshold_segmenter(series: DicomSeries) -> tuple[dict[str, Volume], dict[str, Any], str]:
    """Test double of a model: GTV = bright voxels, BODY = non-zero; one QA flag on BODY."""
    v = series.volume
    masks = {"GTV": v.with_array(v.array > 2000), "BODY": v.with_array(v.array > 50)}
    qa = {"structures": {"GTV": {"flags": []}, "BODY": {"flags": ["volume change 12%"]}}}
    return masks, qa, "threshold-test v1"


def wait_for(cond: Callable[[], Any], timeout_s: float = 60, what: str = "condition") -> Any:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def start_storescp(tool: str, folder: Path, port: int, aet: str = "PACS") -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([tool, "-aet", aet, "-od", str(folder), "+xa", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _port_open(port), 20, "storescp to listen")
    return proc


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def service_process(config: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Run a service with the threshold segmenter in its own process (for SIGKILL tests)."""
    code = ("import json,sys; sys.path.insert(0, %r); from svc_support import _serve; _serve(json.loads(sys.argv[1]))"
            % str(Path(__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(config)])
    wait_for(lambda: _port_open(config["port"]), 60, "the service to listen")
    return proc


def _serve(config: dict[str, Any]) -> None:
    from sarcart.service.config import ServiceConfig
    from sarcart.service.server import Service

    Service(ServiceConfig.model_validate(config), segmenter=threshold_segmenter).serve_forever()


def received_datasets(folder: Path) -> list[tuple[Path, Any]]:
    """``(file, dataset)`` of every complete DICOM file in ``folder`` (storescp may still be writing one)."""
    import pydicom
    import pydicom.errors

    out = []
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            try:
                out.append((f, pydicom.dcmread(f)))
            except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError):
                continue
    return out
