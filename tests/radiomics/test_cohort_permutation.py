"""Survival arm against lifelines / scikit-survival, and the permutation test of the whole nested CV."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sarcart.errors import ConfigError
from sarcart.radiomics.outcomes import OutcomeModel, generate_outcomes
from sarcart.radiomics.study import StudyConfig, nested_cv, outer_splits, run_study
from sarcart.radiomics.study_cox import fit_ridge_cox
from sarcart.radiomics.study_models import harrell_c
from sarcart.radiomics.study_permutation import permutation_test, permuted

FAST = {"n_features": (1, 2), "c_grid": (1.0,), "penalizer_grid": (0.5,), "outer_folds": 4, "inner_folds": 2,
        "n_boot": 100}


def _tied_survival(rng: np.random.Generator, n: int, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, p)) * rng.uniform(0.2, 30.0, p) + rng.normal(0.0, 5.0, p)
    t = np.round(rng.exponential(12.0, n) * np.exp(0.4 * (x[:, 0] - x[:, 0].mean()) / x[:, 0].std())) + 1.0
    e = rng.integers(0, 2, n)
    e[0] = 1
    return x, t, e


def test_harrell_c_equals_lifelines_with_tied_times_and_scores() -> None:
    from lifelines.utils import concordance_index

    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(5, 50))
        t = rng.integers(1, 6, n).astype(float)  # heavy ties in time ...
        e = rng.integers(0, 2, n)
        e[0] = 1
        r = rng.integers(0, 3, (n, 4)).astype(float)  # ... and in the scores
        ref = [concordance_index(t, -r[:, j], e) for j in range(4)]
        np.testing.assert_allclose(harrell_c(t, e, r), ref, atol=1e-12)


def test_ridge_cox_solves_the_lifelines_problem() -> None:
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(1)
    for pen in (0.01, 0.1, 1.0):
        x, t, e = _tied_survival(rng, 60, 4)
        df = pd.DataFrame(x, columns=list("abcd")).assign(T=t, E=e)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = CoxPHFitter(penalizer=pen).fit(df, "T", "E")
        fit = fit_ridge_cox(x, t, e, penalizer=pen)
        # lifelines stops at a relative log-likelihood change of 1e-9: coefficients agree to ~1e-4
        np.testing.assert_allclose(fit.coef, ref.params_.to_numpy(), rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose((x - fit.mean) @ fit.coef, ref.predict_log_partial_hazard(df[list("abcd")]),
                                   rtol=1e-3, atol=1e-5)
    with pytest.raises(ConfigError, match="event"):
        fit_ridge_cox(x, t, np.zeros_like(e), penalizer=0.1)


def test_ridge_cox_equals_scikit_survival_to_machine_precision() -> None:
    sksurv = pytest.importorskip("sksurv.linear_model")
    from sksurv.util import Surv

    rng = np.random.default_rng(2)
    x, t, e = _tied_survival(rng, 50, 5)
    sd = x.std(axis=0, ddof=1)
    z = (x - x.mean(axis=0)) / sd  # lifelines' parametrisation: penalty n p |b|^2 / 2 on SD-scaled columns
    ref = sksurv.CoxPHSurvivalAnalysis(alpha=len(t) * 0.2, ties="efron", tol=1e-12, n_iter=200)
    ref.fit(z, Surv.from_arrays(e.astype(bool), t))
    np.testing.assert_allclose(fit_ridge_cox(x, t, e, penalizer=0.2).coef, ref.coef_ / sd, rtol=1e-9)


def _noise_cohort(n: int, p: int, seed: int, signal: float = 0.0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """n patients x p noise features; outcomes of the committed outcome model driven by feature 0 (signal > 0)."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"original_glcm_F{j}" for j in range(p)])
    odds, hazard = np.exp(signal), np.exp(signal)
    out = generate_outcomes(pd.DataFrame({"patient": np.arange(n).astype(str), "z": x.iloc[:, 0]}),
                            OutcomeModel(latent="z", seed=seed + 1, odds_ratio_per_sd=odds, hazard_ratio_per_sd=hazard,
                                         weibull_shape=1.3, follow_up_months=36.0, loss_rate_per_month=0.01))
    return x, out["local_failure"].to_numpy(), out[["time_months", "progression"]].to_numpy(dtype=np.float64)


def test_out_of_fold_cindex_equals_an_independent_refit_on_the_same_folds() -> None:
    """The study's Cox predictions and C-index against scikit-survival refitted on the same folds/features
    (the check that found no fault in the survival arm behind the null cohort's C-index of 0.403)."""
    sksurv = pytest.importorskip("sksurv.linear_model")
    from sksurv.metrics import concordance_index_censored
    from sksurv.util import Surv

    x, _, y = _noise_cohort(48, 8, seed=11, signal=np.log(2.0))
    y[:, 0] += np.random.default_rng(0).uniform(0, 1e-3, len(y))  # distinct times: both tie conventions agree
    cfg = StudyConfig(time="t", event="e", **FAST)
    cv = nested_cv(x, y, cfg, task="survival")
    ref = np.zeros(len(y))
    for (tr, te), fold in zip(outer_splits(y[:, 1].astype(int), cfg, 0), cv.folds):
        a, b = x.iloc[tr][fold["selected"]].to_numpy(), x.iloc[te][fold["selected"]].to_numpy()
        mu, sd = a.mean(axis=0), a.std(axis=0)  # the pipeline's StandardScaler ...
        a, b = (a - mu) / sd, (b - mu) / sd
        sd1 = a.std(axis=0, ddof=1)  # ... then the Cox model's own SD scaling
        model = sksurv.CoxPHSurvivalAnalysis(alpha=len(tr) * fold["params"]["model__penalizer"], ties="efron",
                                             tol=1e-12, n_iter=200)
        model.fit(a / sd1, Surv.from_arrays(y[tr, 1].astype(bool), y[tr, 0]))
        ref[te] = model.predict(b / sd1) - model.predict(np.zeros((1, a.shape[1])))[0]
    np.testing.assert_allclose(cv.prediction, ref, atol=1e-7)
    expected = concordance_index_censored(y[:, 1].astype(bool), y[:, 0], ref)[0]
    assert harrell_c(y[:, 0], y[:, 1], cv.prediction)[0] == pytest.approx(expected, abs=1e-12)


