"""Per-fraction planning: structures -> dose grid -> optimisation -> sequencing -> final dose -> evaluation.

:func:`plan_fraction` runs the whole chain on the day's image and structures:

1. PTV from the GTV with the prescription's margin when no PTV is given; ``KIDNEYS`` = both kidneys.
2. A dose grid (``settings.dose_grid_mm``) over the BODY; masks, density and painting map resampled.
3. Beamlets (4.15 mm rows x ``bixel_x_mm``) over the PTV projection of every beam.
4. Optimisation on the sparse influence (primary CSR + separable scatter) with hard OAR limits,
   warm-started from the previous plan when given.
5. Leaf sequencing (double stack, minimum area), segment-MU re-optimisation with the same objective
   on the segments' exact aperture doses, removal of segments below the minimum MU.
6. Final dose of the segments, matrix-free, on every BODY voxel; the loss of sequencing is reported.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from sarcart.dose.beams import Beam
from sarcart.dose.density import DensityTable, density_from_ct, density_from_structures
from sarcart.dose.engine import BixelGrid, DoseEngine, bixel_grid_for_target
from sarcart.dose.machine import BeamModel, MachineConfig, mrlinac_6fff
from sarcart.dose.objectives import Objective
from sarcart.dose.optimize import OptimizeResult, PlanProblem, minimize_nonneg, optimize_plan
from sarcart.dose.prescription import PlanPrescription
from sarcart.dose.sequencing import Segment, sequence_plan
from sarcart.errors import InvalidImageError
from sarcart.io.geometry import Geometry, Volume

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

    @property
    def course_dose(self) -> Volume:
        return self.dose.with_array(self.dose.array * self.prescription.fractions)


def grow_mask(mask: Volume, margin_mm: float) -> Volume:
    """Isotropic expansion of a boolean mask by ``margin_mm`` (Euclidean distance in mm)."""
    if margin_mm <= 0:
        return mask
    dist = ndimage.distance_transform_edt(~mask.array.astype(bool), sampling=mask.geometry.spacing_mm)
    return mask.with_array(dist <= margin_mm)


def prepare_structures(masks: dict[str, Volume], prescription: PlanPrescription) -> dict[str, Volume]:
    """Add the PTV (GTV + margin) when missing and ``KIDNEYS`` (union of both kidneys)."""
    out = dict(masks)
    if prescription.target not in out:
        if prescription.gtv not in out:
            raise InvalidImageError(f"neither {prescription.target} nor {prescription.gtv} among the structures "
                                    f"{sorted(out)}; contour the target")
        out[prescription.target] = grow_mask(out[prescription.gtv], prescription.ptv_margin_mm)
        if "BODY" in out:
            out[prescription.target] = out[prescription.target].with_array(
                out[prescription.target].array & out["BODY"].array.astype(bool))
        log.info("%s made from %s + %.1f mm", prescription.target, prescription.gtv, prescription.ptv_margin_mm)
    kid = [out[k].array.astype(bool) for k in ("KIDNEY_L", "KIDNEY_R") if k in out]
    if kid and "KIDNEYS" not in out:
        out["KIDNEYS"] = out["BODY" if "BODY" in out else next(iter(out))].with_array(np.logical_or.reduce(kid))
    return out


def dose_grid(body: Volume, spacing_mm: float) -> Geometry:
    """Axis-aligned (image direction) grid of ``spacing_mm`` voxels covering the BODY's bounding box."""
    idx = np.argwhere(body.array)
    if idx.size == 0:
        raise InvalidImageError("BODY mask is empty")
    g = body.geometry
    lo, hi = idx.min(axis=0) - 0.5, idx.max(axis=0) + 0.5
    extent = (hi - lo) * np.asarray(g.spacing_mm)
    shape = tuple(int(max(np.ceil(e / spacing_mm), 1)) for e in extent)
    start = g.index_to_world(lo) + g.direction_matrix @ (np.full(3, spacing_mm / 2.0))
    return Geometry(shape, (spacing_mm,) * 3, tuple(start), g.direction)


