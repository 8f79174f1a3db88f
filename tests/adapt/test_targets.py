"""Target margins in mm on anisotropic grids, checked against analytic volumes and extents."""

from __future__ import annotations

import numpy as np
import pytest

from sarcart.adapt.targets import (EXTREMITY_PREOP, RETROPERITONEUM_PREOP, DEFINITIVE, Margin, build_targets,
                                   distance_mm, expand)
from sarcart.errors import ConfigError, InvalidImageError
from sarcart.io.geometry import Geometry, Volume

G = Geometry((120, 110, 60), (1.0, 1.0, 3.0), (-60.0, -55.0, -90.0))


def _sphere(radius_mm: float, centre=(0.0, 0.0, 0.0)) -> Volume:
    p = G.world_grid()
    return Volume(np.linalg.norm(p - np.asarray(centre), axis=-1) <= radius_mm, G)


def test_isotropic_margin_volume_matches_the_analytic_sphere() -> None:
    gtv = _sphere(15.0)
    ptv = expand(gtv, Margin(3.0))
    vol = ptv.array.sum() * G.voxel_volume_cc
    # the margin is measured from voxel centres of the discretised GTV, which lies up to half a
    # voxel inside the true surface: the expanded volume is within 10 % of the continuous sphere
    assert vol == pytest.approx(4 / 3 * np.pi * 1.8**3, rel=0.10)
    # the 3 mm margin along z (3 mm slices) adds exactly one slice above and below
    z_gtv = np.flatnonzero(gtv.array.any(axis=(0, 1)))
    z_ptv = np.flatnonzero(ptv.array.any(axis=(0, 1)))
    assert (z_ptv[0], z_ptv[-1]) == (z_gtv[0] - 1, z_gtv[-1] + 1)


def test_margin_equals_brute_force_nearest_voxel_distance() -> None:
    """The EDT result equals the definition, computed independently with a k-d tree."""
    from scipy.spatial import cKDTree

    g = Geometry((30, 28, 16), (1.2, 0.9, 2.5), (0.0, 0.0, 0.0))
    rng = np.random.default_rng(0)
    m = np.zeros(g.shape, bool)
    m[10:18, 9:15, 5:9] = rng.random((8, 6, 4)) > 0.3
    margin = Margin(4.0, 7.0)
    got = expand(Volume(m, g), margin).array
    pts = g.world_grid().reshape(-1, 3) / np.asarray(margin.world_mm)
    dist, _ = cKDTree(pts[m.reshape(-1)]).query(pts)
    assert (got.reshape(-1) == (dist <= 1.0 + 1e-9)).all()


def test_ellipsoidal_margin_extents() -> None:
    gtv = Volume(np.zeros(G.shape, bool), G)
    gtv.array[60, 55, 30] = True  # a single voxel: the expansion is the margin ellipsoid itself
    ctv = expand(gtv, Margin(15.0, 30.0))
    ii, jj, kk = np.nonzero(ctv.array)
    assert (ii.max() - 60, jj.max() - 55, (kk.max() - 30) * 3.0) == (15, 15, 30.0)
    assert ctv.array.sum() * G.voxel_volume_cc == pytest.approx(4 / 3 * np.pi * 1.5 * 1.5 * 3.0, rel=0.08)


def test_distance_is_in_mm() -> None:
    m = Volume(np.zeros(G.shape, bool), G)
    m.array[:, :, 10] = True
    d = distance_mm(m)
    assert d[5, 5, 14] == pytest.approx(12.0)


def test_definitive_ptv_is_cropped_to_the_body() -> None:
    gtv = _sphere(12.0, (0, 0, 0))
    body = _sphere(13.0, (0, 0, 0))
    t = build_targets({"GTV": gtv, "BODY": body}, DEFINITIVE)
    assert set(t) == {"PTV"} and not (t["PTV"].array & ~body.array).any()


def test_extremity_ctv_includes_edema_excludes_bone_and_skin() -> None:
    gtv = _sphere(10.0, (0, 0, 0))
    edema = _sphere(14.0, (0, 0, 0)).array & ~gtv.array
    bone = Volume(np.abs(G.world_grid()[..., 0] - 20.0) < 4.0, G)  # a bone slab 16-24 mm from the centre
    body = _sphere(45.0)
    t = build_targets({"GTV": gtv, "EDEMA": Volume(edema, G), "BONE": bone, "BODY": body}, EXTREMITY_PREOP)
    ctv = t["CTV"].array
    assert (ctv & edema).sum() == edema.sum()
    assert not (ctv & bone.array).any()
    skin_depth = distance_mm(Volume(~body.array, G))
    assert skin_depth[ctv].min() > 3.0 - 1e-6
    p = G.world_grid()[ctv]
    assert np.ptp(p[:, 2]) == pytest.approx(2 * (10 + 30), abs=3.0)  # 3 cm longitudinally (3 mm slices)
    assert np.ptp(p[:, 1]) == pytest.approx(2 * (10 + 15), abs=1.0)  # 1.5 cm radially


def test_retroperitoneal_ctv_reaches_only_5mm_into_bowel() -> None:
    gtv = _sphere(10.0)
    bowel = Volume(G.world_grid()[..., 1] > 12.0, G)  # bowel beyond y = 12 mm, 2 mm from the GTV
    t = build_targets({"GTV": gtv, "BOWEL": bowel}, RETROPERITONEUM_PREOP)
    depth = distance_mm(gtv)[t["CTV"].array & bowel.array]
    assert depth.max() <= 5.0 + 1e-6 and depth.size > 0
    assert (t["CTV"].array & ~bowel.array).sum() > 0


def test_errors() -> None:
    with pytest.raises(InvalidImageError, match="empty mask"):
        expand(Volume(np.zeros(G.shape, bool), G), Margin(3.0))
    with pytest.raises(ConfigError, match=">= 0 mm"):
        Margin(-1.0)
    with pytest.raises(InvalidImageError, match="a GTV is needed"):
        build_targets({"BODY": _sphere(5.0)}, DEFINITIVE)
