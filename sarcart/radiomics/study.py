"""Response-predictor studies with nested cross-validation: logistic (binary outcome) and Cox (time to event).

Per patient, the design holds the features of :func:`sarcart.radiomics.delta.patient_table` (baseline,
delta and/or slope blocks, optionally only the robust features of an ICC table). The model is one
scikit-learn pipeline - feature filter, ComBat harmonisation (when a batch column is named), standard
scaling, mRMR or LASSO selection, then L2 logistic regression or a ridge Cox model - whose
hyper-parameters (number of features, penalties) are chosen by an inner grid search.

**Nested cross-validation** (Varma & Simon 2006, doi:10.1186/1471-2105-7-91): the patients are split
into ``outer_folds`` (stratified by outcome / event); for each outer fold :func:`fit_fold` receives the
outer-training rows *only* and fits the whole pipeline, grid search included, on them; the outer-test
rows reach the fitted model only through ``predict``. Filtering, harmonisation, scaling and selection
therefore never see a test patient. Out-of-fold predictions (averaged over ``repeats`` of the outer
split) give the AUROC / C-index with bootstrap CIs and the calibration (:mod:`sarcart.radiomics.study_metrics`).
Those CIs resample fixed predictions and ignore fold and fitting variability; whether a result differs
from chance is judged by the label-permutation test of the whole nested CV
(:mod:`sarcart.radiomics.study_permutation`; ``permutations`` > 0).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sarcart.config import load_model
from sarcart.errors import ConfigError

log = logging.getLogger(__name__)

Task = Literal["binary", "survival"]


class StudyConfig(BaseModel):
    """Settings of :func:`run_study` (YAML: ``configs/cohort_study/*.yaml``; unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    outcome: str | None = Field(default=None, description="binary outcome column (0/1)")
    time: str | None = Field(default=None, description="time-to-event column (with event)")
    event: str | None = Field(default=None, description="event indicator column, 1 = observed")
    include: tuple[Literal["baseline", "delta", "slope"], ...] = ("baseline",)
    feature_prefixes: tuple[str, ...] = Field(default=(), description="keep features starting with these")
    robust_features: Path | None = Field(default=None, description="ICC table CSV: keep robust features only")
    robust_threshold: float = Field(default=0.75, ge=-1.0, le=1.0)
    robust_column: str = "icc21_low"
    batch: str | None = Field(default=None, description="scanner/site column for ComBat")
    selection: Literal["mrmr", "lasso"] = "mrmr"
    n_features: tuple[int, ...] = (1, 2, 3, 5, 10)
    lasso_c: tuple[float, ...] = (0.05, 0.1, 0.5)
    c_grid: tuple[float, ...] = (0.1, 1.0)
    penalizer_grid: tuple[float, ...] = (0.1, 1.0)
    outer_folds: int = Field(default=5, ge=2, le=20)
    inner_folds: int = Field(default=3, ge=2, le=20)
    repeats: int = Field(default=1, ge=1, le=50)
    n_boot: int = Field(default=1000, ge=0, le=100000)
    permutations: int = Field(default=0, ge=0, le=100000,
                              description="outcome permutations of the whole nested CV for a p-value (0 = none)")
    calibration_bins: int = Field(default=5, ge=2, le=20)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        if (self.time is None) != (self.event is None):
            raise ValueError("time and event must be given together")
        if self.outcome is None and self.time is None:
            raise ValueError("give an outcome column and/or time + event columns")
        if not self.n_features or min(self.n_features) < 1:
            raise ValueError(f"n_features must list positive integers, got {self.n_features}")
        return self


def load_study_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> StudyConfig:
    """Read a study YAML (optional) and apply overrides (``None`` ignored)."""
    return load_model(StudyConfig, path, what="study configuration", hint="see docs/cohort.md; examples in "
                      "configs/cohort_study/", **overrides)


def build_estimator(config: StudyConfig, task: Task) -> Any:
    """The study pipeline inside its inner grid search (a fresh, unfitted estimator)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from sarcart.radiomics.harmonise import ComBat
    from sarcart.radiomics.study_models import CoxModel, FeatureFilter, LassoSelector, MRMRSelector

    steps: list[tuple[str, Any]] = [("filter", FeatureFilter(passthrough=(config.batch,) if config.batch else ()))]
    if config.batch:
        steps.append(("combat", ComBat(config.batch)))
    steps.append(("scale", StandardScaler().set_output(transform="pandas")))
    grid: dict[str, list[Any]] = {}
    if config.selection == "lasso" and task == "binary":
        steps.append(("select", LassoSelector()))
        grid["select__c"] = list(config.lasso_c)
    else:
        steps.append(("select", MRMRSelector()))
        grid["select__k"] = list(config.n_features)
    if task == "binary":
        steps.append(("model", LogisticRegression(max_iter=2000)))
        grid["model__C"] = list(config.c_grid)
        cv: Any = StratifiedKFold(config.inner_folds, shuffle=True, random_state=config.seed)
        scoring: Any = "roc_auc"
    else:
        steps.append(("model", CoxModel()))
        grid["model__penalizer"] = list(config.penalizer_grid)
        cv, scoring = KFold(config.inner_folds, shuffle=True, random_state=config.seed), None
    return GridSearchCV(Pipeline(steps), grid, cv=cv, scoring=scoring, refit=True, n_jobs=1, error_score=np.nan)


def outer_splits(y_strat: np.ndarray, config: StudyConfig, repeat: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row indices of the outer folds of one repeat, stratified by ``y_strat``."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(config.outer_folds, shuffle=True, random_state=config.seed + 1000 * repeat)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(y_strat)), y_strat)]


def fit_fold(factory: Callable[[], Any], x_train: Any, y_train: np.ndarray) -> Any:
    """Fit a fresh estimator on the outer-training rows only (the only place a study model is fitted)."""
    return factory().fit(x_train, y_train)


def _predict(model: Any, x: Any, task: Task) -> np.ndarray:
    return model.predict_proba(x)[:, 1] if task == "binary" else np.asarray(model.predict(x), dtype=np.float64)


def _chosen(model: Any) -> tuple[list[str], dict[str, Any]]:
    best = model.best_estimator_ if hasattr(model, "best_estimator_") else model
    select = best.named_steps.get("select") if hasattr(best, "named_steps") else None
    params = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in getattr(model, "best_params_", {}).items()}
    return list(getattr(select, "selected_", [])), params


@dataclass
class CVResult:
    """Out-of-fold predictions (mean over repeats) and what each outer fold chose."""

    prediction: np.ndarray
    folds: list[dict[str, Any]] = field(default_factory=list)


def nested_cv(x: Any, y: np.ndarray, config: StudyConfig, *, task: Task,
              factory: Callable[[], Any] | None = None) -> CVResult:
    """Nested cross-validation: out-of-fold predictions for every row of ``x``.

    Args:
        x: design DataFrame (patients x features, plus the batch column when harmonising).
        y: binary outcome (n,) or survival target (n, 2) ``[time, event]``.
        config: folds, repeats, grids, seed.
        task: ``binary`` (probabilities) or ``survival`` (log partial hazards).
        factory: builds a fresh unfitted estimator (default :func:`build_estimator`).
    """
    make = factory or (lambda: build_estimator(config, task))
    strat = (y if task == "binary" else y[:, 1]).astype(int)
    if np.bincount(strat).min() < config.outer_folds:
        raise ConfigError(f"each outcome class needs >= outer_folds ({config.outer_folds}) patients; "
                          f"got counts {np.bincount(strat).tolist()}")
    preds = np.zeros((config.repeats, len(y)))
    folds = []
    for r in range(config.repeats):
        for i, (tr, te) in enumerate(outer_splits(strat, config, r)):
            model = fit_fold(make, x.iloc[tr].copy(), y[tr])
            preds[r, te] = _predict(model, x.iloc[te], task)
            chosen, params = _chosen(model)
            folds.append({"repeat": r, "fold": i, "n_train": len(tr), "n_test": len(te),
                          "selected": chosen, "params": params})
    return CVResult(preds.mean(axis=0), folds)


def design(table: Any, config: StudyConfig) -> tuple[Any, Any]:
    """(patient table with carried columns, feature design DataFrame) for a study."""
    import pandas as pd

    from sarcart.radiomics.cohort_table import feature_columns
    from sarcart.radiomics.delta import patient_table

    feats = [f for f in feature_columns(table) if not config.feature_prefixes or f.startswith(config.feature_prefixes)]
    if config.robust_features is not None:
        from sarcart.radiomics.reproducibility import robust_features

        robust = set(robust_features(pd.read_csv(config.robust_features, index_col=0),
                                     threshold=config.robust_threshold, column=config.robust_column))
        feats = [f for f in feats if f in robust]
    if not feats:
        raise ConfigError("no feature columns left for the study; check feature_prefixes / robust_features")
    patients = patient_table(table, feats, include=config.include)
    cols = [c for c in patients.columns if c in feats or c.startswith(("delta_rel_", "slope_"))]
    x = patients[cols].astype(np.float64)
    if config.batch:
        if config.batch not in patients.columns:
            raise ConfigError(f"batch column {config.batch!r} is not in the feature table")
        x[config.batch] = patients[config.batch].astype(str)
    return patients, x


def _target(patients: Any, x: Any, config: StudyConfig, task: Task) -> tuple[Any, np.ndarray, Any]:
    cols = [config.outcome] if task == "binary" else [config.time, config.event]
    missing = [c for c in cols if c not in patients.columns]
    if missing:
        raise ConfigError(f"outcome columns {missing} are not in the feature table; carry them in the manifest")
    vals = patients[cols].apply(lambda s: s.astype(float))
    ok = vals.notna().all(axis=1).to_numpy()
    if (~ok).any():
        log.warning("%d patients without %s are left out of the %s model", int((~ok).sum()), cols, task)
    y = vals.to_numpy()[ok]
    if task == "binary":
        y = y[:, 0]
        if not np.isin(y, (0, 1)).all():
            raise ConfigError(f"outcome {config.outcome!r} must be 0/1, got values {sorted(set(y.tolist()))[:5]}")
        y = y.astype(int)
    elif not np.isin(y[:, 1], (0, 1)).all() or (y[:, 0] <= 0).any():
        raise ConfigError(f"event {config.event!r} must be 0/1 and time {config.time!r} positive")
    return patients.index[ok], y, x.loc[ok]


def evaluate(patients: Any, x: Any, config: StudyConfig, task: Task, *, workers: int = 1,
             show_progress: bool = False) -> dict[str, Any]:
    """Nested CV, metrics with CIs, the permutation test (``config.permutations`` > 0; ``workers``
    processes) and the model refitted on all patients (for its chosen features)."""
    from sarcart.radiomics.study_metrics import auroc_ci, calibration, cindex_ci, risk_groups
    from sarcart.radiomics.study_permutation import permutation_test

    ids, y, xx = _target(patients, x, config, task)
    cv = nested_cv(xx, y, config, task=task)
    if task == "binary":
        metrics = {**auroc_ci(y, cv.prediction, n_boot=config.n_boot, seed=config.seed),
                   **calibration(y, cv.prediction, bins=config.calibration_bins),
                   "n_patients": len(y), "n_events": int(y.sum())}
    else:
        metrics = {**cindex_ci(y[:, 0], y[:, 1], cv.prediction, n_boot=config.n_boot, seed=config.seed),
                   **risk_groups(y[:, 0], y[:, 1], cv.prediction),
                   "n_patients": len(y), "n_events": int(y[:, 1].sum())}
    if config.permutations:
        metrics["permutation"] = permutation_test(
            xx, y, config, task=task, observed=metrics["auroc" if task == "binary" else "c_index"],
            n_perm=config.permutations, workers=workers, show_progress=show_progress)
    final = fit_fold(lambda: build_estimator(config, task), xx, y)
    chosen, params = _chosen(final)
    return {"task": task, "metrics": metrics, "folds": cv.folds, "final_features": chosen, "final_params": params,
            "patients": [str(i) for i in ids], "y": y.tolist(), "prediction": cv.prediction.tolist()}


def run_study(features: Any, config: StudyConfig, out_dir: str | os.PathLike[str], *,
              icc: Any = None, workers: int = 1, show_progress: bool = False) -> dict[str, Any]:
    """Run the study on a cohort table (DataFrame or Parquet path) and write ``out_dir``.

    Writes ``metrics.json`` (per model: AUROC or C-index with CI, calibration or risk groups, chosen
    features per fold, and with ``config.permutations`` > 0 the permutation test under ``permutation``),
    ``predictions.csv`` (out-of-fold predictions per patient), ``config.yaml``, ``report.html`` and
    ``figures/*.png`` (:mod:`sarcart.radiomics.report`).

    Args:
        features: cohort table or the path of one (``sarcart cohort extract``).
        config: study settings.
        out_dir: output folder (created).
        icc: optional ICC table (DataFrame indexed by feature) for the report.
        workers: processes for the permutation test (1 = this process).
        show_progress: progress bar of the permutation test on stderr.

    Returns:
        ``{"binary": {...}, "survival": {...}}`` for the models that ran.
    """
    import json

    import pandas as pd
    import yaml

    from sarcart.radiomics.cohort_table import read_cohort_table
    from sarcart.radiomics.report import write_report

    table = features if hasattr(features, "columns") else read_cohort_table(features)[0]
    patients, x = design(table, config)
    results: dict[str, Any] = {}
    if config.outcome:
        results["binary"] = evaluate(patients, x, config, "binary", workers=workers, show_progress=show_progress)
    if config.time:
        results["survival"] = evaluate(patients, x, config, "survival", workers=workers, show_progress=show_progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False))
    (out / "metrics.json").write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("y", "prediction")}
                                                  for k, v in results.items()}, indent=1, default=str))
    preds = pd.DataFrame({"patient": patients.index.astype(str)})
    for task, res in results.items():
        preds = preds.merge(pd.DataFrame({"patient": res["patients"], f"{task}_prediction": res["prediction"]}),
                            on="patient", how="left")
    preds.to_csv(out / "predictions.csv", index=False)
    write_report(results, x, out, icc=icc, config=config)
    return results
