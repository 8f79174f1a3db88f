"""The reference anatomy of one synthetic patient and the pieces shared by the site builders.

An :class:`Anatomy` lives on an *extended* grid: the image grid padded by a few millimetres on
every side, so that a fraction pulled through a displacement ``u`` (set-up shift, breathing) still
finds tissue at the image border. The daily fractions are made by sampling this reference at
``x + u(x)`` (see :mod:`sarcart.phantom.motion`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sarcart.io.geometry import Geometry
from sarcart.phantom import tissues as T
from sarcart.phantom.config import PhantomConfig
from sarcart.phantom.fields import Grid, SmoothField
from sarcart.phantom.tumour import (
    TumourField,
    TumourShape,
    calibrate_volume,
    edema_rim,
    heterogeneity,
    hypoxic_regions,
    necrotic_core,
    rotation_matrix,
)

PAD_MM = (12.0, 12.0, 24.0)
#: texture is stored in 10 bits over [TEX_LO, TEX_LO + TEX_RANGE]
TEX_LO, TEX_RANGE = 0.25, 1.5


@dataclass
class Anatomy:
    """Reference (fx00) anatomy on the extended grid.

    Attributes:
        geometry: extended grid (LPS mm); the image grid is it without ``pad`` voxels per side.
        labels: ``(nx, ny, nz)`` uint8 exclusive tissue classes (:mod:`sarcart.phantom.tissues`).
        hypoxia: bool, hypoxic viable tumour. texture: float32 PD multiplier (~1).
        level: int8 position inside a bowel lumen along -y (air rises anteriorly), -127..127, or None.
        bowel_kind: uint8 lumen kind (0 none, 1 small bowel, 2 colon, 3 stomach), or None.
        tumour_centre_mm, tumour_radius_mm: centre of shrinkage and radius it applies to.
        breathing_weight, bowel_weight: smooth [0, 1] maps of where breathing / peristalsis act.
        edge_mode: how the reference is extended beyond its grid when sampled (``constant`` = air).
    """

    site: str
    geometry: Geometry
    pad: tuple[int, int, int]
    labels: np.ndarray
    hypoxia: np.ndarray
    texture: np.ndarray
    tumour_centre_mm: tuple[float, float, float]
    tumour_radius_mm: float
    laterality: str | None = None
    level: np.ndarray | None = None
    bowel_kind: np.ndarray | None = None
    breathing_weight: SmoothField | None = None
    bowel_weight: SmoothField | None = None
    soft_weight: SmoothField | None = None
    edge_mode: str = "constant"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def image_geometry(self) -> Geometry:
        g = self.geometry
        shape = tuple(n - 2 * p for n, p in zip(g.shape, self.pad))
        origin = tuple(o + p * s for o, p, s in zip(g.origin_mm, self.pad, g.spacing_mm))
        return Geometry(shape, g.spacing_mm, origin, g.direction)  # type: ignore[arg-type]

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The image-grid part of an extended-grid array."""
        p = self.pad
        return array[p[0]: array.shape[0] - p[0], p[1]: array.shape[1] - p[1], p[2]: array.shape[2] - p[2]]

    def packed(self) -> np.ndarray:
        """uint32 state per voxel: label (5 bits), hypoxia (1), texture (10), bowel level (8), kind (2)."""
        tex = np.clip(np.round((self.texture - TEX_LO) * (1023.0 / TEX_RANGE)), 0, 1023).astype(np.uint32)
        out = self.labels.astype(np.uint32) | (self.hypoxia.astype(np.uint32) << 5) | (tex << 6)
        if self.level is not None:
            out |= (self.level.astype(np.int16) + 128).astype(np.uint32) << 16
        else:
            out |= np.uint32(128 << 16)
        if self.bowel_kind is not None:
            out |= (self.bowel_kind.astype(np.uint32) & 3) << 24
        return out

    def shift_world(self, offset_mm: np.ndarray) -> None:
        """Move world coordinates so that ``offset_mm`` (old coordinates) becomes the origin."""
        off = np.asarray(offset_mm, dtype=float)
        self.geometry = shifted(self.geometry, off)
        self.tumour_centre_mm = tuple(float(c - d) for c, d in zip(self.tumour_centre_mm, off))  # type: ignore
        for name in ("breathing_weight", "bowel_weight", "soft_weight"):
            m = getattr(self, name)
            if m is not None:
                origin = tuple(float(o - d) for o, d in zip(m.origin_mm, off))
                setattr(self, name, SmoothField(m.coarse, origin, m.step_mm))  # type: ignore[arg-type]


