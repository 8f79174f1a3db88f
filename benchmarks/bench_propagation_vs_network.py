"""Contour propagation (the clinic's default) versus the network, per structure, on the frozen trufi test cohort.

    python benchmarks/bench_propagation_vs_network.py --model mlruns/train/trufi/all/bundle.pt \
        --raw mlruns/datasets/trufi_test_raw --out /work/runs/qa/propagation \
        [--network-cache /work/runs/qa/qa_flags/cache] [--qa-result /work/runs/qa/qa_flags/result.json] [--threads 1]

For every patient of every sub-cohort (course layout ``<sub>/<patient>/fx00, fx01``), on a 3 mm grid
(images linear, truth masks as fractions thresholded at 0.5; the network works at 3 mm anyway):

* ``propagation``: fx01 (today) registered to fx00 (the previous, "approved" fraction) with
  :func:`sarcart.inference.propagation.register` (rigid + demons), fx00's ground-truth contours carried
  onto fx01 with :func:`propagate`;
* ``network``: the model on fx01 (post-processing on; read from ``--network-cache`` when the QA benchmark
  already ran it on the same grid, else run here);
* ``no_registration``: fx00's contours copied unchanged (what the anatomy change alone costs);
* ``better_of_both``: the network, except where its QA flags fire (calibrated P(good) < 0.5 with the
  calibration of ``--qa-result``, or a fragment/edge/empty flag): then the propagated contour.

All are scored against the phantom's fx01 truth (Dice, HD95 in mm); summaries give the mean with a 95 %
percentile-bootstrap interval over patients, and the paired network - propagation difference with its
interval (the winner is named only when that interval excludes 0). The registration is also scored
against the phantom's true field (``fx01/deformation_to_ref.nii.gz``, same convention: x in fx01 ->
x + u(x) in fx00) with :func:`displacement_error_mm` inside the body and inside the four structures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_qa_flags import GRID_MM, load_model, on_grid

ROOT = Path(__file__).resolve().parents[1]
STRUCTURES = ["GTV", "BOWEL", "KIDNEY_L", "KIDNEY_R"]
METHODS = ("network", "propagation", "better_of_both", "no_registration")


def patients(raw: Path, per_sub: int | None = None) -> list[Path]:
    """Patient folders holding fx00 and fx01 (``raw/<sub>/<patient>``), at most ``per_sub`` per sub-cohort."""
    out = []
    for sub in sorted(p for p in raw.iterdir() if p.is_dir()):
        found = [p for p in sorted(sub.iterdir()) if (p / "fx00").is_dir() and (p / "fx01").is_dir()]
        out += found[:per_sub]
    return out


def network_masks(model: Any, image: Any, cache: Path | None) -> tuple[dict[str, np.ndarray], dict[str, float], str]:
    """The network's masks and raw confidences on ``image``'s grid (from the cache when it matches)."""
    from sarcart.io.geometry import Geometry

    if cache is not None and cache.is_file():
        z = np.load(cache)
        if Geometry.from_dict(json.loads(str(z["geometry"]))).is_close(image.geometry):
            structures = json.loads(str(z["structures"]))
            labels = z["labels"]
            return ({s: labels == k for k, s in enumerate(structures, 1)}, json.loads(str(z["confidence_raw"])),
                    "cache")
    from sarcart.inference.predictor import PredictorConfig, segment_image
    from sarcart.inference.qa import structure_confidences

    bundle, net = model()
    seg = segment_image(image, bundle, net, config=PredictorConfig(keep_probabilities=True, device="cpu"))
    conf = structure_confidences(seg.probabilities, seg.labels.array, seg.structures)
    return {s: seg.labels.array == k for k, s in enumerate(seg.structures, 1)}, conf, "run"


def displacement_errors(est: Any, truth_path: Path, fixed: Any, truth_masks: dict[str, np.ndarray]) -> dict:
    """Registration error against the true field, and the error of no registration (u = 0), in mm."""
    from sarcart.inference.propagation import displacement_error_mm
    from sarcart.io.geometry import Volume
    from sarcart.io.nifti import read_nifti

    truth = read_nifti(truth_path)
    a = fixed.array
    regions = {"body": a > 0.05 * np.percentile(a, 99), "structures": np.any(list(truth_masks.values()), axis=0)}
    zero = Volume(np.zeros_like(est.array), est.geometry)
    out = {}
    for name, m in regions.items():
        e, z = displacement_error_mm(est, truth, m), displacement_error_mm(zero, truth, m)
        out.update({f"reg_err_{name}_mean_mm": e["mean_mm"], f"reg_err_{name}_p95_mm": e["p95_mm"],
                    f"no_reg_err_{name}_mean_mm": z["mean_mm"], f"no_reg_err_{name}_p95_mm": z["p95_mm"]})
    return out


def registration_part(folder: Path, fixed: Any, moving: Any, masks: tuple[dict, dict], cache_dir: Path
                      ) -> tuple[dict, dict, dict, float]:
    """Register fx01 to fx00, propagate fx00's truth, copy it unchanged; cached per patient (``.npz``)."""
    from sarcart.inference.propagation import propagate, register
    from sarcart.io.geometry import Volume

    truth, prev = masks
    cache = cache_dir / f"{folder.parent.name}_{folder.name}.npz"
    if cache.is_file():
        z = np.load(cache)
        errs = json.loads(str(z["errors"]))
        return ({s: z[f"prop_{s}"] for s in prev}, {s: z[f"copy_{s}"] for s in prev}, errs, float(z["seconds"]))
    t0 = time.perf_counter()
    disp = register(fixed, moving)
    reg_s = time.perf_counter() - t0
    prop = {s: v.array for s, v in propagate({s: Volume(m, moving.geometry) for s, m in prev.items()}, disp).items()}
    zero = Volume(np.zeros_like(disp.array), disp.geometry)  # contours copied unchanged (world coordinates kept)
    copied = {s: v.array for s, v in propagate({s: Volume(m, moving.geometry) for s, m in prev.items()}, zero).items()}
    errs = displacement_errors(disp, folder / "fx01/deformation_to_ref.nii.gz", fixed, truth)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, errors=json.dumps(errs), seconds=reg_s, **{f"prop_{s}": m for s, m in prop.items()},
                        **{f"copy_{s}": m for s, m in copied.items()})
    return prop, copied, errs, reg_s


