"""Per-fraction planning: structures -> dose grid -> optimisation -> sequencing -> apertures -> final dose.

:func:`plan_fraction` runs the whole chain on the day's image and structures:

1. PTV from the GTV with the prescription's margin when no PTV is given; ``KIDNEYS`` = both kidneys;
   the evaluation PTV (PTV minus the excluded organs' PRV) when the prescription asks for one
   (:mod:`sarcart.dose.volumes`).
2. A dose grid (``settings.dose_grid_mm``) over the BODY; masks, density and painting map resampled.
3. Beamlets (4.15 mm rows x ``bixel_x_mm``) over the PTV projection of every beam.
4. Fluence optimisation on the sparse influence (primary CSR + scatter maps) with hard OAR limits,
   warm-started from the previous plan (fluence and constraint weights) when given.
5. Leaf sequencing (double stack, minimum area), then direct aperture optimisation of the leaf positions
   of both layers and the segment MU with the same objective and limits, the minimum MU enforced and the
   model corrected by the exact aperture dose (:mod:`sarcart.dose.aperture`).
6. Final dose of the segments, matrix-free with erf leaf ends, on every BODY voxel of the calculation box.

All of it runs with ``settings.threads`` torch CPU threads (restored afterwards): on a shared machine a
single thread avoids OpenMP barrier stalls of the many small tensor operations (docs/dose.md).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from sarcart.dose.aperture import ApertureSettings, bump, correct_apertures, exact_dose, optimize_apertures
from sarcart.dose.beams import Beam
from sarcart.dose.density import DensityTable
from sarcart.dose.engine import BixelGrid, DoseEngine, bixel_grid_for_target
from sarcart.dose.machine import BeamModel, MachineConfig, mrlinac_6fff
from sarcart.dose.objectives import Objective
from sarcart.dose.optimize import PlanProblem, optimize_plan
from sarcart.dose.prescription import PlanPrescription
from sarcart.dose.sequencing import Segment, sequence_plan
from sarcart.dose.volumes import (  # noqa: F401  (re-exported: the planning volumes used to live here)
    EVAL_SUFFIX,
    dose_grid,
    dose_grid_inputs,
    grow_mask,
    painting_from_spec,
    plan_objectives,
    points_and_structures,
    prepare_structures,
    resample,
)
from sarcart.errors import InvalidImageError
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)


@dataclass
class PlanResult:
    """Everything a plan produced (doses per fraction in Gy unless named ``course``)."""

    dose: Volume
    masks: dict[str, Volume]
    beams: list[Beam]
    grids: list[BixelGrid]
    weights: np.ndarray
    segments: list[Segment]
    prescription: PlanPrescription
    machine: MachineConfig
    model: BeamModel
    painting_map: Volume | None = None
    history: list[float] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)
    density: Volume | None = None  # relative electron density on the dose grid
    constraint_weights: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (rho, level scale)

    @property
    def course_dose(self) -> Volume:
        return self.dose.with_array(self.dose.array * self.prescription.fractions)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (0: unchanged), restoring the previous count."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _smoothing(grids: list[BixelGrid], offsets: np.ndarray, scale: float, lam: float):
    """Fluence smoothness penalty: mean squared neighbour differences, in units of ``scale``."""
    def reg(w: torch.Tensor) -> torch.Tensor:
        total = w.new_zeros(())
        for b, g in enumerate(grids):
            f = w[offsets[b]:offsets[b + 1]].reshape(g.shape) / scale
            total = total + (f[:, 1:] - f[:, :-1]).pow(2).mean() + (f[1:] - f[:-1]).pow(2).mean() if min(g.shape) > 1 \
                else total + (f[..., 1:] - f[..., :-1]).pow(2).mean()
        return lam * total / len(grids)
    return reg


def warm_start_weights(state: dict[str, np.ndarray], beams: list[Beam], grids: list[BixelGrid]) -> np.ndarray | None:
    """Previous plan's fluence (``plan_state.npz`` contents) interpolated onto new beamlets (None if beams differ)."""
    from scipy.interpolate import RegularGridInterpolator

    angles = np.asarray(state["gantry_deg"])
    if len(angles) != len(beams) or not np.allclose(angles, [b.gantry_deg for b in beams]):
        log.warning("warm start ignored: the previous plan has other gantry angles")
        return None
    out = []
    for b, g in enumerate(grids):
        ue, ve, w = state[f"u_edges_{b}"], state[f"v_edges_{b}"], state[f"weights_{b}"]
        uc, vc = 0.5 * (ue[1:] + ue[:-1]), 0.5 * (ve[1:] + ve[:-1])
        if len(uc) < 2 or len(vc) < 2:
            return None
        f = RegularGridInterpolator((vc, uc), w, bounds_error=False, fill_value=0.0)
        nu, nv = np.asarray(g.u_edges), np.asarray(g.v_edges)
        vv, uu = np.meshgrid(0.5 * (nv[1:] + nv[:-1]), 0.5 * (nu[1:] + nu[:-1]), indexing="ij")
        out.append(f(np.stack([vv, uu], axis=-1)).ravel())
    return np.concatenate(out)


