"""Radiogenomic risk model: voxel feature maps (+ habitat, + patient covariates) -> P(voxel is hypoxic).

A scikit-learn pipeline (standardisation + L2 logistic regression, or a random forest) trained on voxels
sampled from the ROIs of a labelled cohort. Its input columns are the feature-map names and
``cov_<name>`` for patient covariates (e.g. ``cov_genomic_score``); the fitted pipeline keeps them in
``feature_names_in_``, so a saved model is self-describing. Models are saved with skops (no pickle) and
tracked in MLflow through :mod:`sarcart.tracking` (params, AUROC with its CI, the model, a registered
name).

No real hypoxia-labelled or genomic data exist in this project: models trained on the synthetic cohort
(HYPOXIA ground truth, phantom covariates) demonstrate the pipeline only. Clinical use needs validation
on labelled data (e.g. FMISO PET or pathology); see docs/radiomics.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sarcart.errors import ConfigError, InvalidImageError
from sarcart.io.geometry import Volume
from sarcart.radiomics.maps.io import FeatureMaps

log = logging.getLogger(__name__)

DEFAULT_RISK_FEATURES = ("firstorder_Mean", "firstorder_Median", "firstorder_Variance", "firstorder_Entropy",
                         "glcm_JointAverage", "glcm_Contrast", "glcm_JointEntropy", "glrlm_RunEntropy",
                         "glszm_ZoneEntropy", "gldm_DependenceEntropy", "ngtdm_Busyness", "ngtdm_Coarseness")
GEOMETRY_FEATURES = ("geo_depth_mm", "geo_depth_relative", "geo_necrosis_distance_mm")
REGISTERED_NAME = "sarcart-radiomics-risk"
EXPERIMENT = "sarcart-radiomics-risk"
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "builtins.", "scipy.")


@dataclass(frozen=True)
class RiskConfig:
    """Risk-model settings.

    Attributes:
        features: feature-map names used per voxel.
        covariates: patient covariates appended to every voxel (``cov_<name>`` columns).
        classifier: ``logistic`` (standardised L2 logistic regression) or ``forest`` (random forest).
        c: inverse L2 strength of the logistic regression.
        voxels_per_case: voxels sampled per training case (stratified by label, seeded).
        seed: random seed.
    """

    features: tuple[str, ...] = DEFAULT_RISK_FEATURES
    covariates: tuple[str, ...] = ()
    classifier: Literal["logistic", "forest"] = "logistic"
    c: float = 1.0
    voxels_per_case: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.classifier not in ("logistic", "forest"):
            raise ConfigError(f"classifier must be 'logistic' or 'forest', got {self.classifier!r}")
        if not self.features:
            raise ConfigError("features must name at least one feature map")
        if self.c <= 0 or self.voxels_per_case < 10:
            raise ConfigError(f"need c > 0 and voxels_per_case >= 10, got c={self.c}, voxels={self.voxels_per_case}")

    @property
    def columns(self) -> list[str]:
        return list(self.features) + [f"cov_{c}" for c in self.covariates]


@dataclass(frozen=True)
class RiskCase:
    """One labelled case: maps, the target on the maps' grid (e.g. HYPOXIA), covariates and a pseudonym."""

    fmaps: FeatureMaps
    target: np.ndarray
    covariates: Mapping[str, float]
    case_id: str


def add_geometry_maps(fmaps: FeatureMaps, gtv: np.ndarray, necrosis: np.ndarray | None = None) -> FeatureMaps:
    """Add the anatomical-prior maps (on the maps' grid): depth below the GTV surface (mm), depth relative
    to the deepest GTV voxel, and distance to NECROSIS (mm, capped at 100; 100 without necrosis).

    Hypoxia lies deep in tumours and next to necrosis (and so does the phantom's HYPOXIA); a model on
    these maps alone is the baseline that image features must beat (benchmarks/bench_radiomics_risk.py).
    """
    from scipy import ndimage

    sp = fmaps.roi.geometry.spacing_mm
    depth = ndimage.distance_transform_edt(gtv, sampling=sp)
    nec = necrosis if necrosis is not None else np.zeros_like(gtv)
    dnec = ndimage.distance_transform_edt(~nec, sampling=sp) if nec.any() else np.full(gtv.shape, 100.0)
    maps = dict(fmaps.maps)
    geo = fmaps.roi.geometry
    maps[GEOMETRY_FEATURES[0]] = Volume(depth, geo)
    maps[GEOMETRY_FEATURES[1]] = Volume(depth / max(float(depth.max()), 1e-9), geo)
    maps[GEOMETRY_FEATURES[2]] = Volume(np.minimum(dnec, 100.0), geo)
    return FeatureMaps(maps, fmaps.roi, dict(fmaps.info))


def design_matrix(fmaps: FeatureMaps, columns: Sequence[str], covariates: Mapping[str, float] | None = None) -> Any:
    """ROI voxels x model columns as a pandas DataFrame (maps, then ``cov_*`` columns repeated)."""
    import pandas as pd

    maps = [c for c in columns if not c.startswith("cov_")]
    missing = [c for c in maps if c not in fmaps.maps]
    if missing:
        raise InvalidImageError(f"feature maps {missing} are missing; compute them with sarcart radiomics maps")
    x, _ = fmaps.stack(maps)
    x = np.where(np.isfinite(x), x, 0.0)
    frame = pd.DataFrame(x, columns=maps)
    for col in (c for c in columns if c.startswith("cov_")):
        name = col[4:]
        if covariates is None or name not in covariates:
            raise ConfigError(f"covariate {name!r} is required by the model; pass it (--covariates JSON)")
        frame[col] = float(covariates[name])
    return frame[list(columns)]


