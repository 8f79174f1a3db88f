"""Habitats on synthetic feature maps with known clusters: recovery, choice of k, matching across fractions,
NIfTI/JSON/DICOM SEG outputs."""

from __future__ import annotations

import numpy as np
import pytest

from sarcart.io.dicom_series import read_dicom_series
from sarcart.io.dicom_write import write_dicom_series
from sarcart.io.geometry import Geometry, Volume
from sarcart.radiomics.habitat_io import write_habitats
from sarcart.radiomics.habitats import (
    HabitatConfig,
    HabitatModel,
    assign,
    fit_habitats,
    habitats_for_course,
    match_to_reference,
)
from sarcart.radiomics.maps.io import FeatureMaps
from sarcart.radiomics.seg import read_habitat_seg

FEATS = ("firstorder_Mean", "glcm_Contrast")
GEO = Geometry((30, 28, 12), (1.5, 1.5, 3.0), (5.0, -20.0, 10.0))


def synthetic_maps(seed: int, shift: float = 0.0) -> tuple[FeatureMaps, np.ndarray]:
    """Three regions of an ellipsoid with distinct (mean, contrast) pairs plus noise; returns maps + truth."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in GEO.shape], indexing="ij")
    roi = ((ii - 15) / 12) ** 2 + ((jj - 14) / 11) ** 2 + ((kk - 6) / 5) ** 2 <= 1
    truth = np.where(ii < 11, 1, np.where(jj < 14, 2, 3)) * roi
    centres = {1: (100.0, 5.0), 2: (160.0, 9.0), 3: (220.0, 2.0)}
    maps = {}
    for f, name in enumerate(FEATS):
        arr = np.zeros(GEO.shape)
        for h, c in centres.items():
            arr[truth == h] = c[f] + shift * (f == 0)
        arr += rng.normal(0, 8.0 if f == 0 else 0.6, GEO.shape)
        maps[name] = Volume(np.where(roi, arr, 0.0), GEO)
    return FeatureMaps(maps, Volume(roi, GEO), {}), truth


def _agreement(labels: np.ndarray, truth: np.ndarray) -> float:
    roi = truth > 0
    return float((labels[roi] == truth[roi]).mean())


def test_three_habitats_are_recovered_and_k_is_chosen() -> None:
    fm, truth = synthetic_maps(0)
    model = fit_habitats(fm, HabitatConfig(features=FEATS, k_min=2, k_max=5))
    assert model.k == 3 and max(model.scores, key=model.scores.get) == 3
    labels = assign(fm, model).array
    assert _agreement(labels, truth) > 0.98  # habitats numbered by increasing mean = the truth's numbering
    assert np.all(labels[truth == 0] == 0)


def test_gmm_with_bic_finds_the_same_habitats() -> None:
    fm, truth = synthetic_maps(1)
    model = fit_habitats(fm, HabitatConfig(features=FEATS, method="gmm", k_min=2, k_max=4))
    assert model.k == 3
    assert _agreement(assign(fm, model).array, truth) > 0.98


def test_labels_are_matched_across_fractions() -> None:
    """A later fraction, clustered on its own, gets the reference's numbering (Hungarian on centroids)."""
    ref_maps, truth = synthetic_maps(2)
    later, truth_later = synthetic_maps(3, shift=10.0)
    labels, models = habitats_for_course([ref_maps, later], HabitatConfig(features=FEATS, k=3))
    assert _agreement(labels[0].array, truth) > 0.98 and _agreement(labels[1].array, truth_later) > 0.98
    perm = np.array([2, 0, 1])
    scrambled = HabitatModel(models[1].config, models[1].mean, models[1].scale, models[1].centroids[perm])
    assert np.allclose(match_to_reference(models[0], scrambled).centroids, models[1].centroids)


def test_outputs_nifti_json_and_dicom_seg(tmp_path) -> None:
    fm, _ = synthetic_maps(4)
    model = fit_habitats(fm, HabitatConfig(features=FEATS, k=3))
    labels = assign(fm, model)
    image = Volume((fm.maps["firstorder_Mean"].array).astype(np.int16), GEO)
    write_dicom_series(image, tmp_path / "mr", uid_seed="habitats-test")
    paths = write_habitats(labels, model, tmp_path / "out", series=tmp_path / "mr")
    assert [p.name for p in paths] == ["habitats.nii.gz", "habitats.json", "habitats_seg.dcm"]
    again = HabitatModel.from_json((tmp_path / "out" / "habitats.json").read_text())
    assert np.array_equal(assign(fm, again).array, labels.array)
    seg = read_habitat_seg(tmp_path / "out" / "habitats_seg.dcm", read_dicom_series(tmp_path / "mr"))
    assert np.array_equal(seg.array, labels.array)


@pytest.mark.integration
def test_dicom_seg_passes_dciodvfy(tmp_path) -> None:
    import subprocess

    from helpers import require_tool

    tool = require_tool("dciodvfy", "dicom3tools")
    fm, _ = synthetic_maps(5)
    model = fit_habitats(fm, HabitatConfig(features=FEATS, k=3))
    write_dicom_series(Volume(fm.maps["firstorder_Mean"].array.astype(np.int16), GEO), tmp_path / "mr", uid_seed="s")
    write_habitats(assign(fm, model), model, tmp_path / "out", series=tmp_path / "mr")
    res = subprocess.run([tool, str(tmp_path / "out" / "habitats_seg.dcm")], capture_output=True, text=True, check=False)
    errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
