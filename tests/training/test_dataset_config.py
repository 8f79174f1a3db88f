"""dataset build (NIfTI, course and DICOM layouts; skips with reasons; patient-level folds) and configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import shared_path

from sarcart.errors import ConfigError
from sarcart.io.labels import read_labels
from sarcart.io.nifti import read_mask, write_mask, write_nifti
from sarcart.training.config import load_config
from sarcart.training.dataset import assign_folds, build_dataset, load_datalist, split
from sarcart.training.toy import toy_case, write_toy_dataset


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    write_toy_dataset(root, 4, seed=1, shape=(24, 24, 12), kidneys=True)
    # a course: two fractions of one patient
    for fx in ("fx00", "fx01"):
        image, masks = toy_case(7 if fx == "fx00" else 8, shape=(24, 24, 12), kidneys=True)
        write_nifti(image, root / "course_pt" / fx / "image.nii.gz")
        for n, m in masks.items():
            write_mask(m, root / "course_pt" / fx / "masks" / f"{n}.nii.gz")
    # skipped: no kidneys; empty GTV; no masks at all
    image, masks = toy_case(9, shape=(24, 24, 12))
    write_nifti(image, root / "no_kidneys" / "image.nii.gz")
    write_mask(masks["GTV"], root / "no_kidneys" / "gtv.nii.gz")
    image, masks = toy_case(10, shape=(24, 24, 12), kidneys=True)
    write_nifti(image, root / "empty_gtv" / "image.nii.gz")
    for n, m in masks.items():
        write_mask(m.with_array(np.zeros_like(m.array)) if n == "GTV" else m, root / "empty_gtv" / f"{n}.nii.gz")
    (root / "not_a_case").mkdir()
    return root


def test_build_writes_labels_folds_and_reasons(cohort, tmp_path):
    structures = ["GTV", "KIDNEY_L", "KIDNEY_R"]
    rep = build_dataset(cohort, tmp_path / "set", structures=structures, n_folds=3, seed=0)
    data = json.loads(rep.datalist.read_text())
    cases = {c["case"]: c for c in data["training"]}
    assert set(cases) == {"toy_000", "toy_001", "toy_002", "toy_003", "course_pt_fx00", "course_pt_fx01"}
    reasons = {s["case"]: s["reason"] for s in data["skipped"]}
    assert "missing structure(s) KIDNEY_L, KIDNEY_R" in reasons["no_kidneys"]
    assert reasons["empty_gtv"] == "structure GTV is empty"
    assert "no DICOM image series" in reasons["not_a_case"]
    # both fractions of one patient share a fold; folds are balanced over patients (5 patients, 3 folds)
    assert cases["course_pt_fx00"]["fold"] == cases["course_pt_fx01"]["fold"]
    assert cases["course_pt_fx00"]["patient"] == cases["course_pt_fx01"]["patient"] != "course_pt"  # hashed
    # label map = the masks, volume = voxel count x voxel volume
    labels, spec = read_labels(tmp_path / "set" / "labelsTr" / "toy_002.nii.gz")
    for k, name in enumerate(structures, start=1):
        truth = read_mask(cohort / "toy_002" / f"{name}.nii.gz")
        assert np.array_equal(labels.array == k, truth.array)
        assert spec.structures[name] == (k,)
        cc = truth.array.sum() * truth.geometry.voxel_volume_cc
        assert cases["toy_002"]["volumes_cc"][name] == pytest.approx(cc)
    loaded = load_datalist(rep.datalist)
    train, val = split(loaded, 0)
    assert len(train) + len(val) == 6 and {e["fold"] for e in val} == {0}
    assert split(loaded, "all") == (loaded["training"], [])


def test_folds_are_balanced_deterministic_and_by_patient():
    patients = [f"p{i}" for i in range(34)]
    folds = assign_folds(patients, 5, seed=0)
    assert folds == assign_folds(list(reversed(patients)), 5, seed=0)
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 34
    assert folds != assign_folds(patients, 5, seed=1)


def test_bad_structures_and_source(tmp_path):
    with pytest.raises(ConfigError, match="canonical"):
        build_dataset(tmp_path, tmp_path / "o", structures=["TUMOUR_X"])
    with pytest.raises(ConfigError, match="not found"):
        build_dataset(tmp_path / "nope", tmp_path / "o", structures=["GTV"])
    (tmp_path / "empty").mkdir()  # no patient folder at all: say what the folder must hold
    with pytest.raises(ConfigError, match="no patient folder in .*one sub-folder per patient"):
        build_dataset(tmp_path / "empty", tmp_path / "o", structures=["GTV"])
    (tmp_path / "one" / "P1").mkdir(parents=True)  # a patient folder with nothing readable: its reason
    with pytest.raises(ConfigError, match="no usable case in .*P1: "):
        build_dataset(tmp_path / "one", tmp_path / "o", structures=["GTV"])


def test_dicom_rtstruct_case_matches_the_nifti_mask(tmp_path):
    dicom = shared_path("sts_mr_t1_dicom")
    nifti = shared_path("sts_mr_t1", "STS_002", "gtv.nii.gz")
    rep = build_dataset(dicom, tmp_path / "d", structures=["GTV"], n_folds=2)
    assert [c["case"] for c in rep.cases] == ["STS_002"]
    labels, _ = read_labels(tmp_path / "d" / "labelsTr" / "STS_002.nii.gz")
    ref = read_mask(nifti).array
    got = labels.array == 1
    dice = 2 * (got & ref).sum() / (got.sum() + ref.sum())
    assert dice > 0.97  # the RTSTRUCT contours rasterised vs the published mask


def test_config_rejects_unknown_keys_and_resolves_paths(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: demo\ndatalist: data/datalist.json\nbudget: {time_budget_min: 5, colour: red}\n")
    with pytest.raises(ConfigError, match=r"budget\.colour"):
        load_config(cfg)
    cfg.write_text("task: demo\ndatalist: data/datalist.json\noptim: {name: adamw, lr: 0.01}\n")
    c = load_config(cfg)
    assert c.datalist == (tmp_path / "data" / "datalist.json").resolve()
    assert c.experiment_name == "sarcart-demo" and c.registered_name == "sarcart-demo"
    cfg.write_text("task: Bad Name\ndatalist: x.json\n")
    with pytest.raises(ConfigError, match="task"):
        load_config(cfg)
    # init_from: a bundle file is taken from the config's folder, as the datalist; a shipped name or URI is kept
    cfg.write_text("task: demo\ndatalist: d.json\ninit_from: models/start.pt\n")
    assert load_config(cfg).init_from == str((tmp_path / "models" / "start.pt").resolve())
    cfg.write_text("task: demo\ndatalist: d.json\ninit_from: models:/sarcart-trufi@champion\n")
    assert load_config(cfg).init_from == "models:/sarcart-trufi@champion"


def test_every_training_config_in_the_repository_loads_and_a_continued_one_sets_its_length():
    from sarcart import tracking

    files = sorted((tracking.project_root() / "configs" / "train").glob("*.yaml"))
    assert len(files) >= 4
    for f in files:
        c = load_config(f)
        if c.init_from:  # continued_plan refuses a continued run without budget.epochs
            assert c.budget.epochs is not None, f


def test_several_roots_are_merged_with_prefixed_names(tmp_path):
    for cohort in ("a", "b"):
        write_toy_dataset(tmp_path / cohort, 2, seed=3, shape=(16, 16, 8))  # the same names in both
    rep = build_dataset([tmp_path / "a", tmp_path / "b"], tmp_path / "set", structures=["GTV"], n_folds=2)
    assert sorted(c["case"] for c in rep.cases) == ["a_toy_000", "a_toy_001", "b_toy_000", "b_toy_001"]
    assert len({c["patient"] for c in rep.cases}) == 4
