"""Feature maps from images and masks (volumes or files) with pyradiomics' preprocessing; map folders.

A map folder holds ``<class>_<Feature>.nii.gz`` (pyradiomics' names, e.g. ``glcm_Contrast.nii.gz``),
``roi.nii.gz`` (the ROI on the maps' grid after preprocessing and re-segmentation), ``params.yaml`` (the
resolved parameter set) and ``maps.json`` (settings hash, versions, voxel count, timings).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sarcart.errors import ConfigError, InvalidImageError
from sarcart.io.geometry import Volume
from sarcart.io.nifti import read_mask, read_nifti, write_mask, write_nifti
from sarcart.radiomics.extract import ImageLike, quiet_pyradiomics, to_sitk, versions
from sarcart.radiomics.maps.engine import compute_feature_maps
from sarcart.radiomics.maps.settings import FEATURES, MapSettings, resolve_features
from sarcart.radiomics.params import RadiomicsParams, load_params

log = logging.getLogger(__name__)

ROI_FILE = "roi.nii.gz"


@dataclass(frozen=True)
class FeatureMaps:
    """Maps on one grid.

    Attributes:
        maps: ``"<class>_<Feature>"`` -> float64 :class:`Volume`.
        roi: boolean ROI on the same grid.
        info: settings hash, versions, voxel count and timings.
    """

    maps: dict[str, Volume]
    roi: Volume
    info: dict[str, Any]

    def cropped(self, margin: int = 1) -> FeatureMaps:
        """The same maps cut to the ROI's bounding box plus ``margin`` voxels (geometry adjusted)."""
        return FeatureMaps({k: crop_volume(v, self.roi.array, margin) for k, v in self.maps.items()},
                           crop_volume(self.roi, self.roi.array, margin), dict(self.info))

    def stack(self, names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """ROI voxels x features matrix (float64) and the column names (sorted when ``names`` is None)."""
        cols = names or sorted(self.maps)
        mask = self.roi.array
        return np.stack([self.maps[c].array[mask] for c in cols], axis=1), cols


def crop_volume(volume: Volume, roi: np.ndarray, margin: int = 1) -> Volume:
    """``volume`` cut to the bounding box of ``roi`` (same grid) plus ``margin`` voxels."""
    from sarcart.io.geometry import Geometry

    idx = np.argwhere(roi)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, np.array(roi.shape))
    g = volume.geometry
    geo = Geometry(tuple(int(v) for v in hi - lo), g.spacing_mm, tuple(g.index_to_world(lo.astype(float))),  # type: ignore[arg-type]
                   g.direction)
    return Volume(np.ascontiguousarray(volume.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]), geo)


def preprocess(image: ImageLike, mask: ImageLike, params: RadiomicsParams) -> tuple[Volume, Volume]:
    """Apply pyradiomics' preprocessing (normalise, resample/crop, mask checks, re-segmentation).

    Returns:
        (image volume, boolean ROI volume) on the preprocessed grid.

    Raises:
        ConfigError: image types other than ``Original`` (maps are computed on the original image only).
        InvalidImageError: unreadable inputs or an ROI that pyradiomics rejects.
    """
    from radiomics import featureextractor, imageoperations

    quiet_pyradiomics()
    extra = set(params.data.get("imageType") or {"Original": {}}) - {"Original"}
    if extra:
        raise ConfigError(f"feature maps are computed on the Original image only; remove imageType {sorted(extra)}")
    settings = featureextractor.RadiomicsFeatureExtractor._getDefaultSettings()
    settings.update(params.settings)
    settings.update(params.voxel_settings)
    label = int(settings.get("label", 1))
    img = to_sitk(image, what="image")
    msk = to_sitk(mask, what="mask", mask=True)
    try:
        img, msk = featureextractor.RadiomicsFeatureExtractor.loadImage(img, msk, None, **settings)
        _, corrected = imageoperations.checkMask(img, msk, **settings)
        msk = corrected if corrected is not None else msk
        if settings.get("resegmentRange") is not None:
            msk = imageoperations.resegmentMask(img, msk, **settings)
            imageoperations.checkMask(img, msk, **settings)
    except (ValueError, RuntimeError) as exc:
        raise InvalidImageError(f"pyradiomics rejected the image/mask: {exc}") from exc
    vol = Volume.from_sitk(img)
    roi = Volume.from_sitk(msk)
    return vol, roi.with_array(roi.array == label)


