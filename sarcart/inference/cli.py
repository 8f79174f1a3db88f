"""``sarcart segment`` (one image -> labels, masks, RTSTRUCT) and ``sarcart evaluate`` (a model on a datalist)."""

from __future__ import annotations

import argparse
from pathlib import Path

_MODEL_HELP = ("shipped model name (gtv-t1, trufi), bundle path, or MLflow URI (models:/sarcart-trufi@champion); "
               "repeat it to average several models' class probabilities (an ensemble, e.g. the cross-validation "
               "folds; one pass per model)")
_STORE_HELP = "MLflow store that a models:/ or runs:/ --model is fetched from (folder or URI; default MLFLOW_TRACKING_URI or mlruns/)"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser("segment", help="segment an image (NIfTI file or DICOM series folder) with a model")
    s.add_argument("--image", required=True, type=Path, help="NIfTI file or folder holding a DICOM image series")
    s.add_argument("--model", required=True, action="append", help=_MODEL_HELP)
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--series-uid", help="SeriesInstanceUID when the folder holds several series")
    s.add_argument("--tta", action="store_true", help="test-time augmentation (mirroring along allowed axes)")
    s.add_argument("--subvoxel", action=argparse.BooleanOptionalAction, default=None,
                   help="average over the plan grid's half-voxel phases (4 passes for trufi; "
                   "default: what the model's bundle recommends)")
    s.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    s.add_argument("--no-postprocess", action="store_true", help="raw network output (no anatomy rules)")
    s.add_argument("--store", help=_STORE_HELP)
    s.set_defaults(func=_segment)

    e = sub.add_parser("evaluate", help="score a model on a datalist: metrics.csv, summary.json, boxplot.png")
    e.add_argument("--model", action="append", help=_MODEL_HELP)
    e.add_argument("--data", type=Path, help="datalist.json (from `sarcart dataset build`)")
    e.add_argument("--from-cv", type=Path, metavar="TASK_DIR",
                   help="instead of --model/--data: pool the validation.csv of every fold<K>/ under TASK_DIR "
                   "(e.g. mlruns/train/gtv-t1) into one cross-validation report")
    e.add_argument("--out", required=True, type=Path, help="output folder")
    e.add_argument("--fold", help="only the cases of this fold (default: every case)")
    e.add_argument("--tta", action="store_true", help="test-time augmentation")
    e.add_argument("--subvoxel", action=argparse.BooleanOptionalAction, default=None,
                   help="average over the plan grid's half-voxel phases (4 passes for trufi; "
                   "default: what the model's bundle recommends)")
    e.add_argument("--no-postprocess", action="store_true", help="score the raw network output")
    e.add_argument("--device", help="cpu, cuda ... (default: CUDA when available)")
    e.add_argument("--ring-mm", type=float, default=30.0, help="width of the OAR ring around the PTV (mm)")
    e.add_argument("--ptv-margin-mm", type=float, default=3.0, help="GTV->PTV margin when no PTV is labelled")
    e.add_argument("--store", help=_STORE_HELP)
    e.set_defaults(func=_evaluate)


def _read_input(path: Path, series_uid: str | None):  # type: ignore[no-untyped-def]
    from sarcart.errors import InvalidImageError
    from sarcart.io.dicom_series import read_dicom_series
    from sarcart.io.nifti import read_nifti

    if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        return read_nifti(path), None
    if path.exists():
        series = read_dicom_series(path, series_uid=series_uid)
        return series.volume, series
    raise InvalidImageError(f"--image {path} does not exist; pass a NIfTI file or a DICOM series folder")


def _segment(args: argparse.Namespace) -> int:
    import json
    import logging

    from rich.console import Console

    import sarcart
    from sarcart.inference.predictor import Predictor, PredictorConfig
    from sarcart.io.labels import write_labels
    from sarcart.io.nifti import write_mask

    log = logging.getLogger("sarcart.segment")
    image, series = _read_input(args.image, args.series_uid)
    cfg = PredictorConfig(tta=args.tta, subvoxel=args.subvoxel, device=args.device,
                          postprocess=not args.no_postprocess)
    pred = Predictor(args.model, config=cfg, store=args.store)
    seg = pred(image)
    out: Path = args.out
    write_labels(seg.labels, seg.spec, out / "labels.nii.gz")
    for name, m in seg.masks.items():
        write_mask(m, out / "masks" / f"{name}.nii.gz")
    vols = seg.volumes_cc()
    written = ["labels.nii.gz", "masks/"]
    if series is not None:
        from sarcart.io.rtstruct_write import write_rtstruct

        present = {n: m for n, m in seg.masks.items() if vols[n] > 0}
        for n in set(seg.masks) - set(present):
            log.warning("%s is empty: left out of the RTSTRUCT", n)
        if present:
            label = f"ensemble of {len(seg.members)}" if seg.members else f"{seg.model} v{seg.version}"
            models = f"models {', '.join(seg.members)}" if seg.members else f"model {seg.model} version {seg.version}"
            write_rtstruct(present, series, out / "rtstruct.dcm", label=label[:16],
                           description=f"{models}, TTA {'on' if seg.tta else 'off'}"
                           f"{', sub-voxel phases' if seg.subvoxel else ''}")
            written.append("rtstruct.dcm")
    info = {"model": seg.model, "version": seg.version, "source": pred.source, "members": seg.members, "tta": seg.tta,
            "subvoxel": seg.subvoxel, "seconds": round(seg.seconds, 2), "volumes_cc": vols, "postprocessing": seg.notes,
            "notice": sarcart.NOT_FOR_CLINICAL_USE}
    (out / "segmentation.json").write_text(json.dumps(info, indent=1))
    con = Console()
    con.print(f"{seg.model} v{seg.version}: {seg.seconds:.1f} s -> {out} ({', '.join(written)})")
    con.print("  " + ", ".join(f"{k} {v:.1f} cc" for k, v in vols.items()))
    return 0


