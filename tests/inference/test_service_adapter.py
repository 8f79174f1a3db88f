"""The service's segmenter: a warm predictor plus QA flags, checked with a known-answer network."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from known_answer import SignNet, WindowNet, dice, midpoint, two_structure_image, two_structure_plan

from sarcart.inference.service_adapter import make_segmenter
from sarcart.io.geometry import Geometry, Volume
from sarcart.models.bundle import ModelBundle, save_bundle
from sarcart.models.plan import NetworkPlan, Plan, Schedule


def _image(box: tuple[slice, slice, slice], direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> tuple[Volume, np.ndarray]:
    g = Geometry(shape=(40, 36, 16), spacing_mm=(2.0, 2.0, 3.0), origin_mm=(0.0, 0.0, 0.0), direction=direction)
    arr = np.zeros(g.shape, np.float32)
    arr[2:38, 2:34, 1:15] = 100.0
    m = np.zeros(g.shape, bool)
    m[box] = True
    arr[m] = 300.0
    return Volume(arr, g), m


@pytest.fixture()
def bundle_path(tmp_path):
    net = NetworkPlan(name="DynUNet", kernel_size=[(3, 3, 3)] * 2, strides=[(1, 1, 1), (2, 2, 2)], filters=[4, 8])
    plan = Plan(task="t", structures=["GTV"], target_spacing_mm=(2.0, 2.0, 3.0), patch_size=(16, 16, 16),
                network=net, flip_axes=(), training_profile={"median_spacing_mm": [2.0, 2.0, 3.0]},
                schedule=Schedule(epochs=1, iterations_per_epoch=1, batch_size=1, est_seconds_per_iteration=0,
                                  est_training_minutes=0))
    return save_bundle(ModelBundle(plan, {}, {"name": "sign", "version": "3"}), tmp_path / "b.pt")


def _segmenter(monkeypatch, path, offset: float, gain: float):
    monkeypatch.setattr(ModelBundle, "network", lambda self, device=None: SignNet(offset, gain).eval())
    return make_segmenter(str(path), device="cpu")


def test_masks_match_the_known_answer_and_crisp_output_is_confident(monkeypatch, bundle_path):
    image, box = _image((slice(12, 26), slice(10, 24), slice(5, 11)))
    seg = _segmenter(monkeypatch, bundle_path, midpoint(image.array), gain=10.0)
    masks, qa, model = seg(SimpleNamespace(volume=image, series_uid="1.2.3"))
    got = masks["GTV"].array
    assert masks["GTV"].geometry == image.geometry and model == "sign 3"
    assert 2 * (got & box).sum() / (got.sum() + box.sum()) > 0.95
    q = qa["structures"]["GTV"]
    assert q["volume_cc"] == pytest.approx(got.sum() * image.geometry.voxel_volume_cc)
    assert q["confidence_raw"] > 0.95 and q["flags"] == [] and qa["flagged"] == []
    assert qa["image"]["flags"] == []


def test_diffuse_probabilities_edge_contact_and_sagittal_input_are_flagged(monkeypatch, bundle_path):
    # the box reaches the image border, the network is unsure (gain 0.3: p stays near 0.5 around the edge)
    image, _box = _image((slice(0, 14), slice(10, 24), slice(5, 11)))
    seg = _segmenter(monkeypatch, bundle_path, midpoint(image.array), gain=0.3)
    _, qa, _ = seg(SimpleNamespace(volume=image))
    q = qa["structures"]["GTV"]
    # p near 0.5 in the band around the mask: soft Dice 2Σpm/(Σp+Σm) falls well below the crisp case (~1)
    assert q["confidence_raw"] < 0.9
    assert "touches field-of-view edge" in q["flags"] and qa["flagged"] == ["GTV"]
    sag, _ = _image((slice(12, 26), slice(10, 24), slice(5, 11)), direction=(0, 0, 1, 1, 0, 0, 0, 1, 0))
    _, qa2, _ = seg(SimpleNamespace(volume=sag))
    assert any("not axial" in f for f in qa2["image"]["flags"]) and qa2["image_flagged"]


def test_a_kept_patient_model_is_preferred_by_patient_id(monkeypatch, bundle_path, tmp_path):
    """The name looked up is the one `sarcart finetune` registers for a course of that patient."""
    import sarcart.inference.service_adapter as sa
    from sarcart.io.course import CourseConfig, Prescription, write_course
    from sarcart.training.finetune import model_name

    write_course(tmp_path / "P", CourseConfig(patient="PAT-7", site="retroperitoneum",
                                              prescription=Prescription(dose_gy=48.0, fractions=6)))
    expected = model_name("t", tmp_path / "P")
    versions = {expected: SimpleNamespace(name=expected, version="4")}
    monkeypatch.setattr(sa.tracking, "alias_version", lambda name, **kw: versions.get(name))
    monkeypatch.setattr(sa, "segmentation_qa", lambda *a, **k: {"flagged": []})
    built = []

    class FakePredictor:
        def __init__(self, model, config=None):
            built.append(str(model))
            self.model = str(model)
            self.bundle = SimpleNamespace(plan=SimpleNamespace(task="t"))
            self.structures = ["GTV"]

        def __call__(self, image):
            return SimpleNamespace(seconds=0.0, notes=[], model=self.model, version="", structures=[], subvoxel=False)

    monkeypatch.setattr(sa, "Predictor", FakePredictor)
    seg = make_segmenter(str(bundle_path), device="cpu")
    used = [seg(SimpleNamespace(volume=None, header={"PatientID": pid}))[1:] for pid in ("PAT-7", "PAT-8", "PAT-7")]
    assert [u[1] for u in used] == [f"models:/{expected}/4", str(bundle_path), f"models:/{expected}/4"]
    assert [u[0]["patient_specific_model"] for u in used] == [True, False, True]
    assert built == [str(bundle_path), f"models:/{expected}/4"]  # each model loaded once and kept warm


def test_the_model_s_fitted_calibration_is_used(monkeypatch, tmp_path):
    """meta["qa_calibration"] = (a, b) -> confidence = 1 / (1 + exp(-(a * raw + b))), computed here."""
    import math

    from sarcart.models.bundle import load_bundle

    image, _ = _image((slice(12, 26), slice(10, 24), slice(5, 11)))
    net = NetworkPlan(name="DynUNet", kernel_size=[(3, 3, 3)] * 2, strides=[(1, 1, 1), (2, 2, 2)], filters=[4, 8])
    plan = Plan(task="t", structures=["GTV"], target_spacing_mm=(2.0, 2.0, 3.0), patch_size=(16, 16, 16),
                network=net, flip_axes=(), schedule=Schedule(epochs=1, iterations_per_epoch=1, batch_size=1,
                                                             est_seconds_per_iteration=0, est_training_minutes=0))
    path = save_bundle(ModelBundle(plan, {}, {"name": "sign", "qa_calibration": {"a": 10.0, "b": -5.0}}),
                       tmp_path / "cal.pt")
    assert load_bundle(path).meta["qa_calibration"]["a"] == 10.0
    seg = _segmenter(monkeypatch, path, midpoint(image.array), gain=1.0)
    _, qa, _ = seg(SimpleNamespace(volume=image))
    q = qa["structures"]["GTV"]
    assert q["confidence"] == pytest.approx(1.0 / (1.0 + math.exp(-(10.0 * q["confidence_raw"] - 5.0))))
    assert qa["calibration"] == "fitted for the model"
    # the shipped trufi bundle carries the calibration fitted by benchmarks/bench_qa_flags.py
    from sarcart.models.bundle import resolve_model

    shipped = load_bundle(resolve_model("trufi")).meta["qa_calibration"]
    # flags below a raw confidence of 0.90-0.96 (v1 0.896, v2 0.938, v3 0.956: better models are surer)
    assert shipped["a"] > 0 and 0.85 < -shipped["b"] / shipped["a"] < 0.98


def test_a_patient_model_kept_for_some_structures_draws_only_those(monkeypatch, tmp_path):
    """Per-structure keep rule (sarcart finetune): the patient model was kept for the GTV only. Here it finds
    the GTV but misses the bowel, the population model the other way round; the service's output must be
    right on both, with each structure's QA naming the model that drew it."""
    import sarcart.inference.service_adapter as sa

    image, gtv, bowel, level, half_gap = two_structure_image()
    nets = {"population": WindowNet((None, level[500.0]), half_gap),  # finds the bowel, misses the GTV
            "patient": WindowNet((level[300.0], None), half_gap)}  # the other way round
    monkeypatch.setattr(ModelBundle, "network", lambda self, device=None: nets[self.meta["name"]].eval())
    plan = two_structure_plan()
    pop = save_bundle(ModelBundle(plan, {}, {"name": "population", "version": "3"}), tmp_path / "pop.pt")
    pat = save_bundle(ModelBundle(plan, {}, {"name": "patient", "version": "", "patient_structures": ["GTV"]}),
                      tmp_path / "pat.pt")
    # PAT-9's patient model was kept by the earlier all-or-nothing rule: no patient_structures in its meta
    pat_all = save_bundle(ModelBundle(plan, {}, {"name": "patient", "version": "1"}), tmp_path / "pat_all.pt")
    uris = {"PAT-7": str(pat), "PAT-9": str(pat_all)}
    monkeypatch.setattr(sa, "patient_model_uri", lambda task, pid, **kw: uris.get(pid))
    seg = make_segmenter(str(pop), device="cpu")

    def dices(masks):
        return {n: dice(masks[n].array, ref) if masks[n].array.any() else 0.0
                for n, ref in (("GTV", gtv), ("BOWEL", bowel))}

    masks, qa, model = seg(SimpleNamespace(volume=image, header={"PatientID": "PAT-8"}))
    assert dices(masks)["GTV"] == 0.0 and dices(masks)["BOWEL"] > 0.95  # population alone
    assert not qa["patient_specific_model"] and model == "population 3"
    masks, qa, model = seg(SimpleNamespace(volume=image, header={"PatientID": "PAT-7"}))
    assert min(dices(masks).values()) > 0.95, dices(masks)  # merged: right on both
    assert qa["patient_specific_model"] and qa["patient_model_structures"] == ["GTV"]
    assert {n: q["model"] for n, q in qa["structures"].items()} == {"GTV": "patient", "BOWEL": "population 3"}
    assert model == "patient (GTV) + population 3" and qa["flagged"] == sorted(
        n for n, q in qa["structures"].items() if q["flags"])
    masks, qa, model = seg(SimpleNamespace(volume=image, header={"PatientID": "PAT-9"}))
    assert dices(masks)["GTV"] > 0.95 and dices(masks)["BOWEL"] == 0.0  # the patient model draws everything
    assert qa["patient_model_structures"] == ["GTV", "BOWEL"] and model == "patient 1"
    assert sa.patient_structures(ModelBundle(plan, {}, {"patient_structures": ["BOWEL"]}), plan.structures) == [
        "BOWEL"]