def feature_maps(
    image: ImageLike,
    mask: ImageLike,
    params: RadiomicsParams | str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    radius: int | None = None,
    features: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> FeatureMaps:
    """Voxel-wise feature maps of an image x ROI with the settings of a pyradiomics parameter set.

    Args:
        image, mask: volumes or files (the mask's ROI is ``setting.label``).
        params: parameter set (default ``mr_default``); ``voxelSetting`` gives kernelRadius, maskedKernel
            and initValue; ``featureClass`` the maps to compute (``shape`` is ignored).
        radius: kernel radius overriding ``voxelSetting.kernelRadius``.
        features: ``{class: [names] or None}`` overriding ``featureClass``.
        device: torch device (``"cpu"``, ``"cuda"``...).
    """
    p = load_params(params)
    settings = MapSettings.from_pyradiomics({**p.settings, **p.voxel_settings}, kernel_radius=radius)
    wanted = resolve_features(features if features is not None else p.feature_classes)
    img, roi = preprocess(image, mask, p)
    if not roi.array.any():
        raise InvalidImageError("the ROI is empty after preprocessing (re-segmentation removed every voxel)")
    result = compute_feature_maps(img.array, roi.array, settings, features=wanted,
                                  spacing_mm=img.geometry.spacing_mm, device=device)
    maps = {k: Volume(v, img.geometry) for k, v in result.maps.items()}
    info = {"settings_hash": p.settings_hash, "params_source": p.source, "kernel_radius": settings.kernel_radius,
            "n_voxels": result.n_voxels, "device": str(device), "seconds": result.seconds, **versions()}
    return FeatureMaps(maps, roi, info)


def write_maps(fmaps: FeatureMaps, out_dir: str | os.PathLike[str], params: RadiomicsParams | None = None) -> Path:
    """Write a map folder (see the module docstring); returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, vol in fmaps.maps.items():
        write_nifti(vol.with_array(vol.array.astype(np.float32)), out / f"{name}.nii.gz")
    write_mask(fmaps.roi, out / ROI_FILE)
    (out / "maps.json").write_text(json.dumps({**fmaps.info, "maps": sorted(fmaps.maps)}, indent=1))
    if params is not None:
        (out / "params.yaml").write_text(params.to_yaml())
    return out


def read_maps(map_dir: str | os.PathLike[str], mask: ImageLike | None = None, *,
              names: list[str] | None = None) -> FeatureMaps:
    """Read a map folder; the ROI is ``mask`` (resampled by nearest neighbour onto the maps' grid, with a
    warning, when it lies on another grid) or the folder's ``roi.nii.gz``.

    Raises:
        InvalidImageError: no maps in the folder, maps on different grids, empty ROI.
    """
    folder = Path(map_dir)
    valid = {f"{c}_{n}" for c, ns in FEATURES.items() for n in ns}
    files = {f.name[: -len(".nii.gz")]: f for f in sorted(folder.glob("*.nii.gz"))}
    wanted = names or [k for k in files if k in valid]
    missing = [n for n in wanted if n not in files]
    if not wanted or missing:
        raise InvalidImageError(f"{folder} lacks feature maps {missing or '(none found)'}; "
                                "create them with `sarcart radiomics maps`")
    maps = {n: read_nifti(files[n]) for n in wanted}
    geo = next(iter(maps.values())).geometry
    for n, v in maps.items():
        geo.require_same(v.geometry, what=f"map {n}")
    roi = mask_on_grid(mask if mask is not None else folder / ROI_FILE, geo)
    if not roi.array.any():
        raise InvalidImageError("the ROI is empty on the maps' grid; check the mask")
    info = json.loads((folder / "maps.json").read_text()) if (folder / "maps.json").is_file() else {}
    return FeatureMaps(maps, roi, info)


def mask_on_grid(mask: ImageLike, geo: Any) -> Volume:
    """A boolean mask (file or volume) on grid ``geo``, resampled by nearest neighbour (with a warning)
    when it lies on another grid of the same world frame."""
    import SimpleITK as sitk

    roi = read_mask(mask) if not isinstance(mask, Volume) else mask.with_array(mask.array != 0)
    if not roi.geometry.is_close(geo):
        log.warning("mask is not on the maps' grid (%s); resampling it by nearest neighbour",
                    "; ".join(roi.geometry.differences(geo)))
        res = sitk.Resample(roi.with_array(roi.array.astype(np.uint8)).to_sitk(), geo.reference_image(),
                            sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        roi = Volume.from_sitk(res)
        roi = roi.with_array(roi.array != 0)
    return roi
