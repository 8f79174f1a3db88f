"""``sarcart convert`` and ``sarcart rtstruct``: DICOM <-> NIfTI for images and structure sets."""

from __future__ import annotations

import argparse
from pathlib import Path

from sarcart.errors import InvalidImageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("convert", help="DICOM series (+ RTSTRUCT) -> image.nii.gz and masks/<NAME>.nii.gz")
    p.add_argument("--series", required=True, type=Path, help="folder holding the DICOM image series")
    p.add_argument("--rtstruct", type=Path, help="RTSTRUCT file whose contours become masks")
    p.add_argument("--series-uid", help="SeriesInstanceUID to read when the folder holds several series")
    p.add_argument("--original-names", action="store_true", help="keep ROI names instead of canonical names")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=_convert)

    r = sub.add_parser("rtstruct", help="masks/<NAME>.nii.gz on a series' grid -> RTSTRUCT referencing it")
    r.add_argument("--series", required=True, type=Path, help="folder holding the DICOM image series")
    r.add_argument("--masks", required=True, type=Path, help="folder of <NAME>.nii.gz binary masks")
    r.add_argument("--series-uid", help="SeriesInstanceUID to use when the folder holds several series")
    r.add_argument("--label", default="sarcart", help="StructureSetLabel (max 16 characters)")
    r.add_argument("--out", required=True, type=Path, help="RTSTRUCT file to write")
    r.set_defaults(func=_rtstruct)


def _convert(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sarcart.io.dicom_series import read_dicom_series
    from sarcart.io.nifti import write_mask, write_nifti
    from sarcart.io.rtstruct import read_rtstruct

    series = read_dicom_series(args.series, series_uid=args.series_uid)
    out: Path = args.out
    write_nifti(series.volume, out / "image.nii.gz")
    lines = [f"image.nii.gz  {series.volume.geometry.shape}  spacing {series.volume.geometry.spacing_mm} mm"]
    if args.rtstruct:
        ss = read_rtstruct(args.rtstruct, series, canonical=not args.original_names)
        for name, mask in ss.masks.items():
            safe = name.replace("/", "_").replace(" ", "_")
            write_mask(mask, out / "masks" / f"{safe}.nii.gz")
            vol = mask.array.sum() * mask.geometry.voxel_volume_cc
            lines.append(f"masks/{safe}.nii.gz  {vol:.1f} cc" + ("  (EMPTY)" if vol == 0 else ""))
    Console().print("\n".join([f"wrote to {out}:"] + lines))
    return 0


def _rtstruct(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sarcart.io.dicom_series import read_dicom_series
    from sarcart.io.nifti import read_mask
    from sarcart.io.rtstruct_write import write_rtstruct

    files = sorted(Path(args.masks).glob("*.nii*"))
    if not files:
        raise InvalidImageError(f"no .nii/.nii.gz masks in {args.masks}; name them <STRUCTURE>.nii.gz")
    series = read_dicom_series(args.series, series_uid=args.series_uid)
    masks = {f.name.split(".nii")[0]: read_mask(f) for f in files}
    path = write_rtstruct(masks, series, args.out, label=args.label)
    Console().print(f"wrote {path} with {len(masks)} ROI(s): {', '.join(masks)}")
    return 0
