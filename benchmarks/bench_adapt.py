"""Benchmark: one whole adaptive fraction, series in -> all outputs, with the stage breakdown (sarcart.adapt).

On a synthetic retroperitoneal patient from ``sarcart synth`` (``--spacing``, default 3 x 3 x 3 mm; the
prescription's 3 mm dose grid, 15 beams): ``sarcart course init`` once (reference plan, timed), then
``sarcart adapt`` for fraction 1 ``--repeats`` times (median total reported; each repeat starts from the
same course state). Stages: read series, segmentation (registration + propagation, network when shipped),
targets, painting (maps/habitats/risk/prescription), predicted plan, decision, re-optimisation (only when
the predicted plan fails), outputs (RTSTRUCT/RTPLAN/RTDOSE/DVH/metrics) and report.

Run:  .venv/bin/python benchmarks/bench_adapt.py [--cohort DIR] [--spacing 3,3,3] [--repeats N] [--device cpu|cuda]
         [--force always|auto] [--threads 2]
      .venv/bin/python benchmarks/bench_adapt.py --check-course PATIENT_DIR   (after `sarcart demo`: dciodvfy on
         every fraction's RTSTRUCT/RTPLAN/RTDOSE, dicompyler-core DVH of RTSTRUCT+RTDOSE vs the pipeline's DVH,
         dose on automatic vs true contours, registration error and the accumulated vs planned numbers)
The table printed at the end is what goes into BENCHMARKS.md. Research only, not for clinical use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _patient(cohort: Path | None, spacing: str) -> Path:
    if cohort is None:
        cohort = Path(tempfile.mkdtemp(prefix="sarcart-bench-adapt-")) / "cohort"
        subprocess.run([sys.executable, "-m", "sarcart.cli", "synth", "--out", str(cohort), "--patients", "1",
                        "--fractions", "1", "--site", "retroperitoneum", "--spacing", spacing, "--seed", "0",
                        "--no-progress", "--workers", "1"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return next(p.parent for p in sorted(cohort.glob("*/course.yaml")))


def main(argv: list[str] | None = None) -> int:
    from sarcart.adapt.config import AdaptConfig, DecisionSettings
    from sarcart.adapt.course_init import init_course
    from sarcart.adapt.pipeline import adapt_fraction
    from sarcart.io.course import load_course, write_course

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path)
    ap.add_argument("--spacing", default="3,3,3")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--force", default="auto", choices=("auto", "always", "never"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="trufi", help="segmentation model ('' = propagation only)")
    ap.add_argument("--check-course", type=Path, help="check the outputs of an adapted course instead (see above)")
    args = ap.parse_args(argv)
    if args.check_course:
        return check_course(args.check_course)
    torch.set_num_threads(args.threads)
    patient = _patient(args.cohort, args.spacing)
    course = load_course(patient, strict=True)
    if course.config.prescription.fractions != 6:  # synth --fractions 1 writes "48 Gy in 1"; the course is 48 Gy in 6
        rx = course.config.prescription.model_copy(update={"fractions": 6})
        course = write_course(patient, course.config.model_copy(update={"prescription": rx}))
    cfg = AdaptConfig(decision=DecisionSettings(force=args.force), mlflow=False,
                      segment={"model": args.model or None})  # type: ignore[arg-type]
    t = time.perf_counter()
    init_course(course, cfg, device=args.device)
    init_s = time.perf_counter() - t
    runs = []
    for r in range(args.repeats):
        for sub in ("plan", "delivered", "predicted"):
            shutil.rmtree(course.fraction(1).root / sub, ignore_errors=True)
        res = adapt_fraction(course, 1, patient / f"bench_out_{r}", config=cfg, device=args.device)
        runs.append(res)
    runs.sort(key=lambda r: r.timings_s["total"])
    med = runs[len(runs) // 2]
    _print(med, init_s, args, course)
    return 0


def _print(res, init_s: float, args, course) -> None:
    from sarcart.io.nifti import read_nifti

    img = read_nifti(course.fraction(1).image)
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{os.cpu_count()} CPU(s) visible"
    print(f"# sarcart adapt benchmark - {dev}, torch threads {args.threads}, load avg {os.getloadavg()[0]:.1f}; "
          f"image {img.geometry.shape} at {img.geometry.spacing_mm} mm; median of {args.repeats}; "
          f"segmentation: {res.metrics['segmentation']['model']}")
    print(f"reference plan (course init): {init_s:.1f} s")
    print("| stage | seconds |\n|---|---|")
    for k, v in res.timings_s.items():
        print(f"| {k} | {v:.1f} |")
    h = res.metrics["headline"]
    print(f"\ndecision: {res.decision.summary}")
    for which in ("predicted", "delivered"):
        x = h[which]
        print(f"{which}: PTV D95 {x['PTV_D95_gy']:.1f} Gy, bowel D0.5cc {x['BOWEL_D0.5cc_gy']:.1f} Gy, kidneys mean "
              f"{x['KIDNEYS_mean_gy']:.1f} Gy, QF {x['painting_QF']:.3f}, limits met {bool(x['limits_met'])}")


def _dciodvfy_errors(path: Path) -> int:
    p = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return sum(ln.startswith("Error") for ln in (p.stdout + p.stderr).splitlines())


def check_course(patient: Path) -> int:
    """Per fraction: dciodvfy errors, dicompyler-core vs pipeline DVH (max relative difference of mean/max/volume)."""
    import json

    import pydicom
    import pydicom.dicomio

    pydicom.dicomio.read_file = pydicom.dcmread  # dicompyler-core 0.5.6 imports the name removed in pydicom 3
    from dicompylercore import dvhcalc

    print("| fx | adapted | dciodvfy errors (RS/RP/RD) | dicompyler vs ours, max rel. diff (mean, max, volume) | "
          "bowel D0.5cc auto / true (Gy) | kidney R mean auto / true (Gy) | reg. error BODY mean / p95 (mm) | "
          "GTV mean / p95 (mm) |")
    print("|---|---|---|---|---|---|---|---|")
    for fx in sorted(patient.glob("fx*/adapt")):
        m = json.loads((fx / "metrics.json").read_text())
        errs = "/".join(str(_dciodvfy_errors(fx / n)) for n in ("rtstruct.dcm", "rtplan.dcm", "rtdose.dcm"))
        ours = m["delivered"]["structures"]
        rois = {str(r.ROIName): int(r.ROINumber) for r in pydicom.dcmread(fx / "rtstruct.dcm").StructureSetROISequence}
        worst = 0.0
        for n in ("PTV", "GTV", "BOWEL", "KIDNEY_L", "KIDNEY_R"):
            if n in ours and ours[n]["mean_gy"] > 0.5:
                dc = dvhcalc.get_dvh(str(fx / "rtstruct.dcm"), str(fx / "rtdose.dcm"), rois[n])
                for a, b in ((dc.mean, ours[n]["mean_gy"]), (dc.max, ours[n]["max_gy"]), (dc.volume, ours[n]["volume_cc"])):
                    worst = max(worst, abs(a - b) / max(abs(b), 1e-9))
        t = m.get("truth", {})
        auto, true = t.get("dose_on_auto_contours", {}), t.get("dose_on_true_contours", {})
        reg = t.get("registration_error_mm", {})
        g = lambda d, n, k: d.get(n, {}).get(k, float("nan"))
        print(f"| {m['fraction']} | {m['adapted']} | {errs} | {100 * worst:.2f} % | {g(auto, 'BOWEL', 'D0.5cc_gy'):.1f} / "
              f"{g(true, 'BOWEL', 'D0.5cc_gy'):.1f} | {g(auto, 'KIDNEY_R', 'mean_gy'):.2f} / {g(true, 'KIDNEY_R', 'mean_gy'):.2f} | "
              f"{g(reg, 'body', 'mean_mm'):.1f} / {g(reg, 'body', 'p95_mm'):.1f} | {g(reg, 'gtv', 'mean_mm'):.1f} / "
              f"{g(reg, 'gtv', 'p95_mm'):.1f} |")
    summary = patient / "course_report" / "course_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        for key in ("planned", "accumulated_physical", "accumulated_eqd2"):
            x = s[key]
            print(f"{key}: PTV D95 {x['PTV']['D95_gy']:.1f} Gy, bowel D0.5cc {x['BOWEL']['D0.5cc_gy']:.1f} Gy, kidneys mean "
                  f"{x.get('KIDNEYS', {}).get('mean_gy', float('nan')):.2f} Gy")
        print(f"painting QF: planned {s.get('painting_qf_planned', float('nan')):.4f}, accumulated "
              f"{s.get('painting_qf_physical_gy', float('nan')):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