def one_patient(folder: Path, model: Any, args: argparse.Namespace, calibration: Any) -> list[dict]:
    """Every method on one patient: rows (patient, structure, method, dice, hd95_mm, ...)."""
    from sarcart.inference.qa import QAConfig, structure_qa
    from sarcart.io.geometry import Volume
    from sarcart.training.metrics import mask_metrics

    sub, pid = folder.parent.name, folder.name
    fixed, truth = on_grid(str(folder / "fx01/image.nii.gz"), str(folder / "fx01/labels.nii.gz"), STRUCTURES)
    moving, prev = on_grid(str(folder / "fx00/image.nii.gz"), str(folder / "fx00/labels.nii.gz"), STRUCTURES)
    prop, copied, errs, reg_s = registration_part(folder, fixed, moving, (truth, prev), args.out / "registration")
    cache = args.network_cache / f"{sub}_{pid}_fx01.npz" if args.network_cache else None
    net, conf, source = network_masks(model, fixed, cache)
    rows = []
    for s in STRUCTURES:
        q = structure_qa(s, Volume(net[s], fixed.geometry), config=QAConfig())
        p_good = calibration(conf[s])
        use_prop = p_good < 0.5 or bool(q["flags"])
        preds = {"network": net[s], "propagation": prop[s], "no_registration": copied[s],
                 "better_of_both": prop[s] if use_prop else net[s]}
        for method, pm in preds.items():
            m = mask_metrics(pm, truth[s], fixed.geometry.spacing_mm)
            rows.append({"sub": sub, "patient": pid, "structure": s, "method": method, "dice": m["dice"],
                         "hd95_mm": m["hd95_mm"], "network_p_good": p_good,
                         "chosen": ("propagation" if use_prop else "network") if method == "better_of_both" else "",
                         "network_source": source, "registration_s": round(reg_s, 1), **errs})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per structure and method: mean Dice/HD95 with CIs; network - propagation paired differences; winner."""
    from sarcart.training.metrics import bootstrap_ci, paired_difference_ci

    out: dict[str, Any] = {}
    for s in STRUCTURES:
        out[s] = {}
        val = {meth: {k: np.array([float(r[k]) for r in rows if r["structure"] == s and r["method"] == meth])
                      for k in ("dice", "hd95_mm")} for meth in METHODS}
        for meth in METHODS:
            out[s][meth] = {k: {"mean": float(np.nanmean(v)), "ci95": bootstrap_ci(v)} for k, v in val[meth].items()}
        dd = paired_difference_ci(val["network"]["dice"], val["propagation"]["dice"])
        dh = paired_difference_ci(val["network"]["hd95_mm"], val["propagation"]["hd95_mm"])
        win_d = "network" if dd[1] > 0 else "propagation" if dd[2] < 0 else "tie"
        win_h = "network" if dh[2] < 0 else "propagation" if dh[1] > 0 else "tie"
        chosen = [r["chosen"] for r in rows if r["structure"] == s and r["method"] == "better_of_both"]
        out[s]["network_minus_propagation"] = {"dice": dd, "hd95_mm": dh, "winner_dice": win_d, "winner_hd95": win_h}
        out[s]["better_of_both_used_propagation"] = f"{chosen.count('propagation')}/{len(chosen)}"
    keys = [k for k in rows[0] if k.startswith(("reg_err", "no_reg_err"))]
    per_patient = {(r["sub"], r["patient"]): r for r in rows}
    out["registration"] = {k: {"mean": float(np.mean([float(r[k]) for r in per_patient.values()])),
                               "ci95": bootstrap_ci(np.array([float(r[k]) for r in per_patient.values()]))}
                           for k in keys}
    out["registration"]["seconds_median"] = float(np.median([float(r["registration_s"]) for r in per_patient.values()]))
    out["n_patients"] = len(per_patient)
    return out


def print_table(summary: dict) -> None:
    f = (lambda v: f"{v:.3f}")
    g = (lambda v: f"{v:.1f}")
    print(f"\nload average (1, 5, 15 min): {tuple(round(x, 2) for x in os.getloadavg())}")
    print(f"{summary['n_patients']} patients (fx00 -> fx01), 3 mm grid; mean [95 % bootstrap CI]\n")
    print("| structure | method | Dice | HD95 (mm) |\n|---|---|---|---|")
    for s in STRUCTURES:
        for meth in METHODS:
            d, h = summary[s][meth]["dice"], summary[s][meth]["hd95_mm"]
            print(f"| {s} | {meth} | {f(d['mean'])} [{f(d['ci95'][0])}, {f(d['ci95'][1])}] | "
                  f"{g(h['mean'])} [{g(h['ci95'][0])}, {g(h['ci95'][1])}] |")
    print("\n| structure | Dice network - propagation | HD95 network - propagation (mm) | winner (Dice / HD95) "
          "| better-of-both used propagation |\n|---|---|---|---|---|")
    for s in STRUCTURES:
        c = summary[s]["network_minus_propagation"]
        d, h = c["dice"], c["hd95_mm"]
        print(f"| {s} | {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}] | {h[0]:+.1f} [{h[1]:+.1f}, {h[2]:+.1f}] | "
              f"{c['winner_dice']} / {c['winner_hd95']} | {summary[s]['better_of_both_used_propagation']} |")
    r = summary["registration"]
    print("\n| displacement error vs the phantom's true field (mm) | registration | no registration |\n|---|---|---|")
    for region in ("body", "structures"):
        for stat in ("mean", "p95"):
            a, b = r[f"reg_err_{region}_{stat}_mm"], r[f"no_reg_err_{region}_{stat}_mm"]
            print(f"| {stat} inside {region} | {g(a['mean'])} [{g(a['ci95'][0])}, {g(a['ci95'][1])}] | "
                  f"{g(b['mean'])} [{g(b['ci95'][0])}, {g(b['ci95'][1])}] |")
    print(f"\nregistration time: median {r['seconds_median']:.1f} s per patient (3 mm grid)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "mlruns/train/trufi/all/bundle.pt"))
    ap.add_argument("--raw", type=Path, default=ROOT / "mlruns/datasets/trufi_test_raw")
    ap.add_argument("--out", type=Path, default=Path("/work/runs/qa/propagation"))
    ap.add_argument("--network-cache", type=Path, help="folder of the QA benchmark's clean predictions")
    ap.add_argument("--qa-result", type=Path, help="result.json of bench_qa_flags.py (its calibration)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, help="only the first N patients")
    ap.add_argument("--per-sub", type=int, help="only the first N patients of every sub-cohort")
    ap.add_argument("--registration-only", action="store_true",
                    help="only register and propagate (cached in OUT/registration/); no network, no table")
    args = ap.parse_args(argv)
    import SimpleITK as sitk
    import torch

    from sarcart.inference.qa import QACalibration
    from sarcart.progress import progress

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    cal = QACalibration()
    if args.qa_result and args.qa_result.is_file():
        c = json.loads(args.qa_result.read_text())["calibration"]
        cal = QACalibration(a=c["a"], b=c["b"])
    loaded: dict[str, Any] = {}

    def model() -> Any:
        if "m" not in loaded:
            b = load_model(args.model, "final")
            loaded["m"] = (b, b.network("cpu"))
        return loaded["m"]

    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for folder in progress(patients(args.raw, args.per_sub)[:args.limit], "patients"):
        if args.registration_only:
            fixed, truth = on_grid(str(folder / "fx01/image.nii.gz"), str(folder / "fx01/labels.nii.gz"), STRUCTURES)
            moving, prev = on_grid(str(folder / "fx00/image.nii.gz"), str(folder / "fx00/labels.nii.gz"), STRUCTURES)
            registration_part(folder, fixed, moving, (truth, prev), args.out / "registration")
            continue
        rows += one_patient(folder, model, args, cal)
    if args.registration_only:
        return 0
    with (args.out / "rows.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = summarise(rows)
    summary["grid_mm"] = GRID_MM
    summary["calibration"] = {"a": cal.a, "b": cal.b}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print_table(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
