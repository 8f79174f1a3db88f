"""RTDOSE and RTPLAN writers and readers: round trips, the clinical example, dciodvfy."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from helpers import require_tool, shared_path

from sarcart.io.geometry import Geometry, Volume
from sarcart.io.rtdose import read_rtdose, write_rtdose
from sarcart.io.rtplan import ControlPoint, MlcDevice, PlanBeam, RtPlan, read_rtplan, write_rtplan


def _dose():
    g = Geometry((20, 16, 8), (3.0, 2.5, 2.0), origin_mm=(-30.0, -20.0, 5.0))
    rng = np.random.default_rng(0)
    return Volume(rng.uniform(0, 50, size=g.shape).astype(np.float32), g)


def _plan(upper_type: str = "MLCX2", lower_type: str = "MLCX1"):
    upper = MlcDevice(upper_type, tuple(np.arange(-16.6, 16.61, 8.3)))
    lower = MlcDevice(lower_type, (-16.6, -12.45, -4.15, 4.15, 12.45, 16.6))
    cps = []
    for k, (w0, w1) in enumerate(((0.0, 0.4), (0.4, 1.0))):
        leaves = {upper_type: np.r_[np.full(4, -10.0 - k), np.full(4, 10.0)],
                  lower_type: np.r_[np.full(5, -12.0), np.full(5, 8.0 + k)]}
        cps += [ControlPoint(w0, leaves), ControlPoint(w1, leaves)]
    devices = [lower, upper] if upper_type != lower_type else [lower]
    beams = [PlanBeam(i + 1, f"G{g:03d}", float(g), (1.0, 2.0, 3.0), 900.0, 55.5 + i, cps, devices)
             for i, g in enumerate((0, 24, 48))]
    return RtPlan(label="test", beams=beams, fractions=6, rtstruct_uid="2.25.42", frame_of_reference_uid="2.25.7",
                  prescription_gy=48.0)


def test_rtdose_round_trip(tmp_path):
    d = _dose()
    write_rtdose(d, tmp_path / "d.dcm", frame_of_reference_uid="2.25.7", rtplan_uid="2.25.9", uid_seed="x")
    back = read_rtdose(tmp_path / "d.dcm")
    assert back.dose.geometry.is_close(d.geometry)
    assert np.abs(back.dose.array - d.array).max() <= d.array.max() / 2 ** 31
    assert back.referenced_rtplan_uid == "2.25.9" and back.frame_of_reference_uid == "2.25.7"


def test_rtplan_round_trip(tmp_path):
    write_rtplan(_plan(), tmp_path / "p.dcm", uid_seed="y")
    back = read_rtplan(tmp_path / "p.dcm")
    assert back.fractions == 6 and back.rtstruct_uid == "2.25.42" and back.prescription_gy == 48.0
    assert [b.gantry_deg for b in back.beams] == [0.0, 24.0, 48.0]
    assert [b.meterset_mu for b in back.beams] == [55.5, 56.5, 57.5]
    assert np.allclose(back.beams[1].control_points[3].leaves_mm["MLCX1"], np.r_[np.full(5, -12.0), np.full(5, 9.0)])
    assert [d.device_type for d in back.beams[0].devices] == ["MLCX1", "MLCX2"]


def test_reads_the_clinical_plan_and_dose():
    root = shared_path("rt_plan_example")
    plan = read_rtplan(root / "rtplan.dcm")
    # values printed by pydicom from the file itself: 7 fractions, 4 beams of 97/87/89/94 MU, 14 Gy
    assert plan.fractions == 7 and [b.meterset_mu for b in plan.beams] == [97.0, 87.0, 89.0, 94.0]
    assert plan.prescription_gy == 14.0 and plan.beams[0].gantry_deg == 327.0
    assert len(plan.beams[0].control_points) == 92 and plan.beams[0].control_points[-1].cumulative_weight == 1.0
    rd = read_rtdose(root / "rtdose.dcm")
    assert rd.dose.geometry.shape == (194, 129, 98) and rd.dose.geometry.spacing_mm == (2.5, 2.5, 3.0)
    assert float(rd.dose.array.max()) == pytest.approx(14.680764, rel=1e-6)
    assert rd.referenced_rtplan_uid == plan.sop_instance_uid


@pytest.mark.integration
def test_dciodvfy_accepts_rtdose_and_rtplan(tmp_path):
    tool = require_tool("dciodvfy", "dicom3tools")
    write_rtdose(_dose(), tmp_path / "d.dcm", frame_of_reference_uid="2.25.7", rtplan_uid="2.25.9", rtstruct_uid="2.25.42")
    # the effective-row MLC (one MLCX device), as sarcart writes by default
    plan = _plan("MLCX", "MLCX")
    for b in plan.beams:
        for cp in b.control_points:
            cp.leaves_mm = {"MLCX": cp.leaves_mm["MLCX"]}
    write_rtplan(plan, tmp_path / "p.dcm")
    for f in ("d.dcm", "p.dcm"):
        out = subprocess.run([tool, str(tmp_path / f)], capture_output=True, text=True, check=False)
        errors = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{f}: " + "\n".join(errors)
