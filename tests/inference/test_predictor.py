"""Predictor pipeline with a known-answer network, mirroring TTA, post-processing and left/right kidneys."""

from __future__ import annotations

import numpy as np
import pytest
from known_answer import SignNet, ball_image, dice, midpoint

from sarcart.inference.postprocess import fill_holes, largest_component, postprocess, split_kidneys
from sarcart.inference.predictor import PredictorConfig, segment_image
from sarcart.io.geometry import Geometry, Volume
from sarcart.models.bundle import ModelBundle
from sarcart.models.plan import NetworkPlan, Plan, Schedule
from sarcart.training.predict import flip_sets


def _plan(flip_axes=(0, 1, 2), structures=("GTV",), spacing=(2.0, 2.0, 2.0)) -> Plan:
    net = NetworkPlan(name="DynUNet", kernel_size=[(3, 3, 3)] * 2, strides=[(1, 1, 1), (2, 2, 2)], filters=[4, 8])
    return Plan(task="t", structures=list(structures), target_spacing_mm=spacing, patch_size=(16, 16, 16),
                network=net, flip_axes=flip_axes,
                schedule=Schedule(epochs=1, iterations_per_epoch=1, batch_size=1, est_seconds_per_iteration=0,
                                  est_training_minutes=0))


def _cube_image(direction):
    """Body (100) with a bright box (300) on an anisotropic, flipped/permuted grid; returns image, box."""
    g = Geometry(shape=(40, 36, 14), spacing_mm=(1.2, 1.0, 3.0), origin_mm=(12.0, -30.0, 40.0), direction=direction)
    arr = np.zeros(g.shape, np.float32)
    arr[3:37, 3:33, 1:13] = 100.0
    box = np.zeros(g.shape, bool)
    box[10:25, 8:22, 4:10] = True
    arr[box] = 300.0
    return Volume(arr, g), box


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (0, -1, 0, 0, 0, 1, -1, 0, 0)])
def test_segmentation_comes_back_on_the_input_grid(direction):
    image, box = _cube_image(direction)
    bundle = ModelBundle(_plan(), {}, {"name": "sign", "version": "7"})
    net = SignNet(midpoint(image.array))
    seg = segment_image(image, bundle, net, config=PredictorConfig(device="cpu", keep_probabilities=True))
    assert seg.labels.geometry == image.geometry and seg.model == "sign" and seg.version == "7"
    got = seg.labels.array == 1
    assert 2 * (got & box).sum() / (got.sum() + box.sum()) > 0.95
    assert seg.probabilities.shape == (2, *image.geometry.shape)
    assert seg.volumes_cc()["GTV"] == pytest.approx(got.sum() * image.geometry.voxel_volume_cc)


def test_tta_of_a_mirror_symmetric_network_changes_nothing():
    image, _ = _cube_image((1, 0, 0, 0, 1, 0, 0, 0, 1))
    bundle = ModelBundle(_plan(), {}, {})
    plain = segment_image(image, bundle, SignNet(), config=PredictorConfig(device="cpu", keep_probabilities=True))
    tta = segment_image(image, bundle, SignNet(), config=PredictorConfig(device="cpu", tta=True, keep_probabilities=True))
    assert np.array_equal(plain.labels.array, tta.labels.array)
    assert np.allclose(plain.probabilities.astype(float), tta.probabilities.astype(float), atol=2e-3)
    assert len(flip_sets((0, 1, 2))) == 8 and flip_sets(()) == [()]


def test_largest_component_and_holes():
    m = np.zeros((20, 20, 20), bool)
    m[2:10, 2:10, 2:10] = True
    m[15:17, 15:17, 15:17] = True
    assert largest_component(m).sum() == 512
    shell = m.copy()
    shell[4:8, 4:8, 4:8] = False
    assert fill_holes(shell)[5, 5, 5] and fill_holes(shell).sum() == m.sum()


