"""Benchmark: AAPM TG-119 C-shape phantom, sarcart vs pyRadPlan (same machine, same run, same evaluation).

The phantom (``TG119.mat``, BSD-3) ships inside the pyRadPlan wheel. pyRadPlan needs ``pydantic<2.12``, so
it runs in its own environment (``/work/bench-envs/pyradplan``, created with ``python3 -m venv`` and
``pip install pyradplan "pydantic<2.12"``) through ``/work/bench-envs/tg119_pyradplan.py``, which plans
the C-shape with pyRadPlan's photon pencil beam (SVD kernel, generic 6 MV machine, SAD 100 cm) and
its own fluence optimiser (objectives from the phantom file: target squared deviation 50 Gy, core
overdosing 25 Gy, body overdosing 30 Gy) and writes the CT, the masks and its dose as NIfTI.

sarcart then plans the same CT (HU -> relative electron density) with its own MR-linac 6 MV FFF model
(SAD 90 cm, double-stacked MLC), the same number of equispaced coplanar beams, 50 Gy in 25 fractions to
the target with the TG-119 core goal as a hard limit (D10 <= 25 Gy), leaf sequencing, aperture
optimisation and final dose included. Both doses are evaluated on the CT grid with the same code:
PTV D95 / D10, core D10 (TG-119 goals: PTV D95 >= 50 Gy, D10 <= 55 Gy; core D10 <= 25 Gy). Not the
same beam model or delivery: pyRadPlan's plan is an ideal fluence (no sequencing), sarcart's is
sequenced segments. PyDoseRT (``pydosert`` 1.5.0; it needs torch>=2.6 and runs on CPU) is not compared
yet: no TG-119 planning script was written for it in the time of this task.

Run:  .venv/bin/python benchmarks/bench_dose_tg119.py [--beams 9] [--peer-env /work/bench-envs/pyradplan]
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


def _metrics(name: str, dose: Volume, masks: dict[str, Volume]) -> dict[str, float]:
    ptv, core = DVH.from_mask("PTV", dose, masks["PTV"]), DVH.from_mask("CORE", dose, masks["CORE"])
    return {"PTV D95 Gy": ptv.D(95), "PTV D10 Gy": ptv.D(10), "PTV mean Gy": ptv.mean, "core D10 Gy": core.D(10)}


def _peer(peer_env: Path, out: Path, n_beams: int) -> dict[str, object]:
    script = ENVS / "tg119_pyradplan.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run([str(peer_env / "bin" / "python"), str(script), str(out), str(n_beams)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    info = json.loads((out / "timings.json").read_text())
    info["wall_s"] = time.perf_counter() - t
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beams", type=int, default=9)
    ap.add_argument("--peer-env", type=Path, default=ENVS / "pyradplan")
    ap.add_argument("--out", type=Path, help="folder for the phantom and the doses (default: temporary)")
    args = ap.parse_args(argv)
    if not (args.peer_env / "bin" / "python").is_file():
        print(f"pyRadPlan environment {args.peer_env} missing: see the docstring", file=sys.stderr)
        return 2
    load0 = os.getloadavg()
    out = args.out or Path(tempfile.mkdtemp(prefix="sarcart-tg119-"))
    peer = _peer(args.peer_env, out, args.beams)
    ct = _volume(out / "ct.nii.gz")
    masks = {n: _volume(out / f"{f}.nii.gz").with_array(_volume(out / f"{f}.nii.gz").array > 0)
             for n, f in (("PTV", "OuterTarget"), ("CORE", "Core"), ("BODY", "BODY"))}
    p = _prescription(args.beams)
    t = time.perf_counter()
    r = plan_fraction(ct.with_array(ct.array.astype(np.float32)), masks, p, ct=ct)
    wall = time.perf_counter() - t
    ours = resample(r.course_dose, ct.geometry, is_mask=False)
    rows = [("pyRadPlan 0.5.0 (ideal fluence)", _metrics("pyradplan", _volume(out / "dose_pyradplan.nii.gz"), masks),
             peer["wall_s"], int(peer["n_bixels"]), peer["timings_s"]),
            ("sarcart (sequenced + DAO)", _metrics("sarcart", ours, masks), wall, int(r.info["n_bixels"]), r.timings_s)]
    print(f"# TG-119 C-shape, {args.beams} beams - {os.cpu_count()} CPU(s), torch threads "
          f"{p.settings.threads} (sarcart) / OMP 1 (pyRadPlan); load avg at start {load0[0]:.1f}, at end "
          f"{os.getloadavg()[0]:.1f}; CT {ct.geometry.shape} at {ct.geometry.spacing_mm} mm")
    keys = list(rows[0][1])
    print("| engine | beamlets | " + " | ".join(keys) + " | total s | stages s |")
    print("|" + "---|" * (len(keys) + 4))
    for name, m, wall_s, nb, stages in rows:
        st = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
        print(f"| {name} | {nb} | " + " | ".join(f"{m[k]:.1f}" for k in keys) + f" | {wall_s:.1f} | {st} |")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
