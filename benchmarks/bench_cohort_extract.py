"""Cohort extraction on Dask: the 34 real sarcoma MRs (../shared/data/sts_mr_t1), 1 vs 2 workers, then a resumed run.

Each repeat runs, with the packaged ``mr_default`` parameters and a fresh cache each time:
1 worker, 2 workers, and 2 workers again on the 2-worker cache (which must extract nothing). Wall times
include starting the local Dask cluster. Prints a table with the median over repeats.

    .venv/bin/python benchmarks/bench_cohort_extract.py [--repeats 3] [--work /tmp/sarcart-cohort-extract]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sts_mr_t1"


def manifest(work: Path) -> Path:
    cases = sorted(p.name for p in DATA.glob("STS_*"))
    rows = [{"patient": c, "fraction": 1, "image": str(DATA / c / "image.nii.gz"), "mask": str(DATA / c / "gtv.nii.gz")}
            for c in cases]
    work.mkdir(parents=True, exist_ok=True)
    path = work / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def one(man: Path, work: Path, workers: int, tag: str, *, fresh: bool) -> dict[str, float]:
    from sarcart.radiomics.cohort import CohortConfig, extract_cohort

    cache = work / f"cache-{tag}"
    if fresh and cache.exists():
        shutil.rmtree(cache)
    load0 = os.getloadavg()[0]
    run = extract_cohort(man, work / f"{tag}.parquet", config=CohortConfig(workers=workers, cache_dir=cache),
                         show_progress=False)
    load1 = os.getloadavg()[0]
    if len(run.failures):
        print(run.failures.to_string(), file=sys.stderr)
    return {"wall": run.seconds, "computed": run.computed, "cached": run.cached, "ok": len(run.table),
            "failed": len(run.failures),
            "load": f"{load0:.1f} / {load1:.1f}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/sarcart-cohort-extract"))
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"reference data not found at {DATA}")
    man = manifest(args.work)
    runs: dict[str, list[dict[str, float]]] = {"1 worker": [], "2 workers": [], "2 workers, resumed": []}
    for r in range(args.repeats):
        runs["1 worker"].append(one(man, args.work, 1, "w1", fresh=True))
        runs["2 workers"].append(one(man, args.work, 2, "w2", fresh=True))
        runs["2 workers, resumed"].append(one(man, args.work, 2, "w2", fresh=False))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]['wall']:.1f} s" for k, v in runs.items()), file=sys.stderr)
    med = {k: statistics.median(x["wall"] for x in v) for k, v in runs.items()}
    print(f"{platform.node()}: {os.cpu_count()} CPUs; load average (1 min) before / after each run is shown")
    print(f"| run ({runs['1 worker'][0]['ok'] + runs['1 worker'][0]['failed']} cases, mr_default) | median wall s "
          f"| runs (s) | cases extracted / from cache / failed | speed-up over 1 worker | load avg (last run) |")
    print("|---|---|---|---|---|---|")
    for k, v in runs.items():
        last = v[-1]
        walls = ", ".join(f"{x['wall']:.1f}" for x in v)
        speedup = "-" if "resumed" in k else f"{med['1 worker'] / med[k]:.2f}"
        print(f"| {k} | {med[k]:.1f} | {walls} "
              f"| {last['computed']} / {last['cached']} / {last['failed']} | {speedup} | {last['load']} |")
    from sarcart.radiomics.cohort_table import feature_columns

    w1, w2 = (pd.read_parquet(args.work / f"{t}.parquet") for t in ("w1", "w2"))
    feats = feature_columns(w1)
    same = w1[feats].equals(w2[feats]) and list(w1["patient"]) == list(w2["patient"])
    print(f"1-worker and 2-worker tables identical ({len(feats)} features x {len(w1)} cases): {same}")


if __name__ == "__main__":
    main()
