"""Independent second check of a plan's dose, as clinics do before delivery.

What is independent: the implementation (NumPy/SciPy only, nothing from :mod:`sarcart.dose.engine`
or :mod:`sarcart.dose.beams`) and the algorithm. Each check point gets its own ray, marched through
the density with ``scipy.ndimage.map_coordinates`` (no beam's-eye-view grid); the segments are
turned into a fluence map on a 1 mm isocentre-plane grid (MU summed per cell) and the pencil kernel
is integrated by direct 2D quadrature over that map at the point's own depth (no separable maps, no
depth nodes, no sparse matrix). What is shared: the beam model's parameters (as for the beam data of
a commercial second-check system) - so it catches implementation, geometry, sequencing and MU
errors, not beam-model errors.

Comparison: point doses and the gamma index (Low et al. 1998, doi 10.1118/1.598248) of each check
point against the plan's dose grid (trilinear interpolation, search within the distance criterion
on a 0.5 mm lattice), global normalisation to the prescribed fraction dose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import erf

from sarcart.dose.machine import BeamModel
from sarcart.io.geometry import Volume


@dataclass(frozen=True)
class CheckResult:
    """Second-check figures (dose per fraction, Gy)."""

    n_points: int
    gamma_pass_rate: float
    gamma_criteria: str
    mean_diff_percent: float
    point_doses: dict[str, tuple[float, float]]  # name -> (plan, check)


def _frame(gantry_deg: float) -> np.ndarray:
    g = math.radians(gantry_deg)
    return np.array([[math.cos(g), math.sin(g), 0.0], [0.0, 0.0, 1.0], [-math.sin(g), math.cos(g), 0.0]])


def _ray_depth(density: Volume, source: np.ndarray, points: np.ndarray, step_mm: float) -> np.ndarray:
    """Water-equivalent path length from ``source`` to each point (independent ray marching)."""
    g = density.geometry
    out = np.zeros(len(points))
    inv = np.linalg.inv(g.affine[:3, :3])
    for i, p in enumerate(points):
        length = float(np.linalg.norm(p - source))
        n = int(length / step_mm) + 1
        t = (np.arange(n) + 0.5) / n
        xyz = source + t[:, None] * (p - source)
        idx = (xyz - np.asarray(g.origin_mm)) @ inv.T
        rho = ndimage.map_coordinates(density.array, idx.T, order=1, mode="constant", cval=0.0)
        out[i] = float(rho.sum()) * length / n
    return out


def _fluence_map(segments: list, beam: int, cell_mm: float, row_edges: np.ndarray) -> tuple[np.ndarray, ...]:
    """MU per ``cell_mm`` cell of the isocentre plane for one beam's segments."""
    segs = [s for s in segments if s.beam == beam]
    u_lo = min(float(np.min(s.left_mm)) for s in segs) - cell_mm
    u_hi = max(float(np.max(s.right_mm)) for s in segs) + cell_mm
    uc = np.arange(u_lo, u_hi, cell_mm) + cell_mm / 2
    vc = np.arange(row_edges[0], row_edges[-1], cell_mm) + cell_mm / 2
    row_of = np.clip(np.searchsorted(row_edges, vc, side="right") - 1, 0, len(row_edges) - 2)
    phi = np.zeros((len(vc), len(uc)))
    for s in segs:
        open_ = (uc[None, :] >= s.left_mm[row_of][:, None]) & (uc[None, :] < s.right_mm[row_of][:, None])
        phi += s.mu * open_
    return uc, vc, phi


