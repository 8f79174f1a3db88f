"""Extremity sites: the upper arm (one limb) and both thighs (the tumour in one of them).

A limb is a near-circular cylinder along z with slowly varying radius. Layers, outside in: skin
(1.5 mm), subcutaneous fat (thickness varying around the limb), muscle with fat-filled
intermuscular septa radiating from the bone, then the long bone (cortex, fatty marrow) and the
neurovascular bundle. The tumour is placed in a muscle compartment; where it bulges the limb
outline is the smooth union of the limb and the tumour (plus a thin fat layer), so large tumours
deform the skin as they do in patients. Oedema forms a rim in the surrounding muscle and fat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

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
from sarcart.phantom.tumour import TumourField, TumourShape, tumour_field


@dataclass(frozen=True)
class Limb:
    """One limb: centre (x, y) mm, radius at the middle, taper, bone and septa layout."""

    cx: float
    cy: float
    radius: float
    taper: float          # radius change from the bottom (z min) to the top (z max), mm
    fat: float            # mean subcutaneous fat thickness, mm
    bone_r: float         # outer radius of the diaphysis cortex, mm
    cortex: float         # cortical thickness, mm
    bone_dx: float        # bone offset from the limb centre, mm (x, toward medial when > 0)
    bone_dy: float
    septa_deg: tuple[float, ...]  # septum angles (image x axis = 0 deg, y = 90 deg)
    vessel_deg: float     # angle of the neurovascular bundle
    medial: float         # +1 when medial is +x, -1 when medial is -x


def _mirror(angles: tuple[float, ...], medial: float) -> tuple[float, ...]:
    """Angles given for a limb whose medial side is +x, mirrored when it is -x."""
    return tuple(float(a if medial > 0 else (180.0 - a) % 360.0) for a in angles)


def _limb(rng: np.random.Generator, *, cx: float, medial: float, thigh: bool) -> Limb:
    """Sample one limb. Angles (medial side +x; y posterior): septa between the compartments."""
    septa: tuple[float, ...]
    if thigh:
        radius, taper, fat, bone, cortex = rng.uniform(68, 82), rng.uniform(20, 35), rng.uniform(6, 20), 14.0, 5.0
        septa, vessel = (155.0, 315.0, 40.0, 245.0), 320.0
    else:
        radius, taper, fat, bone, cortex = rng.uniform(42, 52), rng.uniform(8, 16), rng.uniform(5, 15), 11.0, 3.5
        septa, vessel = (0.0, 180.0, 250.0), 15.0
    return Limb(cx=cx, cy=float(rng.uniform(-5, 5)), radius=float(radius), taper=float(taper), fat=float(fat),
                bone_r=bone * float(rng.uniform(0.9, 1.1)), cortex=cortex, bone_dx=medial * 0.08 * float(radius),
                bone_dy=0.08 * float(radius), septa_deg=_mirror(septa, medial),
                vessel_deg=_mirror((vessel,), medial)[0], medial=medial)


def _limb_distance(xyz: tuple[np.ndarray, np.ndarray, np.ndarray], limb: Limb, *, zspan: float) -> np.ndarray:
    """Approximate signed distance (mm) to the limb skin (negative inside)."""
    x, y, z = xyz
    r = limb.radius + limb.taper * (z / zspan)
    dx, dy = x - limb.cx, y - limb.cy
    return np.sqrt((dx / 1.04) ** 2 + (dy / 0.96) ** 2) - r


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth minimum (polynomial, blend width ``k`` mm)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def draw_limb(grid: Grid, labels: np.ndarray, limb: Limb, *, rng: np.random.Generator,
              tumour: TumourField | None = None, zspan: float = 430.0) -> None:
    """Skin, fat, muscle and septa, bone, vessels of one limb (the tumour itself is drawn later)."""
    reach = 0.0 if tumour is None else float(np.hypot(tumour.shape.centre_mm[0] - limb.cx,
                                                      tumour.shape.centre_mm[1] - limb.cy)) + tumour.shape.bound_mm
    r_max = max(limb.radius + abs(limb.taper), reach) + 12.0
    sl, x, y, z = grid.box((limb.cx - r_max, limb.cy - r_max, -1e4), (limb.cx + r_max, limb.cy + r_max, 1e4))
    d = _limb_distance((x, y, z), limb, zspan=zspan)
    if tumour is not None:
        d = _bulge(d, sl, tf=tumour, limb=limb)
    lo = (float(x.min()), float(y.min()), float(z.min()))
    hi = (float(x.max()), float(y.max()), float(z.max()))
    fat_n = SmoothField.random(rng, lo, hi, corr_mm=30.0).on_axes(x, y, z)
    fat = limb.fat * (1.0 + 0.25 * np.clip(fat_n, -1.5, 1.5))
    box = labels[sl]
    box[d < 0.0] = T.SKIN
    box[d < -1.5] = T.FAT
    muscle = d < -1.5 - fat
    box[muscle] = T.MUSCLE
    bx, by = limb.cx + limb.bone_dx, limb.cy + limb.bone_dy
    dx, dy = x - bx, y - by
    ang = np.degrees(np.arctan2(dy, dx)) % 360.0
    rb = np.sqrt(dx * dx + dy * dy)
    wob = SmoothField.random(rng, lo, hi, corr_mm=15.0).on_axes(x, y, z)
    for a in limb.septa_deg:
        diff = (ang - a + 180.0) % 360.0 - 180.0
        box[muscle & (np.abs(np.radians(diff) * rb + 3.0 * wob) < 1.0) & (rb > limb.bone_r)] = T.FAT
    marble = SmoothField.random(rng, lo, hi, corr_mm=9.0).on_axes(x, y, z)
    box[muscle & (np.abs(marble) < 0.02)] = T.FAT
    _bone(box, (x, y, z), limb, zspan=zspan)
    _vessels(box, (x, y, z), limb, d=d)


def _bulge(d: np.ndarray, sl: tuple[slice, ...], *, tf: TumourField, limb: Limb) -> np.ndarray:
    """Smooth union of the limb with the tumour grown by 6 mm (the skin follows a bulging tumour)."""
    r_t = float(np.cbrt(np.prod(tf.shape.semi_axes_mm))) * tf.scale
    dt = np.full(d.shape, 1e4, dtype=np.float32)
    inter = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(sl, tf.slices))
    if any(s.stop <= s.start for s in inter):
        return d
    in_d = tuple(slice(s.start - a.start, s.stop - a.start) for s, a in zip(inter, sl))
    in_t = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inter, tf.slices))
    dt[in_d] = (tf.f()[in_t] - 1.0) * r_t - 6.0 - limb.fat * 0.3
    return _smin(d, dt, 15.0)


def _bone(box: np.ndarray, xyz: tuple[np.ndarray, np.ndarray, np.ndarray], limb: Limb, *, zspan: float) -> None:
    """Diaphysis along z, flaring into the metaphysis near the bottom (knee / elbow)."""
    x, y, z = xyz
    flare = smoothstep(-z, 0.30 * zspan, 0.50 * zspan)
    rx = limb.bone_r * (1.0 + 1.4 * flare)
    ry = limb.bone_r * (1.0 + 0.7 * flare)
    cortex = limb.cortex * (1.0 - 0.6 * flare)
    dx, dy = x - limb.cx - limb.bone_dx, y - limb.cy - limb.bone_dy
    rel = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
    box[rel < 1.0] = T.BONE_CORTEX
    inner = np.sqrt((dx / (rx - cortex)) ** 2 + (dy / (ry - cortex)) ** 2)
    box[inner < 1.0] = T.BONE_MARROW


def _vessels(box: np.ndarray, xyz: tuple[np.ndarray, np.ndarray, np.ndarray], limb: Limb, *, d: np.ndarray) -> None:
    """Artery and two veins of the neurovascular bundle, plus a superficial vein in the medial fat."""
    x, y, _ = xyz
    a = np.radians(limb.vessel_deg)
    dist = limb.bone_r + 12.0 + 0.18 * limb.radius
    cx = limb.cx + limb.bone_dx + dist * math.cos(a)
    cy = limb.cy + limb.bone_dy + dist * math.sin(a)
    inside = box > 0
    for ox, oy, r in ((0.0, 0.0, 3.5), (6.0, 3.0, 4.0), (-5.0, 4.0, 3.5)):
        box[inside & ((x - cx - ox) ** 2 + (y - cy - oy) ** 2 < r * r)] = T.VESSEL
    sx = limb.cx + limb.medial * (limb.radius - limb.fat * 0.5)
    sv = ((x - sx) ** 2 + (y - limb.cy + 10.0) ** 2 < 9.0) & (d < -2.0) & (box == T.FAT)
    box[sv] = T.VESSEL


def build_limb(config: PhantomConfig, patient: PatientParams) -> Anatomy:
    """Reference anatomy of an upper- or lower-extremity sarcoma patient."""
    thigh = patient.site == "lower_extremity"
    rng = rng_for(patient.seed, "anatomy")
    geom, pad = extended_grid(config)
    grid = Grid(geom)
    labels = np.zeros(geom.shape, dtype=np.uint8)
    side = -1.0 if patient.side == "R" else 1.0  # LPS: the patient's right is -x
    zspan = float(config.fov_mm[2])
    if thigh:
        sep = float(rng.uniform(92.0, 108.0))
        limb = _limb(rng, cx=side * sep, medial=-side, thigh=True)
        other = _limb(rng, cx=-side * sep, medial=side, thigh=True)
    else:
        limb, other = _limb(rng, cx=0.0, medial=-side, thigh=False), None
    centre, shape = _place_tumour(limb, patient, rng, zspan=zspan)
    limb, other, shape = _centre_in_fov(limb, other, shape)
    centre = shape.centre_mm
    tf = tumour_field(grid, shape, rng, margin_mm=patient.edema_mm + 20.0)
    tf.scale = 1.0
    if other is not None:
        draw_limb(grid, labels, other, rng=rng, zspan=zspan)
    draw_limb(grid, labels, limb, rng=rng, tumour=tf, zspan=zspan)
    texture = base_texture(grid, rng, config.texture_sd)
    hypoxia = np.zeros(geom.shape, dtype=bool)
    spec = TumourSpec(patient.volume_cc, patient.necrotic_fraction, patient.hypoxic_fraction, patient.edema_mm)
    info = insert_tumour(labels, tf, spec, texture=texture, hypoxia=hypoxia, rng=rng, config=config,
                         protected=(0, T.SKIN, T.BONE_CORTEX, T.BONE_MARROW))
    soft = SmoothField.weight_from_mask((labels > 0) & ~np.isin(labels, T.STRUCTURES["BONE"]), geom)
    anatomy = Anatomy(
        site=patient.site, geometry=geom, pad=pad, labels=labels, hypoxia=hypoxia, texture=texture,
        tumour_centre_mm=centre, tumour_radius_mm=shape.bound_mm * tf.scale, laterality=patient.side,
        soft_weight=soft, info={**info, "limb_radius_mm": limb.radius, "fat_mm": limb.fat},
    )
    return finish_anatomy(anatomy, tf)


def _centre_in_fov(limb: Limb, other: Limb | None, shape: TumourShape) -> tuple[Limb, Limb | None, TumourShape]:
    """Shift everything along x so that the limbs and a bulging tumour are centred in the field of view."""
    reach = max(shape.semi_axes_mm[:2]) * (1.0 + shape.lobulation) + 10.0
    lo = min(limb.cx - limb.radius, shape.centre_mm[0] - reach)
    hi = max(limb.cx + limb.radius, shape.centre_mm[0] + reach)
    if other is not None:
        lo, hi = min(lo, other.cx - other.radius), max(hi, other.cx + other.radius)
    dx = -(lo + hi) / 2.0
    c = shape.centre_mm
    moved = replace(shape, centre_mm=(c[0] + dx, c[1], c[2]))
    return (replace(limb, cx=limb.cx + dx), replace(other, cx=other.cx + dx) if other is not None else None, moved)


def _place_tumour(limb: Limb, patient: PatientParams, rng: np.random.Generator, *, zspan: float
                  ) -> tuple[tuple[float, float, float], TumourShape]:
    """Tumour centre in a muscle compartment, its long axis along the limb."""
    r_eq = (3.0 * patient.volume_cc * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    half_len = r_eq * patient.elongation ** (2.0 / 3.0)
    ang = np.radians(float(rng.uniform(0.0, 360.0)))
    radial = limb.bone_r + 0.5 * r_eq / patient.elongation ** (1.0 / 3.0) + float(rng.uniform(0.0, 12.0))
    radial = min(radial, 0.75 * limb.radius)
    zc = float(rng.uniform(-0.5, 0.5)) * max(zspan / 2.0 - half_len - 20.0, 0.0)
    centre = (limb.cx + limb.bone_dx + radial * math.cos(ang), limb.cy + limb.bone_dy + radial * math.sin(ang), zc)
    shape = tumour_shape(centre, patient.volume_cc, rng, elongation=patient.elongation, yaw_deg=float(np.degrees(ang)),
                         tilt_deg=float(rng.uniform(-8, 8)))
    return centre, shape
