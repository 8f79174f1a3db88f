"""Small geometric phantoms for the dose tests (water box, slab with an insert, abdomen-like ellipse)."""

from __future__ import annotations

import numpy as np

from sarcart.io.geometry import Geometry, Volume


def water_box(spacing: float = 2.0, size=(202.0, 300.0, 122.0), surface_y: float = -100.0) -> tuple[Volume, Geometry]:
    """Water (RED 1) from ``surface_y`` (anterior surface, LPS y) on; odd voxel counts put x = z = 0 on a voxel centre."""
    shape = tuple(round(s / spacing) for s in size)
    g = Geometry(shape, (spacing,) * 3, origin_mm=(-size[0] / 2 + spacing / 2, surface_y + spacing / 2,
                                                     -size[2] / 2 + spacing / 2))
    return Volume(np.ones(shape, np.float32), g), g


def abdomen(spacing: float = 6.0) -> tuple[Volume, dict[str, Volume]]:
    """Elliptic body with a spherical GTV, a bowel loop beside it (with gas), two kidneys and a bone."""
    size = (300.0, 210.0, 108.0)
    shape = tuple(int(s / spacing) for s in size)
    g = Geometry(shape, (spacing,) * 3, origin_mm=tuple(-s / 2 + spacing / 2 for s in size))
    w = g.world_grid()
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    body = (x / 140) ** 2 + (y / 100) ** 2 <= 1
    gtv = (x ** 2 + (y - 10) ** 2 + z ** 2) <= 25.0 ** 2
    bowel = (((x + 42) ** 2 + (y + 32) ** 2) <= 20 ** 2) & (np.abs(z) < 45) & body
    kid_l = (((x - 80) / 25) ** 2 + ((y - 50) / 30) ** 2 + (z / 45) ** 2) <= 1
    kid_r = (((x + 80) / 25) ** 2 + ((y - 50) / 30) ** 2 + (z / 45) ** 2) <= 1
    bone = (x ** 2 + (y - 75) ** 2) <= 14 ** 2
    img = np.where(body, 300.0, 0.0).astype(np.float32)
    img[bone] = 50.0
    masks = {"BODY": body, "GTV": gtv, "BOWEL": bowel, "KIDNEY_L": kid_l, "KIDNEY_R": kid_r, "BONE": bone}
    return Volume(img, g), {k: Volume(v, g) for k, v in masks.items()}
