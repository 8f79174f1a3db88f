"""``sarcart course init``, ``sarcart adapt``, ``sarcart course accumulate`` and ``sarcart demo``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser("course", help="course set-up and course-level results (reference plan, accumulation)")
    csub = c.add_subparsers(dest="course_command", metavar="ACTION")
    i = csub.add_parser("init", help="reference plan on fx00 from its image and structures (+ course.yaml)")
    i.add_argument("--patient-dir", required=True, type=Path, help="patient folder (fx00/ with mr/ and rtstruct.dcm)")
    i.add_argument("--config", type=Path, help="adapt configuration YAML (default: configs/adapt/default.yaml values)")
    i.add_argument("--site", choices=("retroperitoneum", "upper_extremity", "lower_extremity"),
                   help="site, when course.yaml does not exist yet")
    i.add_argument("--dose", type=float, help="course dose (Gy), when course.yaml does not exist yet")
    i.add_argument("--fractions", type=int, help="number of fractions, when course.yaml does not exist yet")
    i.add_argument("--device", default="cpu", help="cpu or cuda")
    i.set_defaults(func=_init)
    a = csub.add_parser("accumulate", help="accumulated dose of the delivered fractions + course report")
    a.add_argument("--patient-dir", required=True, type=Path)
    a.add_argument("--out", type=Path, help="output folder (default <patient>/course_report)")
    a.add_argument("--config", type=Path)
    a.set_defaults(func=_accumulate)
    c.set_defaults(func=lambda args: (c.print_help(), 1)[1])

    p = sub.add_parser("adapt", help="one fraction: series -> contours + QA, adapt-or-not, plan, RTSTRUCT/RTPLAN/"
                                     "RTDOSE, metrics, report")
    p.add_argument("--patient-dir", required=True, type=Path)
    p.add_argument("--fraction", required=True, type=int, help="fraction number K (fxKK/)")
    p.add_argument("--out", type=Path, help="output folder (default <patient>/fxKK/adapt)")
    p.add_argument("--config", type=Path, help="adapt configuration YAML")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    p.add_argument("--store", help="MLflow store (folder or URI; default MLFLOW_TRACKING_URI or mlruns/)")
    p.set_defaults(func=_adapt)

    d = sub.add_parser("demo", help="synthesise a patient and run the whole adaptive course (a few minutes on CPU)")
    d.add_argument("--site", default="retroperitoneum", choices=("retroperitoneum", "upper_extremity", "lower_extremity"))
    d.add_argument("--out", type=Path, default=Path("demo_out/course"), help="output folder (default demo_out/course)")
    d.add_argument("--fractions", type=int, help="fractions to run (default: all of the course)")
    d.add_argument("--config", type=Path, help="adapt configuration (default configs/adapt/demo.yaml)")
    d.add_argument("--device", default="cpu")
    d.add_argument("--store", help="MLflow store (default <out>/mlruns)")
    d.set_defaults(func=_demo)


def _course(args: argparse.Namespace):
    from sarcart.io.course import CourseConfig, Prescription, load_course, write_course

    root: Path = args.patient_dir
    if not (root / "course.yaml").is_file() and getattr(args, "site", None):
        if args.dose is None or args.fractions is None:
            from sarcart.errors import ConfigError

            raise ConfigError("course.yaml is missing: give --site, --dose and --fractions to create it")
        write_course(root, CourseConfig(patient=root.resolve().name, site=args.site,
                                        prescription=Prescription(dose_gy=args.dose, fractions=args.fractions)))
    return load_course(root, strict=True)


def _init(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sarcart.adapt.config import load_adapt_config
    from sarcart.adapt.course_init import init_course

    res = init_course(_course(args), load_adapt_config(args.config), device=args.device)
    m = res["metrics"]
    Console().print(f"reference plan in {res['plan_dir']} ({res['timings_s']['total']:.1f} s): PTV D95 "
                    f"{m['structures']['PTV']['D95_gy']:.1f} Gy, limits met: {all(c['met'] for c in m['constraints'])}")
    return 0


def _adapt(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sarcart.adapt.config import load_adapt_config
    from sarcart.adapt.pipeline import adapt_fraction

    cfg = load_adapt_config(args.config)
    if args.no_mlflow:
        cfg = cfg.model_copy(update={"mlflow": False})
    course = _course(args)
    out = args.out or course.fraction(args.fraction).root / "adapt"
    res = adapt_fraction(course, args.fraction, out, config=cfg, device=args.device, store=args.store)
    t = ", ".join(f"{k} {v:.1f}" for k, v in res.timings_s.items())
    Console().print(f"fx{args.fraction:02d}: {res.decision.summary}\noutputs in {out}\nseconds: {t}")
    return 0


def _accumulate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sarcart.adapt.config import load_adapt_config
    from sarcart.adapt.course_summary import course_report

    course = _course(args)
    out = args.out or course.root / "course_report"
    summary = course_report(course, out, config=load_adapt_config(args.config))
    Console().print(f"course report: {summary['report']}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sarcart.adapt.demo import run_demo

    return run_demo(site=args.site, out=args.out, fractions=args.fractions, config=args.config, device=args.device,
                    store=args.store)
