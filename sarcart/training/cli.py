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
    t.add_argument("--devices", type=int, help="GPUs (or CPU processes) per node, Lightning DDP")
    t.add_argument("--num-nodes", type=int, help="nodes for multi-node DDP (torchrun/SLURM)")
    t.add_argument("--store", help="MLflow store: folder or URI (default MLFLOW_TRACKING_URI or mlruns/)")
    t.add_argument("--no-register", action="store_true",
                   help="log to MLflow but do not register the model (cross-validation folds)")
    t.add_argument("--resume", action="store_true", help="continue from checkpoints/last.ckpt of this fold")
    t.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    t.set_defaults(func=_train)


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

    from sarcart.training.train import plan_for, train

    cfg = _config(args)
    con = Console()
    if args.plan_only:
        plan, _ = plan_for(cfg)
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
