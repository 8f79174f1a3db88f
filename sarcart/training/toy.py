"""Toy cohorts for tests, benchmarks and the documentation: small noisy volumes with known masks.

Not a physical MR model (that is :mod:`sarcart.phantom`): a body of unit brightness with Gaussian
noise, a brighter ellipsoidal ``GTV`` at a random place, and optionally two darker kidneys, the one
at larger LPS x (patient left) named ``KIDNEY_L``. Each case is written as ``<root>/<case>/image.nii.gz``
plus ``<NAME>.nii.gz`` masks, the NIfTI layout ``sarcart dataset build`` reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sarcart.io.geometry import Geometry, Volume
from sarcart.io.nifti import write_mask, write_nifti


def _ellipsoid(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    r2 = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3))
    return r2 <= 1.0


def toy_case(seed: int, *, shape: tuple[int, int, int] = (40, 40, 24),
             spacing_mm: tuple[float, float, float] = (2.0, 2.0, 3.0), kidneys: bool = False,
             noise: float = 0.15) -> tuple[Volume, dict[str, Volume]]:
    """One toy case: ``(image, {name: mask})`` on an LPS-aligned grid centred on the origin."""
    rng = np.random.default_rng(seed)
    sh = np.asarray(shape, float)
    geom = Geometry(shape=shape, spacing_mm=spacing_mm,
                    origin_mm=tuple(-(sh - 1) / 2 * np.asarray(spacing_mm)))
    body = _ellipsoid(shape, (sh - 1) / 2, sh * np.array([0.48, 0.45, 0.6]))
    img = np.where(body, 1.0, 0.05).astype(np.float32)
    masks: dict[str, np.ndarray] = {}
    if kidneys:
        for name, xf in (("KIDNEY_R", 0.27), ("KIDNEY_L", 0.73)):
            c = sh * np.array([xf, 0.62, 0.5]) + rng.uniform(-1, 1, 3)
            masks[name] = _ellipsoid(shape, c, sh * np.array([0.08, 0.1, 0.2])) & body
            img[masks[name]] = 0.55
    centre = sh * np.array([0.5, 0.35 if kidneys else 0.5, 0.5]) + rng.uniform(-0.15, 0.15, 3) * sh
    radii = rng.uniform(0.12, 0.2, 3) * sh
    gtv = _ellipsoid(shape, centre, radii) & body
    for m in masks.values():
        gtv &= ~m
    masks = {"GTV": gtv, **masks}
    img[gtv] = 1.8
    img = img + rng.normal(0, noise, shape).astype(np.float32) * body
    image = Volume((img * 500).astype(np.float32), geom)
    return image, {k: Volume(v, geom) for k, v in masks.items()}


def write_toy_dataset(root: str | os.PathLike[str], n_cases: int, *, seed: int = 0, **kwargs: object) -> Path:
    """Write ``n_cases`` toy cases (``toy_000`` ...) under ``root``; returns ``root``."""
    out = Path(root)
    for i in range(n_cases):
        image, masks = toy_case(seed * 1000 + i, **kwargs)  # type: ignore[arg-type]
        case = out / f"toy_{i:03d}"
        write_nifti(image, case / "image.nii.gz")
        for name, m in masks.items():
            write_mask(m, case / f"{name}.nii.gz")
    return out
