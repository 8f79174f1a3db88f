"""Adapt-or-not rules on hand-made metrics, course accumulation on a hand-made course, BODY rule, painting paste."""

from __future__ import annotations

import numpy as np
import pytest

from sarcart.adapt.config import DecisionSettings, load_adapt_config
from sarcart.adapt.course_summary import accumulate_course
from sarcart.adapt.decide import decide
from sarcart.adapt.segment import body_from_image, dice
from sarcart.errors import ConfigError
from sarcart.io.course import CourseConfig, Prescription, write_course
from sarcart.io.geometry import Geometry, Volume
from sarcart.io.nifti import write_nifti


def _metrics(d95: float, bowel_cc: float, bowel_met: bool, qf: float | None = None) -> dict:
    m = {"prescription": {"dose_gy": 48.0}, "structures": {"PTV": {"D95_gy": d95}},
         "constraints": [{"structure": "BOWEL", "kind": "dvh_max", "dose_gy": 35.5, "value": bowel_cc, "limit": 0.5,
                          "met": bowel_met}]}
    if qf is not None:
        m["painting"] = {"qf": qf}
    return m


def test_predicted_plan_that_meets_everything_is_delivered() -> None:
    ref = _metrics(47.9, 0.3, True, qf=0.010)
    d = decide(_metrics(46.0, 0.4, True, qf=0.025), ref, boost_dice=0.9)
    assert not d.adapt and d.reasons == []  # 46.0 >= 0.95 * 48 = 45.6; QF 0.025 <= 0.010 + 0.02
    assert [c["passed"] for c in d.checks] == [True, True, True, True]


@pytest.mark.parametrize(("pred", "dice_", "why"), [
    (_metrics(45.5, 0.3, True), None, "PTV D95"),                  # 45.5 < 45.6
    (_metrics(47.0, 0.7, False), None, "BOWEL dvh_max"),            # limit met by the reference, missed today
    (_metrics(47.0, 0.3, True, qf=0.031), None, "painting QF"),     # 0.031 > 0.010 + 0.02
    (_metrics(47.0, 0.3, True, qf=0.011), 0.6, "boost region"),     # Dice 0.6 < 0.7
])
def test_each_rule_triggers_reoptimisation(pred, dice_, why) -> None:
    d = decide(pred, _metrics(47.9, 0.3, True, qf=0.010), boost_dice=dice_)
    assert d.adapt and len(d.reasons) == 1 and d.reasons[0].startswith(why)


def test_limit_missed_by_the_reference_counts_only_when_worse_by_the_tolerance() -> None:
    ref = _metrics(47.9, 1.0, False)
    assert not decide(_metrics(47.9, 1.04, False), ref).adapt       # within 5 %
    assert decide(_metrics(47.9, 1.06, False), ref).adapt           # 6 % worse
    forced = decide(_metrics(47.9, 1.0, False), ref, settings=DecisionSettings(force="always"))
    assert forced.adapt and forced.reasons == ["forced: always"]


