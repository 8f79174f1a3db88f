"""Planning volumes: margins, evaluation PTV, dose grid, painting map and optimisation voxels against
brute-force set operations and analytic geometry."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from sarcart.dose.prescription import PaintingSpec, PlanPrescription, PlanSettings
from sarcart.dose.volumes import (
    EVAL_SUFFIX,
    calc_box,
    dose_grid,
    evaluation_target,
    grow_mask,
    painting_from_spec,
    plan_objectives,
    points_and_structures,
    prepare_structures,
)
from sarcart.io.geometry import Geometry, Volume

GEOM = Geometry((30, 26, 18), (2.0, 2.5, 3.0), (-30.0, -32.5, -27.0))


def _xyz(g: Geometry) -> np.ndarray:
    return g.world_grid()


def _sphere(g: Geometry, centre, radius: float) -> np.ndarray:
    return np.linalg.norm(_xyz(g) - np.asarray(centre), axis=-1) <= radius


def _brute_grow(mask: np.ndarray, g: Geometry, margin: float) -> np.ndarray:
    """Voxels whose centre lies within ``margin`` mm of a mask voxel centre (k-d tree, world coordinates)."""
    xyz = _xyz(g).reshape(-1, 3)
    dist, _ = cKDTree(xyz[mask.ravel()]).query(xyz)
    return (dist <= margin + 1e-9).reshape(mask.shape)


def _presc(**kw) -> PlanPrescription:
    return PlanPrescription(name="t", dose_gy=48.0, fractions=6, **kw)


def test_grow_mask_matches_brute_force_distances_on_an_anisotropic_grid():
    gtv = _sphere(GEOM, (2.0, -1.0, 1.5), 9.0)
    for margin in (3.0, 7.5):
        assert np.array_equal(grow_mask(Volume(gtv, GEOM), margin).array, _brute_grow(gtv, GEOM, margin))


def test_evaluation_ptv_is_ptv_minus_the_organ_prv():
    ptv = _sphere(GEOM, (0.0, 0.0, 0.0), 15.0)
    bowel = _sphere(GEOM, (16.0, 4.0, 0.0), 8.0)
    p = _presc(target_exclude=["BOWEL"], target_exclude_margin_mm=3.0)
    ev = evaluation_target({"PTV": Volume(ptv, GEOM), "BOWEL": Volume(bowel, GEOM)}, p)
    brute = ptv & ~_brute_grow(bowel, GEOM, 3.0)
    assert np.array_equal(ev.array, brute)
    removed = int(ptv.sum() - brute.sum())
    assert 0 < removed < ptv.sum() and ev.array.sum() * GEOM.voxel_volume_cc == brute.sum() * GEOM.voxel_volume_cc
    # nothing to exclude, or the PTV entirely inside the PRV: coverage stays on the PTV
    assert evaluation_target({"PTV": Volume(ptv, GEOM)}, p) is None
    assert evaluation_target({"PTV": Volume(ptv, GEOM), "BOWEL": Volume(ptv, GEOM)}, p) is None


def test_prepare_structures_makes_the_ptv_and_the_kidney_union():
    gtv = _sphere(GEOM, (0.0, 0.0, 0.0), 10.0)
    body = _xyz(GEOM)[..., 0] < 8.0  # the body surface cuts the grown GTV
    kl, kr = _sphere(GEOM, (-20.0, 10.0, 0.0), 5.0), _sphere(GEOM, (20.0, 10.0, 0.0), 5.0)
    masks = {n: Volume(m, GEOM) for n, m in (("GTV", gtv), ("BODY", body), ("KIDNEY_L", kl), ("KIDNEY_R", kr))}
    out = prepare_structures(masks, _presc(ptv_margin_mm=4.0))
    assert np.array_equal(out["PTV"].array, _brute_grow(gtv, GEOM, 4.0) & body)
    assert np.array_equal(out["KIDNEYS"].array, kl | kr) and out["KIDNEYS"].array.sum() == kl.sum() + kr.sum()


def test_plan_objectives_move_coverage_to_the_evaluation_ptv():
    p = _presc(objectives=[{"structure": "PTV", "kind": "min", "dose_gy": 48.0, "weight": 100.0},
                           {"structure": "PTV", "kind": "max", "dose_gy": 51.4, "weight": 30.0},
                           {"structure": "BOWEL", "kind": "geud_max", "dose_gy": 15.0}],
               constraints=[{"structure": "BOWEL", "kind": "dvh_max", "dose_gy": 35.5, "volume_cc": 0.5}])
    present = {"PTV", "PTV" + EVAL_SUFFIX, "BOWEL"}
    objs, cons = plan_objectives(p, present, painting=False)
    where = {(o.kind, o.structure) for o in objs}
    assert where == {("min", "PTV_EVAL"), ("max", "PTV"), ("geud_max", "BOWEL")}
    assert abs(next(o for o in objs if o.kind == "min").dose_gy - 8.0) < 1e-12  # course 48 Gy / 6 fractions
    assert [c.structure for c in cons] == ["BOWEL"] and np.isclose(cons[0].dose_gy, 35.5 / 6)  # on the whole organ
    objs, _ = plan_objectives(p, present, painting=True)
    assert {(o.kind, o.structure) for o in objs} == {("min", "PTV_EVAL"), ("painting", "PTV_EVAL"), ("geud_max", "BOWEL")}


def test_dose_grid_covers_the_body_bounding_box():
    body = np.zeros(GEOM.shape, bool)
    body[3:22, 5:20, 2:15] = True
    g = dose_grid(Volume(body, GEOM), 4.0)
    lo_edge = GEOM.index_to_world(np.array([3, 5, 2]) - 0.5)
    hi_edge = GEOM.index_to_world(np.array([21, 19, 14]) + 0.5)
    assert np.allclose(g.origin_mm, lo_edge + 2.0)  # first voxel centre half a dose voxel inside the box
    assert g.shape == tuple(int(np.ceil((h - l) / 4.0)) for h, l in zip(hi_edge, lo_edge))
    grid_hi = np.asarray(g.origin_mm) + (np.asarray(g.shape) - 0.5) * 4.0
    assert np.all(grid_hi >= hi_edge - 1e-9) and np.all(grid_hi - hi_edge < 4.0)


def test_calc_box_matches_brute_force():
    target = np.zeros(GEOM.shape, bool)
    target[10:14, 8:11, 6:9] = True
    box = calc_box(Volume(target, GEOM), 5.0)
    i, j, k = np.indices(GEOM.shape)
    pad = np.ceil(5.0 / np.asarray(GEOM.spacing_mm)).astype(int)  # 3, 2, 2 voxels
    brute = (i >= 10 - pad[0]) & (i <= 13 + pad[0]) & (j >= 8 - pad[1]) & (j <= 10 + pad[1]) & \
        (k >= 6 - pad[2]) & (k <= 8 + pad[2])
    assert np.array_equal(box, brute)


def test_painting_map_is_the_analytic_ramp_around_the_grown_boost():
    g = Geometry((41, 41, 41), (1.0, 1.0, 1.0), (-20.0, -20.0, -20.0))
    r = np.linalg.norm(_xyz(g), axis=-1)
    ptv, hyp = r <= 18.0, r <= 4.0
    spec = PaintingSpec(boost_structure="HYPOXIA", boost_gy=60.0, grow_mm=3.0, ramp_mm=5.0)
    pmap = painting_from_spec({"PTV": Volume(ptv, g), "HYPOXIA": Volume(hyp, g)}, _presc(painting=spec)).array
    analytic = 60.0 - 12.0 * np.clip((r - 7.0) / 5.0, 0.0, 1.0)  # boost to r = 4 + 3 mm, then 5 mm to 48 Gy
    assert np.all(pmap[~ptv] == 0.0)
    assert np.allclose(pmap[ptv & (r <= 6.0)], 60.0) and np.allclose(pmap[ptv & (r >= 13.0)], 48.0)
    # voxelised distances: within one voxel of the analytic radius, i.e. 12 Gy / 5 mm x 1 mm
    assert np.max(np.abs(pmap[ptv] - analytic[ptv])) <= 2.4 + 1e-4  # (float32 map)


def test_subsampled_organs_keep_their_exact_volume():
    g = Geometry((40, 40, 30), (3.0, 3.0, 3.0), (-60.0, -60.0, -45.0))
    xyz = _xyz(g)
    body = np.linalg.norm(xyz[..., :2], axis=-1) <= 57.0
    ptv = _sphere(g, (0.0, 0.0, 0.0), 12.0)
    kidneys = (np.abs(xyz[..., 0] - 35.0) <= 12.0) & (np.abs(xyz[..., 1]) <= 15.0)  # long in z: far parts exist
    p = _presc(settings=PlanSettings(far_mm=15.0, far_stride=3, calc_margin_mm=30.0))
    dmasks = {"BODY": Volume(body, g), "PTV": Volume(ptv, g), "KIDNEYS": Volume(kidneys, g)}
    body_idx, opt_pos, structs, weights, outside = points_and_structures(dmasks, p, {"PTV", "KIDNEYS"})
    inbox = body & calc_box(Volume(ptv, g), 30.0)
    assert np.array_equal(body_idx, np.flatnonzero(inbox))
    assert outside["KIDNEYS"] == float((kidneys & ~inbox).sum())
    n_kid = len(structs["KIDNEYS"])
    assert n_kid < (kidneys & inbox).sum()  # subsampled ...
    assert abs(float(weights["KIDNEYS"].sum()) - float((kidneys & inbox).sum())) < 1e-6  # ... volume exact
    # the PTV is never subsampled, and its optimisation voxels are exactly its voxels
    flat = np.flatnonzero(inbox)[opt_pos]
    assert "PTV" not in weights and np.array_equal(np.sort(flat[structs["PTV"].numpy()]), np.flatnonzero(ptv & inbox))
