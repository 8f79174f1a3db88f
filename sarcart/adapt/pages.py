"""The fraction and course report pages (self-contained HTML through :class:`sarcart.adapt.report.Report`).

Fraction page: the adapt-or-not decision and why, predicted vs delivered plan side by side, QA flags
and contour method per structure, contour overlays on the MR in three planes (today's contours solid,
the phantom's truth dashed when known), habitat / risk / prescription / dose colour-washes, DVHs of
today's plan, the predicted plan and the reference plan, and the stage timing table.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sarcart.adapt import figures
from sarcart.adapt.report import Report, flags_html
from sarcart.io.course import Course, Fraction
from sarcart.io.geometry import Volume

DVH_STRUCTURES = ("PTV", "GTV", "BOWEL", "KIDNEYS")
COMPARED = (("PTV D95 (Gy)", "PTV_D95_gy"), ("PTV_EVAL D95 (Gy)", "PTV_EVAL_D95_gy"),
            ("bowel D0.5cc (Gy)", "BOWEL_D0.5cc_gy"), ("kidneys mean (Gy)", "KIDNEYS_mean_gy"),
            ("painting QF", "painting_QF"), ("all limits met", "limits_met"), ("segments", "segments"),
            ("MU per fraction", "mu_per_fraction"))


def curves(dose: Volume, masks: Mapping[str, Volume], names=DVH_STRUCTURES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Cumulative DVH curves ``(dose_gy, volume_percent)`` of the named structures on the dose grid."""
    from sarcart.dose.dvh import DVH
    from sarcart.dose.volumes import resample

    out = {}
    for n in names:
        if n in masks and masks[n].array.any():
            m = masks[n] if masks[n].geometry.is_close(dose.geometry) else resample(masks[n], dose.geometry, is_mask=True)
            if m.array.any():
                d = DVH.from_mask(n, dose, m)
                e, v = d.cumulative(0.2)
                out[n] = (e, 100.0 * v / d.total_cc)
    return out


def with_kidneys(masks: Mapping[str, Volume]) -> dict[str, Volume]:
    """Structures plus ``KIDNEYS`` (both kidneys), as the planner reports them."""
    out = dict(masks)
    kid = [np.asarray(out[k].array, bool) for k in ("KIDNEY_L", "KIDNEY_R") if k in out]
    if kid and "KIDNEYS" not in out:
        out["KIDNEYS"] = out["KIDNEY_L" if "KIDNEY_L" in out else "KIDNEY_R"].with_array(np.logical_or.reduce(kid))
    return out


def on_image(volume: Volume, image: Volume) -> np.ndarray:
    """A dose-grid volume resampled (linear) onto the image grid."""
    from sarcart.dose.volumes import resample

    return resample(volume, image.geometry, is_mask=False).array


def _truth_masks(fx: Fraction) -> dict[str, np.ndarray]:
    from sarcart.io.labels import labels_to_masks, read_labels

    if not fx.has_ground_truth:
        return {}
    labels, spec = read_labels(fx.labels)
    return {n: m.array.astype(bool) for n, m in labels_to_masks(labels, spec).items() if n in ("GTV", "BOWEL",
                                                                                                 "KIDNEY_L", "KIDNEY_R")}


def _plan_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    pred, deliv = metrics["headline"]["predicted"], metrics["headline"]["delivered"]
    return [{"metric": label, "predicted (reference segments)": pred.get(k, float("nan")),
             "delivered": deliv.get(k, float("nan"))} for label, k in COMPARED]


def _qa_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    seg, dice = metrics["segmentation"], metrics.get("truth", {}).get("dice", {})
    return [{"structure": n, "method": seg["method"].get(n, "targets"), "volume cc": v,
             "flags": "; ".join(seg["qa"].get(n, {}).get("flags", [])) or "-", "Dice vs truth": dice.get(n, float("nan"))}
            for n, v in seg["volumes_cc"].items()]


