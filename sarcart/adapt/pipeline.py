"""``sarcart adapt``: one fraction, series in -> contours, adapted plan and report out, every stage timed.

Stages (``timings.json`` keys): ``read_series`` -> ``segment`` (registration to the reference,
propagation, network, QA) -> ``targets`` -> ``painting`` (feature maps, habitats, risk, prescription
map) -> ``predicted_plan`` (the reference segments on today's anatomy) -> ``decide`` -> ``reoptimise``
(only when the predicted plan fails, warm-started from the previous fraction's plan) -> ``outputs``
(RTSTRUCT, RTPLAN, RTDOSE, dvh.csv, metrics.json) -> ``report``. The chosen plan is also recorded in
the course layout (``fxNN/plan/``: plan_state.npz, delivery.json; ``fxNN/delivered/dose.nii.gz``, the
per-fraction dose; ``fxNN/predicted/``: contours and QA) for the next fraction and for accumulation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sarcart.adapt.config import AdaptConfig
from sarcart.adapt.course_init import (
    applicable_prescription,
    course_prescription,
    plan_masks,
    read_fraction_image,
    read_structures,
    with_targets,
)
from sarcart.adapt.decide import Decision, decide
from sarcart.errors import CourseLayoutError
from sarcart.io.course import Course
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)


class StageTimer:
    """Wall time per named stage (seconds), in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    @property
    def total(self) -> float:
        return float(sum(self.seconds.values()))


@dataclass
class FractionResult:
    """What :func:`adapt_fraction` produced."""

    index: int
    out_dir: Path
    decision: Decision
    metrics: dict[str, Any]
    timings_s: dict[str, float]
    paths: dict[str, Path] = field(default_factory=dict)


@dataclass
class Reference:
    """The reference fraction's image, structures, plan and painting, read once per fraction."""

    image: Volume
    masks: dict[str, Volume]
    metrics: dict[str, Any]
    delivery: Any
    centroid_mm: np.ndarray
    painting: Volume | None
    habitat_model: Any


def load_reference(course: Course) -> Reference:
    """Read fx00 and its plan (``sarcart course init`` must have run)."""
    from sarcart.adapt.predicted import load_delivery
    from sarcart.io.nifti import read_nifti
    from sarcart.radiomics.habitats import HabitatModel

    ref = course.reference
    delivery, centroid = load_delivery(ref.plan_dir)
    image, series = read_fraction_image(ref)
    masks = with_targets(read_structures(ref, series if series is not None else image.geometry), course)
    metrics = json.loads((ref.plan_dir / "metrics.json").read_text())
    pfile, hfile = ref.plan_dir / "painting.nii.gz", ref.plan_dir / "habitats.json"
    painting = read_nifti(pfile) if pfile.is_file() else None
    hmodel = HabitatModel.from_json(hfile.read_text()) if hfile.is_file() else None
    return Reference(image, masks, metrics, delivery, centroid, painting, hmodel)


def previous_state(course: Course, index: int) -> tuple[dict[str, np.ndarray] | None, str]:
    """Warm start: the plan state of the latest earlier fraction that has one (fx00 at least)."""
    for k in range(index - 1, -1, -1):
        f = course.fraction(k).plan_dir / "plan_state.npz"
        if f.is_file():
            with np.load(f) as z:
                return {n: np.asarray(z[n]) for n in z.files}, course.fraction(k).name
    return None, "none"


def boost_dice(today_boost: np.ndarray, ref: Reference, displacement: Volume) -> float | None:
    """Dice of today's boost region with the reference's, carried onto today's grid by the registration."""
    from sarcart.adapt.segment import dice
    from sarcart.inference.propagation import propagate

    if ref.painting is None:
        return None
    arr = ref.painting.array
    positive = arr[arr > 0]
    if positive.size == 0:
        return None
    ref_boost = arr > 0.5 * (positive.min() + positive.max())
    carried = propagate({"B": ref.painting.with_array(ref_boost)}, displacement)["B"]
    return dice(carried.array, today_boost)


