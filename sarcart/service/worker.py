"""Job processing: series completion, the pipeline run for each job, results queued for sending.

The work done for a completed MR series is a :class:`Pipeline` (segmentation today, the whole
adaptive fraction once `sarcart adapt` runs inside the service). A job that raises is marked
``failed`` with the error text; the service keeps running.
"""

from __future__ import annotations

import logging
import shutil
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sarcart.errors import SarcartError
from sarcart.service.config import ServiceConfig
from sarcart.service.db import ServiceDB

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    """What a pipeline produced for one job."""

    files_to_send: list[Path]
    model: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


class Pipeline(Protocol):
    """The work for one completed series: read ``series_dir``, write results into ``out_dir``."""

    def run(self, job: dict[str, Any], series_dir: Path, out_dir: Path) -> PipelineResult: ...


class Worker:
    """Completes idle series into jobs and runs them with the pipeline (``config.workers`` threads)."""

    def __init__(self, config: ServiceConfig, db: ServiceDB, pipeline: Pipeline) -> None:
        self.config = config
        self.db = db
        self.pipeline = pipeline
        self.results = Path(config.storage) / "results"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def poll_series(self) -> int:
        jobs = self.db.complete_idle_series(self.config.series_idle_s)
        for j in jobs:
            log.info("series complete -> job %d (%s)", j["id"], j["kind"])
        return len(jobs)

    def run_one(self) -> bool:
        """Run the oldest waiting job; False when there was none."""
        job = self.db.claim_job()
        if job is None:
            return False
        series = self.db.series(job["series_uid"])
        out_dir = self.results / f"job-{job['id']:06d}"
        if out_dir.exists():  # a resumed job starts clean
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        try:
            if series is None:
                raise SarcartError(f"series {job['series_uid']} of job {job['id']} is not in the database")
            result = self.pipeline.run(job, Path(series["folder"]), out_dir)
        except SarcartError as exc:
            log.warning("job %d failed: %s", job["id"], exc)
            self.db.finish_job(job["id"], error=str(exc), result_dir=str(out_dir))
            return True
        except Exception as exc:  # noqa: BLE001 - a job must never take the service down
            log.error("job %d crashed: %s", job["id"], traceback.format_exc())
            self.db.finish_job(job["id"], error=f"internal error: {type(exc).__name__}: {exc}", result_dir=str(out_dir))
            return True
        self.db.finish_job(job["id"], result_dir=str(out_dir), model=result.model, summary=result.summary)
        if result.files_to_send and self.config.destinations:
            self.db.add_sends(job["id"], [str(p) for p in result.files_to_send],
                              [str(d) for d in self.config.destinations])
        return True

    def start(self, interval_s: float = 0.25) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.poll_series()
                if not self.run_one():
                    self._stop.wait(interval_s)

        for n in range(self.config.workers):
            t = threading.Thread(target=loop, name=f"sarcart-worker-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
