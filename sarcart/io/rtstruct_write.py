"""Write masks on an image series' grid as an RT Structure Set that references that series."""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

import sarcart
from sarcart.errors import GeometryMismatchError, InvalidImageError
from sarcart.io.dicom_series import RTSTRUCT_STORAGE, DicomSeries
from sarcart.io.dicom_write import PatientStudy, new_series_object, save_dataset
from sarcart.io.geometry import Volume
from sarcart.io.rtstruct import mask_to_contours
from sarcart.io.structures import STYLE

log = logging.getLogger(__name__)

_CONTOUR_DATA = Tag(0x3006, 0x0050)
# Study Component Management SOP Class, the conventional ReferencedSOPClassUID of RT Referenced Study
_STUDY_COMPONENT_SOP = "1.2.840.10008.3.1.2.3.2"


@dataclass(frozen=True)
class RoiStyle:
    """How one ROI is written: colour, interpreted type, generation algorithm, free-text notes."""

    color: tuple[int, int, int] = (255, 255, 0)
    interpreted_type: str = "ORGAN"
    algorithm: str = "AUTOMATIC"
    description: str = ""
    observation: str = ""


def _style_for(name: str, override: RoiStyle | None) -> RoiStyle:
    if override is not None:
        return override
    color, kind = STYLE.get(name, ((255, 255, 0), "ORGAN"))
    return RoiStyle(color=color, interpreted_type=kind)


def _check_masks(masks: Mapping[str, Volume | np.ndarray], series: DicomSeries) -> dict[str, np.ndarray]:
    geom = series.volume.geometry
    if not masks:
        raise InvalidImageError("no masks given; an RTSTRUCT needs at least one structure")
    out = {}
    for name, m in masks.items():
        if isinstance(m, Volume):
            geom.require_same(m.geometry, what=f"mask {name!r}", tol_mm=1e-2)
            arr = m.array
        else:
            arr = np.asarray(m)
            if arr.shape != geom.shape:
                raise GeometryMismatchError(
                    f"mask {name!r} has shape {arr.shape}, the image series {geom.shape}; "
                    "resample the mask onto the series grid first"
                )
        if arr.ndim != 3:
            raise InvalidImageError(f"mask {name!r} must be 3D, got shape {arr.shape}")
        arr = arr != 0
        if not arr.any():
            raise InvalidImageError(
                f"mask {name!r} is empty; an RTSTRUCT ROI needs at least one contour: drop the structure "
                "or check the segmentation"
            )
        if not name or len(name) > 64:
            raise InvalidImageError(f"ROI name must be 1-64 characters, got {name!r}")
        out[name] = arr
    return out


def write_rtstruct(
    masks: Mapping[str, Volume | np.ndarray],
    series: DicomSeries,
    path: str | os.PathLike[str],
    *,
    label: str = "sarcart",
    description: str = "",
    styles: Mapping[str, RoiStyle] | None = None,
    series_number: int = 900,
    uid_seed: str | None = None,
) -> Path:
    """Write boolean masks on ``series``' grid as an RTSTRUCT referencing every slice of it.

    Args:
        masks: ROI name -> mask (a :class:`Volume` on the series grid or an array of its shape).
        series: the image series the contours are drawn on (patient/study identity is copied).
        path: output file.
        label: StructureSetLabel (max 16 characters); the not-for-clinical-use notice is added to
            the structure set description.
        styles: per-ROI colour/type/algorithm and descriptions (e.g. QA flags); canonical defaults.
        uid_seed: deterministic UIDs (reproducible cohorts).

    Raises:
        GeometryMismatchError: a mask is on another grid. InvalidImageError: an empty mask.
    """
    arrays = _check_masks(masks, series)
    styles = styles or {}
    ds = new_series_object(RTSTRUCT_STORAGE, modality="RTSTRUCT", kind="rtstruct",
                           patient=PatientStudy.from_dataset(series.header), series_number=series_number,
                           series_description=f"{label} structures",
                           frame_of_reference_uid=series.frame_of_reference_uid, uid_seed=uid_seed)
    now = _dt.datetime.now()
    ds.OperatorsName = ""
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDescription = (f"{description} | " if description else "") + sarcart.NOT_FOR_CLINICAL_USE
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ReferencedFrameOfReferenceSequence = Sequence([_referenced_frame(series)])
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    ds.RTROIObservationsSequence = Sequence()
    for number, (name, arr) in enumerate(arrays.items(), start=1):
        st = _style_for(name, styles.get(name))
        ds.StructureSetROISequence.append(_roi_item(number, name, st, series))
        ds.ROIContourSequence.append(_roi_contour(number, arr, st, series))
        ds.RTROIObservationsSequence.append(_observation(number, name, st))
    ds.ApprovalStatus = "UNAPPROVED"
    out = Path(path)
    save_dataset(ds, out)
    return out


