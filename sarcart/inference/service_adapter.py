"""The segmenter the DICOM service calls: a warm :class:`Predictor` plus QA flags, in the service's terms.

The service (``sarcart.service``) only knows the signature ``series -> (masks, qa, model)``; this module
builds such a callable from a model name (shipped name, bundle path or ``models:/`` URI). The model is
loaded once, when the service starts, and kept warm. QA per structure comes from
:mod:`sarcart.inference.qa` (confidence from the class probabilities, field-of-view edge, fragments),
per image from :func:`~sarcart.inference.qa.input_check` against the model's training profile (orientation,
spacing, intensity spread) and :func:`~sarcart.inference.qa.target_size_check` (GTV larger than the field).

This module must not import :mod:`sarcart.service` (the dependency runs the other way).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from sarcart import tracking
from sarcart.inference.predictor import Predictor, PredictorConfig, Segmentation
from sarcart.inference.qa import QACalibration, input_check, structure_qa, target_size_check
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)

SeriesSegmenter = Callable[[Any], tuple[dict[str, Volume], dict[str, Any], str]]


def _body_mask(image: Volume, threshold: float) -> np.ndarray:
    """Body = voxels above ``threshold`` x the 99th percentile (the plan's normalisation rule)."""
    arr = np.asarray(image.array, dtype=np.float32)
    return arr > threshold * float(np.percentile(arr, 99))


def segmentation_qa(image: Volume, seg: Segmentation, predictor: Predictor, *,
                    masks: dict[str, Volume] | None = None,
                    calibration: QACalibration | None = None) -> dict[str, Any]:
    """QA report of one segmentation: ``{"image": {...flags}, "structures": {name: {...flags}}}``.

    Args:
        image: the input image (the grid of ``seg``).
        seg: the predictor's output, with probabilities when the confidence is wanted.
        predictor: the predictor that made it (its plan's training profile feeds the input check).
        masks: ``seg``'s masks by structure when the caller already has them (made once, not per use).
        calibration: raw confidence -> P(good contour); the package default when None.
    """
    plan = predictor.bundle.plan
    profile = dict(plan.training_profile)
    spacing = profile.get("median_spacing_mm")
    body = _body_mask(image, plan.normalisation.body_threshold)
    report: dict[str, Any] = {
        "image": input_check(image, train_spacings_mm=[spacing] if spacing else None,
                             train_intensity=profile.get("intensity"), body=body),
        "structures": {},
    }
    masks = masks if masks is not None else {n: seg.mask(n) for n in seg.structures}
    for name in seg.structures:
        prob, prob_mask = seg.confidence_inputs(name) or (None, None)
        report["structures"][name] = structure_qa(name, masks[name], prob=prob, prob_mask=prob_mask,
                                                  calibration=calibration)
    targets = {n: masks[n] for n in ("GTV", "PTV") if n in masks}
    size_flags = target_size_check(targets)
    for name in targets:
        report["structures"][name]["flags"] += [f for f in size_flags if f.startswith(name + " ")]
    report["flagged"] = sorted(n for n, q in report["structures"].items() if q["flags"])
    report["image_flagged"] = bool(report["image"]["flags"])
    return report


def patient_model_uri(task: str, patient_id: str, *, store: str | None = None) -> str | None:
    """The kept patient-specific model of ``patient_id`` (``sarcart finetune``), as ``models:/name/version``.

    The registered name is ``sarcart-<task>-patient-<hash_id(patient id)>`` (the same name
    :func:`sarcart.training.finetune.model_name` gives a course whose ``patient`` is this id); the version
    is the one holding the ``champion`` alias, which fine-tuning moves only when the patient model was not
    worse than the population model on a held-out fraction. None when there is none.
    """
    if not patient_id:
        return None
    name = f"sarcart-{task}-patient-{tracking.hash_id(patient_id)}"
    mv = tracking.alias_version(name, store=store)
    return f"models:/{name}/{mv.version}" if mv is not None else None


def bundle_calibration(bundle: Any) -> QACalibration | None:
    """The QA calibration fitted for a model (``meta["qa_calibration"]``: ``a``, ``b``), or None."""
    c = dict(getattr(bundle, "meta", {}) or {}).get("qa_calibration")
    return QACalibration(a=float(c["a"]), b=float(c["b"])) if c else None


def patient_structures(bundle: Any, structures: list[str]) -> list[str]:
    """The structures a patient model is used for: its bundle's ``meta["patient_structures"]`` (written by
    ``sarcart finetune``'s per-structure rule) in the order of ``structures``; all of ``structures`` when
    the meta has none (patient models kept by the earlier all-or-nothing rule)."""
    chosen = dict(getattr(bundle, "meta", {}) or {}).get("patient_structures")
    if chosen is None:
        return list(structures)
    return [s for s in structures if s in set(chosen)]


def make_segmenter(model: str, *, device: str | None = None, tta: bool = False, subvoxel: bool | None = None,
                   calibration: QACalibration | None = None, patient_models: bool = True) -> SeriesSegmenter:
    """A warm segmenter for the service: ``series -> (masks, qa, "name version")``.

    Args:
        model: shipped name (``trufi``), bundle path, or MLflow URI (``models:/sarcart-trufi@champion``).
        device: ``cpu``, ``cuda``...; None = CUDA when available.
        tta: test-time augmentation over the plan's allowed flips (the confidence then reflects their
            disagreement).
        subvoxel: average over the plan grid's half-voxel phases; None = what the model's bundle
            recommends (:class:`PredictorConfig`).
        calibration: QA confidence calibration; None = the one fitted for the model (its bundle's
            ``meta["qa_calibration"]``), else the package default.
        patient_models: use a patient's kept fine-tuned model (:func:`patient_model_uri`, looked up by the
            series' PatientID) when one exists, for the structures it was kept for
            (:func:`patient_structures`); the population model draws the others, and each structure's QA
            (``qa["structures"][name]["model"]``) names the model that drew it.
    """
    config = PredictorConfig(tta=tta, subvoxel=subvoxel, device=device, keep_probabilities=True)
    population = Predictor(model, config=config)
    warm: dict[str, Predictor] = {}

    def choose(series: Any) -> Predictor:
        header = getattr(series, "header", None)
        pid = str(header.get("PatientID", "")) if header is not None else ""
        uri = patient_model_uri(population.bundle.plan.task, pid) if patient_models and pid else None
        if uri is None:
            return population
        if uri not in warm:
            warm[uri] = Predictor(uri, config=config)
            log.info("patient-specific model %s loaded for patient %s", uri, tracking.hash_id(pid))
        return warm[uri]

    def run(predictor: Predictor, image: Volume) -> tuple[dict[str, Volume], dict[str, Any], str]:
        seg = predictor(image)
        masks = {n: seg.mask(n) for n in seg.structures}
        cal = calibration or bundle_calibration(predictor.bundle)
        qa = segmentation_qa(image, seg, predictor, masks=masks, calibration=cal)
        qa["calibration"] = "fitted for the model" if calibration is None and cal is not None else (
            "given" if calibration is not None else "package default (not fitted for this model)")
        qa["seconds"] = round(seg.seconds, 3)
        qa["subvoxel"] = seg.subvoxel
        qa["postprocessing"] = list(seg.notes)
        name = f"{seg.model} {seg.version}".strip()
        for q in qa.get("structures", {}).values():
            q["model"] = name
        return masks, qa, name

    @functools.cache
    def population_digest() -> str:  # once per warm service, and only for a patient model that recorded one
        return population.bundle.weights_digest()

    def segment(series: Any) -> tuple[dict[str, Volume], dict[str, Any], str]:
        image = series.volume
        predictor = choose(series)
        masks, qa, name = run(predictor, image)
        qa["patient_specific_model"] = predictor is not population
        if predictor is not population:
            mine = patient_structures(predictor.bundle, population.structures)
            qa["patient_model_structures"] = mine
            if mine != list(population.structures):
                masks, qa, name = merge(run(population, image), (masks, qa, name), mine)
            judged_against(qa, predictor.bundle, population.bundle, population_digest, mine)
        log.info("segmented %s with %s in %.1f s; flagged: %s", getattr(series, "series_uid", "series"),
                 name, qa["seconds"], qa["flagged"] or "none")
        return masks, qa, name

    return segment


def judged_against(qa: dict[str, Any], patient: Any, population: Any, population_digest: Callable[[], str],
                   chosen: list[str]) -> None:
    """Check that a patient model was judged against the population model this service runs.

    ``sarcart finetune`` keeps a structure from the patient model only where it was not worse than the
    population model it was compared with (its meta ``population_digest``: that model's weights digest). When
    the service runs other population weights (a newer champion, another ``--model``), that judgement does not
    hold for it: every structure the patient model draws is flagged for review. ``qa["patient_model_baseline"]``
    says which case applies (``"same"``, ``"different"``, or ``"not recorded"`` for patient models fine-tuned
    before the digest was written, which are not flagged). ``population_digest`` gives the running population
    model's weights digest; it is only called when the patient model recorded one.
    """
    meta = dict(getattr(patient, "meta", {}) or {})
    judged = meta.get("population_digest")
    if not judged:
        qa["patient_model_baseline"] = "not recorded"
        return
    runs = population_digest()
    if str(judged) == runs:
        qa["patient_model_baseline"] = "same"
        return
    qa["patient_model_baseline"] = "different"
    was = f"{meta.get('population_model', 'a population model')} v{meta.get('population_version', '?')}"
    for n in chosen:
        q = qa.get("structures", {}).get(n)
        if q is None:
            continue
        q.setdefault("flags", []).append(
            f"{n} drawn by a patient model that was judged against {was} (weights {str(judged)[:8]}), not against "
            f"the population model this service runs ({population.name} v{population.version}, weights "
            f"{runs[:8]}): review it, or fine-tune the patient model again from the service's model")
    qa["flagged"] = sorted(n for n, q in qa.get("structures", {}).items() if q.get("flags"))


def merge(population: tuple[dict[str, Volume], dict[str, Any], str],
          patient: tuple[dict[str, Volume], dict[str, Any], str],
          chosen: list[str]) -> tuple[dict[str, Volume], dict[str, Any], str]:
    """One output from two models: the ``chosen`` structures from the patient model, the rest from the
    population model, each with its own QA; the image checks and the timing cover both runs."""
    (pop_masks, pop_qa, pop_name), (pat_masks, pat_qa, pat_name) = population, patient
    masks = {n: (pat_masks if n in chosen else pop_masks)[n] for n in pop_masks}
    per = {n: (pat_qa if n in chosen else pop_qa).get("structures", {}).get(n, {}) for n in pop_masks}
    qa = {**pat_qa, "structures": per}
    qa["flagged"] = sorted(n for n, q in per.items() if q.get("flags"))
    qa["seconds"] = round(float(pop_qa.get("seconds", 0.0)) + float(pat_qa.get("seconds", 0.0)), 3)
    qa["patient_specific_model"] = bool(chosen)
    qa["patient_model_structures"] = list(chosen)
    name = f"{pat_name} ({', '.join(chosen)}) + {pop_name}" if chosen else pop_name
    return masks, qa, name
