"""Benchmark: patient-specific fine-tuning (``sarcart finetune``): gain on a held-out later fraction and its time.

A synthetic retroperitoneal patient of the frozen trufi test cohort (``configs/cohorts/trufi_test_snr20.yaml``,
seed 912001, patient SYN-RP-001 — never seen in the population training), regenerated with three daily fractions
(fx00 ... fx03; fx00-fx02 are byte for byte those of the two-fraction version used before) because the frozen
cohort stores only fx00/fx01; written once to ``mlruns/datasets/finetune_bench/snr20``. The population model is
fine-tuned on fx00 + fx01 (their labels as the stand-in for approved contours) and both models are scored on fx02
as the service delivers them (the predictor with post-processing, no TTA, on the image's own grid, over the
sub-voxel phases when the population bundle recommends them, as `trufi` 3.1 does); the keep rule picks the
structures the patient model is used for there (the first table, which is already the as-deployed score of
fx02). Then both models and the service's per-structure combination are run as deployed on **fx03**, a fraction
that took no part in fine-tuning or choosing: the check that the choice made on fx02 holds. The patient model is
registered in a temporary MLflow store unless ``--store``.

``--cross-validate``: the keep rule of ``cross_validate: true`` on fx00-fx02 (each held out in turn, a model
fine-tuned on the other two; the rule on the fold means), the deployed model fine-tuned on all three; the
outputs as deployed on fx03 only (fx02 was used).

Run:  .venv/bin/python benchmarks/bench_finetune.py [--model trufi] [--patient-dir DIR] [--epochs 6]
          [--iterations 10] [--lr 2e-4] [--threads 2] [--device cpu|cuda] [--repeats 1] [--fit-loss]
          [--cross-validate]
The tables printed at the end are what goes into BENCHMARKS.md. Research only, not for clinical use.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATIENT = REPO / "mlruns" / "datasets" / "finetune_bench" / "snr20" / "SYN-RP-001"


def _patient(path: Path | None) -> Path:
    if path is not None:
        return path
    if not (DEFAULT_PATIENT / "fx03" / "labels.nii.gz").is_file():
        from sarcart.phantom import load_spec, write_cohort

        spec = load_spec(REPO / "configs" / "cohorts" / "trufi_test_snr20.yaml", fractions=3, patients=1, workers=1)
        write_cohort(spec, DEFAULT_PATIENT.parent, show_progress=False)
    return DEFAULT_PATIENT


def _model(name: str) -> str:
    from sarcart.models.bundle import shipped_models

    if name in shipped_models() or Path(name).exists() or "://" in name or name.startswith("models:/"):
        return name
    fallback = REPO / "mlruns" / "train" / name / "all" / "bundle.pt"
    if fallback.is_file():
        print(f"(model {name!r} is not shipped yet; using {fallback.relative_to(REPO)})")
        return str(fallback)
    return name


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def main(argv: list[str] | None = None) -> int:
    from sarcart.training.config import OptimConfig
    from sarcart.training.finetune import FinetuneConfig, finetune

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="trufi")
    ap.add_argument("--patient-dir", type=Path)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--store", help="MLflow store (default: a temporary one)")
    ap.add_argument("--fit-loss", action="store_true", help="also score the loss on fx00+fx01 (4 more inferences)")
    ap.add_argument("--cross-validate", action="store_true", help="judge on fx00-fx02 each held out in turn")
    args = ap.parse_args(argv)
    patient, model = _patient(args.patient_dir), _model(args.model)
    cfg = FinetuneConfig(epochs=args.epochs, iterations_per_epoch=args.iterations, optim=OptimConfig(lr=args.lr),
                         threads=args.threads, fit_loss=args.fit_loss, cross_validate=args.cross_validate)
    split = {"fractions": [0, 1, 2]} if args.cross_validate else {"fractions": [0, 1], "holdout": 2}
    tmp = Path(tempfile.mkdtemp(prefix="sarcart-bench-finetune-"))
    load_before = _load()
    results = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        res = finetune(patient, model, **split, config=cfg, device=args.device,
                       out=tmp / f"run{r}", store=args.store or tmp / "mlruns")
        results.append((res, time.perf_counter() - t0))
    res = results[-1][0]
    iters = args.epochs * args.iterations
    ft_s = statistics.median(x.finetune_seconds for x, _ in results)
    judged = ("fold means, fx00/fx01/fx02 each held out in turn" if args.cross_validate else "held out fx02")
    print(f"\nfine-tuning {model} on {'+'.join(f'fx{i:02d}' for i in res.fit_fractions)} of {patient.name} "
          f"(sources: {res.sources}); {judged}")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPU(s) visible, device {args.device}, "
          f"{args.threads} torch thread(s); load average (1/5/15 min) before {load_before}, after {_load()}\n")
    print("| structure | Dice pop | Dice patient | gain | sDice 2 mm pop | sDice 2 mm patient | gain "
          "| HD95 pop (mm) | HD95 patient (mm) | gain (mm) | not worse |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in res.comparison.to_dict("records"):
        cells = []
        for m, fmt in (("dice", "{:.3f}"), ("surface_dice_2mm", "{:.3f}"), ("hd95_mm", "{:.1f}")):
            cells += [fmt.format(row[f"{m}_baseline"]), fmt.format(row[f"{m}_patient"]),
                      ("{:+.3f}" if m != "hd95_mm" else "{:+.1f}").format(row[f"{m}_gain"])]
        print(f"| {row['structure']} | " + " | ".join(cells) + f" | {'yes' if row['not_worse'] else 'NO'} |")
    print("\n| figure | value |\n|---|---|")
    runs = 4 if args.cross_validate else 1  # three folds and the deployed model
    print(f"| fine-tuning (median of {args.repeats}; {runs} fine-tuning(s)) | {ft_s:.0f} s ({runs} x {iters} "
          f"iterations, {ft_s / iters / runs:.2f} s/iteration) |")
    scored = ("3 folds x 2, 6" if args.cross_validate else
              "2 fit fractions + held-out, 6" if cfg.fit_loss else "held-out only, 2")
    print(f"| scoring both models ({scored} whole-image inferences) | {res.eval_seconds:.0f} s |")
    print(f"| whole command (incl. label maps, MLflow logging) | {statistics.median(w for _, w in results):.0f} s |")
    if cfg.fit_loss:
        print(f"| loss (Dice+CE) on fx00+fx01, population -> patient | {res.loss_before:.4f} -> {res.loss_after:.4f} |")
    decision = ("rejected" if not res.kept else f"kept (champion) for {', '.join(res.structures)}"
                + (f" (per structure; all-or-nothing: {'kept' if res.comparison['not_worse'].all() else 'rejected'})"
                   if cfg.per_structure else " (all-or-nothing)"))
    print(f"| decision | {decision} ({res.name} v{res.version}) |")
    gain = [r["dice_gain"] if r["structure"] in res.structures else 0.0
            for r in res.comparison.to_dict("records") if r["scored"]]
    print(f"| service - population Dice where judged, mean over structures | {sum(gain) / len(gain):+.3f} |")
    _as_deployed(patient, model, res, args.device)
    return 0


def _as_deployed(patient: Path, model: str, res, device: str,  # type: ignore[no-untyped-def]
                 fractions: tuple[int, ...] = (3,)) -> None:
    """Population, patient model and the service's per-structure combination through the predictor as the
    service runs them (post-processing, no TTA, the bundle's sub-voxel phases) on fx03, untouched by fine-tuning
    and by the choice: does the choice hold? (The judged fractions' as-deployed scores are the keep rule's table.)"""
    import numpy as np
    import pandas as pd

    from sarcart.inference.predictor import Predictor, PredictorConfig, bundle_subvoxel
    from sarcart.inference.service_adapter import merge, patient_structures
    from sarcart.io.course import load_course
    from sarcart.io.nifti import read_nifti
    from sarcart.training.finetune import approved_masks
    from sarcart.training.metrics import score_case

    pop = Predictor(model, config=PredictorConfig(device=device, tta=False, postprocess=True))
    pat = Predictor(res.bundle_path, config=PredictorConfig(device=device, tta=False, postprocess=True))
    chosen = patient_structures(pat.bundle, pop.structures)
    course = {f.index: f for f in load_course(patient).fractions}
    print(f"\nas deployed (predictor: largest component for GTV/kidneys, holes filled; no TTA; sub-voxel phases "
          f"{'on' if bundle_subvoxel(pop.bundle) else 'off'} as the bundle says); the service takes "
          f"{', '.join(chosen) or 'nothing'} from the patient model:\n")
    print("| fraction | structure | Dice pop | Dice patient | Dice service | sDice 2 mm pop | sDice patient "
          "| sDice service | HD95 pop (mm) | HD95 patient | HD95 service | from |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in fractions:
        if k not in course:
            continue
        image = read_nifti(course[k].image)
        truth = {s: m for s, m in approved_masks(course[k], image)[0].items() if m.any()}
        a, b = pop.masks(image), pat.masks(image)
        both = merge((a, {}, "population"), (b, {}, "patient"), chosen)[0]  # the service's combination
        t = {who: pd.DataFrame(score_case(m, truth, image.geometry.spacing_mm)).query("region == 'all'")
             .set_index("structure") for who, m in (("pop", a), ("pat", b), ("svc", both))}
        for s in pop.structures:
            if s not in truth:
                continue
            cells = [f"{t[w].at[s, m]:{f}}" for m, f in (("dice", ".3f"), ("surface_dice_2mm", ".3f"), ("hd95_mm", ".1f"))
                     for w in ("pop", "pat", "svc")]
            print(f"| fx{k:02d}{' (chose)' if k in res.holdouts else ''} | {s} | " + " | ".join(cells)
                  + f" | {'patient' if s in chosen else 'population'} |")
        gain = [t["svc"].at[s, "dice"] - t["pop"].at[s, "dice"] for s in pop.structures if s in truth]
        print(f"| fx{k:02d} | mean over structures | | | | | | | | | | service - population Dice "
              f"{np.mean(gain):+.3f} |")


if __name__ == "__main__":
    raise SystemExit(main())
