"""Assemble the retroperitoneal site: torso, organs, the sarcoma, stomach, colon and small bowel."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from sarcart.phantom import abdomen, bowel
from sarcart.phantom import tissues as T
from sarcart.phantom.anatomy import (
    Anatomy,
    TumourSpec,
    base_texture,
    extended_grid,
    finish_anatomy,
    insert_tumour,
    tumour_shape,
)
from sarcart.phantom.config import PhantomConfig
from sarcart.phantom.fields import Grid, SmoothField, rng_for, smoothstep
from sarcart.phantom.patients import PatientParams
from sarcart.phantom.tumour import tumour_field

_BLOCK = (T.LIVER, T.KIDNEY_L, T.KIDNEY_R, T.VESSEL, T.TUMOUR, T.NECROSIS, T.BONE_CORTEX, T.BONE_MARROW,
          T.SPINAL_CANAL)
_COARSE_MM = 4.0


def build_retroperitoneum(config: PhantomConfig, patient: PatientParams) -> Anatomy:
    """Reference anatomy of a retroperitoneal sarcoma patient (extended grid, world = LPS mm)."""
    rng = rng_for(patient.seed, "anatomy")
    geom, pad = extended_grid(config)
    grid = Grid(geom)
    labels = np.zeros(geom.shape, dtype=np.uint8)
    torso = abdomen.Torso.sample(rng)
    cavity = abdomen.body_wall(grid, labels, torso)
    abdomen.muscles_and_bone(grid, labels, torso, rng=rng)
    abdomen.liver(grid, labels, cavity, t=torso, rng=rng)
    kc = abdomen.kidneys(grid, labels, torso, rng=rng)
    abdomen.vessels(grid, labels, torso, kidney_centres=kc)
    texture = base_texture(grid, rng, config.texture_sd)
    hypoxia = np.zeros(geom.shape, dtype=bool)

    side = -1.0 if patient.side == "R" else 1.0
    r_eq = (3.0 * patient.volume_cc * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    cav_half = torso.half_width - torso.fat - torso.wall - 2.0
    kz = torso.kidney_z[0 if side < 0 else 1]
    centre = (side * min(float(rng.uniform(72.0, 95.0)), cav_half - 0.9 * r_eq),
              torso.vb_y - float(rng.uniform(8.0, 22.0)),
              kz - 45.0 - 0.35 * r_eq)
    shape = tumour_shape(centre, patient.volume_cc, rng, elongation=patient.elongation, yaw_deg=float(rng.uniform(0, 180)),
                         tilt_deg=float(rng.uniform(-20, 20)))
    tf = tumour_field(grid, shape, rng)
    spec = TumourSpec(patient.volume_cc, patient.necrotic_fraction, patient.hypoxic_fraction, 0.0)
    info = insert_tumour(labels, tf, spec, texture=texture, hypoxia=hypoxia, rng=rng, config=config,
                         protected=(0, T.SKIN, T.BONE_CORTEX, T.BONE_MARROW, T.SPINAL_CANAL, T.KIDNEY_L,
                                    T.KIDNEY_R, T.VESSEL, T.LIVER))
    level = np.zeros(geom.shape, dtype=np.int8)
    kind = np.zeros(geom.shape, dtype=np.uint8)
    _stomach(grid, labels, level, kind=kind, torso=torso, cavity=cavity, rng=rng)
    _bowel(grid, labels, level, kind=kind, torso=torso, cavity=cavity, rng=rng)
    _content_texture(texture, kind, rng_for(patient.seed, "content"), grid=grid)
    _refill_gas(grid, labels, level, kind=kind, rng=rng_for(patient.seed, "gas", 0))

    organs = np.isin(labels, (T.LIVER, T.KIDNEY_L, T.KIDNEY_R, T.BOWEL_WALL, T.BOWEL_CONTENT, T.GAS))
    breathing = SmoothField.weight_from_mask(organs | (cavity & (labels == T.FAT)), geom, smooth_mm=12.0)
    zc = breathing.origin_mm[2] + breathing.step_mm[2] * np.arange(breathing.coarse.shape[2])
    taper = 0.3 + 0.7 * smoothstep(zc, -150.0, 100.0)
    breathing = SmoothField(breathing.coarse * taper[None, None, :], breathing.origin_mm, breathing.step_mm)
    bowel_w = SmoothField.weight_from_mask(np.isin(labels, T.STRUCTURES["BOWEL"]), geom, smooth_mm=8.0)
    soft = SmoothField.weight_from_mask((labels > 0) & ~np.isin(labels, T.STRUCTURES["BONE"]), geom)
    anatomy = Anatomy(
        site="retroperitoneum", geometry=geom, pad=pad, labels=labels, hypoxia=hypoxia, texture=texture,
        tumour_centre_mm=centre, tumour_radius_mm=shape.bound_mm * tf.scale, laterality=None,
        level=level, bowel_kind=kind, breathing_weight=breathing, bowel_weight=bowel_w, soft_weight=soft,
        info={**info, "torso": torso.__dict__, "tumour_side": patient.side},
    )
    return finish_anatomy(anatomy, tf)


def _content_texture(texture: np.ndarray, kind: np.ndarray, rng: np.random.Generator, *, grid: Grid) -> None:
    """Bowel contents are not all clear fluid: chyme and stool get a lower, patchy proton density."""
    lumen = kind > 0
    if not lumen.any():
        return
    idx = [np.flatnonzero(lumen.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    sl = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
    x, y, z = (grid.axis(a)[sl[a]] for a in range(3))
    n = SmoothField.random(rng, (x[0], y[0], z[0]), (x[-1], y[-1], z[-1]), corr_mm=8.0).on_axes(x, y, z)
    mean = np.array([1.0, 0.7, 0.5, 0.9], dtype=np.float32)[kind[sl]]
    spread = np.array([0.0, 0.2, 0.2, 0.05], dtype=np.float32)[kind[sl]]
    factor = np.clip(mean + spread * n, 0.3, 1.1)
    tex = texture[sl]
    m = lumen[sl]
    tex[m] = tex[m] * factor[m]


def _refill_gas(grid: Grid, labels: np.ndarray, level: np.ndarray, *, kind: np.ndarray,
                rng: np.random.Generator) -> None:
    lumen = kind > 0
    if not lumen.any():
        return
    idx = [np.flatnonzero(lumen.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    sl = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
    x, y, z = (grid.axis(a)[sl[a]] for a in range(3))
    fill = bowel.gas_fill(kind[sl], rng, axes=(x[:, None, None], y[None, :, None], z[None, None, :]))
    bowel.fill_gas(labels[sl], level[sl], kind=kind[sl], fill=fill)


def _stomach(grid: Grid, labels: np.ndarray, level: np.ndarray, *, kind: np.ndarray, torso: abdomen.Torso,
             cavity: np.ndarray, rng: np.random.Generator) -> None:
    c = np.array([0.42 * torso.half_width, -0.1 * torso.front, torso.kidney_z[1] + 120.0])
    semi = np.array([rng.uniform(45, 58), rng.uniform(40, 52), rng.uniform(60, 80)])
    sl, x, y, z = grid.box(tuple(c - semi), tuple(c + semi))  # type: ignore[arg-type]
    rel = np.sqrt(((x - c[0]) / semi[0]) ** 2 + ((y - c[1]) / semi[1]) ** 2 + ((z - c[2]) / semi[2]) ** 2)
    box = labels[sl]
    ok = (rel < 1.0) & cavity[sl] & (box == T.FAT)
    wall = ok & (rel >= 1.0 - 4.0 / float(semi.min()))
    lumen = ok & ~wall
    box[wall] = T.BOWEL_WALL
    box[lumen] = T.BOWEL_CONTENT
    lev = np.clip((y - c[1]) / semi[1], -1.0, 1.0) * 127.0
    level[sl][lumen] = np.broadcast_to(np.round(lev), lumen.shape)[lumen].astype(np.int8)
    kind[sl][lumen] = bowel.STOMACH


def _free_space(grid: Grid, labels: np.ndarray, cavity: np.ndarray, *, torso: abdomen.Torso
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse grid (about 6 mm) of visceral fat where a bowel centre line may run."""
    g = grid.geometry
    f = [max(round(_COARSE_MM / s), 1) for s in g.spacing_mm]
    sub = labels[:: f[0], :: f[1], :: f[2]]
    cav = cavity[:: f[0], :: f[1], :: f[2]]
    blocked = ndimage.binary_dilation(np.isin(sub, _BLOCK + (T.BOWEL_WALL, T.BOWEL_CONTENT)), iterations=2)
    free = (sub == T.FAT) & ndimage.binary_erosion(cav, iterations=2) & ~blocked
    origin = np.asarray(g.origin_mm)
    step = np.asarray(g.spacing_mm) * np.asarray(f)
    ys = origin[1] + step[1] * np.arange(sub.shape[1])
    free &= (ys < torso.vb_y - 6.0)[None, :, None]
    return free, origin, step


