"""Direct aperture optimisation (DAO) of sequenced segments: leaf positions of both MLC layers and MU.

The segments of the leaf sequencer are refined with the same objectives and hard constraints as the
fluence (Shepard et al. 2002, doi 10.1118/1.1477415, optimise apertures and weights directly; here by
gradients). Each segment's variables are its MU and the left/right positions (IEC X, isocentre plane)
of every leaf of both layers that touches its rows. Effective row ``r`` is open over
``[max(U_l, L_l), min(U_r, L_r)]`` of its upper leaf ``U = (r // 2)`` and lower leaf ``L = (r + 1) // 2``
(the double-stack rule of :mod:`sarcart.dose.sequencing`), so every iterate is deliverable.

Dose model during the optimisation: the beamlet influence, each beamlet weighted by the open fraction
of its width (exact when the leaves sit on beamlet edges, as the sequencer leaves them; piecewise
linear in a leaf end inside a beamlet). The difference to the exact aperture dose
(:meth:`DoseEngine.aperture_dose`, erf leaf ends) is computed at the optimisation voxels after each
run and added as a fixed correction for the next one (the dose-correction loop of planning systems);
the plan's final dose is always the exact one. Gradients are exact for the model (autograd through
``max``/``min``/clamps, which are piecewise linear).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from sarcart.dose.engine import BixelGrid, DoseEngine
from sarcart.dose.machine import MachineConfig
from sarcart.dose.optimize import OptimizeResult, PlanProblem, optimize_plan
from sarcart.dose.sequencing import Segment

log = logging.getLogger(__name__)


@dataclass
class _BeamBlock:
    """Segments of one beam as tensors."""

    beam: int
    index: list[int]  # positions of these segments in the plan's segment list
    layer_rows: list[torch.Tensor]  # per layer: (R,) leaf index of each effective row
    n_leaves: list[int]
    edges: torch.Tensor  # (C + 1,) beamlet edges (mm)


class ApertureModel:
    """Maps a flat non-negative vector (MU, then leaf positions in beamlet units) to beamlet fluences.

    Args:
        engine: the engine of the beamlet influence (for the beamlet grids and the flat layout).
        segments: the segments (their leaves give the layers; without layers the rows are the leaves).
        mu_floor: MU added to every segment's variable (the minimum MU once segments are final).
    """

    def __init__(self, engine: DoseEngine, segments: list[Segment], *, mu_floor: float = 0.0) -> None:
        self.engine, self.segments, self.mu_floor = engine, list(segments), mu_floor
        self.blocks: list[_BeamBlock] = []
        pos0: list[torch.Tensor] = []
        for b, g in enumerate(engine.grids):
            idx = [i for i, s in enumerate(segments) if s.beam == b]
            if not idx:
                continue
            rows, counts, layers = _layers(segments[idx[0]], g)
            edges = torch.as_tensor(g.u_edges, dtype=engine.dtype)
            self.blocks.append(_BeamBlock(b, idx, rows, counts, edges))
            for li in range(len(layers)):
                pos = torch.as_tensor(np.stack([_layers(segments[i], g)[2][li] for i in idx]), dtype=engine.dtype)
                pos0.append(((pos.clamp(float(edges[0]), float(edges[-1])) - edges[0]) / (edges[1] - edges[0])).reshape(-1))
        mu = torch.as_tensor([s.mu for s in segments], dtype=engine.dtype) - mu_floor
        self.x0 = torch.cat([mu.clamp_min(0.0), *pos0])

    def _unpack(self, x: torch.Tensor):
        n = len(self.segments)
        mu, at = x[:n] + self.mu_floor, n
        for blk in self.blocks:
            width = blk.edges[1] - blk.edges[0]
            layers = []
            for count in blk.n_leaves:
                k = len(blk.index) * count * 2
                pos = blk.edges[0] + x[at:at + k].reshape(len(blk.index), count, 2) * width
                layers.append(pos.clamp(float(blk.edges[0]), float(blk.edges[-1])))
                at += k
            yield blk, mu[blk.index], layers

    @staticmethod
    def openings(blk: _BeamBlock, layers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S, R)`` effective left/right edges of every row (double-stack rule)."""
        left = torch.stack([lay[:, rows, 0] for lay, rows in zip(layers, blk.layer_rows)]).amax(0)
        right = torch.stack([lay[:, rows, 1] for lay, rows in zip(layers, blk.layer_rows)]).amin(0)
        return left, right

    def fluence(self, x: torch.Tensor) -> torch.Tensor:
        """Flat ``(n_bixels,)`` fluence (MU per beamlet) of the segments described by ``x``."""
        parts = [x.new_zeros(self.engine.grids[b].size) for b in range(len(self.engine.grids))]
        for blk, mu, layers in self._unpack(x):
            left, right = self.openings(blk, layers)
            lo, hi = blk.edges[:-1], blk.edges[1:]
            frac = (torch.minimum(right[..., None], hi) - torch.maximum(left[..., None], lo)).clamp_min(0.0) / (hi - lo)
            parts[blk.beam] = torch.einsum("s,src->rc", mu, frac).reshape(-1)
        return torch.cat(parts)

    def to_segments(self, x: torch.Tensor) -> list[Segment]:
        """Segments with the MU and leaf positions of ``x`` (crossed leaves closed at their mid-point)."""
        out: list[Segment | None] = [None] * len(self.segments)
        with torch.no_grad():
            for blk, mu, layers in self._unpack(x.detach()):
                layers = [_uncross(lay) for lay in layers]
                left, right = self.openings(blk, layers)
                closed = right <= left
                left, right = torch.where(closed, 0.0, left), torch.where(closed, 0.0, right)
                for j, i in enumerate(blk.index):
                    extra = {"upper_mm": layers[0][j].numpy().astype(float), "lower_mm": layers[1][j].numpy().astype(float)} \
                        if len(layers) == 2 else {}
                    out[i] = replace(self.segments[i], left_mm=left[j].numpy().astype(float),
                                     right_mm=right[j].numpy().astype(float), mu=float(mu[j]), **extra)
        return [s for s in out if s is not None]


