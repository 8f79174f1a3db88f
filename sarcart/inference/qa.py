"""QA flags on automatic contours: which structures need a clinician's eye.

Per structure:

* **confidence** — self-consistency of the model's probabilities with its own mask, the soft Dice
  2·Σ(p·m) / (Σp + Σm) over the structure's neighbourhood (p = the structure's probability, averaged
  over test-time augmentations when TTA is on; m = the mask). The predictor supplies both on the
  network's plan grid (``Segmentation.confidence_inputs``: the unshifted pass and the mask the same
  post-processing makes there), where the calibration was fitted, whatever the input's resolution.
  Diffuse or disagreeing probabilities give low values. A logistic calibration fitted on validation cases (``QACalibration``)
  turns it into P(good contour), good meaning HD95 ≤ 5 mm against the reference.
* **volume change** against the previous approved contour of the same structure.
* **field-of-view edge**: the mask touches the border of the image (the structure may be cut off).
* **fragments**: connected pieces of ≥ ``min_fragment_cc`` beyond the number anatomy allows.

Per image (input check): slice orientation and voxel spacing unlike the model's training data,
intensity profile unlike the training data (robust spread of the body voxels), and a target larger
than the MR-linac's maximum field (27.4 × 24.1 cm, FACTS.md section 3, UNVERIFIED).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from sarcart.io.geometry import Volume

MAX_FIELD_MM = (274.0, 241.0)  # leaf travel x across-leaf (SI) extent of the largest field


@dataclass(frozen=True)
class QAConfig:
    """Thresholds of the flags."""

    min_confidence: float = 0.5           # calibrated P(good) below this -> flag
    max_volume_change: float = 0.30       # |relative change| above this -> flag
    min_fragment_cc: float = 0.5
    expected_pieces: Mapping[str, int] = field(default_factory=lambda: {
        "GTV": 1, "KIDNEY_L": 1, "KIDNEY_R": 1, "BODY": 1, "PTV": 1, "CTV": 1})
    spacing_tolerance: float = 0.5        # relative deviation from the training range allowed
    spread_tolerance: float = 0.5         # relative deviation of the intensity spread allowed
    targets: tuple[str, ...] = ("GTV", "PTV")
    # structures that normally run out of the imaged field (the body and bowel leave a 43 cm abdominal field
    # head- and footwards): edge contact says nothing about them and is not flagged
    edge_exempt: tuple[str, ...] = ("BODY", "SKIN", "BOWEL", "BONE", "GAS")


@dataclass(frozen=True)
class QACalibration:
    """Logistic map from the raw confidence to P(good): 1 / (1 + exp(-(a·score + b)))."""

    a: float = 12.0
    b: float = -8.0

    def __call__(self, score: float) -> float:
        return float(1.0 / (1.0 + np.exp(-(self.a * score + self.b))))

    @classmethod
    def fit(cls, scores: Sequence[float], good: Sequence[bool]) -> "QACalibration":
        """Maximum-likelihood logistic fit (Newton iterations) on validation cases."""
        x = np.asarray(scores, dtype=float)
        y = np.asarray(good, dtype=float)
        if x.size < 4 or y.min() == y.max():
            raise ValueError("calibration needs at least 4 cases with both good and bad contours")
        w = np.zeros(2)
        design = np.column_stack([x, np.ones_like(x)])
        for _ in range(100):
            p = 1.0 / (1.0 + np.exp(-(design @ w)))
            grad = design.T @ (y - p) - 1e-6 * w
            hess = -(design.T * (p * (1 - p))) @ design - 1e-6 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < 1e-10:
                break
        return cls(a=float(w[0]), b=float(w[1]))


def soft_dice_confidence(prob: np.ndarray, mask: np.ndarray, *, band_vox: int = 2) -> float:
    """2·Σ(p·m) / (Σp + Σm) inside the mask dilated by ``band_vox`` voxels (1.0 = crisp and consistent)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return 0.0
    region = ndimage.binary_dilation(m, iterations=band_vox)
    p = np.asarray(prob, dtype=np.float32)[region]
    mm = m[region]
    return float(2.0 * (p * mm).sum() / max(p.sum() + mm.sum(), 1e-6))