def test_permutations_move_time_and_event_together_and_do_not_depend_on_workers() -> None:
    y = np.column_stack([np.arange(1.0, 21.0), np.tile([0.0, 1.0], 10)])
    yp = permuted(y, 5, 3)
    assert not np.array_equal(yp, y)
    assert sorted(map(tuple, yp)) == sorted(map(tuple, y))  # rows kept intact: (time, event) pairs move jointly
    np.testing.assert_array_equal(permuted(y, 5, 3), yp)
    x, _, ys = _noise_cohort(32, 5, seed=4)
    cfg = StudyConfig(time="t", event="e", **FAST)
    serial = permutation_test(x, ys, cfg, task="survival", observed=0.5, n_perm=2)
    parallel = permutation_test(x, ys, cfg, task="survival", observed=0.5, n_perm=2, workers=2)
    assert serial["null"] == parallel["null"]


def test_null_cv_statistic_is_centred_on_chance() -> None:
    """Under permuted outcomes every out-of-fold pair is a coin flip: the nested-CV C-index averages 0.5.

    A biased procedure (a flipped risk sign is caught by the signal test below; anti-learning or leakage
    between folds would shift this mean) fails here: the mean of 40 permutations must lie within 3
    standard errors of 0.5.
    """
    x, _, y = _noise_cohort(40, 8, seed=21)
    cfg = StudyConfig(time="t", event="e", **FAST)
    res = permutation_test(x, y, cfg, task="survival", observed=0.5, n_perm=30)
    se = res["null_sd"] / np.sqrt(res["n_permutations"])
    assert res["n_permutations"] == 30 and abs(res["null_mean"] - 0.5) < 3 * se


def test_permutation_p_is_not_small_without_signal_and_minimal_with_a_strong_one(tmp_path: Path) -> None:
    n_perm = 19
    cfg = StudyConfig(outcome="local_failure", time="time_months", event="progression", permutations=n_perm, **FAST)
    ps = {}
    for name, signal in (("null", 0.0), ("signal", np.log(8.0))):
        x, yb, ys = _noise_cohort(48, 8, seed=31, signal=signal)
        table = x.assign(patient=[f"P{i:03d}" for i in range(len(x))], fraction=0, local_failure=yb,
                         time_months=ys[:, 0], progression=ys[:, 1].astype(int))
        res = run_study(table, cfg, tmp_path / name)
        for task, key in (("binary", "auroc"), ("survival", "c_index")):
            pt = res[task]["metrics"]["permutation"]
            null = np.asarray(pt["null"])
            assert pt["observed"] == res[task]["metrics"][key]
            assert pt["p_value"] == (1 + (null >= pt["observed"]).sum()) / (1 + n_perm)
            assert pt["p_lower"] == (1 + (null <= pt["observed"]).sum()) / (1 + n_perm)
            ps[name, task] = pt["p_value"]
            if name == "signal":  # beyond every permutation: the smallest p the test can give
                assert pt["observed"] > null.max() and pt["p_value"] == pytest.approx(1 / (1 + n_perm))
    # without a signal the observed statistic lies inside its permutation distribution
    assert ps["null", "binary"] > 0.1 and ps["null", "survival"] > 0.1
    page = (tmp_path / "signal" / "report.html").read_text()
    assert "permutation test" in page and (tmp_path / "signal" / "figures" / "permutation.png").is_file()


def test_cli_study_runs_the_permutation_test(tmp_path: Path) -> None:
    import argparse
    import json

    from sarcart.radiomics import cohort_cli

    x, yb, _ = _noise_cohort(40, 6, seed=41, signal=np.log(8.0))
    x.assign(patient=[f"P{i:03d}" for i in range(len(x))], fraction=0, y=yb).to_parquet(tmp_path / "f.parquet")
    (tmp_path / "s.yaml").write_text("n_features: [1]\nc_grid: [1.0]\nouter_folds: 4\ninner_folds: 2\nn_boot: 50\n")
    parser = argparse.ArgumentParser()
    cohort_cli.register(parser.add_subparsers())
    args = parser.parse_args(["cohort", "study", "--features", str(tmp_path / "f.parquet"), "--outcome", "y",
                              "--config", str(tmp_path / "s.yaml"), "--permutations", "4", "--no-progress",
                              "--out", str(tmp_path / "study")])
    assert args.func(args) == 0
    pt = json.loads((tmp_path / "study" / "metrics.json").read_text())["binary"]["metrics"]["permutation"]
    assert pt["n_permutations"] == 4 and pt["p_value"] == (1 + sum(v >= pt["observed"] for v in pt["null"])) / 5
    with pytest.raises(ConfigError, match="workers"):
        args.func(parser.parse_args(["cohort", "study", "--features", "f.parquet", "--outcome", "y", "--workers", "0",
                                     "--out", str(tmp_path / "x")]))
