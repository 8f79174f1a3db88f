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
