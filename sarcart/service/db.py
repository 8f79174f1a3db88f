"""The service's durable state in SQLite: received instances, series, jobs, sends, audit log.

Job states: ``received -> running -> done | failed``. A job found ``running`` at start-up was
interrupted (the service was killed) and goes back to ``received``. Sends: ``pending -> sent | dead``
(dead letter after the configured number of attempts). Every connection is per thread; writes use
``BEGIN IMMEDIATE`` so two workers never take the same job.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
  sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, study_uid TEXT, sop_class TEXT, modality TEXT,
  calling_aet TEXT, path TEXT NOT NULL, received_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS series (
  series_uid TEXT PRIMARY KEY, study_uid TEXT, patient_hash TEXT, modality TEXT, calling_aet TEXT,
  folder TEXT NOT NULL, n_instances INTEGER NOT NULL DEFAULT 0, first_at REAL, last_at REAL,
  state TEXT NOT NULL DEFAULT 'receiving');
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT, series_uid TEXT NOT NULL, kind TEXT NOT NULL,
  state TEXT NOT NULL, error TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
  last_instance_at REAL, result_dir TEXT, model TEXT, summary TEXT, attempts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sends (
  id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, path TEXT NOT NULL, destination TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
  next_try_at REAL NOT NULL, sent_at REAL);
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
  job_id INTEGER, structure TEXT, decision TEXT, model TEXT, details TEXT);
"""

JOB_STATES = ("received", "running", "done", "failed")


