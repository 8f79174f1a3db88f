"""Hypoxia placement: 'biological' follows depth and necrosis, 'random' carries no positional information."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from sarcart.phantom.tumour import hypoxic_regions


def _tumour() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.indices((48, 48, 32)).astype(np.float32)
    r = np.sqrt(((g[0] - 24) * 1.5) ** 2 + ((g[1] - 24) * 1.5) ** 2 + ((g[2] - 16) * 3.0) ** 2)
    gtv = r < 32.0
    necrosis = r < 10.0
    depth = ndimage.distance_transform_edt(gtv, sampling=(1.5, 1.5, 3.0)).astype(np.float32)
    return gtv & ~necrosis, depth, necrosis


def _auc_of_depth(placement: str, seed: int) -> float:
    viable, depth, necrosis = _tumour()
    hyp = hypoxic_regions(viable, depth, necrosis, fraction=0.3, rng=np.random.default_rng(seed),
                          spacing_mm=(1.5, 1.5, 3.0), placement=placement)
    assert abs(hyp.sum() / viable.sum() - 0.3) < 0.01 and not (hyp & ~viable).any()
    return float(roc_auc_score(hyp[viable], depth[viable]))


def test_biological_placement_is_predicted_by_depth_random_is_not() -> None:
    bio = np.mean([_auc_of_depth("biological", s) for s in range(4)])
    rnd = [_auc_of_depth("random", s) for s in range(12)]
    assert bio > 0.7
    assert abs(np.mean(rnd) - 0.5) < 0.06, rnd
