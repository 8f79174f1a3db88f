"""Sliding-window inference on the plan grid and back to the image's own grid.

Used for validation during training and by :mod:`sarcart.inference.predictor`. Windows of the
plan's patch size overlap by ``plan.sliding_window_overlap`` and are blended with Gaussian
weights (MONAI ``sliding_window_inference``). Test-time augmentation averages the softmax over
every combination of mirrors along the plan's ``flip_axes`` (nnU-Net's mirroring), so it never
mirrors across an axis that anatomy forbids.

Sub-voxel phases (``subvoxel=True``): the plan grid is coarser than the image (trufi: 3 mm from
1.5 mm in-plane), so one pass samples each coarse voxel at a single phase and the image's finer voxels
between coarse centres are only interpolated. Running the network again on grids moved by half a
plan voxel along each coarsened axis and averaging the probabilities on the image's grid samples the
anatomy at the image's own resolution (2^k passes for k coarsened axes). It needs no mirroring, so it
also serves models whose plan forbids every flip.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from sarcart.io.geometry import Geometry, Volume
from sarcart.models.networks import main_output
from sarcart.models.plan import Plan
from sarcart.training.preprocess import Prepared, prepare_image, reorient_lps, to_original_grid

log = logging.getLogger(__name__)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type != "cuda":
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def flip_sets(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the empty one first): the mirrorings TTA averages over."""
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


@dataclass(frozen=True)
class PlanGridPrediction:
    """The unshifted pass on the plan grid: the prepared image and its class probabilities ``(C, *grid.shape)``.

    The QA confidence is computed here, on the grid the network works on, so that it does not depend on
    the input's resolution or on whether sub-voxel phases were averaged (``docs/qa.md``).
    """

    prepared: Prepared
    probs: np.ndarray


#: an axis counts as coarsened when the plan spacing is at least this many times the image's
COARSENED = 1.5


def subvoxel_shifts(
    image_geometry: Geometry, target_spacing_mm: Sequence[float]
) -> list[tuple[float, float, float]]:
    """Half-voxel phases of the plan grid along every axis the plan coarsens (the unshifted grid first).

    An axis is coarsened when the plan spacing ``target_spacing_mm`` (LPS order, as
    ``Plan.target_spacing_mm``) is at least :data:`COARSENED` times the image's spacing along that LPS
    axis; k such axes give 2^k shifts (in plan voxels, LPS axis order).
    """
    if len(target_spacing_mm) != 3:
        raise ValueError(f"target_spacing_mm needs 3 values (LPS x, y, z in mm), got {tuple(target_spacing_mm)}")
    native = Geometry.from_sitk(reorient_lps(image_geometry.reference_image())).spacing_mm
    axes = [a for a in range(3) if float(target_spacing_mm[a]) >= COARSENED * native[a]]
    out = []
    for sub in flip_sets(tuple(axes)):
        shift = [0.0, 0.0, 0.0]
        for a in sub:
            shift[a] = 0.5
        out.append((shift[0], shift[1], shift[2]))
    return out


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
    subvoxel: bool = False,
    sw_batch_size: int = 2,
    amp_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, PlanGridPrediction]:
    """Class probabilities of ``image`` on its own grid.

    Args:
        tta: average over mirrorings along ``plan.flip_axes``.
        subvoxel: also average over the plan grid's half-voxel phases (:func:`subvoxel_shifts`).

    Returns:
        ``(probs, plan_grid)``: float32 ``(C, *image.geometry.shape)`` probabilities, and the prepared
        image with its probabilities on the unshifted plan grid.
    """
    shifts = subvoxel_shifts(image.geometry, plan.target_spacing_mm) if subvoxel else [(0.0, 0.0, 0.0)]
    first: PlanGridPrediction | None = None
    total: np.ndarray | None = None
    for shift in shifts:
        prepared = prepare_image(image, plan, shift_vox=shift)
        p = sliding_window_probs(network, torch.from_numpy(prepared.array), plan, tta=tta,
                                 sw_batch_size=sw_batch_size, amp_dtype=amp_dtype).cpu().numpy()
        if first is None:
            first = PlanGridPrediction(prepared, p)
        back = to_original_grid(p, prepared.grid, image.geometry)
        total = back if total is None else total + back
    assert total is not None and first is not None
    if len(shifts) > 1:
        total /= len(shifts)
    return total, first