def _constraint_key(c) -> str:
    return f"{c.structure}|{c.kind}|{c.dose_gy:g}"


def plan_state(result: PlanResult) -> dict[str, np.ndarray]:
    """Arrays to save as ``plan_state.npz`` (warm start of the next fraction): fluence and constraint weights."""
    st: dict[str, np.ndarray] = {"gantry_deg": np.array([b.gantry_deg for b in result.beams])}
    off = np.concatenate([[0], np.cumsum([g.size for g in result.grids])])
    for b, g in enumerate(result.grids):
        st[f"u_edges_{b}"], st[f"v_edges_{b}"] = np.asarray(g.u_edges), np.asarray(g.v_edges)
        st[f"weights_{b}"] = result.weights[off[b]:off[b + 1]].reshape(g.shape)
    keys = sorted(result.constraint_weights)
    st["constraint_keys"] = np.array(keys, dtype=str)
    st["constraint_rho_scale"] = np.array([result.constraint_weights[k] for k in keys], dtype=float).reshape(-1, 2)
    return st


def _warm_constraints(problem: PlanProblem, state: dict[str, np.ndarray]) -> None:
    """Start from the previous plan's constraint weights (rounds already spent there are not repeated)."""
    if "constraint_keys" not in state:
        return
    prev = dict(zip((str(k) for k in state["constraint_keys"]), np.asarray(state["constraint_rho_scale"]).reshape(-1, 2)))
    for i, c in enumerate(problem.constraints):
        if _constraint_key(c) in prev:
            problem.rho[i], problem.scale[i] = (float(v) for v in prev[_constraint_key(c)])


def _problem(p: PlanPrescription, structs: dict, weights: dict, sub: DoseEngine, pmap: Volume | None,
             objs: list[Objective], cons: list, voxel_cc: float, outside: dict[str, float]) -> PlanProblem:
    s, rx = p.settings, p.dose_per_fraction_gy
    objs = [*objs, Objective(structure="RING", kind="max", dose_gy=s.ring_max_fraction * rx, weight=1.0),
            Objective(structure="NORMAL", kind="max", dose_gy=s.body_max_fraction * rx, weight=1.0)]
    maps = {}
    if pmap is not None:
        vals = pmap.array.ravel()[sub.points.cpu().numpy()] / p.fractions
        maps = {o.structure: torch.as_tensor(vals[structs[o.structure].numpy()], dtype=sub.dtype, device=sub.device)
                for o in objs if o.kind == "painting" and o.structure in structs}
    w = {k: v.to(sub.dtype).to(sub.device) for k, v in weights.items()}
    st = {k: v.to(sub.device) for k, v in structs.items()}
    return PlanProblem(st, [o for o in objs if o.structure in structs], cons, voxel_cc=voxel_cc, maps=maps, weights=w,
                       outside=outside)


