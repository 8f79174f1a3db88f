"""Segmentation metrics in millimetres (MONAI), the 3 cm ring around the PTV, bootstrap intervals.

* Dice (Dice, Ecology 1945, doi 10.2307/1932409).
* HD95: the larger of the two directed 95th percentiles of surface distances (prediction to
  reference and back; Huttenlocher et al., IEEE TPAMI 1993, doi 10.1109/34.232073); MSD: mean of
  the distances of both surfaces' voxels to the other surface.
* Surface Dice at 2 mm: share of both surfaces within 2 mm of the other (Nikolov et al., J Med
  Internet Res 2021, doi 10.2196/26151).
* Bootstrap percentile intervals (Efron & Tibshirani 1993, doi 10.1201/9780429246593).
* Contrast-to-noise of a structure: |mean inside - mean in the 3-6 mm shell around it| / noise sigma,
  sigma estimated from the image with Immerkaer's Laplacian-difference operator (Immerkaer, Comput
  Vis Image Underst 1996;64:300, doi 10.1006/cviu.1996.0060), slice by slice inside the body.

Distances use the voxel spacing. When exactly one of prediction and reference is empty, Dice is 0,
surface Dice 0, and HD95/MSD take the image diagonal (mm) as a penalty; when both are empty the
structure is not scored (NaN).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from scipy import ndimage

from sarcart.errors import InvalidImageError

log = logging.getLogger(__name__)

#: organs at risk that are also scored inside the ring around the PTV
OARS = ("BOWEL", "KIDNEY_L", "KIDNEY_R")
METRICS = ("dice", "hd95_mm", "msd_mm", "surface_dice_2mm")


def _t(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def _crop(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus one voxel (distances are unchanged)."""
    union = pred | ref
    idx = np.argwhere(union)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, union.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    return np.pad(pred[sl], 1), np.pad(ref[sl], 1)


def mask_metrics(pred: np.ndarray, ref: np.ndarray, spacing_mm: tuple[float, ...],
                 *, tolerance_mm: float = 2.0) -> dict[str, float]:
    """Dice, HD95, MSD and surface Dice of two boolean masks on the same grid.

    Args:
        pred, ref: boolean arrays of one shape.
        spacing_mm: voxel size along each axis (mm).
        tolerance_mm: surface Dice tolerance.

    Returns:
        ``{"dice", "hd95_mm", "msd_mm", "surface_dice_2mm"}`` (the last named for the 2 mm default).
    """
    if pred.shape != ref.shape:
        raise InvalidImageError(f"prediction {pred.shape} and reference {ref.shape} must share a grid")
    pred, ref = pred.astype(bool), ref.astype(bool)
    nan = float("nan")
    if not pred.any() and not ref.any():
        return {m: nan for m in METRICS}
    if not pred.any() or not ref.any():
        diag = float(np.linalg.norm(np.asarray(pred.shape) * np.asarray(spacing_mm)))
        return {"dice": 0.0, "hd95_mm": diag, "msd_mm": diag, "surface_dice_2mm": 0.0}
    p, r = _crop(pred, ref)
    tp, tr = _t(p), _t(r)
    sp = [float(s) for s in spacing_mm]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {
            "dice": float(compute_dice(tp, tr, include_background=True)[0, 0]),
            "hd95_mm": float(compute_hausdorff_distance(tp, tr, include_background=True, percentile=95,
                                                        spacing=sp)[0, 0]),
            "msd_mm": float(compute_average_surface_distance(tp, tr, include_background=True, symmetric=True,
                                                             spacing=sp)[0, 0]),
            "surface_dice_2mm": float(compute_surface_dice(tp, tr, class_thresholds=[tolerance_mm],
                                                           include_background=True, spacing=sp)[0, 0]),
        }
    return out


def expand_mm(mask: np.ndarray, margin_mm: float, spacing_mm: tuple[float, ...]) -> np.ndarray:
    """Isotropic expansion of a boolean mask by ``margin_mm`` (Euclidean distance transform)."""
    if margin_mm <= 0 or not mask.any():
        return mask.astype(bool)
    dist = ndimage.distance_transform_edt(~mask.astype(bool), sampling=spacing_mm)
    return dist <= margin_mm


def ring(ptv: np.ndarray, spacing_mm: tuple[float, ...], *, width_mm: float = 30.0) -> np.ndarray:
    """The shell outside ``ptv`` up to ``width_mm`` from its surface (where clinicians re-contour OARs)."""
    return expand_mm(ptv, width_mm, spacing_mm) & ~ptv.astype(bool)


