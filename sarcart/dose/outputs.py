"""Plan outputs: dose.nii.gz, RTDOSE, RTPLAN, dvh.csv, metrics.json, a DVH plot, the warm-start state.

Doses written to files are *course* doses (all fractions, Gy), as a plan's RTDOSE is; per-fraction
values are in metrics.json. Every file says the beam model is not commissioned on MR-linac data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

import sarcart
from sarcart.dose.dvh import DVH
from sarcart.dose.evaluation import ALPHA_BETA_GY, conformity, eqd2, homogeneity, painting_quality
from sarcart.dose.machine import NOT_COMMISSIONED
from sarcart.dose.plan import PlanResult, plan_state
from sarcart.io.dicom_write import PatientStudy, make_uid
from sarcart.io.geometry import Volume
from sarcart.io.rtplan import ControlPoint, MlcDevice, PlanBeam, RtPlan

log = logging.getLogger(__name__)

REPORTED = ("PTV", "PTV_EVAL", "GTV", "HYPOXIA", "BOWEL", "KIDNEY_L", "KIDNEY_R", "KIDNEYS", "BONE", "BODY")


def reported_names(prescription) -> tuple[str, ...]:
    """:data:`REPORTED` plus every other structure that carries a limit or an objective (e.g. a phantom's CORE)."""
    extra = [*(c.structure for c in prescription.constraints), *(o.structure for o in prescription.objectives)]
    return tuple(dict.fromkeys([*REPORTED, *extra]))


def dvhs_of(dose: Volume, masks: dict[str, Volume], names: tuple[str, ...] = REPORTED) -> dict[str, DVH]:
    """DVHs of the named structures that exist and are not empty."""
    return {n: DVH.from_mask(n, dose, masks[n]) for n in names if n in masks and masks[n].array.any()}


def plan_metrics(result: PlanResult) -> dict[str, object]:
    """DVH statistics, conformity/homogeneity, constraint status, painting quality, EQD2, sequencing cost."""
    p = result.prescription
    course = result.course_dose
    dvhs = dvhs_of(course, result.masks, reported_names(result.prescription))
    out: dict[str, object] = {"note": f"{sarcart.NOT_FOR_CLINICAL_USE}; {NOT_COMMISSIONED}",
                              "prescription": {"name": p.name, "dose_gy": p.dose_gy, "fractions": p.fractions,
                                               "dose_per_fraction_gy": p.dose_per_fraction_gy},
                              "doses": "course totals in Gy (all fractions)"}
    ab = {**ALPHA_BETA_GY, **p.alpha_beta_gy}
    out["structures"] = {n: {**d.summary(), **({"eqd2_mean_gy": float(np.mean(eqd2(d.dose_gy, p.fractions, ab[n]))),
                                                 "alpha_beta_gy": ab[n]} if n in ab else {})}
                         for n, d in dvhs.items()}
    target = result.masks[p.target].array
    out["target"] = {**conformity(course.array, target, p.dose_gy),
                     "ci95_rtog": conformity(course.array, target, 0.95 * p.dose_gy)["ci_rtog"],
                     "hi_icru83": homogeneity(course.array[target])}
    out["constraints"] = []
    for c in p.constraints:
        if c.structure not in dvhs:
            continue
        d = dvhs[c.structure]
        if c.kind == "dvh_max":
            limit = c.volume_cc if c.volume_cc is not None else (
                d.total_cc - c.spare_cc if c.spare_cc is not None else (c.volume_percent or 0) / 100 * d.total_cc)
            value, ok = d.V(c.dose_gy), d.V(c.dose_gy) <= limit + 1e-9
        else:
            value = d.max if c.kind == "max" else d.mean
            limit, ok = c.dose_gy, value <= c.dose_gy + 1e-9
        out["constraints"].append({"structure": c.structure, "kind": c.kind, "dose_gy": c.dose_gy, "value": value,
                                   "limit": limit, "met": bool(ok), "source": c.source})
    if result.painting_map is not None:
        sel = target & (result.painting_map.array > 0)
        q = painting_quality(course.array[sel], result.painting_map.array[sel])
        out["painting"] = {k: v for k, v in q.items() if not k.startswith("qvh")}
        out["qvh"] = {"q": q["qvh_q"], "fraction": q["qvh_fraction"]}
        ev = result.masks.get(p.target + "_EVAL")
        if ev is not None:  # the painted region minus the excluded organs' PRV (where the limits let it be painted)
            sel = ev.array & (result.painting_map.array > 0)
            q = painting_quality(course.array[sel], result.painting_map.array[sel])
            out["painting_eval"] = {k: v for k, v in q.items() if not k.startswith("qvh")}
    out["delivery"] = {**result.info, "segments": len(result.segments),
                       "total_mu_per_fraction": float(sum(s.mu for s in result.segments))}
    out["timings_s"] = result.timings_s
    out["beam_model"] = {"name": result.model.name, "commissioned_against": result.model.commissioned_against,
                         "note": result.model.note}
    return out


def write_dvh_csv(dvhs: dict[str, DVH], path: Path, *, bin_gy: float = 0.1) -> Path:
    """Cumulative DVHs as CSV: ``dose_gy`` then one volume-in-cc column per structure."""
    top = max(d.max for d in dvhs.values())
    cols = {n: d.cumulative(bin_gy, top)[1] for n, d in dvhs.items()}
    edges = next(iter(dvhs.values())).cumulative(bin_gy, top)[0]
    lines = [f"# {sarcart.NOT_FOR_CLINICAL_USE}; cumulative DVH, volume in cc",
             ",".join(["dose_gy", *[f"{n}_cc" for n in cols]])]
    for i, e in enumerate(edges):
        lines.append(",".join([f"{e:.3f}", *[f"{cols[n][i]:.4f}" for n in cols]]))
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_dvh(dvhs: dict[str, DVH], path: Path, *, title: str = "") -> Path:
    """Cumulative DVH plot (percent volume vs Gy) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for n, d in dvhs.items():
        e, v = d.cumulative(0.1)
        ax.plot(e, 100.0 * v / d.total_cc, label=n)
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title((title + "\n" if title else "") + "research only - beam model not commissioned on MR-linac data",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def to_rtplan(result: PlanResult, *, rtstruct_uid: str = "", frame_of_reference_uid: str = "",
              layers: str = "effective") -> RtPlan:
    """Step-and-shoot RTPLAN content: two control points per segment.

    Args:
        layers: ``effective`` writes one ``MLCX`` on the 4.15 mm effective rows (the delivered aperture;
            standard terms, dciodvfy-clean); ``stacked`` writes both layers as ``MLCX1``/``MLCX2``, the
            terms stacked-MLC vendors use (not in every DICOM dictionary; dciodvfy flags them).
    """
    m = result.machine
    rows = m.row_edges_mm().numpy()
    double = m.double_stacked and layers == "stacked"
    if double:
        upper = MlcDevice("MLCX2", tuple(float(x) for x in rows[::2]))
        lower = MlcDevice("MLCX1", tuple(float(x) for x in np.concatenate([rows[:1], rows[1::2], rows[-1:]])))
        devices = [lower, upper]
    else:
        devices = [MlcDevice("MLCX", tuple(float(x) for x in rows))]
    beams = []
    for b, beam in enumerate(result.beams):
        segs = [s for s in result.segments if s.beam == b]
        if not segs:
            continue
        total = sum(s.mu for s in segs)
        cps, cum = [], 0.0
        for s in segs:
            leaves = _leaves(s, result.grids[b].row_offset, devices, double)
            cps.append(ControlPoint(cum / total, leaves))
            cum += s.mu
            cps.append(ControlPoint(cum / total, leaves))
        beams.append(PlanBeam(len(beams) + 1, f"G{beam.gantry_deg:05.1f}", beam.gantry_deg, beam.isocenter_mm,
                              beam.sad_mm, total, cps, devices))
    return RtPlan(label=result.prescription.name[:16], beams=beams, fractions=result.prescription.fractions,
                  machine_name=m.name, rtstruct_uid=rtstruct_uid, frame_of_reference_uid=frame_of_reference_uid,
                  prescription_gy=result.prescription.dose_gy,
                  description=f"{sarcart.NOT_FOR_CLINICAL_USE}; {NOT_COMMISSIONED}")


def _leaves(seg, row_offset: int, devices: list[MlcDevice], double: bool) -> dict[str, np.ndarray]:
    out = {}
    if not double:
        n = devices[0].n_pairs
        a, bnk = np.zeros(n), np.zeros(n)
        a[row_offset:row_offset + len(seg.left_mm)] = seg.left_mm
        bnk[row_offset:row_offset + len(seg.right_mm)] = np.maximum(seg.right_mm, seg.left_mm)
        return {devices[0].device_type: np.concatenate([a, bnk])}
    for dev, pos, first in ((devices[1], seg.upper_mm, row_offset // 2), (devices[0], seg.lower_mm, (row_offset + 1) // 2)):
        n = dev.n_pairs
        a, bnk = np.zeros(n), np.zeros(n)
        k = min(len(pos), n - first)
        a[first:first + k], bnk[first:first + k] = pos[:k, 0], np.maximum(pos[:k, 1], pos[:k, 0])
        out[dev.device_type] = np.concatenate([a, bnk])
    return out


def write_plan_outputs(result: PlanResult, out_dir: Path, *, patient: PatientStudy | None = None,
                       frame_of_reference_uid: str = "", rtstruct_uid: str = "", check=None) -> dict[str, Path]:
    """Write every output of a plan into ``out_dir``; returns name -> path."""
    from sarcart.io.nifti import write_nifti
    from sarcart.io.rtdose import write_rtdose
    from sarcart.io.rtplan import write_rtplan

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    course = result.course_dose
    paths["dose"] = write_nifti(course, out_dir / "dose.nii.gz")
    for_uid = frame_of_reference_uid or make_uid()  # NIfTI input: a new frame, linked to no DICOM image
    plan_uid = write_rtplan(to_rtplan(result, rtstruct_uid=rtstruct_uid, frame_of_reference_uid=for_uid),
                            out_dir / "rtplan.dcm", patient=patient)
    paths["rtplan"] = out_dir / "rtplan.dcm"
    paths["rtdose"] = write_rtdose(course, out_dir / "rtdose.dcm", frame_of_reference_uid=for_uid, patient=patient,
                                   rtplan_uid=plan_uid, rtstruct_uid=rtstruct_uid,
                                   comment="sarcart research dose; beam model not commissioned")
    dvhs = dvhs_of(course, result.masks, reported_names(result.prescription))
    paths["dvh_csv"] = write_dvh_csv(dvhs, out_dir / "dvh.csv")
    paths["dvh_png"] = plot_dvh(dvhs, out_dir / "dvh.png", title=result.prescription.name)
    metrics = plan_metrics(result)
    if check is not None:
        metrics["second_check"] = {"gamma_pass_rate": check.gamma_pass_rate, "criteria": check.gamma_criteria,
                                   "n_points": check.n_points, "mean_diff_percent_of_rx": check.mean_diff_percent,
                                   "point_doses_gy_per_fraction": check.point_doses}
    metrics["objective_history"] = result.history
    paths["metrics"] = out_dir / "metrics.json"
    paths["metrics"].write_text(json.dumps(metrics, indent=1, default=float))
    np.savez_compressed(out_dir / "plan_state.npz", **plan_state(result))
    segs = [{"beam": s.beam, "gantry_deg": result.beams[s.beam].gantry_deg, "mu_per_fraction": s.mu,
             "first_row": result.grids[s.beam].row_offset, "left_mm": s.left_mm.tolist(), "right_mm": s.right_mm.tolist(),
             "upper_layer_mm": None if s.upper_mm is None else s.upper_mm.tolist(),
             "lower_layer_mm": None if s.lower_mm is None else s.lower_mm.tolist()} for s in result.segments]
    paths["segments"] = out_dir / "segments.json"
    paths["segments"].write_text(json.dumps({"note": sarcart.NOT_FOR_CLINICAL_USE, "segments": segs}))
    paths["state"] = out_dir / "plan_state.npz"
    (out_dir / "prescription.json").write_text(result.prescription.model_dump_json(indent=1))
    return paths
