"""IBSI 2 phase 1: every filter sarcart offers against the consensus response maps.

A response map is compliant when every voxel lies within 1 % of the reference map's range. The
configuration of each test id is the one of the IBSI 2 reference manual (arXiv:2006.05470).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import shared_path

from sarcart.errors import ConfigError
from sarcart.radiomics import filters as flt
from sarcart.radiomics.gabor_wavelet import gabor_filter, wavelet_filter


def phantom(name: str) -> np.ndarray:
    path = shared_path("ibsi2", "phantoms", name, "image", f"{name}.nii.gz")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0).astype(np.float64)


def reference(test_id: str) -> np.ndarray:
    path = shared_path("ibsi2", "response_maps", f"{test_id}-ValidCRM.nii.gz")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0).astype(np.float64)


CONFIGS = {
    "1_a_1": lambda: flt.mean_filter(phantom("checkerboard"), 15, mode="constant"),
    "1_a_2": lambda: flt.mean_filter(phantom("checkerboard"), 15, mode="nearest"),
    "1_a_3": lambda: flt.mean_filter(phantom("checkerboard"), 15, mode="periodic"),
    "1_a_4": lambda: flt.mean_filter(phantom("checkerboard"), 15, mode="mirror"),
    "1_b_1": lambda: flt.mean_filter(phantom("impulse"), 15, mode="constant", dims=2),
    "2_a": lambda: flt.log_filter(phantom("impulse"), 3.0, 2.0, mode="constant"),
    "2_b": lambda: flt.log_filter(phantom("checkerboard"), 5.0, 2.0, mode="mirror"),
    "2_c": lambda: flt.log_filter(phantom("checkerboard"), 5.0, 2.0, mode="mirror", dims=2),
    "3_a_1": lambda: flt.laws_filter(phantom("impulse"), "E5L5S5", mode="constant"),
    "3_a_2": lambda: flt.laws_filter(phantom("impulse"), "E5L5S5", mode="constant", rotation_invariant=True),
    "3_a_3": lambda: flt.laws_filter(phantom("impulse"), "E5L5S5", mode="constant", rotation_invariant=True,
                                     energy_distance=7),
    "3_b_1": lambda: flt.laws_filter(phantom("checkerboard"), "E3W5R5", mode="mirror"),
    "3_b_2": lambda: flt.laws_filter(phantom("checkerboard"), "E3W5R5", mode="mirror", rotation_invariant=True),
    "3_b_3": lambda: flt.laws_filter(phantom("checkerboard"), "E3W5R5", mode="mirror", rotation_invariant=True,
                                     energy_distance=7),
    "3_c_1": lambda: flt.laws_filter(phantom("checkerboard"), "L5S5", mode="mirror"),
    "3_c_2": lambda: flt.laws_filter(phantom("checkerboard"), "L5S5", mode="mirror", rotation_invariant=True),
    "3_c_3": lambda: flt.laws_filter(phantom("checkerboard"), "L5S5", mode="mirror", rotation_invariant=True,
                                     energy_distance=7),
    "4_a_1": lambda: gabor_filter(phantom("impulse"), sigma_mm=10, lambda_mm=4, gamma=0.5, theta=math.pi / 3,
                                  spacing_mm=2.0, mode="constant"),
    "4_a_2": lambda: gabor_filter(phantom("impulse"), sigma_mm=10, lambda_mm=4, gamma=0.5, theta=math.pi / 4,
                                  spacing_mm=2.0, mode="constant", rotation_invariant=True),
    "4_b_1": lambda: gabor_filter(phantom("sphere"), sigma_mm=20, lambda_mm=8, gamma=2.5, theta=5 * math.pi / 4,
                                  spacing_mm=2.0, mode="mirror"),
    "4_b_2": lambda: gabor_filter(phantom("sphere"), sigma_mm=20, lambda_mm=8, gamma=2.5, theta=math.pi / 8,
                                  spacing_mm=2.0, mode="mirror", rotation_invariant=True),
    "5_a_1": lambda: wavelet_filter(phantom("impulse"), "db2", "LHL", mode="constant"),
    "5_a_2": lambda: wavelet_filter(phantom("impulse"), "db2", "LHL", mode="constant", rotation_invariant=True),
    "6_a_1": lambda: wavelet_filter(phantom("sphere"), "coif1", "HHL", mode="periodic"),
    "6_a_2": lambda: wavelet_filter(phantom("sphere"), "coif1", "HHL", mode="periodic", rotation_invariant=True),
    "7_a_1": lambda: wavelet_filter(phantom("checkerboard"), "haar", "LLL", level=2, mode="mirror",
                                    rotation_invariant=True),
    "7_a_2": lambda: wavelet_filter(phantom("checkerboard"), "haar", "HHH", level=2, mode="mirror",
                                    rotation_invariant=True),
}


@pytest.mark.parametrize("test_id", sorted(CONFIGS))
def test_response_map_within_one_percent_of_range(test_id: str) -> None:
    ref = reference(test_id)
    ours = CONFIGS[test_id]().numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 0.01 * (ref.max() - ref.min())


def test_padding_modes_on_a_ramp() -> None:
    x = torch.arange(4.0)[None, None]
    widths = ((0, 0), (2, 2))
    assert flt.pad(x, widths, "mirror")[0, 0].tolist() == [1, 0, 0, 1, 2, 3, 3, 2]
    assert flt.pad(x, widths, "periodic")[0, 0].tolist() == [2, 3, 0, 1, 2, 3, 0, 1]
    assert flt.pad(x, widths, "nearest")[0, 0].tolist() == [0, 0, 0, 1, 2, 3, 3, 3]
    assert flt.pad(x, widths, "constant")[0, 0].tolist() == [0, 0, 0, 1, 2, 3, 0, 0]


def test_filter_arguments_are_checked() -> None:
    x = np.zeros((5, 5, 5))
    with pytest.raises(ConfigError):
        flt.mean_filter(x, 4)
    with pytest.raises(ConfigError):
        flt.laws_filter(x, "E5X5")
    with pytest.raises(ConfigError):
        wavelet_filter(x, "nope", "LLH")
    with pytest.raises(ConfigError):
        flt.pad(torch.zeros(1, 3), ((1, 1),), "wrap")  # type: ignore[arg-type]
