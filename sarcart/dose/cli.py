"""``sarcart plan`` and ``sarcart dvh``: per-fraction (re-)planning and DVH extraction from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from sarcart.errors import InvalidImageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("plan", help="optimise a fraction's IMRT plan (6 MV FFF MR-linac model; research only)")
    p.add_argument("--image", required=True, type=Path, help="image.nii.gz or a DICOM MR series folder")
    p.add_argument("--structures", required=True, type=Path,
                   help="folder of <NAME>.nii.gz masks (or labels.nii.gz + labels.json), or an RTSTRUCT file")
    p.add_argument("--prescription", required=True, type=Path, help="prescription YAML (configs/prescriptions/)")
    p.add_argument("--painting", type=Path, help="course-dose prescription map (Gy) on the image grid")
    p.add_argument("--warm-start", type=Path, help="previous plan folder (its plan_state.npz)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to compute")
    p.add_argument("--ct", type=Path, help="CT / synthetic CT in HU on the image grid (replaces bulk densities)")
    p.add_argument("--no-second-check", action="store_true", help="skip the independent dose recomputation")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=_plan)

    d = sub.add_parser("dvh", help="DVHs of structures on a dose (RTDOSE or NIfTI) -> CSV")
    d.add_argument("--dose", required=True, type=Path, help="rtdose.dcm or dose.nii.gz (Gy)")
    d.add_argument("--structures", required=True, type=Path, help="folder of <NAME>.nii.gz masks, or an RTSTRUCT")
    d.add_argument("--supersample", type=int, default=4, help="RTSTRUCT input: sub-pixels per dose pixel and axis")
    d.add_argument("--out", required=True, type=Path, help="CSV file (cumulative DVH); a _summary.csv is written beside")
    d.set_defaults(func=_dvh)


def load_image(path: Path):
    """``(Volume, DicomSeries | None)`` from a NIfTI file or a DICOM series folder."""
    from sarcart.io.dicom_series import read_dicom_series
    from sarcart.io.nifti import read_nifti

    if path.is_dir():
        series = read_dicom_series(path)
        return series.volume, series
    return read_nifti(path), None


def load_structures(path: Path, reference) -> dict:
    """Masks keyed by canonical name from a mask folder, a label map folder or an RTSTRUCT file."""
    from sarcart.io.labels import labels_to_masks, read_labels
    from sarcart.io.nifti import read_mask
    from sarcart.io.rtstruct import read_rtstruct
    from sarcart.io.structures import canonical_name

    if path.is_file():
        return read_rtstruct(path, reference).masks
    if (path / "labels.nii.gz").is_file():
        vol, spec = read_labels(path / "labels.nii.gz")
        return labels_to_masks(vol, spec)
    files = sorted(path.glob("*.nii*"))
    if not files:
        raise InvalidImageError(f"no masks in {path}: expected <NAME>.nii.gz files, labels.nii.gz or an RTSTRUCT file")
    out = {}
    for f in files:
        name = f.name.split(".nii")[0]
        out[canonical_name(name) or name] = read_mask(f)
    return out


def _plan(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console

    import sarcart
    from sarcart.dose.machine import NOT_COMMISSIONED
    from sarcart.dose.outputs import write_plan_outputs
    from sarcart.dose.plan import plan_fraction
    from sarcart.dose.prescription import load_prescription
    from sarcart.dose.second_check import second_check
    from sarcart.io.dicom_write import PatientStudy
    from sarcart.io.nifti import read_nifti

    con = Console(stderr=True)
    presc = load_prescription(args.prescription)
    image, series = load_image(args.image)
    masks = load_structures(args.structures, series if series is not None else image.geometry)
    for name, m in masks.items():
        image.geometry.require_same(m.geometry, what=f"structure {name}", tol_mm=1e-2)
    painting = read_nifti(args.painting) if args.painting else None
    ct = read_nifti(args.ct) if args.ct else None
    warm = None
    if args.warm_start:
        state = Path(args.warm_start) / "plan_state.npz"
        if not state.is_file():
            raise InvalidImageError(f"--warm-start {args.warm_start} has no plan_state.npz; pass a sarcart plan folder")
        warm = dict(np.load(state))
    con.print(f"[bold]sarcart plan[/bold] {presc.name}: {presc.dose_gy:g} Gy in {presc.fractions} fractions "
              f"({sarcart.NOT_FOR_CLINICAL_USE}; {NOT_COMMISSIONED})")

    def show(i: int, f: float) -> None:
        if i % 10 == 0:
            con.print(f"  iteration {i:4d}  objective {f:.5g}")

    result = plan_fraction(image, masks, presc, painting=painting, warm_start=warm, device=args.device, ct=ct,
                           callback=show)
    check = None if args.no_second_check or not presc.settings.second_check else second_check(result)
    patient = PatientStudy.from_dataset(series.header) if series is not None else None
    rs_uid = ""
    if args.structures.is_file():
        import pydicom

        rs_uid = str(pydicom.dcmread(args.structures, stop_before_pixels=True).SOPInstanceUID)
    paths = write_plan_outputs(result, args.out, patient=patient, rtstruct_uid=rs_uid, check=check,
                               frame_of_reference_uid=series.frame_of_reference_uid if series is not None else "")
    _summary(con, result, check)
    con.print(f"wrote {', '.join(p.name for p in paths.values())} to {args.out}")
    return 0


def _summary(con, result, check) -> None:
    from rich.table import Table

    from sarcart.dose.outputs import plan_metrics

    m = plan_metrics(result)
    t = Table(title="plan (course doses, Gy)")
    for col in ("structure", "cc", "mean", "D98", "D95", "D2", "max"):
        t.add_column(col)
    for n, s in m["structures"].items():  # type: ignore[union-attr]
        t.add_row(n, *(f"{s[k]:.2f}" for k in ("volume_cc", "mean_gy", "D98_gy", "D95_gy", "D2_gy", "max_gy")))
    con.print(t)
    for c in m["constraints"]:  # type: ignore[union-attr]
        con.print(f"  {c['structure']} {c['kind']} {c['dose_gy']:g} Gy: {c['value']:.3g} (limit {c['limit']:.3g}) "
                  + ("[green]met[/green]" if c["met"] else "[red]NOT MET[/red]"))
    if "painting" in m:
        pq = m["painting"]
        con.print(f"  painting: QF {pq['qf']:.4f}, within +-5 % {100 * pq['within_5pct']:.1f} %")  # type: ignore[index]
        if "painting_eval" in m:  # the painted region outside the excluded organs' PRV
            pe = m["painting_eval"]
            con.print(f"  painting on the evaluation PTV: QF {pe['qf']:.4f}, "  # type: ignore[index]
                      f"within +-5 % {100 * pe['within_5pct']:.1f} %")  # type: ignore[index]
    if check is not None:
        con.print(f"  second check: gamma {check.gamma_criteria} pass {100 * check.gamma_pass_rate:.1f} % "
                  f"({check.n_points} points)")
    con.print(f"  timings {', '.join(f'{k} {v:.1f} s' for k, v in result.timings_s.items())}")


def _dvh(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sarcart.dose.dvh import DVH, dvh_from_contours
    from sarcart.dose.outputs import write_dvh_csv
    from sarcart.dose.plan import resample
    from sarcart.io.nifti import read_nifti
    from sarcart.io.rtdose import read_rtdose
    from sarcart.io.rtstruct import list_rois

    dose = read_rtdose(args.dose).dose if args.dose.suffix.lower() == ".dcm" else read_nifti(args.dose)
    if args.structures.is_file():
        dvhs = {r.canonical or r.name: dvh_from_contours(dose, args.structures, r.number, supersample=args.supersample)
                for r in list_rois(args.structures) if r.n_contours}
    else:
        masks = load_structures(args.structures, dose.geometry)
        dvhs = {}
        for n, m in masks.items():
            mm = m if m.geometry.is_close(dose.geometry, tol_mm=1e-2) else resample(m, dose.geometry, is_mask=True)
            if mm.array.any():
                dvhs[n] = DVH.from_mask(n, dose, mm)
    if not dvhs:
        raise InvalidImageError("no non-empty structure to compute a DVH for")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_dvh_csv(dvhs, args.out)
    keys = ("volume_cc", "mean_gy", "min_gy", "max_gy", "D98_gy", "D95_gy", "D50_gy", "D2_gy", "D0.5cc_gy")
    summary = args.out.with_name(args.out.stem + "_summary.csv")
    lines = ["structure," + ",".join(keys)]
    lines += [n + "," + ",".join(f"{d.summary()[k]:.4f}" for k in keys) for n, d in dvhs.items()]
    summary.write_text("\n".join(lines) + "\n")
    Console(stderr=True).print("\n".join(lines).replace(",", "  "))
    return 0
