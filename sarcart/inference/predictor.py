"""The predictor: a model loaded once and kept warm, images in, structures out on the image's grid.

``segment_image`` is the pure function; :class:`Predictor` holds the loaded network (from a shipped
name, a path or an MLflow URI, see :func:`sarcart.models.bundle.resolve_model`) so that the
per-fraction service pays the loading cost once. Steps: reorient/resample/normalise as in training
(:mod:`sarcart.training.preprocess`), sliding-window inference with optional mirroring TTA and
bf16/fp16 autocast on CUDA, probabilities back to the original grid, argmax, anatomy-aware
post-processing (:mod:`sarcart.inference.postprocess`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from sarcart.errors import ConfigError, InvalidImageError
from sarcart.inference.postprocess import SINGLE_COMPONENT, SOLID, postprocess
from sarcart.io.geometry import Geometry, Volume
from sarcart.io.labels import LabelSpec
from sarcart.models.bundle import ModelBundle, load_bundle, resolve_model
from sarcart.training.predict import PlanGridPrediction, predict_volume
from sarcart.training.preprocess import body_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictorConfig:
    """How to run a model.

    Attributes:
        tta: average over mirrorings along the plan's allowed flip axes (2^n passes).
        subvoxel: also average over the plan grid's half-voxel phases along every axis the plan
            coarsens (2^k passes; :func:`sarcart.training.predict.subvoxel_shifts`); None = what the
            bundle recommends (``meta["inference"]["subvoxel"]``, off when absent).
        device: ``cpu``, ``cuda``, ``cuda:1``...; None = CUDA when available.
        precision: ``auto`` = bf16 on CUDA when supported, else fp16 on CUDA, fp32 on CPU.
        sw_batch_size: windows per forward pass.
        postprocess: apply the anatomy rules (largest component, holes, left/right kidneys); a
            bundle's ``meta["postprocess"]`` (``{"largest_component": [...], "fill_holes": [...]}``)
            narrows the structures they apply to.
        keep_probabilities: return the class probabilities (float16) on the image grid, and those of
            the unshifted pass on the plan grid (for the QA confidence).
    """

    tta: bool = False
    subvoxel: bool | None = None
    device: str | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    sw_batch_size: int = 2
    postprocess: bool = True
    keep_probabilities: bool = False

    def __post_init__(self) -> None:
        if self.sw_batch_size < 1:
            raise ConfigError(f"sw_batch_size must be >= 1, got {self.sw_batch_size}")


@dataclass
class Segmentation:
    """Result of one image.

    Attributes:
        labels: uint8 label map on the input grid (0 background, k+1 = ``structures[k]``).
        structures: structure names in label order.
        probabilities: ``(C, nx, ny, nz)`` float16 when kept, else None.
        plan_probabilities, plan_labels: the unshifted pass's probabilities (float16) on the plan grid and
            the label map made from them there by the same rules, when kept (see :meth:`confidence_inputs`);
            an ensemble's are its members' mean, and None when their plan grids differ.
        model, version: which model produced it (an ensemble: ``ensemble of NAME``, the members' versions
            joined by ``+``).
        members: ``NAME vVERSION`` of each model of an ensemble (empty for one model).
        tta, subvoxel: whether mirroring TTA and the sub-voxel phases were used (by any member of an ensemble).
        notes: post-processing actions, in words.
        seconds: wall time of the prediction.
    """

    labels: Volume
    structures: list[str]
    probabilities: np.ndarray | None = None
    plan_probabilities: np.ndarray | None = None
    plan_labels: np.ndarray | None = None
    model: str = ""
    version: str = ""
    members: list[str] = field(default_factory=list)
    tta: bool = False
    subvoxel: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def spec(self) -> LabelSpec:
        return LabelSpec(values={k: s for k, s in enumerate(self.structures, 1)},
                         structures={s: (k,) for k, s in enumerate(self.structures, 1)})

    def mask(self, name: str) -> Volume:
        k = self.structures.index(name) + 1
        return self.labels.with_array(self.labels.array == k)

    @property
    def masks(self) -> dict[str, Volume]:
        return {s: self.mask(s) for s in self.structures}

    def confidence_inputs(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(probability, mask)`` of a structure for the QA confidence, or None without probabilities.

        On the plan grid when its probabilities were kept: the unshifted pass's probabilities and the mask
        the same rules make from them there. That is the grid the network works on and where the QA
        calibration was fitted (``benchmarks/bench_qa_flags.py``, images at the plan's spacing), so the
        confidence of an image does not depend on its resolution or on the sub-voxel phases. On a finer
        image's own grid the probabilities between coarse voxels are only interpolated, which lowers the
        raw confidence of a 1.5 mm image far below what the calibration expects (``docs/qa.md``).
        Otherwise the image-grid probabilities and mask.
        """
        k = self.structures.index(name) + 1
        if self.plan_probabilities is not None and self.plan_labels is not None:
            return np.asarray(self.plan_probabilities[k], np.float32), self.plan_labels == k
        if self.probabilities is not None:
            return np.asarray(self.probabilities[k], np.float32), self.labels.array == k
        return None

    def volumes_cc(self) -> dict[str, float]:
        vox = self.labels.geometry.voxel_volume_cc
        return {s: float((self.labels.array == k).sum() * vox) for k, s in enumerate(self.structures, 1)}