def fraction_report(course: Course, fx: Fraction, out_dir: Path, state: dict[str, Any], metrics: dict[str, Any],
                    timings: dict[str, float]) -> Path:
    """Write ``out_dir/report.html`` (and ``out_dir/figures/*.png``)."""
    image, masks, chosen = state["image"], state["masks"], state["chosen"]
    rep = Report(f"patient {metrics['patient']} fx{fx.index:02d} ({course.config.site})", out_dir)
    d = state["decision"]
    rep.heading("Adapt-or-not")
    rep.text(d.summary, css="bad" if d.adapt else "ok")
    rep.table([{**c, "passed": bool(c["passed"])} for c in d.checks],
              columns=["check", "value", "limit", "reference_value", "passed"])
    rep.heading("Predicted vs delivered plan (course-equivalent doses)")
    rep.table(_plan_table(metrics))
    rep.heading("Contours and QA")
    rep.html(f"<p>QA flags: {flags_html(metrics['segmentation']['flags'])}; model: {metrics['segmentation']['model']}</p>")
    rep.table(_qa_rows(metrics))
    shown = {n: m.array for n, m in masks.items() if n in ("GTV", "PTV", "BOWEL", "KIDNEY_L", "KIDNEY_R")}
    centre = figures.centre_index(masks["GTV"].array, image.geometry.shape)
    truth = _truth_masks(fx)
    rep.figure("contours", figures.overlay_png(image, shown, centre=centre, dashed=truth,
                                               title="today's contours (solid), phantom truth (dashed)"))
    dose_img = on_image(chosen.course_dose, image)
    rep.figure("dose", figures.overlay_png(image, shown, wash=dose_img, wash_label="course-equivalent dose (Gy)",
                                           centre=centre, title="delivered plan"))
    pr = state["painting"]
    if pr is not None:
        rep.heading("Habitats, risk and prescription")
        rep.figure("habitats", figures.overlay_png(image, {"GTV": masks["GTV"].array}, wash=pr.habitats.array.astype(float),
                                                   wash_label="habitat", centre=centre, cmap="tab10"))
        rep.figure("risk", figures.overlay_png(image, {"GTV": masks["GTV"].array}, wash=pr.risk.array, wash_label="risk",
                                               wash_range=(0.0, 1.0), centre=centre, cmap="magma"))
        rep.figure("prescription", figures.overlay_png(image, shown, wash=pr.prescription.array, wash_label="prescribed (Gy)",
                                                       wash_range=(pr.base_gy * 0.98, pr.boost_gy), centre=centre))
        rep.text(f"boost region Dice with the reference's (propagated): {metrics['boost_dice']}", css="note")
    rep.heading("DVH")
    series = {"delivered": curves(chosen.course_dose, chosen.masks),
              "predicted": curves(state["predicted"].course_dose, state["predicted"].masks)}
    ref_dose = course.reference.plan_dir / "dose.nii.gz"
    if ref_dose.is_file():
        from sarcart.io.nifti import read_nifti

        series["planned (fx00)"] = curves(read_nifti(ref_dose), with_kidneys(state["ref"].masks))
    rep.figure("dvh", figures.dvh_png(series, title="delivered (solid), predicted (dashed), planned on fx00 (dotted)"))
    truth_t = metrics.get("truth", {})
    if truth_t.get("dose_on_true_contours"):
        rep.heading("Dose on automatic vs true contours (course-equivalent)")
        rows = [{"structure": n, **{f"auto {k}": v for k, v in truth_t["dose_on_auto_contours"].get(n, {}).items()},
                 **{f"true {k}": v for k, v in vals.items()}} for n, vals in truth_t["dose_on_true_contours"].items()]
        rep.table(rows)
    if "registration_error_mm" in truth_t:
        rep.table([{"region": k, **v} for k, v in truth_t["registration_error_mm"].items()])
    rep.heading("Timing")
    rep.table([{"stage": k, "seconds": v} for k, v in timings.items()])
    rep.figure("timing", figures.bars_png(timings, title="time per stage", xlabel="seconds"))
    return rep.write()


def _compare_rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for n, p in s["planned"].items():
        a, e = s["accumulated_physical"].get(n, {}), s["accumulated_eqd2"].get(n, {})
        rows.append({"structure": n, "planned D95": p["D95_gy"], "accumulated D95": a.get("D95_gy"),
                     "planned mean": p["mean_gy"], "accumulated mean": a.get("mean_gy"),
                     "planned D0.5cc": p["D0.5cc_gy"], "accumulated D0.5cc": a.get("D0.5cc_gy"),
                     "accumulated EQD2 mean": e.get("mean_gy"), "accumulated EQD2 D0.5cc": e.get("D0.5cc_gy")})
    return rows


def course_page(course: Course, out_dir: Path, summary: dict[str, Any], acc: dict[str, Any],
                masks: dict[str, Volume]) -> Path:
    """The course report: per-fraction table, accumulated vs planned DVHs, accumulated dose wash."""
    from sarcart import tracking
    from sarcart.adapt.course_init import read_fraction_image

    rep = Report(f"patient {tracking.hash_id(course.config.patient)} course ({course.config.site}, "
                 f"{course.config.prescription.dose_gy:g} Gy / {course.config.prescription.fractions} fx)", out_dir)
    done = summary["fractions_delivered"]
    rep.heading(f"Fractions delivered: {len(done)} of {course.config.prescription.fractions}")
    rows = summary["per_fraction"]
    rep.table(rows, columns=[c for c in (rows[0] if rows else {}) if not c.startswith("t ")])
    if rows:
        rep.heading("Time per stage (s)")
        rep.table([{"fx": r["fx"], **{k[2:]: v for k, v in r.items() if k.startswith("t ")}} for r in rows])
        rep.figure("per_fraction", figures.lines_png({"PTV D95 (Gy)": [r["PTV D95 Gy"] for r in rows],
                                                      "bowel D0.5cc (Gy)": [r["bowel D0.5cc Gy"] for r in rows]},
                                                     x=[r["fx"] for r in rows], title="per fraction (course-equivalent)",
                                                     xlabel="fraction", ylabel="Gy"))
    rep.heading("Accumulated (on the reference anatomy) vs planned")
    rep.text("Planned = the reference plan scaled to the fractions delivered. Doses in Gy; EQD2 with "
             "alpha/beta per structure (sarcoma 4, bowel 3, kidney 2 Gy).", css="note")
    rep.table(_compare_rows(summary))
    for key in ("painting_qf_planned", "painting_qf_physical_gy"):
        if key in summary:
            rep.text(f"{key.replace('_', ' ')}: {summary[key]:.4f}")
    series = {"planned": curves(acc["planned"], masks), "accumulated": curves(acc["physical_gy"], masks),
              "accumulated EQD2": curves(acc["eqd2_gy"], masks)}
    rep.figure("dvh_course", figures.dvh_png(series, title="planned (solid), accumulated (dashed), EQD2 (dotted)"))
    image, _ = read_fraction_image(course.reference)
    shown = {n: on_image(m.with_array(m.array.astype(np.float32)), image) > 0.5 for n, m in masks.items()
             if n in ("GTV", "PTV", "BOWEL", "KIDNEY_L", "KIDNEY_R")}
    centre = figures.centre_index(shown.get("GTV"), image.geometry.shape)
    rep.figure("accumulated", figures.overlay_png(image, shown, wash=on_image(acc["physical_gy"], image),
                                                  wash_label="accumulated dose (Gy)", centre=centre,
                                                  title="accumulated physical dose on the reference anatomy"))
    return rep.write()
