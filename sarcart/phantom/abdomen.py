"""Retroperitoneal site: an abdominal cross-section varying along z, with a retroperitoneal sarcoma.

Body coordinates (mm, LPS): x to the patient's left, y posterior, z superior; (0, 0, 0) is the
centre of the field of view (lumbar spine level), z spans pelvis (iliac wings) to the liver dome.
Built from implicit shapes, in this order (later classes overwrite earlier ones): skin, subcutaneous
fat, abdominal wall muscle, visceral fat; paraspinal, quadratus and psoas muscles, iliac wings;
vertebral column (cortex, marrow, discs, posterior elements) and spinal canal; liver; kidneys with
sinus fat and renal vessels; aorta/IVC and iliac vessels; tumour; stomach, colon and small bowel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sarcart.phantom import tissues as T
from sarcart.phantom.fields import Grid, SmoothField, smoothstep


@dataclass(frozen=True)
class Torso:
    """Per-patient body dimensions (mm)."""

    half_width: float      # at the waist
    front: float           # centre to anterior skin
    back: float            # centre to posterior skin
    fat: float             # subcutaneous fat, anterior/lateral (posterior 60 %)
    wall: float            # abdominal wall muscle thickness
    vb_y: float            # y of the vertebral body centre
    kidney_z: tuple[float, float]  # (right, left) kidney centre z

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Torso:
        back = float(rng.uniform(75.0, 95.0))
        fat = float(rng.uniform(8.0, 30.0))
        zr = float(rng.uniform(30.0, 60.0))
        return cls(
            half_width=float(rng.uniform(135.0, 165.0)),
            front=float(rng.uniform(115.0, 140.0)),
            back=back,
            fat=fat,
            wall=float(rng.uniform(8.0, 13.0)),
            vb_y=back - (0.6 * fat + 2.0 + 52.0),
            kidney_z=(zr, zr + float(rng.uniform(8.0, 22.0))),
        )


def _outline(xyz: tuple[np.ndarray, np.ndarray, np.ndarray], t: Torso, *, inset: float) -> np.ndarray:
    """Inside the body outline shrunk by ``inset`` mm (posterior inset 60 % of it for fat layers)."""
    x, y, z = xyz
    zz = (z - 40.0) / 200.0
    widen = 1.0 + 0.09 * zz * zz
    a = t.half_width * widen - inset
    cx = 3.0 * np.sin(z / 80.0)
    bf = t.front * (1.0 + 0.05 * zz * zz) - inset
    bb = t.back - 0.6 * inset
    u = ((x - cx) / a) ** 2
    yf = np.minimum(y, 0.0) / bf
    yb = np.maximum(y, 0.0) / bb
    return u + yf * yf + (yb * yb) ** 2 < 1.0


def body_wall(grid: Grid, labels: np.ndarray, t: Torso) -> np.ndarray:
    """Skin, fat, wall muscle, visceral fat; returns the cavity mask (inside the wall)."""
    xyz = grid.full()
    x, y, _ = xyz
    body = _outline(xyz, t, inset=0.0)
    labels[body] = T.SKIN
    labels[_outline(xyz, t, inset=2.0)] = T.FAT
    muscle = _outline(xyz, t, inset=2.0 + t.fat)
    labels[muscle] = T.MUSCLE
    cavity = _outline(xyz, t, inset=2.0 + t.fat + t.wall)
    labels[cavity] = T.FAT
    linea = muscle & ~cavity & (np.abs(x) < 3.0) & (y < -40.0)
    labels[linea] = T.FAT
    return cavity


def _ell(x: np.ndarray, y: np.ndarray, *, c: tuple[object, object], a: tuple[object, object]) -> np.ndarray:
    """Normalised squared radius of an axis-aligned ellipse with centre ``c`` and semi-axes ``a`` (mm)."""
    return ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2  # type: ignore[operator]


def muscles_and_bone(grid: Grid, labels: np.ndarray, t: Torso, *, rng: np.random.Generator) -> None:
    """Paraspinal, quadratus lumborum, psoas, iliac wings with gluteal muscles, vertebral column."""
    x, y, z = grid.full()
    vb = t.vb_y
    inside = labels > 0
    for side in (-1.0, 1.0):
        para = _ell(x, y, c=(side * 36.0, vb + 48.0), a=(27.0, 22.0)) < 1.0
        labels[para & inside] = T.MUSCLE
        ql = (_ell(x, y, c=(side * 64.0, vb + 20.0), a=(15.0, 11.0)) < 1.0) & (z < 110.0)
        labels[ql & inside] = T.MUSCLE
        s = smoothstep(-z, -110.0, 130.0)
        psoas = (_ell(x, y, c=(side * (30.0 + 22.0 * s), vb - 4.0 - 14.0 * s), a=(9.0 + 13.0 * s, 8.0 + 10.0 * s)) < 1.0)
        labels[psoas & (z < 120.0)] = T.MUSCLE
    _iliac((x, y, z), labels, vb=vb)
    _spine((x, y, z), labels, vb=vb, rng=rng)


def _iliac(xyz: tuple[np.ndarray, np.ndarray, np.ndarray], labels: np.ndarray, *, vb: float) -> None:
    x, y, z = xyz
    s = smoothstep(-z, 95.0, 190.0)  # 0 above z = -95, 1 below z = -190
    if not np.any(s > 0):
        return
    for side in (-1.0, 1.0):
        dx = side * x - 30.0
        dy = y - (vb + 25.0)
        r = np.sqrt(dx * dx + dy * dy)
        phi = np.degrees(np.arctan2(dy, dx))
        span = -75.0 * s
        within = (phi > span) & (phi < 60.0 * s) & (dx > 0) & (s > 0.02)
        radius = 95.0
        plate = within & (np.abs(r - radius) < 2.5 + 3.0 * s)
        marrow = within & (np.abs(r - radius) < 0.5 + 3.0 * s - 2.0)
        glut = within & (r > radius) & (r < radius + 8.0 + 35.0 * s) & (phi > span * 0.3)
        iliacus = within & (r < radius) & (r > radius - 6.0 - 14.0 * s)
        body = labels > 0
        labels[(glut | iliacus) & body] = T.MUSCLE
        labels[plate & body] = T.BONE_CORTEX
        labels[marrow & body] = T.BONE_MARROW


def _spine(xyz: tuple[np.ndarray, np.ndarray, np.ndarray], labels: np.ndarray, *, vb: float,
           rng: np.random.Generator) -> None:
    x, y, z = xyz
    phase = float(rng.uniform(0.0, 35.0))
    zl = np.mod(z - phase, 35.0)          # position within a 35 mm vertebral level
    disc = zl < 8.0
    mid = np.abs(zl - 21.0) < 6.0
    grow = 1.0 + 0.15 * smoothstep(-z, 100.0, 200.0)
    body = _ell(x, y, c=(0.0, vb), a=(22.0 * grow, 16.0 * grow))
    labels[body < 1.0] = T.BONE_CORTEX
    labels[(body < 0.8) & ~disc] = T.BONE_MARROW
    labels[(body < 1.0) & disc] = T.MUSCLE  # intervertebral disc: generic soft tissue
    cy = vb + 16.0 * grow + 11.0
    rc = np.sqrt(x * x + (y - cy) ** 2)
    arch = (rc < 15.0) & (y > vb + 10.0) & ~disc
    spinous = (np.abs(x) < 4.5) & (y > cy + 10.0) & (y < cy + 42.0) & ~disc
    transverse = (np.abs(y - (cy - 3.0)) < 5.0 * (1.0 - np.abs(x) / 50.0)) & (np.abs(x) < 44.0) & mid
    labels[arch | spinous | transverse] = T.BONE_CORTEX
    labels[(np.abs(x) < 2.0) & (y > cy + 14.0) & (y < cy + 38.0) & ~disc] = T.BONE_MARROW
    labels[rc < 9.5] = T.SPINAL_CANAL


def liver(grid: Grid, labels: np.ndarray, cavity: np.ndarray, *, t: Torso, rng: np.random.Generator) -> None:
    """Liver in the right upper quadrant: a large ellipsoid cut by a lower edge rising from
    right-lateral to the midline, perturbed by a smooth random field."""
    sl, x, y, z = grid.box((-t.half_width, -t.front, -20.0), (t.half_width, t.back, 400.0))
    n = SmoothField.random(rng, (float(x.min()), float(y.min()), float(z.min())),
                           (float(x.max()), float(y.max()), float(z.max())), corr_mm=25.0).on_axes(x, y, z)
    ell = ((x + 0.45 * t.half_width) / (1.05 * t.half_width)) ** 2 + ((y + 5.0) / (1.1 * t.front)) ** 2 \
        + ((z - 210.0) / 175.0) ** 2
    edge = 15.0 + 0.55 * (x + t.half_width) + 0.0015 * (x + 40.0) ** 2
    box = labels[sl]
    organ = cavity[sl] & (ell + 0.06 * n < 1.0) & (z > edge + 8.0 * n) & (box == T.FAT)
    box[organ] = T.LIVER


def kidneys(grid: Grid, labels: np.ndarray, t: Torso, *, rng: np.random.Generator) -> dict[str, tuple[float, ...]]:
    """Both kidneys (ellipsoids, hilum anteromedial, lower pole lateral) with sinus fat and renal vessels."""
    out = {}
    for side, value, zc in ((-1.0, T.KIDNEY_R, t.kidney_z[0]), (1.0, T.KIDNEY_L, t.kidney_z[1])):
        c = np.array([side * float(rng.uniform(72.0, 84.0)), t.vb_y + float(rng.uniform(2.0, 12.0)), zc])
        semi = np.array([float(rng.uniform(24.0, 29.0)), float(rng.uniform(19.0, 24.0)), float(rng.uniform(48.0, 58.0))])
        yaw, tilt = np.radians(side * -30.0), np.radians(side * 12.0)
        rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        ry = np.array([[np.cos(tilt), 0, np.sin(tilt)], [0, 1, 0], [-np.sin(tilt), 0, np.cos(tilt)]])
        rot = rz @ ry
        sl, x, y, z = grid.box(tuple(c - 62.0), tuple(c + 62.0))  # type: ignore[arg-type]
        d = (x - c[0], y - c[1], z - c[2])
        q = [d[0] * rot[0, a] + d[1] * rot[1, a] + d[2] * rot[2, a] for a in range(3)]
        rel = sum((q[a] / semi[a]) ** 2 for a in range(3))
        box = labels[sl]
        kid = rel < 1.0
        box[kid] = value
        sinus = kid & (-side * q[0] > 0.35 * semi[0]) & (np.abs(q[2]) < 0.5 * semi[2]) & (rel > 0.05)
        box[sinus] = T.FAT
        out[T.BY_VALUE[value].name] = tuple(float(v) for v in c)
    return out


def vessels(grid: Grid, labels: np.ndarray, t: Torso, *, kidney_centres: dict[str, tuple[float, ...]]) -> None:
    """Aorta and IVC, their bifurcation into iliac vessels, and the renal vessels."""
    x, y, z = grid.full()
    vb = t.vb_y
    z_bif = -80.0
    below = np.maximum(z_bif - z, 0.0)
    ao = (_ell(x, y, c=(14.0, vb - 30.0), a=(11.0, 11.0)) < 1.0) & (z > z_bif)
    ivc = (_ell(x, y, c=(-22.0, vb - 27.0), a=(13.0, 9.0)) < 1.0) & (z > z_bif - 15.0)
    ilio = np.zeros_like(ao)
    for side in (-1.0, 1.0):
        ilio |= (_ell(x, y, c=(side * (10.0 + 0.5 * below), vb - 24.0 - 0.15 * below), a=(6.5, 6.5)) < 1.0) & (z <= z_bif)
        ilio |= (_ell(x, y, c=(side * (8.0 + 0.45 * below), vb - 10.0 - 0.1 * below), a=(7.0, 7.0)) < 1.0) & (z <= z_bif - 15.0)
    labels[(ao | ivc | ilio) & (labels > 0) & (labels != T.SPINAL_CANAL)] = T.VESSEL
    for name, c in kidney_centres.items():
        side = -1.0 if name.endswith("_R") else 1.0
        target = np.array([14.0 if side > 0 else -22.0, vb - 28.0, c[2]])
        hilum = np.array([c[0] - side * 18.0, c[1] - 8.0, c[2]])
        _capsule(grid, labels, a=hilum, b=target, r=3.5)


def _capsule(grid: Grid, labels: np.ndarray, *, a: np.ndarray, b: np.ndarray, r: float) -> None:
    lo, hi = np.minimum(a, b) - r - 1, np.maximum(a, b) + r + 1
    sl, x, y, z = grid.box(tuple(lo), tuple(hi))  # type: ignore[arg-type]
    ab = b - a
    tt = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / float(ab @ ab)
    tt = np.clip(tt, 0.0, 1.0)
    d2 = (x - a[0] - tt * ab[0]) ** 2 + (y - a[1] - tt * ab[1]) ** 2 + (z - a[2] - tt * ab[2]) ** 2
    box = labels[sl]
    box[(d2 < r * r) & np.isin(box, (T.FAT, T.MUSCLE))] = T.VESSEL