def _uncross(layer: torch.Tensor) -> torch.Tensor:
    mid = 0.5 * (layer[..., 0] + layer[..., 1])
    crossed = layer[..., 1] < layer[..., 0]
    return torch.where(crossed[..., None], mid[..., None].expand_as(layer), layer)


def _layers(seg: Segment, grid: BixelGrid) -> tuple[list[torch.Tensor], list[int], list[np.ndarray]]:
    """Row -> leaf index per layer, leaves per layer, and the segment's ``(n, 2)`` leaf positions per layer."""
    n_rows = grid.shape[0]
    rows = np.arange(n_rows) + grid.row_offset
    if seg.upper_mm is None or seg.lower_mm is None:  # single layer: one leaf pair per row
        return [torch.arange(n_rows)], [n_rows], [np.stack([seg.left_mm, seg.right_mm], axis=1)]
    out_rows, counts = [], []
    for shift, pos in ((0, seg.upper_mm), (1, seg.lower_mm)):
        leaf = (rows + shift) // 2
        out_rows.append(torch.as_tensor(leaf - leaf[0]))
        counts.append(len(pos))
    return out_rows, counts, [np.asarray(seg.upper_mm, float), np.asarray(seg.lower_mm, float)]


def exact_dose(engine: DoseEngine, segments: list[Segment]) -> torch.Tensor:
    """``(N,)`` dose (Gy) of the segments at the engine's points with erf leaf ends (matrix-free)."""
    dose = torch.zeros(engine.n_points, dtype=engine.dtype, device=engine.device)
    with torch.no_grad():
        for b in range(len(engine.beams)):
            segs = [s for s in segments if s.beam == b]
            if segs:
                left = torch.as_tensor(np.stack([s.left_mm for s in segs]), dtype=engine.dtype, device=engine.device)
                right = torch.as_tensor(np.stack([s.right_mm for s in segs]), dtype=engine.dtype, device=engine.device)
                mu = torch.as_tensor([s.mu for s in segs], dtype=engine.dtype, device=engine.device)
                dose += engine.aperture_dose(b, left, right, mu)
    return dose


@dataclass(frozen=True)
class ApertureSettings:
    """Settings of :func:`optimize_apertures`."""

    iterations: int = 60  # per round of the first run; later runs get half
    outer: int = 3  # constraint rounds per run
    corrections: int = 2  # runs on the exact-dose-corrected model (fewer when the exact dose meets the limits)
    rel_tol: float = 1e-4
    abs_tol: float = 1e-3
    check_every: int = 10
    growth: float = 4.0  # penalty weight factor when a limit is violated
    level_step: float = 0.98  # internal level factor when a limit is violated


