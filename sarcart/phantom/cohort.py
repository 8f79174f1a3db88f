"""Write a whole synthetic cohort: ``DIR/cohort_spec.yaml``, ``DIR/<patient>/...``, ``DIR/cohort.csv``."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from sarcart.errors import ConfigError
from sarcart.io.atomic import atomic_write
from sarcart.phantom.config import CohortSpec, save_spec
from sarcart.phantom.patients import sample_cohort
from sarcart.phantom.writer import write_patient

log = logging.getLogger(__name__)

#: leading columns of cohort.csv (further columns follow in a fixed order)
CSV_FIRST = ("patient", "site", "seed", "tumour_cc", "hypoxic_fraction", "necrotic_fraction", "genomic_score",
             "age", "sex", "grade")


def list_real_cases(root: str | os.PathLike[str]) -> list[str]:
    """Case folders under ``root`` holding ``image.nii.gz`` and ``gtv.nii.gz`` (sorted)."""
    r = Path(root)
    if not r.is_dir():
        raise ConfigError(f"from_real folder not found: {r}; point it at ../shared/data/sts_mr_t1")
    cases = sorted(p.name for p in r.iterdir() if (p / "image.nii.gz").is_file() and (p / "gtv.nii.gz").is_file())
    if not cases:
        raise ConfigError(f"no case folders with image.nii.gz and gtv.nii.gz in {r}")
    return cases


def write_cohort(spec: CohortSpec, out_dir: str | os.PathLike[str], *, show_progress: bool = True
                 ) -> Path:
    """Generate and write every patient of ``spec`` under ``out_dir``; returns the path of cohort.csv.

    The resolved spec is saved first as ``cohort_spec.yaml``; ``cohort.csv`` is written last (one row
    per patient: covariates, requested and realised tumour figures).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_spec(spec, out / "cohort_spec.yaml")
    real = list_real_cases(spec.from_real) if spec.from_real is not None else None
    patients = sample_cohort(spec, real)
    rows: list[dict[str, Any]] = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not show_progress) as bar:
        for p in patients:
            task = bar.add_task(f"{p.name} fractions", total=spec.fractions + 1)

            def advance(_index: int, task_id: TaskID = task) -> None:
                bar.advance(task_id)

            rows.append(write_patient(spec, p, out, on_fraction=advance))
            log.info("wrote %s (%s, GTV %.0f cc)", p.name, p.site, rows[-1]["tumour_cc"])
    return write_csv(rows, out / "cohort.csv")


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write the rows with :data:`CSV_FIRST` first (atomic)."""
    keys = list(CSV_FIRST) + [k for k in (rows[0] if rows else {}) if k not in CSV_FIRST]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(r.get(k)) for k in keys})

    return atomic_write(path, write)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v
