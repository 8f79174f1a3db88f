"""Shared helpers of the cohort tests: a tiny phantom cohort (made once per session) and fast parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

#: pyradiomics settings for tests: mr_default on the native grid, three classes (fast, exact voxel volumes)
FAST_PARAMS = {"base": "mr_default", "setting": {"resampledPixelSpacing": None},
               "featureClass": {"firstorder": None, "shape": None, "glcm": ["Contrast", "JointEntropy", "Idm"]}}

_MADE: dict[str, Path] = {}


def make_tiny_cohort(root: Path) -> Path:
    """Two lower-extremity phantom patients, fx00 + fx01, 3 x 3 x 6 mm voxels (about 2 s)."""
    from sarcart.phantom import make_spec, write_cohort

    out = root / "tiny"
    spec = make_spec(patients=2, fractions=1, site="lower_extremity", seed=11, spacing_mm=(3.0, 3.0, 6.0),
                     fov_mm=(220.0, 220.0, 200.0), tumour_cc=(80.0, 200.0), workers=1)
    write_cohort(spec, out, show_progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "tiny" not in _MADE:
        _MADE["tiny"] = make_tiny_cohort(tmp_path_factory.mktemp("cohort"))
    return _MADE["tiny"]


def write_manifest(path: Path, rows: list[dict[str, object]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def tiny_rows(cohort: Path, *, outcome: bool = True) -> list[dict[str, object]]:
    """Manifest rows (paths relative to ``cohort``) of every fraction of the tiny cohort."""
    rows = []
    for i, patient in enumerate(sorted(p.name for p in cohort.glob("SYN-*"))):
        for fx in (0, 1):
            rows.append({"patient": patient, "fraction": fx, "image": f"{patient}/fx{fx:02d}/image.nii.gz",
                         "mask": f"{patient}/fx{fx:02d}/labels.nii.gz", "roi": "GTV",
                         **({"response": i % 2, "age": 40 + i} if outcome else {})})
    return rows


def gtv(cohort: Path, patient: str, fx: int) -> np.ndarray:
    from sarcart.io.labels import read_labels, structure_mask

    labels, spec = read_labels(cohort / patient / f"fx{fx:02d}" / "labels.nii.gz")
    return structure_mask(labels, spec, "GTV").array


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))
