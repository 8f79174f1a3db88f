"""Benchmark: per-fraction re-optimisation, influence recomputation and dose painting (sarcart.dose).

On a synthetic retroperitoneal patient from ``sarcart synth`` (3 mm grid, 15 beams):

1. plan fx00 from scratch (reference plan);
2. re-plan fx01 warm-started from fx00 (the online adaptive case), timed end to end: influence
   (ray tracing + sparse matrix), optimisation, leaf sequencing + segment MU, final dose from the
   segments on every voxel of the calculation volume;
3. dose painting on fx01: the hypoxic sub-volume grown by 3 mm gets 60 Gy, the rest of the PTV 48 Gy,
   a 5 mm linear ramp between; QF and the fraction of voxels within +-5 % after sequencing with the
   bowel and kidney limits met, and again after a 2 mm set-up shift (dose shifted along +-x, +-y, +-z),
   on the whole PTV, on the evaluation PTV (PTV minus the bowel PRV, where painting is optimised) and on
   the overlap (PTV within the bowel PRV, where the hard bowel limit wins).

``--plan-threads 1,2`` times the warm re-optimisation with each torch thread count (``settings.threads``),
interleaved in the same run, to show the OpenMP oversubscription effect on a shared machine.
``--models three-term,two-term`` runs the whole sequence with each beam model in the same run: the
engine's three-term ``mrlinac_6fff()`` and the two-term ``mrlinac_6fff_two_term()`` it replaced.

Run:  .venv/bin/python benchmarks/bench_dose_reopt.py [--cohort DIR] [--repeats N] [--device cpu|cuda]
      [--plan-threads 1[,2]] [--models three-term[,two-term]]
(without --cohort a one-patient cohort is generated with ``sarcart synth`` into a temporary folder).
The table printed at the end is what goes into BENCHMARKS.md. Research only: the beam model is not
commissioned on MR-linac data.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from sarcart.dose.evaluation import painting_quality
from sarcart.dose.machine import BeamModel, mrlinac_6fff, mrlinac_6fff_two_term
from sarcart.dose.outputs import plan_metrics
from sarcart.dose.plan import PlanResult, plan_fraction, plan_state
from sarcart.dose.prescription import PaintingSpec, load_prescription
from sarcart.io.labels import labels_to_masks, read_labels
from sarcart.io.nifti import read_mask, read_nifti

REPO = Path(__file__).resolve().parents[1]
NAMES = ("BODY", "GTV", "BOWEL", "KIDNEY_L", "KIDNEY_R", "BONE", "GAS")
MODELS = {"three-term": mrlinac_6fff, "two-term": mrlinac_6fff_two_term}


def _cohort(path: Path | None) -> Path:
    if path is not None:
        return path
    out = Path(tempfile.mkdtemp(prefix="sarcart-bench-")) / "cohort"
    subprocess.run([sys.executable, "-m", "sarcart.cli", "synth", "--out", str(out), "--patients", "1",
                    "--fractions", "1", "--site", "retroperitoneum", "--spacing", "3,3,3", "--seed", "0",
                    "--no-progress", "--workers", "1"], check=True, cwd=REPO)
    return out


def _fraction(patient: Path, k: int) -> tuple:
    fx = patient / f"fx{k:02d}"
    image = read_nifti(fx / "image.nii.gz")
    labels, spec = read_labels(fx / "labels.nii.gz")
    masks = {n: m for n, m in labels_to_masks(labels, spec).items() if n in NAMES and m.array.any()}
    if (fx / "hypoxia.nii.gz").is_file():
        masks["HYPOXIA"] = read_mask(fx / "hypoxia.nii.gz")
    return image, masks


def _row(label: str, r: PlanResult, total_s: float) -> dict[str, object]:
    m = plan_metrics(r)
    s = m["structures"]
    cons = {c["structure"]: c for c in m["constraints"]}
    return {"case": label, "PTV cc": s["PTV"]["volume_cc"], "beamlets": int(r.info["n_bixels"]),
            "grid": "x".join(str(n) for n in r.dose.geometry.shape), "calc voxels": int(r.info["n_points_body"]),
            "opt voxels": int(r.info["n_points_opt"]), "segments": len(r.segments),
            "iterations": int(r.info["iterations"]), **{f"{k} s": v for k, v in r.timings_s.items()},
            "total s": total_s, "PTV D95": s["PTV"]["D95_gy"], "PTV D2": s["PTV"]["D2_gy"],
            "PTV_EVAL D95": s.get("PTV_EVAL", {}).get("D95_gy", float("nan")),
            "bowel V35.5 cc": cons.get("BOWEL", {}).get("value", float("nan")),
            "limits met": all(c["met"] for c in m["constraints"]),
            "seq. loss": f"{r.info['objective_fluence']:.3g}->{r.info['objective_segments']:.3g}"}


def _regions(r: PlanResult) -> dict[str, np.ndarray]:
    """Painted voxels of the whole PTV, of the evaluation PTV and of the overlap with the excluded organs' PRV."""
    target = r.masks[r.prescription.target].array & (r.painting_map.array > 0)
    out = {"PTV": target}
    ev = r.masks.get(r.prescription.target + "_EVAL")
    if ev is not None:
        out["PTV_EVAL"] = target & ev.array
        out["overlap"] = target & ~ev.array
    return out