def test_adapt_config_rejects_unknown_keys(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("segment:\n  modle: trufi\n")
    with pytest.raises(ConfigError, match="modle"):
        load_adapt_config(tmp_path / "a.yaml")
    from sarcart.adapt.config import CONFIG_ROOT

    for f in (CONFIG_ROOT / "adapt").glob("*.yaml"):
        load_adapt_config(f)


def _course_with_identical_fractions(tmp_path, n_delivered: int):
    g = Geometry((12, 10, 8), (4.0, 4.0, 4.0), (-20.0, -18.0, -14.0))
    write_course(tmp_path, CourseConfig(patient="P1", site="retroperitoneum",
                                        prescription=Prescription(dose_gy=48.0, fractions=6)))
    rng = np.random.default_rng(3)
    planned_course = rng.uniform(0.0, 50.0, g.shape).astype(np.float32)
    write_nifti(Volume(planned_course, g), tmp_path / "fx00" / "plan" / "dose.nii.gz")
    frac = rng.uniform(0.0, 10.0, g.shape).astype(np.float32)
    zero = np.zeros((*g.shape, 3), np.float32)
    for k in range(1, n_delivered + 1):
        write_nifti(Volume(frac, g), tmp_path / f"fx{k:02d}" / "delivered" / "dose.nii.gz")
        write_nifti(Volume(zero, g), tmp_path / f"fx{k:02d}" / "delivered" / "deformation_estimated.nii.gz")
    from sarcart.io.course import load_course

    return load_course(tmp_path), g, planned_course, frac


def test_identical_fractions_accumulate_to_n_times_the_fraction_dose(tmp_path) -> None:
    course, g, planned, frac = _course_with_identical_fractions(tmp_path, 3)
    ptv = np.zeros(g.shape, bool)
    ptv[3:9, 3:7, 2:6] = True
    acc = accumulate_course(course, {"PTV": Volume(ptv, g)})
    assert acc["fractions"] == [1, 2, 3]
    np.testing.assert_allclose(acc["physical_gy"].array, 3 * frac, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(acc["planned"].array, planned * 3 / 6, rtol=1e-6)
    # EQD2 of 3 x d at alpha/beta 4 in the PTV, 3 elsewhere: 3 d (d + ab) / (2 + ab)
    ab = np.where(ptv, 4.0, 3.0)
    np.testing.assert_allclose(acc["eqd2_gy"].array, 3 * frac * (frac + ab) / (2 + ab), rtol=1e-4, atol=1e-4)


def test_eqd2_of_six_times_six_gy_matches_the_facts_example(tmp_path) -> None:
    course, g, _, _ = _course_with_identical_fractions(tmp_path, 0)
    for k in range(1, 7):  # 6 x 6 Gy at alpha/beta 4 -> EQD2 60.0 Gy (FACTS.md section 6 worked example)
        write_nifti(Volume(np.full(g.shape, 6.0, np.float32), g), tmp_path / f"fx{k:02d}" / "delivered" / "dose.nii.gz")
        write_nifti(Volume(np.zeros((*g.shape, 3), np.float32), g),
                    tmp_path / f"fx{k:02d}" / "delivered" / "deformation_estimated.nii.gz")
    acc = accumulate_course(course, {"GTV": Volume(np.ones(g.shape, bool), g)})
    np.testing.assert_allclose(acc["eqd2_gy"].array, 60.0, rtol=1e-5)
    np.testing.assert_allclose(acc["physical_gy"].array, 36.0, rtol=1e-6)


def test_body_rule_recovers_a_bright_ellipsoid_with_a_dark_hole() -> None:
    g = Geometry((40, 36, 20), (3.0, 3.0, 6.0))
    i, j, k = np.meshgrid(*[np.arange(n) for n in g.shape], indexing="ij")
    body = ((i - 20) / 15.0) ** 2 + ((j - 18) / 12.0) ** 2 + ((k - 10) / 8.0) ** 2 <= 1.0
    gas = ((i - 20) / 4.0) ** 2 + ((j - 18) / 3.0) ** 2 + ((k - 10) / 2.0) ** 2 <= 1.0   # dark inside the body
    img = np.where(body & ~gas, 300.0, 5.0) + np.random.default_rng(0).normal(0, 10, g.shape)
    got = body_from_image(Volume(img.astype(np.float32), g)).array
    assert dice(got, body) > 0.97 and got[gas].all()


def test_spared_volume_limit_is_left_out_only_when_the_organ_is_smaller_than_it() -> None:
    from sarcart.adapt.config import CONFIG_ROOT
    from sarcart.adapt.course_init import applicable_prescription
    from sarcart.dose.prescription import load_prescription

    presc = load_prescription(CONFIG_ROOT / "prescriptions" / "retroperitoneum_48gy_6fx.yaml")
    g = Geometry((50, 50, 50), (2.0, 2.0, 2.0))  # 8 mm3 voxels
    for n_vox in (12000, 12600):  # kidneys 2 x 96 cc = 192 cc (< 200 cc spared) / 2 x 100.8 cc = 201.6 cc
        left, right = np.zeros(g.shape, bool), np.zeros(g.shape, bool)
        left.ravel()[: n_vox] = True
        right.ravel()[-n_vox:] = True
        small = n_vox == 12000
        p, notes = applicable_prescription(presc, {"KIDNEY_L": Volume(left, g), "KIDNEY_R": Volume(right, g)})
        names = [c.structure for c in p.constraints]
        assert ("KIDNEYS" not in names) == small and (len(notes) == 1) == small
        assert "BOWEL" in names


@pytest.mark.parametrize(("delivered_scale", "expected"), [(1.0, 1.0), (0.9, 1.05), (0.5, 1.15)])
def test_compensation_asks_for_what_is_still_needed(tmp_path, delivered_scale, expected) -> None:
    from sarcart.adapt.compensate import compensated_prescription
    from sarcart.io.course import load_course

    _, g, _, _ = _course_with_identical_fractions(tmp_path, 0)
    pmap = np.zeros(g.shape, np.float32)
    pmap[3:9, 3:7, 2:6] = np.linspace(48.0, 57.6, 4)[None, None, :]  # painted course dose, Gy
    for k in (1, 2):  # two fractions delivered at delivered_scale x the planned fraction dose
        write_nifti(Volume((delivered_scale * pmap / 6).astype(np.float32), g),
                    tmp_path / f"fx{k:02d}" / "delivered" / "dose.nii.gz")
        write_nifti(Volume(np.zeros((*g.shape, 3), np.float32), g),
                    tmp_path / f"fx{k:02d}" / "delivered" / "deformation_estimated.nii.gz")
    zero = Volume(np.zeros((*g.shape, 3), np.float32), g)
    out, info = compensated_prescription(load_course(tmp_path), 3, Volume(pmap, g), zero, max_change=0.15)
    # (P - 2 s P / 6) / 4 fractions, as a course-equivalent map: P (1 - s / 3) * 6 / 4, bounded to +-15 %
    sel = pmap > 0
    np.testing.assert_allclose(out.array[sel] / pmap[sel], expected, rtol=1e-5)
    assert info["fractions_used"] == [1, 2] and not out.array[~sel].any()
