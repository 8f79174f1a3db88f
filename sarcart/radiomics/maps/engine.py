"""Voxel-wise radiomics feature maps in PyTorch (CPU or any torch device), pyradiomics-compatible.

:func:`compute_feature_maps` works on arrays already preprocessed; :func:`feature_maps` takes an
image and a mask (volumes or files) plus a pyradiomics parameter set, applies pyradiomics' own
preprocessing (normalisation, resampling, re-segmentation) and returns maps as :class:`Volume`s on the
preprocessed grid; :func:`write_maps` writes ``<class>_<Feature>.nii.gz`` (pyradiomics' names).

Agreement with pyradiomics' voxel-based mode is tested per voxel (``tests/radiomics/test_maps_*``). One
deliberate difference: pyradiomics (default ``voxelBatch``) returns NaN for ``glcm_JointAverage`` and
fails ``glcm_MCC`` for the whole batch when some kernel has a direction without pairs; sarcart averages
over the directions that have pairs, which is what pyradiomics returns with ``voxelBatch: 1``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sarcart.errors import InvalidImageError
from sarcart.radiomics.maps import firstorder, glcm, glrlm, glszm, neighbourhood
from sarcart.radiomics.maps.kernel import Chunk, KernelGeometry, Neighbourhoods, gather, iter_chunks
from sarcart.radiomics.maps.settings import MapSettings, resolve_features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapResult:
    """Maps and timings of one run.

    Attributes:
        maps: ``"<class>_<Feature>"`` -> (nx, ny, nz) float64 array (``init_value`` outside the ROI).
        n_voxels: ROI voxels computed.
        seconds: wall time per feature class (plus ``"prepare"``).
    """

    maps: dict[str, np.ndarray]
    n_voxels: int
    seconds: dict[str, float]


def _chunk_features(chunk: Chunk, hoods: Neighbourhoods, geo: KernelGeometry, *, cls: str, names: tuple[str, ...],
                    settings: MapSettings, voxel_volume_mm3: float) -> dict[str, torch.Tensor]:
    dev = chunk.levels.device
    if cls == "firstorder":
        return firstorder.firstorder_maps(chunk.raw, chunk.disc_fo, names, n_gray=hoods.n_gray,
                                          shift=settings.voxel_array_shift, voxel_volume_mm3=voxel_volume_mm3)
    if cls == "glcm":
        counts = glcm.glcm_matrices(chunk, geo, dev)
        return glcm.glcm_features(counts, chunk.gray, names, n_gray=hoods.n_gray, n_distinct=hoods.n_distinct)
    if cls == "glrlm":
        return glrlm.glrlm_features(glrlm.glrlm_matrices(chunk, geo, dev), chunk.gray, names)
    if cls == "glszm":
        return glszm.glszm_features(chunk, geo, names, device=dev)
    if cls == "gldm":
        return neighbourhood.gldm_features(chunk, geo, names, device=dev, alpha=settings.gldm_a)
    n, s = neighbourhood.ngtdm_vectors(chunk, geo, dev)
    return neighbourhood.ngtdm_features(n, s, chunk.gray, names=names)


def _checked(image: np.ndarray, roi: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    roi_b = np.asarray(roi) == label if np.asarray(roi).dtype != bool else np.asarray(roi)
    if image.ndim != 3 or image.shape != roi_b.shape:
        raise InvalidImageError(f"image and roi must be 3D arrays of one shape, got {image.shape} and {roi_b.shape}")
    if not roi_b.any():
        raise InvalidImageError(f"the ROI is empty (no voxel equals label {label}); check the mask")
    if not np.isfinite(image[roi_b]).all():
        raise InvalidImageError("the image holds NaN or infinite values inside the ROI; clean it first")
    return image, roi_b


_COST = {"firstorder": 1, "glcm": 13, "glrlm": 13, "glszm": 27, "gldm": 27, "ngtdm": 2}


def compute_feature_maps(
    image: np.ndarray,
    roi: np.ndarray,
    settings: MapSettings,
    *,
    features: Mapping[str, Any] | None = None,
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    device: str | torch.device = "cpu",
    chunk_budget: int = 4_000_000,
) -> MapResult:
    """Voxel-wise feature maps of every ROI voxel (kernel radius, binning and masking from ``settings``).

    Args:
        image: (nx, ny, nz) intensities (any real dtype; binning uses it as given, as pyradiomics does).
        roi: (nx, ny, nz) ROI (bool, or values equal to ``settings.label``).
        settings: see :class:`MapSettings`.
        features: pyradiomics ``featureClass`` mapping (class -> list of names or None); default all.
        spacing_mm: voxel size, for ``firstorder_TotalEnergy``.
        device: torch device for the computation (float64 throughout).
        chunk_budget: elements per chunk of texture matrices (memory bound; results do not depend on it).

    Returns:
        :class:`MapResult` with numpy maps on the input grid.

    Raises:
        InvalidImageError: shape mismatch, non-3D input, empty ROI, non-finite intensities in the ROI.
    """
    image, roi_b = _checked(image, roi, settings.label)
    wanted = resolve_features(features)
    dev = torch.device(device)
    t0 = time.perf_counter()
    lo = np.argwhere(roi_b).min(0)
    hi = np.argwhere(roi_b).max(0) + 1
    crop_shape = np.minimum(hi + settings.kernel_radius, roi_b.shape) - np.maximum(lo - settings.kernel_radius, 0)
    geo = KernelGeometry.build(settings.kernel_radius, tuple(bool(s > 1) for s in crop_shape))  # type: ignore[arg-type]
    hoods = gather(image, roi_b, settings, geometry=geo, device=dev)
    seconds = {"prepare": time.perf_counter() - t0}
    n_vox = hoods.raw.shape[0]
    voxel_volume = float(np.prod(spacing_mm))
    out: dict[str, np.ndarray] = {}
    for cls, names in wanted.items():
        t1 = time.perf_counter()
        values = {n: torch.empty(n_vox, dtype=torch.float64, device=dev) for n in names}
        for chunk in iter_chunks(hoods, budget=chunk_budget, cost_per_level2=_COST[cls]):
            for name, val in _chunk_features(chunk, hoods, geo, cls=cls, names=names, settings=settings,
                                             voxel_volume_mm3=voxel_volume).items():
                values[name][chunk.rows] = val
        for name, val in values.items():
            arr = np.full(roi_b.shape, settings.init_value, dtype=np.float64)
            idx = hoods.voxel_index
            arr[idx[:, 0], idx[:, 1], idx[:, 2]] = val.cpu().numpy()
            out[f"{cls}_{name}"] = arr
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds[cls] = time.perf_counter() - t1
        log.info("%s maps: %d features x %d voxels in %.1f s", cls, len(names), n_vox, seconds[cls])
    return MapResult(out, n_vox, seconds)
