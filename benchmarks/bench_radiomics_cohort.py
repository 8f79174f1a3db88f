"""Shared steps of the phantom-based radiomics benchmarks: synthesise a committed cohort, compute maps.

Run alone it only prepares a cohort: ``.venv/bin/python benchmarks/bench_radiomics_cohort.py SPEC WORK``.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAPS_PARAMS = ROOT / "configs" / "radiomics" / "maps_phantom.yaml"


def ensure_cohort(spec: Path, work: Path) -> Path:
    """``work/<spec name>`` holding the synthetic cohort of ``spec`` (generated once with ``sarcart synth``)."""
    out = work / spec.stem
    if not (out / "cohort.csv").is_file():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sarcart.cli", "synth", "--spec", str(spec), "--out", str(out),
                        "--no-progress"], check=True, capture_output=True)
        print(f"synthesised {spec.name} in {time.perf_counter() - t0:.0f} s -> {out}", file=sys.stderr)
    return out


def cohort_rows(cohort: Path) -> list[dict[str, str]]:
    with open(cohort / "cohort.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def fraction_maps(fx_dir: Path, threads: int = 1):
    """Maps of the GTV of one fraction (on the phantom grid) and its HYPOXIA / NECROSIS truth, all cut to
    the ROI's bounding box (+2 voxels) to keep memory small.

    Returns:
        (FeatureMaps, hypoxia bool array, necrosis bool array, gtv Volume) on that cropped grid.
    """
    import torch

    from sarcart.io.geometry import Volume
    from sarcart.io.labels import read_labels, structure_mask
    from sarcart.io.nifti import read_nifti, write_mask
    from sarcart.radiomics.maps.io import crop_volume, feature_maps

    torch.set_num_threads(threads)
    labels, spec = read_labels(fx_dir / "labels.nii.gz")
    gtv = structure_mask(labels, spec, "GTV")
    nec = structure_mask(labels, spec, "NECROSIS").array if "NECROSIS" in spec.structures else np.zeros(gtv.shape, bool)
    hyp = read_nifti(fx_dir / "hypoxia.nii.gz").array != 0
    with tempfile.TemporaryDirectory() as tmp:
        write_mask(gtv, Path(tmp) / "gtv.nii.gz")
        fm = feature_maps(fx_dir / "image.nii.gz", Path(tmp) / "gtv.nii.gz", MAPS_PARAMS)
    if not fm.roi.geometry.is_close(gtv.geometry):
        raise RuntimeError(f"{fx_dir}: maps are not on the phantom grid; check {MAPS_PARAMS}")
    roi = fm.roi.array

    def cut(a: np.ndarray) -> np.ndarray:
        return crop_volume(Volume(a, gtv.geometry), roi, 2).array

    return fm.cropped(2), cut(hyp), cut(nec), crop_volume(gtv, roi, 2)


if __name__ == "__main__":
    print(ensure_cohort(Path(sys.argv[1]), Path(sys.argv[2])))
