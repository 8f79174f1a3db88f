"""Outputs of one adapted fraction: DICOM objects, course-layout records, metrics, MLflow run.

Doses in RTDOSE, dose.nii.gz, dvh.csv and the ``structures`` metrics are course-equivalent totals
(per-fraction dose x number of fractions, as :mod:`sarcart.dose.outputs` writes a plan); the
per-fraction dose used for accumulation is ``fxNN/delivered/dose.nii.gz``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

import sarcart
from sarcart.adapt.config import AdaptConfig
from sarcart.io.course import Course, Fraction
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)

#: structures whose Dice against the phantom's truth is reported
EVALUATED = ("GTV", "BOWEL", "KIDNEY_L", "KIDNEY_R", "BODY", "BONE")


def roi_styles(masks: dict[str, Volume], qa: dict[str, Any], method: dict[str, str], model: str) -> dict:
    """RTSTRUCT styles whose ROI description carries the method and the QA flags of each structure."""
    from sarcart.io.rtstruct_write import RoiStyle
    from sarcart.io.structures import STYLE

    out = {}
    for name in masks:
        color, kind = STYLE.get(name, ((255, 255, 0), "ORGAN"))
        flags = qa.get("structures", {}).get(name, {}).get("flags", [])
        how = method.get(name, "derived (targets)")
        text = ("REVIEW: " + ", ".join(flags)) if flags else "no QA flag"
        out[name] = RoiStyle(color=color, interpreted_type=kind, algorithm="AUTOMATIC", description=f"{how}; {text}"[:64],
                             observation=f"{how}; {text}; model {model}"[:1000])
    return out


def write_outputs(course: Course, fx: Fraction, out_dir: Path, state: dict[str, Any], cfg: AdaptConfig) -> dict[str, Path]:
    """RTSTRUCT, RTPLAN, RTDOSE, dvh.csv, painting maps into ``out_dir``; plan/delivered/predicted records into ``fx``."""
    import pydicom

    from sarcart.adapt.predicted import centroid_mm, save_delivery
    from sarcart.dose.outputs import write_plan_outputs
    from sarcart.io.dicom_write import PatientStudy
    from sarcart.io.nifti import write_mask, write_nifti
    from sarcart.io.rtstruct_write import write_rtstruct

    out_dir.mkdir(parents=True, exist_ok=True)
    series, seg, chosen = state["series"], state["seg"], state["chosen"]
    masks = {n: m for n, m in state["masks"].items() if m.array.any()}
    paths: dict[str, Path] = {}
    rs_uid, for_uid, patient = "", "", None
    if series is not None:
        paths["rtstruct"] = write_rtstruct(masks, series, out_dir / "rtstruct.dcm", label="sarcart adapt",
                                           description=f"fx{fx.index:02d} auto-contours ({seg.model})",
                                           styles=roi_styles(masks, seg.qa, seg.method, seg.model))
        rs_uid = str(pydicom.dcmread(paths["rtstruct"], stop_before_pixels=True).SOPInstanceUID)
        for_uid, patient = series.frame_of_reference_uid, PatientStudy.from_dataset(series.header)
    paths.update(write_plan_outputs(chosen, out_dir, patient=patient, frame_of_reference_uid=for_uid, rtstruct_uid=rs_uid))
    adapted = state["decision"].adapt
    fx.plan_dir.mkdir(parents=True, exist_ok=True)
    state_file = out_dir / "plan_state.npz"
    if adapted:
        shutil.copy2(state_file, fx.plan_dir / "plan_state.npz")
    else:  # the predicted plan has no fluence of its own: the next warm start comes from an earlier plan
        state_file.unlink(missing_ok=True)
        (fx.plan_dir / "plan_state.npz").unlink(missing_ok=True)
        paths.pop("state", None)
    save_delivery(chosen, fx.plan_dir, target_centroid_mm=centroid_mm(masks[chosen.prescription.target]))
    for name in ("rtplan.dcm", "rtdose.dcm"):
        shutil.copy2(out_dir / name, fx.plan_dir / name)
    fx.delivered_dir.mkdir(parents=True, exist_ok=True)
    write_nifti(chosen.dose, fx.delivered_dir / "dose.nii.gz")
    write_nifti(seg.displacement, fx.delivered_dir / "deformation_estimated.nii.gz")
    (fx.delivered_dir / "dose_on_reference.nii.gz").unlink(missing_ok=True)  # recomputed on demand (course_summary)
    for name, m in masks.items():
        write_mask(m, out_dir / "masks" / f"{name}.nii.gz")
    fx.predicted_dir.mkdir(parents=True, exist_ok=True)
    (fx.predicted_dir / "qa.json").write_text(json.dumps(seg.qa, indent=1, default=str))
    if "rtstruct" in paths:
        shutil.copy2(paths["rtstruct"], fx.predicted_dir / "rtstruct.dcm")
    if state["painting"] is not None:
        pr = state["painting"]
        for name, vol in (("prescription", pr.prescription), ("risk", pr.risk), ("habitats", pr.habitats)):
            paths[f"painting_{name}"] = write_nifti(vol, out_dir / "painting" / f"{name}.nii.gz")
    return paths


def _dose_on(result, masks: dict[str, Volume], names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Course-equivalent DVH numbers of ``result`` on other masks (resampled onto the dose grid)."""
    from sarcart.dose.dvh import DVH
    from sarcart.dose.volumes import resample

    course = result.course_dose
    out = {}
    for n in names:
        if n in masks and masks[n].array.any():
            m = resample(masks[n], course.geometry, is_mask=True)
            if m.array.any():
                d = DVH.from_mask(n, course, m)
                out[n] = {"D0.5cc_gy": d.D_cc(0.5), "mean_gy": d.mean, "D95_gy": d.D(95), "volume_cc": d.total_cc}
    return out


