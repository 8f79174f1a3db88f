"""Patient-specific fine-tuning on CPU: a tiny population model, a tiny synthetic course, MLflow in a temp store."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from sarcart import tracking
from sarcart.errors import ConfigError
from sarcart.io.course import CourseConfig, Prescription, write_course
from sarcart.io.labels import LabelSpec, write_labels
from sarcart.io.nifti import write_mask, write_nifti
from sarcart.models.bundle import ModelBundle, load_bundle, save_bundle
from sarcart.models.networks import build_network
from sarcart.training.config import AugmentConfig, OptimConfig
from sarcart.training.dataset import build_dataset, load_datalist
from sarcart.training.finetune import (
    FinetuneConfig,
    choose_fractions,
    choose_structures,
    compare,
    fine_tune,
    finetune,
    model_name,
    patient_model,
)
from sarcart.training.toy import toy_case, write_toy_dataset

SHAPE = (32, 32, 16)
SPEC = LabelSpec(values={1: "GTV"}, structures={"GTV": (1,)})
NO_AUG = AugmentConfig(enabled=False)


def _patient(root, *, name="TOY-PAT-7", fractions=3):
    """A course whose tumour is DARKER than the body (the population's toy tumours are brighter)."""
    write_course(root, CourseConfig(patient=name, site="retroperitoneum", synthetic=True,
                                    prescription=Prescription(dose_gy=48, fractions=fractions)))
    for i in range(fractions):
        image, masks = toy_case(500 + i, shape=SHAPE)
        # the same tumour every day, shifted by i voxels (a set-up shift), inside the body
        gtv = np.roll(toy_case(77, shape=SHAPE)[1]["GTV"].array, i, axis=0) & (image.array > 250)
        arr = image.array.copy()
        arr[masks["GTV"].array] = 500 + np.random.default_rng(i).normal(0, 75, int(masks["GTV"].array.sum()))
        arr[gtv] = 0.45 * 500 + np.random.default_rng(i + 9).normal(0, 75, int(gtv.sum()))
        fx = root / f"fx{i:02d}"
        write_nifti(image.with_array(arr.astype(np.float32)), fx / "image.nii.gz")
        write_labels(image.with_array(gtv.astype(np.uint8)), SPEC, fx / "labels.nii.gz")
    return root


def _tiny_plan():
    """The tiny configuration's plan (configs/train/tiny.yaml), written out to skip the fingerprint."""
    from sarcart.models.plan import NetworkPlan, Plan, Schedule

    net = NetworkPlan(name="DynUNet", kernel_size=[(3, 3, 3)] * 3, strides=[(1, 1, 1), (2, 2, 2), (2, 2, 2)],
                      filters=[8, 16, 32], deep_supervision=True, deep_supr_num=1)
    sched = Schedule(epochs=1, iterations_per_epoch=1, batch_size=2, est_seconds_per_iteration=0.1,
                     est_training_minutes=0.1)
    return Plan(task="tiny", structures=["GTV"], target_spacing_mm=(2.0, 2.0, 3.0), patch_size=(32, 32, 16),
                network=net, schedule=sched, flip_axes=(0, 1, 2))


def _cfg(lr, **kw):  # one thread: two spin-waiting threads on a shared, loaded CPU are ~10x slower
    return FinetuneConfig(epochs=6, iterations_per_epoch=5, optim=OptimConfig(lr=lr, weight_decay=0.0),
                          augment=NO_AUG, threads=1, **kw)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ft")
    write_toy_dataset(root / "toy", 6, seed=3, shape=SHAPE)
    rep = build_dataset(root / "toy", root / "set", structures=["GTV"], n_folds=3, seed=0)
    plan = _tiny_plan()
    torch.manual_seed(0)
    init = ModelBundle(plan, build_network(plan.network, out_channels=plan.n_classes).state_dict(), {"name": "tiny"})
    population, _, _ = fine_tune(init, load_datalist(rep.datalist)["training"], _cfg(0.02))  # the toy cohort
    pop_path = save_bundle(population, root / "population.pt")
    return {"root": root, "population": pop_path, "patient": _patient(root / "patient"), "store": root / "mlruns"}


def _table(sdice, hd95, structures=("GTV", "BOWEL")):
    return pd.DataFrame([{"structure": s, "region": "all", "dice": d, "surface_dice_2mm": d, "hd95_mm": h}
                         for s, d, h in zip(structures, sdice, hd95)])


def test_keep_rule_on_known_metric_tables():
    pop = _table([0.80, 0.60], [4.0, 10.0])
    keep, t = compare(pop, _table([0.80, 0.70], [4.0, 8.0]))  # equal GTV, better BOWEL: not worse -> keep
    assert keep and t["not_worse"].all()
    assert t.set_index("structure").at["BOWEL", "hd95_mm_gain"] == pytest.approx(-2.0)
    keep, t = compare(pop, _table([0.95, 0.59], [2.0, 9.0]))  # BOWEL surface Dice 0.01 worse -> reject
    assert not keep and t.set_index("structure")["not_worse"].to_dict() == {"GTV": True, "BOWEL": False}
    keep, _ = compare(pop, _table([0.90, 0.70], [4.5, 8.0]))  # GTV HD95 0.5 mm worse -> reject ...
    assert not keep
    keep, _ = compare(pop, _table([0.90, 0.70], [4.5, 8.0]), hd95_tolerance_mm=0.5)  # ... unless tolerated
    assert keep
    keep, t = compare(pop, _table([0.90, np.nan], [3.0, np.nan]))  # a structure lost by the patient model
    assert not keep and not t.set_index("structure").at["BOWEL", "not_worse"]
    absent = _table([0.8, np.nan], [4.0, np.nan])  # BOWEL absent from the held-out reference: not scored
    keep, t = compare(absent, absent)
    assert keep and t["scored"].tolist() == [True, False]
    keep, _ = compare(_table([np.nan], [np.nan], ["GTV"]), _table([np.nan], [np.nan], ["GTV"]))
    assert not keep  # nothing scored: nothing shows the patient model is not worse


def test_default_tolerances_forgive_the_metrics_resolution_and_nothing_more():
    cfg = FinetuneConfig()
    tol = {"sdice_tolerance": cfg.sdice_tolerance, "hd95_tolerance_mm": cfg.hd95_tolerance_mm}
    pop = _table([0.915, 0.60], [3.0, 10.0], ("KIDNEY_L", "GTV"))
    # the measured case (BENCHMARKS.md): kidney surface Dice 0.915 -> 0.909, HD95 equal; GTV much better
    keep, _ = compare(pop, _table([0.909, 0.75], [3.0, 4.2], ("KIDNEY_L", "GTV")), **tol)
    assert keep and not compare(pop, _table([0.909, 0.75], [3.0, 4.2], ("KIDNEY_L", "GTV")))[0]
    # one voxel (1.5 mm) of HD95 is tolerated, two are not; 0.02 of surface Dice is not
    assert compare(pop, _table([0.915, 0.60], [4.5, 10.0], ("KIDNEY_L", "GTV")), **tol)[0]
    assert not compare(pop, _table([0.915, 0.60], [6.0, 10.0], ("KIDNEY_L", "GTV")), **tol)[0]
    assert not compare(pop, _table([0.895, 0.75], [3.0, 4.2], ("KIDNEY_L", "GTV")), **tol)[0]


def test_per_structure_choice_takes_the_patient_model_where_it_is_not_worse():
    # the measured case with trufi 3.1 (BENCHMARKS.md): GTV much better, KIDNEY_L surface Dice 0.913 -> 0.891
    names = ["GTV", "BOWEL", "KIDNEY_L", "KIDNEY_R"]
    pop = _table([0.420, 0.90, 0.913, 0.907], [12.1, 3.0, 3.0, 4.0], names)
    pat = _table([0.704, 0.91, 0.891, 0.929], [4.2, 3.0, 3.0, 4.0], names)
    keep, t = compare(pop, pat, sdice_tolerance=0.01, hd95_tolerance_mm=1.5)
    assert not keep  # all-or-nothing: rejected
    assert choose_structures(t, names) == ["GTV", "BOWEL", "KIDNEY_R"]
    assert choose_structures(t, names, per_structure=False) == []
    # all not worse: every structure either way, also one the held-out fraction could not score
    absent = _table([0.8, np.nan], [4.0, np.nan], ("GTV", "BOWEL"))
    _, t = compare(absent, _table([0.9, np.nan], [3.0, np.nan], ("GTV", "BOWEL")))
    assert choose_structures(t, ["GTV", "BOWEL"], per_structure=False) == ["GTV", "BOWEL"]
    assert choose_structures(t, ["GTV", "BOWEL"]) == ["GTV"]  # no evidence for BOWEL: the population keeps it
    # nothing scored: nothing is taken from the patient model
    _, t = compare(_table([np.nan], [np.nan], ["GTV"]), _table([np.nan], [np.nan], ["GTV"]))
    assert choose_structures(t, ["GTV"]) == [] and choose_structures(t, ["GTV"], per_structure=False) == []


def test_fraction_choice_never_fine_tunes_on_the_held_out_fraction():
    assert choose_fractions([0, 1, 2]) == ([0, 1], 2)
    assert choose_fractions([0, 1, 2, 3], fractions=[1, 2]) == ([1, 2], 3)
    assert choose_fractions([0, 1, 2, 3], fractions=[2, 3]) == ([2, 3], 1)
    assert choose_fractions([0, 1, 2], holdout=0) == ([1, 2], 0)
    with pytest.raises(ConfigError, match="must not be used for fine-tuning"):
        choose_fractions([0, 1, 2], fractions=[1, 2], holdout=2)
    with pytest.raises(ConfigError, match=r"\[5\] have no approved contours"):
        choose_fractions([0, 1, 2], fractions=[1, 5])
    with pytest.raises(ConfigError, match="no approved fraction is left"):
        choose_fractions([1, 2], fractions=[1, 2])


def test_kept_only_when_not_worse_and_the_alias_moves_only_then(setup, tmp_path):
    import mlflow

    from sarcart.inference.predictor import Predictor, PredictorConfig
    from sarcart.io.labels import read_labels
    from sarcart.io.nifti import read_nifti
    from sarcart.training.metrics import mask_metrics

    store, patient = setup["store"], setup["patient"]
    name = model_name("tiny", patient)
    assert name == f"sarcart-tiny-patient-{tracking.hash_id('TOY-PAT-7')}"
    assert patient_model(patient, "tiny", store=store) is None
    good = finetune(patient, setup["population"], fractions=[0, 1], config=_cfg(0.01, fit_loss=True),
                    out=tmp_path / "good", store=store)
    assert good.holdout == 2 and good.fit_fractions == [0, 1]
    assert set(good.sources) == {"fx00", "fx01", "fx02"} and "labels.nii.gz" in good.sources["fx01"]
    # the loss on the fine-tuning fractions falls (the same whole-image loss, before and after)
    assert good.loss_after < 0.7 * good.loss_before, (good.loss_before, good.loss_after)
    row = good.comparison.set_index("structure").loc["GTV"]
    assert row["surface_dice_2mm_patient"] > row["surface_dice_2mm_baseline"] + 0.2, row.to_dict()
    assert good.kept and good.version == "1" and good.structures == ["GTV"]
    assert load_bundle(good.bundle_path).meta["patient_structures"] == ["GTV"]
    assert patient_model(patient, "tiny", store=store) == f"models:/{name}/1"
    # the table's held-out HD95 is what the service's predictor on the saved bundle, scored independently, gives
    ref = read_labels(patient / "fx02" / "labels.nii.gz")[0]
    deployed = Predictor(good.bundle_path, config=PredictorConfig(tta=False, device="cpu"))
    pred = deployed.masks(read_nifti(patient / "fx02" / "image.nii.gz"))["GTV"]
    assert mask_metrics(pred, ref.array == 1, ref.geometry.spacing_mm)["hd95_mm"] == pytest.approx(
        row["hd95_mm_patient"], abs=1e-4)

    # a deliberately worse model: fine-tune the kept model v1 again on approved contours that are wrong
    bad_dir = tmp_path / "same-patient"
    shutil.copytree(patient, bad_dir)
    for i in (0, 1):
        lab = read_labels(bad_dir / f"fx{i:02d}" / "labels.nii.gz")[0]
        write_mask(lab.with_array(np.roll(lab.array == 1, 8, axis=1)), bad_dir / f"fx{i:02d}/approved/masks/GTV.nii.gz")
    bad = finetune(bad_dir, f"models:/{name}/1", config=_cfg(0.01, fit_loss=True), out=tmp_path / "bad", store=store)
    assert bad.sources["fx00"] == "approved/masks" and "labels" in bad.sources["fx02"]
    r1 = bad.comparison.set_index("structure").loc["GTV"]
    assert r1["hd95_mm_baseline"] == pytest.approx(row["hd95_mm_patient"], abs=1e-4)  # the baseline is v1
    assert r1["baseline"] == f"models:/{name}/1"  # v1 was kept for every structure of the model
    assert not bad.kept and bad.version == "2" and not bad.comparison["not_worse"].all() and bad.structures == []
    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(store))
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"  # the alias did not move
    assert client.get_model_version(name, "2").tags["decision"] == "rejected"
    assert client.get_model_version(name, "2").tags["structures"] == "none"
    assert client.get_model_version(name, "1").tags["structures"] == "GTV"
    assert patient_model(bad_dir, "tiny", store=store) == f"models:/{name}/1"
    v2 = client.get_model_version(name, "2").tags  # v2 started from v1, whose population model stays the root
    assert (v2["started_from"], v2["population_model"]) == (f"models:/{name}/1", str(setup["population"]))
    assert load_bundle(bad.bundle_path).meta["population_model"] == str(setup["population"])
    # the population model's weights, whatever it is called, are what the service checks it runs
    assert load_bundle(bad.bundle_path).meta["population_digest"] == load_bundle(setup["population"]).weights_digest()
    run = client.get_run(bad.run_id)
    assert "TOY-PAT-7" not in str(run.data.params) + str(run.data.tags)  # hashed patient id only
    assert run.data.metrics["fit_loss_baseline"] == pytest.approx(bad.loss_before)


