"""Habitats against the phantom's ground truth and their stability between fractions.

For every patient of configs/radiomics/habitat_cohort.yaml: maps of the GTV at fx00..fxF, habitats fitted
at fx00 (k by silhouette in 2..5) and matched at later fractions (Hungarian on centroids). Reported:
Dice of the best-matching habitat with HYPOXIA and with NECROSIS (when the patient has necrosis), and
the stability between fractions: fx00's habitats pulled onto each later fraction through the phantom's
true deformation (fx -> fx00), compared voxel by voxel with that fraction's own habitats (agreement over
the GTV; chance level = sum of squared habitat proportions).

    .venv/bin/python benchmarks/bench_radiomics_habitats.py [--work /tmp/sarcart-radiomics]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from bench_radiomics_cohort import ROOT, cohort_rows, ensure_cohort, fraction_maps


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def pull_back(ref_labels, fx_dir: Path, target_geometry) -> np.ndarray:
    """Reference labels at p + u(p) for every voxel p of the fraction grid (nearest neighbour)."""
    from sarcart.io.nifti import read_nifti

    u = read_nifti(fx_dir / "deformation_to_ref.nii.gz")
    import SimpleITK as sitk

    field = sitk.Cast(u.to_sitk(), sitk.sitkVectorFloat64)
    tx = sitk.DisplacementFieldTransform(field)
    ref = ref_labels.with_array(ref_labels.array.astype(np.uint8)).to_sitk()
    out = sitk.Resample(ref, target_geometry.reference_image(), tx, sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/sarcart-radiomics"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from sarcart.radiomics.habitats import HabitatConfig, habitats_for_course

    cohort = ensure_cohort(ROOT / "configs" / "radiomics" / "habitat_cohort.yaml", args.work)
    print("| patient | k | Dice HYPOXIA (fx00 / later mean) | Dice NECROSIS (fx00) | agreement with fx00 via true "
          "deformation (mean over fractions) | chance |")
    print("|---|---|---|---|---|---|")
    summary = {"hyp": [], "nec": [], "agree": [], "chance": []}
    for row in cohort_rows(cohort):
        fx_dirs = sorted((cohort / row["patient"]).glob("fx[0-9][0-9]"))
        data = [fraction_maps(d, args.threads) for d in fx_dirs]
        labels, models = habitats_for_course([d[0] for d in data], HabitatConfig())
        k = models[0].k
        hyp = [max(dice(lab.array == h, d[1] & d[0].roi.array) for h in range(1, k + 1)) for lab, d in zip(labels, data)]
        nec = (max(dice(labels[0].array == h, data[0][2] & data[0][0].roi.array) for h in range(1, k + 1))
               if data[0][2].any() else float("nan"))
        agree, chance = [], []
        for lab, d, fx in zip(labels[1:], data[1:], fx_dirs[1:]):
            pulled = pull_back(labels[0], fx, lab.geometry)
            roi = lab.array > 0
            agree.append(float((pulled[roi] == lab.array[roi]).mean()))
            p = np.bincount(lab.array[roi], minlength=k + 1)[1:] / roi.sum()
            chance.append(float((p ** 2).sum()))
        summary["hyp"].append(hyp[0])
        summary["agree"].append(statistics.mean(agree))
        summary["chance"].append(statistics.mean(chance))
        if not np.isnan(nec):
            summary["nec"].append(nec)
        print(f"| {row['patient']} | {k} | {hyp[0]:.2f} / {statistics.mean(hyp[1:]):.2f} | "
              f"{'-' if np.isnan(nec) else f'{nec:.2f}'} | {statistics.mean(agree):.2f} | {statistics.mean(chance):.2f} |")
    print(f"| **median** | | {statistics.median(summary['hyp']):.2f} | "
          f"{statistics.median(summary['nec']) if summary['nec'] else float('nan'):.2f} | "
          f"{statistics.median(summary['agree']):.2f} | {statistics.median(summary['chance']):.2f} |")


if __name__ == "__main__":
    main()