def _device(cfg: PredictorConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _amp_dtype(cfg: PredictorConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.precision == "fp32":
        return None
    if cfg.precision == "fp16":
        return torch.float16
    if cfg.precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _label_map(masks: dict[str, np.ndarray], structures: list[str], shape: tuple[int, ...]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    for k in range(len(structures), 0, -1):  # the first structure wins where masks overlap
        labels[masks[structures[k - 1]]] = k
    return labels


def _labels(probs: np.ndarray, grid: Geometry, bundle: ModelBundle, body_centre_x_mm: float | None,
            apply_rules: bool) -> tuple[np.ndarray, list[str]]:
    """Argmax of ``probs`` on ``grid``, then the anatomy rules (narrowed by the bundle) when asked."""
    arg = np.argmax(probs, axis=0)
    structures = list(bundle.plan.structures)
    masks = {s: arg == k for k, s in enumerate(structures, 1)}
    notes: list[str] = []
    if apply_rules:
        rules = bundle.meta.get("postprocess") or {}
        masks, notes = postprocess(
            masks, grid, body_centre_x_mm=body_centre_x_mm,
            single_component=tuple(rules.get("largest_component", SINGLE_COMPONENT)),
            solid=tuple(rules.get("fill_holes", SOLID)),
        )
    return _label_map(masks, structures, grid.shape), notes


def bundle_subvoxel(bundle: ModelBundle) -> bool:
    """Whether a model's bundle recommends averaging over the sub-voxel phases (``meta["inference"]``)."""
    return bool((bundle.meta.get("inference") or {}).get("subvoxel", False))


def segment_image(image: Volume, bundle: ModelBundle, network: nn.Module | None = None,
                  *, config: PredictorConfig | None = None) -> Segmentation:
    """Segment one image with a model bundle.

    Args:
        image: scalar 3D volume (any orientation and spacing; LPS mm geometry).
        bundle: the model (plan + weights).
        network: the bundle's network already on its device (built here when None).
        config: TTA, device, precision, post-processing.

    Returns:
        A :class:`Segmentation` on ``image``'s grid.

    Raises:
        InvalidImageError: a non-scalar or non-finite image.
    """
    return segment_ensemble(image, [(bundle, network)], config=config)


def member_names(bundles: Sequence[ModelBundle]) -> list[str]:
    """``NAME vVERSION`` of each model, as ensembles are described in outputs and reports."""
    return [f"{b.name} v{b.version}" for b in bundles]


def check_same_structures(bundles: Sequence[ModelBundle], sources: Sequence[str] | None = None) -> None:
    """Refuse an ensemble whose models do not segment the same structures in the same order.

    Raises:
        ConfigError: naming the first model that differs from the first one, and both structure lists.
    """
    names = list(sources) if sources is not None else member_names(bundles)
    first = list(bundles[0].plan.structures)
    for b, n in zip(bundles[1:], names[1:]):
        if list(b.plan.structures) != first:
            raise ConfigError(
                f"an ensemble averages the class probabilities, so its models must segment the same structures in "
                f"the same order: {names[0]} segments {', '.join(first)}, {n} segments "
                f"{', '.join(b.plan.structures)}; ensemble only models of one task")


@dataclass
class MemberPrediction:
    """One model's pass over an image, before its probabilities are combined (:func:`combine_members`).

    Attributes:
        bundle: the model.
        probs: ``(C, nx, ny, nz)`` float32 class probabilities on the image's grid.
        plan_pred: the unshifted pass on the model's plan grid (for the QA confidence).
        subvoxel: whether the pass averaged the plan grid's half-voxel phases.
    """

    bundle: ModelBundle
    probs: np.ndarray
    plan_pred: PlanGridPrediction
    subvoxel: bool


def predict_member(image: Volume, bundle: ModelBundle, network: nn.Module | None = None,
                   *, config: PredictorConfig | None = None) -> MemberPrediction:
    """Run one model on an image as it runs alone (its plan grid, normalisation, TTA and sub-voxel phases).

    ``config.subvoxel=None`` follows the bundle's recommendation. The result is what
    :func:`combine_members` averages; a caller that scores the same model alone and in ensembles (e.g.
    ``benchmarks/bench_model_compare.py``) runs each model once per image this way.

    Raises:
        InvalidImageError: a non-scalar image.
    """
    cfg = config or PredictorConfig()
    if image.array.ndim != 3:
        raise InvalidImageError(f"image must be a scalar 3D volume, got shape {image.array.shape}")
    net = network if network is not None else bundle.network(_device(cfg))
    dev = next(net.parameters()).device
    subvoxel = bundle_subvoxel(bundle) if cfg.subvoxel is None else cfg.subvoxel
    probs, plan_pred = predict_volume(net, image, bundle.plan, tta=cfg.tta, subvoxel=subvoxel,
                                      sw_batch_size=cfg.sw_batch_size, amp_dtype=_amp_dtype(cfg, dev))
    return MemberPrediction(bundle, probs, plan_pred, subvoxel)


def combine_members(image: Volume, members: Sequence[MemberPrediction], *, config: PredictorConfig | None = None,
                    seconds: float | None = None) -> Segmentation:
    """The segmentation of an image from one or more models' passes (:func:`predict_member`).

    The members' image-grid probabilities are averaged, then argmax and the anatomy rules of the first
    member's bundle make the labels; the plan-grid probabilities (QA confidence) are averaged when every
    member works on the same plan grid, else not kept.

    Args:
        members: the passes, in ensemble order (the first one's bundle names the model and its rules).
        seconds: time already spent on the passes, added to the segmentation's ``seconds``.

    Raises:
        ConfigError: no member, or members that segment different structures.
    """
    cfg = config or PredictorConfig()
    if not members:
        raise ConfigError("an ensemble needs at least one model")
    t0 = time.perf_counter()
    bundles = [m.bundle for m in members]
    check_same_structures(bundles)
    probs = members[0].probs
    if len(members) > 1:  # a new array: the members' own probabilities may be combined again
        probs = probs.copy()
        for m in members[1:]:
            probs += m.probs
        probs /= len(members)
    lead = bundles[0]
    structures = list(lead.plan.structures)
    cx = None
    if cfg.postprocess:
        body = body_mask(image.array.astype(np.float32), lead.plan.normalisation)
        cx = float(image.geometry.index_to_world(np.asarray(ndimage.center_of_mass(body)))[0]) if body.any() else None
    labels, notes = _labels(probs, image.geometry, lead, cx, cfg.postprocess)
    plan_probs = plan_labels = None
    plan_preds = [m.plan_pred for m in members]
    grid = plan_preds[0].prepared.grid
    if cfg.keep_probabilities and all(p.prepared.grid == grid for p in plan_preds):
        # the same rules on the shared plan grid, for the QA confidence
        plan_probs = sum(p.probs for p in plan_preds) / len(plan_preds)
        plan_labels, _ = _labels(plan_probs, grid, lead, cx, cfg.postprocess)
    if len(members) == 1:
        model, version, names = lead.name, lead.version, []
    else:
        model = "ensemble of " + "+".join(dict.fromkeys(b.name for b in bundles))
        version = "+".join(b.version for b in bundles)
        names = member_names(bundles)
    return Segmentation(
        labels=image.with_array(labels), structures=structures,
        probabilities=probs.astype(np.float16) if cfg.keep_probabilities else None,
        plan_probabilities=plan_probs.astype(np.float16) if plan_probs is not None else None,
        plan_labels=plan_labels, model=model, version=version, members=names, tta=cfg.tta,
        subvoxel=any(m.subvoxel for m in members), notes=notes,
        seconds=(seconds or 0.0) + time.perf_counter() - t0,
    )


def segment_ensemble(image: Volume, members: Sequence[tuple[ModelBundle, nn.Module | None]],
                     *, config: PredictorConfig | None = None) -> Segmentation:
    """Segment one image with several models: their class probabilities averaged on the image's grid.

    Each member runs as :func:`segment_image` runs it alone (:func:`predict_member`: its own plan grid,
    normalisation, TTA and sub-voxel phases; ``config.subvoxel=None`` follows each bundle's recommendation);
    :func:`combine_members` then averages the probabilities and applies argmax and the anatomy rules of the
    first member's bundle. This is how nnU-Net combines its cross-validation folds. The plan-grid
    probabilities for the QA confidence are averaged too when every member works on the same plan grid,
    else not kept (the image grid's are).

    Args:
        members: ``(bundle, network)`` pairs; a None network is built from its bundle on the configured device.

    Raises:
        ConfigError: no member, or members that segment different structures.
        InvalidImageError: a non-scalar image.
    """
    if not members:
        raise ConfigError("an ensemble needs at least one model")
    check_same_structures([b for b, _ in members])  # before any pass (combine_members checks again)
    t0 = time.perf_counter()
    preds = [predict_member(image, bundle, network, config=config) for bundle, network in members]
    return combine_members(image, preds, config=config, seconds=time.perf_counter() - t0)


class Predictor:
    """A model (or an ensemble of models) loaded once and kept warm for repeated segmentation.

    Args:
        model: shipped name (``gtv-t1``, ``trufi``), bundle path/folder, or MLflow URI
            (``models:/sarcart-trufi@champion``); a list of them makes an ensemble
            (:func:`segment_ensemble`: the class probabilities averaged), e.g. the cross-validation folds.
        config: see :class:`PredictorConfig`.

    Attributes:
        bundle, bundle_path, network: the (first) model; ``bundles``, ``bundle_paths``, ``networks``: all.

    Raises:
        ConfigError: a model that cannot be found or read, or ensemble members of different structures
            (before any network is built).

    Example:
        >>> pred = Predictor("gtv-t1")                       # doctest: +SKIP
        >>> seg = pred(read_nifti("image.nii.gz"))           # doctest: +SKIP
        >>> seg.volumes_cc()                                  # doctest: +SKIP
    """

    def __init__(self, model: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                 config: PredictorConfig | None = None, store: str | os.PathLike[str] | None = None) -> None:
        self.config = config or PredictorConfig()
        refs = [model] if isinstance(model, (str, os.PathLike)) else list(model)
        if not refs:
            raise ConfigError("no model given: name a shipped model, a bundle path or an MLflow URI")
        self.sources = [str(r) for r in refs]
        self.source = self.sources[0] if len(refs) == 1 else ", ".join(self.sources)
        self.bundle_paths: list[Path] = [resolve_model(r, store=store) for r in refs]
        self.bundles: list[ModelBundle] = [load_bundle(p) for p in self.bundle_paths]
        for ref, bundle in zip(self.sources, self.bundles):
            if ref.startswith("models:/"):
                from sarcart import tracking

                bundle.meta["registry_uri"] = ref
                bundle.meta["version"] = tracking.registry_version(ref, store=store) or bundle.version
        check_same_structures(self.bundles, self.sources)
        self.bundle_path, self.bundle = self.bundle_paths[0], self.bundles[0]
        self.device = _device(self.config)
        self.networks = [b.network(self.device) for b in self.bundles]
        self.network = self.networks[0]
        for b, path in zip(self.bundles, self.bundle_paths):
            log.info("loaded %s (%s) on %s", b.name, path, self.device)

    @property
    def structures(self) -> list[str]:
        return list(self.bundle.plan.structures)

    def __call__(self, image: Volume) -> Segmentation:
        return segment_ensemble(image, list(zip(self.bundles, self.networks)), config=self.config)

    def masks(self, image: Volume) -> dict[str, np.ndarray]:
        """``{structure: boolean array}`` on the image grid (the evaluation interface)."""
        seg = self(image)
        return {s: seg.labels.array == k for k, s in enumerate(seg.structures, 1)}
