"""Benchmark: AAPM TG-119 C-shape phantom, sarcart vs pyRadPlan vs PyDoseRT (same machine, same run, same evaluation).

The phantom (``TG119.mat``, BSD-3) ships inside the pyRadPlan wheel. Each peer runs in its own environment
through a script under ``/work/bench-envs`` (``--envs``), with one OpenMP/torch thread:

* **pyRadPlan** 0.5.0 (needs ``pydantic<2.12``): ``python3 -m venv /work/bench-envs/pyradplan &&
  /work/bench-envs/pyradplan/bin/pip install pyradplan "pydantic<2.12"``. ``tg119_pyradplan.py`` plans the
  C-shape with pyRadPlan's photon pencil beam (SVD kernel, generic 6 MV machine, SAD 100 cm, 5 mm bixels)
  and its own fluence optimiser (the phantom's objectives: target squared deviation 50 Gy, core
  overdosing 25 Gy, body overdosing 30 Gy; ideal fluence, no sequencing) and writes the CT, the masks and
  its dose as NIfTI.
* **PyDoseRT** 1.5.0 (MIT; torch>=2.6, CPU is fine): ``python3 -m venv /work/bench-envs/pydosert &&
  /work/bench-envs/pydosert/bin/pip install pydosert`` (install the CPU torch wheel first, e.g.
  ``pip install torch==2.13.0`` from a local CPU wheel or ``--index-url https://download.pytorch.org/whl/cpu``,
  so that pip does not pull a CUDA build). ``tg119_pydosert.py`` plans the same CT (PyDoseRT's own HU ->
  density table, its Nyholm-parameterised pencil-kernel engine with the ``varian_10MV`` preset's MLC, head
  scatter and transmission at TPR20/10 = 0.667 for 6 MV, 5 mm calculation grid) by *direct machine
  parameter optimisation*: Adam over PyDoseRT's conditioned leaf / jaw / MU variables of 3 apertures per
  gantry angle (deliverable by construction), with PyDoseRT's dose penalties on the phantom's objectives.

sarcart then plans the same CT (HU -> relative electron density) with its own MR-linac 6 MV FFF model
(SAD 90 cm, double-stacked MLC), the same number of equispaced coplanar beams, 50 Gy in 25 fractions to
the target with the TG-119 core goal as a hard limit (D10 <= 25 Gy), leaf sequencing, aperture
optimisation and final dose included. All three doses are evaluated on the CT grid with the same code:
PTV D95 / D10, core D10 (TG-119 goals: PTV D95 >= 50 Gy, D10 <= 55 Gy; core D10 <= 25 Gy). Not the same
beam models or delivery: pyRadPlan's plan is an ideal fluence, PyDoseRT's and sarcart's are apertures.

Run:  .venv/bin/python benchmarks/bench_dose_tg119.py [--beams 9] [--envs /work/bench-envs] [--skip pydosert]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from sarcart.dose.dvh import DVH
from sarcart.dose.plan import plan_fraction, resample
from sarcart.dose.prescription import PlanPrescription
from sarcart.io.geometry import Volume

ENVS = Path("/work/bench-envs")


def _volume(path: Path) -> Volume:
    return Volume.from_sitk(sitk.ReadImage(str(path)))


def _prescription(n_beams: int) -> PlanPrescription:
    return PlanPrescription.model_validate({
        "name": "tg119_cshape", "dose_gy": 50.0, "fractions": 25, "target": "PTV",
        "objectives": [{"structure": "PTV", "kind": "min", "dose_gy": 50.0, "weight": 100.0},
                       {"structure": "PTV", "kind": "max", "dose_gy": 53.5, "weight": 30.0},
                       {"structure": "CORE", "kind": "mean", "dose_gy": 10.0, "weight": 1.0}],
        "constraints": [{"structure": "CORE", "kind": "dvh_max", "dose_gy": 25.0, "volume_percent": 10.0,
                         "source": "AAPM TG-119 C-shape (easy) core goal D10 <= 25 Gy"}],
        "settings": {"dose_grid_mm": 3.0, "n_beams": n_beams, "second_check": False}})


def _metrics(dose: Volume, masks: dict[str, Volume]) -> dict[str, float]:
    ptv, core = DVH.from_mask("PTV", dose, masks["PTV"]), DVH.from_mask("CORE", dose, masks["CORE"])
    return {"PTV D95 Gy": ptv.D(95), "PTV D10 Gy": ptv.D(10), "PTV mean Gy": ptv.mean, "core D10 Gy": core.D(10)}


def _run_peer(envs: Path, name: str, args: list[str], timings: Path) -> dict[str, object]:
    """Run ``envs/tg119_<name>.py`` in ``envs/<name>`` with one thread; its timings JSON plus the wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run([str(envs / name / "bin" / "python"), str(envs / f"tg119_{name}.py"), *args], check=True,
                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    info = json.loads(timings.read_text())
    info["wall_s"] = time.perf_counter() - t
    return info


def _grid_text(shape: tuple[int, ...] | list[int], mm: tuple[float, ...] | list[float]) -> str:
    return "x".join(str(int(n)) for n in shape) + " at " + "x".join(f"{v:g}" for v in mm) + " mm"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beams", type=int, default=9)
    ap.add_argument("--envs", type=Path, default=ENVS, help="folder with the peer environments and scripts")
    ap.add_argument("--skip", nargs="*", default=[], choices=["pydosert"], help="peers to leave out")
    ap.add_argument("--out", type=Path, help="folder for the phantom and the doses (default: temporary)")
    args = ap.parse_args(argv)
    peers = ["pyradplan"] + [p for p in ("pydosert",) if p not in args.skip]
    for name in peers:
        if not (args.envs / name / "bin" / "python").is_file():
            print(f"{name} environment {args.envs / name} missing: see the docstring", file=sys.stderr)
            return 2
    load0 = os.getloadavg()
    out = args.out or Path(tempfile.mkdtemp(prefix="sarcart-tg119-"))
    rpp = _run_peer(args.envs, "pyradplan", [str(out), str(args.beams)], out / "timings.json")
    ct = _volume(out / "ct.nii.gz")
    masks = {n: _volume(out / f"{f}.nii.gz").with_array(_volume(out / f"{f}.nii.gz").array > 0)
             for n, f in (("PTV", "OuterTarget"), ("CORE", "Core"), ("BODY", "BODY"))}
    rows = [("pyRadPlan 0.5.0 (ideal fluence)", _metrics(_volume(out / "dose_pyradplan.nii.gz"), masks),
             rpp["wall_s"], f"{args.beams} / -", f"{int(rpp['n_bixels'])} bixels",
             _grid_text(rpp["dose_grid"], list(rpp["dose_grid_mm"].values())[:3]), rpp["timings_s"])]
    if "pydosert" in peers:
        pdr = _run_peer(args.envs, "pydosert", [str(out), str(out), str(args.beams)], out / "timings_pydosert.json")
        dose = resample(_volume(out / "dose_pydosert.nii.gz"), ct.geometry, is_mask=False)
        rows.append(("PyDoseRT 1.5.0 (direct leaf/MU optimisation)", _metrics(dose, masks), pdr["wall_s"],
                     f"{args.beams} / {pdr['segments']}", f"{pdr['n_parameters']} leaf/jaw/MU variables",
                     _grid_text(pdr["grid"][::-1], [pdr["grid_mm"]] * 3),
                     {**pdr["timings_s"], "iterations": pdr["iterations"]}))
    p = _prescription(args.beams)
    t = time.perf_counter()
    r = plan_fraction(ct.with_array(ct.array.astype(np.float32)), masks, p, ct=ct)
    wall = time.perf_counter() - t
    ours = resample(r.course_dose, ct.geometry, is_mask=False)
    rows.append(("sarcart (sequenced + DAO)", _metrics(ours, masks), wall, f"{args.beams} / {len(r.segments)}",
                 f"{int(r.info['n_bixels'])} beamlets", _grid_text(r.dose.geometry.shape, r.dose.geometry.spacing_mm),
                 r.timings_s))
    print(f"# TG-119 C-shape, {args.beams} beams - {os.cpu_count()} CPU(s), one thread per engine; load avg "
          f"(1 min) at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f}; CT {ct.geometry.shape} at "
          f"{ct.geometry.spacing_mm} mm; all doses evaluated on the CT grid")
    keys = list(rows[0][1])
    print("| engine | beams / segments | variables | dose grid | " + " | ".join(keys) + " | total s | stages s |")
    print("|" + "---|" * (len(keys) + 6))
    for name, m, wall_s, segs, nvar, grid, stages in rows:
        st = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in stages.items())
        print(f"| {name} | {segs} | {nvar} | {grid} | " + " | ".join(f"{m[k]:.1f}" for k in keys)
              + f" | {wall_s:.1f} | {st} |")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