def truth_metrics(fx: Fraction, state: dict[str, Any]) -> dict[str, Any]:
    """Against the phantom's ground truth: Dice, the plan's dose on true vs automatic contours, registration error."""
    from sarcart.adapt.segment import dice
    from sarcart.inference.propagation import displacement_error_mm
    from sarcart.io.labels import labels_to_masks, read_labels
    from sarcart.io.nifti import read_nifti

    if not fx.has_ground_truth:
        return {}
    labels, spec = read_labels(fx.labels)
    true = {n: m.with_array(m.array.astype(bool)) for n, m in labels_to_masks(labels, spec).items()}
    masks = state["masks"]
    out: dict[str, Any] = {}
    out["dice"] = {n: dice(masks[n].array, true[n].array) for n in EVALUATED if n in masks and n in true}
    names = ("GTV", "BOWEL", "KIDNEY_L", "KIDNEY_R")
    out["dose_on_true_contours"] = _dose_on(state["chosen"], true, names)
    out["dose_on_auto_contours"] = _dose_on(state["chosen"], masks, names)
    if state.get("painting") is not None and fx.hypoxia.is_file():
        out["painting_vs_true_hypoxia"] = _painting_vs_hypoxia(state["painting"], masks,
                                                               read_nifti(fx.hypoxia).array != 0)
    if fx.deformation_to_ref.is_file():
        truth = read_nifti(fx.deformation_to_ref)
        disp = state["seg"].displacement
        out["registration_error_mm"] = {
            "body": displacement_error_mm(disp, truth, true["BODY"].array),
            "gtv": displacement_error_mm(disp, truth, true["GTV"].array)}
    return out


def _painting_vs_hypoxia(painting: Any, masks: dict[str, Any], hypoxia: np.ndarray) -> dict[str, float]:
    """How well today's risk map finds the phantom's true hypoxia in today's viable GTV (GTV - NECROSIS):
    voxel AUROC of the risk and Dice of the boost region (prescription above the base-boost midpoint)."""
    from sklearn.metrics import roc_auc_score

    roi = np.asarray(masks["GTV"].array, bool)
    if "NECROSIS" in masks:
        roi &= ~np.asarray(masks["NECROSIS"].array, bool)
    y = hypoxia[roi]
    auroc = float(roc_auc_score(y, painting.risk.array[roi])) if 0 < y.sum() < y.size else float("nan")
    boost = painting.boost_region[roi]
    dice_b = float(2 * (boost & y).sum() / max(int(boost.sum() + y.sum()), 1))
    return {"risk_auroc": auroc, "boost_dice": dice_b, "hypoxic_share": float(y.mean()) if y.size else float("nan")}