@pytest.mark.parametrize("flip_x", [False, True])
def test_kidneys_are_named_by_patient_coordinates(flip_x):
    # LPS +x is patient left; with a flipped i axis, high i is patient RIGHT
    d = (-1, 0, 0, 0, 1, 0, 0, 0, 1) if flip_x else (1, 0, 0, 0, 1, 0, 0, 0, 1)
    g = Geometry(shape=(40, 20, 10), spacing_mm=(2.0, 2.0, 2.0), direction=d)
    low, high = np.zeros(g.shape, bool), np.zeros(g.shape, bool)
    low[5:10, 5:10, 3:6] = True
    high[30:35, 5:10, 3:6] = True
    # the network swapped them and split one kidney between both labels
    net_left, net_right = low.copy(), high.copy()
    net_left[30:32] |= high[30:32]
    net_right[30:32] = False
    kl, kr = split_kidneys(net_left, net_right, g)
    left_true, right_true = (low, high) if flip_x else (high, low)
    assert np.array_equal(kl, left_true) and np.array_equal(kr, right_true)
    # one kidney only: named by its side of the body centre (here x = 0 mm at the grid origin)
    kl1, kr1 = split_kidneys(high, np.zeros_like(high), g, body_centre_x_mm=g.index_to_world([20, 0, 0])[0])
    assert (kl1.any(), kr1.any()) == ((False, True) if flip_x else (True, False))


def test_postprocess_reports_what_it_did():
    g = Geometry(shape=(30, 20, 10), spacing_mm=(2.0, 2.0, 2.0))
    gtv = np.zeros(g.shape, bool)
    gtv[5:15, 5:15, 2:8] = True
    gtv[25, 18, 8] = True  # an island
    bowel = np.zeros(g.shape, bool)
    bowel[20:22, 2:4, 2:4] = True
    bowel[26:28, 2:4, 2:4] = True  # two loops stay
    out, notes = postprocess({"GTV": gtv, "BOWEL": bowel}, g)
    assert out["GTV"].sum() == 600 and out["BOWEL"].sum() == 16
    assert any("GTV: removed 1 voxel" in n for n in notes)


@pytest.mark.gpu
def test_bf16_on_gpu_matches_cpu():
    image, _ = _cube_image((1, 0, 0, 0, 1, 0, 0, 0, 1))
    bundle = ModelBundle(_plan(), {}, {})
    cpu = segment_image(image, bundle, SignNet(), config=PredictorConfig(device="cpu"))
    gpu = segment_image(image, bundle, SignNet().cuda(), config=PredictorConfig(device="cuda", precision="bf16"))
    assert (cpu.labels.array != gpu.labels.array).mean() < 1e-3


def test_a_bundle_can_narrow_the_postprocessing_rules():
    g = Geometry(shape=(30, 20, 10), spacing_mm=(2.0, 2.0, 2.0))
    gtv = np.zeros(g.shape, bool)
    gtv[5:15, 5:15, 2:8] = True
    gtv[25, 18, 8] = True
    out, notes = postprocess({"GTV": gtv}, g, single_component=())
    assert out["GTV"].sum() == 601 and not any("removed" in n for n in notes)


@pytest.mark.parametrize(("n", "direction"), [(47, (1, 0, 0, 0, 1, 0, 0, 0, 1)), (48, (-1, 0, 0, 0, 1, 0, 0, 0, 1))])
def test_subvoxel_phases_recover_what_one_coarse_pass_loses(n, direction):
    """An ideal (thresholding) network on a 2 mm grid, a ball imaged at 1 x 1 x 3 mm: the truth is the ball itself.

    One pass samples the ball every 2 mm in-plane and the image's 1 mm voxels between coarse centres are
    only interpolated. With an odd number of image voxels (47) the coarse centres fall on every other image
    voxel, the ones between get probabilities of exactly 0.5 at the boundary and go to background: the ball
    comes back about 7 % too small. With an even number (48) the centres fall between image voxels and the
    boundary is off by up to half a coarse voxel either way. The four half-voxel phases of the 2 mm grid
    sample every 1 mm voxel, so the ball comes back whole in both cases.
    """
    image, ball = ball_image(n, direction)
    arr = image.array
    plan = _plan(flip_axes=(), spacing=(2.0, 2.0, 3.0))
    bundle = ModelBundle(plan, {}, {"name": "sign", "version": "1"})
    net = SignNet(midpoint(arr))
    one = segment_image(image, bundle, net, config=PredictorConfig(postprocess=False)).mask("GTV").array
    four = segment_image(image, bundle, net, config=PredictorConfig(postprocess=False, subvoxel=True)).mask("GTV").array
    if n % 2:
        assert one.sum() < 0.95 * ball.sum()
    assert abs(four.sum() / ball.sum() - 1) < 0.01
    assert dice(four, ball) > 0.995
    assert dice(one, ball) < 0.985