def plan_fraction(image: Volume, masks: dict[str, Volume], prescription: PlanPrescription, *,
                  painting: Volume | None = None, warm_start: dict[str, np.ndarray] | None = None,
                  device: str = "cpu", machine: MachineConfig | None = None, model: BeamModel | None = None,
                  ct: Volume | None = None, density_table: DensityTable | None = None,
                  callback=None) -> PlanResult:
    """Plan one fraction (see the module docstring). ``painting`` is a course-dose map (Gy) on the image grid."""
    with torch_threads(prescription.settings.threads if torch.device(device).type == "cpu" else 0):
        return _plan(image, masks, prescription, painting=painting, warm_start=warm_start, device=device,
                     machine=machine, model=model, ct=ct, density_table=density_table, callback=callback)


def _plan(image: Volume, masks: dict[str, Volume], p: PlanPrescription, *, painting, warm_start, device, machine,
          model, ct, density_table, callback) -> PlanResult:
    t = {"start": time.perf_counter()}
    s = p.settings
    step = 360.0 / s.n_beams
    machine = machine or MachineConfig(gantry_angles_deg=tuple(round(s.first_gantry_deg + i * step, 6) for i in range(s.n_beams)))
    model = model or mrlinac_6fff()
    geom, dmasks, dens, pmap = dose_grid_inputs(image, prepare_structures(masks, p), p, painting=painting, ct=ct,
                                                density_table=density_table)
    objs, cons = plan_objectives(p, set(dmasks), pmap is not None)
    iso = tuple(geom.index_to_world(np.argwhere(dmasks[p.target].array).mean(axis=0)))
    beams = [Beam(a, iso, machine.sad_mm) for a in machine.gantry_angles_deg]
    grids = [bixel_grid_for_target(dmasks[p.target], b, machine, margin_mm=s.bixel_margin_mm) for b in beams]
    # the target is always a structure of the problem (the isocentre, PTV metrics and the aperture step need it
    # even when painting and an evaluation PTV leave no objective on it)
    used = {p.target} | {o.structure for o in [*objs, *cons]}
    body_idx, opt_pos, structs, weights, outside = points_and_structures(dmasks, p, used)
    full = DoseEngine(dens, body_idx, beams, grids, model, device=device)
    for b in range(len(beams)):
        full.beam_points(b)
    sub = full.subset(torch.as_tensor(opt_pos))
    infl = sub.influence()
    t["influence"] = time.perf_counter()
    problem = _problem(p, structs, weights, sub, pmap, objs, cons, geom.voxel_volume_cc, outside)
    warm = warm_start_weights(warm_start, beams, grids) if warm_start is not None else None
    if warm is not None:  # the previous fraction's fluence, mapped onto today's beamlets, and its constraint weights
        x0 = torch.as_tensor(warm, dtype=sub.dtype, device=sub.device)
        _warm_constraints(problem, warm_start)
    else:  # uniform fluence scaled to the prescription
        x0 = torch.ones(full.n_bixels, dtype=sub.dtype, device=sub.device)
        with torch.no_grad():
            x0 = x0 * p.dose_per_fraction_gy / infl.dose(x0)[problem.structures[p.target]].mean().clamp_min(1e-9)
    reg = _smoothing(grids, full.offsets, float(x0.mean().clamp_min(1e-6)), s.smoothing)
    res = optimize_plan(problem, infl.dose, x0, max_iter=s.max_iter, outer=s.outer_rounds, method=s.method,
                        regulariser=reg, callback=callback, rel_tol=s.rel_tol, abs_tol=s.abs_tol,
                        check_every=s.check_every)
    t["optimise"] = time.perf_counter()
    log.info("fluence optimisation: %d iterations, %d evaluations", res.n_iter, res.n_eval)
    segments, info = _deliver(infl, problem, res.x.detach(), machine, s, callback)
    t["sequence"] = time.perf_counter()
    dose = exact_dose(full, segments)
    for _ in range(s.final_checks):  # limits on every voxel of the organs (far ones were subsampled)
        bad = _full_violations(problem, dose, dmasks, body_idx, outside)
        info["final_check_violations"] = float(len(bad))
        if not bad:
            break
        bump(problem, bad, _aperture_settings(s), "final dose")
        segments, more = correct_apertures(problem, infl, segments, machine, settings=_aperture_settings(s),
                                           callback=callback, force=True)
        info["dao_iterations"] += more["dao_iterations"]
        dose = exact_dose(full, segments)
    arr = np.zeros(geom.shape, dtype=np.float32)
    arr.ravel()[body_idx] = dose.cpu().numpy()
    t["final_dose"] = time.perf_counter()
    timings = {k: t[k] - t[prev] for prev, k in zip(list(t)[:-1], list(t)[1:])}
    info.update(n_bixels=float(full.n_bixels), n_points_opt=float(sub.n_points), n_points_body=float(full.n_points),
                nnz=float(infl.nnz), nnz_scatter=float(infl.scatter.nnz),
                nnz_tail=float(infl.tail.nnz) if infl.tail is not None else 0.0, iterations=float(res.n_iter),
                evaluations=float(res.n_eval), threads=float(torch.get_num_threads()))
    cw = {_constraint_key(c): (r, sc) for c, r, sc in zip(problem.constraints, problem.rho, problem.scale)}
    return PlanResult(Volume(arr, geom), dmasks, beams, grids, res.x.cpu().numpy(), segments, p, machine, model,
                      pmap, res.history, timings, info, density=dens, constraint_weights=cw)