def _painting(r: PlanResult) -> dict[str, dict[str, float]]:
    """QF / within-5 % per region, unshifted and with the dose shifted by 2 mm along each axis (6 shifts)."""
    pmap, course = r.painting_map.array, r.course_dose.array
    shifted = []
    for axis in range(3):
        for sign in (-1, 1):
            shift = [0.0, 0.0, 0.0]
            shift[axis] = sign * 2.0 / r.dose.geometry.spacing_mm[axis]
            shifted.append(ndimage.shift(course, shift, order=1, mode="nearest"))
    out = {}
    for name, sel in _regions(r).items():
        q0 = painting_quality(course[sel], pmap[sel])
        qs = [painting_quality(d[sel], pmap[sel]) for d in shifted]
        out[name] = {"voxels": int(sel.sum()), "QF": q0["qf"], "within5": q0["within_5pct"],
                     "QF shift mean": float(np.mean([q["qf"] for q in qs])),
                     "QF shift worst": float(np.max([q["qf"] for q in qs])),
                     "within5 shift mean": float(np.mean([q["within_5pct"] for q in qs])),
                     "within5 shift worst": float(np.min([q["within_5pct"] for q in qs]))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, help="a sarcart synth cohort (retroperitoneal patient first)")
    ap.add_argument("--repeats", type=int, default=1, help="repeats of the warm re-optimisation (median reported)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch threads outside plan_fraction")
    ap.add_argument("--plan-threads", default="", help="comma-separated settings.threads values to time the warm "
                    "re-optimisation with (default: the prescription's)")
    ap.add_argument("--models", default="three-term", help=f"comma-separated beam models, of {sorted(MODELS)}")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or any(m not in MODELS for m in models):
        ap.error(f"--models must name some of {sorted(MODELS)}, got {args.models!r}")
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    patient = next(p for p in sorted(_cohort(args.cohort).iterdir()) if p.is_dir() and (p / "fx00").is_dir())
    presc = load_prescription(REPO / "configs/prescriptions/retroperitoneum_48gy_6fx.yaml")
    threads = [int(n) for n in args.plan_threads.split(",") if n.strip()] or [presc.settings.threads]
    rows, paint = [], {}
    for name in models:
        tag = f"{name}: " if len(models) > 1 else ""
        model_rows, rp = _sequence(patient, presc, MODELS[name](), threads, args)
        rows += [{**r, "case": tag + str(r["case"])} for r in model_rows]
        paint.update({f"{tag}{k}": v for k, v in _painting(rp).items()})
    _print(rows, paint, _fraction(patient, 1)[0], (load0, os.getloadavg()))
    return 0


def _sequence(patient: Path, presc, model: BeamModel, threads: list[int], args) -> tuple[list[dict], PlanResult]:
    """fx00 cold, fx01 warm (median of ``args.repeats`` per thread count), fx01 painted, with one beam model."""
    rows = []
    image0, masks0 = _fraction(patient, 0)
    t = time.perf_counter()
    ref = plan_fraction(image0, masks0, presc, device=args.device, model=model)
    rows.append(_row("fx00 cold", ref, time.perf_counter() - t))
    image1, masks1 = _fraction(patient, 1)
    state = {k: np.asarray(v) for k, v in plan_state(ref).items()}
    runs: dict[int, list] = {n: [] for n in threads}
    for _ in range(args.repeats):
        for n in threads:  # interleaved, so that every thread count sees the same machine load
            pn = presc.model_copy(update={"settings": presc.settings.model_copy(update={"threads": n})})
            t = time.perf_counter()
            r1 = plan_fraction(image1, masks1, pn, warm_start=state, device=args.device, model=model)
            runs[n].append((time.perf_counter() - t, r1))
    for n in threads:
        total, r1 = sorted(runs[n], key=lambda x: x[0])[len(runs[n]) // 2]
        rows.append(_row(f"fx01 warm, {n} thread(s) (median of {args.repeats})", r1, total))
    painted = presc.model_copy(update={"painting": PaintingSpec(boost_structure="HYPOXIA", boost_gy=60.0, grow_mm=3.0,
                                                                ramp_mm=5.0, weight=50.0)})
    t = time.perf_counter()
    rp = plan_fraction(image1, masks1, painted, warm_start={k: np.asarray(v) for k, v in plan_state(r1).items()},
                       device=args.device, model=model)
    rows.append(_row("fx01 painted 60/48 Gy", rp, time.perf_counter() - t))
    return rows, rp


def print_table(rows: list[dict[str, object]], fmt) -> None:
    """Rows (dicts) as a Markdown table on stdout; columns in first-seen order, ``fmt`` formats each value."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |")


def _print(rows: list[dict[str, object]], paint: dict[str, dict[str, float]], image, loads: tuple) -> None:
    print(f"# sarcart dose benchmark - {os.cpu_count()} CPU(s) visible, load avg (1/5/15 min) at start "
          f"{'/'.join(f'{x:.1f}' for x in loads[0])}, at end {'/'.join(f'{x:.1f}' for x in loads[1])}; "
          f"image {image.geometry.shape} at {image.geometry.spacing_mm} mm")
    print_table(rows, lambda v: f"{v:.1f}" if isinstance(v, float) else str(v))
    print("\npainting 60/48 Gy after sequencing (limits met: see the painted rows above), 2 mm shifts along +-x/y/z:")
    cols = ["voxels", "QF", "within5", "QF shift mean", "QF shift worst", "within5 shift mean", "within5 shift worst"]
    print("| region | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for name, q in paint.items():
        vals = [str(q["voxels"])] + [f"{100 * q[c]:.1f} %" if c.startswith("within") else f"{q[c]:.4f}" for c in cols[1:]]
        print(f"| {name} | " + " | ".join(vals) + " |")


if __name__ == "__main__":
    sys.exit(main())