@pytest.mark.parametrize("subvoxel", [False, True])
def test_qa_confidence_is_computed_on_the_plan_grid_whatever_the_input_resolution(subvoxel):
    """The QA calibration is fitted on images at the plan's spacing (benchmarks/bench_qa_flags.py).

    A 1 mm image and the same image resampled to the plan grid first must give the same raw confidence
    (the network sees the identical plan-grid image in both cases); on the 1 mm image's own grid the
    interpolated probabilities would give a lower value, which is what the service computed before.
    """
    from sarcart.inference.qa import soft_dice_confidence
    from sarcart.training.preprocess import grid_for, resample

    fine, _ = ball_image(48, centre=(24.3, 24.1, 8.0))
    g = fine.geometry
    plan = _plan(flip_axes=(), spacing=(2.0, 2.0, 3.0))
    grid = grid_for(g, plan.target_spacing_mm)
    coarse = Volume(resample(fine, grid), grid)
    bundle = ModelBundle(plan, {}, {"name": "sign", "version": "1"})
    net = SignNet(midpoint(fine.array))
    cfg = PredictorConfig(keep_probabilities=True, subvoxel=subvoxel)
    seg_fine, seg_coarse = segment_image(fine, bundle, net, config=cfg), segment_image(coarse, bundle, net, config=cfg)
    on_plan = soft_dice_confidence(*seg_fine.confidence_inputs("GTV"))
    reference = soft_dice_confidence(*seg_coarse.confidence_inputs("GTV"))
    assert seg_coarse.plan_labels.shape == coarse.array.shape == seg_coarse.labels.array.shape
    assert on_plan == pytest.approx(reference, abs=1e-3)
    on_image_grid = soft_dice_confidence(seg_fine.probabilities[1].astype(np.float32), seg_fine.labels.array == 1)
    assert on_image_grid < on_plan - 0.02


def test_the_bundle_recommends_the_phases_and_an_explicit_setting_wins():
    image, _ = ball_image(47)
    plan = _plan(flip_axes=(), spacing=(2.0, 2.0, 3.0))
    net = SignNet(midpoint(image.array))
    plain = ModelBundle(plan, {}, {"name": "sign", "version": "1"})
    recommends = ModelBundle(plan, {}, {"name": "sign", "version": "1", "inference": {"subvoxel": True}})
    default_plain = segment_image(image, plain, net)
    default_rec = segment_image(image, recommends, net)
    forced_off = segment_image(image, recommends, net, config=PredictorConfig(subvoxel=False))
    assert (default_plain.subvoxel, default_rec.subvoxel, forced_off.subvoxel) == (False, True, False)
    # the recommended default is the four-phase result, the forced one the single pass
    four = segment_image(image, plain, net, config=PredictorConfig(subvoxel=True))
    assert np.array_equal(default_rec.labels.array, four.labels.array)
    assert np.array_equal(forced_off.labels.array, default_plain.labels.array)
    assert not np.array_equal(four.labels.array, default_plain.labels.array)


def _graded_ball() -> Volume:
    """A ball whose intensity falls smoothly from 300 at its centre to 100 at 12 mm, on a 2 x 2 x 3 mm grid (the
    test plans' own spacing, so the plan grid is the image grid and no interpolation lies between them)."""
    g = Geometry(shape=(24, 24, 12), spacing_mm=(2.0, 2.0, 3.0), origin_mm=(0.0, 0.0, 0.0))
    idx = np.indices(g.shape).astype(float)
    r = np.sqrt(((idx[0] - 11.6) * 2) ** 2 + ((idx[1] - 12.3) * 2) ** 2 + ((idx[2] - 5.8) * 3) ** 2)
    return Volume((100.0 + 200.0 * np.clip(1 - r / 12.0, 0, 1)).astype(np.float32), g)


