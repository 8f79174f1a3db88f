"""Delta-radiomics: change of every feature across the fractions of a course.

For patient p, feature f and fraction t (course order; the baseline t0 is the patient's first fraction
in the manifest, i.e. its smallest fraction number):

* absolute change  ``delta_abs_f(t) = f(t) - f(t0)``;
* relative change  ``delta_rel_f(t) = (f(t) - f(t0)) / |f(t0)|`` (NaN when f(t0) = 0);
* slope over the course, the least-squares slope of f against the fraction number,
  ``slope_f = sum((n - mean n)(f - mean f)) / sum((n - mean n)^2)`` (per fraction; NaN with one fraction).

Fellah et al. (Sci Rep 2017, doi:10.1038/s41598-017-08310-5) and Fave et al. (Sci Rep 2017,
doi:10.1038/s41598-017-13448-3) define delta-radiomics features this way (net and relative change,
and rate of change). The features must come from per-fraction normalised images (see
:mod:`sarcart.radiomics.fractions`) for the changes to mean anything on MR.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sarcart.errors import ConfigError
from sarcart.radiomics.cohort_table import ID_COLUMNS, PROVENANCE, feature_columns


def _check(table: Any, features: Sequence[str] | None) -> list[str]:
    missing = [c for c in ("patient", "fraction") if c not in table.columns]
    if missing:
        raise ConfigError(f"the feature table lacks the columns {missing}; use a table from sarcart cohort extract")
    feats = list(features) if features is not None else feature_columns(table)
    unknown = [f for f in feats if f not in table.columns]
    if unknown:
        raise ConfigError(f"features {unknown[:5]} are not columns of the feature table")
    if table.duplicated(["patient", "fraction"]).any():
        raise ConfigError("the feature table lists a patient x fraction twice; keep one ROI per fraction")
    return feats


def delta_table(table: Any, features: Sequence[str] | None = None) -> Any:
    """Per patient x fraction: ``patient, fraction, fraction_index``, ``delta_abs_<f>`` and ``delta_rel_<f>``.

    Args:
        table: cohort table (one row per patient x fraction).
        features: feature columns (default: every feature column).

    Returns:
        pandas DataFrame, rows sorted by patient and fraction; the baseline rows hold zeros.
    """
    import pandas as pd

    feats = _check(table, features)
    t = table.sort_values(["patient", "fraction"]).reset_index(drop=True)
    values = t[feats].to_numpy(dtype=np.float64)
    firsts = t.drop_duplicates("patient", keep="first").set_index("patient")
    base = firsts.loc[t["patient"], feats].to_numpy(dtype=np.float64)  # NaN at baseline stays NaN
    d_abs = values - base
    with np.errstate(divide="ignore", invalid="ignore"):
        d_rel = np.where(base != 0, d_abs / np.abs(base), np.nan)
    ids = t[["patient", "fraction"]].copy()
    ids["fraction_index"] = t.groupby("patient", sort=False).cumcount()
    out = pd.concat([ids, pd.DataFrame(d_abs, columns=[f"delta_abs_{f}" for f in feats]),
                     pd.DataFrame(d_rel, columns=[f"delta_rel_{f}" for f in feats])], axis=1)
    return out


def slopes(table: Any, features: Sequence[str] | None = None) -> Any:
    """Per patient: ``slope_<f>``, the least-squares slope of each feature against the fraction number."""
    import pandas as pd

    feats = _check(table, features)
    rows = {}
    for patient, grp in table.groupby("patient", sort=True):
        n = grp["fraction"].to_numpy(dtype=np.float64)
        y = grp[feats].to_numpy(dtype=np.float64)
        dn = n - n.mean()
        ss = float(dn @ dn)
        rows[patient] = (dn @ (y - y.mean(0))) / ss if ss > 0 else np.full(len(feats), np.nan)
    return pd.DataFrame.from_dict(rows, orient="index", columns=[f"slope_{f}" for f in feats]).rename_axis("patient")


def patient_table(table: Any, features: Sequence[str] | None = None, *,
                  include: Sequence[str] = ("baseline",)) -> Any:
    """One row per patient for a study: carried columns plus the requested feature blocks.

    Args:
        table: cohort table.
        features: feature columns (default: all).
        include: any of ``baseline`` (features of the first fraction, original names), ``delta``
            (``delta_rel_<f>`` at the patient's last fraction) and ``slope`` (``slope_<f>``).

    Returns:
        pandas DataFrame indexed by patient.

    Raises:
        ConfigError: unknown block, or a carried column (outcome, covariate) that varies within a patient.
    """
    import pandas as pd

    bad = [b for b in include if b not in ("baseline", "delta", "slope")]
    if bad or not include:
        raise ConfigError(f"include must name baseline, delta and/or slope, got {list(include)}")
    feats = _check(table, features)
    t = table.sort_values(["patient", "fraction"])
    carried = [c for c in t.columns if c not in feats and c not in PROVENANCE and c not in ID_COLUMNS
               and c not in feature_columns(t)]
    varying = [c for c in carried if (t.groupby("patient")[c].nunique(dropna=False) > 1).any()]
    if varying:
        raise ConfigError(f"columns {varying} vary between fractions of a patient; outcomes and covariates "
                          "must be constant per patient")
    first = t.drop_duplicates("patient", keep="first").set_index("patient").sort_index()
    blocks = [first[carried]]
    if "baseline" in include:
        blocks.append(first[feats])
    if "delta" in include:
        d = delta_table(t, feats)
        last = d.drop_duplicates("patient", keep="last").set_index("patient").sort_index()
        blocks.append(last[[f"delta_rel_{f}" for f in feats]])
    if "slope" in include:
        blocks.append(slopes(t, feats))
    return pd.concat(blocks, axis=1)
