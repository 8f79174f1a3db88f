"""MONAI transform chains for training and validation.

The deterministic head (:class:`PrepareCased`: read, reorient, resample, normalise, pad, index the
classes) is cached by ``CacheDataset``; the random tail samples a foreground-oversampled patch and
applies MR augmentations: small rotations/scaling, flips only along the plan's ``flip_axes``
(never left/right when KIDNEY_L/KIDNEY_R are labels), a smooth multiplicative bias field (the
residual B1/coil inhomogeneity of MR; Sudre et al., MICCAI BrainLes 2017, doi
10.1007/978-3-319-75238-9_11), Gaussian noise, gamma and contrast changes.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.transforms import (
    ClassesToIndicesd,
    Compose,
    DeleteItemsd,
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandBiasField,
    RandCropByLabelClassesd,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    SpatialPadd,
)

from sarcart.io.labels import read_labels
from sarcart.io.nifti import read_nifti
from sarcart.models.plan import Plan
from sarcart.training.config import AugmentConfig
from sarcart.training.preprocess import prepare_image, prepare_labels

KEYS = ("image", "label")
_INDICES = "label_cls_indices"


class PrepareCased(MapTransform):
    """``{"image": path, "label": path}`` -> arrays ``(1, nx, ny, nz)`` on the plan grid.

    ``image`` becomes float32 (normalised), ``label`` uint8 class indices (0 = background, k+1 =
    ``plan.structures[k]``, mapped through the label file's sidecar so its own numbering does not
    matter). ``spacing`` holds the plan spacing (mm).
    """

    def __init__(self, plan: Plan) -> None:
        super().__init__(keys=list(KEYS), allow_missing_keys=True)
        self.plan = plan

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        prepared = prepare_image(read_nifti(d["image"]), self.plan)
        d["image"] = prepared.array[None]
        if d.get("label"):
            vol, spec = read_labels(d["label"])
            mapped = np.zeros(vol.array.shape, dtype=np.uint8)
            for k, name in enumerate(self.plan.structures, start=1):
                mapped[np.isin(vol.array, spec.structures.get(name, ()))] = k
            d["label"] = prepare_labels(vol.with_array(mapped), prepared.grid)[None]
        d["spacing"] = np.asarray(self.plan.target_spacing_mm, dtype=np.float32)
        return d


class PositiveBiasFieldd(MapTransform):
    """MONAI's random bias field applied to the image shifted to be non-negative.

    A bias field multiplies the MR signal, which is positive; on a z-scored image the multiplication
    is therefore applied to ``x - min(x)`` and the minimum added back.
    """

    def __init__(self, key: str, *, prob: float, coeff: float) -> None:
        super().__init__(keys=[key])
        self.bias = RandBiasField(degree=3, coeff_range=(0.0, coeff), prob=prob)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> PositiveBiasFieldd:
        self.bias.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for k in self.keys:
            x = d[k]
            m = x.min()
            d[k] = self.bias(x - m) + m
        return d


def deterministic(plan: Plan, *, with_indices: bool) -> list:
    """Read + prepare (+ pad to the patch and index the classes for patch sampling)."""
    steps: list = [PrepareCased(plan)]
    if with_indices:
        steps += [
            SpatialPadd(keys=list(KEYS), spatial_size=plan.patch_size, mode="constant"),
            ClassesToIndicesd(keys="label", num_classes=plan.n_classes, indices_postfix="_cls_indices"),
        ]
    return steps


def _class_ratios(plan: Plan) -> list[float]:
    p = plan.foreground_oversampling
    n_fg = plan.n_classes - 1
    return [1.0 - p] + [p / n_fg] * n_fg


def augmentations(plan: Plan, aug: AugmentConfig) -> list:
    """The random MR augmentations (applied to one patch)."""
    if not aug.enabled:
        return []
    inplane, oop = math.radians(aug.rotate_deg), math.radians(aug.rotate_out_of_plane_deg)
    steps: list = [
        RandAffined(keys=list(KEYS), prob=aug.p_affine, rotate_range=(oop, oop, inplane),
                    scale_range=(aug.scale,) * 3, mode=("bilinear", "nearest"), padding_mode="zeros"),
    ]
    steps += [RandFlipd(keys=list(KEYS), prob=aug.p_flip, spatial_axis=a) for a in plan.flip_axes]
    steps += [
        PositiveBiasFieldd("image", prob=aug.p_bias_field, coeff=aug.bias_coeff),
        RandGaussianNoised(keys="image", prob=aug.p_noise, mean=0.0, std=aug.noise_std),
        RandAdjustContrastd(keys="image", prob=aug.p_gamma, gamma=aug.gamma),
        RandScaleIntensityd(keys="image", prob=aug.p_contrast, factors=aug.contrast),
    ]
    return steps


def train_transforms(plan: Plan, aug: AugmentConfig) -> Compose:
    """Cached head + foreground-oversampled patch + augmentations; tensors without metadata."""
    steps = deterministic(plan, with_indices=True) + [
        RandCropByLabelClassesd(keys=list(KEYS), label_key="label", spatial_size=plan.patch_size,
                                ratios=_class_ratios(plan), num_classes=plan.n_classes, num_samples=1,
                                indices_key=_INDICES, warn=False),
        DeleteItemsd(keys=[_INDICES]),
        EnsureTyped(keys=list(KEYS), data_type="tensor", track_meta=False),
    ]
    return Compose(steps + augmentations(plan, AugmentConfig() if aug is None else aug)
                   + [EnsureTyped(keys=list(KEYS), data_type="tensor", track_meta=False)])


def val_transforms(plan: Plan) -> Compose:
    """Whole volumes on the plan grid (scored by sliding-window inference)."""
    return Compose(deterministic(plan, with_indices=False)
                   + [EnsureTyped(keys=list(KEYS), data_type="tensor", track_meta=False, allow_missing_keys=True)])
