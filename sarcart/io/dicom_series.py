"""Read and write single-frame DICOM image series (MR Image Storage) with pydicom.

Reading sorts slices by their position along the slice normal (never by file name or
InstanceNumber), checks that they form one uniform stack and returns a :class:`DicomSeries` whose
volume carries the exact LPS geometry. Nothing is ever resampled: a stack that is not a uniform
grid (a missing slice, mixed orientations, gantry tilt) is rejected with an explanation, and so is a series
with fewer slices than its ImagesInAcquisition declares (a transfer cut at one end).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from sarcart.errors import InvalidDicomError
from sarcart.io.geometry import Geometry, Volume

log = logging.getLogger(__name__)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_IMAGE_SOP_CLASSES = {MR_IMAGE_STORAGE, CT_IMAGE_STORAGE}
_IMAGE_ATTRS = ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns", "PixelSpacing")
_SKIP_NAMES = {"DICOMDIR"}
_POS_TOL_MM = 0.01  # tolerance on slice positions / in-plane offsets
_SPACING_REL_TOL = 0.01  # 1 % of the slice spacing


@dataclass
class DicomSeries:
    """A DICOM image series read into memory.

    Attributes:
        volume: float32 volume indexed [i, j, k] (i along a row, j down a column, k across slices)
            in LPS mm, after the modality LUT (RescaleSlope/Intercept).
        sop_instance_uids: SOPInstanceUID of the slice at each k (needed to reference the images).
        header: the first slice's dataset without pixel data (patient, study, equipment tags).
        files: the file of each slice, in k order.
    """

    volume: Volume
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: list[str]
    header: Dataset
    files: list[Path] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", ""))


def _candidate_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise InvalidDicomError(f"series folder not found: {folder}; check the path")
    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.name.upper() not in _SKIP_NAMES
    ]
    if not files:
        raise InvalidDicomError(f"no files in {folder}; point to the folder that holds the DICOM series")
    return files


def _read_headers(files: Iterable[Path]) -> list[tuple[Path, Dataset]]:
    out, bad = [], []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
            bad.append(f"{f.name} ({type(exc).__name__}: {str(exc)[:80]})")
            continue
        out.append((f, ds))
    if bad:
        listed = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise InvalidDicomError(
            f"{len(bad)} file(s) are not readable DICOM: {listed}. "
            "Remove them from the series folder or re-export the series"
        )
    return out


def _is_image(ds: Dataset) -> bool:
    return all(a in ds for a in _IMAGE_ATTRS)


def _check_incomplete(headers: list[tuple[Path, Dataset]]) -> None:
    """An image-class object without its image attributes is truncated or broken, never 'non-image'."""
    for f, ds in headers:
        if str(ds.get("SOPClassUID", "")) in _IMAGE_SOP_CLASSES and not _is_image(ds):
            missing = [a for a in _IMAGE_ATTRS if a not in ds]
            raise InvalidDicomError(
                f"{f.name} is an image object ({ds.get('Modality', '?')}) but lacks {', '.join(missing)}: the file is "
                "truncated or incomplete. Re-send or re-export the series"
            )


def _select_series(headers: list[tuple[Path, Dataset]], series_uid: str | None, where: Path) -> list[tuple[Path, Dataset]]:
    _check_incomplete(headers)
    images = [(f, ds) for f, ds in headers if _is_image(ds)]
    others = [(f, ds) for f, ds in headers if not _is_image(ds)]
    enhanced = [f for f, ds in headers if str(ds.get("SOPClassUID", "")) == ENHANCED_MR_STORAGE]
    if enhanced:
        raise InvalidDicomError(
            f"{len(enhanced)} Enhanced (multi-frame) MR object(s) in {where}, e.g. {enhanced[0].name}; sarcart reads "
            "single-frame MR Image Storage: convert with dcmtk or export classic single-frame images"
        )
    if not images:
        kinds = sorted({str(ds.get("Modality", "?")) for _, ds in others})
        raise InvalidDicomError(
            f"{where} holds no image slices, only non-image objects (modality {', '.join(kinds)}); "
            "point to the folder of the MR series (an RTSTRUCT is passed separately)"
        )
    if others:
        log.warning("ignoring %d non-image object(s) in %s (e.g. %s)", len(others), where, others[0][0].name)
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for f, ds in images:
        groups[str(ds.get("SeriesInstanceUID", ""))].append((f, ds))
    if series_uid is not None:
        if series_uid not in groups:
            raise InvalidDicomError(
                f"series_uid {series_uid} is not in {where}; available: {_describe(groups)}"
            )
        return groups[series_uid]
    if len(groups) > 1:
        raise InvalidDicomError(
            f"{where} holds {len(groups)} image series: {_describe(groups)}. "
            "Choose one with series_uid=... (CLI: --series-uid)"
        )
    return next(iter(groups.values()))


def _check_declared_count(items: list[tuple[Path, Dataset]], where: Path) -> None:
    """Fewer slices than ImagesInAcquisition (0020,1002) declares: the series is still arriving or was cut.

    A 3D acquisition whose slices are all declared with one count (as scanners and sarcart's writer do) can be
    checked; without the attribute a series cut at one end looks complete (its spacing stays uniform).
    """
    declared = {str(ds.get("ImagesInAcquisition", "")).strip() for _, ds in items}
    acquisitions = {str(ds.get("AcquisitionNumber", "")).strip() for _, ds in items}
    if len(declared) != 1 or len(acquisitions) != 1:
        return  # absent, or several acquisitions / inconsistent headers: nothing reliable to compare
    try:
        n = int(next(iter(declared)))
    except ValueError:
        return
    if 0 < len(items) < n:
        raise InvalidDicomError(
            f"{where}: the series holds {len(items)} of the {n} slices its ImagesInAcquisition (0020,1002) "
            "declares: the transfer is incomplete or was cut. Re-send the complete series"
        )


def _describe(groups: dict[str, list[tuple[Path, Dataset]]]) -> str:
    parts = []
    for uid, items in groups.items():
        ds = items[0][1]
        parts.append(f"{uid} ({ds.get('Modality', '?')} '{ds.get('SeriesDescription', '')}', {len(items)} slices)")
    return "; ".join(parts)


def _stack_geometry(items: list[tuple[Path, Dataset]]) -> tuple[list[tuple[Path, Dataset]], Geometry]:
    """Sort slices along the normal and derive the grid; raise on anything non-uniform."""
    iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in items])
    if np.abs(iops - iops[0]).max() > 1e-4:
        n_orient = len({tuple(np.round(r, 4)) for r in iops})
        raise InvalidDicomError(
            f"the series mixes {n_orient} slice orientations (ImageOrientationPatient differs); it is not one "
            "3D stack: split it by orientation (e.g. localizer vs axial) and read the part you need"
        )
    row, col = iops[0, :3], iops[0, 3:]
    normal = np.cross(row, col)
    for key in ("Rows", "Columns"):
        if len({int(ds.get(key)) for _, ds in items}) > 1:
            raise InvalidDicomError(f"slices differ in {key}; the series is not one 3D stack")
    spacings = {tuple(round(float(v), 5) for v in ds.PixelSpacing) for _, ds in items}
    if len(spacings) > 1:
        raise InvalidDicomError(f"slices differ in PixelSpacing {sorted(spacings)}; the series is not one 3D stack")
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
    pos = ipp @ normal
    order = np.argsort(pos, kind="stable")
    items = [items[i] for i in order]
    ipp, pos = ipp[order], pos[order]
    dup = np.flatnonzero(np.diff(pos) < _POS_TOL_MM)
    if dup.size:
        raise InvalidDicomError(
            f"{dup.size + 1} slices share position {pos[dup[0]]:.2f} mm along the slice normal (e.g. "
            f"{items[dup[0]][0].name} and {items[dup[0] + 1][0].name}): duplicates or several echoes/time points. "
            "Remove the duplicates or split the series"
        )
    shear = ipp - ipp[0] - np.outer(pos - pos[0], normal)
    if np.abs(shear).max() > max(_POS_TOL_MM, 1e-3 * np.ptp(pos)):
        raise InvalidDicomError(
            f"slice origins drift in-plane by up to {np.abs(shear).max():.2f} mm (gantry tilt or sheared stack); "
            "sarcart does not resample silently: resample to an orthogonal grid first"
        )
    ps = [float(v) for v in items[0][1].PixelSpacing]  # (row spacing = along j, column spacing = along i)
    if len(items) > 1:
        gaps = np.diff(pos)
        dz = float(np.median(gaps))
        bad = np.flatnonzero(np.abs(gaps - dz) > max(_POS_TOL_MM, _SPACING_REL_TOL * dz))
        if bad.size:
            missing = int(round((gaps[bad].sum()) / dz)) - bad.size
            raise InvalidDicomError(
                f"non-uniform slice spacing: gaps of {np.round(gaps[bad], 3).tolist()} mm where {dz:.3f} mm is "
                f"expected, after the slice at {pos[bad[0]]:.2f} mm (about {max(missing, 1)} slice(s) missing). "
                "Re-send or re-export the complete series"
            )
    else:
        ds0 = items[0][1]
        dz = float(ds0.get("SpacingBetweenSlices", ds0.get("SliceThickness", 1.0)) or 1.0)
    direction = np.stack([row, col, normal], axis=1)
    geom = Geometry(
        shape=(int(items[0][1].Columns), int(items[0][1].Rows), len(items)),
        spacing_mm=(ps[1], ps[0], dz),
        origin_mm=tuple(ipp[0]),  # type: ignore[arg-type]
        direction=tuple(direction.reshape(-1)),
    )
    return items, geom


def read_dicom_series(
    folder: str | os.PathLike[str], *, series_uid: str | None = None
) -> DicomSeries:
    """Read one DICOM image series from a folder (searched recursively).

    Args:
        folder: folder holding the series (other series and non-image objects may be present).
        series_uid: SeriesInstanceUID to read when the folder holds several image series.

    Returns:
        A :class:`DicomSeries` with a float32 volume of shape (Columns, Rows, n_slices).

    Raises:
        InvalidDicomError: unreadable files, no or several series, mixed orientations, duplicated or
            missing slices (non-uniform spacing, or fewer than ImagesInAcquisition declares), gantry tilt,
            Enhanced multi-frame objects.
    """
    where = Path(folder)
    headers = _read_headers(_candidate_files(where))
    items, geom = _stack_geometry(_select_series(headers, series_uid, where))
    _check_declared_count(items, where)  # after the gap check, which names where a slice is missing
    slices = []
    for f, _ in items:
        try:
            ds = pydicom.dcmread(f)
            px = ds.pixel_array.astype(np.float32)
        except (ValueError, AttributeError, OSError, EOFError) as exc:
            raise InvalidDicomError(f"cannot decode pixel data of {f}: {exc}; re-export the series") from exc
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        slices.append(px.T * slope + intercept)  # (rows, cols) -> (i, j)
    array = np.ascontiguousarray(np.stack(slices, axis=-1), dtype=np.float32)
    first = items[0][1]
    if "FrameOfReferenceUID" not in first:
        raise InvalidDicomError(f"{items[0][0].name} has no FrameOfReferenceUID; the images cannot be placed in space")
    return DicomSeries(
        volume=Volume(array, geom),
        series_instance_uid=str(first.SeriesInstanceUID),
        study_instance_uid=str(first.StudyInstanceUID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        sop_class_uid=str(first.SOPClassUID),
        sop_instance_uids=[str(ds.SOPInstanceUID) for _, ds in items],
        header=first,
        files=[f for f, _ in items],
    )
