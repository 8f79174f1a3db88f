"""Write a volume as a DICOM MR Image Storage series (one file per slice) with pydicom.

Shared pieces for every DICOM object sarcart writes (patient/study identity, UIDs, file meta)
live here too, so RTSTRUCT/RTPLAN/RTDOSE writers reuse them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import sarcart
from sarcart.errors import InvalidImageError
from sarcart.io.dicom_series import MR_IMAGE_STORAGE
from sarcart.io.geometry import Volume

UID_PREFIX = "2.25."


def make_uid(*parts: object) -> str:
    """A DICOM UID: deterministic when ``parts`` are given (same parts -> same UID), random otherwise."""
    if not parts:
        return str(generate_uid(prefix=None))
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return UID_PREFIX + str(int.from_bytes(digest[:16], "big"))


@dataclass(frozen=True)
class PatientStudy:
    """Patient and study identity shared by every object of one study.

    Real identifiers from the inputs are kept in DICOM outputs; never log them (hash instead).
    """

    patient_name: str = "SARCART^PHANTOM"
    patient_id: str = "SARCART-0000"
    patient_birth_date: str = ""
    patient_sex: str = "O"
    study_instance_uid: str = ""
    study_id: str = "1"
    study_date: str = "20260101"
    study_time: str = "080000"
    study_description: str = "sarcart"
    accession_number: str = ""
    referring_physician: str = ""

    @classmethod
    def from_dataset(cls, ds: Dataset) -> "PatientStudy":
        """Copy patient/study identity from an existing dataset (e.g. the MR series' header)."""
        return cls(
            patient_name=str(ds.get("PatientName", "")),
            patient_id=str(ds.get("PatientID", "")),
            patient_birth_date=str(ds.get("PatientBirthDate", "")),
            patient_sex=str(ds.get("PatientSex", "")),
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            study_id=str(ds.get("StudyID", "")),
            study_date=str(ds.get("StudyDate", "")),
            study_time=str(ds.get("StudyTime", "")),
            study_description=str(ds.get("StudyDescription", "")),
            accession_number=str(ds.get("AccessionNumber", "")),
            referring_physician=str(ds.get("ReferringPhysicianName", "")),
        )

    def apply(self, ds: Dataset) -> None:
        """Set the Patient and General Study module attributes on ``ds``."""
        ds.PatientName = self.patient_name
        ds.PatientID = self.patient_id
        ds.PatientBirthDate = self.patient_birth_date
        ds.PatientSex = self.patient_sex
        ds.StudyInstanceUID = self.study_instance_uid or make_uid()
        ds.StudyID = self.study_id
        ds.StudyDate = self.study_date
        ds.StudyTime = self.study_time
        ds.StudyDescription = self.study_description
        ds.AccessionNumber = self.accession_number
        ds.ReferringPhysicianName = self.referring_physician


def new_dataset(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """An empty dataset with file meta (explicit VR little endian) and SOP Common attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "2.25.164193735620153624441426411585513429905"
    meta.ImplementationVersionName = f"SARCART_{sarcart.__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    now = _dt.datetime.now()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    return ds


def equipment(ds: Dataset) -> None:
    """General Equipment module of objects made by sarcart."""
    ds.Manufacturer = "sarcart (research, not for clinical use)"
    ds.ManufacturerModelName = "sarcart"
    ds.SoftwareVersions = sarcart.__version__
    ds.InstitutionName = ""


def new_series_object(sop_class_uid: str, *, modality: str, kind: str, patient: PatientStudy,
                      series_number: int, series_description: str, frame_of_reference_uid: str,
                      uid_seed: str | None = None, sop_instance_uid: str | None = None) -> Dataset:
    """A one-instance object in a series of its own (RTSTRUCT, RTPLAN, RTDOSE): SOP Common, Patient,
    General Study, General Series, Frame of Reference and General Equipment attributes.

    UIDs come from ``uid_seed`` when given (``<kind>`` for the instance, ``<kind>-series`` for the
    series; reproducible cohorts), else fresh; ``sop_instance_uid`` overrides the instance UID.
    """
    sop = sop_instance_uid or (make_uid(uid_seed, kind) if uid_seed else make_uid())
    ds = new_dataset(sop_class_uid, sop)
    patient.apply(ds)
    equipment(ds)
    ds.Modality = modality
    ds.SeriesInstanceUID = make_uid(uid_seed, f"{kind}-series") if uid_seed else make_uid()
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = series_description[:64]
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    return ds


def save_dataset(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM Part 10 file, atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        pydicom.dcmwrite(fh, ds, enforce_file_format=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class MrAcquisition:
    """MR acquisition parameters written into the MR Image module (defaults: 0.35 T 3D TRUFI)."""

    repetition_time_ms: float = 3.0
    echo_time_ms: float = 1.5
    flip_angle_deg: float = 60.0
    field_strength_t: float = 0.345
    imaging_frequency_mhz: float = 14.69
    sequence_name: str = "*tfi3d1"
    scanning_sequence: str = "GR"
    sequence_variant: str = "SS"
    acquisition_type: str = "3D"
    pixel_bandwidth_hz: float = 539.0


def _pixel_encoding(array: np.ndarray) -> tuple[np.ndarray, float, float, bool]:
    """Choose stored pixel values: (stored uint16/int16 array, slope, intercept, signed)."""
    a = np.asarray(array)
    if not np.isfinite(a).all():
        raise InvalidImageError("image holds NaN or infinite values; replace them before writing DICOM")
    lo, hi = float(a.min()), float(a.max())
    integral = np.issubdtype(a.dtype, np.integer) or bool(np.all(a == np.round(a)))
    if integral and lo >= 0 and hi <= 65535:
        return a.astype(np.uint16), 1.0, 0.0, False
    if integral and lo >= -32768 and hi <= 32767:
        return a.astype(np.int16), 1.0, 0.0, True
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.round((a - lo) / slope).astype(np.uint16)
    return stored, slope, lo, False


def write_dicom_series(
    volume: Volume,
    out_dir: str | os.PathLike[str],
    *,
    patient: PatientStudy | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "sarcart MR",
    acquisition: MrAcquisition | None = None,
    uid_seed: str | None = None,
    body_part: str = "ABDOMEN",
    laterality: str | None = None,
) -> list[Path]:
    """Write a scalar volume as MR Image Storage slices ``out_dir/MR_<k>.dcm`` (one per k).

    Args:
        volume: (nx, ny, nz) array; integer-valued arrays are stored as is, other values with
            RescaleSlope/RescaleIntercept (quantised to 16 bits over the value range).
        patient: patient/study identity; a phantom identity when omitted.
        body_part: BodyPartExamined (``ABDOMEN``, ``ARM``, ``LEG``...).
        laterality: ``L`` or ``R`` for paired body parts (arm, leg); omitted otherwise.
        uid_seed: makes every UID a deterministic function of this string (for reproducible cohorts).

    Returns:
        The written paths, ordered by k.
    """
    if volume.array.ndim != 3:
        raise InvalidImageError(f"an MR series needs a scalar volume, got array shape {volume.array.shape}")
    patient = patient or PatientStudy()
    acq = acquisition or MrAcquisition()
    seed = uid_seed
    if not patient.study_instance_uid:
        patient = PatientStudy(**{**patient.__dict__, "study_instance_uid": make_uid(seed, "study") if seed else make_uid()})
    series_uid = series_instance_uid or (make_uid(seed, "series") if seed else make_uid())
    for_uid = frame_of_reference_uid or (make_uid(seed, "for") if seed else make_uid())
    stored, slope, intercept, signed = _pixel_encoding(volume.array)
    g = volume.geometry
    d = g.direction_matrix
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = new_dataset(MR_IMAGE_STORAGE, make_uid())
    patient.apply(ds)
    equipment(ds)
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = series_description[:64]
    ds.SeriesDate, ds.SeriesTime = patient.study_date, patient.study_time
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.BodyPartExamined = body_part.upper()[:16]
    if laterality or not body_part:
        ds.Laterality = laterality or ""  # type 2C: required for paired body parts
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ImageComments = sarcart.NOT_FOR_CLINICAL_USE
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([d[:, 0], d[:, 1]])]
    ds.PixelSpacing = [f"{g.spacing_mm[1]:.6g}", f"{g.spacing_mm[0]:.6g}"]
    ds.SliceThickness = f"{g.spacing_mm[2]:.6g}"
    ds.SpacingBetweenSlices = f"{g.spacing_mm[2]:.6g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = g.shape[1], g.shape[0]
    # General Image module (0020,1002): lets a reader tell a truncated transfer from a complete 3D series
    ds.ImagesInAcquisition = g.shape[2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        ds.RescaleType = "US"
    _mr_module(ds, acq)
    paths = []
    for k in range(g.shape[2]):
        sop = make_uid(seed, "mr", k) if seed else make_uid()
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        ipp = g.index_to_world(np.array([0.0, 0.0, float(k)]))
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.SliceLocation = f"{float(ipp @ d[:, 2]):.6f}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        p = out / f"MR_{k + 1:04d}.dcm"
        save_dataset(ds, p)
        paths.append(p)
    return paths


def _mr_module(ds: Dataset, acq: MrAcquisition) -> None:
    ds.ScanningSequence = acq.scanning_sequence
    ds.SequenceVariant = acq.sequence_variant
    ds.ScanOptions = ""
    ds.MRAcquisitionType = acq.acquisition_type
    ds.SequenceName = acq.sequence_name
    ds.AngioFlag = "N"
    ds.RepetitionTime = f"{acq.repetition_time_ms:.4g}"
    ds.EchoTime = f"{acq.echo_time_ms:.4g}"
    ds.EchoTrainLength = 1
    ds.FlipAngle = f"{acq.flip_angle_deg:.4g}"
    ds.MagneticFieldStrength = f"{acq.field_strength_t:.4g}"
    ds.ImagingFrequency = f"{acq.imaging_frequency_mhz:.6g}"
    ds.ImagedNucleus = "1H"
    ds.NumberOfAverages = "1"
    ds.EchoNumbers = "1"
    ds.PixelBandwidth = f"{acq.pixel_bandwidth_hz:.6g}"
    ds.PatientPosition = "HFS"