def test_the_keep_rule_scores_the_models_as_deployed_with_the_bundles_sub_voxel_phases(tmp_path, monkeypatch):
    """A thresholding network on a 14 mm ball at 1 x 1 x 3 mm and a 2 x 2 x 3 mm plan: one pass loses the
    ball's boundary voxels between coarse centres (Dice < 0.985), the four phases recover it (> 0.995,
    tests/inference/test_predictor.py). score_model must give the four-phase Dice exactly when the bundle
    recommends the phases, which is how the service would run that model."""
    from known_answer import SignNet, ball_image, dice, midpoint

    from sarcart.training.finetune import score_model
    from sarcart.training.predict import predict_volume

    image, ball = ball_image(47)
    write_nifti(image, tmp_path / "image.nii.gz")
    write_labels(image.with_array(ball.astype(np.uint8)), SPEC, tmp_path / "labels.nii.gz")
    holdout = {"case": "fx02", "image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "labels.nii.gz")}
    monkeypatch.setattr(ModelBundle, "network", lambda self, device=None: SignNet(midpoint(image.array)).eval())
    plan = _tiny_plan()
    dices = {}
    for rec in (False, True):
        bundle = ModelBundle(plan, {}, {"name": "sign", "inference": {"subvoxel": rec}})
        _, table = score_model(bundle, [], holdout)
        dices[rec] = float(table.set_index("structure").loc["GTV", "dice"])
    assert dices[False] < 0.985 and dices[True] > 0.995, dices
    # the same numbers as thresholding the predictor's own probabilities, one pass and four phases
    for rec in (False, True):
        probs, _ = predict_volume(SignNet(midpoint(image.array)), image, plan, subvoxel=rec)
        assert dices[rec] == pytest.approx(dice(probs.argmax(0) == 1, ball), abs=1e-6)


def test_the_keep_rule_scores_the_post_processed_output_as_the_service_delivers_it(tmp_path, monkeypatch):
    """A bright spot 90 mm from the tumour is segmented as GTV by a thresholding network; the service's
    post-processing keeps the GTV's largest component and drops it. The keep rule must see the GTV as
    delivered: the metrics of the ball alone (the spot cleared here by hand), not the raw HD95."""
    from known_answer import SignNet, ball_image, midpoint

    from sarcart.training.finetune import score_model
    from sarcart.training.metrics import mask_metrics
    from sarcart.training.predict import predict_volume

    image, ball = ball_image(96)
    arr = image.array.copy()
    spot = np.zeros_like(ball)
    spot[84:92, 84:92, 6:10] = True  # 256 voxels (the ball ~3800), about 90 mm from its centre in-plane
    arr[spot] = 300.0
    image = image.with_array(arr)
    write_nifti(image, tmp_path / "image.nii.gz")
    write_labels(image.with_array(ball.astype(np.uint8)), SPEC, tmp_path / "labels.nii.gz")
    holdout = {"case": "fx02", "image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "labels.nii.gz")}
    net = SignNet(midpoint(arr))
    monkeypatch.setattr(ModelBundle, "network", lambda self, device=None: net.eval())
    plan = _tiny_plan()
    _, table = score_model(ModelBundle(plan, {}, {"name": "sign"}), [], holdout)
    got = table.set_index("structure").loc["GTV"]
    raw = predict_volume(net, image, plan)[0].argmax(0) == 1
    assert raw[spot].any()  # the network does segment the spot
    by_hand = raw.copy()
    by_hand[70:, 70:] = False  # the spot's corner of the image cleared by hand
    expect, raw_m = mask_metrics(by_hand, ball, (1.0, 1.0, 3.0)), mask_metrics(raw, ball, (1.0, 1.0, 3.0))
    assert raw_m["hd95_mm"] > expect["hd95_mm"] + 20, (raw_m, expect)
    assert got["hd95_mm"] == pytest.approx(expect["hd95_mm"], abs=1e-6)
    assert got["dice"] == pytest.approx(expect["dice"], abs=1e-6)


def test_cli_rejects_a_holdout_used_for_fine_tuning(setup, tmp_path, capsys):
    from sarcart.cli import main

    rc = main(["finetune", "--patient-dir", str(setup["patient"]), "--model", str(setup["population"]),
               "--fractions", "1,2", "--holdout", "2", "--out", str(tmp_path), "--store", str(tmp_path / "s")])
    assert rc == 2
    assert "must not be used for fine-tuning" in " ".join(capsys.readouterr().err.split())


def test_approved_rtstruct_is_read_on_the_fraction_series_and_preferred_to_the_labels(tmp_path):
    from sarcart.io.course import load_course
    from sarcart.io.dicom_series import read_dicom_series
    from sarcart.io.dicom_write import write_dicom_series
    from sarcart.io.labels import read_labels
    from sarcart.io.nifti import read_nifti
    from sarcart.io.rtstruct_write import write_rtstruct
    from sarcart.training.finetune import approved_masks

    course = load_course(_patient(tmp_path / "p", fractions=2))
    fx = course.fraction(1)
    image = read_nifti(fx.image)
    write_dicom_series(image, fx.mr_dir, uid_seed="ft-test")
    truth = read_labels(fx.labels)[0].array == 1
    approved = np.roll(truth, 2, axis=2)  # the clinician moved the contour by two slices
    write_rtstruct({"GTV_Mass": approved}, read_dicom_series(fx.mr_dir), fx.approved_dir / "rtstruct.dcm")
    masks, src = approved_masks(fx, image)
    assert src == "approved/rtstruct.dcm" and set(masks) == {"GTV"}  # clinical name mapped to the canonical one
    dice = 2 * (masks["GTV"] & approved).sum() / (masks["GTV"].sum() + approved.sum())
    assert dice > 0.9, dice  # the approved contour, not the labels (Dice with the labels is far lower)
    assert 2 * (masks["GTV"] & truth).sum() / (masks["GTV"].sum() + truth.sum()) < dice - 0.1


def _two_structure_course(root, name="TOY-PAT-8", fractions=2):
    """``fractions`` fractions of known_answer's two-structure image (GTV 300, BOWEL 500 in a body of 100);
    returns the course and the networks' windows (normalised levels as the predictor sees them)."""
    from known_answer import two_structure_image

    image, gtv, bowel, level, half_gap = two_structure_image()
    labels = image.with_array(np.where(gtv, 1, np.where(bowel, 2, 0)).astype(np.uint8))
    write_course(root, CourseConfig(patient=name, site="retroperitoneum", synthetic=True,
                                    prescription=Prescription(dose_gy=48, fractions=fractions)))
    spec = LabelSpec(values={1: "GTV", 2: "BOWEL"}, structures={"GTV": (1,), "BOWEL": (2,)})
    for i in range(fractions):
        write_nifti(image, root / f"fx{i:02d}" / "image.nii.gz")
        write_labels(labels, spec, root / f"fx{i:02d}" / "labels.nii.gz")
    return root, level, half_gap


def test_fine_tuning_further_from_a_patient_model_compares_each_structure_with_what_the_service_runs(
        tmp_path, monkeypatch, capsys):
    """A patient model P1 kept for the GTV only (the service draws the bowel with the population model).
    Fine-tuning further from P1 gives P2, which, like P1, misses the bowel. P2 must be compared on the bowel
    with the population model (which finds it: P2 is worse) and not with P1 (which misses it too: 'not
    worse'), or the service would take an empty bowel from P2."""
    from known_answer import WindowNet, two_structure_plan

    import sarcart.training.finetune as ft
    from sarcart.training.finetune import patient_key

    course, level, half_gap = _two_structure_course(tmp_path / "course")
    nets = {"population": WindowNet((None, level[500.0]), half_gap),  # finds the bowel only
            "p1": WindowNet((level[300.0], None), half_gap),  # finds the GTV only
            "p2": WindowNet((level[300.0], None), half_gap)}  # fine-tuned further: still no bowel
    monkeypatch.setattr(ModelBundle, "network", lambda self, device=None: nets[self.meta["name"]].eval())
    monkeypatch.setattr(ft, "fine_tune", lambda start, fit, cfg, **kw: (
        ModelBundle(start.plan, {}, {**start.meta, "name": "p2"}), [0.5], 0.0))
    plan = two_structure_plan()
    pop = save_bundle(ModelBundle(plan, {}, {"name": "population", "version": "3"}), tmp_path / "pop.pt")
    me = patient_key(course)
    p1_meta = {"name": "p1", "patient": me, "population_model": str(pop), "population_version": "3",
               "patient_structures": ["GTV"]}
    p1 = save_bundle(ModelBundle(plan, {}, p1_meta), tmp_path / "p1.pt")
    cfg = FinetuneConfig(register_model=False, threads=1)

    res = finetune(course, p1, fractions=[0], holdout=1, config=cfg, out=tmp_path / "out")
    t = res.comparison.set_index("structure")
    assert t.at["GTV", "baseline"] == str(p1) and t.at["BOWEL", "baseline"] == str(pop)
    assert t.at["GTV", "dice_baseline"] > 0.95 and t.at["BOWEL", "dice_baseline"] > 0.95  # what the service ran
    assert t.at["BOWEL", "dice_patient"] == 0.0 and not t.at["BOWEL", "not_worse"]
    assert res.structures == ["GTV"]  # the bowel stays with the population model
    meta = load_bundle(res.bundle_path).meta
    assert (meta["population_model"], meta["started_from"], meta["patient_structures"]) == (str(pop), str(p1), ["GTV"])
    assert meta["population_digest"] == load_bundle(pop).weights_digest()  # P1 did not record it: from the root
    assert np.isnan(res.loss_before)  # fit_loss is off by default (four inferences fewer)

    # P1 kept for every structure: P1 alone is the baseline (the population model is not even needed)
    p1_all = save_bundle(ModelBundle(plan, {}, {**p1_meta, "patient_structures": ["GTV", "BOWEL"],
                                                "population_model": str(tmp_path / "gone.pt")}), tmp_path / "p1all.pt")
    res = finetune(course, p1_all, fractions=[0], holdout=1, config=cfg, out=tmp_path / "out2")
    assert set(res.comparison.baseline) == {str(p1_all)} and res.structures == ["GTV", "BOWEL"]

    # clear errors: the population model is gone; another patient's model
    p1_gone = save_bundle(ModelBundle(plan, {}, {**p1_meta, "population_model": str(tmp_path / "gone.pt")}),
                          tmp_path / "p1gone.pt")
    with pytest.raises(ConfigError, match=r"used for GTV only.*gone\.pt.*cannot be loaded.*--model"):
        finetune(course, p1_gone, fractions=[0], holdout=1, config=cfg, out=tmp_path / "out3")
    other = save_bundle(ModelBundle(plan, {}, {**p1_meta, "patient": "0123abcd"}), tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="patient 0123abcd, not of this course's patient"):
        finetune(course, other, fractions=[0], holdout=1, config=cfg, out=tmp_path / "out4")

    # the command prints each structure's baseline and the verdict (register_model false in the config)
    from sarcart.cli import main

    (tmp_path / "ft.yaml").write_text("register_model: false\nthreads: 1\n")
    monkeypatch.setenv("COLUMNS", "300")
    rc = main(["finetune", "--patient-dir", str(course), "--model", str(p1), "--fractions", "0", "--holdout", "1",
               "--config", str(tmp_path / "ft.yaml"), "--out", str(tmp_path / "out5")])
    out = capsys.readouterr().out
    assert rc == 0
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert str(pop) in rows["BOWEL"] and "NO" in rows["BOWEL"] and str(p1) in rows["GTV"], out
    assert "KEPT (not registered) for GTV; the population model keeps BOWEL" in " ".join(out.split())


def test_cross_validated_keep_rule_judges_every_fold_and_deploys_a_model_fine_tuned_on_every_fraction(
        tmp_path, monkeypatch):
    """Three approved fractions; the fine-tuned models are known-answer networks that depend on the fractions
    they were fine-tuned on. The fold holding out fx01 loses the bowel. The single held-out fraction (fx02) sees
    nothing wrong and takes the bowel from the patient model; cross-validated, the bowel's mean over the folds
    (Dice 2/3 of the population's) is worse and stays with the population model. Every fold's fine-tuning
    excludes its held-out fraction; the deployed model is fine-tuned on all three."""
    from known_answer import WindowNet, two_structure_plan

    import sarcart.training.finetune as ft

    course, level, half_gap = _two_structure_course(tmp_path / "course", fractions=3)
    gtv_bowel, bowel_only = (level[300.0], level[500.0]), (None, level[500.0])
    nets = {"population": WindowNet(bowel_only, half_gap),  # misses the GTV
            "ft-fx00,fx01": WindowNet(gtv_bowel, half_gap),  # holding out fx02: finds both
            "ft-fx00,fx02": WindowNet((level[300.0], None), half_gap),  # holding out fx01: loses the bowel
            "ft-fx01,fx02": WindowNet(gtv_bowel, half_gap),  # holding out fx00: finds both
            "ft-fx00,fx01,fx02": WindowNet(gtv_bowel, half_gap)}
    calls = []

    def fake_fine_tune(start, entries, cfg, **kw):
        calls.append([e["case"] for e in entries])
        return ModelBundle(start.plan, {}, {**start.meta, "name": "ft-" + ",".join(calls[-1])}), [0.5], 1.0

    monkeypatch.setattr(ModelBundle, "network", lambda self, device=None: nets[self.meta["name"]].eval())
    monkeypatch.setattr(ft, "fine_tune", fake_fine_tune)
    plan = two_structure_plan()
    pop = save_bundle(ModelBundle(plan, {}, {"name": "population", "version": "3"}), tmp_path / "pop.pt")

    single = finetune(course, pop, config=FinetuneConfig(register_model=False), out=tmp_path / "single")
    assert single.holdout == 2 and single.structures == ["GTV", "BOWEL"]  # fx02 alone sees no fault

    calls.clear()
    cfg = FinetuneConfig(register_model=False, cross_validate=True)
    res = finetune(course, pop, config=cfg, out=tmp_path / "cv")
    assert calls == [["fx01", "fx02"], ["fx00", "fx02"], ["fx00", "fx01"], ["fx00", "fx01", "fx02"]]
    assert res.holdout is None and res.holdouts == [0, 1, 2] and res.fit_fractions == [0, 1, 2]
    assert res.finetune_seconds == pytest.approx(4.0)  # the three folds' and the deployed model's fine-tunings
    folds = pd.read_csv(tmp_path / "cv" / "comparison_folds.csv")
    per_fold = folds[(folds.region == "all") & (folds.structure == "BOWEL") & (folds.model == "patient")]
    assert dict(zip(per_fold.fold, per_fold.dice.round(3))) == {0: pytest.approx(1.0, abs=0.05), 1: 0.0,
                                                                2: pytest.approx(1.0, abs=0.05)}
    t = res.comparison.set_index("structure")
    assert t.at["BOWEL", "dice_patient"] == pytest.approx(per_fold.dice.mean(), abs=1e-9)
    assert t.at["BOWEL", "dice_patient"] < t.at["BOWEL", "dice_baseline"] - 0.3 and not t.at["BOWEL", "not_worse"]
    assert t.at["GTV", "dice_baseline"] == 0.0 and t.at["GTV", "dice_patient"] > 0.95
    assert res.structures == ["GTV"]
    meta = load_bundle(res.bundle_path).meta
    assert meta["fit_fractions"] == [0, 1, 2] and meta["holdouts"] == [0, 1, 2] and meta["name"].startswith("sarcart-t")

    with pytest.raises(ConfigError, match="pass one of them"):
        finetune(course, pop, holdout=2, config=cfg, out=tmp_path / "x")
    with pytest.raises(ConfigError, match="at least two approved fractions"):
        finetune(course, pop, fractions=[1], config=cfg, out=tmp_path / "y")