@dataclass
class State:
    """Unpacked per-voxel state of a fraction (see :meth:`Anatomy.packed`)."""

    labels: np.ndarray   # uint8
    hypoxia: np.ndarray  # bool
    texture: np.ndarray  # float32
    level: np.ndarray    # int16
    kind: np.ndarray     # uint8


def unpack(state: np.ndarray) -> State:
    """Inverse of :meth:`Anatomy.packed`."""
    s = state.astype(np.uint32, copy=False)
    return State(
        labels=(s & 31).astype(np.uint8),
        hypoxia=((s >> 5) & 1).astype(bool),
        texture=((s >> 6) & 1023).astype(np.float32) * np.float32(TEX_RANGE / 1023.0) + np.float32(TEX_LO),
        level=((s >> 16) & 255).astype(np.int16) - 128,
        kind=((s >> 24) & 3).astype(np.uint8),
    )


def finish_anatomy(anatomy: Anatomy, tf: TumourField | None = None) -> Anatomy:
    """Put the isocentre (world origin) at the GTV centroid, rounded to 1 mm; record it."""
    gtv = np.isin(anatomy.labels, T.STRUCTURES["GTV"])
    if tf is not None:
        sub = gtv[tf.slices]
        offset = np.array([s.start or 0 for s in tf.slices])
    else:
        sub, offset = gtv, np.zeros(3, dtype=int)
    if sub.any():
        pts = anatomy.geometry.index_to_world(np.argwhere(sub) + offset)
        centre = pts.mean(axis=0)
        anatomy.tumour_radius_mm = float(np.linalg.norm(pts - centre, axis=1).max()) + 2.0
    else:
        centre = np.asarray(anatomy.tumour_centre_mm, dtype=float)
    anatomy.tumour_centre_mm = tuple(float(v) for v in centre)  # type: ignore[assignment]
    centre = np.round(centre)
    anatomy.info["isocentre_body_mm"] = [float(v) for v in centre]
    anatomy.shift_world(centre)
    return anatomy


def extended_grid(config: PhantomConfig, centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
                  ) -> tuple[Geometry, tuple[int, int, int]]:
    """Extended grid of the configured field of view, centred on ``centre_mm`` (body coordinates)."""
    sp = config.spacing_mm
    pad = tuple(math.ceil(p / s) for p, s in zip(PAD_MM, sp))
    shape = tuple(n + 2 * p for n, p in zip(config.shape, pad))
    origin = tuple(c - (n - 1) / 2.0 * s for c, n, s in zip(centre_mm, shape, sp))
    return Geometry(shape, sp, origin), pad  # type: ignore[arg-type,return-value]


def shifted(geometry: Geometry, offset_mm: np.ndarray) -> Geometry:
    """The same grid with world coordinates moved by ``-offset_mm`` (puts ``offset_mm`` at the origin)."""
    origin = tuple(float(o - d) for o, d in zip(geometry.origin_mm, offset_mm))
    return Geometry(geometry.shape, geometry.spacing_mm, origin, geometry.direction)  # type: ignore[arg-type]


def base_texture(grid: Grid, rng: np.random.Generator, sd: float) -> np.ndarray:
    """Smooth within-tissue PD variation ``1 + sd * n`` (float32) over the whole grid."""
    g = grid.geometry
    lo = g.origin_mm
    hi = tuple(o + (n - 1) * s for o, n, s in zip(g.origin_mm, g.shape, g.spacing_mm))
    x, y, z = grid.full()
    n = SmoothField.random(rng, lo, hi, corr_mm=15.0).on_axes(x, y, z)  # type: ignore[arg-type]
    return (1.0 + np.float32(sd) * n).astype(np.float32)


@dataclass(frozen=True)
class TumourSpec:
    """Per-patient tumour targets (from the cohort sampler)."""

    volume_cc: float
    necrotic_fraction: float
    hypoxic_fraction: float
    edema_mm: float = 0.0


