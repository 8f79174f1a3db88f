"""``sarcart demo``: the whole adaptive course on one synthetic patient, ending with a summary table.

1. ``sarcart synth``: one patient of the chosen site (retroperitoneal by default: bowel and kidneys next
   to the tumour, 48 Gy in 6 fractions; extremity: 54 Gy in 6) on a coarse 6 mm grid so that the
   course runs in minutes on 2 CPU cores (the clinical protocol is 1.5 x 1.5 x 3 mm; the demo says so);
2. ``sarcart course init``: the reference plan on fx00;
3. ``sarcart adapt`` for every fraction (shipped network when present, propagation otherwise);
4. ``sarcart course accumulate``: accumulation and the course report;
5. a terminal table per fraction: Dice against the phantom's truth, QA flags, adapt-or-not, PTV D95,
   bowel D0.5cc, kidney mean dose, painting QF and the time per stage.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import time
from pathlib import Path

from sarcart.adapt.config import CONFIG_ROOT, load_adapt_config

log = logging.getLogger(__name__)

DEMO_SPACING_MM = "6,6,6"
DEMO_SEED = 0
#: fx00 GTV of the retroperitoneal demo: the trial's 81 cc case (Blitzer et al., J Clin Med 2022;11:1042)
DEMO_RP_GTV_CC = 81.0


def synthesise(site: str, out: Path, *, fractions: int = 6, seed: int = DEMO_SEED) -> Path:
    """One synthetic patient (course layout) in ``out/cohort``; returns its folder."""
    import yaml

    cohort = out / "cohort"
    if not any(cohort.glob("*/course.yaml")):
        spec = {"patients": 1, "fractions": fractions, "site": site, "seed": seed, "workers": 1,
                "spacing_mm": [float(v) for v in DEMO_SPACING_MM.split(",")]}
        if site == "retroperitoneum":
            spec["tumour_cc"] = [DEMO_RP_GTV_CC, DEMO_RP_GTV_CC]
        out.mkdir(parents=True, exist_ok=True)
        (out / "demo_spec.yaml").write_text(yaml.safe_dump(spec))
        subprocess.run([sys.executable, "-m", "sarcart.cli", "synth", "--spec", str(out / "demo_spec.yaml"),
                        "--out", str(cohort), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    patient = next(p.parent for p in sorted(cohort.glob("*/course.yaml")))
    return _match_site_prescription(patient)


def _match_site_prescription(patient: Path) -> Path:
    """The phantom writes 48 Gy for every site; the demo course takes the dose of the site's shipped
    prescription (retroperitoneum 48 Gy / 6, extremity 54 Gy / 6: the trial's range)."""
    from sarcart.adapt.config import AdaptConfig, prescription_path
    from sarcart.dose.prescription import load_prescription
    from sarcart.io.course import load_course, write_course

    course = load_course(patient)
    p = load_prescription(prescription_path(AdaptConfig(), course.config.site))
    rx = course.config.prescription.model_copy(update={"dose_gy": p.dose_gy, "fractions": p.fractions})
    if rx != course.config.prescription:
        write_course(patient, course.config.model_copy(update={"prescription": rx}))
    return patient


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "adapt" if v else "predicted"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def print_summary(rows: list[dict], course_summary: dict, out: Path, seconds: float) -> None:
    """The demo's terminal table (rich)."""
    from rich.console import Console
    from rich.table import Table

    cols = ["fx", "adapted", "QA flags", "Dice GTV", "Dice bowel", "PTV D95 Gy", "bowel D0.5cc Gy",
            "bowel D0.5cc (true) Gy", "kidney mean Gy", "QF", "risk AUROC (true hypoxia)", "reg err mean mm", "time s", "t segment", "t painting",
            "t predicted_plan", "t reoptimise", "t outputs", "t report"]
    table = Table(title="sarcart demo - research software, NOT FOR CLINICAL USE (6 mm demo grid)")
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*[_fmt(r.get(c, float("nan"))) for c in cols])
    con = Console(width=220)
    con.print(table)
    acc, plan = course_summary["accumulated_physical"], course_summary["planned"]
    ptv = "PTV" if "PTV" in acc else next(iter(acc))
    con.print(f"accumulated {ptv} D95 {acc[ptv]['D95_gy']:.1f} Gy vs planned {plan[ptv]['D95_gy']:.1f} Gy; painting QF "
              f"accumulated {course_summary.get('painting_qf_physical_gy', float('nan')):.3f} vs planned "
              f"{course_summary.get('painting_qf_planned', float('nan')):.3f}")
    con.print(f"outputs: {out} (fraction reports: */fxNN/adapt/report.html; course: {course_summary['report']}); "
              f"total {seconds / 60:.1f} min")


def run_demo(*, site: str = "retroperitoneum", out: Path = Path("demo_out/course"), fractions: int | None = None,
             config: Path | None = None, device: str = "cpu", store: str | None = None) -> int:
    """Run the demo (module docstring); returns the exit code."""
    from sarcart.adapt.course_init import init_course
    from sarcart.adapt.course_summary import course_report, fraction_row
    from sarcart.adapt.pipeline import adapt_fraction
    from sarcart.io.course import load_course

    t0 = time.perf_counter()
    cfg = load_adapt_config(config or CONFIG_ROOT / "adapt" / "demo.yaml")
    patient = synthesise(site, out)
    course = load_course(patient, strict=True)
    init_course(course, cfg, device=device)
    n = fractions or course.config.prescription.fractions
    rows = []
    store = store or str(out / "mlruns")
    for k in range(1, n + 1):
        res = adapt_fraction(course, k, course.fraction(k).root / "adapt", config=cfg, device=device, store=store)
        rows.append(fraction_row(res.metrics))
    summary = course_report(course, patient / "course_report", config=cfg)
    print_summary(rows, summary, patient, time.perf_counter() - t0)
    return 0