def touches_edge(mask: np.ndarray) -> bool:
    """True when any mask voxel lies on a face of the volume."""
    m = np.asarray(mask, dtype=bool)
    return bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())


def pieces(mask: np.ndarray, voxel_cc: float, min_cc: float) -> int:
    """Connected pieces (26-connectivity) of at least ``min_cc``."""
    lab, n = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3, 3)))
    if n == 0:
        return 0
    sizes = np.bincount(lab.reshape(-1))[1:] * voxel_cc
    return int((sizes >= min_cc).sum())


def structure_qa(name: str, mask: Volume, *, prob: np.ndarray | None = None, prob_mask: np.ndarray | None = None,
                 previous: Volume | None = None, calibration: QACalibration | None = None,
                 config: QAConfig | None = None) -> dict[str, Any]:
    """Measurements and flags of one structure (see the module docstring).

    ``prob`` is the structure's probability for the confidence; ``prob_mask`` the mask on ``prob``'s grid
    when that is not ``mask``'s (the plan grid: :meth:`Segmentation.confidence_inputs
    <sarcart.inference.predictor.Segmentation.confidence_inputs>` gives both).
    """
    cfg = config or QAConfig()
    m = np.asarray(mask.array, dtype=bool)
    vox = mask.geometry.voxel_volume_cc
    out: dict[str, Any] = {"volume_cc": float(m.sum() * vox), "flags": []}
    if prob is not None:
        raw = soft_dice_confidence(prob, m if prob_mask is None else prob_mask)
        out["confidence_raw"] = raw
        out["confidence"] = (calibration or QACalibration())(raw)
        if out["confidence"] < cfg.min_confidence:
            out["flags"].append(f"low confidence {out['confidence']:.2f}")
    if previous is not None:
        prev_cc = float(np.asarray(previous.array, bool).sum() * previous.geometry.voxel_volume_cc)
        out["previous_volume_cc"] = prev_cc
        if prev_cc > 0:
            change = out["volume_cc"] / prev_cc - 1.0
            out["volume_change"] = change
            if abs(change) > cfg.max_volume_change:
                out["flags"].append(f"volume change {change:+.0%}")
    if m.any() and touches_edge(m):
        out["touches_edge"] = True
        if name not in cfg.edge_exempt:
            out["flags"].append("touches field-of-view edge")
    n = pieces(m, vox, cfg.min_fragment_cc)
    out["pieces"] = n
    expected = cfg.expected_pieces.get(name)
    if expected is not None and n > expected:
        out["flags"].append(f"{n} fragments (expected {expected})")
    if not m.any():
        out["flags"].append("empty")
    return out


def extent_mm(mask: Volume) -> tuple[float, float, float]:
    """LPS bounding-box size (x, y, z) of a mask in mm."""
    idx = np.argwhere(np.asarray(mask.array, bool))
    if idx.size == 0:
        return (0.0, 0.0, 0.0)
    pts = mask.geometry.index_to_world(idx)
    return tuple(float(v) for v in (pts.max(axis=0) - pts.min(axis=0) + np.abs(mask.geometry.direction_matrix
                                    @ np.asarray(mask.geometry.spacing_mm))))  # type: ignore[return-value]


