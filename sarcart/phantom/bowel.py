"""Bowel loops: tubes around centre lines (colon frame, small-bowel random walks), walls, gas.

Each centre line is a chain of points every few millimetres with a radius and a wall thickness.
A voxel belongs to the tube whose point is nearest *relative to that point's radius* (a power
diagram of spheres), so touching loops keep a wall between them when their points are far apart
along the bowel. Inside the lumen, gas rises anteriorly (patient supine): a voxel is gas when its
position along -y within its loop, ``level = (y - y_centre)/r``, lies above the loop's fluid line,
which gives flat air-fluid levels. Gas is regenerated each fraction (new fill per loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sarcart.phantom import tissues as T
from sarcart.phantom.fields import Grid, SmoothField

SMALL_BOWEL, COLON, STOMACH = 1, 2, 3
#: mean gas fill of the lumen per bowel kind (fraction of the diameter, index = kind)
GAS_FILL = (0.0, 0.06, 0.35, 0.3)


@dataclass
class TubePoints:
    """Centre-line samples of all tubes: positions (n, 3) mm, radius, wall (mm), kind, arc length (mm)."""

    xyz: np.ndarray
    radius: np.ndarray
    wall: np.ndarray
    kind: np.ndarray
    arc: np.ndarray

    @classmethod
    def concat(cls, parts: list[TubePoints]) -> TubePoints:
        if not parts:
            z = np.zeros((0,))
            return cls(np.zeros((0, 3)), z, z, z.astype(np.int8), z)
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("xyz", "radius", "wall", "kind", "arc")))


def chain(points: np.ndarray, radius: float | np.ndarray, *, wall: float, kind: int, step_mm: float = 3.0,
          arc0: float = 0.0) -> TubePoints:
    """Resample a polyline every ``step_mm`` (arc length offset ``arc0`` keeps chains apart)."""
    p = np.asarray(points, dtype=float)
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(s[-1] / step_mm) + 1, 2)
    t = np.linspace(0.0, s[-1], n)
    xyz = np.stack([np.interp(t, s, p[:, a]) for a in range(3)], axis=1)
    r = np.interp(t, s, np.broadcast_to(np.asarray(radius, dtype=float), s.shape))
    return TubePoints(xyz, r, np.full(n, wall), np.full(n, kind, dtype=np.int8), t + arc0)


def random_walks(free: np.ndarray, rng: np.random.Generator, *, origin: np.ndarray, step: np.ndarray,
                 radius: float, target_mm: float, step_mm: float = 4.0, gap_mm: float = 0.0,
                 arc0: float = 1e5) -> list[TubePoints]:
    """Self-avoiding persistent random walks inside ``free`` (coarse boolean grid).

    Args:
        free: coarse grid of allowed centre positions; origin/step: its world origin and spacing (mm).
        radius: tube radius (mm); walks keep 2 radii + ``gap_mm`` from older parts of any walk.
        target_mm: total centre-line length to place.
    """
    occ = ~free.copy()
    lag = int(np.ceil(2.5 * radius / step_mm))
    keep = (2.0 * radius + gap_mm)
    ker = ball_offsets(keep, step)
    walks: list[TubePoints] = []
    total, fails, arc = 0.0, 0, arc0

    def cell(p: np.ndarray) -> tuple[int, ...] | None:
        c = np.round((p - origin) / step).astype(int)
        return tuple(c) if np.all(c >= 0) and np.all(c < occ.shape) else None

    while total < target_mm and fails < 300:
        cand = np.argwhere(~occ)
        if len(cand) == 0:
            break
        p = origin + cand[rng.integers(len(cand))] * step + rng.uniform(-0.5, 0.5, 3) * step
        d = _unit(rng.standard_normal(3) * np.array([1.0, 1.0, 0.6]))
        pts = [p]
        for _ in range(400):
            ok = False
            for attempt in range(24):
                nd = _unit(d + rng.standard_normal(3) * (0.5 + 0.1 * attempt))
                q = pts[-1] + nd * step_mm
                c = cell(q)
                if c is not None and not occ[c]:
                    ok = True
                    break
            if not ok:
                break
            d = nd
            pts.append(q)
            if len(pts) > lag:
                stamp(occ, cell(pts[-lag - 1]), ker)
        for q in pts[-lag:]:
            stamp(occ, cell(q), ker)
        if len(pts) < 8:
            fails += 1
            continue
        tp = chain(np.array(pts), radius, wall=2.5, kind=SMALL_BOWEL, step_mm=3.0, arc0=arc)
        walks.append(tp)
        length = float(tp.arc[-1] - tp.arc[0])
        total += length
        arc += length + 1e4
    return walks


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def ball_offsets(radius_mm: float, step: np.ndarray) -> np.ndarray:
    r = np.ceil(radius_mm / step).astype(int)
    g = np.mgrid[-r[0]: r[0] + 1, -r[1]: r[1] + 1, -r[2]: r[2] + 1].astype(float)
    d2 = sum((g[a] * step[a]) ** 2 for a in range(3))
    return np.argwhere(d2 <= radius_mm ** 2) - r


def stamp(occ: np.ndarray, c: tuple[int, ...] | None, ker: np.ndarray) -> None:
    if c is None:
        return
    idx = ker + np.asarray(c)
    ok = np.all((idx >= 0) & (idx < occ.shape), axis=1)
    occ[tuple(idx[ok].T)] = True


def rasterise(grid: Grid, labels: np.ndarray, tubes: TubePoints, *, replace: tuple[int, ...] = (T.FAT,)
              ) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray]:
    """Draw the tubes into ``labels`` (wall, content) where the label is in ``replace``.

    Returns:
        (box slices, lumen mask, level int8, kind uint8) over the tubes' bounding box.
    """
    pad = float(tubes.radius.max()) + 2.0
    lo = tubes.xyz.min(axis=0) - pad
    hi = tubes.xyz.max(axis=0) + pad
    sl, x, y, z = grid.box(tuple(lo), tuple(hi))  # type: ignore[arg-type]
    shape = (x.shape[0], y.shape[1], z.shape[2])
    rel = np.full(shape, np.inf, dtype=np.float32)
    owner = np.full(shape, -1, dtype=np.int32)
    sp = np.asarray(grid.geometry.spacing_mm)
    org = np.array([x.ravel()[0], y.ravel()[0], z.ravel()[0]])
    for i, (p, r) in enumerate(zip(tubes.xyz, tubes.radius)):
        i0 = np.maximum(np.floor((p - r - org) / sp).astype(int), 0)
        i1 = np.minimum(np.ceil((p + r - org) / sp).astype(int) + 1, shape)
        if np.any(i1 <= i0):
            continue
        bx = (slice(i0[0], i1[0]), slice(i0[1], i1[1]), slice(i0[2], i1[2]))
        d = np.sqrt((x[bx[0]] - p[0]) ** 2 + (y[:, bx[1]] - p[1]) ** 2 + (z[:, :, bx[2]] - p[2]) ** 2) / np.float32(r)
        sub_rel, sub_own = rel[bx], owner[bx]
        better = d < sub_rel
        sub_rel[better] = d[better]
        sub_own[better] = i
    inside = rel < 1.0
    own = np.where(inside, owner, 0)
    wall = inside & (rel >= 1.0 - tubes.wall[own] / tubes.radius[own])
    wall |= _loop_borders(own, inside, arc=tubes.arc, far_mm=2.5 * float(tubes.radius.max()))
    box = labels[sl]
    ok = inside & np.isin(box, replace)
    box[ok & wall] = T.BOWEL_WALL
    lumen = ok & ~wall
    box[lumen] = T.BOWEL_CONTENT
    yc = tubes.xyz[own, 1]
    level = np.where(lumen, np.clip((y - yc) / tubes.radius[own], -1.0, 1.0) * 127.0, 0.0)
    kind = np.where(lumen, tubes.kind[own], 0).astype(np.uint8)
    return sl, lumen, np.round(level).astype(np.int8), kind  # type: ignore[return-value]


def _loop_borders(own: np.ndarray, inside: np.ndarray, *, arc: np.ndarray, far_mm: float) -> np.ndarray:
    """Voxels whose neighbour belongs to a far part of the bowel (another loop): a wall between loops."""
    out = np.zeros(own.shape, dtype=bool)
    s = arc[own]
    for a in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        diff = (np.abs(s[tuple(lo)] - s[tuple(hi)]) > far_mm) & inside[tuple(lo)] & inside[tuple(hi)]
        out[tuple(lo)] |= diff
        out[tuple(hi)] |= diff
    return out


def fill_gas(labels: np.ndarray, level: np.ndarray, *, kind: np.ndarray, fill: np.ndarray) -> None:
    """Re-split the lumen (BOWEL_CONTENT or GAS voxels) into gas above the fluid line, content below.

    Args:
        labels: label box (modified in place). level: int8/int16 lumen level (-127 anterior .. 127).
        kind: bowel kind per voxel (0 = not lumen). fill: float32 local gas fill (0..1) per voxel.
    """
    lumen = (labels == T.BOWEL_CONTENT) | (labels == T.GAS)
    lumen &= kind > 0
    gas = lumen & (level.astype(np.float32) < -127.0 + 254.0 * fill)
    labels[lumen] = T.BOWEL_CONTENT
    labels[gas] = T.GAS


def gas_fill(kind: np.ndarray, rng: np.random.Generator, *, axes: tuple[np.ndarray, np.ndarray, np.ndarray]
             ) -> np.ndarray:
    """Local gas fill: the kind's mean fill plus a smooth random field (pockets move between fractions).

    Args:
        kind: bowel kind per voxel of a box. axes: its world coordinates, broadcastable (x, y, z).
    """
    x, y, z = axes
    lo = (float(x.min()), float(y.min()), float(z.min()))
    hi = (float(x.max()), float(y.max()), float(z.max()))
    n = SmoothField.random(rng, lo, hi, corr_mm=20.0).on_axes(x, y, z)
    base = np.asarray(GAS_FILL, dtype=np.float32)[kind]
    return np.clip(base + np.float32(0.25) * n - np.float32(0.1), 0.0, 0.85).astype(np.float32)
