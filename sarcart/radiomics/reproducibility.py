"""Reproducibility of features: intraclass correlation ICC(2,1) and ICC(3,1) with 95 % confidence intervals.

For an n x k matrix Y (n subjects - patients, ROIs - rated by k "raters" - perturbed replicates, or
fractions), with the two-way ANOVA mean squares MSR (rows), MSC (columns) and MSE (residual):

* ICC(3,1), consistency, two-way mixed, single measurement: (MSR - MSE) / (MSR + (k-1) MSE);
* ICC(2,1), absolute agreement, two-way random, single measurement:
  (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)

(Shrout & Fleiss 1979, doi:10.1037/0033-2909.86.2.420; McGraw & Wong 1996, doi:10.1037/1082-989X.1.1.30).
Confidence intervals follow McGraw & Wong (1996), Table 7 (cases 3 and 2A): an exact F interval for
ICC(3,1) and Satterthwaite's approximate degrees of freedom for ICC(2,1). Everything is vectorised over
features. Koo & Li (2016, doi:10.1016/j.jcm.2016.02.012) call ICC >= 0.75 "good" and >= 0.9 "excellent";
sarcart's robust-feature list keeps the features whose *lower* 95 % bound of ICC(2,1) is >= 0.75.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sarcart.errors import ConfigError

ROBUST_THRESHOLD = 0.75
ICC_COLUMNS = ("icc21", "icc21_low", "icc21_high", "icc31", "icc31_low", "icc31_high")


def _mean_squares(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, k = y.shape[:2]
    grand = y.mean(axis=(0, 1))
    msr = k * ((y.mean(axis=1) - grand) ** 2).sum(axis=0) / (n - 1)
    msc = n * ((y.mean(axis=0) - grand) ** 2).sum(axis=0) / (k - 1)
    sst = ((y - grand) ** 2).sum(axis=(0, 1))
    mse = (sst - (n - 1) * msr - (k - 1) * msc) / ((n - 1) * (k - 1))
    return msr, msc, mse


def icc(y: np.ndarray, *, level: float = 0.95) -> dict[str, np.ndarray]:
    """ICC(2,1) and ICC(3,1) with confidence intervals.

    Args:
        y: ratings, shape (n subjects, k raters) or (n, k, p) for p features at once; finite values.
        level: confidence level of the intervals.

    Returns:
        ``{"icc21", "icc21_low", "icc21_high", "icc31", "icc31_low", "icc31_high"}``, each a float array of
        shape (p,) (shape () for 2D input).

    Raises:
        ConfigError: fewer than 2 subjects or raters, non-finite ratings.
    """
    from scipy.stats import f as fdist

    arr = np.asarray(y, dtype=np.float64)
    flat = arr.ndim == 2
    arr = arr[..., None] if flat else arr
    if arr.ndim != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ConfigError(f"ICC needs ratings of shape (n >= 2 subjects, k >= 2 raters[, features]), got {y.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError("ICC ratings must be finite; drop subjects with missing values first")
    n, k = arr.shape[:2]
    msr, msc, mse = _mean_squares(arr)
    alpha = 1.0 - level
    with np.errstate(divide="ignore", invalid="ignore"):
        icc3 = (msr - mse) / (msr + (k - 1) * mse)
        icc2 = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
        f_obs = msr / mse
        df1, df2 = n - 1, (n - 1) * (k - 1)
        fl = f_obs / fdist.ppf(1 - alpha / 2, df1, df2)
        fu = f_obs * fdist.ppf(1 - alpha / 2, df2, df1)
        out = {"icc31": icc3, "icc31_low": (fl - 1) / (fl + k - 1), "icc31_high": (fu - 1) / (fu + k - 1)}
        a = k * icc2 / (n * (1 - icc2))
        b = 1 + k * icc2 * (n - 1) / (n * (1 - icc2))
        v = (a * msc + b * mse) ** 2 / ((a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / df2)
        fl2 = fdist.ppf(1 - alpha / 2, df1, v)
        fu2 = fdist.ppf(1 - alpha / 2, v, df1)
        low2 = n * (msr - fl2 * mse) / (fl2 * (k * msc + (k * n - k - n) * mse) + n * msr)
        high2 = n * (fu2 * msr - mse) / (k * msc + (k * n - k - n) * mse + n * fu2 * msr)
    out.update({"icc21": icc2, "icc21_low": low2, "icc21_high": high2})
    return {key: (val[0] if flat else val) for key, val in out.items()}


def icc_table(long: Any, *, subject: str, rater: str, features: Sequence[str] | None = None,
              level: float = 0.95) -> Any:
    """ICC table of every feature from a long table (one row per subject x rater).

    Subjects lacking a rater, or with a non-finite value of a feature, are left out of that feature's ICC.

    Returns:
        pandas DataFrame indexed by feature with :data:`ICC_COLUMNS`, ``n_subjects`` and ``n_raters``.

    Raises:
        ConfigError: missing columns, a subject x rater listed twice.
    """
    import pandas as pd

    from sarcart.radiomics.cohort_table import feature_columns

    for col in (subject, rater):
        if col not in long.columns:
            raise ConfigError(f"ICC table needs the column {col!r}; columns are {list(long.columns)[:8]}...")
    if long.duplicated([subject, rater]).any():
        raise ConfigError(f"each {subject} x {rater} must appear once in the ICC input")
    feats = list(features) if features is not None else feature_columns(long)
    cube = long.pivot(index=subject, columns=rater, values=feats)
    k = long[rater].nunique()
    rows = {}
    groups: dict[bytes, list[str]] = {}
    for f in feats:
        block = cube[f].to_numpy(dtype=np.float64)
        ok = np.isfinite(block).all(axis=1)
        groups.setdefault(ok.tobytes(), []).append(f)
    for key, names in groups.items():
        ok = np.frombuffer(key, dtype=bool)
        y = np.stack([cube[f].to_numpy(dtype=np.float64)[ok] for f in names], axis=-1)
        res = icc(y, level=level) if ok.sum() >= 2 else {c: np.full(len(names), np.nan) for c in ICC_COLUMNS}
        for j, f in enumerate(names):
            rows[f] = {c: float(res[c][j]) for c in ICC_COLUMNS} | {"n_subjects": int(ok.sum()), "n_raters": int(k)}
    return pd.DataFrame.from_dict(rows, orient="index").loc[feats].rename_axis("feature")


def robust_features(table: Any, *, threshold: float = ROBUST_THRESHOLD, column: str = "icc21_low") -> list[str]:
    """Features whose ``column`` (default: lower 95 % bound of ICC(2,1)) is at least ``threshold``."""
    if column not in table.columns:
        raise ConfigError(f"ICC table has no column {column!r}; choose one of {ICC_COLUMNS}")
    return [str(f) for f, v in table[column].items() if np.isfinite(v) and v >= threshold]


def between_fractions(table: Any, features: Sequence[str] | None = None, *, fractions: int | None = None) -> Any:
    """ICC of every feature between the first ``fractions`` fractions of each patient (raters = fraction order).

    Patients with fewer fractions are left out. ``None`` uses the largest number of fractions that at
    least 3 patients have.
    """
    counts = table.groupby("patient")["fraction"].nunique()
    if fractions is None:
        candidates = [m for m in range(2, int(counts.max()) + 1) if (counts >= m).sum() >= 3] if len(counts) else []
        if not candidates:
            raise ConfigError("between-fraction ICC needs at least 3 patients with 2 or more fractions")
        fractions = max(candidates)
    keep = counts[counts >= fractions].index
    t = table[table["patient"].isin(keep)].sort_values(["patient", "fraction"]).copy()
    t["_order"] = t.groupby("patient").cumcount()
    t = t[t["_order"] < fractions]
    return icc_table(t, subject="patient", rater="_order", features=features)