def _bowel(grid: Grid, labels: np.ndarray, level: np.ndarray, *, kind: np.ndarray, torso: abdomen.Torso,
           cavity: np.ndarray, rng: np.random.Generator) -> None:
    free, origin, step = _free_space(grid, labels, cavity, torso=torso)
    colon = _colon(free, origin, step, t=torso, rng=rng)
    r_sb = float(rng.uniform(10.5, 12.5))
    occ = np.zeros_like(free)
    if len(colon.xyz):
        ker = bowel.ball_offsets(float(colon.radius.max()) + r_sb - 1.0, step)
        for p in colon.xyz[::2]:
            bowel.stamp(occ, tuple(np.round((p - origin) / step).astype(int)), ker)
    free_sb = free & ~occ
    zs = origin[2] + step[2] * np.arange(free.shape[2])
    free_sb &= (zs < max(torso.kidney_z) + 40.0)[None, None, :]
    target = min(0.8 * float(free_sb.sum()) * float(np.prod(step)) / (math.pi * r_sb * r_sb), 15000.0)
    walks = bowel.random_walks(free_sb, rng, origin=origin, step=step, radius=r_sb, target_mm=target)
    tubes = bowel.TubePoints.concat([colon] + walks)
    if len(tubes.xyz) == 0:
        return
    sl, lumen, lev, knd = bowel.rasterise(grid, labels, tubes)
    level[sl][lumen] = lev[lumen]
    kind[sl][lumen] = knd[lumen]


