"""Between-fraction ICC and a delta-radiomics check on a phantom response cohort with all its fractions.

Needs the cohort rendered by ``bench_cohort_study.py`` (``<work>/<cohort>/images``) and the features of
every fraction, e.g.

    sarcart cohort extract --manifest /tmp/sarcart-cohort/response_signal/images/manifest.csv \
        --cache /tmp/sarcart-cohort/response_signal/cache --out /tmp/sarcart-cohort/response_signal/features_all.parquet
    .venv/bin/python benchmarks/bench_cohort_fractions.py --cohort /tmp/sarcart-cohort/response_signal

Prints the between-fraction ICC summary per feature class (subjects = patients, raters = fx00..fxN;
robust = lower 95 % bound of ICC(2,1) >= 0.75; full table in ``<cohort>/icc_between_fractions.csv``) and
compares the relative change of the GTV volume from fx00 to the last fraction
(``delta_rel_original_shape_VoxelVolume``) with the phantom's ground truth (``cohort.csv``:
``tumour_cc_last_fraction / tumour_cc - 1``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    from sarcart.radiomics.cohort_table import read_cohort_table
    from sarcart.radiomics.delta import delta_table, patient_table, slopes
    from sarcart.radiomics.reproducibility import ROBUST_THRESHOLD, between_fractions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, default=Path("/tmp/sarcart-cohort/response_signal"))
    ap.add_argument("--features", type=Path, help="default: <cohort>/features_all.parquet")
    args = ap.parse_args()
    table, _ = read_cohort_table(args.features or args.cohort / "features_all.parquet")
    bf = between_fractions(table)
    bf.to_csv(args.cohort / "icc_between_fractions.csv", float_format="%.4f")
    bf["class"] = [f.split("_")[1] for f in bf.index]
    bf["robust"] = bf["icc21_low"] >= ROBUST_THRESHOLD
    print(f"{table['patient'].nunique()} patients x {bf['n_raters'].iloc[0]} fractions, {len(bf)} features")
    print("| class | features | robust between fractions | median ICC(2,1) | median ICC(3,1) |")
    print("|---|---|---|---|---|")
    for cls, g in bf.groupby("class", sort=False):
        print(f"| {cls} | {len(g)} | {int(g['robust'].sum())} | {g['icc21'].median():.3f} | {g['icc31'].median():.3f} |")
    print(f"| all | {len(bf)} | {int(bf['robust'].sum())} | {bf['icc21'].median():.3f} | {bf['icc31'].median():.3f} |")

    vol = "original_shape_VoxelVolume"
    cohort = pd.read_csv(args.cohort / "images" / "cohort.csv", dtype={"patient": str}).set_index("patient")
    dt = delta_table(table, [vol])
    last = dt.drop_duplicates("patient", keep="last").set_index("patient")[f"delta_rel_{vol}"]
    truth = (cohort["tumour_cc_last_fraction"] / cohort["tumour_cc"] - 1).loc[last.index]
    err = (last - truth).abs()
    print(f"relative GTV volume change fx00 -> last fraction: features median {last.median():+.4f}, phantom truth "
          f"median {truth.median():+.4f}; |difference| median {err.median():.4f}, max {err.max():.4f}; "
          f"Pearson r {np.corrcoef(last, truth)[0, 1]:.4f}")
    slope = slopes(table, [vol])[f"slope_{vol}"]
    print(f"slope of the GTV volume: median {slope.median():.0f} mm^3 per fraction; patient table with baseline, "
          f"delta and slope blocks: {patient_table(table, include=('baseline', 'delta', 'slope')).shape}")


if __name__ == "__main__":
    main()
