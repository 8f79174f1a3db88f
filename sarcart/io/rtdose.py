"""RT Dose (RTDOSE) read and write: a 3D dose grid in Gy with its LPS geometry and optional DVHs.

Reading applies ``DoseGridScaling`` and converts cGy files to Gy; the grid geometry comes from
ImagePositionPatient, ImageOrientationPatient, PixelSpacing and GridFrameOffsetVector. The DVH
Sequence, when present, is returned as stored (bin widths and volumes, plus the file's own
min/mean/max values, whose units some planning systems write inconsistently: check them).

Writing stores a 32-bit unsigned grid (``DoseGridScaling = max / (2^32 - 1)``), DoseUnits GY,
PHYSICAL, with references to the RTPLAN and RTSTRUCT when given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import sarcart
from sarcart.errors import InvalidDicomError, InvalidImageError
from sarcart.io.dicom_series import RTSTRUCT_STORAGE
from sarcart.io.dicom_write import PatientStudy, new_series_object, save_dataset
from sarcart.io.geometry import Geometry, Volume

RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"


@dataclass(frozen=True)
class StoredDvh:
    """One item of an RTDOSE DVH Sequence, as stored."""

    roi_number: int
    dvh_type: str
    dose_units: str
    volume_units: str
    bin_widths: np.ndarray  # (n,) dose bin widths in the file's units (times DVHDoseScaling)
    volumes: np.ndarray  # (n,) volume per bin (cumulative or differential)
    min_dose: float | None
    mean_dose: float | None
    max_dose: float | None

    @property
    def total_volume(self) -> float:
        """Volume of the structure: first bin of a cumulative DVH, the sum of a differential one."""
        return float(self.volumes[0]) if self.dvh_type == "CUMULATIVE" else float(self.volumes.sum())

    def mean_from_bins(self) -> float:
        """Mean dose computed from the bins (bin centres), in the file's dose units."""
        edges = np.concatenate([[0.0], np.cumsum(self.bin_widths)])
        centres = 0.5 * (edges[:-1] + edges[1:])
        diff = -np.diff(np.append(self.volumes, 0.0)) if self.dvh_type == "CUMULATIVE" else self.volumes
        return float(np.dot(diff, centres) / diff.sum())


@dataclass
class RtDose:
    """A dose grid read from RTDOSE."""

    dose: Volume  # float32 Gy
    frame_of_reference_uid: str
    dvhs: dict[int, StoredDvh] = field(default_factory=dict)
    referenced_rtplan_uid: str = ""
    referenced_rtstruct_uid: str = ""
    header: Dataset | None = None