def _colon(free: np.ndarray, origin: np.ndarray, step: np.ndarray, *, t: abdomen.Torso,
           rng: np.random.Generator) -> bowel.TubePoints:
    """Colon frame (caecum, ascending, transverse, descending, sigmoid) snapped into free space."""
    w = t.half_width - t.fat - t.wall - 2.0
    f = t.front - t.fat - t.wall - 2.0
    vb, kr, kl = t.vb_y, t.kidney_z[0], t.kidney_z[1]
    ctrl = np.array([
        (-0.70 * w, vb - 40, -140), (-0.78 * w, vb - 32, -60), (-0.80 * w, vb - 35, kr - 30),
        (-0.70 * w, -0.2 * f, kr + 10), (-0.35 * w, -0.55 * f, kr + 5), (0.0, -0.62 * f, kr - 15),
        (0.35 * w, -0.55 * f, kl + 15), (0.72 * w, vb - 45, kl + 50), (0.80 * w, vb - 30, kl - 20),
        (0.78 * w, vb - 32, -80), (0.55 * w, -0.30 * f, -150), (0.15 * w, -0.35 * f, -175),
        (-0.15 * w, -0.15 * f, -200), (0.0, vb - 30, -230),
    ], dtype=float)
    ctrl += rng.normal(0.0, 6.0, ctrl.shape)
    dist, idx = ndimage.distance_transform_edt(~free, sampling=step, return_indices=True)
    r = float(rng.uniform(19.0, 24.0))
    dense = bowel.chain(ctrl, r, wall=3.0, kind=bowel.COLON, step_mm=3.0).xyz
    keep = []
    for p in dense:
        c = np.round((p - origin) / step).astype(int)
        if np.any(c < 0) or np.any(c >= free.shape):
            continue
        if dist[tuple(c)] > 45.0:
            continue
        near = idx[(slice(None),) + tuple(c)]
        keep.append(origin + near * step if dist[tuple(c)] > 0 else p)
    if len(keep) < 4:
        return bowel.TubePoints.concat([])
    pts = ndimage.uniform_filter1d(np.array(keep), size=9, axis=0, mode="nearest")
    return bowel.chain(pts, r, wall=3.0, kind=bowel.COLON, step_mm=3.0)
