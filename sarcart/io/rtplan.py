"""RT Plan (RTPLAN) write and read: step-and-shoot photon beams with MLC control points.

Writing: one beam per gantry angle; each segment becomes a pair of control points with identical
leaf positions (the meterset weight rises across the pair, nothing moves during irradiation). A
double-stacked MLC is written as two devices, ``MLCX1`` (distal/lower layer) and ``MLCX2``
(proximal/upper layer), as for stacked-MLC linacs; otherwise one ``MLCX``. No jaws. The plan
references its structure set. The MR-linac delivers plans from its own planning system: this file
serves research, comparison and second checks (not for clinical use).

Reading returns beams, control points, metersets and references of any RTPLAN (e.g. the clinical
example in ``../shared/data/rt_plan_example``).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import sarcart
from sarcart.errors import InvalidDicomError
from sarcart.io.dicom_series import RTSTRUCT_STORAGE
from sarcart.io.dicom_write import PatientStudy, make_uid, new_series_object, save_dataset
from sarcart.io.rtdose import RTPLAN_STORAGE


@dataclass(frozen=True)
class MlcDevice:
    """One MLC layer: its DICOM type and leaf boundaries (``n + 1`` values, mm at isocentre)."""

    device_type: str
    boundaries_mm: tuple[float, ...]

    @property
    def n_pairs(self) -> int:
        return len(self.boundaries_mm) - 1


@dataclass
class ControlPoint:
    """Cumulative meterset weight and leaf positions (device type -> ``(2 n,)`` bank A then bank B)."""

    cumulative_weight: float
    leaves_mm: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class PlanBeam:
    """A static-gantry beam."""

    number: int
    name: str
    gantry_deg: float
    isocenter_mm: tuple[float, float, float]
    sad_mm: float
    meterset_mu: float
    control_points: list[ControlPoint]
    devices: list[MlcDevice] = field(default_factory=list)
    energy_mv: float = 6.0


@dataclass
class RtPlan:
    """Contents of an RTPLAN that sarcart reads or writes."""

    label: str
    beams: list[PlanBeam]
    fractions: int
    machine_name: str = "MRL-6FFF"
    rtstruct_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_instance_uid: str = ""
    prescription_gy: float | None = None
    description: str = sarcart.NOT_FOR_CLINICAL_USE


def _device_seq(devices: list[MlcDevice]) -> Sequence:
    out = []
    for d in devices:
        item = Dataset()
        item.RTBeamLimitingDeviceType = d.device_type
        item.NumberOfLeafJawPairs = d.n_pairs
        item.LeafPositionBoundaries = [f"{v:.4g}" for v in d.boundaries_mm]
        out.append(item)
    return Sequence(out)


def _control_point(beam: PlanBeam, index: int, cp: ControlPoint, first: bool) -> Dataset:
    item = Dataset()
    item.ControlPointIndex = index
    if first:
        item.NominalBeamEnergy = f"{beam.energy_mv:g}"
        item.DoseRateSet = "600"
        item.GantryAngle = f"{beam.gantry_deg % 360.0:.6g}"
        item.GantryRotationDirection = "NONE"
        item.BeamLimitingDeviceAngle = "0"
        item.BeamLimitingDeviceRotationDirection = "NONE"
        item.PatientSupportAngle = "0"
        item.PatientSupportRotationDirection = "NONE"
        item.TableTopEccentricAngle = "0"
        item.TableTopEccentricRotationDirection = "NONE"
        item.TableTopVerticalPosition = ""
        item.TableTopLongitudinalPosition = ""
        item.TableTopLateralPosition = ""
        item.IsocenterPosition = [f"{v:.3f}" for v in beam.isocenter_mm]
    positions = []
    for dev, leaves in cp.leaves_mm.items():
        p = Dataset()
        p.RTBeamLimitingDeviceType = dev
        p.LeafJawPositions = [f"{v:.2f}" for v in np.asarray(leaves, dtype=float)]
        positions.append(p)
    item.BeamLimitingDevicePositionSequence = Sequence(positions)
    item.CumulativeMetersetWeight = f"{cp.cumulative_weight:.6g}"
    return item


def _beam_item(beam: PlanBeam, machine_name: str) -> Dataset:
    item = Dataset()
    item.Manufacturer = "sarcart (research, not for clinical use)"
    item.TreatmentMachineName = machine_name[:16]
    item.PrimaryDosimeterUnit = "MU"
    item.SourceAxisDistance = f"{beam.sad_mm:g}"
    item.BeamLimitingDeviceSequence = _device_seq(beam.devices)
    item.BeamNumber = beam.number
    item.BeamName = beam.name[:64]
    item.BeamDescription = "step-and-shoot IMRT segment sequence"
    item.BeamType = "DYNAMIC"
    item.RadiationType = "PHOTON"
    item.TreatmentDeliveryType = "TREATMENT"
    item.NumberOfWedges = item.NumberOfCompensators = item.NumberOfBoli = item.NumberOfBlocks = 0
    item.FinalCumulativeMetersetWeight = f"{beam.control_points[-1].cumulative_weight:.6g}"
    item.NumberOfControlPoints = len(beam.control_points)
    item.ControlPointSequence = Sequence(
        [_control_point(beam, i, cp, i == 0) for i, cp in enumerate(beam.control_points)])
    return item


def write_rtplan(plan: RtPlan, path: str | os.PathLike[str], *, patient: PatientStudy | None = None,
                 uid_seed: str | None = None) -> str:
    """Write ``plan`` as an RTPLAN file; returns its SOPInstanceUID.

    Raises:
        InvalidDicomError: a beam without control points, or no beams.
    """
    if not plan.beams or any(len(b.control_points) < 2 for b in plan.beams):
        raise InvalidDicomError("an RTPLAN needs at least one beam with two or more control points")
    ds = new_series_object(RTPLAN_STORAGE, modality="RTPLAN", kind="rtplan", patient=patient or PatientStudy(),
                           series_number=901, series_description="sarcart plan",
                           frame_of_reference_uid=plan.frame_of_reference_uid or make_uid(), uid_seed=uid_seed,
                           sop_instance_uid=plan.sop_instance_uid)
    sop = str(ds.SOPInstanceUID)
    ds.OperatorsName = ""
    ds.RTPlanLabel = plan.label[:16]
    ds.RTPlanName = plan.label[:64]
    ds.RTPlanDescription = plan.description[:1024]
    now = _dt.datetime.now()
    ds.RTPlanDate, ds.RTPlanTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    if plan.rtstruct_uid:  # patient-based geometry needs the structure set it refers to
        ds.RTPlanGeometry = "PATIENT"
        ref = Dataset()
        ref.ReferencedSOPClassUID = RTSTRUCT_STORAGE
        ref.ReferencedSOPInstanceUID = plan.rtstruct_uid
        ds.ReferencedStructureSetSequence = Sequence([ref])
    else:  # no structure set to reference (e.g. NIfTI inputs): no dangling reference
        ds.RTPlanGeometry = "TREATMENT_DEVICE"
    if plan.prescription_gy is not None:
        dr = Dataset()
        dr.DoseReferenceNumber = 1
        dr.DoseReferenceUID = make_uid(sop, "doseref")
        dr.DoseReferenceStructureType = "SITE"
        dr.DoseReferenceDescription = "PTV"
        dr.DoseReferenceType = "TARGET"
        dr.TargetPrescriptionDose = f"{plan.prescription_gy:g}"
        ds.DoseReferenceSequence = Sequence([dr])
    fg = Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = plan.fractions
    fg.NumberOfBeams = len(plan.beams)
    fg.NumberOfBrachyApplicationSetups = 0
    refs = []
    for b in plan.beams:
        rb = Dataset()
        rb.BeamMeterset = f"{b.meterset_mu:.6g}"
        rb.ReferencedBeamNumber = b.number
        refs.append(rb)
    fg.ReferencedBeamSequence = Sequence(refs)
    ds.FractionGroupSequence = Sequence([fg])
    ds.BeamSequence = Sequence([_beam_item(b, plan.machine_name) for b in plan.beams])
    ds.ApprovalStatus = "UNAPPROVED"
    save_dataset(ds, Path(path))
    return sop


def read_rtplan(path: str | os.PathLike[str]) -> RtPlan:
    """Read beams, control points (leaf/jaw positions per device, carried forward) and metersets."""
    p = Path(path)
    if not p.is_file():
        raise InvalidDicomError(f"RTPLAN file not found: {p}; check the path")
    ds = pydicom.dcmread(p)
    if str(ds.get("SOPClassUID", "")) != RTPLAN_STORAGE:
        raise InvalidDicomError(f"{p} is not an RT Plan (SOPClassUID {ds.get('SOPClassUID', '?')})")
    fg = ds.FractionGroupSequence[0] if ds.get("FractionGroupSequence") else None
    meters = {int(r.ReferencedBeamNumber): float(r.get("BeamMeterset", 0) or 0)
              for r in (fg.get("ReferencedBeamSequence", []) if fg is not None else [])}
    beams = []
    for b in ds.get("BeamSequence", []):
        devices = [MlcDevice(str(d.RTBeamLimitingDeviceType), tuple(float(v) for v in d.LeafPositionBoundaries))
                   for d in b.get("BeamLimitingDeviceSequence", []) if "LeafPositionBoundaries" in d]
        cps, current = [], {}
        first = b.ControlPointSequence[0]
        for cp in b.ControlPointSequence:
            for pos in cp.get("BeamLimitingDevicePositionSequence", []):
                current[str(pos.RTBeamLimitingDeviceType)] = np.asarray([float(v) for v in pos.LeafJawPositions])
            cps.append(ControlPoint(float(cp.get("CumulativeMetersetWeight", 0) or 0), dict(current)))
        beams.append(PlanBeam(int(b.BeamNumber), str(b.get("BeamName", "")), float(first.get("GantryAngle", 0)),
                              tuple(float(v) for v in first.get("IsocenterPosition", [0, 0, 0])),
                              float(b.get("SourceAxisDistance", 1000)), meters.get(int(b.BeamNumber), 0.0), cps,
                              devices, float(first.get("NominalBeamEnergy", 0) or 0)))
    rs = ds.get("ReferencedStructureSetSequence")
    dref = ds.get("DoseReferenceSequence")
    rx = next((float(d.TargetPrescriptionDose) for d in (dref or []) if d.get("TargetPrescriptionDose") is not None), None)
    return RtPlan(label=str(ds.get("RTPlanLabel", "")), beams=beams,
                  fractions=int(fg.NumberOfFractionsPlanned) if fg is not None else 1,
                  machine_name=str(ds.BeamSequence[0].get("TreatmentMachineName", "")) if ds.get("BeamSequence") else "",
                  rtstruct_uid=str(rs[0].ReferencedSOPInstanceUID) if rs else "",
                  frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
                  sop_instance_uid=str(ds.SOPInstanceUID), prescription_gy=rx)
