"""HTTP API (FastAPI) and review page of the service.

Every route but ``/health`` needs the bearer token (``Authorization: Bearer <token>``; pages and
images opened by the browser may pass ``?token=`` instead). Responses carry no patient names or IDs.
"""

from __future__ import annotations

import hmac
import io
import json
import time
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

import sarcart
from sarcart.errors import SarcartError
from sarcart.service.config import ServiceConfig
from sarcart.service.db import ServiceDB
from sarcart.service.review import approve_rtstruct_upload, render_slice, review_state

_PUBLIC_JOB_FIELDS = ("id", "kind", "state", "error", "created_at", "started_at", "finished_at", "model", "attempts")


class Decision(BaseModel):
    """A reviewer's decision on one structure of a job."""

    structure: str = Field(min_length=1, max_length=64)
    decision: str = Field(pattern="^(approve|reject)$")
    user: str = Field(min_length=1, max_length=64)
    comment: str = Field(default="", max_length=1024)


def create_app(config: ServiceConfig, db: ServiceDB) -> FastAPI:
    """The FastAPI application bound to a service's configuration and database."""
    app = FastAPI(title="sarcart service", version=sarcart.__version__,
                  description="Per-fraction auto-contouring service. " + sarcart.NOT_FOR_CLINICAL_USE)

    @app.exception_handler(SarcartError)
    async def _user_error(request: Request, exc: SarcartError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    def auth(request: Request) -> str:
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
        if not given or not hmac.compare_digest(given.encode(), config.token.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        return given

    def get_job(job_id: int) -> dict[str, Any]:
        job = db.job(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"job {job_id} not found")
        return job

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": sarcart.__version__, "notice": sarcart.NOT_FOR_CLINICAL_USE}

    @app.get("/jobs", dependencies=[Depends(auth)])
    def jobs(state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = "SELECT * FROM jobs" + (" WHERE state=?" if state else "") + " ORDER BY id DESC LIMIT ?"
        rows = db.query(sql, ((state,) if state else ()) + (max(1, min(limit, 1000)),))
        return [_public(r) for r in rows]

    @app.get("/jobs/{job_id}", dependencies=[Depends(auth)])
    def job_detail(job_id: int) -> dict[str, Any]:
        job = get_job(job_id)
        out = _public(job)
        out["summary"] = json.loads(job["summary"] or "{}")
        out["sends"] = db.query("SELECT destination, state, attempts, last_error FROM sends WHERE job_id=?", (job_id,))
        out["decisions"] = _decisions(db, job_id)
        return out

    @app.get("/jobs/{job_id}/decisions", dependencies=[Depends(auth)])
    def decisions(job_id: int) -> list[dict[str, Any]]:
        get_job(job_id)
        return _decisions(db, job_id)

    @app.post("/jobs/{job_id}/decisions", dependencies=[Depends(auth)])
    def decide(job_id: int, d: Decision) -> dict[str, Any]:
        job = get_job(job_id)
        state = review_state(job)
        if d.structure not in state["structures"]:
            raise HTTPException(status_code=422, detail=f"structure {d.structure!r} not in job {job_id}; "
                                f"available: {', '.join(state['structures'])}")
        db.audit(d.user, "review", job_id=job_id, structure=d.structure, decision=d.decision, model=job["model"],
                 details={"comment": d.comment})
        return {"job_id": job_id, "structure": d.structure, "decision": d.decision, "user": d.user}

    @app.post("/jobs/{job_id}/rtstruct", dependencies=[Depends(auth)])
    async def upload(job_id: int, file: UploadFile, user: str = "reviewer") -> dict[str, Any]:
        job = get_job(job_id)
        data = await file.read()
        names = approve_rtstruct_upload(job, db, data, actor=f"http:{user}")
        return {"job_id": job_id, "approved_structures": names}

    @app.get("/jobs/{job_id}/slice.png", dependencies=[Depends(auth)])
    def slice_png(job_id: int, plane: str = "axial", index: int = -1) -> Response:
        job = get_job(job_id)
        if plane not in ("axial", "coronal", "sagittal"):
            raise HTTPException(status_code=422, detail="plane must be axial, coronal or sagittal")
        return Response(render_slice(job, plane, index), media_type="image/png")

    @app.get("/review/{job_id}", response_class=HTMLResponse, dependencies=[Depends(auth)])
    def review_page(job_id: int) -> str:
        job = get_job(job_id)
        state = review_state(job)
        page = _template().replace("__STATE__", json.dumps({**state, "job_id": job_id, "model": job["model"]}))
        return page.replace("__NOTICE__", sarcart.NOT_FOR_CLINICAL_USE)

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(auth)])
    def metrics() -> str:
        return prometheus_text(db)

    return app


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job.get(k) for k in _PUBLIC_JOB_FIELDS}


def _decisions(db: ServiceDB, job_id: int) -> list[dict[str, Any]]:
    return db.query("SELECT at, actor, action, structure, decision, model FROM audit WHERE job_id=? ORDER BY id",
                    (job_id,))


@lru_cache(maxsize=1)
def _template() -> str:
    return resources.files("sarcart.service").joinpath("review.html").read_text()


def prometheus_text(db: ServiceDB) -> str:
    """Prometheus exposition text: instances, jobs by state, sends by state, latency summary."""
    c = db.counts()
    lines = ["# HELP sarcart_instances_received_total DICOM instances stored",
             "# TYPE sarcart_instances_received_total counter", f"sarcart_instances_received_total {c['instances']}",
             "# HELP sarcart_jobs Jobs by state", "# TYPE sarcart_jobs gauge"]
    lines += [f'sarcart_jobs{{state="{s}"}} {n}' for s, n in c["jobs"].items()]
    lines += ["# HELP sarcart_sends Result sends by state", "# TYPE sarcart_sends gauge"]
    lines += [f'sarcart_sends{{state="{s}"}} {n}' for s, n in sorted(c["sends"].items())]
    lat = np.asarray(c["latencies"], dtype=float)
    lines += ["# HELP sarcart_job_latency_seconds Last instance received to job done",
              "# TYPE sarcart_job_latency_seconds summary"]
    for q in (0.5, 0.95):
        value = float(np.quantile(lat, q)) if lat.size else float("nan")
        lines.append(f'sarcart_job_latency_seconds{{quantile="{q}"}} {value:.3f}')
    lines += [f"sarcart_job_latency_seconds_sum {lat.sum():.3f}", f"sarcart_job_latency_seconds_count {lat.size}",
              f"sarcart_up {int(time.time())}"]
    return "\n".join(lines) + "\n"


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (h, w, 3) uint8 array as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()