class ServiceDB:
    """Thread-safe access to the service database at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(SCHEMA)

    @property
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA synchronous=FULL")
            self._local.conn = c
        return c

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sql, args).fetchall()]

    # ------------------------------------------------------------------ instances and series
    def add_instance(self, rec: dict[str, Any]) -> bool:
        """Record a stored instance; False when its SOPInstanceUID was already there (duplicate)."""
        now = time.time()
        with self.tx() as c:
            if c.execute("SELECT 1 FROM instances WHERE sop_uid=?", (rec["sop_uid"],)).fetchone():
                c.execute("UPDATE series SET last_at=? WHERE series_uid=?", (now, rec["series_uid"]))
                return False
            c.execute(
                "INSERT INTO instances VALUES (?,?,?,?,?,?,?,?)",
                (rec["sop_uid"], rec["series_uid"], rec.get("study_uid"), rec.get("sop_class"), rec.get("modality"),
                 rec.get("calling_aet"), rec["path"], now),
            )
            row = c.execute("SELECT state FROM series WHERE series_uid=?", (rec["series_uid"],)).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO series (series_uid, study_uid, patient_hash, modality, calling_aet, folder, "
                    "n_instances, first_at, last_at) VALUES (?,?,?,?,?,?,1,?,?)",
                    (rec["series_uid"], rec.get("study_uid"), rec.get("patient_hash"), rec.get("modality"),
                     rec.get("calling_aet"), rec["folder"], now, now),
                )
            else:
                # an instance arriving after completion re-opens the series (a re-send)
                c.execute(
                    "UPDATE series SET n_instances=n_instances+1, last_at=?, state='receiving' WHERE series_uid=?",
                    (now, rec["series_uid"]),
                )
        return True

    def complete_idle_series(self, idle_s: float) -> list[dict[str, Any]]:
        """Mark series idle for ``idle_s`` complete and create their jobs; returns the new jobs."""
        now = time.time()
        new = []
        with self.tx() as c:
            rows = c.execute(
                "SELECT * FROM series WHERE state='receiving' AND last_at < ?", (now - idle_s,)
            ).fetchall()
            for s in rows:
                kind = "import_rtstruct" if s["modality"] == "RTSTRUCT" else "segment"
                c.execute("UPDATE series SET state='complete' WHERE series_uid=?", (s["series_uid"],))
                cur = c.execute(
                    "INSERT INTO jobs (series_uid, kind, state, created_at, last_instance_at) "
                    "VALUES (?,?,'received',?,?)",
                    (s["series_uid"], kind, now, s["last_at"]),
                )
                new.append({"id": cur.lastrowid, "series_uid": s["series_uid"], "kind": kind})
        return new

    # ------------------------------------------------------------------ jobs
    def recover(self) -> int:
        """Put jobs left ``running`` by a killed service back to ``received``; returns how many."""
        with self.tx() as c:
            return c.execute("UPDATE jobs SET state='received', started_at=NULL WHERE state='running'").rowcount

    def claim_job(self) -> dict[str, Any] | None:
        """Take the oldest ``received`` job (atomically) and mark it running."""
        with self.tx() as c:
            row = c.execute("SELECT * FROM jobs WHERE state='received' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            c.execute("UPDATE jobs SET state='running', started_at=?, attempts=attempts+1 WHERE id=?",
                      (time.time(), row["id"]))
            return dict(row)

    def finish_job(self, job_id: int, *, error: str | None = None, result_dir: str | None = None,
                   model: str | None = None, summary: dict[str, Any] | None = None) -> None:
        state = "failed" if error else "done"
        with self.tx() as c:
            c.execute(
                "UPDATE jobs SET state=?, error=?, finished_at=?, result_dir=?, model=?, summary=? WHERE id=?",
                (state, error, time.time(), result_dir, model, json.dumps(summary or {}), job_id),
            )

    def job(self, job_id: int) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return rows[0] if rows else None

    def series(self, series_uid: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM series WHERE series_uid=?", (series_uid,))
        return rows[0] if rows else None

    def series_files(self, series_uid: str) -> list[str]:
        return [r["path"] for r in self.query("SELECT path FROM instances WHERE series_uid=?", (series_uid,))]

    # ------------------------------------------------------------------ sends
    def add_sends(self, job_id: int, paths: list[str], destinations: list[str]) -> None:
        now = time.time()
        with self.tx() as c:
            for d in destinations:
                for p in paths:
                    c.execute("INSERT INTO sends (job_id, path, destination, next_try_at) VALUES (?,?,?,?)",
                              (job_id, p, d, now))

    def due_sends(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM sends WHERE state='pending' AND next_try_at <= ? ORDER BY id", (time.time(),))

    def send_result(self, send_id: int, *, ok: bool, error: str = "", max_attempts: int = 5,
                    backoff_s: float = 2.0) -> str:
        """Record one C-STORE attempt; returns the new state (sent, pending or dead)."""
        with self.tx() as c:
            row = c.execute("SELECT attempts FROM sends WHERE id=?", (send_id,)).fetchone()
            attempts = int(row["attempts"]) + 1
            if ok:
                state = "sent"
            else:
                state = "dead" if attempts >= max_attempts else "pending"
            delay = backoff_s * 2 ** (attempts - 1)
            c.execute(
                "UPDATE sends SET state=?, attempts=?, last_error=?, next_try_at=?, sent_at=? WHERE id=?",
                (state, attempts, error or None, time.time() + delay, time.time() if ok else None, send_id),
            )
        return state

    # ------------------------------------------------------------------ audit
    def audit(self, actor: str, action: str, **fields: Any) -> None:
        """Append an audit record (who, what, when; job, structure, decision, model version)."""
        with self.tx() as c:
            c.execute(
                "INSERT INTO audit (at, actor, action, job_id, structure, decision, model, details) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (time.time(), actor, action, fields.get("job_id"), fields.get("structure"), fields.get("decision"),
                 fields.get("model"), json.dumps(fields.get("details") or {})),
            )

    def counts(self) -> dict[str, Any]:
        """Numbers for /metrics."""
        out: dict[str, Any] = {"jobs": {s: 0 for s in JOB_STATES}}
        for r in self.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            out["jobs"][r["state"]] = r["n"]
        out["instances"] = self.query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
        out["sends"] = {r["state"]: r["n"] for r in self.query("SELECT state, COUNT(*) AS n FROM sends GROUP BY state")}
        out["latencies"] = [
            r["finished_at"] - r["last_instance_at"]
            for r in self.query("SELECT finished_at, last_instance_at FROM jobs WHERE state='done'")
        ]
        return out
