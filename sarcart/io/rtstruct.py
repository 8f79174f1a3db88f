"""RT Structure Set (RTSTRUCT): contours -> masks on an image grid, and masks -> RTSTRUCT.

Rasterisation rule (documented because readers differ): a voxel is inside a structure when its
centre lies inside an odd number of the structure's closed planar contours on that slice (even-odd
rule, so a contour drawn inside another one is a hole). Writing uses marching squares at the 0.5
iso-line of the mask, which separates inside from outside voxel centres, so reading back our own
RTSTRUCT returns the mask exactly up to diagonally touching voxels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from skimage.measure import find_contours

from sarcart.errors import GeometryMismatchError, InvalidDicomError
from sarcart.io.dicom_series import RTSTRUCT_STORAGE, DicomSeries
from sarcart.io.geometry import Geometry, Volume
from sarcart.io.structures import canonical_name

log = logging.getLogger(__name__)

_SLICE_TOL = 0.1
_CONTOUR_DATA = Tag(0x3006, 0x0050)  # contour plane may sit at most 0.1 voxel off a slice centre


@dataclass
class RoiInfo:
    """One ROI of a structure set."""

    number: int
    name: str
    canonical: str | None
    n_contours: int
    description: str = ""
    interpretation: str = ""


@dataclass
class StructureSet:
    """Masks read from an RTSTRUCT, keyed by canonical name (or the original name when unknown)."""

    masks: dict[str, Volume]
    rois: list[RoiInfo] = field(default_factory=list)
    frame_of_reference_uid: str = ""
    label: str = ""


def list_rois(path: str | os.PathLike[str]) -> list[RoiInfo]:
    """ROIs in an RTSTRUCT file with their canonical names and contour counts (no rasterisation)."""
    ds = _read(path)
    return _roi_infos(ds)


def _read(path: str | os.PathLike[str]) -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise InvalidDicomError(f"RTSTRUCT file not found: {p}; check the path")
    try:
        ds = pydicom.dcmread(p)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InvalidDicomError(f"cannot read {p} as DICOM: {exc}") from exc
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_STORAGE:
        raise InvalidDicomError(
            f"{p} is not an RT Structure Set (Modality {ds.get('Modality', '?')}, SOPClassUID "
            f"{ds.get('SOPClassUID', '?')}); pass the RTSTRUCT file"
        )
    return ds


def _roi_infos(ds: Dataset) -> list[RoiInfo]:
    counts = {int(c.ReferencedROINumber): len(c.get("ContourSequence", [])) for c in ds.get("ROIContourSequence", [])}
    obs = {int(o.ReferencedROINumber): o for o in ds.get("RTROIObservationsSequence", [])}
    out = []
    for r in ds.get("StructureSetROISequence", []):
        n = int(r.ROINumber)
        o = obs.get(n)
        out.append(
            RoiInfo(
                number=n,
                name=str(r.ROIName),
                canonical=canonical_name(str(r.ROIName)),
                n_contours=counts.get(n, 0),
                description=str(r.get("ROIDescription", "")),
                interpretation=str(o.get("ROIObservationDescription", "")) if o is not None else "",
            )
        )
    return out


def read_rtstruct(
    path: str | os.PathLike[str],
    reference: DicomSeries | Geometry,
    *,
    names: list[str] | None = None,
    canonical: bool = True,
    check_frame_of_reference: bool = True,
) -> StructureSet:
    """Rasterise the contours of an RTSTRUCT onto an image grid.

    Args:
        path: the RTSTRUCT file.
        reference: the image series the contours belong to (its frame of reference is checked) or
            just a grid.
        names: keep only these ROIs (canonical or original names); all by default.
        canonical: key masks by canonical name (``GTV_Mass`` -> ``GTV``); unknown names keep their
            own. When two ROIs map to one canonical name, the first is kept and a warning logged.
        check_frame_of_reference: refuse an RTSTRUCT whose frame of reference differs from the series'.

    Returns:
        A :class:`StructureSet` of boolean volumes on ``reference``'s grid.
    """
    ds = _read(path)
    geom = reference.volume.geometry if isinstance(reference, DicomSeries) else reference
    for_uids = {str(f.FrameOfReferenceUID) for f in ds.get("ReferencedFrameOfReferenceSequence", [])}
    if isinstance(reference, DicomSeries) and check_frame_of_reference and for_uids and \
            reference.frame_of_reference_uid not in for_uids:
        raise GeometryMismatchError(
            f"RTSTRUCT {Path(path).name} refers to frame of reference {sorted(for_uids)}, the image series to "
            f"{reference.frame_of_reference_uid}: the contours belong to another image. Pass the matching series, "
            "or register the images first (check_frame_of_reference=False only if you know they share coordinates)"
        )
    infos = _roi_infos(ds)
    contours = {int(c.ReferencedROINumber): c for c in ds.get("ROIContourSequence", [])}
    masks: dict[str, Volume] = {}
    for info in infos:
        key = info.canonical if canonical and info.canonical else info.name
        if names is not None and key not in names and info.name not in names:
            continue
        if key in masks:
            log.warning("ROI %r maps to %s, already taken by an earlier ROI; keeping the first", info.name, key)
            continue
        roi = contours.get(info.number)
        mask = np.zeros(geom.shape, dtype=bool)
        if roi is not None:
            _rasterise_roi(roi, geom, mask, info.name)
        masks[key] = Volume(mask, geom)
    return StructureSet(masks=masks, rois=infos, frame_of_reference_uid=next(iter(for_uids), ""),
                        label=str(ds.get("StructureSetLabel", "")))


def _rasterise_roi(roi: Dataset, geom: Geometry, mask: np.ndarray, name: str) -> None:
    nx, ny, nz = geom.shape
    dropped = 0
    by_slice: dict[int, list[np.ndarray]] = {}
    for c in roi.get("ContourSequence", []):
        if str(c.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
            continue
        idx = geom.world_to_index(_contour_points(c))
        k_f = float(np.mean(idx[:, 2]))
        if np.ptp(idx[:, 2]) > _SLICE_TOL * 2:
            raise InvalidDicomError(
                f"a contour of ROI {name!r} is not parallel to the image slices (spans {np.ptp(idx[:, 2]):.2f} "
                "slices); the RTSTRUCT was drawn on an image with another orientation"
            )
        k = int(round(k_f))
        if k < 0 or k >= nz:
            dropped += 1
            continue
        if abs(k_f - k) > _SLICE_TOL:
            log.warning("ROI %r: contour %.2f voxels off slice %d, assigned to it", name, abs(k_f - k), k)
        by_slice.setdefault(k, []).append(idx[:, :2])
    for k, polys in by_slice.items():
        mask[:, :, k] ^= fill_even_odd(polys, (nx, ny))
    if dropped:
        log.warning("ROI %r: %d contour(s) outside the image's slice range were ignored", name, dropped)


def fill_even_odd(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Voxel centres (integer (i, j)) inside an odd number of the closed polygons (scan-line fill).

    For every row i, each polygon edge with min(i0, i1) <= i < max(i0, i1) crosses the row at some
    j; a centre is inside when an odd number of crossings lie at or left of it. Vectorised over all
    edges of all polygons of one slice.

    Args:
        polygons: (n, 2) arrays of vertices in continuous index coordinates (i, j).
        shape: (nx, ny) of the slice.
    """
    nx, ny = shape
    counts = np.zeros((nx, ny + 1), dtype=np.int32)
    for p in polygons:
        i0, j0 = p[:, 0], p[:, 1]
        i1, j1 = np.roll(i0, -1), np.roll(j0, -1)
        lo = np.ceil(np.minimum(i0, i1)).astype(np.int64)
        n = np.ceil(np.maximum(i0, i1)).astype(np.int64) - lo
        keep = n > 0
        if not keep.any():
            continue
        edge = np.repeat(np.flatnonzero(keep), n[keep])
        start = np.repeat(np.cumsum(n[keep]) - n[keep], n[keep])
        rows = lo[edge] + (np.arange(edge.size) - start)
        t = (rows - i0[edge]) / (i1[edge] - i0[edge])
        cols = np.clip(np.ceil(j0[edge] + t * (j1[edge] - j0[edge])), 0, ny).astype(np.int64)
        ok = (rows >= 0) & (rows < nx)
        np.add.at(counts, (rows[ok], cols[ok]), 1)
    return (np.cumsum(counts, axis=1)[:, :ny] % 2).astype(bool)