def _aperture_settings(s) -> ApertureSettings:
    return ApertureSettings(iterations=s.aperture_iter, outer=s.outer_rounds, corrections=s.aperture_corrections,
                            rel_tol=s.rel_tol, abs_tol=s.abs_tol, check_every=s.check_every)


def _full_violations(problem: PlanProblem, dose: torch.Tensor, dmasks: dict[str, Volume], body_idx: np.ndarray,
                     outside: dict[str, float]) -> list:
    """Constraints violated by ``dose`` (at the calculation voxels ``body_idx``) on the organs' full masks."""
    out = []
    for c in problem.constraints:
        sel = torch.as_tensor(np.flatnonzero(dmasks[c.structure].array.ravel()[body_idx]), device=dose.device)
        slack = c.margin(dose[sel], problem.voxel_cc, None, outside.get(c.structure, 0.0))
        if slack < 0:
            out.append((c, slack))
    return out


def _deliver(infl, problem: PlanProblem, w: torch.Tensor, machine: MachineConfig, s, callback
             ) -> tuple[list[Segment], dict[str, float]]:
    """Sequence the optimised fluence, optimise the apertures and MU, and report what sequencing cost."""
    engine = infl.engine
    fluences = [engine.beam_weights(w, b).cpu().numpy() for b in range(len(engine.grids))]
    segments = sequence_plan(fluences, engine.grids, machine, levels=s.levels)
    if not segments:
        raise InvalidImageError("leaf sequencing produced no deliverable segment; check the target and weights")
    with torch.no_grad():
        f_fluence = float(problem.value(infl.dose(w)))
    n_seq = len(segments)
    segments, info = optimize_apertures(problem, infl, segments, machine, settings=_aperture_settings(s),
                                        callback=callback)
    if not segments:
        raise InvalidImageError("no segment kept its minimum MU and area; check the prescription and machine limits")
    log.info("objective: fluence %.4g, sequenced %.4g, after aperture optimisation %.4g (%d -> %d segments)",
             f_fluence, info["dao_objective_start"], info["dao_objective_corrected"], n_seq, len(segments))
    return segments, {"objective_fluence": f_fluence, "objective_sequenced": info["dao_objective_start"],
                      "objective_segments": info["dao_objective_corrected"], "n_segments_sequenced": float(n_seq),
                      "n_segments": float(len(segments)), "total_mu": float(sum(x.mu for x in segments)), **info}