def resample(volume: Volume, geometry: Geometry, *, is_mask: bool) -> Volume:
    """Resample onto ``geometry`` (linear; masks thresholded at 0.5 of the interpolated fraction)."""
    img = volume.with_array(volume.array.astype(np.float32)).to_sitk()
    out = sitk.Resample(img, geometry.reference_image(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    arr = Volume.from_sitk(out).array
    return Volume(arr >= 0.5 if is_mask else arr, geometry)


def painting_from_spec(masks: dict[str, Volume], p: PlanPrescription) -> Volume | None:
    """Course-dose prescription map: boost in the grown boost structure, base elsewhere in the target,
    a linear ramp over ``ramp_mm`` between them (``None`` without a painting spec or boost structure)."""
    spec = p.painting
    if spec is None or spec.boost_structure not in masks:
        return None
    boost = grow_mask(masks[spec.boost_structure], spec.grow_mm)
    dist = ndimage.distance_transform_edt(~boost.array, sampling=boost.geometry.spacing_mm)
    frac = np.clip(dist / spec.ramp_mm, 0.0, 1.0) if spec.ramp_mm > 0 else (dist > 0).astype(float)
    pmap = spec.boost_gy - (spec.boost_gy - p.dose_gy) * frac
    return boost.with_array(np.where(masks[p.target].array, pmap, 0.0).astype(np.float32))


def _objectives(p: PlanPrescription, present: set[str], painting: bool) -> tuple[list[Objective], list]:
    objs, cons = p.per_fraction()
    keep = [o for o in objs if o.structure in present and not (painting and o.structure == p.target and o.kind == "max")]
    dropped = {o.structure for o in objs} - present
    if dropped:
        log.warning("no %s structure(s): their objectives are dropped", ", ".join(sorted(dropped)))
    missing_c = [c for c in cons if c.structure not in present]
    if missing_c:
        log.warning("constraints on absent structures ignored: %s", ", ".join(c.structure for c in missing_c))
    if painting:
        weight = p.painting.weight if p.painting is not None else 50.0
        keep.append(Objective(structure=p.target, kind="painting", weight=weight))
    return keep, [c for c in cons if c.structure in present]


def _ring_and_body(masks: dict[str, Volume], p: PlanPrescription) -> dict[str, np.ndarray]:
    s = p.settings
    ptv = masks[p.target].array
    dist = ndimage.distance_transform_edt(~ptv, sampling=masks[p.target].geometry.spacing_mm)
    body = masks["BODY"].array
    ring = body & (dist > s.ring_inner_mm) & (dist <= s.ring_outer_mm)
    far = body & (dist > s.ring_outer_mm)
    sub = np.zeros_like(far)
    sub[::2, ::2, ::2] = True  # normal tissue far from the target: every 8th voxel is enough
    return {"RING": ring, "NORMAL": far & sub}


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


def plan_state(result: PlanResult) -> dict[str, np.ndarray]:
    """Arrays to save as ``plan_state.npz`` (warm start of the next fraction)."""
    st: dict[str, np.ndarray] = {"gantry_deg": np.array([b.gantry_deg for b in result.beams])}
    off = np.concatenate([[0], np.cumsum([g.size for g in result.grids])])
    for b, g in enumerate(result.grids):
        st[f"u_edges_{b}"], st[f"v_edges_{b}"] = np.asarray(g.u_edges), np.asarray(g.v_edges)
        st[f"weights_{b}"] = result.weights[off[b]:off[b + 1]].reshape(g.shape)
    return st


def segment_patterns(engine: DoseEngine, segments: list[Segment]) -> torch.Tensor:
    """``(n_bixels, S)`` open fraction of every beamlet in every segment (apertures lie on beamlet edges)."""
    out = torch.zeros((engine.n_bixels, len(segments)), dtype=engine.dtype, device=engine.device)
    for i, s in enumerate(segments):
        g = engine.grids[s.beam]
        uc = 0.5 * (np.asarray(g.u_edges[1:]) + np.asarray(g.u_edges[:-1]))
        open_ = (uc[None, :] > s.left_mm[:, None]) & (uc[None, :] < s.right_mm[:, None])
        out[engine.offsets[s.beam]:engine.offsets[s.beam + 1], i] = torch.as_tensor(open_.ravel(), dtype=engine.dtype)
    return out


def _segment_columns(influence, segments: list[Segment]) -> torch.Tensor:
    """``(n_points, n_segments)`` dose per MU of each segment on the optimisation points."""
    return influence.columns(segment_patterns(influence.engine, segments))


def segment_mu(problem: PlanProblem, columns: torch.Tensor, segments: list[Segment], machine: MachineConfig, *,
               max_iter: int = 100) -> tuple[list[Segment], torch.Tensor]:
    """Re-optimise segment MU on their exact doses; drop segments below the minimum MU and repeat once.

    Returns:
        The kept segments with their new MU, and their indices among the input segments.
    """
    mu0 = torch.as_tensor([s.mu for s in segments], dtype=columns.dtype, device=columns.device)
    res = minimize_nonneg(lambda m: problem.value(columns @ m), mu0, max_iter=max_iter, rel_tol=1e-5)
    log.info("segment MU: %d iterations, %d evaluations", res.n_iter, res.n_eval)
    keep = (res.x >= machine.min_mu_per_segment).nonzero().reshape(-1)
    if len(keep) < len(segments):
        log.info("%d segment(s) below %.1f MU removed", len(segments) - len(keep), machine.min_mu_per_segment)
        sub, floor = columns[:, keep], machine.min_mu_per_segment  # optimise MU - floor >= 0: every MU >= floor
        res = minimize_nonneg(lambda m: problem.value(sub @ (m + floor)), (res.x[keep] - floor).clamp_min(0.0),
                              max_iter=max_iter, rel_tol=1e-5)
        res.x = res.x + floor
    kept = [segments[int(i)] for i in keep]
    return [replace(s, mu=float(m)) for s, m in zip(kept, res.x.tolist())], keep


def _calc_box(target: Volume, margin_mm: float) -> np.ndarray:
    """Boolean box: the target's bounding box grown by ``margin_mm`` (the dose calculation volume)."""
    idx = np.argwhere(target.array)
    pad = np.ceil(margin_mm / np.asarray(target.geometry.spacing_mm)).astype(int)
    lo, hi = np.maximum(idx.min(0) - pad, 0), idx.max(0) + pad + 1
    box = np.zeros(target.geometry.shape, bool)
    box[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return box


def _points_and_structures(dmasks: dict[str, Volume], p: PlanPrescription, names: set[str]
                           ) -> tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]:
    """BODY voxel indices, optimisation positions (into them) and per-structure positions (into those)."""
    body = dmasks["BODY"].array & _calc_box(dmasks[p.target], p.settings.calc_margin_mm)
    body_idx = np.flatnonzero(body)
    extra = {k: v & body for k, v in _ring_and_body(dmasks, p).items()}
    chosen = {n: dmasks[n].array & body for n in names if n in dmasks} | extra
    union = np.logical_or.reduce(list(chosen.values()))
    pos_in_body = np.full(body.size, -1, dtype=np.int64)
    pos_in_body[body_idx] = np.arange(len(body_idx))
    opt_flat = np.flatnonzero(union)
    pos_in_opt = np.full(body.size, -1, dtype=np.int64)
    pos_in_opt[opt_flat] = np.arange(len(opt_flat))
    structs = {n: torch.as_tensor(pos_in_opt[np.flatnonzero(m)]) for n, m in chosen.items() if m.any()}
    return body_idx, pos_in_body[opt_flat], structs


def _dose_grid_inputs(image: Volume, masks: dict[str, Volume], p: PlanPrescription, *, painting: Volume | None,
                      ct: Volume | None, density_table: DensityTable | None
                      ) -> tuple[Geometry, dict[str, Volume], Volume, Volume | None]:
    """Dose grid, masks, relative electron density and painting map on it."""
    density = density_from_ct(ct, table=density_table) if ct is not None else \
        density_from_structures(masks, table=density_table, image=image)
    geom = dose_grid(masks["BODY"], p.settings.dose_grid_mm)
    dmasks = {k: resample(v, geom, is_mask=True) for k, v in masks.items()}
    dens = resample(density, geom, is_mask=False)
    pmap = resample(painting, geom, is_mask=False) if painting is not None else painting_from_spec(dmasks, p)
    return geom, dmasks, dens, pmap


def plan_fraction(image: Volume, masks: dict[str, Volume], prescription: PlanPrescription, *,
                  painting: Volume | None = None, warm_start: dict[str, np.ndarray] | None = None,
                  device: str = "cpu", machine: MachineConfig | None = None, model: BeamModel | None = None,
                  ct: Volume | None = None, density_table: DensityTable | None = None,
                  callback=None) -> PlanResult:
    """Plan one fraction (see the module docstring). ``painting`` is a course-dose map (Gy) on the image grid."""
    t = {"start": time.perf_counter()}
    p, s = prescription, prescription.settings
    step = 360.0 / s.n_beams
    machine = machine or MachineConfig(gantry_angles_deg=tuple(round(s.first_gantry_deg + i * step, 6) for i in range(s.n_beams)))
    model = model or mrlinac_6fff()
    geom, dmasks, dens, pmap = _dose_grid_inputs(image, prepare_structures(masks, p), p, painting=painting, ct=ct,
                                                 density_table=density_table)
    objs, cons = _objectives(p, set(dmasks), pmap is not None)
    iso = tuple(geom.index_to_world(np.argwhere(dmasks[p.target].array).mean(axis=0)))
    beams = [Beam(a, iso, machine.sad_mm) for a in machine.gantry_angles_deg]
    grids = [bixel_grid_for_target(dmasks[p.target], b, machine, margin_mm=s.bixel_margin_mm) for b in beams]
    body_idx, opt_pos, structs = _points_and_structures(dmasks, p, {o.structure for o in [*objs, *cons]})
    full = DoseEngine(dens, body_idx, beams, grids, model, device=device)
    for b in range(len(beams)):
        full.beam_points(b)
    sub = full.subset(torch.as_tensor(opt_pos))
    infl = sub.influence()
    t["influence"] = time.perf_counter()
    rx = p.dose_per_fraction_gy
    objs += [Objective(structure="RING", kind="max", dose_gy=s.ring_max_fraction * rx, weight=1.0),
             Objective(structure="NORMAL", kind="max", dose_gy=s.body_max_fraction * rx, weight=1.0)]
    maps = {p.target: torch.as_tensor(pmap.array.ravel()[sub.points.cpu().numpy()][structs[p.target].numpy()] / p.fractions,
                                      dtype=sub.dtype)} if pmap is not None else {}
    problem = PlanProblem(structs, [o for o in objs if o.structure in structs], cons, voxel_cc=geom.voxel_volume_cc,
                          maps=maps)
    warm = warm_start_weights(warm_start, beams, grids) if warm_start is not None else None
    if warm is not None:  # the previous fraction's fluence, mapped onto today's beamlets, as it is
        x0 = torch.as_tensor(warm, dtype=sub.dtype)
    else:  # uniform fluence scaled to the prescription
        x0 = torch.ones(full.n_bixels, dtype=sub.dtype)
        with torch.no_grad():
            x0 = x0 * rx / infl.dose(x0)[structs[p.target]].mean().clamp_min(1e-9)
    reg = _smoothing(grids, full.offsets, float(x0.mean().clamp_min(1e-6)), s.smoothing)
    res = optimize_plan(problem, infl.dose, x0, max_iter=s.max_iter, outer=s.outer_rounds, method=s.method,
                        regulariser=reg, callback=callback)
    t["optimise"] = time.perf_counter()
    log.info("fluence optimisation: %d iterations, %d evaluations", res.n_iter, res.n_eval)
    segments, info = _deliver(infl, problem, res, grids, machine, s.levels)
    t["sequence"] = time.perf_counter()
    dose = torch.zeros(full.n_points, dtype=full.dtype)
    for b in range(len(beams)):
        segs = [x for x in segments if x.beam == b]
        if segs:
            left = torch.as_tensor(np.stack([x.left_mm for x in segs]), dtype=full.dtype)
            right = torch.as_tensor(np.stack([x.right_mm for x in segs]), dtype=full.dtype)
            mu = torch.as_tensor([x.mu for x in segs], dtype=full.dtype)
            dose += full.aperture_dose(b, left, right, mu).detach()
    arr = np.zeros(geom.shape, dtype=np.float32)
    arr.ravel()[body_idx] = dose.cpu().numpy()
    t["final_dose"] = time.perf_counter()
    timings = {k: t[k] - t[prev] for prev, k in zip(list(t)[:-1], list(t)[1:])}
    info.update(n_bixels=float(full.n_bixels), n_points_opt=float(sub.n_points), n_points_body=float(full.n_points),
                nnz=float(infl.nnz), iterations=float(res.n_iter))
    return PlanResult(Volume(arr, geom), dmasks, beams, grids, res.x.cpu().numpy(), segments, p, machine, model,
                      pmap, res.history, timings, info, density=dens)


def _deliver(infl, problem: PlanProblem, res: OptimizeResult, grids: list[BixelGrid],
             machine: MachineConfig, levels: int) -> tuple[list[Segment], dict[str, float]]:
    """Sequence the optimised fluence, re-optimise segment MU, and report what sequencing cost."""
    engine = infl.engine
    w = res.x.detach()
    fluences = [engine.beam_weights(w, b).cpu().numpy() for b in range(len(grids))]
    segments = sequence_plan(fluences, grids, machine, levels=levels)
    if not segments:
        raise InvalidImageError("leaf sequencing produced no deliverable segment; check the target and weights")
    cols = _segment_columns(infl, segments)
    with torch.no_grad():
        f_fluence = float(problem.value(infl.dose(w)))
        f_seq = float(problem.value(cols @ torch.as_tensor([x.mu for x in segments], dtype=cols.dtype)))
    segments, keep = segment_mu(problem, cols, segments, machine)
    with torch.no_grad():
        mu = torch.as_tensor([x.mu for x in segments], dtype=cols.dtype)
        f_final = float(problem.value(cols[:, keep] @ mu))
    log.info("objective: fluence %.4g, sequenced %.4g, after segment MU %.4g (%d segments)", f_fluence, f_seq, f_final,
             len(segments))
    return segments, {"objective_fluence": f_fluence, "objective_sequenced": f_seq, "objective_segments": f_final,
                      "n_segments": float(len(segments)), "total_mu": float(mu.sum())}
