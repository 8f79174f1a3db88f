"""``make_plan``: the decisions that turn a :class:`Fingerprint` and a :class:`Budget` into a :class:`Plan`."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from sarcart.errors import ConfigError
from sarcart.models.plan import (
    _COARSEN,
    ABDOMINAL_STRUCTURES,
    LATERAL_STRUCTURES,
    SLAB_SLICES,
    Budget,
    Fingerprint,
    NetworkPlan,
    Plan,
    Schedule,
    cost_gflop,
    divisor,
    filters_for,
    memory_mb,
    topology,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Candidate:
    spacing: tuple[float, float, float]
    patch: tuple[int, int, int]
    kernels: list
    strides: list
    filters: list[int]
    seconds_per_iteration: float
    coverage: float


def _candidates(base: tuple[float, float, float], max_spacing_mm: float) -> list[tuple[tuple[float, ...], str]]:
    """Spacings to try, finest first, each with its description.

    First the fine axes are coarsened (1x ... 4x) but never beyond the coarsest axis; then, when that is
    not enough, every axis is coarsened together (1.25x, 1.5x, 2x, 2.5x of the coarsest), up to
    ``max_spacing_mm``.
    """
    coarsest = max(base)
    out: list[tuple[tuple[float, ...], str]] = []
    for f in _COARSEN:
        sp = tuple(min(s * f, max(s, coarsest)) for s in base)
        if not out or not np.allclose(sp, out[-1][0]):
            out.append((sp, f"the median spacing with its fine axes coarsened {f:g}x"))
    for f in (1.25, 1.5, 2.0, 2.5):
        if coarsest * f <= max_spacing_mm + 1e-9:
            out.append(((coarsest * f,) * 3, f"isotropic {f:g}x the median's coarsest axis"))
    return out


def _round_up(size: np.ndarray, div: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(max(d, math.ceil(s / d) * d)) for s, d in zip(size, div))  # type: ignore[return-value]


def _fit_patch(spacing: tuple[float, float, float], extent_mm: tuple[float, ...], budget: Budget,
               *, max_seconds: float) -> _Candidate:
    """Largest patch (at most the median image, rounded to the stride divisor) inside memory and time.

    2.5D (``budget.context_slices``): the patch is ``budget.slab_slices`` (default 8) axial slices deep and its
    coverage counts the in-plane axes only.
    """
    shape = np.maximum(np.asarray(extent_mm) / np.asarray(spacing), 1.0)
    in_plane = budget.context_slices > 0
    if budget.patch_size is not None:
        target = np.asarray(budget.patch_size, float)
    else:
        target = shape.copy()
        if in_plane:
            target[2] = budget.slab_slices or SLAB_SLICES
    for _ in range(200):
        kernels, strides = topology(spacing, tuple(int(t) for t in target), budget.max_levels, in_plane=in_plane)
        div = divisor(strides)
        patch = budget.patch_size or _round_up(target, div)
        filters = filters_for(len(strides), budget)
        sec = cost_gflop(patch, kernels, strides, filters=filters, in_channels=max(1, budget.context_slices)) \
            * budget.batch_size / budget.throughput_gflops
        mem = memory_mb(patch, strides, filters, batch=budget.batch_size)
        fits = mem <= budget.memory_budget_mb and sec <= max_seconds
        if fits or budget.patch_size is not None or max(target) <= 8:
            break
        # shrink the axis with the largest physical extent by one divisor step
        a = int(np.argmax(target * np.asarray(spacing)))
        target[a] = max(_round_up(target, div)[a] - div[a], div[a]) if target[a] > div[a] else target[a] / 2
    covered = np.minimum(np.asarray(patch) / shape, 1.0)
    cov = float(np.min(covered[:2] if in_plane else covered))
    return _Candidate(spacing, patch, kernels, strides, filters, sec, cov)


def _choose(fp: Fingerprint, budget: Budget) -> tuple[_Candidate, list[str]]:
    base = budget.target_spacing_mm or fp.median_spacing_mm
    extent = fp.median_extent_mm
    train_s = budget.time_budget_min * 60.0 * budget.train_fraction
    max_sec = train_s / budget.min_iterations
    options = [(base, "fixed by the configuration")] if budget.target_spacing_mm else \
        _candidates(base, budget.max_spacing_mm)
    cand = None
    for spacing, how in options:
        cand = _fit_patch(spacing, extent, budget, max_seconds=max_sec)  # type: ignore[arg-type]
        if cand.seconds_per_iteration <= max_sec and cand.coverage >= budget.min_coverage - 1e-6:
            return cand, [(
                f"target spacing {tuple(round(s, 3) for s in cand.spacing)} mm = {how}: the finest spacing at "
                f"which a patch covering >= {budget.min_coverage:.0%} of the median image "
                f"({tuple(round(e) for e in extent)} mm) affords >= {budget.min_iterations} iterations in "
                f"{budget.time_budget_min:g} min at {budget.throughput_gflops:g} GFLOP/s"
            )]
    if cand is None:  # pragma: no cover - options is never empty
        raise ConfigError("no spacing candidates")
    return cand, [(
        f"no spacing up to {max(cand.spacing):.2f} mm met the coverage/time rule; using the coarsest "
        f"({tuple(round(s, 3) for s in cand.spacing)} mm) with patch coverage {cand.coverage:.0%}"
    )]


def _flip_axes(structures: list[str], budget: Budget) -> tuple[tuple[int, ...], str]:
    if budget.flip_axes is not None:
        return tuple(budget.flip_axes), f"flip axes {budget.flip_axes} fixed by the configuration"
    axes = [0, 1, 2]
    why = []
    if any(s in LATERAL_STRUCTURES for s in structures):
        axes.remove(0)
        why.append("no left/right flips: KIDNEY_L/KIDNEY_R are labels")
    if any(s in ABDOMINAL_STRUCTURES for s in structures):
        axes = [a for a in axes if a not in (1, 2)]
        why.append("no anterior/posterior or head/feet flips: abdominal organs are not mirror-symmetric")
    return tuple(axes), "; ".join(why) or "flips along all axes (extremity anatomy is mirror-symmetric enough)"


def make_plan(fp: Fingerprint, budget: Budget | None = None, *, task: str) -> Plan:
    """Derive the training plan of ``task`` from a dataset fingerprint within a compute budget.

    Args:
        fp: the dataset fingerprint (spacings, shapes, intensities, structure volumes).
        budget: time/memory budget and design limits; defaults to 45 min on the 2-core CPU machine.
        task: task name (``gtv-t1``, ``trufi``).

    Returns:
        A frozen :class:`Plan`; ``plan.decisions`` explains each choice in words.

    Raises:
        ConfigError: the fingerprint names no structures.
    """
    budget = budget or Budget()
    if not fp.structures:
        raise ConfigError("the fingerprint names no structures; build the dataset with --structures")
    cand, notes = _choose(fp, budget)
    train_s = budget.time_budget_min * 60.0 * budget.train_fraction
    iters = int(min(budget.max_iterations, max(1.0, train_s / max(cand.seconds_per_iteration, 1e-6))))
    epochs = budget.epochs or max(1, iters // budget.iterations_per_epoch)
    flips, flip_note = _flip_axes(fp.structures, budget)
    levels = len(cand.strides)
    network = NetworkPlan(
        name=budget.network, kernel_size=cand.kernels, strides=cand.strides, filters=cand.filters,
        deep_supervision=budget.network == "DynUNet" and levels > 2, deep_supr_num=max(1, min(2, levels - 2)),
        context_slices=budget.context_slices,
    )
    schedule = Schedule(
        epochs=epochs, iterations_per_epoch=budget.iterations_per_epoch, batch_size=budget.batch_size,
        est_seconds_per_iteration=round(cand.seconds_per_iteration, 3),
        est_training_minutes=round(epochs * budget.iterations_per_epoch * cand.seconds_per_iteration / 60, 1),
    )
    patch_mm = tuple(round(p * s) for p, s in zip(cand.patch, cand.spacing))
    if budget.context_slices:
        notes.append(
            f"2.5D: a 2D {budget.network} on each axial slice with its {budget.context_slices} nearest slices "
            f"({budget.context_slices * cand.spacing[2]:.1f} mm) as input channels; {cand.patch[2]} slices per "
            f"training patch")
    notes += [
        (f"patch {cand.patch} voxels ({patch_mm} mm), batch {budget.batch_size}, {levels} levels, "
         f"filters {cand.filters}"),
        (f"schedule: {epochs} epochs x {budget.iterations_per_epoch} iterations, about "
         f"{schedule.est_training_minutes} min at {cand.seconds_per_iteration:.2f} s/iteration (estimated)"),
        flip_note,
    ]
    profile = {
        "median_spacing_mm": list(fp.median_spacing_mm),
        "median_extent_mm": list(fp.median_extent_mm),
        "intensity": dict(fp.intensity),
        "n_cases": fp.n_cases,
        "structure_volume_cc_median": {k: float(np.median(v)) for k, v in fp.structure_volumes_cc.items() if v},
    }
    for n in notes:
        log.info("plan: %s", n)
    return Plan(
        task=task, structures=list(fp.structures), target_spacing_mm=cand.spacing, patch_size=cand.patch,
        network=network, schedule=schedule, flip_axes=flips, training_profile=profile, decisions=notes,
    )
