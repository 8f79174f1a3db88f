"""Risk model on synthetic labelled cohorts (signal and null), persistence, MLflow, prescription map, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sarcart.cli import main
from sarcart.errors import ConfigError
from sarcart.io.geometry import Geometry, Volume
from sarcart.io.nifti import read_nifti, write_mask
from sarcart.radiomics.maps.io import FeatureMaps, write_maps
from sarcart.radiomics.prescription import PaintingConfig, load_painting, prescription_map, smooth_in_roi
from sarcart.radiomics.registry import log_risk_model, resolve_model
from sarcart.radiomics.risk import (
    RiskCase,
    RiskConfig,
    auroc_with_ci,
    load_model,
    predict_risk,
    save_model,
    train_risk_model,
)

GEO = Geometry((26, 24, 10), (1.5, 1.5, 3.0))
FEATS = ("firstorder_Mean", "glcm_Contrast", "ngtdm_Busyness")


def case(seed: int, cnr: float) -> RiskCase:
    """Ellipsoidal ROI with a hypoxic core; feature 0 is lower in the core by ``cnr`` noise SDs."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in GEO.shape], indexing="ij")
    r2 = ((ii - 13) / 11) ** 2 + ((jj - 12) / 10) ** 2 + ((kk - 5) / 4.5) ** 2
    roi = r2 <= 1
    core = r2 <= 0.35 + 0.1 * rng.random()
    maps = {}
    for f, name in enumerate(FEATS):
        arr = rng.normal(100.0 * (f + 1), 10.0, GEO.shape)
        if f == 0:
            arr -= cnr * 10.0 * core
        maps[name] = Volume(np.where(roi, arr, 0.0), GEO)
    genomic = float(core.sum() / roi.sum() + rng.normal(0, 0.05))
    return RiskCase(FeatureMaps(maps, Volume(roi, GEO), {}), core & roi, {"genomic_score": genomic}, f"p{seed}")


def evaluate(model, cases: list[RiskCase]) -> dict[str, float]:
    scores = [predict_risk(model, c.fmaps, c.covariates).array[c.fmaps.roi.array] for c in cases]
    labels = [c.target[c.fmaps.roi.array] for c in cases]
    return auroc_with_ci(scores, labels, n_boot=200)


def test_signal_cohort_is_detected_and_null_cohort_reports_chance() -> None:
    from scipy.stats import norm

    cfg = RiskConfig(features=FEATS, covariates=("genomic_score",), voxels_per_case=800)
    train, test = [case(s, 1.5) for s in range(6)], [case(s, 1.5) for s in range(100, 104)]
    res = evaluate(train_risk_model(train, cfg), test)
    # a single Gaussian feature shifted by d SDs: the best achievable AUROC is Phi(d / sqrt 2)
    assert res["auroc"] == pytest.approx(norm.cdf(1.5 / np.sqrt(2)), abs=0.04)
    assert res["auroc_ci_low"] <= res["auroc"] <= res["auroc_ci_high"]
    null = evaluate(train_risk_model([case(s, 0.0) for s in range(6)], cfg), [case(s, 0.0) for s in range(100, 104)])
    assert abs(null["auroc"] - 0.5) < 0.05 and null["auroc_ci_low"] < 0.5 < null["auroc_ci_high"]


def test_skops_round_trip_and_mlflow_registry(tmp_path) -> None:
    cfg = RiskConfig(features=FEATS, voxels_per_case=300)
    cases = [case(s, 2.0) for s in range(3)]
    model = train_risk_model(cases, cfg)
    ref = predict_risk(model, cases[0].fmaps).array
    path = save_model(model, tmp_path / "risk.skops", cfg)
    assert json.loads(path.with_suffix(".json").read_text())["columns"] == list(FEATS)
    assert np.array_equal(predict_risk(load_model(path), cases[0].fmaps).array, ref)
    store = tmp_path / "mlruns"
    info = log_risk_model(model, cfg, {"auroc": 0.9}, train_cases=["p0", "p1"], registered_name="risk-test",
                          store=store)
    assert info["version"] == "1"
    for ref_name in ("risk-test", info["model_uri"], "models:/risk-test/1"):
        assert np.allclose(predict_risk(resolve_model(ref_name, store=store), cases[0].fmaps).array, ref)
    with pytest.raises(ConfigError, match="no registered model"):
        resolve_model("absent-model", store=store)


