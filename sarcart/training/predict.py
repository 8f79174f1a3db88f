"""Sliding-window inference on the plan grid and back to the image's own grid.

Used for validation during training and by :mod:`sarcart.inference.predictor`. Windows of the
plan's patch size overlap by ``plan.sliding_window_overlap`` and are blended with Gaussian
weights (MONAI ``sliding_window_inference``). Test-time augmentation averages the softmax over
every combination of mirrors along the plan's ``flip_axes`` (nnU-Net's mirroring), so it never
mirrors across an axis that anatomy forbids.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import nullcontext

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from sarcart.io.geometry import Volume
from sarcart.models.networks import main_output
from sarcart.models.plan import Plan
from sarcart.training.preprocess import Prepared, prepare_image, to_original_grid

log = logging.getLogger(__name__)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type != "cuda":
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def flip_sets(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the empty one first): the mirrorings TTA averages over."""
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


@torch.no_grad()
def sliding_window_probs(
    network: nn.Module,
    image: torch.Tensor,
    plan: Plan,
    *,
    tta: bool = False,
    sw_batch_size: int = 2,
    amp_dtype: torch.dtype | None = None,
    overlap: float | None = None,
) -> torch.Tensor:
    """Softmax class probabilities of a whole prepared image.

    Args:
        network: the segmentation network (eval mode is set here), on the device to use.
        image: normalised image on the plan grid, ``(nx, ny, nz)``, ``(1, nx, ny, nz)`` or
            ``(1, 1, nx, ny, nz)``, any device (moved to the network's device).
        plan: the model's plan (patch size, overlap, flip axes).
        tta: average over mirrorings along ``plan.flip_axes``.
        amp_dtype: ``torch.bfloat16``/``torch.float16`` autocast on CUDA; ignored on CPU.

    Returns:
        float32 tensor ``(C, nx, ny, nz)`` on the network's device; classes sum to 1.
    """
    network.eval()
    device = next(network.parameters()).device
    x = image.to(device=device, dtype=torch.float32)
    while x.ndim < 5:
        x = x.unsqueeze(0)
    spatial = (2, 3, 4)
    sets = flip_sets(plan.flip_axes) if tta else [()]
    if tta and len(sets) == 1:
        log.info("TTA requested but the plan allows no mirroring (flip_axes is empty): single pass")
    total = None
    for axes in sets:
        dims = [spatial[a] for a in axes]
        xi = torch.flip(x, dims) if dims else x
        with _autocast(device, amp_dtype):
            logits = sliding_window_inference(
                xi, roi_size=plan.patch_size, sw_batch_size=sw_batch_size,
                predictor=lambda t: main_output(network(t)),
                overlap=plan.sliding_window_overlap if overlap is None else overlap, mode="gaussian",
            )
        p = torch.softmax(torch.as_tensor(logits).float(), dim=1)
        p = torch.flip(p, dims) if dims else p
        total = p if total is None else total + p
    assert total is not None
    return (total / len(sets))[0]


def predict_volume(
    network: nn.Module,
    image: Volume,
    plan: Plan,
    *,
    tta: bool = False,
    sw_batch_size: int = 2,
    amp_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, Prepared]:
    """Class probabilities of ``image`` on its own grid.

    Returns:
        ``(probs, prepared)``: float32 ``(C, *image.geometry.shape)`` probabilities and the
        prepared image on the plan grid.
    """
    prepared = prepare_image(image, plan)
    probs = sliding_window_probs(network, torch.from_numpy(prepared.array), plan, tta=tta,
                                 sw_batch_size=sw_batch_size, amp_dtype=amp_dtype)
    return to_original_grid(probs.cpu().numpy(), prepared.grid, image.geometry), prepared
