"""``sarcart cohort extract|study|icc|outcomes``: cohort-scale radiomics and response studies (research side)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sarcart.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cohort", help="cohort radiomics on Dask, delta-radiomics, ICC, response studies")
    csub = p.add_subparsers(dest="cohort_command", metavar="SUBCOMMAND")
    csub.required = True

    e = csub.add_parser("extract", help="ROI features of every manifest case on Dask -> one Parquet table")
    e.add_argument("--manifest", required=True, type=Path, help="CSV: patient,fraction,image,mask[,label,roi,...]")
    e.add_argument("--params", help="pyradiomics parameter YAML (may hold `base: mr_default`); default mr_default")
    e.add_argument("--scheduler", help="address of an existing Dask scheduler (tcp://host:8786)")
    e.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster (default 2)")
    e.add_argument("--normalise", choices=("none", "zscore"), default="none",
                   help="per-fraction MR normalisation: none (the params decide) or zscore over the body")
    e.add_argument("--carry", choices=("rigid", "deformable"), default="deformable",
                   help="registration that carries outlines onto fractions without a contour")
    e.add_argument("--cache", type=Path, help="per-case cache folder (default: <out>.cache/)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--out", required=True, type=Path, help="output table (.parquet)")
    e.set_defaults(func=_extract)

    s = csub.add_parser("study", help="nested-CV logistic / Cox response models -> metrics, predictions, HTML report")
    s.add_argument("--features", required=True, type=Path, help="Parquet table of sarcart cohort extract")
    s.add_argument("--outcome", help="binary outcome column (0/1)")
    s.add_argument("--time", help="time-to-event column (with --event)")
    s.add_argument("--event", help="event column, 1 = observed (with --time)")
    s.add_argument("--config", type=Path, help="study YAML (configs/cohort_study/); options override it")
    s.add_argument("--icc", type=Path, help="ICC table CSV (sarcart cohort icc) to show in the report")
    s.add_argument("--seed", type=int, help="random seed of the splits, the bootstrap and the permutations")
    s.add_argument("--permutations", type=int, metavar="N",
                   help="permutation test: refit the whole nested CV on N outcome permutations (default: the "
                   "config's `permutations`, 0 = none); p = (1 + #null >= observed) / (1 + N)")
    s.add_argument("--workers", type=int, default=1, help="processes for the permutations (default 1)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.set_defaults(func=_study)

    i = csub.add_parser("icc", help="ICC(2,1)/ICC(3,1) of every feature under image perturbations (Dask)")
    i.add_argument("--manifest", required=True, type=Path, help="manifest CSV (contoured cases are used)")
    i.add_argument("--params", help="pyradiomics parameter YAML; default mr_default")
    i.add_argument("--replicates", type=int, default=9, help="perturbed replicates per case (default 9)")
    i.add_argument("--seed", type=int, default=0, help="random seed of the perturbations")
    i.add_argument("--scheduler", help="address of an existing Dask scheduler")
    i.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster (default 2)")
    i.add_argument("--no-progress", action="store_true", help="no progress bar")
    i.add_argument("--out", required=True, type=Path, help="ICC table (.csv); the features go to <out>.features.parquet")
    i.set_defaults(func=_icc)

    o = csub.add_parser("outcomes", help="synthesise a response cohort (configs/cohorts/response_*.yaml): "
                        "images, outcomes.csv, manifest.csv")
    o.add_argument("--spec", required=True, type=Path, help="response specification YAML")
    o.add_argument("--out", required=True, type=Path, help="cohort folder (reused when it exists)")
    o.set_defaults(func=_outcomes)


def _extract(args: argparse.Namespace) -> int:
    from sarcart.progress import make_console
    from sarcart.radiomics.cohort import CohortConfig, extract_cohort
    from sarcart.radiomics.fractions import CarryConfig

    cfg = CohortConfig(normalisation=args.normalise, carry=CarryConfig(method=args.carry), workers=args.workers,
                       scheduler=args.scheduler, cache_dir=args.cache)
    run = extract_cohort(args.manifest, args.out, args.params, config=cfg, show_progress=not args.no_progress)
    console = make_console()
    console.print(f"wrote {run.out}: {len(run.table)} cases ({run.computed} extracted, {run.cached} from the "
                  f"cache), {len(run.failures)} failed, {run.seconds:.1f} s")
    for rec in run.failures.to_dict("records"):
        console.print(f"  failed: patient {rec['patient']} fraction {rec['fraction']}: {rec['reason']} - {rec['message']}")
    return 0


def _study(args: argparse.Namespace) -> int:
    import pandas as pd

    from sarcart.progress import make_console
    from sarcart.radiomics.study import load_study_config, run_study

    if (args.time is None) != (args.event is None):
        raise ConfigError("--time and --event must be given together")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    cfg = load_study_config(args.config, outcome=args.outcome, time=args.time, event=args.event, seed=args.seed,
                            permutations=args.permutations)
    icc = pd.read_csv(args.icc, index_col=0) if args.icc else None
    results = run_study(args.features, cfg, args.out, icc=icc, workers=args.workers,
                        show_progress=not args.no_progress)
    console = make_console()
    for task, res in results.items():
        m = res["metrics"]
        name, key = ("AUROC", "auroc") if task == "binary" else ("C-index", "c_index")
        console.print(f"{task}: {name} {m[key]:.3f} (95 % CI {m[key + '_ci_low']:.3f}-{m[key + '_ci_high']:.3f}), "
                      f"{m['n_patients']} patients, {m['n_events']} events")
        if "permutation" in m:
            pt = m["permutation"]
            console.print(f"{task}: permutation test p = {pt['p_value']:.3g} ({pt['n_permutations']} permutations; "
                          f"chance: {name} {pt['null_mean']:.3f}, 95 % of permutations "
                          f"{pt['null_q025']:.3f}-{pt['null_q975']:.3f})")
    console.print(f"report: {args.out / 'report.html'}")
    return 0


def _icc(args: argparse.Namespace) -> int:
    from sarcart.progress import make_console
    from sarcart.radiomics.cohort import CohortConfig
    from sarcart.radiomics.perturb import PerturbationConfig
    from sarcart.radiomics.reproducibility import ROBUST_THRESHOLD, robust_features
    from sarcart.radiomics.robustness import perturbation_features, perturbation_icc

    if args.out.suffix.lower() != ".csv":
        raise ConfigError(f"--out must end in .csv, got {args.out.name!r}")
    long = perturbation_features(args.manifest, args.params,
                                 perturbation=PerturbationConfig(replicates=args.replicates, seed=args.seed),
                                 config=CohortConfig(workers=args.workers, scheduler=args.scheduler),
                                 show_progress=not args.no_progress)
    if long.empty:
        raise ConfigError("no case could be extracted; check the manifest (see the log for the reasons)")
    table = perturbation_icc(long)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, float_format="%.6g")
    long.to_parquet(args.out.with_name(args.out.stem + ".features.parquet"), index=False)
    robust = robust_features(table)
    make_console().print(f"wrote {args.out}: {len(table)} features, {long['case'].nunique()} cases x "
                         f"{args.replicates + 1} replicates; {len(robust)} robust (ICC(2,1) lower bound >= "
                         f"{ROBUST_THRESHOLD})")
    return 0


def _outcomes(args: argparse.Namespace) -> int:
    from sarcart.progress import make_console
    from sarcart.radiomics.outcomes import prepare_response_cohort

    manifest = prepare_response_cohort(args.spec, args.out, show_progress=True)
    make_console().print(f"wrote {manifest} and {args.out / 'outcomes.csv'}")
    return 0
