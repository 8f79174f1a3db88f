"""Cohort-scale ROI feature extraction on Dask: resumable, with provenance and per-case failure reports.

:func:`extract_cohort` reads a manifest (:mod:`sarcart.radiomics.manifest`), hashes every input file,
and runs one task per patient x fraction on a Dask cluster - a local cluster of ``workers`` processes
(one thread each) by default, or the cluster whose scheduler address is given (its workers must see the
same file paths). Each finished case is cached at once as ``<cache>/<key>.json``; the key is a hash of
the image and mask file hashes (for a carried outline: of the source fraction's files and the carry
settings), the ROI, the normalisation and the parameter set's ``settings_hash``, so a second run skips
every case whose inputs and settings did not change, and an interrupted run resumes where it stopped.
Failed cases are not cached (they are tried again next time).

A case that fails - missing or unreadable image, empty mask, mask not on the image grid, no contour to
carry, an extraction error - is reported with its reason and message in ``<out>.failures.csv`` and does
not stop the others. The output is one Parquet table, one row per successful case in manifest order:
``patient, fraction, fraction_index``, the manifest's carried columns, then ``image_id`` (hash of the
image file), ``roi, label, mask_source`` (``manifest`` or ``carried:<fraction>``), the source file
hashes, ``case_key``, ``normalisation``, ``settings_hash``, package versions and the features. The
resolved parameters are written beside it (``<out>.params.yaml``) and into the Parquet metadata.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sarcart.errors import ConfigError
from sarcart.io.atomic import atomic_write_text
from sarcart.radiomics.fractions import NORMALISATIONS, CarryConfig, Normalisation
from sarcart.radiomics.manifest import ManifestCase, case_key, file_sha256, read_manifest
from sarcart.radiomics.params import RadiomicsParams, load_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CohortConfig:
    """Settings of a cohort extraction.

    Attributes:
        normalisation: per-fraction MR intensity normalisation (``none`` or ``zscore``; see
            :mod:`sarcart.radiomics.fractions`).
        carry: how outlines are carried onto fractions without a contour.
        geometry_tol_mm: largest allowed difference between the image and mask grids (mm).
        workers: processes of the local Dask cluster (ignored with ``scheduler``).
        scheduler: address of an existing Dask scheduler (``tcp://host:8786``); ``None`` starts a local one.
        processes: local cluster of processes (``False``: one thread in this process, for tests).
        cache_dir: per-case cache; ``None`` means ``<out>.cache/`` beside the output table.
    """

    normalisation: Normalisation = "none"
    carry: CarryConfig = field(default_factory=CarryConfig)
    geometry_tol_mm: float = 0.01
    workers: int = 2
    scheduler: str | None = None
    processes: bool = True
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise ConfigError(f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if not self.processes and self.workers != 1:
            raise ConfigError("a threaded local cluster (processes=False) must have workers=1: pyradiomics is "
                              f"not thread-safe; got workers={self.workers}")
        if self.geometry_tol_mm <= 0:
            raise ConfigError(f"geometry_tol_mm must be positive, got {self.geometry_tol_mm}")


@dataclass(frozen=True)
class CohortRun:
    """Result of :func:`extract_cohort`: the table, the failures and what was computed or reused."""

    table: Any
    failures: Any
    computed: int
    cached: int
    seconds: float
    out: Path


@contextlib.contextmanager
def dask_client(config: CohortConfig) -> Iterator[Any]:
    """A ``distributed.Client`` on ``config.scheduler`` or on a new local cluster; both closed on exit."""
    from dask.distributed import Client, LocalCluster

    if config.scheduler:
        client = Client(config.scheduler, timeout="30s")
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=config.processes,
                           dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _params(params: Any, config: CohortConfig) -> RadiomicsParams:
    p = load_params(params)
    if config.normalisation != "none":  # sarcart normalises; pyradiomics must not do it again
        p = load_params(p, overrides={"setting": {"normalize": False}})
    return p


def _plan(cases: Sequence[ManifestCase], p: RadiomicsParams, config: CohortConfig,
          cache: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(tasks, immediate failures) for the manifest; each task dict is what a worker receives."""
    by_row = {c.row: c for c in cases}
    hashes: dict[Path, str | None] = {}

    def sha(path: Path | None) -> str | None:
        if path is None:
            return None
        if path not in hashes:
            hashes[path] = file_sha256(path)
        return hashes[path]

    tasks, failures = [], []
    for c in cases:
        src = by_row[c.carry_from] if c.carry_from is not None else None
        if c.mask is None and src is None:
            failures.append(_failure(c, "no_contour", "no mask and no earlier contoured fraction to carry one from"))
            continue
        parts: dict[str, Any] = {"image": sha(c.image), "label": c.label, "roi": c.roi,
                                 "settings": p.settings_hash, "normalisation": config.normalisation}
        if src is None:
            parts["mask"] = sha(c.mask)
        else:
            parts["carried"] = {"image": sha(src.image), "mask": sha(src.mask), "label": src.label,
                                "roi": src.roi, **asdict(config.carry)}
        key = case_key(parts)
        tasks.append({"key": key, "row": c.row, "image": str(c.image), "mask": str(c.mask) if c.mask else None,
                      "label": c.label, "roi": c.roi, "image_sha256": parts["image"],
                      "mask_sha256": parts["mask"] if src is None else parts["carried"]["mask"],
                      "source": None if src is None else {"image": str(src.image), "mask": str(src.mask),
                                                          "label": src.label, "roi": src.roi,
                                                          "fraction": src.fraction},
                      "params": dict(p.data), "normalisation": config.normalisation,
                      "carry": asdict(config.carry), "tol_mm": config.geometry_tol_mm,
                      "carried_mask_path": str(cache / "masks" / f"{key}.nii.gz") if src is not None else None})
    return tasks, failures


def _failure(case: ManifestCase, reason: str, message: str) -> dict[str, Any]:
    return {"row": case.row, "patient": case.patient, "fraction": case.fraction, "image": str(case.image),
            "mask": str(case.mask) if case.mask else "", "reason": reason, "message": message}


def _read_cache(path: Path) -> dict[str, Any] | None:
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("status") == "ok" else None


def _write_cache(path: Path, entry: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(entry))


def _run_tasks(tasks: list[dict[str, Any]], config: CohortConfig, show_progress: bool,
               cache: Path) -> list[dict[str, Any]]:
    from dask.distributed import as_completed

    from sarcart.progress import progress
    from sarcart.radiomics.cohort_worker import run_case

    if not tasks:
        return []
    results = []
    with dask_client(config) as client:
        futures = client.map(run_case, tasks, key=[f"radiomics-{t['key']}" for t in tasks], pure=False)
        meta = {f.key: t for f, t in zip(futures, tasks)}
        for fut in progress(as_completed(futures), "cohort extraction", total=len(futures), enabled=show_progress):
            task = meta[fut.key]
            if fut.status == "error":
                exc = fut.exception()
                result = {"key": task["key"], "row": task["row"], "status": "failed", "reason": "worker_error",
                          "message": f"{type(exc).__name__}: {exc}"}
            else:
                result = fut.result()
            if result["status"] == "ok":
                _write_cache(cache / f"{task['key']}.json", result)
            results.append(result)
            fut.release()
    return results


def extract_cohort(manifest: str | os.PathLike[str], out: str | os.PathLike[str], params: Any = None, *,
                   config: CohortConfig | None = None, show_progress: bool = True) -> CohortRun:
    """Extract the ROI features of every manifest case on Dask; write the Parquet table and the failures.

    Args:
        manifest: manifest CSV (see :mod:`sarcart.radiomics.manifest`).
        out: output ``.parquet`` path.
        params: pyradiomics parameter set (path, packaged name, mapping); default ``mr_default``.
        config: cluster, cache, normalisation and carry settings.
        show_progress: progress bar on stderr.

    Returns:
        :class:`CohortRun` with the table (pandas DataFrame), failures, counts and wall seconds.

    Raises:
        ConfigError: invalid manifest, parameters or output path.
    """
    from sarcart.radiomics.cohort_table import assemble, write_outputs

    cfg = config or CohortConfig()
    out_path = Path(out)
    if out_path.suffix.lower() != ".parquet":
        raise ConfigError(f"--out must end in .parquet, got {out_path.name!r}")
    t0 = time.perf_counter()
    cases = read_manifest(manifest)
    p = _params(params, cfg)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out_path.with_name(out_path.stem + ".cache")
    tasks, failures = _plan(cases, p, cfg, cache)
    done, todo = [], []
    for t in tasks:
        entry = _read_cache(cache / f"{t['key']}.json")
        if entry is None:
            todo.append(t)
        else:
            done.append({**entry, "row": t["row"]})  # the same inputs may sit on another manifest row
    log.info("cohort: %d cases, %d cached, %d to extract, %d failed before extraction",
             len(cases), len(done), len(todo), len(failures))
    results = _run_tasks(todo, cfg, show_progress, cache)
    by_row = {c.row: c for c in cases}
    for r in results:
        if r["status"] != "ok":
            failures.append(_failure(by_row[r["row"]], r["reason"], r["message"]))
    ok = sorted(done + [r for r in results if r["status"] == "ok"], key=lambda r: r["row"])
    table, fail_table = assemble(ok, failures, cases, cfg.normalisation)
    write_outputs(table, fail_table, out_path, p, manifest=Path(manifest))
    return CohortRun(table, fail_table, computed=len(results), cached=len(done),
                     seconds=time.perf_counter() - t0, out=out_path)
