"""Predictor pipeline with a known-answer network, mirroring TTA, post-processing and left/right kidneys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sarcart.inference.postprocess import fill_holes, largest_component, postprocess, split_kidneys
from sarcart.inference.predictor import PredictorConfig, segment_image
from sarcart.io.geometry import Geometry, Volume
from sarcart.models.bundle import ModelBundle
from sarcart.models.plan import NetworkPlan, Plan, Schedule
from sarcart.training.predict import flip_sets


class SignNet(nn.Module):
    """Known answer: class 1 where the normalised image is above ``offset`` (logits +-10 (x - offset))."""

    def __init__(self, offset: float = 0.0) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = 10 * (x - self.offset)
        return torch.cat([-y, y], dim=1) + 0 * self.dummy


def _midpoint(arr: np.ndarray) -> float:
    """Normalised value of the 100/300 midpoint: z-score over the body (> 5 % of the 99th percentile)."""
    body = arr[arr > 0.05 * np.percentile(arr, 99)]
    return float((200.0 - body.mean()) / body.std())


def _plan(flip_axes=(0, 1, 2), structures=("GTV",)) -> Plan:
    net = NetworkPlan(name="DynUNet", kernel_size=[(3, 3, 3)] * 2, strides=[(1, 1, 1), (2, 2, 2)], filters=[4, 8])
    return Plan(task="t", structures=list(structures), target_spacing_mm=(2.0, 2.0, 2.0), patch_size=(16, 16, 16),
                network=net, flip_axes=flip_axes,
                schedule=Schedule(epochs=1, iterations_per_epoch=1, batch_size=1, est_seconds_per_iteration=0,
                                  est_training_minutes=0))


def _cube_image(direction):
    """Body (100) with a bright box (300) on an anisotropic, flipped/permuted grid; returns image, box."""
    g = Geometry(shape=(40, 36, 14), spacing_mm=(1.2, 1.0, 3.0), origin_mm=(12.0, -30.0, 40.0), direction=direction)
    arr = np.zeros(g.shape, np.float32)
    arr[3:37, 3:33, 1:13] = 100.0
    box = np.zeros(g.shape, bool)
    box[10:25, 8:22, 4:10] = True
    arr[box] = 300.0
    return Volume(arr, g), box


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (0, -1, 0, 0, 0, 1, -1, 0, 0)])
def test_segmentation_comes_back_on_the_input_grid(direction):
    image, box = _cube_image(direction)
    bundle = ModelBundle(_plan(), {}, {"name": "sign", "version": "7"})
    net = SignNet(_midpoint(image.array))
    seg = segment_image(image, bundle, net, config=PredictorConfig(device="cpu", keep_probabilities=True))
    assert seg.labels.geometry == image.geometry and seg.model == "sign" and seg.version == "7"
    got = seg.labels.array == 1
    assert 2 * (got & box).sum() / (got.sum() + box.sum()) > 0.95
    assert seg.probabilities.shape == (2, *image.geometry.shape)
    assert seg.volumes_cc()["GTV"] == pytest.approx(got.sum() * image.geometry.voxel_volume_cc)


def test_tta_of_a_mirror_symmetric_network_changes_nothing():
    image, _ = _cube_image((1, 0, 0, 0, 1, 0, 0, 0, 1))
    bundle = ModelBundle(_plan(), {}, {})
    plain = segment_image(image, bundle, SignNet(), config=PredictorConfig(device="cpu", keep_probabilities=True))
    tta = segment_image(image, bundle, SignNet(), config=PredictorConfig(device="cpu", tta=True, keep_probabilities=True))
    assert np.array_equal(plain.labels.array, tta.labels.array)
    assert np.allclose(plain.probabilities.astype(float), tta.probabilities.astype(float), atol=2e-3)
    assert len(flip_sets((0, 1, 2))) == 8 and flip_sets(()) == [()]


def test_largest_component_and_holes():
    m = np.zeros((20, 20, 20), bool)
    m[2:10, 2:10, 2:10] = True
    m[15:17, 15:17, 15:17] = True
    assert largest_component(m).sum() == 512
    shell = m.copy()
    shell[4:8, 4:8, 4:8] = False
    assert fill_holes(shell)[5, 5, 5] and fill_holes(shell).sum() == m.sum()


@pytest.mark.parametrize("flip_x", [False, True])
def test_kidneys_are_named_by_patient_coordinates(flip_x):
    # LPS +x is patient left; with a flipped i axis, high i is patient RIGHT
    d = (-1, 0, 0, 0, 1, 0, 0, 0, 1) if flip_x else (1, 0, 0, 0, 1, 0, 0, 0, 1)
    g = Geometry(shape=(40, 20, 10), spacing_mm=(2.0, 2.0, 2.0), direction=d)
    low, high = np.zeros(g.shape, bool), np.zeros(g.shape, bool)
    low[5:10, 5:10, 3:6] = True
    high[30:35, 5:10, 3:6] = True
    # the network swapped them and split one kidney between both labels
    net_left, net_right = low.copy(), high.copy()
    net_left[30:32] |= high[30:32]
    net_right[30:32] = False
    kl, kr = split_kidneys(net_left, net_right, g)
    left_true, right_true = (low, high) if flip_x else (high, low)
    assert np.array_equal(kl, left_true) and np.array_equal(kr, right_true)
    # one kidney only: named by its side of the body centre (here x = 0 mm at the grid origin)
    kl1, kr1 = split_kidneys(high, np.zeros_like(high), g, body_centre_x_mm=g.index_to_world([20, 0, 0])[0])
    assert (kl1.any(), kr1.any()) == ((False, True) if flip_x else (True, False))


def test_postprocess_reports_what_it_did():
    g = Geometry(shape=(30, 20, 10), spacing_mm=(2.0, 2.0, 2.0))
    gtv = np.zeros(g.shape, bool)
    gtv[5:15, 5:15, 2:8] = True
    gtv[25, 18, 8] = True  # an island
    bowel = np.zeros(g.shape, bool)
    bowel[20:22, 2:4, 2:4] = True
    bowel[26:28, 2:4, 2:4] = True  # two loops stay
    out, notes = postprocess({"GTV": gtv, "BOWEL": bowel}, g)
    assert out["GTV"].sum() == 600 and out["BOWEL"].sum() == 16
    assert any("GTV: removed 1 voxel" in n for n in notes)


@pytest.mark.gpu
def test_bf16_on_gpu_matches_cpu():
    image, _ = _cube_image((1, 0, 0, 0, 1, 0, 0, 0, 1))
    bundle = ModelBundle(_plan(), {}, {})
    cpu = segment_image(image, bundle, SignNet(), config=PredictorConfig(device="cpu"))
    gpu = segment_image(image, bundle, SignNet().cuda(), config=PredictorConfig(device="cuda", precision="bf16"))
    assert (cpu.labels.array != gpu.labels.array).mean() < 1e-3


def test_a_bundle_can_narrow_the_postprocessing_rules():
    g = Geometry(shape=(30, 20, 10), spacing_mm=(2.0, 2.0, 2.0))
    gtv = np.zeros(g.shape, bool)
    gtv[5:15, 5:15, 2:8] = True
    gtv[25, 18, 8] = True
    out, notes = postprocess({"GTV": gtv}, g, single_component=())
    assert out["GTV"].sum() == 601 and not any("removed" in n for n in notes)
