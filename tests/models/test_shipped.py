"""The segmentation models shipped in the package: size rule, and each model against a reference label.

Values obtained another way: the expert GTV of a real case (../shared/data/sts_mr_t1, a case the shipped
all-data gtv-t1 model was trained on, so this checks that the shipped weights are the fitted ones, not how
well they generalise - that is the cross-validation in docs/models/gtv-t1.md); for trufi, the phantom's
ground truth of one image of the frozen test cohort, regenerated from its committed spec, against the
scores measured for that image when the model was shipped (docs/models/trufi.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import REPO, shared_path, synth_patients

from sarcart.models.bundle import load_bundle, shipped_models

MAX_MB = 30.0


def test_every_shipped_bundle_is_small_and_describes_itself() -> None:
    models = shipped_models()
    assert {"trufi", "gtv-t1"} <= set(models)
    for name, path in models.items():
        assert path.stat().st_size / 2**20 <= MAX_MB, name
        b = load_bundle(path)
        assert b.meta["name"] == name == b.plan.task
        assert b.meta["version"]


def test_shipped_gtv_t1_reproduces_a_training_case() -> None:
    from sarcart.inference.predictor import Predictor
    from sarcart.io.nifti import read_nifti

    case = shared_path("sts_mr_t1", "STS_002")
    torch.set_num_threads(2)
    image = read_nifti(case / "image.nii.gz")
    ref = read_nifti(case / "gtv.nii.gz").array > 0
    pred = Predictor("gtv-t1").masks(image)["GTV"]
    dice = 2 * np.count_nonzero(pred & ref) / (np.count_nonzero(pred) + np.count_nonzero(ref))
    assert dice == pytest.approx(0.90, abs=0.04)   # measured 0.897 when v2 shipped (2026-12-07; v1: 0.912)


#: Dice of the shipped trufi v3.1 (v3's weights, averaging over the plan grid's sub-voxel phases as its bundle
#: recommends) on snr20/SYN-RP-001_fx01 of the frozen test cohort, measured by benchmarks/bench_model_compare.py
#: when it was shipped (2026-11-28, `--subvoxel`; docs/models/trufi.md). One pass gave 0.829 / 0.939 / 0.948 / 0.948.
TRUFI_V31_SNR20_P1_FX01 = {"GTV": 0.836, "BOWEL": 0.958, "KIDNEY_L": 0.964, "KIDNEY_R": 0.962}


def test_shipped_trufi_reproduces_its_test_cohort_scores_on_a_regenerated_image(tmp_path) -> None:
    from sarcart.inference.predictor import Predictor
    from sarcart.training.evaluation import evaluate_cases

    cohort = synth_patients(tmp_path / "snr20", spec=REPO / "configs/cohorts/trufi_test_snr20.yaml")
    fx = cohort / "SYN-RP-001" / "fx01"
    torch.set_num_threads(2)
    pred = Predictor("trufi")
    assert pred.bundle.version == "3.1" and pred.bundle.meta["inference"]["subvoxel"] is True
    table = evaluate_cases(pred.masks, [{"case": "p1", "image": str(fx / "image.nii.gz"),
                                         "label": str(fx / "labels.nii.gz")}],
                           list(TRUFI_V31_SNR20_P1_FX01), show_progress=False)
    got = table[table.region == "all"].set_index("structure").dice.to_dict()
    for s, want in TRUFI_V31_SNR20_P1_FX01.items():
        assert got[s] == pytest.approx(want, abs=0.005), s