def read_rtdose(path: str | os.PathLike[str]) -> RtDose:
    """Read an RTDOSE file (multi-frame grid) into Gy on its LPS grid.

    Raises:
        InvalidDicomError: not an RTDOSE, missing geometry, non-uniform frame offsets.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidDicomError(f"RTDOSE file not found: {p}; check the path")
    try:
        ds = pydicom.dcmread(p)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
        raise InvalidDicomError(f"cannot read {p} as DICOM: {exc}") from exc
    if str(ds.get("SOPClassUID", "")) != RTDOSE_STORAGE:
        raise InvalidDicomError(f"{p} is not an RT Dose object (SOPClassUID {ds.get('SOPClassUID', '?')})")
    arr = ds.pixel_array.astype(np.float64) * float(ds.get("DoseGridScaling", 1.0))
    if arr.ndim == 2:
        arr = arr[None]
    units = str(ds.get("DoseUnits", "GY")).upper()
    if units == "CGY":
        arr = arr / 100.0
    offsets = np.asarray([float(v) for v in ds.get("GridFrameOffsetVector", [0.0])])
    if len(offsets) != arr.shape[0]:
        raise InvalidDicomError(f"{p}: {len(offsets)} frame offsets for {arr.shape[0]} frames")
    dz = float(np.median(np.diff(offsets))) if len(offsets) > 1 else float(ds.get("SliceThickness", 1.0) or 1.0)
    if len(offsets) > 1 and np.abs(np.diff(offsets) - dz).max() > 1e-3 * abs(dz) + 1e-3:
        raise InvalidDicomError(f"{p}: non-uniform GridFrameOffsetVector; resample the dose first")
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col) * np.sign(dz)
    ps = [float(v) for v in ds.PixelSpacing]
    origin = np.asarray([float(v) for v in ds.ImagePositionPatient]) + (offsets[0] if dz > 0 else offsets[-1]) * np.cross(row, col)
    vol = arr.transpose(2, 1, 0) if dz > 0 else arr[::-1].transpose(2, 1, 0)
    geom = Geometry(shape=vol.shape, spacing_mm=(ps[1], ps[0], abs(dz)), origin_mm=tuple(origin),
                    direction=tuple(np.stack([row, col, normal], axis=1).reshape(-1)))
    dvhs = {}
    for item in ds.get("DVHSequence", []):
        data = np.asarray([float(v) for v in item.DVHData]).reshape(-1, 2)
        num = int(item.DVHReferencedROISequence[0].ReferencedROINumber)
        opt = [float(item.get(k)) if item.get(k) is not None else None
               for k in ("DVHMinimumDose", "DVHMeanDose", "DVHMaximumDose")]
        dvhs[num] = StoredDvh(num, str(item.DVHType), str(item.get("DoseUnits", "")), str(item.get("DVHVolumeUnits", "")),
                              data[:, 0] * float(item.get("DVHDoseScaling", 1.0)), data[:, 1], *opt)
    ref = lambda key: str(ds.get(key)[0].ReferencedSOPInstanceUID) if ds.get(key) else ""
    return RtDose(Volume(np.ascontiguousarray(vol, dtype=np.float32), geom), str(ds.get("FrameOfReferenceUID", "")),
                  dvhs, ref("ReferencedRTPlanSequence"), ref("ReferencedStructureSetSequence"), ds)


def write_rtdose(dose: Volume, path: str | os.PathLike[str], *, frame_of_reference_uid: str,
                 patient: PatientStudy | None = None, rtplan_uid: str = "", rtstruct_uid: str = "",
                 uid_seed: str | None = None, comment: str = "") -> Path:
    """Write a dose volume (Gy) as an RTDOSE file.

    Args:
        dose: ``(nx, ny, nz)`` dose in Gy (non-negative, finite).
        path: output file.
        frame_of_reference_uid: the frame of reference of the image the dose was computed on.
        patient: patient/study identity (copy it from the image series).
        rtplan_uid / rtstruct_uid: SOPInstanceUIDs to reference (RTPLAN is required by the standard
            for PLAN dose summations: pass it when a plan exists).
        uid_seed: deterministic UIDs.
        comment: free text, stored in DoseComment.
    """
    a = np.asarray(dose.array, dtype=np.float64)
    if a.ndim != 3 or not np.isfinite(a).all() or a.min() < 0:
        raise InvalidImageError("dose must be a finite, non-negative 3D array in Gy")
    g = dose.geometry
    scale = float(a.max()) / (2 ** 32 - 1) if a.max() > 0 else 1.0
    stored = np.round(a / scale).astype(np.uint32)
    ds = new_series_object(RTDOSE_STORAGE, modality="RTDOSE", kind="rtdose", patient=patient or PatientStudy(),
                           series_number=900, series_description="sarcart dose",
                           frame_of_reference_uid=frame_of_reference_uid, uid_seed=uid_seed)
    ds.InstanceNumber = 1
    d = g.direction_matrix
    ds.ImagePositionPatient = [f"{v:.6f}" for v in g.origin_mm]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([d[:, 0], d[:, 1]])]
    ds.PixelSpacing = [f"{g.spacing_mm[1]:.6g}", f"{g.spacing_mm[0]:.6g}"]
    ds.SliceThickness = f"{g.spacing_mm[2]:.6g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = g.shape[1], g.shape[0], g.shape[2]
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)
    ds.GridFrameOffsetVector = [f"{k * g.spacing_mm[2]:.6g}" for k in range(g.shape[2])]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN" if rtplan_uid else "RECORD"
    ds.DoseGridScaling = f"{scale:.10g}"
    ds.TissueHeterogeneityCorrection = ["IMAGE"]
    ds.DoseComment = (comment or sarcart.NOT_FOR_CLINICAL_USE)[:64]
    if rtplan_uid:
        ds.ReferencedRTPlanSequence = Sequence([_ref(RTPLAN_STORAGE, rtplan_uid)])
    if rtstruct_uid:
        ds.ReferencedStructureSetSequence = Sequence([_ref(RTSTRUCT_STORAGE, rtstruct_uid)])
    ds.PixelData = np.ascontiguousarray(stored.transpose(2, 1, 0)).tobytes()
    out = Path(path)
    save_dataset(ds, out)
    return out


def _ref(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item
