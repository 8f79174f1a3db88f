"""Pipeline steps of a response study: feature filtering, mRMR and LASSO selection, a Cox model.

All are scikit-learn-style estimators fitted on the rows they are given (the outer-training split,
then the inner splits of the grid search) and applied to others. Survival targets are float arrays
of shape (n, 2): ``[time, event]`` (event 1 = progression/failure observed, 0 = censored).

* :class:`FeatureFilter` drops columns with non-finite or constant training values;
* :class:`MRMRSelector`: minimum-redundancy maximum-relevance selection, the FCQ variant (relevance /
  mean absolute Pearson correlation with the features already chosen; Ding & Peng, J Bioinform Comput
  Biol 2005, doi:10.1142/S0219720005001004). Relevance: the ANOVA F statistic for a binary outcome; for
  survival, |2 C - 1| of the feature's Harrell concordance with the event times (Somers' D);
* :class:`LassoSelector`: features with non-zero coefficients of an L1 logistic regression (at least one);
* :class:`CoxModel`: ridge-penalised Cox proportional-hazards regression (lifelines ``CoxPHFitter``;
  Cox 1972), predicting the log partial hazard.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

log = logging.getLogger(__name__)


def _frame(x: Any, columns: list[str] | None = None) -> Any:
    import pandas as pd

    if hasattr(x, "columns"):
        return x
    return pd.DataFrame(np.asarray(x), columns=columns)


class FeatureFilter(TransformerMixin, BaseEstimator):
    """Keep numeric columns whose training values are finite and not constant; ``passthrough`` columns stay."""

    def __init__(self, passthrough: tuple[str, ...] = ()) -> None:
        self.passthrough = passthrough

    def fit(self, x: Any, y: Any = None) -> FeatureFilter:
        x = _frame(x)
        keep = []
        for c in x.columns:
            if c in self.passthrough:
                keep.append(c)
                continue
            v = x[c].to_numpy(dtype=np.float64)
            if np.isfinite(v).all() and np.nanstd(v) > 1e-12 * max(1.0, float(np.abs(v).max())):
                keep.append(c)
        self.columns_ = keep
        return self

    def transform(self, x: Any) -> Any:
        return _frame(x)[self.columns_]


def _relevance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if y.ndim == 2:  # survival: |Somers' D| of each feature against the event times
        from lifelines.utils import concordance_index

        return np.array([abs(2 * concordance_index(y[:, 0], -x[:, j], y[:, 1]) - 1) for j in range(x.shape[1])])
    from sklearn.feature_selection import f_classif

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f, _ = f_classif(x, y)
    return np.nan_to_num(f, nan=0.0)


class MRMRSelector(TransformerMixin, BaseEstimator):
    """Greedy mRMR (FCQ): the first pick maximises relevance, each next one relevance / mean |corr|."""

    def __init__(self, k: int = 5) -> None:
        self.k = k

    def fit(self, x: Any, y: Any) -> MRMRSelector:
        xf = _frame(x)
        arr = xf.to_numpy(dtype=np.float64)
        rel = _relevance(arr, np.asarray(y))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.abs(np.nan_to_num(np.corrcoef(arr, rowvar=False)))
        corr = np.atleast_2d(corr)
        chosen = [int(np.argmax(rel))]
        while len(chosen) < min(self.k, arr.shape[1]):
            red = corr[:, chosen].mean(axis=1)
            score = rel / np.maximum(red, 1e-6)
            score[chosen] = -np.inf
            chosen.append(int(np.argmax(score)))
        self.selected_ = [str(xf.columns[i]) for i in chosen]
        return self

    def transform(self, x: Any) -> Any:
        return _frame(x)[self.selected_]


class LassoSelector(TransformerMixin, BaseEstimator):
    """Features with a non-zero coefficient in an L1 logistic regression of strength ``1 / c`` (standardised input)."""

    def __init__(self, c: float = 0.1) -> None:
        self.c = c

    def fit(self, x: Any, y: Any) -> LassoSelector:
        from sklearn.linear_model import LogisticRegression

        xf = _frame(x)
        coef = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=self.c, max_iter=1000).fit(xf, y).coef_[0]
        nz = np.flatnonzero(coef)
        if nz.size == 0:
            nz = np.array([int(np.argmax(np.abs(np.corrcoef(xf.to_numpy(dtype=float), y, rowvar=False)[-1, :-1])))])
        self.selected_ = [str(xf.columns[i]) for i in nz]
        return self

    def transform(self, x: Any) -> Any:
        return _frame(x)[self.selected_]


class CoxModel(BaseEstimator):
    """Ridge-penalised Cox model; ``predict`` returns the log partial hazard (higher = earlier event)."""

    def __init__(self, penalizer: float = 0.1) -> None:
        self.penalizer = penalizer

    def fit(self, x: Any, y: Any) -> CoxModel:
        from lifelines import CoxPHFitter

        xf = _frame(x).reset_index(drop=True).copy()
        yy = np.asarray(y, dtype=np.float64)
        xf.columns = [str(c) for c in xf.columns]
        xf["__time"], xf["__event"] = yy[:, 0], yy[:, 1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model_ = CoxPHFitter(penalizer=self.penalizer).fit(xf, "__time", "__event")
        self.columns_ = [c for c in xf.columns if not c.startswith("__")]
        return self

    def predict(self, x: Any) -> np.ndarray:
        xf = _frame(x).copy()
        xf.columns = [str(c) for c in xf.columns]
        return np.asarray(self.model_.predict_log_partial_hazard(xf[self.columns_]), dtype=np.float64).reshape(-1)

    def score(self, x: Any, y: Any) -> float:
        """Harrell's C-index of the predictions (higher risk should mean an earlier event)."""
        from lifelines.utils import concordance_index

        yy = np.asarray(y, dtype=np.float64)
        return float(concordance_index(yy[:, 0], -self.predict(x), yy[:, 1]))
