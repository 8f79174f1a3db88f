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

    .venv/bin/python benchmarks/bench_cohort_study.py [--work /tmp/sarcart-cohort] [--workers 2] \
        [--fractions baseline|all]
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


def run(name: str, work: Path, workers: int, fractions: str) -> dict[str, object]:
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
    cfg = load_study_config(STUDY)
    t1 = time.perf_counter()
    res = run_study(ext.table, cfg, work / name / "study")
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
            "load": os.getloadavg()[0], "between": between,
            "features_b": res["binary"]["final_features"], "features_s": res["survival"]["final_features"]}


def ci(m: dict[str, float], key: str) -> str:
    return f"{m[key]:.3f} ({m[key + '_ci_low']:.3f}-{m[key + '_ci_high']:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/sarcart-cohort"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fractions", choices=("baseline", "all"), default="baseline")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    rows = [run(name, args.work, args.workers, args.fractions) for name in SPECS]
    print(f"{os.cpu_count()} CPUs; load average (1 min) {load0:.1f} at the start, "
          + ", ".join(f"{r['load']:.1f} after {r['cohort']}" for r in rows))
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
        if r["between"]:
            print(f"{r['cohort']}: between-fraction ICC over {r['between']['n_raters']} fractions: "
                  f"{r['between']['robust']} of {r['between']['n_features']} features robust, median ICC(2,1) "
                  f"{r['between']['median_icc21']:.3f}")
    (args.work / "bench_cohort_study.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
