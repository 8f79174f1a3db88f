"""Segmentation benchmark: training throughput (patches/s) and inference time for a 267x267x144 volume.

    python benchmarks/bench_segmentation.py [--repeats 3] [--device cpu|cuda] [--threads 2]

Training: one optimiser step = forward + backward + AdamW on a batch of the plan's patches. Measured
twice in the same run: the network alone on random patches (baseline) and the full training step
with the data pipeline (cached toy volumes, foreground-oversampled cropping, MR augmentations).
Plans: ``gtv-t1`` (the shipped model's plan when installed, else the plan of the gtv-t1 fingerprint)
and ``trufi`` (the plan of a 267x267x144, 1.5x1.5x3 mm fingerprint with four structures).
Inference: the predictor on a 267x267x144 toy volume (1.5x1.5x3 mm) with each plan's network,
split into its stages; TTA off (median of ``--repeats``) and on (mirroring over the allowed axes,
timed once), each also with the plan grid's half-voxel phases (``subvoxel``: 2^k passes for k axes the
plan coarsens, timed once). ``--inference-only`` skips the training part. The load average of the machine is printed because the CPU may be shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from sarcart.models.bundle import ModelBundle, load_bundle, shipped_models
from sarcart.models.networks import build_network
from sarcart.models.plan import Budget, Fingerprint, Plan, cost_gflop
from sarcart.models.planner import make_plan


def _plan(task: str) -> Plan:
    if task in shipped_models():
        return load_bundle(shipped_models()[task]).plan
    if task == "gtv-t1":  # the fingerprint of ../shared/data/sts_mr_t1 (34 cases)
        fp = Fingerprint(n_cases=34, structures=["GTV"], spacings_mm=[(0.977, 0.977, 3.27)] * 34,
                         shapes=[(137, 135, 56)] * 34, intensity={"mean": 522.0, "std": 294.0})
        return make_plan(fp, Budget(throughput_gflops=20), task=task)
    fp = Fingerprint(n_cases=36, structures=["GTV", "BOWEL", "KIDNEY_L", "KIDNEY_R"],
                     spacings_mm=[(1.5, 1.5, 3.0)] * 36, shapes=[(267, 267, 144)] * 36, intensity={})
    return make_plan(fp, Budget(throughput_gflops=20), task=task)


def median_time(fn, repeats: int, *, warmup: bool = True) -> float:  # type: ignore[no-untyped-def]
    """Median wall time (s) of ``repeats`` calls of ``fn``, after one untimed warm-up call unless ``warmup=False``."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_network_step(plan: Plan, device: str, *, repeats: int, steps: int = 4) -> float:
    """Patches/s of forward + backward + optimiser step on random patches (no data pipeline)."""
    net = build_network(plan.network, out_channels=plan.n_classes).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    b = plan.schedule.batch_size
    x = torch.randn(b, 1, *plan.patch_size, device=device)
    y = torch.randint(0, plan.n_classes, (b, 1, *plan.patch_size), device=device)
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def run() -> None:
        for _ in range(steps):
            out = net(x)
            heads = torch.unbind(out, 1) if out.ndim == 6 else [out]
            loss = sum(loss_fn(h, y) for h in heads)
            opt.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return steps * b / median_time(run, repeats)


