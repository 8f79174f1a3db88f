"""Anatomy-aware post-processing of label maps (on the image's own grid).

* Largest connected component for structures that are one organ or one mass (kidneys, GTV):
  stray islands are false positives (nnU-Net's post-processing, Isensee et al. 2021,
  doi 10.1038/s41592-020-01008-z). Bowel is many loops and keeps every component.
* Hole filling (3D, enclosed cavities only) for solid structures.
* Left/right kidney from patient coordinates: the network may confuse the two kidneys, so their
  union is split into components and each is named by the LPS x of its centroid (LPS +x is the
  patient's left): with two components the one at larger x is KIDNEY_L; a single component is
  named by its side of the body's centre.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from sarcart.io.geometry import Geometry

log = logging.getLogger(__name__)

#: structures kept as their largest connected component
SINGLE_COMPONENT = ("GTV", "KIDNEY_L", "KIDNEY_R")
#: structures whose enclosed holes are filled
SOLID = ("GTV", "KIDNEY_L", "KIDNEY_R")
_CONN = ndimage.generate_binary_structure(3, 1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (the mask itself when empty)."""
    lab, n = ndimage.label(mask, structure=_CONN)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill cavities fully enclosed in 3D."""
    return ndimage.binary_fill_holes(mask, structure=_CONN)


def _components(mask: np.ndarray, keep: int) -> list[np.ndarray]:
    lab, n = ndimage.label(mask, structure=_CONN)
    if n == 0:
        return []
    sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    order = np.argsort(sizes)[::-1][:keep]
    return [lab == (int(i) + 1) for i in order]


def split_kidneys(left: np.ndarray, right: np.ndarray, geometry: Geometry,
                  *, body_centre_x_mm: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-assign kidney voxels to left/right by patient coordinates.

    Args:
        left, right: the network's KIDNEY_L and KIDNEY_R masks on ``geometry``.
        geometry: the image grid (its direction tells where patient left is).
        body_centre_x_mm: LPS x of the body's centre; the image centre when None.

    Returns:
        ``(kidney_l, kidney_r)``: the two largest components of the union, named by the LPS x of
        their centroids.
    """
    comps = _components(left | right, keep=2)
    new_l, new_r = np.zeros_like(left, bool), np.zeros_like(right, bool)
    if not comps:
        return new_l, new_r
    xs = [float(geometry.index_to_world(np.asarray(ndimage.center_of_mass(c)))[0]) for c in comps]
    if len(comps) == 2:
        li = int(np.argmax(xs))
        new_l, new_r = comps[li], comps[1 - li]
    else:
        cx = body_centre_x_mm
        if cx is None:
            cx = float(geometry.index_to_world((np.asarray(geometry.shape) - 1) / 2.0)[0])
        (new_l if xs[0] > cx else new_r)[...] = comps[0]
    return new_l, new_r


def postprocess(masks: dict[str, np.ndarray], geometry: Geometry, *, body_centre_x_mm: float | None = None,
                single_component: tuple[str, ...] = SINGLE_COMPONENT,
                solid: tuple[str, ...] = SOLID) -> tuple[dict[str, np.ndarray], list[str]]:
    """Apply the anatomy rules to ``{structure: mask}``; returns new masks and what was done, in words.

    ``single_component`` and ``solid`` name the structures kept as their largest component and
    hole-filled (defaults: the anatomy tables above; a model bundle may narrow them, see
    ``meta["postprocess"]``, when cross-validation showed a rule does not help).
    """
    out = {k: v.astype(bool) for k, v in masks.items()}
    notes: list[str] = []
    if "KIDNEY_L" in out and "KIDNEY_R" in out:
        kl, kr = split_kidneys(out["KIDNEY_L"], out["KIDNEY_R"], geometry, body_centre_x_mm=body_centre_x_mm)
        moved = int((kl & out["KIDNEY_R"]).sum() + (kr & out["KIDNEY_L"]).sum())
        if moved:
            notes.append(f"kidneys: {moved} voxel(s) re-assigned left/right by patient coordinates")
        out["KIDNEY_L"], out["KIDNEY_R"] = kl, kr
    for name in list(out):
        m = out[name]
        if name in single_component and m.any():
            lc = largest_component(m)
            dropped = int(m.sum() - lc.sum())
            if dropped:
                notes.append(f"{name}: removed {dropped} voxel(s) outside the largest component")
            m = lc
        if name in solid and m.any():
            filled = fill_holes(m)
            added = int(filled.sum() - m.sum())
            if added:
                notes.append(f"{name}: filled {added} voxel(s) of enclosed holes")
            m = filled
        out[name] = m
    return out, notes
