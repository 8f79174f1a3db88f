"""Acceptance of the response study on synthetic cohorts with a planted signal and without one.

For each committed specification (``configs/cohorts/response_signal.yaml``, ``response_null.yaml``):
synthesise the phantom cohort (once), generate its outcomes from the committed model, extract the GTV
features on Dask (cached), run the study with ``configs/cohort_study/response.yaml``
(nested CV; logistic for ``local_failure``, Cox for ``time_months``/``progression``) and print one table:
the study's out-of-fold AUROC / C-index with patient-bootstrap 95 % CIs, next to the true model's
(the latent z itself, the best any predictor can do on these outcomes).

The images are those of ``sarcart synth`` / ``sarcart cohort outcomes`` for the same spec (same anatomy,
seeds and renderer), but only ``image.nii.gz`` and ``labels.nii.gz`` (+ ``labels.json``) are written:
the DICOM series and RTSTRUCTs, three quarters of the phantom's CPU time, are not needed by the study.
Patients are rendered by ``--workers`` processes. ``--fractions baseline`` (default) extracts each
patient's first fraction only, all the committed study (``include: [baseline]``) uses; ``all`` extracts
every fraction and also prints the between-fraction ICC summary.

Whether each result differs from chance is judged by the study's permutation test (the outcomes permuted
across patients, the whole nested CV refitted; ``permutations`` of the study config, or
``--permutations N``), run in ``--workers`` processes; the table gives its p-value and the chance level
(mean and 2.5-97.5 % range of the permuted AUROC / C-index).

    .venv/bin/python benchmarks/bench_cohort_study.py [--work /tmp/sarcart-cohort] [--workers 2] \
        [--fractions baseline|all] [--permutations N] [--cohorts response_signal response_null]
    .venv/bin/python benchmarks/bench_cohort_study.py --work DIR --diagnose-null 80   # after a run on DIR
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

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


def _patient(job: tuple[Any, Any, Path]) -> dict[str, Any]:
    """Render every fraction of one phantom patient; write image.nii.gz and labels.nii.gz only."""
    from sarcart.io.labels import write_labels
    from sarcart.io.nifti import write_nifti
    from sarcart.phantom import tissues as T
    from sarcart.phantom.generate import build_anatomy, make_fraction
    from sarcart.phantom.writer import cohort_row

    spec, patient, out = job
    config = spec.phantom()
    anatomy = build_anatomy(config, patient, real_root=spec.from_real)
    state = anatomy.packed()
    truths = {}
    for i in range(spec.fractions + 1):
        fd = make_fraction(anatomy, config, patient, index=i, state=state)
        folder = out / patient.name / f"fx{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        write_nifti(fd.image, folder / "image.nii.gz")
        write_labels(fd.labels, T.LABEL_SPEC, folder / "labels.nii.gz")
        truths[i] = fd.truth
    return cohort_row(patient, anatomy, truths, spec=spec)


def synthesise(spec_path: Path, out: Path, workers: int) -> Path:
    """The response cohort's images (NIfTI only), cohort.csv, outcomes.csv and manifest.csv; reused if present."""
    import pandas as pd

    from sarcart.phantom.cohort import write_csv
    from sarcart.phantom.config import save_spec
    from sarcart.phantom.patients import sample_cohort
    from sarcart.radiomics.outcomes import generate_outcomes, load_response_spec, phantom_manifest

    spec, model = load_response_spec(spec_path)
    if not (out / "cohort.csv").is_file():
        save_spec(spec, out / "cohort_spec.yaml")
        jobs = [(spec, p, out) for p in sample_cohort(spec, None)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            rows = pool.map(_patient, jobs, chunksize=1)
        write_csv(rows, out / "cohort.csv")
    outcomes = generate_outcomes(pd.read_csv(out / "cohort.csv", dtype={"patient": str}), model)
    outcomes.to_csv(out / "outcomes.csv", index=False)
    return phantom_manifest(out, outcomes)


def baseline_manifest(manifest: Path) -> Path:
    """The manifest's first fraction of every patient (``<manifest>.baseline.csv``)."""
    import pandas as pd

    m = pd.read_csv(manifest, dtype={"patient": str})
    first = m.sort_values(["patient", "fraction"]).drop_duplicates("patient", keep="first").sort_index()
    path = manifest.with_name("manifest_baseline.csv")
    first.to_csv(path, index=False)
    return path


def run(name: str, work: Path, workers: int, *, fractions: str, permutations: int | None) -> dict[str, object]:
    from sarcart.radiomics.cohort import CohortConfig, extract_cohort
    from sarcart.radiomics.outcomes import load_response_spec
    from sarcart.radiomics.study import load_study_config, run_study

    spec = ROOT / "configs" / "cohorts" / f"{name}.yaml"
    _, model = load_response_spec(spec)
    t0 = time.perf_counter()
    manifest = synthesise(spec, work / name / "images", workers)
    t_synth = time.perf_counter() - t0
    if fractions == "baseline":
        manifest = baseline_manifest(manifest)
    ext = extract_cohort(manifest, work / name / f"features_{fractions}.parquet",
                         config=CohortConfig(workers=workers, cache_dir=work / name / "cache"), show_progress=False)
    cfg = load_study_config(STUDY, permutations=permutations)
    t1 = time.perf_counter()
    res = run_study(ext.table, cfg, work / name / "study", workers=workers)
    t_study = time.perf_counter() - t1
    between = None
    if ext.table["fraction"].nunique() > 1:
        from sarcart.radiomics.reproducibility import between_fractions

        bf = between_fractions(ext.table)
        bf.to_csv(work / name / "icc_between_fractions.csv", float_format="%.4f")
        between = {"n_features": len(bf), "robust": int((bf["icc21_low"] >= 0.75).sum()),
                   "median_icc21": float(bf["icc21"].median()), "n_raters": int(bf["n_raters"].iloc[0])}
    outcomes = pd.read_csv(work / name / "images" / "outcomes.csv", dtype={"patient": str})
    b, s = res["binary"]["metrics"], res["survival"]["metrics"]
    return {"cohort": name, "or": model.odds_ratio_per_sd, "hr": model.hazard_ratio_per_sd,
            "cases": len(ext.table), "failed": len(ext.failures), "b": b, "s": s, "oracle": oracle(outcomes, cfg.n_boot),
            "seconds": {"synth+outcomes": t_synth, "extract": ext.seconds, "study": t_study},
            "permutations": cfg.permutations, "workers": workers,
            "load": os.getloadavg()[0], "between": between,
            "features_b": res["binary"]["final_features"], "features_s": res["survival"]["final_features"]}


def ci(m: dict[str, float], key: str) -> str:
    return f"{m[key]:.3f} ({m[key + '_ci_low']:.3f}-{m[key + '_ci_high']:.3f})"


def perm(m: dict[str, Any]) -> str:
    """Permutation p-value and the chance level (null mean, 2.5-97.5 % range) of one model, or '-'."""
    pt = m.get("permutation")
    if not pt:
        return "- | -"
    return (f"{pt['p_value']:.3g} (below chance: {pt['p_lower']:.3g}) | {pt['null_mean']:.3f} "
            f"({pt['null_q025']:.3f}-{pt['null_q975']:.3f})")


def _fold_stats(y: Any, prediction: Any, splits: list[Any]) -> tuple[float, list[float]]:
    from sarcart.radiomics.study_models import harrell_c

    fold = [float(harrell_c(y[te, 0], y[te, 1], prediction[te])[0]) for _, te in splits]
    return float(harrell_c(y[:, 0], y[:, 1], prediction)[0]), fold


def diagnose_null(work: Path, n_noise: int) -> None:
    """Why the null cohort's survival C-index is below 0.5 (needs ``<work>/response_null`` from a run).

    (1) the same data under other outer-split seeds; (2) the study's Cox arm against scikit-survival refitted
    on the same folds and features (if installed); (3) ``n_noise`` pure-noise cohorts (80 x 111 N(0, 1)
    features, outcomes of the committed null model with fresh seeds): mean out-of-fold C-index and how often
    the patient-bootstrap 95 % CI excludes 0.5 (nominal 5 %).
    """
    import numpy as np
    from threadpoolctl import threadpool_limits

    from sarcart.radiomics.outcomes import generate_outcomes, load_response_spec
    from sarcart.radiomics.study import _target, design, load_study_config, nested_cv, outer_splits
    from sarcart.radiomics.study_metrics import cindex_ci

    threadpool_limits(1)
    cfg = load_study_config(STUDY, permutations=0)
    patients, x = design(pd.read_parquet(work / "response_null" / "features_baseline.parquet"), cfg)
    _, y, xx = _target(patients, x, cfg, "survival")
    for seed in range(6):
        c = cfg.model_copy(update={"seed": seed})
        cv = nested_cv(xx, y, c, task="survival")
        splits = outer_splits(y[:, 1].astype(int), c, 0)
        pooled, fold = _fold_stats(y, cv.prediction, splits)
        print(f"null cohort, split seed {seed}: out-of-fold C-index {pooled:.3f}; per outer fold "
              + ", ".join(f"{v:.3f}" for v in fold) + _sksurv_check(xx, y, splits, folds=cv.folds))
    _, model = load_response_spec(ROOT / "configs" / "cohorts" / "response_null.yaml")
    rows = []
    for b in range(n_noise):
        rng = np.random.default_rng(1000 + b)
        noise = pd.DataFrame(rng.normal(size=xx.shape), columns=xx.columns)
        out = generate_outcomes(pd.DataFrame({"patient": np.arange(len(noise)).astype(str),
                                              "z": rng.normal(size=len(noise))}),
                                model.model_copy(update={"latent": "z", "seed": 5000 + b}))
        yn = out[["time_months", "progression"]].to_numpy(dtype=float)
        cv = nested_cv(noise, yn, cfg, task="survival")
        pooled, fold = _fold_stats(yn, cv.prediction, outer_splits(yn[:, 1].astype(int), cfg, 0))
        ci_ = cindex_ci(yn[:, 0], yn[:, 1], cv.prediction, n_boot=cfg.n_boot, seed=0)
        rows.append({"pooled": pooled, "fold": float(np.mean(fold)), "below": ci_["c_index_ci_high"] < 0.5,
                     "above": ci_["c_index_ci_low"] > 0.5})
    d = pd.DataFrame(rows)
    se = d[["pooled", "fold"]].std() / np.sqrt(len(d))
    print(f"{len(d)} pure-noise cohorts: out-of-fold C-index mean {d['pooled'].mean():.3f} (SE {se['pooled']:.3f}, "
          f"SD {d['pooled'].std():.3f}); mean per-fold C-index {d['fold'].mean():.3f} (SE {se['fold']:.3f}); "
          f"bootstrap CI excludes 0.5 in {int(d['below'].sum() + d['above'].sum())} ({int(d['below'].sum())} below, "
          f"{int(d['above'].sum())} above)")


def _sksurv_check(x: Any, y: Any, splits: list[Any], *, folds: list[dict[str, Any]]) -> str:
    """'; scikit-survival on the same folds: C ...' (Efron Cox refitted on each fold's features), or ''."""
    import numpy as np

    try:
        from sksurv.linear_model import CoxPHSurvivalAnalysis
        from sksurv.metrics import concordance_index_censored
    except ImportError:
        return ""
    ref = np.zeros(len(y))
    for (tr, te), fold in zip(splits, folds):
        a, b = x.iloc[tr][fold["selected"]].to_numpy(), x.iloc[te][fold["selected"]].to_numpy()
        mu, sd = a.mean(axis=0), a.std(axis=0)
        a, b = (a - mu) / sd, (b - mu) / sd
        sd1 = a.std(axis=0, ddof=1)
        target = np.array(list(zip(y[tr, 1].astype(bool), y[tr, 0])), dtype=[("e", bool), ("t", float)])
        m = CoxPHSurvivalAnalysis(alpha=len(tr) * fold["params"]["model__penalizer"], ties="efron").fit(a / sd1, target)
        ref[te] = m.predict(b / sd1)
    c = concordance_index_censored(y[:, 1].astype(bool), y[:, 0], ref)[0]
    return f"; scikit-survival on the same folds: {c:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/sarcart-cohort"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fractions", choices=("baseline", "all"), default="baseline")
    ap.add_argument("--permutations", type=int, help="outcome permutations of the study (default: the study config's)")
    ap.add_argument("--cohorts", nargs="+", choices=SPECS, default=list(SPECS), help="specs to run (default both)")
    ap.add_argument("--diagnose-null", type=int, metavar="N", help="only diagnose the null cohort's C-index (after a "
                    "run): other split seeds, scikit-survival on the same folds, N pure-noise cohorts")
    args = ap.parse_args()
    if args.diagnose_null is not None:
        diagnose_null(args.work, args.diagnose_null)
        return
    load0 = os.getloadavg()[0]
    rows = [run(name, args.work, args.workers, fractions=args.fractions, permutations=args.permutations)
            for name in args.cohorts]
    print(f"{os.cpu_count()} CPUs; load average (1 min) {load0:.1f} at the start, "
          + ", ".join(f"{r['load']:.1f} after {r['cohort']}" for r in rows))
    print("| cohort | OR / HR per SD (committed) | patients / failures / progressions | study AUROC (95 % CI) "
          "| AUROC permutation p (p below chance) | chance AUROC: mean (95 % of permutations) | true-model AUROC "
          "| study C-index (95 % CI) | C-index permutation p (p below chance) "
          "| chance C-index: mean (95 % of permutations) "
          "| true-model C-index | calibration slope | log-rank p |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, s, o = r["b"], r["s"], r["oracle"]
        print(f"| {r['cohort']} | {r['or']:g} / {r['hr']:g} | {b['n_patients']} / {b['n_events']} / {s['n_events']} "
              f"| {ci(b, 'auroc')} | {perm(b)} | {ci(o, 'auroc')} "
              f"| {ci(s, 'c_index')} | {perm(s)} | {ci(o, 'c_index')} "
              f"| {b['calibration_slope']:.2f} | {s['logrank_p']:.3g} |")
    for r in rows:
        secs = ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items())
        print(f"{r['cohort']}: {r['cases']} cases ({r['failed']} failed); {secs} (study: nested CV, bootstrap, "
              f"{r['permutations']} permutations per model on {r['workers']} workers, report); final logistic features "
              f"{r['features_b']}; final Cox features {r['features_s']}")
        if r["between"]:
            print(f"{r['cohort']}: between-fraction ICC over {r['between']['n_raters']} fractions: "
                  f"{r['between']['robust']} of {r['between']['n_features']} features robust, median ICC(2,1) "
                  f"{r['between']['median_icc21']:.3f}")
    (args.work / "bench_cohort_study.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