def _image_ref(series: DicomSeries, k: int) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = series.sop_class_uid
    ref.ReferencedSOPInstanceUID = series.sop_instance_uids[k]
    return ref


def _referenced_frame(series: DicomSeries) -> Dataset:
    ser = Dataset()
    ser.SeriesInstanceUID = series.series_instance_uid
    ser.ContourImageSequence = Sequence([_image_ref(series, k) for k in range(len(series.sop_instance_uids))])
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP
    study.ReferencedSOPInstanceUID = series.study_instance_uid
    study.RTReferencedSeriesSequence = Sequence([ser])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = Sequence([study])
    return frame


def _roi_item(number: int, name: str, st: RoiStyle, series: DicomSeries) -> Dataset:
    item = Dataset()
    item.ROINumber = number
    item.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
    item.ROIName = name
    if st.description:
        item.ROIDescription = st.description[:64]
    item.ROIGenerationAlgorithm = st.algorithm
    return item


def _roi_contour(number: int, arr: np.ndarray, st: RoiStyle, series: DicomSeries) -> Dataset:
    geom = series.volume.geometry
    item = Dataset()
    item.ReferencedROINumber = number
    item.ROIDisplayColor = list(st.color)
    contours = Sequence()
    present = np.flatnonzero(arr.any(axis=(0, 1)))
    box_i = np.flatnonzero(arr.any(axis=(1, 2)))
    box_j = np.flatnonzero(arr.any(axis=(0, 2)))
    i0, j0 = int(box_i[0]), int(box_j[0])
    sub = arr[i0: box_i[-1] + 1, j0: box_j[-1] + 1]
    for k in present:
        for poly in mask_to_contours(sub[:, :, k]):
            ijk = np.column_stack([poly[:, 0] + i0, poly[:, 1] + j0, np.full(len(poly), float(k))])
            xyz = geom.index_to_world(ijk)
            c = Dataset()
            # declare the item's encoding so pydicom writes the pre-encoded ContourData as it is
            c.set_original_encoding(False, True, "iso8859")
            c.ContourImageSequence = Sequence([_image_ref(series, int(k))])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(xyz)
            c.ContourNumber = len(contours) + 1
            c[_CONTOUR_DATA] = _raw_ds(xyz.reshape(-1))
            contours.append(c)
    item.ContourSequence = contours
    return item


def _raw_ds(values: np.ndarray) -> RawDataElement:
    """A DS multi-value element already encoded (pydicom's per-value validation is the bottleneck)."""
    text = "\\".join(f"{v:.3f}" for v in values.tolist())
    data = text.encode("ascii")
    if len(data) % 2:
        data += b" "
    return RawDataElement(_CONTOUR_DATA, "DS", len(data), data, 0, False, True)


def _observation(number: int, name: str, st: RoiStyle) -> Dataset:
    o = Dataset()
    o.ObservationNumber = number
    o.ReferencedROINumber = number
    o.ROIObservationLabel = name[:16]
    if st.observation:
        o.ROIObservationDescription = st.observation[:1024]
    o.RTROIInterpretedType = st.interpreted_type
    o.ROIInterpreter = ""
    return o
