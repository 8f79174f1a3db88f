"""Plans from fingerprints (hand-derived topologies and budgets), networks by name, bundles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sarcart.errors import ConfigError
from sarcart.models.bundle import ModelBundle, load_bundle, resolve_model, save_bundle
from sarcart.models.networks import build_network, main_output
from sarcart.models.plan import (
    Budget,
    Fingerprint,
    NetworkPlan,
    Plan,
    cost_gflop,
    divisor,
    memory_mb,
    topology,
)
from sarcart.models.planner import make_plan


def _fp(structures=("GTV",), spacing=(0.98, 0.98, 3.27), shape=(140, 140, 56), n=10) -> Fingerprint:
    return Fingerprint(n_cases=n, structures=list(structures), spacings_mm=[spacing] * n, shapes=[shape] * n,
                       intensity={"mean": 1.0, "std": 1.0, "p00_5": 0.0, "p50": 1.0, "p99_5": 2.0},
                       structure_volumes_cc={s: [100.0] * n for s in structures})


def test_topology_matches_the_nnunet_rule_derived_by_hand():
    # spacing (1, 1, 3): x/y are halved first; z joins once x/y reach 2 mm (3 <= 2 * 2)
    kernels, strides = topology((1.0, 1.0, 3.0), (128, 128, 32), max_levels=5)
    assert strides == [(1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
    # kernels are 1 across z while z is more than twice as coarse (3 > 2 * 1), 3 afterwards
    assert kernels == [(3, 3, 1), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)]
    assert divisor(strides) == (16, 16, 8)
    # a small axis stops downsampling when its map would fall under 4 voxels
    _, strides = topology((1.0, 1.0, 1.0), (64, 64, 8), max_levels=5)
    # z: 8 -> 4 once, then no more; x/y stop once they are more than twice as coarse as z (8 mm vs 2 mm)
    assert strides == [(1, 1, 1), (2, 2, 2), (2, 2, 1), (2, 2, 1)]


def test_cost_of_a_one_level_network_by_hand():
    # one level, 3^3 kernels, 1 -> 4 channels on 10^3 voxels:
    # encoder 27 * (1*4 + 4*4) = 540, decoder 27 * 3 * 16 = 1296 MACs/voxel; x2 FLOP, x1000 voxels, x3 train
    got = cost_gflop((10, 10, 10), [(3, 3, 3)], [(1, 1, 1)], filters=[4])
    assert got == pytest.approx(3 * 2 * 1000 * (540 + 1296) / 1e9)
    assert memory_mb((10, 10, 10), [(1, 1, 1)], [4], batch=2) == pytest.approx(1000 * 4 * 12 * 4 * 2 / 2 ** 20)


def test_plan_keeps_the_median_spacing_when_the_budget_allows_it():
    plan = make_plan(_fp(), Budget(time_budget_min=10_000, memory_budget_mb=1e6, min_iterations=10), task="t")
    assert plan.target_spacing_mm == pytest.approx((0.98, 0.98, 3.27))
    div = divisor(plan.network.strides)
    assert all(p % d == 0 for p, d in zip(plan.patch_size, div))
    assert all(p >= s for p, s in zip(plan.patch_size, (140, 140, 56)))  # the whole median image fits


def test_a_small_budget_coarsens_the_fine_axes_and_the_plan_fits_it():
    budget = Budget(time_budget_min=30, throughput_gflops=40, min_iterations=1500)
    plan = make_plan(_fp(), budget, task="t")
    assert plan.target_spacing_mm[0] > 0.98 and plan.target_spacing_mm[2] == pytest.approx(3.27)
    sec = cost_gflop(plan.patch_size, plan.network.kernel_size, plan.network.strides,
                      filters=plan.network.filters) * 2 / 40
    assert sec == pytest.approx(plan.schedule.est_seconds_per_iteration, rel=1e-2)
    iters = plan.schedule.epochs * plan.schedule.iterations_per_epoch
    assert iters >= 1500 - plan.schedule.iterations_per_epoch
    assert iters * sec <= 30 * 60 * budget.train_fraction + 1e-6
    assert memory_mb(plan.patch_size, plan.network.strides, plan.network.filters, batch=2) <= budget.memory_budget_mb
    assert any("coarsened" in d for d in plan.decisions)


@pytest.mark.parametrize("structures, axes", [
    (("GTV",), (0, 1, 2)),
    (("GTV", "BOWEL", "KIDNEY_L", "KIDNEY_R"), ()),
    (("GTV", "KIDNEY_L", "KIDNEY_R"), ()),
])
def test_flips_follow_anatomy(structures, axes):
    assert make_plan(_fp(structures), task="t").flip_axes == axes


def test_plan_json_round_trip_and_unknown_keys(tmp_path):
    plan = make_plan(_fp(), task="t")
    p = plan.save(tmp_path / "plan.json")
    assert Plan.load(p) == plan
    data = plan.model_dump(mode="json")
    data["surprise"] = 1
    with pytest.raises(ValueError, match="surprise"):
        Plan.model_validate(data)


def _net_plan(name: str) -> NetworkPlan:
    return NetworkPlan(name=name, kernel_size=[(3, 3, 3)] * 3, strides=[(1, 1, 1), (2, 2, 2), (2, 2, 2)],
                       filters=[4, 8, 16], deep_supervision=name == "DynUNet", deep_supr_num=1)


@pytest.mark.parametrize("name", ["DynUNet", "SegResNet", "UNet"])
def test_networks_by_name_map_patches_to_class_logits(name):
    torch.manual_seed(0)
    net = build_network(_net_plan(name), out_channels=3)
    x = torch.randn(2, 1, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, 16, 16, 16)
    if name == "DynUNet":
        net.train()
        out = net(x)
        assert out.shape == (2, 2, 3, 16, 16, 16)  # main head + one deep-supervision head
        assert main_output(out).shape == (2, 3, 16, 16, 16)


def test_unknown_network_is_refused():
    with pytest.raises(ConfigError, match="out_channels"):
        build_network(_net_plan("UNet"), out_channels=1)


def test_bundle_round_trip_gives_the_same_outputs(tmp_path):
    plan = make_plan(_fp(), Budget(patch_size=(16, 16, 16), target_spacing_mm=(2.0, 2.0, 2.0), base_filters=4,
                                   max_levels=3), task="t")
    net = build_network(plan.network, out_channels=plan.n_classes).eval()
    b = ModelBundle(plan, net.state_dict(), {"name": "t", "version": "3"})
    p = save_bundle(b, tmp_path / "m" / "bundle.pt")
    back = load_bundle(p)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), back.network()(x))
        half = load_bundle(save_bundle(b, tmp_path / "h.pt", half=True)).network()(x)
        assert torch.allclose(net(x), half, atol=5e-2)
    assert back.version == "3" and back.plan == plan
    assert resolve_model(tmp_path / "m") == p  # a folder holding bundle.pt
    save_bundle(b, tmp_path / "m" / "fold1" / "bundle.pt")
    assert resolve_model(tmp_path / "m") == p  # its own bundle, not one of a sub-folder
    assert resolve_model(tmp_path / "m" / "fold1") == tmp_path / "m" / "fold1" / "bundle.pt"
    save_bundle(b, tmp_path / "task" / "fold0" / "bundle.pt")
    assert resolve_model(tmp_path / "task") == tmp_path / "task" / "fold0" / "bundle.pt"  # the only one below
    save_bundle(b, tmp_path / "task" / "fold1" / "bundle.pt")  # now two: which is meant is not guessed
    with pytest.raises(ConfigError, match=r"holds 2 model bundles \(fold0/bundle.pt, fold1/bundle.pt\).*ensemble"):
        resolve_model(tmp_path / "task")
    (tmp_path / "junk.pt").write_bytes(b"not a bundle")
    with pytest.raises(ConfigError, match="not a readable model bundle"):
        load_bundle(tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="neither a shipped model"):
        resolve_model("no-such-model")


def test_full_coverage_goes_isotropic_beyond_the_coarsest_axis():
    # the whole median image (137 x 137 x 183 mm) in one patch at 40 GFLOP/s and 45 min
    plan = make_plan(_fp(), Budget(min_coverage=1.0, throughput_gflops=40), task="t")
    sp = plan.target_spacing_mm
    assert sp[0] == sp[1] == sp[2] > 3.27  # coarser than the median's coarsest axis, isotropic
    extent = np.asarray([140 * 0.98, 140 * 0.98, 56 * 3.27])
    assert all(np.asarray(plan.patch_size) * np.asarray(sp) >= extent)
    assert "isotropic" in plan.decisions[0]
    coarse = make_plan(_fp(), Budget(min_coverage=1.0, throughput_gflops=40, max_spacing_mm=3.5), task="t")
    assert max(coarse.target_spacing_mm) <= 3.5 and "no spacing" in coarse.decisions[0]


def _stacked(x: torch.Tensor, z: int, context: int) -> torch.Tensor:
    """Slice z of ``(B, 1, X, Y, Z)`` with its neighbours as channels, the end slices repeated."""
    h, nz = context // 2, x.shape[-1]
    return torch.cat([x[..., min(max(j, 0), nz - 1)] for j in range(z - h, z + h + 1)], dim=1)


def test_a_2p5d_network_is_its_2d_network_on_each_slice_with_the_neighbours_as_channels():
    torch.manual_seed(0)
    plan = NetworkPlan(name="DynUNet", kernel_size=[(3, 3, 1)] * 3, strides=[(1, 1, 1), (2, 2, 1), (2, 2, 1)],
                       filters=[4, 8, 16], deep_supr_num=1, context_slices=3)
    net = build_network(plan, out_channels=2).eval()
    x = torch.randn(2, 1, 16, 16, 5)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (2, 2, 16, 16, 5)
        for z in range(5):  # the end slices (0, 4) see their own slice repeated
            assert torch.allclose(out[..., z], net.net2d(_stacked(x, z, 3)), atol=1e-5)
        # no context across z beyond the neighbours: moving the volume by a slice moves the interior output
        moved = net(torch.roll(x, 1, dims=-1))
        assert torch.allclose(moved[..., 2:4], out[..., 1:3], atol=1e-5)
    net.train()
    ds = net(x)
    assert ds.shape == (2, 2, 2, 16, 16, 5)  # (B, heads, C, X, Y, Z) as a 3D DynUNet with deep supervision
    assert main_output(ds).shape == (2, 2, 16, 16, 5)


def test_a_2p5d_plan_convolves_in_plane_only_and_its_patch_is_a_slab_covering_the_slice():
    budget = Budget(min_coverage=1.0, throughput_gflops=40, context_slices=5, slab_slices=8)
    plan = make_plan(_fp(), budget, task="t")
    assert plan.network.context_slices == 5
    assert all(k[2] == 1 for k in plan.network.kernel_size) and all(s[2] == 1 for s in plan.network.strides)
    assert plan.patch_size[2] == 8 and plan.target_spacing_mm[2] == pytest.approx(3.27)
    # the patch covers the whole median slice (140 x 140 voxels of 0.98 mm), not the median depth
    assert all(p * s >= 140 * 0.98 for p, s in zip(plan.patch_size[:2], plan.target_spacing_mm[:2]))
    sec = cost_gflop(plan.patch_size, plan.network.kernel_size, plan.network.strides,
                      filters=plan.network.filters, in_channels=5) * 2 / 40
    assert sec == pytest.approx(plan.schedule.est_seconds_per_iteration, rel=1e-2)
    assert any(d.startswith("2.5D") for d in plan.decisions)
    # by hand: one level of 3 x 3 x 1 kernels, 5 context slices -> 4 channels on 10 x 10 x 1 voxels:
    # encoder 9 * (5*4 + 4*4) = 324, decoder 9 * 3 * 16 = 432 MACs/voxel; x2 FLOP, x100 voxels, x3 train
    got = cost_gflop((10, 10, 1), [(3, 3, 1)], [(1, 1, 1)], filters=[4], in_channels=5)
    assert got == pytest.approx(3 * 2 * 100 * (324 + 432) / 1e9)


def test_2p5d_settings_that_cannot_work_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="context_slices must be 0"):
        Budget(context_slices=4)
    # a slab depth that the plan would not use is refused instead of silently ignored
    with pytest.raises(ValueError, match="applies only to a 2.5D plan"):
        Budget(slab_slices=12)
    with pytest.raises(ValueError, match=r"slab_slices \(12\) and the depth of the fixed patch_size"):
        Budget(context_slices=5, slab_slices=12, patch_size=(96, 96, 8))
    fixed = make_plan(_fp(), Budget(context_slices=5, slab_slices=8, patch_size=(96, 96, 8)), task="t")
    assert fixed.patch_size == (96, 96, 8)
    # a resolved config (every field written out) validates again: the fixed patch's depth stands
    deep = Budget(context_slices=5, patch_size=(96, 96, 16))
    assert Budget.model_validate(deep.model_dump(mode="json")).patch_size == (96, 96, 16)
    assert Budget.model_validate({**Budget().model_dump(mode="json"), "slab_slices": 8}).slab_slices == 8
    with pytest.raises(ValueError, match="kernel and stride 1 along z"):
        NetworkPlan(name="DynUNet", kernel_size=[(3, 3, 3)] * 2, strides=[(1, 1, 1), (2, 2, 2)], filters=[4, 8],
                    context_slices=3)


def test_the_pace_check_names_the_throughput_that_would_have_predicted_the_measured_pace():
    """Training 1.6x slower than the plan estimated: a warning whose suggested throughput_gflops, given back to
    the planner with the same grid and patch, estimates exactly the measured pace; 2.5x faster: an INFO naming
    the higher throughput; within 1.5x: INFO only."""
    import logging
    import re

    from sarcart.training.module import pace_note

    budget = Budget(time_budget_min=30, throughput_gflops=40, min_iterations=1500)
    plan = make_plan(_fp(), budget, task="t")
    est = plan.schedule.est_seconds_per_iteration
    level, msg = pace_note(1.6 * est, plan.schedule, budget)
    assert level == logging.WARNING and "throughput_gflops about 25" in msg  # 40 / 1.6
    iters = plan.schedule.epochs * plan.schedule.iterations_per_epoch
    assert f"about {iters * 1.6 * est / 60:.1f} min" in msg
    fixed = budget.model_copy(update={"throughput_gflops": 25.0, "target_spacing_mm": plan.target_spacing_mm,
                                      "patch_size": plan.patch_size})
    assert make_plan(_fp(), fixed, task="t").schedule.est_seconds_per_iteration == pytest.approx(1.6 * est, rel=1e-2)
    level, msg = pace_note(est / 2.5, plan.schedule, budget)
    assert level == logging.INFO and "throughput_gflops about 100 would afford a finer plan" in msg
    level, msg = pace_note(1.2 * est, plan.schedule, budget)
    assert level == logging.INFO and not re.search("throughput_gflops about", msg)


def test_the_pace_is_the_median_time_between_batches_of_the_first_two_epochs(monkeypatch, caplog):
    """A fake clock: epoch starts are slow (their first gap is not counted), the batches 0.2 s apart except one
    0.5 s; the pace is the median 0.2 s, reported once after the second epoch, logged to the run, and a warning
    because the plan estimated 0.1 s."""
    import logging
    from types import SimpleNamespace

    from sarcart.training import module

    now = [0.0]
    monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    budget = Budget(time_budget_min=30, throughput_gflops=40)
    plan = make_plan(_fp(), budget.model_copy(update={"epochs": 10, "iterations_per_epoch": 5}), task="t")
    plan = plan.model_copy(update={"schedule": plan.schedule.model_copy(update={"est_seconds_per_iteration": 0.1})})
    logged = []
    trainer = SimpleNamespace(is_global_zero=True, callback_metrics={}, current_epoch=0, max_epochs=10,
                              num_training_batches=5, global_step=0,
                              logger=SimpleNamespace(log_metrics=lambda m, step: logged.append((m, step))))
    cb = module.EpochProgress(enabled=False, budget=budget)
    pl = SimpleNamespace(plan=plan)
    gaps = {0: [5.0, 0.2, 0.2, 0.5, 0.2], 1: [7.0, 0.2, 0.2, 0.2, 0.2], 2: [0.3] * 5}
    with caplog.at_level(logging.INFO, logger="sarcart.training.module"):
        for epoch, times in gaps.items():
            trainer.current_epoch = epoch
            cb.on_train_epoch_start(trainer, pl)
            for i, g in enumerate(times):
                now[0] += g
                trainer.global_step += 1
                cb.on_train_batch_end(trainer, pl, None, None, i)
            cb.on_train_epoch_end(trainer, pl)
    assert logged == [({"early_seconds_per_iteration": pytest.approx(0.2)}, 10)]
    paced = [r for r in caplog.records if "training pace" in r.getMessage()]
    assert len(paced) == 1 and paced[0].levelno == logging.WARNING
    assert "training pace 0.200 s/iteration, the plan estimated 0.100" in paced[0].getMessage()
