"""Benchmark: one 6-fraction synthetic patient (fx00..fx06) at the default grid, generated AND written.

Writes DICOM MR series, NIfTI image/labels/hypoxia, RTSTRUCT and deformation fields for 7 volumes of
267 x 267 x 144 voxels (1.5 x 1.5 x 3 mm, 40 x 40 x 43 cm) with 2 worker processes. Reports the
median wall time of ``--repeats`` runs, and a per-stage breakdown (the anatomy is built in the main
process; the other stages run in the workers and are summed over the 7 fractions, wall and CPU).

Acceptance target: <= 30 s on 2 CPU cores.

    python benchmarks/bench_phantom.py [--site retroperitoneum] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from sarcart.phantom.config import SITES, make_spec
from sarcart.phantom.patients import sample_patient
from sarcart.phantom.writer import write_patient

STAGES = ("anatomy", "warp+render", "dicom", "nifti", "rtstruct")


def run_once(site: str, seed: int, workdir: Path) -> tuple[float, dict[str, float]]:
    spec = make_spec(site=site, seed=seed, fractions=6, patients=1, workers=2)
    patient = sample_patient(spec, 0)
    out = workdir / "run"
    shutil.rmtree(out, ignore_errors=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    write_patient(spec, patient, out, timings=timings)
    return time.perf_counter() - t0, timings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--site", choices=(*SITES, "all"), default="retroperitoneum")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    sites = SITES if args.site == "all" else (args.site,)
    console = Console(width=220)
    table = Table(title=f"6-fraction patient, default grid, 2 workers - {os.cpu_count()} CPUs visible, "
                        f"load avg {os.getloadavg()[0]:.1f} at start")
    for col in ("site", "variant", "median wall s", "runs s", *[f"{s} wall/cpu s" for s in STAGES],
                "cpu total s", "cpu-bound 2-core wall s"):
        table.add_column(col)
    with tempfile.TemporaryDirectory(prefix="bench_phantom_") as tmp:
        for site in sites:
            for name in ("sarcart",):
                walls, stage = [], []
                for _ in range(args.repeats):
                    wall, t = run_once(site, args.seed, Path(tmp))
                    walls.append(wall)
                    stage.append(t)
                med = int(np.argsort(walls)[len(walls) // 2])
                t = stage[med]
                cells = [f"{t.get(s, 0):.1f}/{t.get(s + ':cpu', 0):.1f}" for s in STAGES]
                cpu = sum(t.get(s + ":cpu", 0.0) for s in STAGES)
                # lower bound of the wall time on 2 otherwise idle cores: serial anatomy + workers' CPU / 2
                ideal = t.get("anatomy:cpu", 0.0) + (cpu - t.get("anatomy:cpu", 0.0)) / 2.0
                table.add_row(site, name, f"{statistics.median(walls):.1f}", " ".join(f"{w:.1f}" for w in walls),
                              *cells, f"{cpu:.1f}", f"{ideal:.1f}")
    console.print(table)
    console.print(f"load avg at end {os.getloadavg()[0]:.1f} (other processes share the CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
