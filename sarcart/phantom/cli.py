"""``sarcart synth``: write a synthetic TRUFI cohort in the course layout."""

from __future__ import annotations

import argparse
from pathlib import Path

_SITES = ("retroperitoneum", "upper_extremity", "lower_extremity", "mixed")


def _triple(text: str) -> tuple[float, float, float]:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        vals = [float(p) for p in parts]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected three numbers like 1.5,1.5,3 - got {text!r}") from exc
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected one or three numbers like 1.5,1.5,3 - got {text!r}")
    return vals[0], vals[1], vals[2]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "synth", help="generate a synthetic 0.35 T TRUFI cohort with ground truth (course layout)",
        description="Synthetic TRUFI patients x fractions: DICOM MR + RTSTRUCT + NIfTI labels, hypoxia, true "
        "deformation to fx00, cohort.csv. Options override --spec; see docs/phantom.md.",
    )
    p.add_argument("--out", type=Path, help="output folder (required)")
    p.add_argument("--patients", type=int, help="number of patients (default 1)")
    p.add_argument("--fractions", type=int, help="daily fractions F after the reference fx00 (default 6)")
    p.add_argument("--site", choices=_SITES, help="site, or mixed (cycles RP, UE, LE; default mixed)")
    p.add_argument("--seed", type=int, help="cohort seed (default 0); same seed -> identical cohort")
    p.add_argument("--spec", type=Path, help="YAML cohort spec (unknown keys rejected); options override it")
    p.add_argument("--snr", type=float, help="mean muscle signal / noise sigma (default 20)")
    p.add_argument("--hypoxia-cnr", type=float, dest="hypoxia_cnr",
                   help="normoxic - hypoxic tumour signal / sigma (default 1; 0 = no signature)")
    p.add_argument("--hypoxia-placement", choices=("biological", "random"), dest="hypoxia_placement",
                   help="biological (deep, next to necrosis; default) or random (independent of position)")
    p.add_argument("--banding", action="store_true", default=None, help="add off-resonance banding")
    p.add_argument("--spacing", type=_triple, dest="spacing_mm", help="voxel size mm, e.g. 1.5,1.5,3")
    p.add_argument("--fov", type=_triple, dest="fov_mm", help="field of view mm, e.g. 400,400,430")
    p.add_argument("--genomic-link", type=float, dest="genomic_link",
                   help="correlation of genomic score with hypoxic fraction, 0..1 (default 0.6)")
    p.add_argument("--from-real", type=Path, dest="from_real",
                   help="sts_mr_t1 folder: extremity anatomy from real T1 MRs (site must be an extremity)")
    p.add_argument("--shrink-per-fraction", type=float, dest="shrink_per_fraction",
                   help="GTV volume fraction lost per fraction (default 0.03)")
    p.add_argument("--workers", type=int, help="processes writing fractions (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_synth)


_FIELDS = ("patients", "fractions", "site", "seed", "snr", "hypoxia_cnr", "hypoxia_placement", "banding", "spacing_mm", "fov_mm",
           "genomic_link", "from_real", "shrink_per_fraction", "workers")


def _synth(args: argparse.Namespace) -> int:
    from sarcart.progress import make_console
    from rich.table import Table

    from sarcart.errors import ConfigError
    from sarcart.phantom.cohort import write_cohort
    from sarcart.phantom.config import load_spec, make_spec

    if args.out is None:
        raise ConfigError("--out is required: the folder to write the cohort into")
    given = {k: getattr(args, k) for k in _FIELDS if getattr(args, k) is not None}
    spec = load_spec(args.spec, **given) if args.spec else make_spec(**given)
    csv_path = write_cohort(spec, args.out, show_progress=not args.no_progress)
    table = Table(title=f"synthetic cohort -> {args.out} (research only, not for clinical use)")
    for col in ("patient", "site", "GTV cc", "last fx GTV cc", "hypoxic %", "necrotic %", "genomic", "grade"):
        table.add_column(col, justify="right" if col not in ("patient", "site") else "left")
    import csv

    with open(csv_path, newline="") as fh:
        for r in csv.DictReader(fh):
            table.add_row(r["patient"], r["site"], f"{float(r['tumour_cc']):.0f}",
                          f"{float(r['tumour_cc_last_fraction']):.0f}",
                          f"{100 * float(r['hypoxic_fraction_realised']):.0f}",
                          f"{100 * float(r['necrotic_fraction_realised']):.0f}",
                          f"{float(r['genomic_score']):+.2f}", r["grade"])
    make_console().print(table)
    make_console().print(f"{spec.patients} patient(s) x {spec.fractions + 1} fractions; spec: "
                    f"{Path(args.out) / 'cohort_spec.yaml'}; table: {csv_path}")
    return 0
