"""Radiobiology and plan-quality indices against worked examples and analytic cases."""

from __future__ import annotations

import numpy as np
import pytest

from sarcart.dose.evaluation import bed, conformity, eqd2, homogeneity, iso_bed_dose, painting_quality


@pytest.mark.parametrize("n,d,ab,expected", [(5, 6.0, 4.0, 50.0), (5, 7.0, 4.0, 64.2), (6, 6.0, 4.0, 60.0),
                                             (5, 10.0, 4.0, 116.7), (5, 10.0, 3.0, 130.0)])
def test_eqd2_worked_examples_from_facts(n, d, ab, expected):
    assert float(eqd2(n * d, n, ab)) == pytest.approx(expected, abs=0.05)


def test_bowel_limit_conversion_5_to_6_fractions():
    # 33 Gy / 5 fx at alpha/beta 3: BED 105.6 Gy; the 6-fraction dose with that BED is 35.5 Gy
    assert float(bed(33.0, 5, 3.0)) == pytest.approx(105.6)
    d6 = iso_bed_dose(33.0, 5, 6, 3.0)
    assert d6 == pytest.approx(35.52, abs=0.01)
    assert float(bed(d6, 6, 3.0)) == pytest.approx(105.6)


def test_conformity_and_homogeneity():
    target = np.zeros(100, bool)
    target[:50] = True
    dose = np.where(np.arange(100) < 60, 10.0, 1.0)  # isodose covers the target and 10 more voxels
    ci = conformity(dose, target, 10.0)
    assert ci["ci_rtog"] == pytest.approx(1.2) and ci["ci_paddick"] == pytest.approx(50 ** 2 / (50 * 60))
    assert homogeneity(np.full(200, 5.0)) == 0.0
    assert homogeneity(np.linspace(9.0, 11.0, 10001)) == pytest.approx((10.96 - 9.04) / 10.0, abs=1e-3)


def test_painting_quality():
    p = np.array([60.0, 60.0, 48.0, 48.0])
    q = painting_quality(np.array([62.5, 57.5, 48.0, 52.8]), p)
    assert q["qf"] == pytest.approx((2.5 / 60 + 2.5 / 60 + 0.0 + 0.1) / 4)
    assert q["within_5pct"] == pytest.approx(0.75)
    i = q["qvh_q"].index(min(q["qvh_q"], key=lambda x: abs(x - 0.99)))  # Q >= 0.99: 3 of 4 voxels
    assert q["qvh_fraction"][i] == pytest.approx(0.75)
