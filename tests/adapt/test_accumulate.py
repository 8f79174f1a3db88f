"""Dose accumulation: LQ sums against the worked examples of FACTS.md, warping against a known shift."""

from __future__ import annotations

import numpy as np
import pytest

from sarcart.adapt.accumulate import (Accumulation, alpha_beta_map, bed, dose_on_reference, eqd2, invert_field,
                                      remaining_prescription)
from sarcart.io.geometry import Geometry, Volume


@pytest.mark.parametrize(
    "n, d, ab, expected",
    [(5, 6.0, 4.0, 50.0), (5, 7.0, 4.0, 64.17), (6, 6.0, 4.0, 60.0), (5, 10.0, 4.0, 116.67), (5, 10.0, 3.0, 130.0)],
)
def test_eqd2_matches_the_worked_examples(n: int, d: float, ab: float, expected: float) -> None:
    """FACTS.md section 6: e.g. 5 x 6 Gy at alpha/beta 4 -> EQD2 50.0 Gy."""
    assert float(eqd2(np.full((n, 1), d), ab)[0]) == pytest.approx(expected, abs=0.01)
    assert float(bed(np.full((n, 1), d), ab)[0]) == pytest.approx(n * d * (1 + d / ab))


def test_unequal_fractions_sum_fraction_by_fraction() -> None:
    doses = np.array([[8.0], [8.0], [7.0], [9.0], [8.0], [8.0]])  # 48 Gy, non-uniform
    got = float(eqd2(doses, 4.0)[0])
    expected = sum(d * (d + 4) / 6 for d in doses[:, 0])
    assert got == pytest.approx(expected) and got > float(eqd2(np.full((6, 1), 8.0), 4.0)[0])


def test_accumulation_and_alpha_beta_map() -> None:
    g = Geometry((4, 4, 2), (2.0, 2.0, 2.0))
    gtv = np.zeros(g.shape, bool)
    gtv[1:3, 1:3] = True
    ab = alpha_beta_map({"BODY": Volume(np.ones(g.shape, bool), g), "GTV": Volume(gtv, g)})
    assert ab[gtv].tolist() == [4.0] * gtv.sum() and ab[~gtv].tolist() == [3.0] * (~gtv).sum()
    acc = Accumulation(ab)
    for _ in range(6):
        acc.add(np.full(g.shape, 8.0))
    t = acc.totals()
    assert t["physical_gy"].max() == pytest.approx(48.0)
    assert t["eqd2_gy"][gtv][0] == pytest.approx(6 * 8 * 12 / 6)
    assert remaining_prescription(np.full(3, 48.0), np.array([40.0, 50.0, 24.0]), 2).tolist() == [4.0, 0.0, 12.0]


def test_dose_is_pulled_back_through_a_known_shift_and_inverse_field() -> None:
    g = Geometry((40, 30, 20), (2.0, 2.0, 2.0), (-40.0, -30.0, -20.0))
    p = g.world_grid()
    dose = Volume((60.0 * np.exp(-np.sum(p**2, axis=-1) / (2 * 12.0**2))).astype(np.float32), g)
    shift = np.array([4.0, -2.0, 6.0], np.float32)
    ref_to_fx = Volume(np.broadcast_to(shift, (*g.shape, 3)).copy(), g)
    on_ref = dose_on_reference(dose, ref_to_fx)
    expected = 60.0 * np.exp(-np.sum((p + shift) ** 2, axis=-1) / (2 * 12.0**2))
    inner = (slice(5, -5),) * 3
    assert np.abs(on_ref.array - expected)[inner].max() < 0.5  # linear interpolation of a smooth dose
    inv = invert_field(ref_to_fx)
    assert np.abs(inv.array[inner] + shift).max() < 0.05