def test_a_patient_model_judged_against_other_population_weights_is_flagged(monkeypatch, tmp_path):
    """The keep rule compared the patient model with population weights W (meta population_digest). A service
    running W under another name or path agrees; one running other weights W' (a newer champion) must flag the
    structures the patient model draws, and only those; a patient model without the record is noted, not
    flagged."""
    import torch

    import sarcart.inference.service_adapter as sa

    image, gtv, bowel, level, half_gap = two_structure_image()
    nets = {"population": WindowNet((None, level[500.0]), half_gap), "patient": WindowNet((level[300.0], None), half_gap)}
    monkeypatch.setattr(ModelBundle, "network", lambda self, device=None: nets[self.meta["name"]].eval())
    plan = two_structure_plan()
    w, w_new = {"w": torch.ones(3)}, {"w": torch.tensor([1.0, 1.0, 1.0 + 2 ** -20])}  # one weight one step apart
    judged = ModelBundle(plan, w, {"name": "population", "version": "3"})
    pop = save_bundle(judged, tmp_path / "pop.pt")
    renamed = save_bundle(ModelBundle(plan, w, {"name": "population", "version": "7"}), tmp_path / "copy.pt", half=True)
    newer = save_bundle(ModelBundle(plan, w_new, {"name": "population", "version": "4"}), tmp_path / "new.pt")
    meta = {"name": "patient", "version": "2", "patient_structures": ["GTV"], "population_model": str(pop),
            "population_version": "3", "population_digest": judged.weights_digest()}
    uris = {"PAT-7": str(save_bundle(ModelBundle(plan, {}, meta), tmp_path / "pat.pt")),
            "PAT-9": str(save_bundle(ModelBundle(plan, {}, {**meta, "population_digest": None}), tmp_path / "old.pt"))}
    monkeypatch.setattr(sa, "patient_model_uri", lambda task, pid, **kw: uris.get(pid))

    def run(model, pid):
        masks, qa, _ = make_segmenter(str(model), device="cpu")(SimpleNamespace(volume=image, header={"PatientID": pid}))
        return masks, qa

    for same in (pop, renamed):  # the same weights (also stored as float16 and registered as v7)
        masks, qa = run(same, "PAT-7")
        assert qa["patient_model_baseline"] == "same"
        assert not any("judged against" in f for q in qa["structures"].values() for f in q["flags"])
    masks, qa = run(newer, "PAT-7")
    assert qa["patient_model_baseline"] == "different"
    gtv_flags = [f for f in qa["structures"]["GTV"]["flags"] if "judged against" in f]
    assert len(gtv_flags) == 1 and f"{pop} v3" in gtv_flags[0] and "population v4" in gtv_flags[0]
    assert "GTV" in qa["flagged"]
    assert not any("judged against" in f for f in qa["structures"]["BOWEL"]["flags"])  # drawn by the service's model
    assert dice(masks["GTV"].array, gtv) > 0.95 and dice(masks["BOWEL"].array, bowel) > 0.95  # the masks are kept
    masks, qa = run(newer, "PAT-9")
    assert qa["patient_model_baseline"] == "not recorded"
    assert not any("judged against" in f for q in qa["structures"].values() for f in q["flags"])