def test_an_ensemble_of_thresholds_placed_symmetrically_is_the_middle_threshold():
    """Analytic: sigmoid(g (x - c + d)) + sigmoid(g (x - c - d)) = 1 exactly at x = c and rises with x, so the
    average of two thresholding networks at c - d and c + d calls GTV exactly where one at c does, while each
    member alone draws a larger or smaller ball. On the shared plan grid the QA probabilities are the mean of
    the members'."""
    from sarcart.errors import ConfigError
    from sarcart.inference.predictor import segment_ensemble

    image = _graded_ball()
    bundle = ModelBundle(_plan(flip_axes=(), spacing=(2.0, 2.0, 3.0)), {}, {"name": "sign", "version": "1"})
    c, d = 0.5, 0.6
    cfg = PredictorConfig(postprocess=False, keep_probabilities=True, device="cpu")
    low, mid, high = (segment_image(image, bundle, SignNet(o, gain=3.0), config=cfg) for o in (c - d, c, c + d))
    ens = segment_ensemble(image, [(bundle, SignNet(c - d, gain=3.0)), (bundle, SignNet(c + d, gain=3.0))], config=cfg)
    got = ens.mask("GTV").array
    assert np.array_equal(got, mid.mask("GTV").array)
    assert low.mask("GTV").array.sum() > 1.1 * got.sum() > 1.21 * high.mask("GTV").array.sum() > 0
    assert ens.plan_probabilities is not None and ens.plan_labels is not None
    expect = (low.plan_probabilities.astype(float) + high.plan_probabilities.astype(float)) / 2
    assert np.allclose(ens.plan_probabilities.astype(float), expect, atol=2e-3)
    assert (ens.model, ens.version, ens.members) == ("ensemble of sign", "1+1", ["sign v1", "sign v1"])
    # each model's pass kept and combined: alone it is that model's segmentation, together the middle
    # threshold; combining does not alter the kept passes (they can be combined again)
    from sarcart.inference.predictor import combine_members, predict_member

    passes = [predict_member(image, bundle, SignNet(o, gain=3.0), config=cfg) for o in (c - d, c + d)]
    kept = [p.probs.copy() for p in passes]
    assert np.array_equal(combine_members(image, passes, config=cfg).mask("GTV").array, got)
    assert np.array_equal(combine_members(image, passes[:1], config=cfg).mask("GTV").array, low.mask("GTV").array)
    assert all(np.array_equal(p.probs, k) for p, k in zip(passes, kept))
    # members that segment other structures cannot be averaged: refused, naming both lists
    other = ModelBundle(_plan(flip_axes=(), structures=("BOWEL",)), {}, {"name": "bowel", "version": "2"})
    with pytest.raises(ConfigError, match=r"sign v1 segments GTV, bowel v2 segments BOWEL"):
        segment_ensemble(image, [(bundle, SignNet()), (other, SignNet())], config=cfg)


def test_an_ensemble_of_models_on_different_grids_averages_on_the_image_grid():
    """Members with a 2 mm and a 3 mm plan on a 1 x 1 x 3 mm image: the ensemble's probabilities are the mean of
    what each model gives alone, and its labels their argmax; with no shared plan grid no plan-grid
    probabilities are kept."""
    from sarcart.inference.predictor import segment_ensemble

    image, ball = ball_image(48)
    fine = ModelBundle(_plan(flip_axes=(), spacing=(2.0, 2.0, 3.0)), {}, {"name": "a", "version": "1"})
    coarse = ModelBundle(_plan(flip_axes=(), spacing=(3.0, 3.0, 3.0)), {}, {"name": "b", "version": "4"})
    m = midpoint(image.array)
    members = [(fine, SignNet(m - 0.4, gain=2.0)), (coarse, SignNet(m + 0.3, gain=2.0))]
    cfg = PredictorConfig(postprocess=False, keep_probabilities=True, device="cpu")
    alone = [segment_image(image, b, n, config=cfg).probabilities.astype(float) for b, n in members]
    ens = segment_ensemble(image, members, config=cfg)
    mean = (alone[0] + alone[1]) / 2
    assert np.allclose(ens.probabilities.astype(float), mean, atol=2e-3)
    clear = np.abs(mean[1] - 0.5) > 5e-3
    assert np.array_equal(ens.mask("GTV").array[clear], (mean[1] > 0.5)[clear])
    assert ens.plan_probabilities is None and ens.confidence_inputs("GTV") is not None
    assert ens.model == "ensemble of a+b" and ens.members == ["a v1", "b v4"]
    assert dice(ens.mask("GTV").array, ball) > 0.9


