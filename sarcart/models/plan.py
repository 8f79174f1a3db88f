"""Self-configuration: a dataset fingerprint becomes a training plan (the nnU-Net idea).

The plan fixes everything that depends on the data and the compute budget: target spacing, patch
size, network depth/kernels/strides, batch size, normalisation, the training schedule and the flips
that anatomy allows. It is a readable JSON file (``plan.json``) saved next to every run and logged to
MLflow. Rules follow nnU-Net (Isensee et al., Nat Methods 2021;18:203, doi 10.1038/s41592-020-01008-z):
median spacing, downsampling an axis only while its spacing is within 2x of the finest one and its
feature map is at least 4 voxels, 3x3x3 kernels except across much coarser axes. Unlike nnU-Net the
patch and the spacing are also fitted to a *time* budget (a fold must finish in ``time_budget_min``
on the given device throughput): when the budget does not afford enough iterations, the fine axes
are coarsened first (1.25x, 1.5x, 2x, ... of the median spacing) before the patch is shrunk.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sarcart.errors import ConfigError

log = logging.getLogger(__name__)

PLAN_FORMAT = 1
#: structures whose left/right identity is anatomical: no left/right flips when one is a label
LATERAL_STRUCTURES = ("KIDNEY_L", "KIDNEY_R")
#: abdominal organs: front/back and head/feet are not mirror-symmetric, so no flips along those axes
ABDOMINAL_STRUCTURES = ("BOWEL", "KIDNEY_L", "KIDNEY_R")
_COARSEN = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
_MIN_FEATURE = 4


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fingerprint(_Frozen):
    """What the plan needs to know about a dataset (computed by ``sarcart.training.fingerprint``).

    Shapes are ``(nx, ny, nz)`` voxels and spacings mm, after reorientation to LPS axes.
    Intensities are raw image values inside the body mask of each image.
    """

    n_cases: int = Field(ge=1)
    structures: list[str]
    spacings_mm: list[tuple[float, float, float]]
    shapes: list[tuple[int, int, int]]
    intensity: dict[str, float] = Field(description="mean, std, p00_5, p50, p99_5 inside the body (raw units)")
    structure_volumes_cc: dict[str, list[float]] = Field(default_factory=dict)

    @property
    def median_spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.median(np.asarray(self.spacings_mm), axis=0))  # type: ignore[return-value]

    @property
    def median_extent_mm(self) -> tuple[float, float, float]:
        ext = np.asarray(self.shapes, float) * np.asarray(self.spacings_mm, float)
        return tuple(float(v) for v in np.median(ext, axis=0))  # type: ignore[return-value]


#: axial slices of a 2.5D training patch when neither ``slab_slices`` nor ``patch_size`` says
SLAB_SLICES = 8


class Budget(_Frozen):
    """Compute budget and design limits the plan must respect.

    ``throughput_gflops`` is the sustained training throughput of the device for 3D convolutions
    (forward + backward); the default was measured on the project's 2-core CPU machine with
    ``benchmarks/bench_segmentation.py`` and is deliberately conservative for a shared machine.
    """

    time_budget_min: float = Field(default=45.0, gt=0, description="wall time of one fold (training part)")
    train_fraction: float = Field(default=0.8, gt=0, le=1, description="share of the budget for iterations")
    memory_budget_mb: float = Field(default=4000.0, gt=0, description="activation memory of one batch")
    throughput_gflops: float = Field(default=40.0, gt=0)
    min_iterations: int = Field(default=1500, ge=1, description="fewest optimiser steps a plan may afford")
    max_iterations: int = Field(default=6000, ge=1)
    min_coverage: float = Field(default=0.5, gt=0, le=1, description="patch / median image extent, per axis")
    max_spacing_mm: float = Field(default=6.0, gt=0, description="coarsest target spacing the plan may choose")
    network: Literal["DynUNet", "SegResNet", "UNet"] = "DynUNet"
    base_filters: int = Field(default=16, ge=4, le=64)
    max_filters: int = Field(default=256, ge=8)
    max_levels: int = Field(default=5, ge=2, le=7)
    batch_size: int = Field(default=2, ge=1)
    iterations_per_epoch: int = Field(default=50, ge=1)
    # optional fixed choices (None = the plan decides)
    target_spacing_mm: tuple[float, float, float] | None = None
    patch_size: tuple[int, int, int] | None = None
    epochs: int | None = Field(default=None, ge=1)
    flip_axes: tuple[int, ...] | None = None
    # 2.5D: a 2D network on each axial slice, its neighbours as channels (0 = a 3D network)
    context_slices: int = Field(default=0, ge=0, le=15, description="0: 3D network; odd k: 2.5D with k slices")
    slab_slices: int | None = Field(default=None, ge=1, le=64,
                                    description="2.5D: axial slices per training patch (None: 8, or a fixed "
                                                "patch_size's depth)")

    @model_validator(mode="after")
    def _consistent_2p5d(self) -> Budget:
        if self.context_slices and self.context_slices % 2 == 0:
            raise ValueError(f"context_slices must be 0 (3D) or odd (the slice and as many neighbours on each "
                             f"side), got {self.context_slices}")
        # configs resolved before slab_slices became optional carry 8 for every plan: only another value is refused
        if not self.context_slices and self.slab_slices not in (None, SLAB_SLICES):
            raise ValueError(f"slab_slices ({self.slab_slices}) applies only to a 2.5D plan: set context_slices "
                             f"to an odd number, or remove slab_slices (a 3D patch's depth is patch_size[2])")
        if (self.context_slices and self.slab_slices is not None and self.patch_size is not None
                and self.patch_size[2] != self.slab_slices):
            raise ValueError(f"slab_slices ({self.slab_slices}) and the depth of the fixed patch_size "
                             f"{tuple(self.patch_size)} disagree: set the slab depth in one of them only")
        return self


class NetworkPlan(_Frozen):
    """Network topology; kernels and strides per level, as MONAI's DynUNet takes them.

    ``context_slices`` k > 0 makes the network 2.5D (:class:`sarcart.models.networks.SliceStack`): a 2D
    network runs on every axial (x, y) slice with the k nearest slices as input channels, so kernels and
    strides keep 1 along z.
    """

    name: Literal["DynUNet", "SegResNet", "UNet"]
    kernel_size: list[tuple[int, int, int]]
    strides: list[tuple[int, int, int]]
    filters: list[int]
    deep_supervision: bool = True
    deep_supr_num: int = 1
    norm: str = "instance"
    context_slices: int = Field(default=0, ge=0, le=15)

    @model_validator(mode="after")
    def _in_plane(self) -> NetworkPlan:
        if self.context_slices:
            if self.context_slices % 2 == 0:
                raise ValueError(f"context_slices must be odd, got {self.context_slices}")
            if any(k[2] != 1 for k in self.kernel_size) or any(st[2] != 1 for st in self.strides):
                raise ValueError("a 2.5D network (context_slices > 0) needs kernel and stride 1 along z")
        return self

    @property
    def spatial_dims(self) -> int:
        return 2 if self.context_slices else 3


class Normalisation(_Frozen):
    """Per-image z-score inside the body after clipping to percentiles (nnU-Net's MR scheme)."""

    scheme: Literal["zscore_body"] = "zscore_body"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    body_threshold: float = Field(default=0.05, description="body = image > this x its 99th percentile")


class Schedule(_Frozen):
    epochs: int
    iterations_per_epoch: int
    batch_size: int
    est_seconds_per_iteration: float
    est_training_minutes: float


class Plan(_Frozen):
    """Everything needed to train and to run a model; saved as ``plan.json``."""

    format: int = PLAN_FORMAT
    task: str
    structures: list[str] = Field(description="class k+1 is structures[k]; 0 is background")
    target_spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    network: NetworkPlan
    normalisation: Normalisation = Normalisation()
    schedule: Schedule
    flip_axes: tuple[int, ...] = Field(description="array axes (LPS x, y, z) that may be mirrored")
    foreground_oversampling: float = 0.33
    sliding_window_overlap: float = 0.5
    training_profile: dict[str, object] = Field(default_factory=dict, description="data summary for input checks")
    decisions: list[str] = Field(default_factory=list, description="why the plan is what it is, in words")

    @property
    def n_classes(self) -> int:
        return len(self.structures) + 1

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.model_dump(mode="json"), indent=1))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        try:
            return cls.model_validate_json(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read plan {path}: {exc}") from exc


def topology(spacing_mm: tuple[float, ...], size: tuple[int, ...], max_levels: int, *,
             in_plane: bool = False) -> tuple[list, list]:
    """Kernels and strides per level for a patch of ``size`` voxels at ``spacing_mm``.

    An axis is downsampled while its spacing is within 2x of the finest current spacing and its
    feature map keeps at least 4 voxels after halving; its kernel is 1 while it is much coarser.
    ``in_plane`` (2.5D networks): z is never convolved nor downsampled (kernel and stride 1).
    Returns ``(kernels, strides)``, lists of 3-tuples, the first stride ``(1, 1, 1)``.
    """
    sp, sz = list(spacing_mm), list(size)
    if in_plane:
        sp[2] = math.inf
    kernels: list[tuple[int, ...]] = [tuple(3 if s <= 2 * min(sp) else 1 for s in sp)]
    strides: list[tuple[int, ...]] = [(1, 1, 1)]
    while len(strides) < max_levels:
        st = tuple(2 if (sp[a] <= 2 * min(sp) and sz[a] >= 2 * _MIN_FEATURE) else 1 for a in range(3))
        if st == (1, 1, 1):
            break
        sp = [s * f for s, f in zip(sp, st)]
        sz = [z // f for z, f in zip(sz, st)]
        strides.append(st)
        kernels.append(tuple(3 if s <= 2 * min(sp) else 1 for s in sp))
    return kernels, strides


def divisor(strides: list) -> tuple[int, int, int]:
    """Product of the strides along each axis (patch sizes must be multiples of it)."""
    return tuple(int(np.prod([s[a] for s in strides])) for a in range(3))  # type: ignore[return-value]


def filters_for(levels: int, budget: Budget) -> list[int]:
    return [min(budget.base_filters * 2 ** i, budget.max_filters) for i in range(levels)]


def _level_sizes(patch: tuple[int, ...], strides: list) -> list[float]:
    sizes, cur = [], np.asarray(patch, float)
    for st in strides:
        cur = cur / np.asarray(st)
        sizes.append(float(np.prod(cur)))
    return sizes


def cost_gflop(patch: tuple[int, ...], kernels: list, strides: list, *, filters: list[int],
               in_channels: int = 1) -> float:
    """Training GFLOP for one patch through a U-Net (encoder + decoder, forward + backward = 3x forward).

    Each level has two convolutions in the encoder and two in the decoder (the first with the
    skip concatenation), ``2 * k^3 * c_in * c_out`` FLOP per output voxel (``k^3`` = the kernel's
    voxels: 9 for a 2.5D network's 3 x 3 x 1 kernels, whose ``in_channels`` are its context slices).
    """
    total = 0.0
    c_prev = in_channels
    for n_vox, k, f in zip(_level_sizes(patch, strides), kernels, filters):
        kk = float(np.prod(k))
        enc = kk * (c_prev * f + f * f)
        dec = kk * (2 * f * f + f * f)
        total += 2.0 * n_vox * (enc + dec)
        c_prev = f
    return 3.0 * total / 1e9


def memory_mb(patch: tuple[int, ...], strides: list, filters: list[int], *, batch: int) -> float:
    """Rough activation memory (float32) of one training batch: ~12 stored maps per level and channel."""
    return sum(n * f * 12 * 4 for n, f in zip(_level_sizes(patch, strides), filters)) * batch / 2 ** 20
