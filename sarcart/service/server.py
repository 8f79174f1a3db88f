"""The running service: storage SCP + job worker + sender + HTTP API, started and stopped together.

Start-up recovers from a crash: jobs left ``running`` go back to the queue, files stored but not
recorded (killed between the rename and the database commit) are registered, partial temporary
files are removed.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from sarcart.service.config import ServiceConfig
from sarcart.service.db import ServiceDB
from sarcart.service.pipelines import DispatchPipeline, ImportPipeline, SegmentationPipeline, Segmenter
from sarcart.service.scp import StorageSCP
from sarcart.service.sender import Sender
from sarcart.service.worker import Pipeline, Worker

log = logging.getLogger(__name__)


def default_segmenter(config: ServiceConfig) -> Segmenter:
    """The segmentation model of the configuration, loaded once and kept warm."""
    from sarcart.inference.service_adapter import make_segmenter

    return make_segmenter(config.model, device=config.device, tta=config.tta, subvoxel=config.subvoxel)


class Service:
    """All parts of `sarcart serve` in one object (``start`` is non-blocking)."""

    def __init__(self, config: ServiceConfig, *, segmenter: Segmenter | None = None,
                 pipeline: Pipeline | None = None) -> None:
        self.config = config
        Path(config.storage).mkdir(parents=True, exist_ok=True)
        self.db = ServiceDB(Path(config.storage) / "queue.db")
        self.scp = StorageSCP(config, self.db)
        if pipeline is None:
            seg: Any = SegmentationPipeline(segmenter or default_segmenter(config))
            if config.courses is not None:
                from sarcart.service.adapt_pipeline import AdaptPipeline

                seg = AdaptPipeline(config.courses, seg, adapt_config=config.adapt_config, device=config.device)
            pipeline = DispatchPipeline(seg, ImportPipeline(self.db))
        self.worker = Worker(config, self.db, pipeline)
        self.sender = Sender(self.db, calling_aet=config.ae_title, max_attempts=config.send_attempts,
                             backoff_s=config.send_backoff_s)
        self._http: Any = None
        self._http_thread: threading.Thread | None = None

    def start(self, *, http: bool = True) -> dict[str, int]:
        recovered = self.db.recover()
        registered = self.scp.reconcile()
        if recovered or registered:
            log.warning("recovered after an interruption: %d job(s) re-queued, %d stored instance(s) registered",
                        recovered, registered)
        self.scp.start()
        self.worker.start()
        self.sender.start()
        if http:
            self._start_http()
        return {"jobs_requeued": recovered, "instances_registered": registered}

    def _start_http(self) -> None:
        import uvicorn

        from sarcart.service.api import create_app

        cfg = uvicorn.Config(create_app(self.config, self.db), host=self.config.http_host,
                             port=self.config.http_port, log_level="warning")
        self._http = uvicorn.Server(cfg)
        self._http_thread = threading.Thread(target=self._http.run, name="sarcart-http", daemon=True)
        self._http_thread.start()

    def stop(self) -> None:
        self.scp.stop()
        self.worker.stop()
        self.sender.stop()
        if self._http is not None:
            self._http.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(timeout=10)

    def serve_forever(self) -> None:
        """Run until SIGINT/SIGTERM."""
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        log.warning("sarcart service up: DICOM %s:%d, HTTP http://%s:%d (research use only)",
                    self.config.ae_title, self.config.port, self.config.http_host, self.config.http_port)
        done.wait()
        self.stop()