def test_prescription_is_linear_bounded_and_spares_necrosis() -> None:
    roi = np.zeros(GEO.shape, bool)
    roi[3:23, 3:21, 2:8] = True
    risk = np.broadcast_to(np.linspace(0, 1, GEO.shape[0])[:, None, None], GEO.shape).astype(np.float32)
    necrosis = np.zeros_like(roi)
    necrosis[18:21, 5:8, 4:6] = True
    cfg = PaintingConfig(base_dose_gy=50, boost_dose_gy=60, risk_low=0.2, risk_high=0.8, smoothing_mm=0)
    d = prescription_map(Volume(risk, GEO), Volume(roi, GEO), cfg, necrosis=Volume(necrosis, GEO)).array
    expected = 50 + 10 * np.clip((risk - 0.2) / 0.6, 0, 1)
    inside = roi & ~necrosis
    assert np.allclose(d[inside], expected[inside], atol=1e-5)
    assert np.all(d[necrosis] == 50) and np.all(d[~roi] == 50)
    capped = prescription_map(Volume(risk, GEO), Volume(roi, GEO), cfg.model_copy(update={"max_dose_gy": 55}))
    assert capped.array.max() == pytest.approx(55)
    const = smooth_in_roi(np.where(roi, 0.7, 5.0), roi, GEO.spacing_mm, sigma_mm=4.0)
    assert np.allclose(const[roi], 0.7)  # normalised convolution: nothing bleeds in from outside the ROI
    with pytest.raises(ConfigError, match="boost_dose_gy"):
        load_painting(None, base_dose_gy=60, boost_dose_gy=50)


def test_risk_cli_writes_maps_on_the_mask_grid(tmp_path) -> None:
    cases = [case(s, 2.0) for s in range(3)]
    cfg = RiskConfig(features=FEATS, covariates=("genomic_score",), voxels_per_case=300)
    save_model(train_risk_model(cases, cfg), tmp_path / "m.skops", cfg)
    c = cases[0]
    write_maps(c.fmaps, tmp_path / "maps")
    write_mask(c.fmaps.roi, tmp_path / "gtv.nii.gz")
    rc = main(["radiomics", "risk", "--maps", str(tmp_path / "maps"), "--mask", str(tmp_path / "gtv.nii.gz"),
               "--model", str(tmp_path / "m.skops"), "--covariates", '{"genomic_score": 0.3}',
               "--base-dose", "48", "--boost-dose", "57.6", "--out", str(tmp_path / "out")])
    assert rc == 0
    risk = read_nifti(tmp_path / "out" / "risk.nii.gz")
    presc = read_nifti(tmp_path / "out" / "prescription.nii.gz").array
    roi = c.fmaps.roi.array
    assert risk.geometry.is_close(GEO) and 0 <= risk.array.min() and risk.array.max() <= 1
    assert presc[~roi].min() == pytest.approx(48) and 48 <= presc[roi].min() and presc[roi].max() <= 57.6 + 1e-4
    hyp = c.target[roi]
    assert presc[roi][hyp].mean() > presc[roi][~hyp].mean() + 2  # the hypoxic core gets the boost
    assert main(["radiomics", "risk", "--maps", str(tmp_path / "maps"), "--mask", str(tmp_path / "gtv.nii.gz"),
                 "--model", str(tmp_path / "m.skops"), "--out", str(tmp_path / "o2")]) == 2  # covariate missing


def test_geometry_prior_and_paired_difference() -> None:
    """Anatomical-prior maps: depth below the GTV surface in mm (checked on a box) and the paired AUROC
    difference of a model against itself (exactly 0)."""
    from sarcart.radiomics.risk import GEOMETRY_FEATURES, add_geometry_maps, paired_auroc_difference

    c = case(0, 1.0)
    gtv = np.zeros(GEO.shape, bool)
    gtv[5:15, 5:15, 2:8] = True
    fm = add_geometry_maps(c.fmaps, gtv)
    depth = fm.maps[GEOMETRY_FEATURES[0]].array
    assert depth[5, 10, 5] == pytest.approx(1.5) and depth[10, 10, 5] == pytest.approx(7.5)  # 5 voxels of 1.5 mm
    assert np.all(fm.maps[GEOMETRY_FEATURES[2]].array == 100.0)  # no necrosis
    s = [np.random.default_rng(i).random(50) for i in range(4)]
    y = [np.arange(50) % 3 == 0 for _ in range(4)]
    d = paired_auroc_difference(s, s, y, n_boot=50)
    assert d["delta_auroc"] == 0 and d["delta_ci_low"] == 0 == d["delta_ci_high"]
