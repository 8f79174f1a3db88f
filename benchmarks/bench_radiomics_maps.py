"""Speed of all voxel-wise feature maps on a real sarcoma (STS_026, 118,353 GTV voxels): sarcart vs pyradiomics.

sarcart computes every map of every GTV voxel (median of ``--repeats`` runs). pyradiomics' voxel-based
mode needs ~20 minutes here, so each of its feature classes runs on ``--subsample`` random GTV voxels
(kernels still masked by the whole GTV, grey levels binned over the whole GTV, as in a full run) and its
time is scaled to all voxels: init + (time per voxel x voxels); median over ``--repeats`` subsamples.
The subsample's values are also compared with sarcart's (max |diff| / max(|value|, range), float64).

    .venv/bin/python benchmarks/bench_radiomics_maps.py [--case STS_026] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sts_mr_t1"
PARAMS = ROOT / "configs" / "radiomics" / "maps_benchmark.yaml"
CLASSES = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


def run_sarcart(arr: np.ndarray, roi: np.ndarray, settings, spacing, device: str, repeats: int):
    from sarcart.radiomics.maps import compute_feature_maps

    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = compute_feature_maps(arr, roi, settings, spacing_mm=spacing, device=device)
        times.append(time.perf_counter() - t0)
    return times, result


def run_pyradiomics(image: sitk.Image, mask: sitk.Image, setting: dict, n_sub: int, repeats: int, seed: int):
    import radiomics
    from radiomics import getFeatureClasses, imageoperations

    radiomics.setVerbosity(50)
    kw = {**setting, "voxelBased": True, "kernelRadius": 1}
    mask = imageoperations.getMask(mask, **kw)
    bb, _ = imageoperations.checkMask(image, mask, **kw)
    ci, cm = imageoperations.cropToTumorMask(image, mask, bb, padDistance=1)
    rng = np.random.default_rng(seed)
    per_class, values = {}, {}
    for cls in CLASSES:
        runs = []
        for rep in range(repeats):
            t0 = time.perf_counter()
            feat = getFeatureClasses()[cls](ci, cm, **kw)
            t_init = time.perf_counter() - t0
            n = feat.labelledVoxelCoordinates.shape[1]
            pick = np.sort(rng.choice(n, n_sub, replace=False))
            feat.labelledVoxelCoordinates = feat.labelledVoxelCoordinates[:, pick]
            feat.enableAllFeatures()
            t1 = time.perf_counter()
            out = feat.execute()
            t_vox = (time.perf_counter() - t1) / n_sub
            runs.append(t_init + t_vox * n)
            if rep == 0:
                offset = np.array(image.TransformPhysicalPointToIndex(ci.GetOrigin()))
                zyx = feat.labelledVoxelCoordinates
                xyz = zyx[::-1].T + offset
                values[cls] = {k: sitk.GetArrayFromImage(v)[tuple(zyx)] for k, v in out.items()}, xyz
        per_class[cls] = statistics.median(runs)
    return per_class, values


def agreement(result, values) -> float:
    worst = 0.0
    for cls, (feats, xyz) in values.items():
        for name, ref in feats.items():
            ours = result.maps[f"{cls}_{name}"][tuple(xyz.T)]
            full = result.maps[f"{cls}_{name}"]
            finite = np.isfinite(ref) & np.isfinite(ours)
            if name in ("JointAverage", "MCC"):
                continue  # pyradiomics' default batching: NaN / failed batch (docs/radiomics.md)
            rng = np.ptp(full[np.isfinite(full) & (full != 0)]) if np.any(full != 0) else 0.0
            scale = np.maximum(np.abs(ref[finite]), rng)
            if finite.any():
                worst = max(worst, float(np.max(np.abs(ours[finite] - ref[finite]) / np.where(scale > 0, scale, 1))))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="STS_026")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--subsample", type=int, default=500)
    ap.add_argument("--skip-pyradiomics", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sarcart.radiomics.maps import MapSettings
    from sarcart.radiomics.params import load_params

    p = load_params(PARAMS)
    settings = MapSettings.from_pyradiomics({**p.settings, **p.voxel_settings})
    image = sitk.ReadImage(str(DATA / args.case / "image.nii.gz"))
    mask = sitk.ReadImage(str(DATA / args.case / "gtv.nii.gz"))
    arr = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    roi = sitk.GetArrayFromImage(mask).transpose(2, 1, 0) == 1
    times, result = run_sarcart(arr, roi, settings, image.GetSpacing(), args.device, args.repeats)
    n = result.n_voxels
    print(f"case {args.case}: {n} GTV voxels, {len(result.maps)} maps, torch threads {args.threads}, "
          f"device {args.device}")
    print("\n| implementation | voxels timed | median time for all maps (s) | per class (s) |")
    print("|---|---|---|---|")
    per = ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items())
    print(f"| sarcart ({args.device}) | {n} | {statistics.median(times):.1f} (runs: "
          f"{', '.join(f'{t:.1f}' for t in times)}) | {per} |")
    if args.skip_pyradiomics:
        return
    per_class, values = run_pyradiomics(image, mask, dict(p.settings), args.subsample, args.repeats, 0)
    total = sum(per_class.values())
    print(f"| pyradiomics 3.0.1 (scaled from {args.subsample} voxels/class) | {args.subsample} x {len(CLASSES)} | "
          f"{total:.0f} | {', '.join(f'{k} {v:.0f}' for k, v in per_class.items())} |")
    print(f"\nspeed-up: {total / statistics.median(times):.0f}x; max |sarcart - pyradiomics| / max(|value|, range) "
          f"on the subsample (JointAverage, MCC excluded: pyradiomics default batching): {agreement(result, values):.2e}")


if __name__ == "__main__":
    main()
