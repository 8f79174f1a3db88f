"""Synthetic covariates: the genomic link, tumour volume ranges, sites and determinism of the draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sarcart.errors import ConfigError
from sarcart.phantom.config import TUMOUR_CC, load_spec, make_spec
from sarcart.phantom.patients import HYP_MEAN, HYP_SD, sample_cohort

#: the committed cohort specs
COHORTS = Path(__file__).resolve().parents[2] / "configs" / "cohorts"


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.6, 0.9, 1.0])
def test_genomic_score_correlates_with_hypoxic_fraction_as_requested(rho: float) -> None:
    spec = make_spec(patients=2500, site="mixed", seed=21, genomic_link=rho)
    pts = sample_cohort(spec)
    h = np.array([p.hypoxic_fraction for p in pts])
    g = np.array([p.genomic_score for p in pts])
    r = np.corrcoef(g, h)[0, 1]
    # sampling sd of Pearson r for n = 2500 is (1 - rho^2)/sqrt(n) <= 0.02
    assert r == pytest.approx(rho, abs=0.05)
    assert g.std() == pytest.approx(1.0, abs=0.05)
    assert h.mean() == pytest.approx(HYP_MEAN, abs=0.01) and h.std() == pytest.approx(HYP_SD, abs=0.01)


def test_tumour_volumes_span_the_site_ranges() -> None:
    pts = sample_cohort(make_spec(patients=600, site="mixed", seed=3))
    vols = {s: [p.volume_cc for p in pts if p.site == s] for s in TUMOUR_CC}
    for site, (lo, hi) in TUMOUR_CC.items():
        v = np.array(vols[site])
        assert len(v) == 200 and v.min() >= lo and v.max() <= hi
        assert np.log(v).mean() == pytest.approx((np.log(lo) + np.log(hi)) / 2.0, abs=0.25)  # log-uniform
    allv = np.concatenate(list(vols.values()))
    assert allv.min() < 40.0 and allv.max() > 2500.0


def test_draws_depend_only_on_seed_and_index() -> None:
    a = sample_cohort(make_spec(patients=5, site="mixed", seed=9))
    b = sample_cohort(make_spec(patients=8, site="mixed", seed=9))
    assert a == b[:5]
    c = sample_cohort(make_spec(patients=5, site="mixed", seed=10))
    assert [p.seed for p in a] != [p.seed for p in c]
    assert [p.name for p in a] == ["SYN-RP-001", "SYN-UE-002", "SYN-LE-003", "SYN-RP-004", "SYN-UE-005"]


def test_necrosis_is_drawn_as_documented_and_can_be_enriched() -> None:
    pts = sample_cohort(make_spec(patients=4000, site="retroperitoneum", seed=5))
    lo, hi = TUMOUR_CC["retroperitoneum"]
    q = (np.log([p.volume_cc for p in pts]) - np.log(lo)) / (np.log(hi) - np.log(lo))
    nec = np.array([p.necrotic_fraction for p in pts])
    # P(necrosis | q) = 0.25 + 0.5 q: 0.25 + 0.5 * mean(q) overall, about 0.3125 in the smallest quarter
    assert (nec > 0).mean() == pytest.approx(0.25 + 0.5 * q.mean(), abs=0.03)
    assert (nec[q < 0.25] > 0).mean() == pytest.approx(0.3125, abs=0.05)
    assert nec[nec > 0].min() >= 0.05 and nec[nec > 0].max() <= 0.35
    assert nec[nec > 0].mean() == pytest.approx(0.20, abs=0.01)  # uniform 0.05-0.35
    # the override keeps the volumes (drawn first); later draws follow from the same patient stream
    rich = sample_cohort(make_spec(patients=4000, site="retroperitoneum", seed=5, necrosis_probability=1.0,
                                   necrotic_fraction=(0.25, 0.4)))
    assert [p.volume_cc for p in rich] == [p.volume_cc for p in pts]
    r = np.array([p.necrotic_fraction for p in rich])
    assert r.min() >= 0.25 and r.max() <= 0.4 and r.mean() == pytest.approx(0.325, abs=0.005)
    none = sample_cohort(make_spec(patients=50, site="retroperitoneum", seed=5, necrosis_probability=0.0))
    assert all(p.necrotic_fraction == 0.0 for p in none)
    with pytest.raises(ConfigError, match="necrotic_fraction"):
        make_spec(patients=1, necrotic_fraction=(0.5, 0.95))


def test_spec_yaml_rejects_unknown_keys_and_bad_values(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "spec.yaml"
    p.write_text("patients: 2\nsnr: 20\nsnr_db: 3\n")
    with pytest.raises(ConfigError, match="snr_db"):
        load_spec(p)
    p.write_text("patients: 2\ngenomic_link: 1.5\n")
    with pytest.raises(ConfigError, match="genomic_link"):
        load_spec(p)
    p.write_text("patients: 2\nsite: retroperitoneum\nfrom_real: /x\n")
    with pytest.raises(ConfigError, match="extremity"):
        load_spec(p)
    p.write_text("patients: 2\nsite: lower_extremity\nspacing_mm: [2, 2, 4]\n")
    spec = load_spec(p, seed=4)
    assert spec.shape == (200, 200, 108) and spec.seed == 4


EXAMPLES = ("demo_small.yaml", "trial_default.yaml", "hypoxia_detection.yaml", "real_extremity.yaml",
            "trufi_val_n.yaml", "trufi_train_g.yaml")


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_cohort_specs_load(name: str) -> None:
    spec = load_spec(COHORTS / name)
    assert spec.patients >= 1 and spec.fractions >= 1


@pytest.mark.parametrize("name", ["trufi_val_n.yaml", "trufi_train_g.yaml"])
def test_the_necrotic_trufi_cohorts_draw_what_their_headers_say(name: str) -> None:
    spec = load_spec(COHORTS / name)
    pts = sample_cohort(spec)
    lo, hi = spec.necrotic_fraction
    assert all(lo <= p.necrotic_fraction <= hi for p in pts)  # every tumour necrotic, within the range
    assert all(spec.tumour_cc[0] <= p.volume_cc <= spec.tumour_cc[1] for p in pts)  # type: ignore[index]