def _bench_model_compare():
    """benchmarks/bench_model_compare.py as a module (the benchmarks folder is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_model_compare.py"
    spec = importlib.util.spec_from_file_location("bench_model_compare", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_model_comparison_benchmark_splits_one_datalist_by_case_prefix():
    """A datalist built from several cohorts (cases a_..., b_...) is reported per cohort with --by-case-prefix:
    the means are those of each prefix's rows, computed here by hand."""
    import pandas as pd

    bench = _bench_model_compare()
    rows = pd.DataFrame({
        "model": ["m"] * 5, "sub": ["val"] * 5, "region": ["all"] * 4 + ["ring"],
        "structure": ["GTV"] * 5, "case": ["a_P1_fx00", "a_P2_fx00", "b_P1_fx00", "b_P1_fx01", "a_P1_fx00"],
        "dice": [0.9, 0.7, 0.5, 0.6, 0.1]})
    lines = bench.per_sub_table(rows, ["m"], by_case_prefix=True).splitlines()
    assert lines[2:] == ["| val/a | m | 2 | 0.800 |", "| val/b | m | 2 | 0.550 |"]
    assert bench.per_sub_table(rows, ["m"]).splitlines()[2:] == ["| val | m | 4 | 0.675 |"]


def test_the_model_comparison_benchmark_runs_each_model_once_per_image_for_its_ensembles():
    """benchmarks/bench_model_compare.py scores ``a``, ``b`` and ``ens=a+b`` on each image: the ensemble's masks
    equal segment_ensemble's (the mean of the two thresholding networks: the middle threshold), each member's
    pass is made once and reused, and ``NAME=A+B`` resolves earlier names to their models."""
    from types import SimpleNamespace

    from sarcart.inference.predictor import segment_ensemble

    bench = _bench_model_compare()
    assert bench.parse_models(["a=x.pt", "b=y.pt", "ens=a+b", "mix=a+z.pt"]) == [
        ("a", ["x.pt"]), ("b", ["y.pt"]), ("ens", ["x.pt", "y.pt"]), ("mix", ["x.pt", "z.pt"])]
    for bad in (["a"], ["a=x", "a=y"], ["e=a+"]):
        with pytest.raises(SystemExit, match="--model"):
            bench.parse_models(bad)

    image = _graded_ball()
    bundle = ModelBundle(_plan(flip_axes=(), spacing=(2.0, 2.0, 3.0)), {}, {"name": "sign", "version": "1"})
    cfg = PredictorConfig(postprocess=False, device="cpu")
    nets = {"x.pt": SignNet(-0.1, gain=3.0), "y.pt": SignNet(1.1, gain=3.0)}
    calls = {k: 0 for k in nets}

    def counted(key):
        net = nets[key]
        forward = net.forward

        def f(x):
            calls[key] += 1
            return forward(x)
        net.forward = f
        return net

    for k in nets:
        counted(k)

    def pred(srcs):
        return SimpleNamespace(sources=srcs, bundles=[bundle] * len(srcs), networks=[nets[s] for s in srcs], config=cfg)

    shared = bench.SharedPasses()
    alone = {s: shared.segmenter(pred([s]))(image)["GTV"] for s in nets}
    after_alone = dict(calls)
    ens = shared.segmenter(pred(["x.pt", "y.pt"]))(image)["GTV"]
    assert calls == after_alone and all(v > 0 for v in calls.values())  # the ensemble made no new pass
    expect = segment_ensemble(image, [(bundle, nets["x.pt"]), (bundle, nets["y.pt"])], config=cfg).mask("GTV").array
    assert np.array_equal(ens, expect)
    mid = segment_image(image, bundle, SignNet(0.5, gain=3.0), config=cfg).mask("GTV").array
    assert np.array_equal(ens, mid) and alone["x.pt"].sum() > ens.sum() > alone["y.pt"].sum()