def headline(plan: dict[str, Any]) -> dict[str, float]:
    """The numbers of the summary tables, from :func:`plan_metrics` output (course-equivalent Gy)."""
    s = plan["structures"]
    nan = float("nan")
    kid = s.get("KIDNEYS", {}).get("mean_gy", nan)
    return {"PTV_D95_gy": s.get("PTV", {}).get("D95_gy", nan), "PTV_EVAL_D95_gy": s.get("PTV_EVAL", {}).get("D95_gy", nan),
            "BOWEL_D0.5cc_gy": s.get("BOWEL", {}).get("D0.5cc_gy", nan), "KIDNEYS_mean_gy": kid,
            "painting_QF": plan.get("painting", {}).get("qf", nan),
            "limits_met": float(all(c["met"] for c in plan.get("constraints", []))),
            "segments": float(plan["delivery"]["segments"]), "mu_per_fraction": plan["delivery"]["total_mu_per_fraction"]}


def fraction_metrics(course: Course, fx: Fraction, state: dict[str, Any], cfg: AdaptConfig) -> dict[str, Any]:
    """Everything ``metrics.json`` holds."""
    from sarcart import tracking
    from sarcart.dose.outputs import plan_metrics

    seg = state["seg"]
    delivered = plan_metrics(state["chosen"]) if state["decision"].adapt else state["predicted_metrics"]
    vox = state["image"].geometry.voxel_volume_cc
    return {"note": sarcart.NOT_FOR_CLINICAL_USE, "patient": tracking.hash_id(course.config.patient),
            "fraction": fx.index, "site": course.config.site, "decision": state["decision"].to_dict(),
            "adapted": state["decision"].adapt, "warm_start_from": state["warm_from"],
            "couch_shift_mm": state["shift_mm"], "boost_dice": state["boost_dice"],
            "compensation": state.get("compensation", {}),
            "segmentation": {"model": seg.model, "method": seg.method, "flags": seg.qa["flags"],
                             "volumes_cc": {n: float(m.array.sum() * vox) for n, m in state["masks"].items()},
                             "qa": seg.qa["structures"]},
            "headline": {"delivered": headline(delivered), "predicted": headline(state["predicted_metrics"])},
            "delivered": delivered, "predicted": state["predicted_metrics"], "truth": truth_metrics(fx, state)}


def log_run(course: Course, index: int, out_dir: Path, metrics: dict[str, Any], cfg: AdaptConfig, *,
            store: str | None = None) -> None:
    """One MLflow run per fraction under the patient's experiment (hashed identifiers)."""
    import mlflow

    from sarcart import tracking

    pid = tracking.hash_id(course.config.patient)
    exp = tracking.experiment_id(f"sarcart-adapt-{pid}", store)
    with mlflow.start_run(experiment_id=exp, run_name=f"fx{index:02d}"):
        mlflow.set_tags({"patient": pid, "fraction": str(index), "site": course.config.site,
                         "notice": sarcart.NOT_FOR_CLINICAL_USE})
        tracking.log_config(cfg, artifact_file="adapt_config.json")
        mlflow.log_params({"fraction": index, "adapted": metrics["adapted"], "warm_start_from": metrics["warm_start_from"],
                           "segmentation_model": metrics["segmentation"]["model"]})
        flat = {f"delivered.{k}": v for k, v in metrics["headline"]["delivered"].items()}
        flat.update({f"predicted.{k}": v for k, v in metrics["headline"]["predicted"].items()})
        flat.update({f"time_s.{k}": v for k, v in metrics["timings_s"].items()})
        flat.update({f"dice.{k}": v for k, v in metrics.get("truth", {}).get("dice", {}).items()})
        flat["qa_flags"] = float(len(metrics["segmentation"]["flags"]))
        mlflow.log_metrics({k.replace("@", "_"): float(v) for k, v in flat.items() if not math.isnan(float(v))})
        for name in ("metrics.json", "timings.json", "dvh.csv", "report.html"):
            if (out_dir / name).is_file():
                mlflow.log_artifact(str(out_dir / name))