def _pipeline(config: RiskConfig) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if config.classifier == "logistic":
        clf = LogisticRegression(C=config.c, max_iter=2000, random_state=config.seed)
    else:
        clf = RandomForestClassifier(n_estimators=200, min_samples_leaf=20, n_jobs=1, random_state=config.seed)
    return Pipeline([("scale", StandardScaler()), ("clf", clf)])


def train_risk_model(cases: Sequence[RiskCase], config: RiskConfig = RiskConfig()) -> Any:
    """Fit the pipeline on voxels sampled from every case's ROI (half positive, half negative when possible).

    Raises:
        InvalidImageError: a target that is not on the maps' grid; no positive or no negative voxel at all.
    """
    import pandas as pd

    rng = np.random.default_rng(config.seed)
    frames, labels = [], []
    for case in cases:
        if case.target.shape != case.fmaps.roi.array.shape:
            raise InvalidImageError(f"target of case {case.case_id} is not on the maps' grid")
        x = design_matrix(case.fmaps, config.columns, case.covariates)
        y = case.target[case.fmaps.roi.array].astype(bool)
        idx = _stratified(y, config.voxels_per_case, rng)
        frames.append(x.iloc[idx])
        labels.append(y[idx])
    y_all = np.concatenate(labels)
    if y_all.all() or not y_all.any():
        raise InvalidImageError("training voxels hold a single class; the cohort needs hypoxic and normoxic voxels")
    model = _pipeline(config).fit(pd.concat(frames, ignore_index=True), y_all)
    log.info("risk model: %d voxels from %d cases, %.1f %% positive", len(y_all), len(cases), 100 * y_all.mean())
    return model


def _stratified(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    n_pos = min(len(pos), n // 2)
    n_neg = min(len(neg), n - n_pos)
    return np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])


def predict_risk(model: Any, fmaps: FeatureMaps, covariates: Mapping[str, float] | None = None) -> Volume:
    """P(hypoxic) of every ROI voxel (float32, 0 outside the ROI) on the maps' grid."""
    x = design_matrix(fmaps, list(model.feature_names_in_), covariates)
    out = np.zeros(fmaps.roi.array.shape, dtype=np.float32)
    out[fmaps.roi.array] = model.predict_proba(x)[:, 1]
    return fmaps.roi.with_array(out)


def auroc_with_ci(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray], *, n_boot: int = 1000,
                  seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Voxel-level AUROC pooled over cases, with a case-level (cluster) bootstrap percentile CI.

    Args:
        scores, labels: per held-out case, the ROI voxels' predicted risks and true labels.
    """
    from sklearn.metrics import roc_auc_score

    s_all, y_all = np.concatenate(scores), np.concatenate(labels).astype(bool)
    auc = float(roc_auc_score(y_all, s_all))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(scores), len(scores))
        yb = np.concatenate([labels[i] for i in pick]).astype(bool)
        if yb.all() or not yb.any():
            continue
        boots.append(roc_auc_score(yb, np.concatenate([scores[i] for i in pick])))
    lo, hi = (np.quantile(boots, [(1 - level) / 2, (1 + level) / 2]) if boots else (np.nan, np.nan))
    return {"auroc": auc, "auroc_ci_low": float(lo), "auroc_ci_high": float(hi), "n_cases": len(scores),
            "n_voxels": len(y_all), "prevalence": float(y_all.mean())}


def paired_auroc_difference(scores_a: Sequence[np.ndarray], scores_b: Sequence[np.ndarray],
                            labels: Sequence[np.ndarray], *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """AUROC(a) - AUROC(b) on the same held-out voxels, with a paired case-level bootstrap 95 % CI."""
    from sklearn.metrics import roc_auc_score

    def diff(idx: Sequence[int] | np.ndarray) -> float | None:
        y = np.concatenate([labels[i] for i in idx]).astype(bool)
        if y.all() or not y.any():
            return None
        return float(roc_auc_score(y, np.concatenate([scores_a[i] for i in idx]))
                     - roc_auc_score(y, np.concatenate([scores_b[i] for i in idx])))

    rng = np.random.default_rng(seed)
    boots = [d for d in (diff(rng.integers(0, len(labels), len(labels))) for _ in range(n_boot)) if d is not None]
    lo, hi = np.quantile(boots, [0.025, 0.975]) if boots else (np.nan, np.nan)
    return {"delta_auroc": diff(range(len(labels))) or 0.0, "delta_ci_low": float(lo), "delta_ci_high": float(hi)}


def save_model(model: Any, path: str | os.PathLike[str], config: RiskConfig | None = None) -> Path:
    """Save with skops (``.skops``) plus ``<name>.json`` (columns and config)."""
    import skops.io as sio

    out = Path(path)
    if out.suffix != ".skops":
        raise ConfigError(f"risk models are saved as .skops files, got {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(model, out)
    meta = {"columns": list(model.feature_names_in_), "config": asdict(config) if config else None}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return out


def load_model(path: str | os.PathLike[str]) -> Any:
    """Load a ``.skops`` model, trusting only scikit-learn/numpy/scipy types.

    Raises:
        ConfigError: the file holds other types (refused: skops files can carry code references).
    """
    import skops.io as sio

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"risk model file {p} not found")
    untrusted = sio.get_untrusted_types(file=p)
    foreign = [t for t in untrusted if not t.startswith(_TRUSTED_PREFIXES)]
    if foreign:
        raise ConfigError(f"{p} holds types outside scikit-learn/numpy: {foreign}; refusing to load it")
    return sio.load(p, trusted=untrusted)
