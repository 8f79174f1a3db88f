"""Benchmark: what the three-term kernel costs in the dose engine (sparse influence and matrix-free modes).

On an abdomen-like water phantom (3 mm grid, elliptic body 300 x 210 mm, 150 mm long, a spherical
target of radius 27 mm at the centre, 15 equispaced beams of the default MR-linac, beamlets covering
the target + 5 mm), the dose is computed on every body voxel within 100 mm of the target's bounding box
(as the planner's calculation voxels) with each beam model:

* ``two-term``: ``mrlinac_6fff_two_term()`` (primary + scatter; the engine's model before);
* ``three-term``: ``mrlinac_6fff()`` (primary + tail + scatter; the tail as a second separable operator);
* ``tail in CSR`` (estimate of the rejected alternative): the three-term model with the tail folded into
  the exact CSR primary, i.e. a CSR with the tail's reach (4 x 4.16 mm instead of 4 x 0.77-1.3 mm);
  its entries are those of :meth:`DoseEngine.primary_entries` for a primary as wide as the tail, and
  the timed products are that matrix's (plus the scatter operator, as in the real mode).

Reported per model: stored entries (CSR primary, scatter sampling, tail sampling), time to build the
operator (ray tracing excluded: shared, done once per model beforehand), one forward + backward of the
sparse dose (median of ``--repeats``), one matrix-free dose (median), and the largest difference between
the two modes for random beamlet weights (percent of the maximum dose).

Run:  .venv/bin/python benchmarks/bench_dose_kernel.py [--repeats 5] [--threads 1] [--spacing 3]
Prints one markdown table and the machine load at the start and end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch

from sarcart.dose.beams import Beam
from sarcart.dose.engine import DoseEngine, bixel_grid_for_target
from sarcart.dose.influence import ScatterOperator, _SparseMv, csr_pair
from sarcart.dose.machine import BeamModel, MachineConfig, mrlinac_6fff, mrlinac_6fff_two_term
from sarcart.io.geometry import Geometry, Volume

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_segmentation import median_time  # the benchmarks' shared timer


def _phantom(spacing: float = 3.0) -> tuple[Volume, Volume, np.ndarray]:
    """Body density, target mask and the flat indices of the calculation voxels."""
    size = (300.0, 210.0, 150.0)
    shape = tuple(int(s / spacing) for s in size)
    g = Geometry(shape, (spacing,) * 3, origin_mm=tuple(-s / 2 + spacing / 2 for s in size))
    w = g.world_grid()
    body = (w[..., 0] / 150.0) ** 2 + (w[..., 1] / 105.0) ** 2 <= 1.0
    target = (w[..., 0] ** 2 + w[..., 1] ** 2 + w[..., 2] ** 2) <= 27.0 ** 2
    box = np.all(np.abs(w) <= 27.0 + 100.0, axis=-1)
    return Volume(body.astype(np.float32), g), Volume(target, g), np.flatnonzero(body & box)


def _forward_backward(dose_fn, n: int) -> None:
    w = torch.rand(n, dtype=torch.float32, requires_grad=True)
    dose_fn(w).square().sum().backward()


def _measure(name: str, model: BeamModel, setup: tuple, repeats: int, *, tail_in_csr: bool = False) -> dict:
    density, points, beams, grids = setup
    eng = DoseEngine(density, points, beams, grids, model)
    for b in range(len(beams)):
        eng.beam_points(b)  # ray tracing, excluded from the build time
    t = time.perf_counter()
    if tail_in_csr:
        wide = DoseEngine(density, points, beams, grids, model.model_copy(
            update={"sigma_p0_mm": model.sigma_tail_mm, "sigma_p_slope": 0.0}))
        wide._cache = eng._cache  # same rays
        primary, primary_t = csr_pair(*wide.primary_entries(), (eng.n_points, eng.n_bixels))
        scatter = ScatterOperator(eng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dose_fn = lambda w: _SparseMv.apply(primary, primary_t, w) + scatter.dose(w)
        nnz = (int(primary.values().numel()), scatter.nnz, 0)
    else:
        infl = eng.influence()
        dose_fn = infl.dose
        nnz = (infl.nnz, infl.scatter.nnz, infl.tail.nnz if infl.tail is not None else 0)
    build = time.perf_counter() - t
    fb = median_time(lambda: _forward_backward(dose_fn, eng.n_bixels), repeats, warmup=False)
    w = torch.rand(eng.n_bixels, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mf = median_time(lambda: eng.dose(w), max(1, repeats // 2), warmup=False)
        diff = "-" if tail_in_csr else f"{100 * float((eng.dose(w) - dose_fn(w)).abs().max() / eng.dose(w).max()):.2f}"
    return {"model": name, "voxels": eng.n_points, "beamlets": eng.n_bixels, "CSR primary nnz": nnz[0],
            "scatter nnz": nnz[1], "tail nnz": nnz[2], "build s": build, "sparse fwd+bwd s": fb,
            "matrix-free dose s": mf, "primary map step mm": round(eng.primary_step_mm, 3),
            "max matrix-free vs sparse, % of max": diff}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--spacing", type=float, default=3.0, help="phantom voxel size (mm); larger for a quick smoke run")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load0 = os.getloadavg()
    density, target, points = _phantom(args.spacing)
    machine = MachineConfig()
    beams = [Beam(a, (0.0, 0.0, 0.0), machine.sad_mm) for a in machine.gantry_angles_deg]
    grids = [bixel_grid_for_target(target, b, machine) for b in beams]
    setup = (density, points, beams, grids)
    DoseEngine(density, points[::50], beams, grids, mrlinac_6fff_two_term()).influence()  # warm-up (imports, allocator)
    rows = [_measure("two-term (before)", mrlinac_6fff_two_term(), setup, args.repeats),
            _measure("three-term, tail as separable maps (engine)", mrlinac_6fff(), setup, args.repeats),
            _measure("three-term, tail in the CSR (estimate)", mrlinac_6fff(), setup, args.repeats, tail_in_csr=True)]
    from bench_dose_reopt import print_table

    print(f"# sarcart dose kernel cost - {os.cpu_count()} CPU(s) visible, {args.threads} torch thread(s), "
          f"load avg at start {'/'.join(f'{x:.1f}' for x in load0)}, at end "
          f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}; median of {args.repeats}; {args.spacing:g} mm grid")
    print_table(rows, lambda v: f"{v:.3f}" if isinstance(v, float)
                else (f"{v:,}".replace(",", " ") if isinstance(v, int) else str(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