def insert_tumour(labels: np.ndarray, tf: TumourField, spec: TumourSpec, *, texture: np.ndarray,
                  hypoxia: np.ndarray, rng: np.random.Generator, config: PhantomConfig, protected: tuple[int, ...],
                  edema_into: tuple[int, ...] = (T.MUSCLE, T.FAT)) -> dict[str, float]:
    """Write GTV (TUMOUR/NECROSIS), HYPOXIA and oedema into the label map (in place).

    The tumour replaces every class except ``protected`` ones (bone, spinal canal...). Its volume is
    calibrated to ``spec.volume_cc`` over the allowed voxels. Tumour texture (heterogeneity) is
    balanced so that hypoxic and normoxic viable tumour have the same mean PD multiplier: without a
    requested hypoxia contrast the two differ in nothing but chance.

    Returns:
        realised volumes (cc) and fractions.
    """
    sp = config.spacing_mm
    voxel_cc = float(np.prod(sp)) / 1000.0
    box = labels[tf.slices]
    allowed = ~np.isin(box, protected)
    calibrate_volume(tf, spec.volume_cc, voxel_cc, allowed=allowed)
    f = tf.f()
    gtv = (f < 1.0) & allowed
    depth = 1.0 - f
    necrosis = necrotic_core(gtv, depth, spec.necrotic_fraction, rng=rng, spacing_mm=sp)
    viable = gtv & ~necrosis
    hyp = hypoxic_regions(viable, depth, necrosis, fraction=spec.hypoxic_fraction, rng=rng, spacing_mm=sp,
                          placement=config.hypoxia_placement)
    if spec.edema_mm > 0:
        r_mm = float(np.cbrt(np.prod(tf.shape.semi_axes_mm))) * tf.scale
        rim = edema_rim((f - 1.0) * r_mm, spec.edema_mm, rng, spacing_mm=sp) & np.isin(box, edema_into)
        box[rim] = T.EDEMA
    box[gtv] = T.TUMOUR
    box[necrosis] = T.NECROSIS
    hypoxia[tf.slices] |= hyp
    tex = texture[tf.slices]
    het = 1.0 + np.float32(config.tumour_texture_sd) * heterogeneity(box.shape, rng, sp)
    het = het.astype(np.float32)
    normoxic = viable & ~hyp
    if hyp.any() and normoxic.any():  # equal mean heterogeneity in hypoxic and normoxic tumour
        het[hyp] *= np.float32(het[normoxic].mean() / het[hyp].mean())
    tex[gtv] = tex[gtv] * het[gtv]
    n_gtv = int(np.count_nonzero(gtv))
    return {
        "gtv_cc": n_gtv * voxel_cc,
        "necrosis_cc": float(np.count_nonzero(necrosis)) * voxel_cc,
        "hypoxia_cc": float(np.count_nonzero(hyp)) * voxel_cc,
        "necrotic_fraction": float(np.count_nonzero(necrosis)) / max(n_gtv, 1),
        "hypoxic_fraction": float(np.count_nonzero(hyp)) / max(int(np.count_nonzero(viable)), 1),
        "edema_cc": float(np.count_nonzero(box == T.EDEMA)) * voxel_cc,
        "tumour_scale": tf.scale,
    }


def tumour_shape(centre_mm: tuple[float, float, float], volume_cc: float, rng: np.random.Generator, *,
                 elongation: float, yaw_deg: float, tilt_deg: float = 0.0) -> TumourShape:
    """A lobulated ellipsoid of roughly ``volume_cc`` elongated along its third axis by ``elongation``."""
    r_eq = (3.0 * volume_cc * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    ax = rng.uniform(0.85, 1.15)
    a = r_eq / (elongation * ax) ** (1.0 / 3.0)
    semi = (a * ax, a, a * elongation)
    lob = float(rng.uniform(0.12, 0.25))
    return TumourShape(
        centre_mm=tuple(float(v) for v in centre_mm),  # type: ignore[arg-type]
        semi_axes_mm=tuple(float(s) for s in semi),  # type: ignore[arg-type]
        rotation=rotation_matrix(yaw_deg, tilt_deg),
        lobulation=lob,
        corr_mm=float(max(0.45 * a, 6.0)),
    )


def structure_volumes_cc(labels: np.ndarray, hypoxia: np.ndarray, voxel_cc: float) -> dict[str, float]:
    """Volume (cc) of every structure of :data:`tissues.STRUCTURES` plus HYPOXIA."""
    counts = np.bincount(labels.reshape(-1), minlength=T.N_LABELS)
    out = {name: float(counts[list(vals)].sum()) * voxel_cc for name, vals in T.STRUCTURES.items()}
    out["HYPOXIA"] = float(np.count_nonzero(hypoxia)) * voxel_cc
    return out
