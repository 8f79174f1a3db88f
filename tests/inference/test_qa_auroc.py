"""AUROC of the QA confidence and its bootstrap interval, checked against scikit-learn and Hanley & McNeil."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sarcart.inference.qa import auroc, auroc_ci, soft_dice_confidence, structure_confidences


def test_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.3
    s = np.round(rng.normal(0, 1, 300) + 1.2 * y, 1)  # rounding makes many ties
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auroc(-s, y) == pytest.approx(1 - roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(auroc([0.1, 0.2], [True, True]))


def test_auroc_ci_width_matches_hanley_mcneil() -> None:
    """Binormal data: the bootstrap 95 % interval ~ AUC +- 1.96 SE (Hanley & McNeil 1982, eq. 2)."""
    rng = np.random.default_rng(5)
    n1, n2 = 150, 250
    s = np.concatenate([rng.normal(1.0, 1, n1), rng.normal(0.0, 1, n2)])
    y = np.concatenate([np.ones(n1, bool), np.zeros(n2, bool)])
    a = auroc(s, y)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2))
    lo, hi = auroc_ci(s, y, n_boot=1000, seed=1)
    assert lo < a < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_cluster_bootstrap_is_wider_for_duplicated_items() -> None:
    """Copies of the same contour are one cluster: the interval must not shrink as if they were new data."""
    rng = np.random.default_rng(7)
    s = np.concatenate([rng.normal(0.8, 1, 30), rng.normal(0, 1, 30)])
    y = np.arange(60) < 30
    base = auroc_ci(s, y, n_boot=800, seed=2)
    rep = 5
    s5, y5, g5 = np.repeat(s, rep), np.repeat(y, rep), np.repeat(np.arange(60), rep)
    naive = auroc_ci(s5, y5, n_boot=800, seed=2)
    clustered = auroc_ci(s5, y5, groups=g5, n_boot=800, seed=2)
    assert (naive[1] - naive[0]) < 0.6 * (base[1] - base[0])  # ~ 1/sqrt(5) as wide
    assert (clustered[1] - clustered[0]) == pytest.approx(base[1] - base[0], rel=0.25)


def test_structure_confidences_equal_per_structure_soft_dice() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (3, 12, 10, 8))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    labels = probs.argmax(0)
    got = structure_confidences(probs, labels, ["A", "B"])
    assert got["B"] == pytest.approx(soft_dice_confidence(probs[2], labels == 2))
    with pytest.raises(ValueError, match="probabilities must have shape"):
        structure_confidences(probs[:2], labels, ["A", "B"])
