"""Step-and-shoot leaf sequencing for a double-stacked MLC.

1. The optimised fluence of a beam (MU per beamlet) is quantised to ``levels`` intensity levels.
2. Each effective row is decomposed into unit intervals by the unidirectional sweep (Bortfeld et
   al., IJROBP 1994;28:723; Galvin et al., IJROBP 1993;27:697 - DOIs not verified):
   the k-th rising edge pairs with the k-th falling edge, which uses the fewest monitor units per row.
   Segment k takes the k-th interval of every row; identical consecutive segments are merged.
3. Double stack: effective row ``r`` is the overlap of the openings of upper-layer leaf ``r // 2``
   and lower-layer leaf ``(r + 1) // 2``, so two adjacent rows share a leaf of each layer. Each leaf
   opens to the union of its two rows' wanted openings; the resulting row opening is the smallest
   deliverable aperture containing the wanted one (it is larger only where a row is narrower than
   both neighbours on the same side).
4. Segments smaller than ``min_segment_area_cm2`` are dropped; segment MU are then re-optimised and
   those below ``min_mu_per_segment`` removed (see :mod:`sarcart.dose.plan`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from sarcart.dose.engine import BixelGrid
from sarcart.dose.machine import MachineConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """One static MLC aperture of a beam.

    Attributes:
        beam: beam index.
        left_mm / right_mm: ``(R,)`` effective opening of each bixel row (isocentre plane, IEC X);
            ``left >= right`` means closed.
        mu: monitor units.
        upper_mm / lower_mm: ``(n_leaf, 2)`` left/right positions of the covering leaves of each layer
            (closed leaves parked at the row's centre).
    """

    beam: int
    left_mm: np.ndarray
    right_mm: np.ndarray
    mu: float
    upper_mm: np.ndarray | None = None
    lower_mm: np.ndarray | None = None

    def area_cm2(self, row_width_mm: float) -> float:
        return float(np.clip(self.right_mm - self.left_mm, 0, None).sum() * row_width_mm / 100.0)


def sweep_intervals(profile: np.ndarray) -> list[tuple[int, int]]:
    """Unit intervals ``[left, right)`` (column edges) whose sum is the integer ``profile`` ``(C,)``."""
    q = np.concatenate([[0], np.asarray(profile, dtype=int), [0]])
    diff = np.diff(q)
    lefts = np.repeat(np.arange(len(diff)), np.clip(diff, 0, None))
    rights = np.repeat(np.arange(len(diff)), np.clip(-diff, 0, None))
    return list(zip(lefts.tolist(), rights.tolist()))


def double_stack(left: np.ndarray, right: np.ndarray, first_row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deliverable row openings of a double-stacked MLC and the leaf positions of both layers.

    Args:
        left / right: ``(R,)`` wanted openings of consecutive effective rows (``nan`` = closed).
        first_row: global index of the first row (fixes which rows share a leaf).

    Returns:
        ``(left_eff, right_eff, upper, lower)``; ``upper``/``lower`` are ``(n, 2)`` leaf positions of
        the leaves touching these rows, ordered by leaf index (closed leaves: both edges at 0).
    """
    lo = np.where(np.isnan(left), np.inf, left)
    hi = np.where(np.isnan(right), -np.inf, right)
    rows = np.arange(len(lo)) + first_row

    def layer(shift: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        leaf = (rows + shift) // 2
        ids = np.unique(leaf)
        l_pos = np.array([lo[leaf == i].min() for i in ids])
        r_pos = np.array([hi[leaf == i].max() for i in ids])
        return leaf - ids[0], l_pos, r_pos

    uidx, ul, ur = layer(0)
    lidx, ll, lr = layer(1)
    eff_l = np.maximum(ul[uidx], ll[lidx])
    eff_r = np.minimum(ur[uidx], lr[lidx])
    closed = ~(eff_r > eff_l)
    eff_l, eff_r = np.where(closed, np.nan, eff_l), np.where(closed, np.nan, eff_r)

    def park(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        shut = ~(b > a)
        return np.stack([np.where(shut, 0.0, a), np.where(shut, 0.0, b)], axis=1)

    return eff_l, eff_r, park(ul, ur), park(ll, lr)


def sequence_beam(fluence: np.ndarray, grid: BixelGrid, machine: MachineConfig, *, beam: int = 0,
                  levels: int = 10) -> list[Segment]:
    """Segments of one beam from its ``(R, C)`` fluence (MU per beamlet); MU are the quantised levels."""
    f = np.clip(np.asarray(fluence, dtype=float), 0, None)
    if f.max() <= 0:
        return []
    unit = f.max() / levels
    q = np.rint(f / unit).astype(int)
    per_row = [sweep_intervals(q[r]) for r in range(q.shape[0])]
    n_seg = max((len(p) for p in per_row), default=0)
    edges = np.asarray(grid.u_edges)
    raw: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(n_seg):
        left = np.array([edges[p[k][0]] if k < len(p) else np.nan for p in per_row])
        right = np.array([edges[p[k][1]] if k < len(p) else np.nan for p in per_row])
        if raw and np.array_equal(raw[-1][0], left, equal_nan=True) and np.array_equal(raw[-1][1], right, equal_nan=True):
            raw.append(raw[-1])
        else:
            raw.append((left, right))
    merged: list[tuple[np.ndarray, np.ndarray, float]] = []
    for left, right in raw:
        if merged and merged[-1][0] is left:
            merged[-1] = (left, right, merged[-1][2] + unit)
        else:
            merged.append((left, right, unit))
    out = []
    for left, right, mu in merged:
        el, er, up, lo = double_stack(left, right, grid.row_offset) if machine.double_stacked else (left, right, None, None)
        seg = Segment(beam, np.nan_to_num(el, nan=0.0), np.nan_to_num(er, nan=0.0), float(mu), up, lo)
        if seg.area_cm2(machine.row_width_mm) < machine.min_segment_area_cm2:
            log.debug("beam %d: dropping a %.2f cm2 segment (%.2f MU)", beam, seg.area_cm2(machine.row_width_mm), mu)
            continue
        out.append(seg)
    return out


def sequence_plan(fluences: list[np.ndarray], grids: list[BixelGrid], machine: MachineConfig, *,
                  levels: int = 10) -> list[Segment]:
    """Segments of every beam (beam order, then sweep order)."""
    segs: list[Segment] = []
    for b, (f, g) in enumerate(zip(fluences, grids)):
        segs.extend(sequence_beam(f, g, machine, beam=b, levels=levels))
    return segs