def input_check(image: Volume, *, train_spacings_mm: Sequence[Sequence[float]] | None = None,
                train_intensity: Mapping[str, float] | None = None, body: np.ndarray | None = None,
                config: QAConfig | None = None) -> dict[str, Any]:
    """Flags for an input image unlike the model's training data (orientation, spacing, intensity profile)."""
    cfg = config or QAConfig()
    g = image.geometry
    flags: list[str] = []
    normal = g.direction_matrix[:, 2]
    out: dict[str, Any] = {"slice_normal": [float(v) for v in normal], "spacing_mm": list(g.spacing_mm)}
    if abs(abs(normal[2]) - 1.0) > 0.05:
        flags.append("slices are not axial (the models were trained on axial TRUFI)")
    if train_spacings_mm is not None and len(train_spacings_mm):
        sp = np.asarray(train_spacings_mm, dtype=float)
        lo, hi = sp.min(axis=0) * (1 - cfg.spacing_tolerance), sp.max(axis=0) * (1 + cfg.spacing_tolerance)
        mine = np.sort(np.asarray(g.spacing_mm))
        lo, hi = np.sort(lo), np.sort(hi)
        if np.any(mine < lo) or np.any(mine > hi):
            flags.append(f"voxel spacing {tuple(round(s, 2) for s in g.spacing_mm)} mm outside the training range")
    if train_intensity is not None and {"p00_5", "p50", "p99_5"} <= set(train_intensity):
        arr = np.asarray(image.array, dtype=np.float32)
        vals = arr[body] if body is not None and body.any() else arr[arr > np.percentile(arr, 50)]
        p0, p50, p99 = np.percentile(vals, [0.5, 50, 99.5])
        spread = (p99 - p50) / max(p50 - p0, 1e-6)
        ref = (train_intensity["p99_5"] - train_intensity["p50"]) / max(train_intensity["p50"] - train_intensity["p00_5"], 1e-6)
        out["intensity_spread"] = float(spread)
        out["training_intensity_spread"] = float(ref)
        if abs(spread / ref - 1.0) > cfg.spread_tolerance:
            flags.append(f"intensity profile unlike the training data (spread {spread:.2f} vs {ref:.2f})")
    out["flags"] = flags
    return out


def target_size_check(targets: Mapping[str, Volume], *, max_field_mm: tuple[float, float] = MAX_FIELD_MM
                      ) -> list[str]:
    """Flags for targets whose transverse or superior-inferior extent exceeds the largest field."""
    flags = []
    for name, m in targets.items():
        ex, ey, ez = extent_mm(m)
        if max(ex, ey) > max_field_mm[0] or ez > max_field_mm[1]:
            flags.append(f"{name} extent {max(ex, ey) / 10:.1f} x {ez / 10:.1f} cm exceeds the "
                         f"{max_field_mm[0] / 10:.1f} x {max_field_mm[1] / 10:.1f} cm maximum field")
    return flags


def structure_confidences(probabilities: np.ndarray, labels: np.ndarray, structures: Sequence[str], *,
                          band_vox: int = 2) -> dict[str, float]:
    """Raw soft-Dice confidence of every structure of a segmentation.

    Args:
        probabilities: ``(C, nx, ny, nz)`` class probabilities (channel 0 = background, channel k =
            ``structures[k - 1]``), any float dtype, on the grid of ``labels``.
        labels: ``(nx, ny, nz)`` integer label map (k = ``structures[k - 1]``), after post-processing.
        structures: structure names in label order.
        band_vox: dilation of the mask that defines each structure's neighbourhood (voxels).

    Returns:
        ``{structure: soft Dice in [0, 1]}`` (0 for an empty mask), see :func:`soft_dice_confidence`.
    """
    p = np.asarray(probabilities)
    if p.ndim != 4 or p.shape[0] != len(structures) + 1 or p.shape[1:] != np.shape(labels):
        raise ValueError(f"probabilities must have shape (1 + {len(structures)}, *labels.shape) = "
                         f"{(len(structures) + 1, *np.shape(labels))}, got {p.shape}")
    lab = np.asarray(labels)
    return {s: soft_dice_confidence(p[k], lab == k, band_vox=band_vox) for k, s in enumerate(structures, 1)}


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for detecting ``positive`` (ties count one half).

    The Mann-Whitney form: P(score of a positive > score of a negative) + ½ P(equal) (Hanley & McNeil,
    Radiology 1982, doi 10.1148/radiology.143.1.7063747). NaN when either class is empty.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and positive must be 1-D of equal length, got {s.shape} and {y.shape}")
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks handle ties
    return float((ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def auroc_ci(scores: Sequence[float], positive: Sequence[bool], *, groups: Sequence[Any] | None = None,
             n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`auroc`.

    Args:
        groups: cluster labels (e.g. the image each contour came from); whole clusters are resampled,
            so contours of the same image are not treated as independent. None = every item its own.
        n_boot: resamples (those missing a class are skipped).
        alpha: 0.05 for a 95 % interval.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when no resample holds both classes.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    g = np.arange(s.size) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    members = [np.flatnonzero(g == k) for k in range(int(g.max()) + 1)] if s.size else []
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[k] for k in pick])
        a = auroc(s[idx], y[idx])
        if np.isfinite(a):
            stats.append(a)
    if not stats:
        return float("nan"), float("nan")
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)