def bench_training_step(plan: Plan, device: str, *, repeats: int, workdir: str, steps: int = 4) -> float:
    """Patches/s of the full training step: cached toy volumes -> crop -> augment -> step."""
    from monai.data import CacheDataset, DataLoader
    from torch.utils.data import RandomSampler

    from sarcart.training.config import AugmentConfig
    from sarcart.training.dataset import build_dataset, load_datalist
    from sarcart.training.module import SegmentationModule
    from sarcart.training.toy import write_toy_dataset
    from sarcart.training.transforms import train_transforms

    kidneys = "KIDNEY_L" in plan.structures
    write_toy_dataset(f"{workdir}/toy", 4, shape=(96, 96, 48), spacing_mm=(2.5, 2.5, 4.0), kidneys=kidneys)
    structures = ["GTV", "KIDNEY_L", "KIDNEY_R"] if kidneys else ["GTV"]
    rep = build_dataset(f"{workdir}/toy", f"{workdir}/set", structures=structures, n_folds=2)
    toy_plan = plan.model_copy(update={"structures": structures})
    ds = CacheDataset(load_datalist(rep.datalist)["training"], train_transforms(toy_plan, AugmentConfig()),
                      progress=False)
    b = plan.schedule.batch_size
    loader = DataLoader(ds, batch_size=b, sampler=RandomSampler(ds, replacement=True, num_samples=10_000))
    module = SegmentationModule(toy_plan.model_dump(mode="json"), {"lr": 1e-3}).to(device)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    it = iter(loader)

    def run() -> None:
        for _ in range(steps):
            batch = next(it)
            loss = module._loss(module.net(batch["image"].to(device)), batch["label"].long().to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return steps * b / median_time(run, repeats)


def bench_inference(plan: Plan, device: str, *, repeats: int, tta: bool, subvoxel: bool = False) -> dict[str, float]:
    """Seconds per stage of the predictor on a 267x267x144 volume (random weights: timing only)."""
    from sarcart.inference.postprocess import postprocess
    from sarcart.training.predict import sliding_window_probs, subvoxel_shifts
    from sarcart.training.preprocess import prepare_image, to_original_grid
    from sarcart.training.toy import toy_case

    image, _ = toy_case(0, shape=(267, 267, 144), spacing_mm=(1.5, 1.5, 3.0), kidneys=True)
    net = build_network(plan.network, out_channels=plan.n_classes)
    bundle = ModelBundle(plan, net.state_dict(), {"name": plan.task})
    net = bundle.network(device)
    amp = torch.bfloat16 if device.startswith("cuda") else None
    stages: dict[str, list[float]] = {"prepare": [], "sliding window": [], "to input grid": [], "post-process": []}
    with torch.no_grad():  # warm-up on one patch
        net(torch.zeros(1, 1, *plan.patch_size, device=device))
    shifts = subvoxel_shifts(image.geometry, plan.target_spacing_mm) if subvoxel else [(0.0, 0.0, 0.0)]
    for _ in range(repeats):
        spent = dict.fromkeys(stages, 0.0)
        back = None
        for shift in shifts:
            t = [time.perf_counter()]
            prep = prepare_image(image, plan, shift_vox=shift)
            t.append(time.perf_counter())
            probs = sliding_window_probs(net, torch.from_numpy(prep.array), plan, tta=tta, amp_dtype=amp)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t.append(time.perf_counter())
            b = to_original_grid(probs.cpu().numpy(), prep.grid, image.geometry)
            back = b if back is None else back + b
            t.append(time.perf_counter())
            for name, t0, t1 in zip(("prepare", "sliding window", "to input grid"), t[:-1], t[1:]):
                spent[name] += t1 - t0
        t0 = time.perf_counter()
        arg = back.argmax(0)
        postprocess({s: arg == k for k, s in enumerate(plan.structures, 1)}, image.geometry)
        spent["post-process"] = time.perf_counter() - t0
        for name, seconds in spent.items():
            stages[name].append(seconds)
    out = {k: statistics.median(v) for k, v in stages.items()}
    out["total"] = sum(out.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/sarcart-bench-seg")
    ap.add_argument("--inference-only", action="store_true", help="skip the training throughput part")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    dev = args.device
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"device: {name}; load average before: {os.getloadavg()[0]:.1f}; repeats: {args.repeats} (median)\n")
    if not args.inference_only:
        training_table(args)
    inference_table(args)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


def training_table(args: argparse.Namespace) -> None:
    dev = args.device
    print("| plan | patch (voxels @ mm) | network only (patches/s) | full step with data + augmentation (patches/s) |"
          " plan's estimate (patches/s) | implied `throughput_gflops` (full step) |")
    print("|---|---|---|---|---|---|")
    for task in ("gtv-t1", "trufi"):
        plan = _plan(task)
        net_ps = bench_network_step(plan, dev, repeats=args.repeats)
        full_ps = bench_training_step(plan, dev, repeats=args.repeats, workdir=f"{args.workdir}/{task}")
        est = plan.schedule.batch_size / plan.schedule.est_seconds_per_iteration
        # the planner's cost model (GFLOP per patch, forward + backward) times the measured rate: the value
        # of Budget.throughput_gflops that would have predicted this machine exactly
        gflop = cost_gflop(plan.patch_size, plan.network.kernel_size, plan.network.strides,
                           filters=plan.network.filters, in_channels=max(1, plan.network.context_slices))
        sp = "x".join(f"{s:.2f}" for s in plan.target_spacing_mm)
        print(f"| {task} | {'x'.join(map(str, plan.patch_size))} @ {sp} | {net_ps:.2f} | {full_ps:.2f} | {est:.2f} "
              f"| {gflop * full_ps:.0f} |")


def inference_table(args: argparse.Namespace) -> None:
    from sarcart.io.geometry import Geometry
    from sarcart.training.predict import subvoxel_shifts

    dev = args.device
    print("\nInference, 267x267x144 volume at 1.5x1.5x3 mm (seconds, median):\n")
    print("| plan | mirror passes x sub-voxel phases (runs) | prepare | sliding window | to input grid | post-process | total |")
    print("|---|---|---|---|---|---|---|")
    grid = Geometry(shape=(267, 267, 144), spacing_mm=(1.5, 1.5, 3.0), origin_mm=(0.0, 0.0, 0.0))
    for task in ("gtv-t1", "trufi"):
        plan = _plan(task)
        phases = len(subvoxel_shifts(grid, plan.target_spacing_mm))
        for tta, subvoxel in ((False, False), (True, False), (False, True)):
            if (tta and not plan.flip_axes) or (subvoxel and phases == 1):
                continue
            reps = 1 if (tta or subvoxel) else args.repeats  # several passes multiply the cost: timed once
            s = bench_inference(plan, dev, repeats=reps, tta=tta, subvoxel=subvoxel)
            passes = 2 ** len(plan.flip_axes) if tta else 1
            print(f"| {task} | {passes} x {phases if subvoxel else 1} (x{reps}) | {s['prepare']:.2f} | {s['sliding window']:.2f} "
                  f"| {s['to input grid']:.2f} | {s['post-process']:.2f} | {s['total']:.2f} |")


if __name__ == "__main__":
    main()
