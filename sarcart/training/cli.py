"""``sarcart dataset build`` and ``sarcart train`` (``sarcart evaluate`` lives in ``sarcart.inference.cli``,
because it scores the model as deployed, through the predictor)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sarcart.errors import ConfigError


def _fold(value: str) -> int | str:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--fold must be an integer or 'all', got {value!r}") from exc


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = sub.add_parser("dataset", help="build training sets (datalist.json with patient-level folds)")
    dsub = d.add_subparsers(dest="dataset_command", metavar="ACTION")
    b = dsub.add_parser("build", help="patients (DICOM series + RTSTRUCT, or NIfTI pairs) -> NIfTI + datalist.json")
    b.add_argument("--dicom-root", "--root", dest="root", required=True, type=Path, action="append",
                   help="folder with one sub-folder per patient (DICOM series + RTSTRUCT, or image.nii.gz + masks); "
                   "repeat to merge cohorts (case names are then prefixed with the folder name)")
    b.add_argument("--out", required=True, type=Path, help="output folder (imagesTr/, labelsTr/, datalist.json)")
    b.add_argument("--structures", default="GTV", help="comma-separated canonical names, in label order (default GTV)")
    b.add_argument("--folds", type=int, default=5, help="number of cross-validation folds (default 5)")
    b.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    b.add_argument("--name", default="", help="dataset name written into datalist.json")
    b.set_defaults(func=_build)

    t = sub.add_parser("train", help="train a segmentation model (self-configured plan, Lightning, MLflow)")
    t.add_argument("--config", required=True, type=Path, help="training YAML (see configs/train/)")
    t.add_argument("--fold", type=_fold, help="validation fold (integer) or 'all' (overrides the config)")
    t.add_argument("--datalist", type=Path, help="datalist.json (overrides the config)")
    t.add_argument("--output-dir", type=Path, help="where runs are written (overrides the config)")
    t.add_argument("--init-from", help="continue this trained model (shipped name, bundle or MLflow URI) with its "
                   "plan; needs budget.epochs in the config (overrides the config's init_from)")
    t.add_argument("--devices", type=int, help="GPUs (or CPU processes) per node, Lightning DDP")
    t.add_argument("--num-nodes", type=int, help="nodes for multi-node DDP (torchrun/SLURM)")
    t.add_argument("--store", help="MLflow store: folder or URI (default MLFLOW_TRACKING_URI or mlruns/)")
    t.add_argument("--no-register", action="store_true",
                   help="log to MLflow but do not register the model (cross-validation folds)")
    t.add_argument("--resume", action="store_true", help="continue from checkpoints/last.ckpt of this fold")
    t.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    t.set_defaults(func=_train)
    _register_finetune(sub)


def _int_list(value: str) -> list[int]:
    try:
        return sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--fractions must be comma-separated integers (e.g. 1,2), got {value!r}") from exc


def _register_finetune(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    f = sub.add_parser("finetune", help="fine-tune the population model on a patient's approved fractions; "
                       "use it for the structures where it is not worse on a held-out fraction "
                       "(per_structure: false in --config: all or nothing)")
    f.add_argument("--patient-dir", required=True, type=Path, help="the patient's course folder (course.yaml, fxNN/)")
    f.add_argument("--model", required=True, help="population model (shipped name, bundle path or MLflow URI), or "
                   "this patient's model to fine-tune further")
    f.add_argument("--fractions", type=_int_list, help="fractions to fine-tune on, e.g. 1,2 (default: every approved "
                   "fraction except the held-out one; with --cross-validate: the approved fractions to use)")
    f.add_argument("--holdout", type=int, help="approved fraction to compare on (default: the latest one not used)")
    f.add_argument("--cross-validate", action="store_true", default=None,
                   help="hold out each approved fraction in turn (one fine-tuning each), judge on the fold means, "
                   "then fine-tune the deployed model on every approved fraction")
    f.add_argument("--epochs", type=int, help="epochs (default 6)")
    f.add_argument("--iterations", type=int, help="iterations per epoch (default 10)")
    f.add_argument("--lr", type=float, help="learning rate (default 2e-4, a tenth of the population training's)")
    f.add_argument("--config", type=Path, help="YAML of FinetuneConfig fields (flags override it)")
    f.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    f.add_argument("--out", type=Path, help="working folder (default mlruns/finetune/<registered name>/)")
    f.add_argument("--store", help="MLflow store: folder or URI (default MLFLOW_TRACKING_URI or mlruns/)")
    f.set_defaults(func=_finetune)


def _build(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from sarcart.training.dataset import build_dataset

    structures = [s.strip().upper() for s in args.structures.split(",") if s.strip()]
    rep = build_dataset(args.root if len(args.root) > 1 else args.root[0], args.out, structures=structures, n_folds=args.folds, seed=args.seed, name=args.name)
    con = Console()
    tab = Table(title=f"{len(rep.cases)} case(s) written to {args.out}")
    for col in ("case", "fold", *structures):
        tab.add_column(col)
    for c in rep.cases:
        tab.add_row(c["case"], str(c["fold"]), *[f"{c['volumes_cc'][s]:.1f} cc" for s in structures])
    con.print(tab)
    if rep.skipped:
        sk = Table(title=f"{len(rep.skipped)} case(s) skipped")
        sk.add_column("case")
        sk.add_column("reason")
        for s in rep.skipped:
            sk.add_row(s["case"], s["reason"])
        con.print(sk)
    con.print(f"datalist: {rep.datalist}")
    return 0


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sarcart.training.config import load_config

    cfg = load_config(args.config)
    updates: dict = {"fold": args.fold, "datalist": args.datalist, "output_dir": args.output_dir,
                     "init_from": getattr(args, "init_from", None),
                     "register_model": False if getattr(args, "no_register", False) else None}
    cfg = cfg.with_updates(**updates)
    trainer = cfg.trainer.model_dump()
    if args.devices:
        trainer["devices"] = args.devices
    if args.num_nodes:
        trainer["num_nodes"] = args.num_nodes
    if (trainer["devices"] > 1 or trainer["num_nodes"] > 1) and trainer["strategy"] == "auto":
        trainer["strategy"] = "ddp"
    return cfg.with_updates(trainer=trainer)


def _train(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from sarcart.training.train import continued_plan, plan_for, train

    cfg = _config(args)
    con = Console()
    if args.plan_only:
        plan = continued_plan(cfg)[0] if cfg.init_from else plan_for(cfg)[0]
        con.print_json(json.dumps(plan.model_dump(mode="json")))
        return 0
    if cfg.fold != "all" and cfg.fold < 0:
        raise ConfigError(f"--fold must be >= 0 or 'all', got {cfg.fold}")
    res = train(cfg, store=args.store, resume=args.resume)
    if res.bundle_path is None:
        return 0
    con.print(f"run {res.run_id}: {res.train_seconds / 60:.1f} min, bundle {res.bundle_path}")
    if res.validation is not None:
        con.print(f"validation mean Dice {res.val_score:.4f} over {res.validation['case'].nunique()} case(s)")
    if res.model_version:
        ch = res.champion or {}
        con.print(f"registered {cfg.registered_name} v{res.model_version}; champion: "
                  f"{'moved' if ch.get('promoted') else 'kept'} ({ch.get('reason', '')})")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from sarcart.config import load_model
    from sarcart.training.finetune import FinetuneConfig, finetune

    cfg = load_model(FinetuneConfig, args.config, what="finetune configuration",
                     epochs=args.epochs, iterations_per_epoch=args.iterations, cross_validate=args.cross_validate)
    if args.lr is not None:
        cfg = FinetuneConfig.model_validate({**cfg.model_dump(), "optim": {**cfg.optim.model_dump(), "lr": args.lr}})
    res = finetune(args.patient_dir, args.model, fractions=args.fractions, holdout=args.holdout, config=cfg,
                   device=args.device, out=args.out, store=args.store, show_progress=True)
    con = Console()
    for fx, src in res.sources.items():
        con.print(f"{fx}: approved contours from {src}")
    bases = list(dict.fromkeys(res.comparison["baseline"])) if len(res.comparison) else [str(args.model)]
    judged = ", ".join(f"fx{i:02d}" for i in res.holdouts)
    judged = (f"mean over the folds holding out {judged} in turn" if res.folds is not None else f"held-out {judged}")
    tab = Table(title=f"{judged}: {bases[0] if len(bases) == 1 else 'the deployed models'} vs the new patient model "
                f"(deployed model fine-tuned on {', '.join(f'fx{i:02d}' for i in res.fit_fractions)})")
    for col in ("structure", *(["baseline"] if len(bases) > 1 else []), "Dice base", "Dice new", "sDice2mm base",
                "sDice2mm new", "HD95 base (mm)", "HD95 new (mm)", "not worse"):
        tab.add_column(col)
    for r in res.comparison.to_dict("records"):
        tab.add_row(r["structure"], *([r["baseline"]] if len(bases) > 1 else []),
                    *[f"{r[f'{m}_{w}']:.3f}" for m in ("dice", "surface_dice_2mm")
                                      for w in ("baseline", "patient")],
                    f"{r['hd95_mm_baseline']:.1f}", f"{r['hd95_mm_patient']:.1f}",
                    ("yes" if r["not_worse"] else "NO") if r["scored"] else "not scored")
    con.print(tab)
    loss = (f"; loss on the fine-tuning fractions {res.loss_before:.4f} -> {res.loss_after:.4f}"
            if cfg.fit_loss else "")
    con.print(f"fine-tuning {res.finetune_seconds:.0f} s, scoring {res.eval_seconds:.0f} s{loss}")
    rest = [r["structure"] for r in res.comparison.to_dict("records") if r["structure"] not in res.structures]
    alias = "alias champion" if res.version else "not registered"
    verdict = (f"REJECTED ({'alias unchanged' if res.version else 'not registered'})" if not res.kept else
               f"KEPT ({alias})" if not rest else
               f"KEPT ({alias}) for {', '.join(res.structures)}; the population model keeps {', '.join(rest)}")
    con.print(f"{res.name} v{res.version or '-'}: {verdict}; outputs in {res.out_dir}")
    return 0