def score_case(
    pred: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    spacing_mm: tuple[float, ...],
    *,
    ring_mm: float = 30.0,
    ptv_margin_mm: float = 3.0,
    tolerance_mm: float = 2.0,
) -> list[dict]:
    """Score every reference structure; OARs also inside the ring around the reference PTV.

    The PTV is the reference ``PTV`` when given, else the reference ``GTV`` expanded by
    ``ptv_margin_mm`` (the course default GTV->PTV margin). Returns one row per structure and region
    (``all`` or ``ring``) with the metrics and both volumes in cc.
    """
    voxel_cc = float(np.prod(spacing_mm)) / 1000.0
    rows = []
    ptv = ref.get("PTV")
    if ptv is None and "GTV" in ref:
        ptv = expand_mm(ref["GTV"], ptv_margin_mm, spacing_mm)
    shell = ring(ptv, spacing_mm, width_mm=ring_mm) if ptv is not None and ptv.any() else None
    for name, r in ref.items():
        p = pred.get(name, np.zeros_like(r, dtype=bool))
        regions = [("all", p, r)]
        if name in OARS and shell is not None:
            regions.append(("ring", p & shell, r & shell))
        for region, pm, rm in regions:
            m = mask_metrics(pm, rm, spacing_mm, tolerance_mm=tolerance_mm)
            rows.append({"structure": name, "region": region, **m,
                         "volume_ref_cc": float(rm.sum() * voxel_cc), "volume_pred_cc": float(pm.sum() * voxel_cc)})
    return rows


_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def noise_sigma(image: np.ndarray, body: np.ndarray | None = None) -> float:
    """Noise standard deviation of a 3D image: Immerkaer's estimator per axial (i, j) slice, over the body.

    ``sigma = sqrt(pi / 2) / 6 * mean |I * N|`` with ``N`` the 3x3 difference-of-Laplacians kernel,
    averaged over voxels whose 3x3 neighbourhood lies inside ``body`` (all voxels when None).
    """
    img = image.astype(np.float32)
    resp = np.abs(ndimage.convolve(img, _IMMERKAER[:, :, None], mode="nearest"))
    inside = np.ones(img.shape, bool) if body is None else ndimage.binary_erosion(body, np.ones((3, 3, 1), bool))
    if not inside.any():
        return float("nan")
    return float(np.sqrt(np.pi / 2) / 6.0 * resp[inside].mean())


def contrast_to_noise(image: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, ...], *,
                      sigma: float, shell_mm: tuple[float, float] = (3.0, 6.0)) -> float:
    """|mean(image in mask) - mean(image in the shell shell_mm around it)| / sigma (NaN if undefined)."""
    if not mask.any() or not np.isfinite(sigma) or sigma <= 0:
        return float("nan")
    shell = expand_mm(mask, shell_mm[1], spacing_mm) & ~expand_mm(mask, shell_mm[0], spacing_mm)
    if not shell.any():
        return float("nan")
    return float(abs(image[mask].mean() - image[shell].mean()) / sigma)


def bootstrap_ci(values: np.ndarray, stat: Callable[[np.ndarray], float] = np.mean, *, n: int = 2000,
                 alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over cases (NaNs dropped); ``(nan, nan)`` if empty."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n, v.size))
    stats = np.apply_along_axis(stat, 1, v[idx])
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def paired_difference_ci(a: np.ndarray, b: np.ndarray, *, groups: np.ndarray | None = None, n: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired cases (pairs with a NaN dropped) with its percentile-bootstrap 95 % interval.

    ``groups`` (one label per case, e.g. the patient): resample whole groups instead of cases (cluster
    bootstrap), so that several images of one patient, which err together, are not counted as independent
    evidence. The statistic stays the mean over all resampled cases.
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    keep = np.isfinite(d)
    d = d[keep]
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    # without groups every case is its own group: the plain percentile bootstrap of the mean
    g = np.arange(d.size) if groups is None else np.asarray(groups)[keep]
    labels, inv = np.unique(g, return_inverse=True)
    sums = np.bincount(inv, weights=d, minlength=labels.size)
    counts = np.bincount(inv, minlength=labels.size).astype(float)
    idx = np.random.default_rng(seed).integers(0, labels.size, size=(n, labels.size))
    stats = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def summarise(rows: list[dict], *, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Per structure, region and metric: n, mean and median with 95 % bootstrap intervals."""
    out = []
    keys = sorted({(r["structure"], r["region"]) for r in rows})
    for structure, region in keys:
        sel = [r for r in rows if r["structure"] == structure and r["region"] == region]
        for metric in METRICS:
            v = np.asarray([r[metric] for r in sel], dtype=float)
            fin = v[np.isfinite(v)]
            mean_ci = bootstrap_ci(fin, np.mean, n=n_boot, seed=seed)
            med_ci = bootstrap_ci(fin, np.median, n=n_boot, seed=seed)
            out.append({
                "structure": structure, "region": region, "metric": metric, "n": int(fin.size),
                "mean": float(fin.mean()) if fin.size else float("nan"), "mean_ci95": list(mean_ci),
                "median": float(np.median(fin)) if fin.size else float("nan"), "median_ci95": list(med_ci),
            })
    return out
