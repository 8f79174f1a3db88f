"""The "predicted" plan: yesterday's (reference) plan, its segments and MU unchanged, recomputed on
today's anatomy — what would be delivered without re-optimisation.

The plan's delivery (beams, beamlet grids, segments with MU) is saved as ``delivery.json`` next to
every plan; :func:`predicted_plan` rebuilds the beams (isocentre moved by the couch shift of the day:
the difference of the target centroids, today minus reference, as online alignment on the target
does) and computes the segments' dose on today's density and structures, matrix-free with erf leaf
ends (:func:`sarcart.dose.aperture.exact_dose`, the same function that gives a plan's final dose).
The result is a :class:`~sarcart.dose.plan.PlanResult`, so every metric and writer of
:mod:`sarcart.dose.outputs` applies to it unchanged.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sarcart.dose.aperture import exact_dose
from sarcart.dose.beams import Beam
from sarcart.dose.engine import BixelGrid, DoseEngine
from sarcart.dose.machine import MachineConfig, mrlinac_6fff
from sarcart.dose.plan import PlanResult, torch_threads
from sarcart.dose.prescription import PlanPrescription
from sarcart.dose.sequencing import Segment
from sarcart.dose.volumes import dose_grid_inputs, plan_objectives, points_and_structures, prepare_structures
from sarcart.errors import CourseLayoutError
from sarcart.io.atomic import atomic_write_text
from sarcart.io.geometry import Volume

DELIVERY_FILE = "delivery.json"


@dataclass(frozen=True)
class Delivery:
    """What a plan delivers: beams (isocentre in LPS mm), beamlet grids and segments (MU per fraction)."""

    beams: list[Beam]
    grids: list[BixelGrid]
    segments: list[Segment]

    @property
    def isocenter_mm(self) -> np.ndarray:
        return np.asarray(self.beams[0].isocenter_mm, dtype=float)


def _arr(x) -> list | None:
    return None if x is None else np.asarray(x, dtype=float).tolist()


def save_delivery(result: PlanResult, plan_dir: str | os.PathLike[str], *, target_centroid_mm=None) -> Path:
    """Write ``delivery.json`` (and the target centroid the isocentre was placed on)."""
    path = Path(plan_dir) / DELIVERY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    centroid = target_centroid_mm if target_centroid_mm is not None else centroid_mm(
        result.masks[result.prescription.target])
    data = {"beams": [{"gantry_deg": b.gantry_deg, "isocenter_mm": list(b.isocenter_mm), "sad_mm": b.sad_mm}
                      for b in result.beams],
            "grids": [{"u_edges": list(g.u_edges), "v_edges": list(g.v_edges), "row_offset": g.row_offset}
                      for g in result.grids],
            "segments": [{"beam": s.beam, "left_mm": _arr(s.left_mm), "right_mm": _arr(s.right_mm), "mu": float(s.mu),
                          "upper_mm": _arr(s.upper_mm), "lower_mm": _arr(s.lower_mm)} for s in result.segments],
            "target_centroid_mm": [float(v) for v in centroid]}
    return atomic_write_text(path, json.dumps(data))


def load_delivery(plan_dir: str | os.PathLike[str]) -> tuple[Delivery, np.ndarray]:
    """``(Delivery, target centroid mm)`` from a plan folder's ``delivery.json``."""
    path = Path(plan_dir) / DELIVERY_FILE
    if not path.is_file():
        raise CourseLayoutError(f"{path} not found: plan the reference first (`sarcart course init --patient-dir ...`)")
    d = json.loads(path.read_text())
    opt = lambda v: None if v is None else np.asarray(v, dtype=float)
    beams = [Beam(b["gantry_deg"], _point(np.asarray(b["isocenter_mm"])), b["sad_mm"]) for b in d["beams"]]
    grids = [BixelGrid(tuple(g["u_edges"]), tuple(g["v_edges"]), int(g["row_offset"])) for g in d["grids"]]
    segs = [Segment(s["beam"], np.asarray(s["left_mm"]), np.asarray(s["right_mm"]), float(s["mu"]), opt(s["upper_mm"]),
                    opt(s["lower_mm"])) for s in d["segments"]]
    return Delivery(beams, grids, segs), np.asarray(d["target_centroid_mm"], dtype=float)


def _point(p: np.ndarray) -> tuple[float, float, float]:
    return (float(p[0]), float(p[1]), float(p[2]))


def centroid_mm(mask: Volume) -> np.ndarray:
    """Centre of mass (LPS mm) of a boolean mask."""
    idx = np.argwhere(np.asarray(mask.array, bool))
    return mask.geometry.index_to_world(idx.mean(axis=0))


def predicted_plan(image: Volume, masks: dict[str, Volume], prescription: PlanPrescription, delivery: Delivery, *,
                   shift_mm: np.ndarray | None = None, painting: Volume | None = None, device: str = "cpu") -> PlanResult:
    """Dose of ``delivery`` on today's image and structures (module docstring).

    Args:
        image / masks: today's image and structures (``BODY`` and the target or GTV needed).
        prescription: the course prescription (objectives, limits and dose grid).
        delivery: the plan to recompute.
        shift_mm: isocentre shift (LPS mm, couch correction); ``None``: no shift.
        painting: today's course-dose prescription map (for the painting metrics).
        device: torch device of the dose computation.

    Returns:
        A :class:`PlanResult` with the per-fraction dose on today's dose grid and the delivery's segments.
    """
    t0 = time.perf_counter()
    p = prescription
    shift = np.zeros(3) if shift_mm is None else np.asarray(shift_mm, dtype=float)
    with torch_threads(p.settings.threads if torch.device(device).type == "cpu" else 0):
        geom, dmasks, dens, pmap = dose_grid_inputs(image, prepare_structures(masks, p), p, painting=painting, ct=None,
                                                    density_table=None)
        objs, cons = plan_objectives(p, set(dmasks), pmap is not None)
        body_idx = points_and_structures(dmasks, p, {o.structure for o in [*objs, *cons]})[0]
        beams = [Beam(b.gantry_deg, _point(np.asarray(b.isocenter_mm) + shift), b.sad_mm) for b in delivery.beams]
        machine = MachineConfig(gantry_angles_deg=tuple(b.gantry_deg for b in beams))
        model = mrlinac_6fff()
        t1 = time.perf_counter()
        engine = DoseEngine(dens, body_idx, beams, delivery.grids, model, device=device)
        dose = exact_dose(engine, delivery.segments).cpu().numpy()
    arr = np.zeros(geom.shape, dtype=np.float32)
    arr.ravel()[body_idx] = dose
    t2 = time.perf_counter()
    info = {"n_points_body": float(len(body_idx)), "couch_shift_mm": float(np.linalg.norm(shift)),
            "total_mu": float(sum(s.mu for s in delivery.segments))}
    return PlanResult(Volume(arr, geom), dmasks, beams, list(delivery.grids),
                      np.zeros(sum(g.size for g in delivery.grids)), list(delivery.segments), p, machine, model, pmap,
                      [], {"inputs": t1 - t0, "final_dose": t2 - t1}, info, density=dens)