def _run(problem: PlanProblem, infl, model: ApertureModel, correction: torch.Tensor | None, cfg: ApertureSettings,
         callback: Callable[[int, float], None] | None) -> OptimizeResult:
    def dose_fn(x: torch.Tensor) -> torch.Tensor:
        d = infl.dose(model.fluence(x))
        return d if correction is None else d + correction
    return optimize_plan(problem, dose_fn, model.x0, max_iter=cfg.iterations, outer=cfg.outer, rel_tol=cfg.rel_tol,
                         abs_tol=cfg.abs_tol,
                         check_every=cfg.check_every, callback=callback, growth=cfg.growth, level_step=cfg.level_step)


def optimize_apertures(problem: PlanProblem, infl, segments: list[Segment], machine: MachineConfig, *,
                       settings: ApertureSettings = ApertureSettings(),
                       callback: Callable[[int, float], None] | None = None) -> tuple[list[Segment], dict[str, float]]:
    """Refine leaf positions and MU of ``segments`` on the optimisation voxels of ``infl`` (see the module docstring).

    Segments whose MU fall below the machine's minimum or whose opening falls below the minimum area
    are removed after the first run; later runs (:func:`correct_apertures`) keep every MU at least at the minimum.

    Returns:
        The refined segments and a report (objective before/after, model error of the correction).
    """
    model = ApertureModel(infl.engine, segments)
    with torch.no_grad():
        f0 = float(problem.value(infl.dose(model.fluence(model.x0))))
    res = _run(problem, infl, model, None, settings, callback)
    segs = [s for s in model.to_segments(res.x) if s.mu >= machine.min_mu_per_segment and
            s.area_cm2(machine.row_width_mm) >= machine.min_segment_area_cm2]
    info = {"dao_objective_start": f0, "dao_objective_model": res.fun, "dao_iterations": float(res.n_iter),
            "dao_objective_corrected": res.fun}
    segs, more = correct_apertures(problem, infl, segs, machine, settings=settings, callback=callback, force=True)
    info.update(more, dao_iterations=info["dao_iterations"] + more["dao_iterations"])
    log.info("aperture optimisation: objective %.4g -> %.4g (%d segments, %d iterations)", f0,
             info["dao_objective_corrected"], len(segs), info["dao_iterations"])
    return segs, info


def bump(problem: PlanProblem, bad: list, settings: ApertureSettings, what: str) -> None:
    """Raise the weight and lower the internal level of violated constraints."""
    for c, slack in bad:
        i = problem.constraints.index(c)
        problem.rho[i] *= settings.growth
        problem.scale[i] *= settings.level_step
        log.info("%s: %s %s violated (slack %.3g): weight -> %.3g", what, c.structure, c.kind, slack, problem.rho[i])


def correct_apertures(problem: PlanProblem, infl, segments: list[Segment], machine: MachineConfig, *,
                      settings: ApertureSettings = ApertureSettings(), callback: Callable[[int, float], None] | None = None,
                      force: bool = False) -> tuple[list[Segment], dict[str, float]]:
    """Runs on the exact-dose-corrected model (MU >= the machine minimum) until the exact dose meets the limits.

    Args:
        force: run at least once even when the exact dose already meets the limits.
    """
    engine, segs = infl.engine, list(segments)
    info: dict[str, float] = {"dao_iterations": 0.0}
    for k in range(settings.corrections + 1):
        model = ApertureModel(engine, segs, mu_floor=machine.min_mu_per_segment)
        with torch.no_grad():
            exact = exact_dose(engine, segs)
            correction = exact - infl.dose(model.fluence(model.x0))
            bad = problem.violations(exact)
        info[f"dao_model_error_gy_{k}"] = float(correction.abs().max())
        if k == settings.corrections or (k > 0 and not bad) or (k == 0 and not bad and not force):
            break
        if k > 0:  # the corrected model met the limits, the exact dose does not: add margin
            bump(problem, bad, settings, "exact dose")
        res = _run(problem, infl, model, correction, replace(settings, iterations=max(settings.iterations // 2, 1)),
                   callback)
        segs = [s for s in model.to_segments(res.x) if s.area_cm2(machine.row_width_mm) >= machine.min_segment_area_cm2]
        info["dao_iterations"] += res.n_iter
        info["dao_objective_corrected"] = res.fun
    info["dao_exact_violations"] = float(len(bad))
    return segs, info