def adapt_fraction(course: Course, index: int, out_dir: Path, *, config: AdaptConfig | None = None,
                   device: str = "cpu", store: str | None = None) -> FractionResult:
    """Run every stage for fraction ``index`` and write its outputs into ``out_dir`` (module docstring)."""
    from sarcart.adapt import fraction_outputs as fo
    from sarcart.adapt import pages

    cfg = config or AdaptConfig()
    if index < 1:
        raise CourseLayoutError(f"fraction must be >= 1 (fx00 is the reference; plan it with `sarcart course init`), "
                                f"got {index}")
    fx = course.fraction(index)
    timer = StageTimer()
    with timer("read_series"):
        image, series = read_fraction_image(fx)
        ref = load_reference(course)
        presc = course_prescription(course, cfg)
    state = _segment_and_plan(course, index, image, ref, presc, cfg, timer, device)
    state.update(image=image, series=series, presc=presc, ref=ref)
    with timer("outputs"):
        paths = fo.write_outputs(course, fx, out_dir, state, cfg)
        metrics = fo.fraction_metrics(course, fx, state, cfg)
    timings = {**timer.seconds}
    with timer("report"):
        if cfg.figures:
            paths["report"] = pages.fraction_report(course, fx, out_dir, state, metrics, timings)
    timings = {**timer.seconds, "total": timer.total}
    metrics["timings_s"] = timings
    (out_dir / "timings.json").write_text(json.dumps(timings, indent=1))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    (out_dir / "adapt_config.json").write_text(cfg.model_dump_json(indent=1))
    shutil.copy2(out_dir / "metrics.json", fx.plan_dir / "fraction_metrics.json")
    if cfg.mlflow:
        fo.log_run(course, index, out_dir, metrics, cfg, store=store)
    return FractionResult(index, out_dir, state["decision"], metrics, timings, paths)


def _segment_and_plan(course: Course, index: int, image: Volume, ref: Reference, presc, cfg: AdaptConfig,
                      timer: StageTimer, device: str) -> dict[str, Any]:
    """Segmentation, targets, painting, predicted plan, decision and (when needed) re-optimisation."""
    from sarcart.adapt.painting import painting_map
    from sarcart.adapt.predicted import centroid_mm, predicted_plan
    from sarcart.adapt.segment import load_network, segment_fraction
    from sarcart.dose.outputs import plan_metrics
    from sarcart.dose.plan import plan_fraction

    with timer("segment"):
        net = load_network(cfg.segment.model, device)
        ref_struct = {n: m for n, m in ref.masks.items() if n not in ("PTV", "CTV")}
        seg = segment_fraction(image, model=net, reference_masks=ref_struct, reference_image=ref.image,
                               settings=cfg.segment)
    with timer("targets"):
        masks = with_targets(seg.masks, course)
        presc, notes = applicable_prescription(presc, masks)
        seg.qa["flags"].extend(f"prescription: {n}" for n in notes)
    painting = None
    with timer("painting"):
        if cfg.painting.enabled and ref.habitat_model is not None:
            painting = painting_map(image, masks, presc.dose_gy, settings=cfg.painting, reference=ref.habitat_model,
                                    device=device)
    pmap = painting.prescription if painting is not None else None
    compensation: dict[str, Any] = {}
    if pmap is not None and cfg.painting.compensate and seg.displacement is not None:
        from sarcart.adapt.compensate import compensated_prescription

        with timer("painting"):
            pmap, compensation = compensated_prescription(course, index, pmap, seg.displacement,
                                                          max_change=cfg.painting.max_change)
    with timer("predicted_plan"):
        shift = centroid_mm(masks[presc.target]) - ref.centroid_mm if cfg.decision.couch_shift != "none" else None
        predicted = predicted_plan(image, plan_masks(masks), presc, ref.delivery, shift_mm=shift, painting=pmap,
                                   device=device)
        pred_metrics = plan_metrics(predicted)
    with timer("decide"):
        bd = boost_dice(painting.boost_region, ref, seg.displacement) \
            if painting is not None and seg.displacement is not None else None
        decision = decide(pred_metrics, ref.metrics, boost_dice=bd, settings=cfg.decision)
    chosen, warm_from = predicted, "none"
    if decision.adapt:
        with timer("reoptimise"):
            warm, warm_from = previous_state(course, index)
            chosen = plan_fraction(image, plan_masks(masks), presc, painting=pmap, warm_start=warm, device=device)
    log.info("fx%02d: %s", index, decision.summary)
    return {"seg": seg, "masks": masks, "painting": painting, "predicted": predicted, "predicted_metrics": pred_metrics,
            "decision": decision, "chosen": chosen, "warm_from": warm_from, "boost_dice": bd,
            "shift_mm": None if shift is None else [float(v) for v in shift], "compensation": compensation}
