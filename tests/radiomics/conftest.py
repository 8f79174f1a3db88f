"""Fixtures of the radiomics tests: torch thread limit and small synthetic volumes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sarcart.io.geometry import Geometry, Volume

torch.set_num_threads(min(2, torch.get_num_threads()))
sys.path.insert(0, str(Path(__file__).parent))  # pyrad_reference.py (pytest runs with --import-mode=importlib)


@pytest.fixture()
def blob() -> tuple[Volume, Volume]:
    """A 24 x 22 x 10 integer image (two textures) and an ellipsoidal ROI, 1.2 x 1.2 x 2.5 mm."""
    rng = np.random.default_rng(7)
    shape = (24, 22, 10)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    roi = ((ii - 12) / 9.0) ** 2 + ((jj - 11) / 8.0) ** 2 + ((kk - 5) / 3.6) ** 2 <= 1
    img = 200 + 40 * (ii > 12) + rng.integers(0, 60, shape)
    geo = Geometry(shape, (1.2, 1.2, 2.5), (-10.0, 20.0, 5.0))
    return Volume(img.astype(np.int16), geo), Volume(roi, geo)
