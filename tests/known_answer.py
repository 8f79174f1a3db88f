"""Known-answer stand-ins for a segmentation network (import as `known_answer`).

The predictor z-scores the image over the body (voxels above 5 % of the 99th percentile) before the
network sees it; :class:`SignNet` thresholds that normalised image, so on a two-level image (body 100,
object 300) the ideal contour is known exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sarcart.io.geometry import Geometry, Volume
from sarcart.models.plan import NetworkPlan, Plan, Schedule


class SignNet(nn.Module):
    """Class 1 where the normalised image is above ``offset`` (logits +-``gain`` (x - offset));
    ``gain`` sets how crisp the probabilities are."""

    def __init__(self, offset: float = 0.0, gain: float = 10.0) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))  # the predictor reads the device from the parameters
        self.offset, self.gain = offset, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gain * (x - self.offset)
        return torch.cat([-y, y], dim=1) + 0 * self.dummy


class WindowNet(nn.Module):
    """Class k (GTV, BOWEL) where the normalised intensity lies within ``width`` of ``centres[k]``
    (logit gain (width - |x - c|) against a background logit of 0); a centre of None: never that class."""

    def __init__(self, centres: tuple[float | None, ...], width: float, gain: float = 20.0) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.centres, self.width, self.gain = centres, width, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [torch.zeros_like(x)] + [self.gain * (self.width - (x - c).abs()) if c is not None
                                       else torch.full_like(x, -1e3) for c in self.centres]
        return torch.cat(out, dim=1) + 0 * self.dummy


def midpoint(arr: np.ndarray) -> float:
    """Normalised value of the 100/300 midpoint: z-score over the body (> 5 % of the 99th percentile)."""
    body = arr[arr > 0.05 * np.percentile(arr, 99)]
    return float((200.0 - body.mean()) / body.std())


def ball_image(n: int, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), centre=(23.3, 24.6, 7.8)) -> tuple[Volume, np.ndarray]:
    """A 14 mm ball (300) in a body (100) imaged at 1 x 1 x 3 mm on an n x n x 16 grid; returns image, ball."""
    g = Geometry(shape=(n, n, 16), spacing_mm=(1.0, 1.0, 3.0), origin_mm=(0.0, 0.0, 0.0), direction=direction)
    idx = np.indices(g.shape).astype(float)
    ball = (idx[0] - centre[0]) ** 2 + (idx[1] - centre[1]) ** 2 + ((idx[2] - centre[2]) * 3) ** 2 <= 14.0 ** 2
    return Volume(np.where(ball, 300.0, 100.0).astype(np.float32), g), ball


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def two_structure_image() -> tuple[Volume, np.ndarray, np.ndarray, dict[float, float], float]:
    """A GTV box (300) and a BOWEL box (500) in a body (100), 40 x 36 x 16 voxels of 2 x 2 x 3 mm.

    Returns the image, the GTV and BOWEL masks, each intensity's normalised level (the predictor's z-score over
    the body) and half the gap between neighbouring levels (they are equally spaced): a :class:`WindowNet` of
    that width around a level picks exactly that tissue.
    """
    g = Geometry(shape=(40, 36, 16), spacing_mm=(2.0, 2.0, 3.0), origin_mm=(0.0, 0.0, 0.0))
    arr = np.zeros(g.shape, np.float32)
    arr[2:38, 2:34, 1:15] = 100.0
    gtv, bowel = np.zeros(g.shape, bool), np.zeros(g.shape, bool)
    gtv[6:16, 8:20, 4:10], bowel[22:34, 14:28, 5:12] = True, True
    arr[gtv], arr[bowel] = 300.0, 500.0
    body = arr[arr > 0.05 * np.percentile(arr, 99)]
    level = {v: float((v - body.mean()) / body.std()) for v in (100.0, 300.0, 500.0)}
    return Volume(arr, g), gtv, bowel, level, (level[300.0] - level[100.0]) / 2


def two_structure_plan() -> Plan:
    """A plan for GTV and BOWEL on :func:`two_structure_image`'s grid (the network is replaced in the tests)."""
    net = NetworkPlan(name="DynUNet", kernel_size=[(3, 3, 3)] * 2, strides=[(1, 1, 1), (2, 2, 2)], filters=[4, 8])
    return Plan(task="t", structures=["GTV", "BOWEL"], target_spacing_mm=(2.0, 2.0, 3.0), patch_size=(16, 16, 16),
                network=net, flip_axes=(), training_profile={"median_spacing_mm": [2.0, 2.0, 3.0]},
                schedule=Schedule(epochs=1, iterations_per_epoch=1, batch_size=1, est_seconds_per_iteration=0,
                                  est_training_minutes=0))
