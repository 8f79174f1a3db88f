"""QA flags: each measurement checked against a value known by construction or an independent library."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from sarcart.inference.qa import (QACalibration, extent_mm, input_check, pieces, soft_dice_confidence,
                                  structure_qa, target_size_check, touches_edge)
from sarcart.io.geometry import Geometry, Volume

G = Geometry((40, 40, 20), (2.0, 2.0, 3.0))


def _box(lo, hi) -> np.ndarray:
    m = np.zeros(G.shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def test_soft_dice_confidence() -> None:
    m = _box((10, 10, 5), (20, 20, 10))
    assert soft_dice_confidence(m.astype(np.float32), m) == pytest.approx(1.0)
    # a probability of 0.5 everywhere in the mask: 2*0.5*N / (0.5*N + N) = 2/3
    assert soft_dice_confidence(np.where(m, 0.5, 0.0), m) == pytest.approx(2 / 3)


def test_volume_change_edge_and_fragments() -> None:
    prev = Volume(_box((10, 10, 5), (20, 20, 10)), G)
    now = _box((10, 10, 5), (20, 20, 15))  # twice the volume
    now[0:3, 0:3, 0:3] = True  # a second piece, touching the edge: 27 voxels * 12 mm3 = 0.324 cc
    q = structure_qa("GTV", Volume(now, G), previous=prev)
    assert q["volume_change"] == pytest.approx((1000 + 27) / 500 - 1)
    assert "touches field-of-view edge" in q["flags"]
    assert q["pieces"] == 1  # the corner piece is below 0.5 cc
    now[30:38, 30:38, 12:18] = True  # 384 voxels = 4.6 cc
    q = structure_qa("GTV", Volume(now, G))
    assert q["pieces"] == 2 and "2 fragments (expected 1)" in q["flags"]
    assert not touches_edge(_box((1, 1, 1), (5, 5, 5)))
    # the same edge contact on the bowel is measured but not flagged (it leaves the field by nature)
    b = structure_qa("BOWEL", Volume(now, G))
    assert b["touches_edge"] and "touches field-of-view edge" not in b["flags"]
    assert pieces(np.zeros(G.shape, bool), 1.0, 0.1) == 0


def test_calibration_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.3, 1.0, 200)
    good = rng.random(200) < 1 / (1 + np.exp(-(10 * scores - 7)))
    cal = QACalibration.fit(scores, good)
    ref = LogisticRegression(C=1e9, max_iter=1000).fit(scores[:, None], good)
    assert cal.a == pytest.approx(float(ref.coef_[0, 0]), rel=1e-3)
    assert cal.b == pytest.approx(float(ref.intercept_[0]), rel=1e-3)


def test_input_check_flags_orientation_spacing_and_intensity() -> None:
    sag = Geometry((20, 20, 20), (1.5, 1.5, 3.0), direction=tuple(np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], float)
                                                                   .T.reshape(-1)))
    rng = np.random.default_rng(1)
    img = Volume(rng.normal(100, 10, sag.shape).astype(np.float32), sag)
    r = input_check(img, train_spacings_mm=[(1.5, 1.5, 3.0)])
    assert any("not axial" in f for f in r["flags"])
    axial = Geometry((20, 20, 20), (0.5, 0.5, 6.0))
    r = input_check(Volume(img.array, axial), train_spacings_mm=[(1.5, 1.5, 3.0), (1.6, 1.6, 3.0)])
    assert any("spacing" in f for f in r["flags"]) and not any("axial" in f for f in r["flags"])
    train = {"p00_5": 74.2, "p50": 100.0, "p99_5": 125.8}  # a normal(100, 10): symmetric, spread 1
    body = np.ones(axial.shape, bool)
    assert input_check(Volume(img.array, axial), train_intensity=train, body=body)["intensity_spread"] == \
        pytest.approx(1.0, abs=0.1)
    skewed = Volume(rng.lognormal(4, 0.8, axial.shape).astype(np.float32), axial)
    assert any("intensity" in f for f in input_check(skewed, train_intensity=train, body=body)["flags"])


def test_target_larger_than_the_field() -> None:
    g = Geometry((200, 10, 100), (2.0, 2.0, 3.0))
    m = np.zeros(g.shape, bool)
    m[10:160, 2:8, 5:30] = True  # 300 mm wide, 75 mm long
    assert extent_mm(Volume(m, g)) == pytest.approx((300.0, 12.0, 75.0))
    assert target_size_check({"PTV": Volume(m, g)}) and not target_size_check({"PTV": Volume(m[:, :, :], g).with_array(
        m & (np.arange(200)[:, None, None] < 100))})
