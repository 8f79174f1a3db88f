"""Dataset fingerprint: spacings, shapes, intensities inside the body and structure volumes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from sarcart.io.geometry import Geometry
from sarcart.io.labels import read_labels
from sarcart.io.nifti import read_nifti
from sarcart.models.plan import Fingerprint, Normalisation
from sarcart.progress import progress
from sarcart.training.preprocess import body_mask, reorient_lps

log = logging.getLogger(__name__)

_SAMPLES_PER_CASE = 20000


def compute_fingerprint(entries: list[dict], structures: list[str], *, seed: int = 0,
                        show_progress: bool = True) -> Fingerprint:
    """Fingerprint of the datalist entries (absolute ``image``/``label`` paths).

    Intensity statistics pool up to 20 000 random body voxels per case (raw image units), so every
    case weighs the same. Shapes and spacings are taken after reorientation to the LPS axes.
    """
    rng = np.random.default_rng(seed)
    spacings, shapes, samples = [], [], []
    volumes: dict[str, list[float]] = {s: [] for s in structures}
    norm = Normalisation()
    for e in progress(entries, "fingerprint", enabled=show_progress):
        image = read_nifti(e["image"])
        lps = Geometry.from_sitk(reorient_lps(image.geometry.reference_image()))
        spacings.append(lps.spacing_mm)
        shapes.append(lps.shape)
        arr = image.array.astype(np.float32)
        vals = arr[body_mask(arr, norm)]
        samples.append(rng.choice(vals, size=min(_SAMPLES_PER_CASE, vals.size), replace=False))
        labels, spec = read_labels(e["label"])
        for s in structures:
            ids = spec.structures.get(s, ())
            volumes[s].append(float(np.isin(labels.array, ids).sum() * labels.geometry.voxel_volume_cc))
    pooled = np.concatenate(samples)
    intensity = {
        "mean": float(pooled.mean()), "std": float(pooled.std()),
        "p00_5": float(np.percentile(pooled, 0.5)), "p50": float(np.percentile(pooled, 50)),
        "p99_5": float(np.percentile(pooled, 99.5)),
    }
    return Fingerprint(n_cases=len(entries), structures=list(structures), spacings_mm=spacings, shapes=shapes,
                       intensity=intensity, structure_volumes_cc=volumes)


def save_fingerprint(fp: Fingerprint, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(fp.model_dump(mode="json"), indent=1))
    return p


def load_fingerprint(path: str | os.PathLike[str]) -> Fingerprint:
    return Fingerprint.model_validate_json(Path(path).read_text())