def _cv_report(args: argparse.Namespace) -> tuple:  # type: ignore[type-arg]
    import pandas as pd

    from sarcart.errors import ConfigError

    files = sorted(Path(args.from_cv).glob("fold*/validation.csv"))
    if not files:
        raise ConfigError(f"no fold*/validation.csv under {args.from_cv}; train the folds first")
    table = pd.concat([pd.read_csv(f).assign(fold=f.parent.name) for f in files], ignore_index=True)
    meta = {"model": f"{Path(args.from_cv).name} cross-validation ({len(files)} folds)", "source": str(args.from_cv),
            "folds": [f.parent.name for f in files], "tta": False, "postprocessing": False}
    return table, meta


def _evaluate(args: argparse.Namespace) -> int:

    from sarcart.errors import ConfigError
    from sarcart.training.evaluation import write_report

    if args.from_cv:
        table, meta = _cv_report(args)
    elif args.model and args.data:
        table, meta = _score(args)
    else:
        raise ConfigError("evaluate needs --model and --data, or --from-cv TASK_DIR")
    summary = write_report(table, args.out, meta=meta)
    _print_summary(summary, meta)
    return 0


def _score(args: argparse.Namespace) -> tuple:  # type: ignore[type-arg]
    from sarcart.errors import ConfigError
    from sarcart.inference.predictor import Predictor, PredictorConfig, bundle_subvoxel, member_names
    from sarcart.tracking import hash_id
    from sarcart.training.dataset import fold_entries, load_datalist
    from sarcart.training.evaluation import evaluate_cases

    data = load_datalist(args.data)
    entries = data["training"] if args.fold is None else fold_entries(data, args.fold)
    pred = Predictor(args.model, config=PredictorConfig(tta=args.tta, subvoxel=args.subvoxel, device=args.device,
                                                        postprocess=not args.no_postprocess), store=args.store)
    subvoxel = any(bundle_subvoxel(b) for b in pred.bundles) if args.subvoxel is None else args.subvoxel
    structures = [s for s in pred.structures if s in data["structures"]]
    if not structures:
        raise ConfigError(f"the model segments {', '.join(pred.structures)} and {args.data} labels "
                          f"{', '.join(data['structures'])}: no structure to score; pass a datalist of this model's "
                          f"structures")
    table = evaluate_cases(pred.masks, entries, structures, case_key=hash_id, ring_mm=args.ring_mm,
                           ptv_margin_mm=args.ptv_margin_mm)
    members = member_names(pred.bundles)
    model = members[0] if len(members) == 1 else f"ensemble of {len(members)}: {', '.join(members)}"
    meta = {"model": model, "source": pred.source, "tta": args.tta,
            "subvoxel": subvoxel, "postprocessing": not args.no_postprocess, "datalist": str(args.data), "fold": args.fold, "ring_mm": args.ring_mm, "ptv_margin_mm": args.ptv_margin_mm}
    return table, meta


def _print_summary(summary: dict, meta: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    tab = Table(title=f"{summary['n_cases']} case(s), {meta['model']}")
    for col in ("structure", "region", "metric", "n", "mean [95% CI]", "median [95% CI]"):
        tab.add_column(col)
    for m in summary["metrics"]:
        if m["metric"] in ("dice", "hd95_mm"):
            ci, mci = m["mean_ci95"], m["median_ci95"]
            fmt = (lambda v: "nan" if v is None else f"{v:.3f}")
            tab.add_row(m["structure"], m["region"], m["metric"], str(m["n"]),
                        f"{fmt(m['mean'])} [{fmt(ci[0])}, {fmt(ci[1])}]", f"{fmt(m['median'])} [{fmt(mci[0])}, {fmt(mci[1])}]")
    Console().print(tab)
    Console().print("wrote metrics.csv, summary.json, boxplot.png")
