"""What the plan grid alone costs: a perfect network on the plan grid, one pass vs the sub-voxel phases.

    python benchmarks/bench_grid_ceiling.py [--data mlruns/datasets/trufi_val/datalist.json] [--spacing 3 3 3]
        [--every 3]

The reference label map of each image is taken to the plan grid the way training takes it (nearest
neighbour, :func:`sarcart.training.preprocess.prepare_labels`), turned into one-hot probabilities, and brought
back to the image's grid the way the predictor brings probabilities back (linear,
:func:`~sarcart.training.preprocess.to_original_grid`, then argmax): the Dice of a network that is exactly
right on every plan voxel. Done on the unshifted grid (one pass) and averaged over the grid's half-voxel
phases (:func:`sarcart.training.predict.subvoxel_shifts`), as the predictor does with ``subvoxel=True``.
No network is run; a few seconds per image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "mlruns/datasets/trufi_val/datalist.json")
    ap.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 3.0), help="plan spacing (mm)")
    ap.add_argument("--every", type=int, default=3, help="use every N-th image of the datalist")
    args = ap.parse_args()

    from sarcart.io.labels import read_labels
    from sarcart.training.dataset import load_datalist
    from sarcart.training.predict import subvoxel_shifts
    from sarcart.training.preprocess import grid_for, prepare_labels, to_original_grid

    spacing = tuple(args.spacing)
    data = load_datalist(args.data)
    structures = list(data["structures"])
    entries = data["training"][:: args.every]
    dice: dict[str, dict[str, list[float]]] = {"one pass": {}, "sub-voxel phases": {}}
    for e in entries:
        vol, spec = read_labels(e["label"])
        ref = {s: np.isin(vol.array, spec.structures[s]) for s in structures if s in spec.structures}
        index = np.zeros(vol.array.shape, np.uint8)
        for k, s in enumerate(structures, 1):
            if s in ref:
                index[ref[s]] = k
        indexed = vol.with_array(index)
        shifts = subvoxel_shifts(vol.geometry, spacing)
        for mode, use in (("one pass", shifts[:1]), ("sub-voxel phases", shifts)):
            total = None
            for shift in use:
                grid = grid_for(vol.geometry, spacing, shift_vox=shift)
                coarse = prepare_labels(indexed, grid)
                onehot = np.stack([(coarse == k).astype(np.float32) for k in range(len(structures) + 1)])
                back = to_original_grid(onehot, grid, vol.geometry)
                total = back if total is None else total + back
            arg = np.argmax(total, axis=0)
            for k, s in enumerate(structures, 1):
                if s in ref and ref[s].any():
                    p = arg == k
                    dice[mode].setdefault(s, []).append(2 * float((p & ref[s]).sum()) / float(p.sum() + ref[s].sum()))
        print(e["case"], "phases:", len(shifts), flush=True)
    print(f"\n{len(entries)} images of {args.data}; plan spacing {tuple(args.spacing)} mm; mean Dice of a perfect "
          "plan-grid network:\n")
    print("| structure | one pass | sub-voxel phases |\n|---|---|---|")
    for s in structures:
        if s in dice["one pass"]:
            print(f"| {s} | {np.mean(dice['one pass'][s]):.3f} | {np.mean(dice['sub-voxel phases'][s]):.3f} |")


if __name__ == "__main__":
    main()