def _contour_points(contour: Dataset) -> np.ndarray:
    """ContourData as an (n, 3) float array, parsed from the raw bytes when still encoded (fast)."""
    elem = contour.get_item(_CONTOUR_DATA)
    if elem is None:
        raise InvalidDicomError("a contour has no ContourData")
    if isinstance(elem, RawDataElement) and elem.value is not None:
        values = np.array(elem.value.strip(b" \x00").split(b"\\"), dtype=float)
    else:
        values = np.asarray([float(v) for v in contour.ContourData], dtype=float)
    if values.size % 3:
        raise InvalidDicomError(f"ContourData holds {values.size} numbers, not a multiple of 3 (x, y, z triplets)")
    return values.reshape(-1, 3)


def mask_to_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed polygons (in voxel index coordinates (i, j)) of a 2D boolean mask.

    Marching squares at 0.5 on the zero-padded slice, then removal of the vertices that lie on a
    straight run between their neighbours (vectorised; the polygon, hence the rasterised mask, is
    unchanged). Holes come out as separate polygons (even-odd rule on reading).
    """
    padded = np.pad(mask2d.astype(np.float32), 1)
    out = []
    for c in find_contours(padded, 0.5):
        c = c - 1.0
        if np.allclose(c[0], c[-1]):
            c = c[:-1]
        before = c - np.roll(c, 1, axis=0)
        after = np.roll(c, -1, axis=0) - c
        c = c[np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9]
        if len(c) >= 3:
            out.append(c)
    return out
