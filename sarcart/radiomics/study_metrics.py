"""Performance of out-of-fold predictions: AUROC and C-index with bootstrap CIs, calibration, risk groups.

* AUROC (Hanley & McNeil 1982, doi:10.1148/radiology.143.1.7063747) and Harrell's C-index (Harrell et al.
  1982, doi:10.1001/jama.1982.03320430047030) with percentile bootstrap 95 % CIs over patients (Efron &
  Tibshirani 1993): resample patients with replacement ``n_boot`` times, recompute, take the 2.5 and 97.5
  percentiles.
* Calibration (Van Calster et al. 2019, doi:10.1186/s12916-019-1466-7): calibration-in-the-large
  (mean observed - mean predicted), calibration slope (logistic regression of the outcome on the logit of
  the prediction; 1 is ideal, < 1 means too extreme predictions), Brier score, and the reliability curve
  (observed rate per quantile bin of the predictions).
* Kaplan-Meier curves (Kaplan & Meier 1958, doi:10.1080/01621459.1958.10501452) of the groups above and
  below the median predicted risk, compared with the log-rank test.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sarcart.errors import ConfigError


def bootstrap_ci(stat: Any, n: int, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of ``stat(indices)`` over ``n_boot`` resamples of ``range(n)`` (invalid resamples skipped)."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        v = stat(rng.integers(0, n, n))
        if v is not None and np.isfinite(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def auroc_ci(y: np.ndarray, score: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """AUROC of ``score`` for binary ``y`` with a patient bootstrap 95 % CI."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    if len(np.unique(y)) != 2:
        raise ConfigError("AUROC needs both outcome classes among the patients")

    def stat(idx: np.ndarray) -> float | None:
        return float(roc_auc_score(y[idx], score[idx])) if len(np.unique(y[idx])) == 2 else None

    lo, hi = bootstrap_ci(stat, len(y), n_boot=n_boot, seed=seed)
    return {"auroc": float(roc_auc_score(y, score)), "auroc_ci_low": lo, "auroc_ci_high": hi}


def cindex_ci(time: np.ndarray, event: np.ndarray, risk: np.ndarray, *, n_boot: int = 1000,
              seed: int = 0) -> dict[str, float]:
    """Harrell's C-index of ``risk`` (higher = earlier event) with a patient bootstrap 95 % CI."""
    from lifelines.utils import concordance_index

    t, e, r = (np.asarray(a, dtype=np.float64) for a in (time, event, risk))
    if e.sum() < 1:
        raise ConfigError("the C-index needs at least one observed event")

    def stat(idx: np.ndarray) -> float | None:
        return float(concordance_index(t[idx], -r[idx], e[idx])) if e[idx].sum() > 0 else None

    lo, hi = bootstrap_ci(stat, len(t), n_boot=n_boot, seed=seed)
    return {"c_index": float(concordance_index(t, -r, e)), "c_index_ci_low": lo, "c_index_ci_high": hi}


def calibration(y: np.ndarray, prob: np.ndarray, *, bins: int = 5) -> dict[str, Any]:
    """Calibration-in-the-large, slope, Brier score and the reliability curve (quantile bins)."""
    from sklearn.calibration import calibration_curve
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss

    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p)).reshape(-1, 1)
    slope = float(LogisticRegression(C=np.inf).fit(logit, y).coef_[0, 0]) if np.ptp(logit) > 0 else float("nan")
    observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="quantile")
    return {"calibration_in_the_large": float(y.mean() - p.mean()), "calibration_slope": slope,
            "brier": float(brier_score_loss(y, p)), "curve_predicted": predicted.tolist(),
            "curve_observed": observed.tolist()}


def risk_groups(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> dict[str, Any]:
    """Median split of the predicted risk: Kaplan-Meier curves per group and the log-rank p-value."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    t, e, r = (np.asarray(a, dtype=np.float64) for a in (time, event, risk))
    high = r > np.median(r)
    groups: dict[str, Any] = {}
    for name, sel in (("low risk", ~high), ("high risk", high)):
        km = KaplanMeierFitter().fit(t[sel], e[sel])
        sf = km.survival_function_.iloc[:, 0]
        groups[name] = {"n": int(sel.sum()), "events": int(e[sel].sum()), "time": sf.index.to_numpy().tolist(),
                        "survival": sf.to_numpy().tolist()}
    test = logrank_test(t[~high], t[high], e[~high], e[high])
    return {"groups": groups, "logrank_p": float(test.p_value)}
