"""Acceptance of the response study on synthetic cohorts with a planted signal and without one.

For each committed specification (``configs/cohorts/response_signal.yaml``, ``response_null.yaml``):
synthesise the phantom cohort (once), generate its outcomes from the committed model, extract the GTV
features of every fraction on Dask (cached), run the study with ``configs/cohort_study/response.yaml``
(nested CV; logistic for ``local_failure``, Cox for ``time_months``/``progression``) and print one table:
the study's out-of-fold AUROC / C-index with patient-bootstrap 95 % CIs, next to the true model's
(the latent z itself, the best any predictor can do on these outcomes).

    .venv/bin/python benchmarks/bench_cohort_study.py [--work /tmp/sarcart-cohort] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SPECS = ("response_signal", "response_null")
STUDY = ROOT / "configs" / "cohort_study" / "response.yaml"


def oracle(outcomes: pd.DataFrame, n_boot: int) -> dict[str, float]:
    """AUROC and C-index of the true latent z (with the same bootstrap as the study)."""
    from sarcart.radiomics.study_metrics import auroc_ci, cindex_ci

    z = outcomes["latent_z"].to_numpy()
    return {**auroc_ci(outcomes["local_failure"].to_numpy(), z, n_boot=n_boot),
            **cindex_ci(outcomes["time_months"].to_numpy(), outcomes["progression"].to_numpy(), z, n_boot=n_boot)}


def run(name: str, work: Path, workers: int) -> dict[str, object]:
    from sarcart.radiomics.cohort import CohortConfig, extract_cohort
    from sarcart.radiomics.outcomes import load_response_spec, prepare_response_cohort
    from sarcart.radiomics.study import load_study_config, run_study

    spec = ROOT / "configs" / "cohorts" / f"{name}.yaml"
    _, model = load_response_spec(spec)
    t0 = time.perf_counter()
    manifest = prepare_response_cohort(spec, work / name / "images")
    t_synth = time.perf_counter() - t0
    ext = extract_cohort(manifest, work / name / "features.parquet", config=CohortConfig(workers=workers),
                         show_progress=False)
    cfg = load_study_config(STUDY)
    t1 = time.perf_counter()
    res = run_study(ext.table, cfg, work / name / "study")
    t_study = time.perf_counter() - t1
    outcomes = pd.read_csv(work / name / "images" / "outcomes.csv", dtype={"patient": str})
    b, s = res["binary"]["metrics"], res["survival"]["metrics"]
    return {"cohort": name, "or": model.odds_ratio_per_sd, "hr": model.hazard_ratio_per_sd,
            "cases": len(ext.table), "failed": len(ext.failures), "b": b, "s": s, "oracle": oracle(outcomes, cfg.n_boot),
            "seconds": {"synth+outcomes": t_synth, "extract": ext.seconds, "study": t_study},
            "features_b": res["binary"]["final_features"], "features_s": res["survival"]["final_features"]}


def ci(m: dict[str, float], key: str) -> str:
    return f"{m[key]:.3f} ({m[key + '_ci_low']:.3f}-{m[key + '_ci_high']:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/sarcart-cohort"))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rows = [run(name, args.work, args.workers) for name in SPECS]
    print("| cohort | OR / HR per SD (committed) | patients / failures / progressions | study AUROC (95 % CI) "
          "| true-model AUROC | study C-index (95 % CI) | true-model C-index | calibration slope | log-rank p |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, s, o = r["b"], r["s"], r["oracle"]
        print(f"| {r['cohort']} | {r['or']:g} / {r['hr']:g} | {b['n_patients']} / {b['n_events']} / {s['n_events']} "
              f"| {ci(b, 'auroc')} | {ci(o, 'auroc')} | {ci(s, 'c_index')} | {ci(o, 'c_index')} "
              f"| {b['calibration_slope']:.2f} | {s['logrank_p']:.3g} |")
    for r in rows:
        secs = ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items())
        print(f"{r['cohort']}: {r['cases']} cases ({r['failed']} failed); {secs}; final logistic features "
              f"{r['features_b']}; final Cox features {r['features_s']}")
    (args.work / "bench_cohort_study.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
