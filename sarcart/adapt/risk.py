"""The risk model of the adapt stage: which GTV voxels get the boost, from the maps the stage computes.

The stage computes a few cheap voxel feature maps on the GTV's bounding box
(:func:`sarcart.adapt.painting.gtv_feature_maps`). A risk model for the stage must be trained on exactly
those maps, so this module builds the training cases from phantom fractions with the same function and
the same :class:`~sarcart.adapt.config.PaintingSettings`, adds the anatomical-prior maps
(:func:`sarcart.radiomics.risk.add_geometry_maps`: depth below the GTV surface, relative depth, distance
to NECROSIS) and fits :func:`sarcart.radiomics.risk.train_risk_model` on them. Training, held-out
evaluation against the stage's unsupervised rule (the darkest habitat) and saving the shipped file are
done by ``benchmarks/bench_adapt_risk.py``; the model card is ``docs/models/adapt-risk.md``.

Shipped models live in ``sarcart/models/weights/<name>.skops`` (with ``<name>.json``: columns and
config) and are found by name (``adapt-risk``), like the shipped segmentation networks.

No real hypoxia-labelled data exist in this project: the shipped model is trained on the synthetic
phantom's HYPOXIA ground truth and demonstrates the pipeline; it is not a validated predictor.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sarcart.adapt.config import PaintingSettings
from sarcart.errors import ConfigError
from sarcart.io.geometry import Volume
from sarcart.radiomics.registry import WEIGHTS_DIR, resolve_model, shipped_risk_models  # noqa: F401 (WEIGHTS_DIR re-exported)

log = logging.getLogger(__name__)

#: name of the shipped adapt-stage risk model (``sarcart/models/weights/adapt-risk.skops``)
SHIPPED_RISK = "adapt-risk"


@functools.lru_cache(maxsize=4)
def load_risk_model(name_or_uri: str, store: str | None = None) -> Any:
    """A risk model by shipped name (``adapt-risk``), ``.skops`` path, MLflow URI or registered name
    (:func:`sarcart.radiomics.registry.resolve_model`), cached for the life of the process (the service
    runs many fractions).

    Raises:
        ConfigError: nothing found under that name (the message lists the shipped names).
    """
    try:
        return resolve_model(name_or_uri, store=store)
    except ConfigError as exc:
        raise ConfigError(f"risk model {name_or_uri!r}: {exc}; shipped models: {sorted(shipped_risk_models()) or 'none'}; "
                          "set painting.risk_model to one of them, a .skops file, or null (darkest habitat)") from exc


def map_names(model: Any) -> tuple[str, ...]:
    """Feature-map columns a model reads (without ``geo_*`` and ``cov_*``)."""
    return tuple(c for c in model.feature_names_in_ if not str(c).startswith(("geo_", "cov_")))


def stage_maps(image: Volume, gtv: Volume, settings: PaintingSettings, *, necrosis: Volume | None = None,
               extra: tuple[str, ...] = (), device: str = "cpu") -> Any:
    """The stage's feature maps on the GTV box plus the anatomical-prior maps.

    Args:
        image, gtv: today's image and GTV (same grid).
        settings: the painting settings (kernel, bins, features).
        necrosis: NECROSIS on the same grid, or None (distance to necrosis is then 100 mm everywhere).
        extra: further maps a risk model needs beyond ``settings.features``.

    Returns:
        :class:`~sarcart.radiomics.maps.io.FeatureMaps` on the cropped grid, ROI = GTV.
    """
    from sarcart.adapt.painting import gtv_feature_maps
    from sarcart.radiomics.maps.io import crop_volume
    from sarcart.radiomics.risk import add_geometry_maps

    feats = tuple(dict.fromkeys(settings.features + tuple(extra)))
    s = settings.model_copy(update={"features": feats}) if feats != settings.features else settings
    fm = gtv_feature_maps(image, gtv, s, device=device)
    nec = None
    if necrosis is not None and necrosis.array.any():
        nec = crop_volume(necrosis, np.asarray(gtv.array, bool), settings.kernel_radius).array.astype(bool)
    return add_geometry_maps(fm, fm.roi.array, nec)


@dataclass(frozen=True)
class StageCase:
    """One phantom fraction as the stage sees it: maps (ROI = GTV), HYPOXIA and NECROSIS on the maps' grid."""

    fmaps: Any
    hypoxia: np.ndarray
    necrosis: np.ndarray
    case_id: str


def stage_case(fx_dir: str | os.PathLike[str], settings: PaintingSettings, *, extra: tuple[str, ...] = (),
               case_id: str | None = None) -> StageCase:
    """Maps and truth of a phantom fraction folder (``image.nii.gz``, ``labels.nii.gz``, ``hypoxia.nii.gz``)."""
    from sarcart.io.labels import read_labels, structure_mask
    from sarcart.io.nifti import read_nifti
    from sarcart.radiomics.maps.io import crop_volume

    d = Path(fx_dir)
    image = read_nifti(d / "image.nii.gz")
    labels, spec = read_labels(d / "labels.nii.gz")
    gtv = structure_mask(labels, spec, "GTV")
    nec = structure_mask(labels, spec, "NECROSIS") if "NECROSIS" in spec.structures else gtv.with_array(
        np.zeros(gtv.geometry.shape, bool))
    hyp = read_nifti(d / "hypoxia.nii.gz")
    fm = stage_maps(image, gtv, settings, necrosis=nec, extra=extra)
    roi = np.asarray(gtv.array, bool)

    def cut(v: Volume) -> np.ndarray:
        return crop_volume(v, roi, settings.kernel_radius).array.astype(bool)

    return StageCase(fm, cut(hyp), cut(nec), case_id or f"{d.parents[1].name}/{d.parent.name}/{d.name}")


def darkest_habitat_risk(case: StageCase, settings: PaintingSettings) -> np.ndarray:
    """The stage's rule without a model: 1 in the darkest of ``settings.habitats`` k-means habitats, else 0.

    Returns:
        float32 array on the maps' grid (0 outside the ROI).
    """
    from sarcart.radiomics.habitats import HabitatConfig, assign, fit_habitats
    from sarcart.radiomics.maps.io import FeatureMaps

    fm = FeatureMaps({k: case.fmaps.maps[k] for k in settings.features}, case.fmaps.roi, case.fmaps.info)
    model = fit_habitats(fm, HabitatConfig(features=settings.features, k=settings.habitats, max_voxels=5000))
    return (assign(fm, model).array == 1).astype(np.float32)