def check_dose(result, points_mm: np.ndarray, *, cell_mm: float = 1.0, step_mm: float = 2.0
               ) -> np.ndarray:
    """Independent dose (Gy per fraction) at LPS points ``(n, 3)`` for a :class:`~sarcart.dose.plan.PlanResult`."""
    model: BeamModel = result.model
    density = result.density
    total = np.zeros(len(points_mm))
    for b, (beam, grid) in enumerate(zip(result.beams, result.grids)):
        if not any(s.beam == b for s in result.segments):
            continue
        fr = _frame(beam.gantry_deg)
        iso = np.asarray(beam.isocenter_mm)
        source = iso - beam.sad_mm * fr[2]
        rel = points_mm - iso
        z = rel @ fr[2] + beam.sad_mm
        u, v = rel @ fr[0] * beam.sad_mm / z, rel @ fr[1] * beam.sad_mm / z
        d = _ray_depth(density, source, points_mm, step_mm)
        uc, vc, phi = _fluence_map(result.segments, b, cell_mm, np.asarray(grid.v_edges))
        t = np.hypot(u, v) / beam.sad_mm
        oaf = 1.0 + sum(c * (t / 0.1) ** (k + 1) for k, c in enumerate(model.oaf_coeffs))
        depth_term = (1 - model.buildup_c * np.exp(-model.buildup_beta_per_mm * d)) * \
            np.exp(-model.mu_per_mm * d + model.eta_per_mm2 * d * d)
        ws, wt = model.ws_max * (1 - np.exp(-d / model.ws_len_mm)), model.tail_share
        # (width, share) of the primary, scatter and (three-term models) intermediate tail Gaussians
        terms = [(model.sigma_p0_mm + model.sigma_p_slope * d, 1 - ws - wt),
                 (model.sigma_s0_mm + model.sigma_s_slope * d, ws)]
        if wt > 0:
            terms.append((np.full_like(d, model.sigma_tail_mm), np.full_like(d, wt)))
        h = cell_mm / 2
        for i in range(len(points_mm)):
            lateral = 0.0
            for sigma, share in terms:
                sig = sigma[i]
                ku = 0.5 * (erf((uc + h - u[i]) / (sig * math.sqrt(2))) - erf((uc - h - u[i]) / (sig * math.sqrt(2))))
                kv = 0.5 * (erf((vc + h - v[i]) / (sig * math.sqrt(2))) - erf((vc - h - v[i]) / (sig * math.sqrt(2))))
                lateral += share[i] * float(kv @ phi @ ku)
            total[i] += model.norm * (beam.sad_mm / z[i]) ** 2 * depth_term[i] * oaf[i] * lateral
    return total


def point_gamma(dose: Volume, points_mm: np.ndarray, check: np.ndarray, *, dose_gy: float, dta_mm: float
                ) -> np.ndarray:
    """Gamma of each check point against the dose grid (global ``dose_gy`` criterion, ``dta_mm``)."""
    g = dose.geometry
    r = np.arange(-dta_mm, dta_mm + 1e-9, 0.5)
    off = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    off = off[np.linalg.norm(off, axis=1) <= dta_mm]
    dist2 = (np.linalg.norm(off, axis=1) / dta_mm) ** 2
    inv = np.linalg.inv(g.affine[:3, :3])
    out = np.empty(len(points_mm))
    for i, p in enumerate(points_mm):
        idx = (p + off - np.asarray(g.origin_mm)) @ inv.T
        vals = ndimage.map_coordinates(dose.array, idx.T, order=1, mode="nearest")
        out[i] = math.sqrt(float(np.min(dist2 + ((vals - check[i]) / dose_gy) ** 2)))
    return out


def second_check(result, *, n_points: int = 1500, dose_percent: float = 3.0, dta_mm: float = 3.0,
                 threshold_percent: float = 10.0, seed: int = 0) -> CheckResult:
    """Recompute the plan at sampled voxels (>= threshold of the maximum) and compare (gamma, point doses)."""
    dose = result.dose
    rng = np.random.default_rng(seed)
    cand = np.argwhere(dose.array >= threshold_percent / 100.0 * float(dose.array.max()))
    pick = cand[rng.choice(len(cand), size=min(n_points, len(cand)), replace=False)]
    pts = dose.geometry.index_to_world(pick.astype(float))
    named = {"isocentre": np.asarray(result.beams[0].isocenter_mm)}
    allpts = np.concatenate([pts, np.stack(list(named.values()))])
    chk = check_dose(result, allpts)
    rx = result.prescription.dose_per_fraction_gy
    gam = point_gamma(dose, pts, chk[:len(pts)], dose_gy=dose_percent / 100.0 * rx, dta_mm=dta_mm)
    plan_vals = ndimage.map_coordinates(dose.array, dose.geometry.world_to_index(allpts).T, order=1)
    diff = 100.0 * (chk[:len(pts)] - plan_vals[:len(pts)]) / rx
    return CheckResult(n_points=len(pts), gamma_pass_rate=float(np.mean(gam <= 1.0)),
                       gamma_criteria=f"{dose_percent:g}%/{dta_mm:g} mm global, >= {threshold_percent:g}% of max",
                       mean_diff_percent=float(np.mean(diff)),
                       point_doses={k: (float(plan_vals[len(pts) + i]), float(chk[len(pts) + i]))
                                    for i, k in enumerate(named)})
