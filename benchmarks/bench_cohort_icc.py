"""ICC table of the real sarcoma set (../shared/data/sts_mr_t1, 34 T1 MRs) under image perturbations.

Every case is extracted unperturbed and ``--replicates`` times perturbed (rotation, sub-voxel translation,
volume adaptation, supervoxel contour randomisation, noise; sarcart.radiomics.perturb) with the packaged
``mr_default`` parameters, on a local Dask cluster. Prints the summary per feature class (robust =
lower 95 % bound of ICC(2,1) >= 0.75) and writes the full table (``--out``, CSV) and a figure
(``--figure``, PNG).

    .venv/bin/python benchmarks/bench_cohort_icc.py [--replicates 5] [--workers 2] \
        [--out /tmp/sarcart-cohort-icc/icc_sts.csv] [--figure docs/figures/cohort_icc_sts.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sts_mr_t1"


def main() -> None:
    from sarcart.radiomics.cohort import CohortConfig
    from sarcart.radiomics.perturb import PerturbationConfig
    from sarcart.radiomics.reproducibility import ROBUST_THRESHOLD
    from sarcart.radiomics.robustness import perturbation_features, perturbation_icc

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sarcart-cohort-icc/icc_sts.csv"))
    ap.add_argument("--figure", type=Path)
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"reference data not found at {DATA}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cases = sorted(p.name for p in DATA.glob("STS_*"))
    man = args.out.parent / "manifest.csv"
    pd.DataFrame([{"patient": c, "fraction": 1, "image": str(DATA / c / "image.nii.gz"),
                   "mask": str(DATA / c / "gtv.nii.gz")} for c in cases]).to_csv(man, index=False)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    long = perturbation_features(man, perturbation=PerturbationConfig(replicates=args.replicates),
                                 config=CohortConfig(workers=args.workers), show_progress=False)
    secs = time.perf_counter() - t0
    long.to_parquet(args.out.with_suffix(".features.parquet"), index=False)
    table = perturbation_icc(long)
    table.to_csv(args.out, float_format="%.4f")
    table["class"] = [f.split("_")[1] for f in table.index]
    table["robust"] = table["icc21_low"] >= ROBUST_THRESHOLD
    print(f"{long['case'].nunique()} cases x {args.replicates + 1} replicates, {len(table)} features, "
          f"{secs:.0f} s on {args.workers} workers ({os.cpu_count()} CPUs, load average (1 min) "
          f"{load0:.1f} before / {os.getloadavg()[0]:.1f} after)")
    print("| class | features | robust (ICC(2,1) lower 95 % bound >= 0.75) | median ICC(2,1) | lowest ICC(2,1) (feature) |")
    print("|---|---|---|---|---|")
    for cls, grp in table.groupby("class", sort=False):
        worst = grp["icc21"].idxmin()
        print(f"| {cls} | {len(grp)} | {int(grp['robust'].sum())} | {grp['icc21'].median():.3f} "
              f"| {grp['icc21'].min():.3f} ({worst.split('_', 2)[2]}) |")
    print(f"| all | {len(table)} | {int(table['robust'].sum())} | {table['icc21'].median():.3f} | |")
    if args.figure:
        import shutil
        import tempfile

        from sarcart.radiomics.report import icc_figure

        with tempfile.TemporaryDirectory() as tmp:
            icc_figure(table, Path(tmp))  # writes <tmp>/figures/icc.png
            args.figure.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / "figures" / "icc.png", args.figure)


if __name__ == "__main__":
    main()
