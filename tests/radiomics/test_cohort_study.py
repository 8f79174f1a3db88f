"""ComBat against neuroCombat, selection, nested CV without leakage, metrics, outcomes model, report, CLI."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from cohort_support import FAST_PARAMS, tiny_cohort, tiny_rows, write_manifest  # noqa: F401
from sklearn.base import BaseEstimator, TransformerMixin

from sarcart.errors import ConfigError
from sarcart.radiomics.harmonise import ComBat
from sarcart.radiomics.outcomes import OutcomeModel, generate_outcomes
from sarcart.radiomics.study import StudyConfig, build_estimator, nested_cv, run_study
from sarcart.radiomics.study_metrics import auroc_ci, calibration, cindex_ci
from sarcart.radiomics.study_models import MRMRSelector

FAST = {"n_features": (1, 2), "c_grid": (1.0,), "penalizer_grid": (0.5,), "outer_folds": 4, "inner_folds": 2,
        "n_boot": 200}


def _batched(n: int = 60, p: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    batch = np.repeat(["A", "B", "C"], n // 3)
    x = rng.normal(size=(n, p)) + np.where(batch == "B", 2.0, 0.0)[:, None] * np.linspace(0.2, 1, p)[None]
    x[batch == "C"] *= 3.0
    df = pd.DataFrame(x, columns=[f"original_firstorder_F{i}" for i in range(p)])
    df["scanner"] = batch
    return df


def test_combat_equals_neurocombat_and_removes_batch_effects() -> None:
    from neuroCombat import neuroCombat

    df = _batched()
    feats = [c for c in df.columns if c != "scanner"]
    out = ComBat("scanner").fit(df).transform(df)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = neuroCombat(dat=df[feats].to_numpy().T, covars=pd.DataFrame({"b": df["scanner"]}), batch_col="b")
    np.testing.assert_allclose(out.to_numpy(), ref["data"].T, atol=1e-10)
    b = df["scanner"].to_numpy()
    raw_spread = (df[feats].groupby(b).mean().agg(np.ptp)).to_numpy()
    assert ((out.groupby(b).mean().agg(np.ptp)).to_numpy() < raw_spread / 2).all()  # EB: shrunk estimates
    ls = ComBat("scanner", eb=False).fit_transform(df)  # location/scale: batch moments become equal exactly
    np.testing.assert_allclose(ls.groupby(b).mean().agg(np.ptp).to_numpy(), 0.0, atol=1e-9)
    np.testing.assert_allclose(ls.groupby(b).std().agg(np.ptp).to_numpy(), 0.0, atol=1e-9)
    # new rows of a fitted batch get that batch's transform: a copy of a training row maps to its output
    new = df.iloc[[3, 25]].copy()
    np.testing.assert_allclose(ComBat("scanner").fit(df).transform(new).to_numpy(), out.iloc[[3, 25]].to_numpy())
    odd = new.assign(scanner="Z")
    np.testing.assert_allclose(ComBat("scanner").fit(df).transform(odd).to_numpy(), new[feats].to_numpy())
    with pytest.raises(ConfigError, match=">= 2 samples"):
        ComBat("scanner").fit(df.iloc[:21])


def test_mrmr_prefers_a_new_relevant_feature_over_a_redundant_copy() -> None:
    rng = np.random.default_rng(1)
    n = 300
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = (a + 0.8 * b + 0.5 * rng.normal(size=n) > 0).astype(int)
    x = pd.DataFrame({"a": a, "a_copy": a + 0.05 * rng.normal(size=n), "b": b, "noise": rng.normal(size=n)})
    assert MRMRSelector(k=2).fit(x, y).selected_ in (["a", "b"], ["a_copy", "b"])
    surv = np.column_stack([np.exp(-a + 0.3 * rng.normal(size=n)), np.ones(n)])
    assert MRMRSelector(k=1).fit(x, surv).selected_[0] in ("a", "a_copy")


class _Spy(TransformerMixin, BaseEstimator):
    """Records the index labels of every fit (clones share the class-level log)."""

    seen: ClassVar[list[set[Any]]] = []

    def __init__(self, tag: str = "") -> None:
        self.tag = tag

    def fit(self, x: Any, y: Any = None) -> _Spy:
        _Spy.seen.append(set(x.index))
        return self

    def transform(self, x: Any) -> Any:
        return x


def test_outer_test_rows_never_reach_any_fit() -> None:
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(3)
    n = 40
    df = _batched(n=60).iloc[:n].copy()
    df.index = [f"P{i:02d}" for i in range(n)]
    y = (rng.uniform(size=n) < 0.5).astype(int)
    cfg = StudyConfig(outcome="y", batch="scanner", **FAST)

    def factory() -> Any:
        est = build_estimator(cfg, "binary")
        est.estimator = Pipeline([("spy", _Spy()), *est.estimator.steps])
        return est

    _Spy.seen.clear()
    res = nested_cv(df, y, cfg, task="binary", factory=factory)
    from sarcart.radiomics.study import outer_splits

    splits = outer_splits(y, cfg, 0)
    assert len(res.folds) == len(splits) == 4
    # every fit inside an outer fold saw only that fold's training rows (grid search and refit included)
    per_fold = len(_Spy.seen) // len(splits)
    for f, (tr, te) in enumerate(splits):
        test_ids = set(df.index[te])
        for seen in _Spy.seen[f * per_fold:(f + 1) * per_fold]:
            assert not seen & test_ids
            assert seen <= set(df.index[tr])


def test_study_recovers_a_planted_signal_and_reports_chance_without_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n, p = 120, 12
    z = rng.normal(size=n)
    feats = rng.normal(size=(n, p))
    feats[:, 0] += 1.5 * z
    model = OutcomeModel(latent="latent", seed=3, odds_ratio_per_sd=6.0, hazard_ratio_per_sd=3.0)
    null = model.model_copy(update={"odds_ratio_per_sd": 1.0, "hazard_ratio_per_sd": 1.0})
    results = {}
    for name, m in (("signal", model), ("null", null)):
        out = generate_outcomes(pd.DataFrame({"patient": [f"P{i:03d}" for i in range(n)], "latent": z}), m)
        table = out.assign(fraction=0, **{f"original_glcm_F{j}": feats[:, j] for j in range(p)})
        cfg = StudyConfig(outcome="local_failure", time="time_months", event="progression", **FAST)
        results[name] = run_study(table, cfg, tmp_path / name)
    sig_b, sig_s = results["signal"]["binary"]["metrics"], results["signal"]["survival"]["metrics"]
    assert sig_b["auroc_ci_low"] > 0.6 and sig_s["c_index_ci_low"] > 0.6
    assert results["signal"]["binary"]["final_features"][0] == "original_glcm_F0"
    nb, ns = results["null"]["binary"]["metrics"], results["null"]["survival"]["metrics"]
    assert nb["auroc_ci_low"] < 0.5 < nb["auroc_ci_high"] and ns["c_index_ci_low"] < 0.5 < ns["c_index_ci_high"]
    # report: self-contained HTML with every PNG embedded, no patient identifiers
    page = (tmp_path / "signal" / "report.html").read_text()
    pngs = sorted(p.name for p in (tmp_path / "signal" / "figures").glob("*.png"))
    assert pngs == ["calibration.png", "feature_correlation.png", "kaplan_meier.png", "roc.png"]
    assert page.count("data:image/png;base64,") == len(pngs)
    assert not re.search(r"P\d{3}", re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page))


def test_metrics_against_direct_computation() -> None:
    from lifelines.utils import concordance_index
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    prob = rng.uniform(0.02, 0.98, size=4000)
    y = (rng.uniform(size=prob.size) < prob).astype(int)
    m = auroc_ci(y, prob, n_boot=200)
    assert m["auroc"] == roc_auc_score(y, prob) and m["auroc_ci_low"] < m["auroc"] < m["auroc_ci_high"]
    cal = calibration(y, prob)
    assert cal["calibration_slope"] == pytest.approx(1.0, abs=0.1)
    assert abs(cal["calibration_in_the_large"]) < 0.02
    assert cal["brier"] == pytest.approx(np.mean((prob - y) ** 2))
    over = calibration(y, 1 / (1 + np.exp(-3 * np.log(prob / (1 - prob)))))  # too extreme: slope 1/3
    assert over["calibration_slope"] == pytest.approx(1 / 3, abs=0.05)
    t, e, r = rng.exponential(size=200), rng.integers(0, 2, 200), rng.normal(size=200)
    assert cindex_ci(t, e, r, n_boot=50)["c_index"] == pytest.approx(concordance_index(t, -r, e))


def test_outcome_model_has_the_committed_strength() -> None:
    from lifelines import CoxPHFitter
    from sklearn.linear_model import LogisticRegression

    n = 20000
    x = np.random.default_rng(9).gamma(2.0, size=n)
    model = OutcomeModel(latent="x", seed=1, prevalence=0.3, odds_ratio_per_sd=4.0, hazard_ratio_per_sd=2.5,
                         weibull_shape=1.3, follow_up_months=36.0, loss_rate_per_month=0.01)
    out = generate_outcomes(pd.DataFrame({"patient": np.arange(n).astype(str), "x": x}), model)
    z = out["latent_z"].to_numpy()
    lr = LogisticRegression(C=np.inf).fit(z[:, None], out["local_failure"])
    assert np.exp(lr.coef_[0, 0]) == pytest.approx(4.0, rel=0.06)
    assert 1 / (1 + np.exp(-lr.intercept_[0])) == pytest.approx(0.3, abs=0.02)
    cox = CoxPHFitter().fit(pd.DataFrame({"z": z, "t": out["time_months"], "e": out["progression"]}), "t", "e")
    assert np.exp(cox.params_["z"]) == pytest.approx(2.5, rel=0.05)
    assert out["time_months"].max() <= 36.0
    with pytest.raises(ConfigError, match="not a column"):
        generate_outcomes(pd.DataFrame({"patient": ["a"], "y": [1.0]}), model)


def test_cli_extract_and_study(tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from sarcart.radiomics import cohort_cli
    from sarcart.radiomics.cohort import CohortConfig

    manifest = write_manifest(tiny_cohort / "m_cli.csv", tiny_rows(tiny_cohort))
    (tmp_path / "p.yaml").write_text(
        "base: mr_default\nsetting:\n  resampledPixelSpacing: null\nfeatureClass:\n  firstorder:\n  shape:\n")
    monkeypatch.setattr("sarcart.radiomics.cohort.CohortConfig",
                        lambda **kw: CohortConfig(**{**kw, "processes": False, "workers": 1}))
    parser = argparse.ArgumentParser()
    cohort_cli.register(parser.add_subparsers())
    args = parser.parse_args(["cohort", "extract", "--manifest", str(manifest), "--params", str(tmp_path / "p.yaml"),
                              "--workers", "2", "--no-progress", "--out", str(tmp_path / "f.parquet")])
    assert args.func(args) == 0
    table = pd.read_parquet(tmp_path / "f.parquet")
    assert len(table) == 4 and "original_glcm_Contrast" not in table and "original_shape_VoxelVolume" in table
    args = parser.parse_args(["cohort", "study", "--features", str(tmp_path / "f.parquet"), "--outcome", "response",
                              "--out", str(tmp_path / "study")])
    with pytest.raises(ConfigError, match="outer_folds"):  # 2 patients cannot fill 5 outer folds
        args.func(args)
    with pytest.raises(ConfigError, match="together"):
        args = parser.parse_args(["cohort", "study", "--features", "f.parquet", "--time", "t", "--out", "x"])
        args.func(args)
