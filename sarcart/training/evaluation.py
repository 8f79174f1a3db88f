"""Evaluate a segmenter on datalist cases: ``metrics.csv``, ``summary.json`` and ``boxplot.png``.

The segmenter is any callable ``Volume -> {structure: boolean array on the image grid}`` (the
predictor of :mod:`sarcart.inference` as deployed, or the raw network during training), so scores
are always computed on each image's own grid, in mm.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from sarcart.io.geometry import Volume
from sarcart.io.labels import read_labels
from sarcart.io.nifti import read_nifti
from sarcart.progress import progress
from sarcart.training.metrics import METRICS, contrast_to_noise, noise_sigma, score_case, summarise

log = logging.getLogger(__name__)

Segmenter = Callable[[Volume], dict[str, np.ndarray]]


def reference_masks(label_path: str | os.PathLike[str], structures: list[str]) -> tuple[dict[str, np.ndarray], Volume]:
    """Boolean masks of ``structures`` from a label map with its sidecar (absent ones are skipped)."""
    vol, spec = read_labels(label_path)
    masks = {s: np.isin(vol.array, spec.structures[s]) for s in structures if s in spec.structures}
    return masks, vol


def evaluate_cases(
    segment: Segmenter,
    entries: list[dict],
    structures: list[str],
    *,
    case_key: Callable[[str], str] = lambda c: c,
    ring_mm: float = 30.0,
    ptv_margin_mm: float = 3.0,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Score ``segment`` on datalist entries (absolute ``image``/``label`` paths).

    Args:
        case_key: maps the case name to what is written (e.g. ``tracking.hash_id`` for MLflow).

    Returns:
        One row per case, structure and region (``all``/``ring``) with Dice, HD95, MSD, surface
        Dice at 2 mm, the volumes and the structure's contrast-to-noise ratio in the image (``cnr``).
    """
    rows = []
    for e in progress(entries, "evaluate", enabled=show_progress):
        image = read_nifti(e["image"])
        ref, lab = reference_masks(e["label"], structures)
        image.geometry.require_same(lab.geometry, what=f"labels of {e['case']}", tol_mm=1e-2)
        pred = segment(image)
        arr = image.array.astype(np.float32)
        sigma = noise_sigma(arr, arr > 0.05 * np.percentile(arr, 99))
        sp = image.geometry.spacing_mm
        cnr = {s: contrast_to_noise(arr, m, sp, sigma=sigma) for s, m in ref.items()}
        for r in score_case(pred, ref, sp, ring_mm=ring_mm, ptv_margin_mm=ptv_margin_mm):
            rows.append({"case": case_key(e["case"]), **r, "cnr": cnr.get(r["structure"], float("nan"))})
    return pd.DataFrame(rows)


def boxplot(table: pd.DataFrame, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Box plots of Dice and HD95 per structure (and ring region) with the cases as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(s, r) for s, r in zip(table["structure"], table["region"])})
    labels = [s if r == "all" else f"{s}\n(ring)" for s, r in groups]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(groups) + 3), 4))
    for ax, metric, name in zip(axes, ("dice", "hd95_mm"), ("Dice", "HD95 (mm)")):
        data = [table[(table.structure == s) & (table.region == r)][metric].dropna().to_numpy() for s, r in groups]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels)
        for i, d in enumerate(data, start=1):
            ax.plot(np.full(d.size, i) + np.linspace(-0.08, 0.08, d.size), d, ".", alpha=0.5, color="k")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def _clean(obj: object) -> object:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def write_report(table: pd.DataFrame, out: str | os.PathLike[str], *, meta: dict | None = None,
                 n_boot: int = 2000) -> dict:
    """Write ``metrics.csv``, ``summary.json`` (bootstrap 95 % CIs) and ``boxplot.png`` into ``out``."""
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    table.to_csv(dst / "metrics.csv", index=False, float_format="%.4f")
    summary = {"meta": meta or {}, "n_cases": int(table["case"].nunique()) if len(table) else 0,
               "metrics": summarise(table.to_dict("records"), n_boot=n_boot)}
    (dst / "summary.json").write_text(json.dumps(_clean(summary), indent=1))
    if len(table):
        boxplot(table, dst / "boxplot.png", title=str((meta or {}).get("model", "")))
    return summary


def summary_line(summary: dict, structure: str, *, metric: str = "dice", region: str = "all") -> dict | None:
    """The summary entry of one structure/metric/region (None when absent)."""
    for m in summary.get("metrics", []):
        if m["structure"] == structure and m["metric"] == metric and m["region"] == region:
            return m
    return None


__all__ = ["METRICS", "Segmenter", "boxplot", "evaluate_cases", "reference_masks", "summary_line", "write_report"]
