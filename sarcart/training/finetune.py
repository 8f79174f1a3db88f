"""Patient-specific adaptation: ``sarcart finetune``.

The population model (its plan and weights as the start) is trained for a few iterations at a
lower learning rate on the approved contours of the patient's earlier fractions, then the
fine-tuned network and the population network are both scored on a held-out approved fraction
that was not used for fine-tuning, each as the service would deliver it (the predictor on the image's
own grid, post-processing on, no TTA, the bundle's sub-voxel phases: :func:`score_model`). The patient
model is registered in MLflow as ``sarcart-<task>-patient-<hash>`` (hashed patient id only). A structure counts as "not worse" when
the patient model scores no worse than the population model on the held-out fraction in surface Dice at
2 mm (Nikolov et al. 2021, doi 10.2196/26151) and in HD95 (Huttenlocher et al. 1993, doi
10.1109/34.232073). By default the choice is per structure: the patient model is used for the structures
where it is not worse, and the population model for the others (``meta["patient_structures"]`` of the
patient bundle; the service merges the two outputs). The model receives the alias ``champion`` when it
is used for at least one structure. With ``per_structure: false`` the rule is all-or-nothing: every
scored structure must be not worse. The comparison table is written either way.

**Cross-validated keep rule** (``cross_validate: true``, ``--cross-validate``): one held-out fraction is a
noisy judge (a kidney's surface Dice moved -0.02 on one fraction and +0.03 on the next). Instead each approved
fraction is held out in turn: a model is fine-tuned on the others and scored there against the baseline; the
rule is applied to each structure's metrics averaged over these folds; the deployed model is then fine-tuned
on every approved fraction (the latest one included, which a single held-out fraction leaves out). It costs
one fine-tuning and two inferences per approved fraction, plus the final fine-tuning.

The baseline is what the service would run without the new model. Fine-tuning from the population model, that
is the population model. Fine-tuning further from a patient model (``--model models:/sarcart-<task>-patient-
<hash>@champion``), it is that patient model for the structures it was used for and its population model
(``meta["population_model"]``) for the others: a structure the service took from the population model is
compared with the population model, not with the patient model that was not used for it. The table's column
``baseline`` names the model per structure.

Approved contours of a fraction, first found wins: ``approved/masks/<NAME>.nii.gz`` (the review
page), ``approved/rtstruct.dcm``, in a synthetic course ``labels.nii.gz`` as the stand-in for
approved contours, and fx00's planning ``rtstruct.dcm``. Which one was used is reported per
fraction. :func:`patient_model` tells the service which patient model to prefer.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from sarcart import tracking
from sarcart.errors import ConfigError
from sarcart.io.course import Fraction, load_course
from sarcart.io.geometry import Volume
from sarcart.io.labels import LabelSpec, labels_to_masks, read_labels, write_labels
from sarcart.io.nifti import read_mask, read_nifti
from sarcart.models.bundle import ModelBundle, load_bundle, resolve_model, save_bundle
from sarcart.models.plan import Plan
from sarcart.training.config import AugmentConfig, DataConfig, OptimConfig

log = logging.getLogger(__name__)

#: the two metrics of the keep rule: (table column, higher is better)
RULE = (("surface_dice_2mm", True), ("hd95_mm", False))


class FinetuneConfig(BaseModel):
    """How to fine-tune; unknown keys are rejected (``sarcart finetune --config FILE``).

    ``sdice_tolerance`` / ``hd95_tolerance_mm``: how much worse than the population model a
    structure may score on the held-out fraction and still count as "not worse". The defaults are the
    metrics' resolution, not a licence to lose: 0.01 of surface Dice (1 % of the surface) and 1.5 mm of HD95
    (one in-plane voxel of the 1.5 x 1.5 x 3 mm TRUFI grid, the step in which HD95 moves). With zero
    tolerance a kidney's surface Dice 0.006 lower vetoed a patient model whose GTV Dice rose 0.81 -> 0.93
    (``benchmarks/bench_finetune.py``, BENCHMARKS.md). Set both to 0 for the strict rule.

    ``per_structure`` (default): the decision is taken per structure (see the module docstring). With
    ``trufi`` 3.1 a left kidney 0.022 worse in surface Dice rejected, all-or-nothing, a patient model whose
    GTV Dice rose 0.80 -> 0.93 on the same fraction.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(default=6, ge=1, le=1000)
    iterations_per_epoch: int = Field(default=10, ge=1)
    optim: OptimConfig = OptimConfig(lr=2e-4)
    augment: AugmentConfig = AugmentConfig()
    sdice_tolerance: float = Field(default=0.01, ge=0, le=1)
    hd95_tolerance_mm: float = Field(default=1.5, ge=0)
    per_structure: bool = Field(default=True, description="use the patient model for the structures where it is "
                                "not worse and the population model for the others; false: all-or-nothing")
    fit_loss: bool = Field(default=False, description="also score the loss on the fine-tuning fractions before and "
                           "after (4 more whole-image inferences, twice the scoring time; the per-epoch training "
                           "loss is logged either way)")
    cross_validate: bool = Field(default=False, description="hold out each approved fraction in turn and apply the "
                                 "keep rule to the metrics averaged over the folds; the deployed model is then "
                                 "fine-tuned on every approved fraction")
    threads: int = Field(default=2, ge=1, description="torch CPU threads")
    seed: int = 0
    register_model: bool = True
    experiment: str | None = Field(default=None, description="MLflow experiment; default sarcart-<task>-finetune")


@dataclass
class FinetuneResult:
    """What :func:`finetune` did. ``comparison``: one row per structure, the baseline (column ``baseline``;
    scores in the ``*_baseline`` columns) vs the new patient model; ``structures``: those the patient model
    is used for (empty: rejected). ``loss_before``/``loss_after`` are NaN unless ``fit_loss``. Cross-validated:
    ``holdout`` is None, ``comparison`` holds the fold means and ``folds`` the per-fold rows."""

    name: str
    kept: bool
    comparison: pd.DataFrame
    sources: dict[str, str]
    fit_fractions: list[int]
    holdout: int | None
    out_dir: Path
    bundle_path: Path
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    epoch_losses: list[float] = field(default_factory=list)
    finetune_seconds: float = 0.0
    eval_seconds: float = 0.0
    version: str | None = None
    run_id: str | None = None
    structures: list[str] = field(default_factory=list)
    folds: pd.DataFrame | None = None  #: cross-validation: per-fold score rows (``fold`` = held-out fraction)

    @property
    def holdouts(self) -> list[int]:
        """The fractions the keep rule was judged on (each in turn when cross-validated)."""
        if self.folds is not None:
            return sorted({int(f) for f in self.folds["fold"]})
        return [] if self.holdout is None else [self.holdout]

    @property
    def model_uri(self) -> str | None:
        """``models:/<name>/<version>`` when the patient model was kept, else None."""
        return f"models:/{self.name}/{self.version}" if self.kept and self.version else None


# ----------------------------------------------------------------------------- patient and data
def patient_key(patient_dir: str | os.PathLike[str]) -> str:
    """Hashed patient id: ``course.yaml``'s ``patient`` (the folder name without one)."""
    root = Path(patient_dir)
    patient = load_course(root).config.patient if (root / "course.yaml").is_file() else root.resolve().name
    return tracking.hash_id(patient)


def model_name(task: str, patient_dir: str | os.PathLike[str]) -> str:
    """Registered name of a patient model: ``sarcart-<task>-patient-<hashed patient id>``."""
    return f"sarcart-{task}-patient-{patient_key(patient_dir)}"


def approved_masks(fx: Fraction, image: Volume) -> tuple[dict[str, np.ndarray], str] | None:
    """The approved contours of a fraction as boolean masks on ``image``'s grid, and their source.

    Returns:
        ``({name: bool array}, source)`` or None when the fraction has no approved contours.
    """
    folder = fx.approved_dir / "masks"
    rt = fx.approved_dir / "rtstruct.dcm"
    if folder.is_dir() and any(folder.glob("*.nii*")):
        masks = {f.name.split(".nii")[0]: read_mask(f) for f in sorted(folder.glob("*.nii*"))}
        src = "approved/masks"
    elif not rt.is_file() and fx.labels.is_file():
        vol, spec = read_labels(fx.labels)
        masks, src = labels_to_masks(vol, spec), "labels.nii.gz (synthetic stand-in for approved contours)"
    elif (found := fx.approved_rtstruct()) is not None:  # approved/rtstruct.dcm; fx00: the planning set
        from sarcart.io.dicom_series import read_dicom_series
        from sarcart.io.rtstruct import read_rtstruct

        ref: Any = read_dicom_series(fx.mr_dir) if fx.mr_dir.is_dir() else image.geometry
        masks = dict(read_rtstruct(found, ref, check_frame_of_reference=fx.mr_dir.is_dir()).masks)
        src = str(found.relative_to(fx.root))
    else:
        return None
    for name, m in masks.items():
        image.geometry.require_same(m.geometry, what=f"{fx.name} approved {name}", tol_mm=1e-2)
    return {k: v.array.astype(bool) for k, v in masks.items()}, src


def choose_fractions(available: list[int], *, fractions: list[int] | None = None,
                     holdout: int | None = None) -> tuple[list[int], int]:
    """Fine-tuning fractions and the held-out one (default: the latest approved fraction not used).

    Raises:
        ConfigError: a fraction without approved contours, the held-out fraction among the
            fine-tuning ones, or nothing left to fine-tune on.
    """
    have = sorted(set(available))
    if holdout is None:
        rest = [i for i in have if fractions is None or i not in fractions]
        if not rest:
            raise ConfigError(f"no approved fraction is left to hold out (approved: {have}); pass fewer --fractions")
        holdout = rest[-1]
    fit = sorted(set(fractions)) if fractions is not None else [i for i in have if i != holdout]
    missing = [i for i in (*fit, holdout) if i not in have]
    if missing:
        raise ConfigError(f"fraction(s) {missing} have no approved contours; approved fractions: {have}")
    if holdout in fit:
        raise ConfigError(f"--holdout {holdout} is also in --fractions {fit}; the held-out fraction must not be "
                          "used for fine-tuning")
    if not fit:
        raise ConfigError(f"no fraction to fine-tune on (approved: {have}, held out: {holdout})")
    return fit, holdout


def _write_case(fx: Fraction, plan: Plan, out: Path) -> tuple[dict, str] | None:
    """Write the label map of a fraction's approved contours; its datalist entry and source."""
    if fx.image.is_file():
        image_path, image = fx.image, read_nifti(fx.image)
    elif fx.mr_dir.is_dir():
        from sarcart.io.dicom_series import read_dicom_series
        from sarcart.io.nifti import write_nifti

        image = read_dicom_series(fx.mr_dir).volume
        image_path = write_nifti(image, out / "images" / f"{fx.name}.nii.gz")
    else:
        return None
    found = approved_masks(fx, image)
    if found is None:
        return None
    masks, src = found
    lacking = [s for s in plan.structures if s not in masks]
    if lacking:
        raise ConfigError(f"{fx.name}: approved contours ({src}) lack {', '.join(lacking)}, which the model "
                          f"segments; approve every structure of {plan.structures} or leave the fraction out")
    labels = np.zeros(image.geometry.shape, dtype=np.uint8)
    for k in range(len(plan.structures), 0, -1):  # the first structure listed wins where masks overlap
        labels[masks[plan.structures[k - 1]]] = k
    spec = LabelSpec(values={k: s for k, s in enumerate(plan.structures, 1)},
                     structures={s: (k,) for k, s in enumerate(plan.structures, 1)})
    label_path = write_labels(image.with_array(labels), spec, out / "labels" / f"{fx.name}.nii.gz")
    return {"image": str(Path(image_path).resolve()), "label": str(label_path.resolve()), "case": fx.name}, src


# ------------------------------------------------------------------------------ fit and score
def fine_tune(bundle: ModelBundle, entries: list[dict], config: FinetuneConfig, *, device: str = "cpu",
              show_progress: bool = False) -> tuple[ModelBundle, list[float], float]:
    """Train ``bundle``'s network further on ``entries`` (same plan; its weights as the start).

    Returns:
        ``(fine-tuned bundle, mean training loss per epoch, seconds)``; the bundle's plan records
        the fine-tuning schedule.
    """
    import lightning as L
    import torch

    from sarcart.training.data import SegmentationDataModule
    from sarcart.training.module import EpochProgress, SegmentationModule

    sched = bundle.plan.schedule.model_copy(update={"epochs": config.epochs,
                                                    "iterations_per_epoch": config.iterations_per_epoch})
    note = (f"fine-tuned on {len(entries)} approved fraction(s) of one patient: {config.epochs} x "
            f"{config.iterations_per_epoch} iterations at lr {config.optim.lr:g}")
    plan = bundle.plan.model_copy(update={"schedule": sched, "decisions": [*bundle.plan.decisions, note]})
    L.seed_everything(config.seed, verbose=False)
    module = SegmentationModule(plan.model_dump(mode="json"), config.optim.model_dump())
    module.net.load_state_dict(bundle.state_dict)
    dm = SegmentationDataModule(plan, entries, [], augment=config.augment, data=DataConfig(), seed=config.seed)
    dev = torch.device(device)
    gpu = dev.type == "cuda"
    precision: Any = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if gpu else "32-true"
    trainer = L.Trainer(max_epochs=config.epochs, accelerator="gpu" if gpu else "cpu",
                        devices=[dev.index or 0] if gpu else 1, precision=precision,
                        logger=False, enable_checkpointing=False, callbacks=[EpochProgress(enabled=show_progress)],
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        use_distributed_sampler=False)
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    seconds = time.perf_counter() - t0
    state = {k: v.detach().cpu() for k, v in module.net.state_dict().items()}
    return ModelBundle(plan, state, dict(bundle.meta)), list(module.epoch_losses), seconds


def score_model(bundle: ModelBundle, fit: list[dict], holdout: dict, *, device: str = "cpu") -> tuple[float, pd.DataFrame]:
    """Loss on the fine-tuning fractions and metrics on the held-out fraction, as the service would deploy the model.

    The held-out fraction is segmented by the predictor as the service runs it
    (:func:`sarcart.inference.predictor.segment_image`: on the image's own grid, no TTA, the anatomy rules
    of post-processing such as the GTV's and kidneys' largest component, and the plan grid's sub-voxel
    phases when the bundle's meta recommends them; the patient model inherits the population model's meta,
    so both are scored the same way). A raw network's stray fragment, which the service removes, would
    otherwise decide HD95: a fold of ``bench_finetune.py --cross-validate`` scored a patient GTV of Dice 0.93 at
    HD95 127 mm. The loss is the training loss (soft Dice over the foreground classes + cross-entropy, MONAI
    ``DiceCELoss``) of the whole-image sliding-window probabilities, averaged over ``fit``.

    Returns:
        ``(mean loss, table)``: one row per structure and region of :func:`metrics.score_case`.
    """
    import torch
    from monai.losses import DiceCELoss

    from sarcart.inference.predictor import PredictorConfig, bundle_subvoxel, segment_image
    from sarcart.training.metrics import score_case
    from sarcart.training.predict import predict_volume

    net = bundle.network(device)
    deployed = PredictorConfig(tta=False, postprocess=True, subvoxel=None, device=device)
    subvoxel = bundle_subvoxel(bundle)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    structures = list(bundle.plan.structures)
    losses, rows = [], []
    for e in [*fit, holdout]:
        image = read_nifti(e["image"])
        labels = read_labels(e["label"])[0].array.astype(np.int64)
        if e is holdout:
            seg = segment_image(image, bundle, net, config=deployed)
            pred = {s: seg.labels.array == k for k, s in enumerate(structures, 1)}
            ref = {s: labels == k for k, s in enumerate(structures, 1) if (labels == k).any()}  # present ones
            rows += score_case(pred, ref, image.geometry.spacing_mm)
            continue
        probs, _ = predict_volume(net, image, bundle.plan, subvoxel=subvoxel)
        logp = torch.log(torch.from_numpy(probs).clamp_min(1e-7))[None]  # softmax(log p) = p
        losses.append(float(loss_fn(logp, torch.from_numpy(labels)[None, None])))
    return float(np.mean(losses)) if losses else float("nan"), pd.DataFrame(rows)


def choose_structures(table: pd.DataFrame, structures: list[str], *, per_structure: bool = True) -> list[str]:
    """The structures a patient model is used for, from :func:`compare`'s table.

    Per structure: those scored on the held-out fraction and not worse there (an unscored structure has no
    evidence, so the population model keeps it). All-or-nothing: every structure of the model when every
    scored one is not worse and at least one was scored, else none. The order is ``structures``' (the
    plan's).
    """
    verdict = {r["structure"]: (bool(r["scored"]), bool(r["not_worse"])) for r in table.to_dict("records")}
    scored = [s for s in structures if verdict.get(s, (False, False))[0]]
    good = [s for s in scored if verdict[s][1]]
    if per_structure:
        return good
    return list(structures) if scored and len(good) == len(scored) else []


def _not_worse(new: float, old: float, *, higher_better: bool, tol: float) -> bool:
    if not np.isfinite(old):
        return True  # the population model has no score to lose against
    if not np.isfinite(new):
        return False
    return bool(new >= old - tol) if higher_better else bool(new <= old + tol)


def compare(population: pd.DataFrame, patient: pd.DataFrame, *, sdice_tolerance: float = 0.0,
            hd95_tolerance_mm: float = 0.0) -> tuple[bool, pd.DataFrame]:
    """The keep rule: not worse in surface Dice at 2 mm and in HD95 for every scored structure.

    Args:
        population, patient: score tables (columns ``structure``, ``region``, ``dice``,
            ``surface_dice_2mm``, ``hd95_mm``) of the two models on the same held-out fraction;
            only region ``all`` counts. A structure absent from the reference (NaN for both) is
            not scored.

    Returns:
        ``(keep, table)``: one row per structure with both models' metrics, the differences
        (patient - population) and ``not_worse``. ``keep`` is False when no structure was scored.
    """
    cols = ["structure", "dice", "surface_dice_2mm", "hd95_mm"]
    a = population[population.region == "all"][cols].set_index("structure")
    b = patient[patient.region == "all"][cols].set_index("structure")
    rows = []
    for s in a.index:
        row: dict[str, Any] = {"structure": s}
        for m in cols[1:]:
            row[f"{m}_baseline"], row[f"{m}_patient"] = float(a.at[s, m]), float(b.at[s, m]) if s in b.index else np.nan
            row[f"{m}_gain"] = row[f"{m}_patient"] - row[f"{m}_baseline"]
        scored = np.isfinite(row["surface_dice_2mm_baseline"]) or np.isfinite(row["surface_dice_2mm_patient"])
        tols = {"surface_dice_2mm": sdice_tolerance, "hd95_mm": hd95_tolerance_mm}
        ok = [_not_worse(row[f"{m}_patient"], row[f"{m}_baseline"], higher_better=hb, tol=tols[m]) for m, hb in RULE]
        row["scored"], row["not_worse"] = bool(scored), bool(all(ok)) if scored else True
        rows.append(row)
    table = pd.DataFrame(rows)
    keep = bool(len(table) and table["scored"].any() and table["not_worse"].all())
    return keep, table


# --------------------------------------------------------------------------- the whole command
def baseline_of(start: ModelBundle, *, patient: str, store: str | os.PathLike[str] | None = None
                ) -> tuple[ModelBundle | None, list[str]]:
    """What the service runs instead of a model fine-tuned from ``start``, as ``(population, start_structures)``.

    ``start`` a population model: ``(None, every structure)``. ``start`` a patient model (its meta names a
    ``population_model``): the structures it is used for (``meta["patient_structures"]``; every structure for a
    patient model kept before the per-structure rule) and, when that is not every structure, its population
    model, loaded from the meta (None otherwise).

    Raises:
        ConfigError: ``start`` is another patient's model, or its population model cannot be loaded or segments
            other structures.
    """
    from sarcart.inference.service_adapter import patient_structures  # the service's reading of the meta

    meta = dict(start.meta or {})
    structures = list(start.plan.structures)
    if "population_model" not in meta:
        return None, structures
    owner = meta.get("patient")
    if owner and owner != patient:
        raise ConfigError(f"the model is the fine-tuned model of patient {owner}, not of this course's patient "
                          f"{patient}; fine-tune from the population model ({meta['population_model']}) instead")
    used = patient_structures(start, structures)
    if used == structures:
        return None, structures
    ref = str(meta["population_model"])
    try:
        population = load_bundle(resolve_model(ref, store=store))
    except (ConfigError, OSError) as exc:
        raise ConfigError(
            f"the patient model is used for {', '.join(used) or 'no structure'} only; the service draws the others "
            f"with its population model {ref}, which is the baseline for them but cannot be loaded ({exc}). Pass "
            f"--model {ref} (or where that model is now) to fine-tune from the population model") from exc
    if list(population.plan.structures) != structures:
        raise ConfigError(f"the population model {ref} segments {population.plan.structures}, the patient model "
                          f"{structures}; fine-tune from the population model instead")
    return population, used


def _population_digest(start: ModelBundle, root: ModelBundle | None) -> str | None:
    """The weights digest of the population model the keep rule judged against (the service compares it with
    the population model it runs): ``start``'s own when it is a population model."""
    if "population_model" not in start.meta:
        return start.weights_digest()
    if start.meta.get("population_digest"):
        return str(start.meta["population_digest"])
    return root.weights_digest() if root is not None else None


def deployed_table(start: pd.DataFrame, population: pd.DataFrame, start_structures: list[str]) -> pd.DataFrame:
    """Score rows of the deployed combination: ``start``'s for ``start_structures``, ``population``'s for the
    others (tables of :func:`score_model` on the same fraction)."""
    keep = start.structure.isin(start_structures)
    return pd.concat([start[keep], population[~population.structure.isin(start_structures)]], ignore_index=True)


def fold_means(folds: pd.DataFrame) -> pd.DataFrame:
    """Per structure and region, the metrics averaged over the folds (a fold whose reference lacks the
    structure does not count; an empty prediction counts with Dice 0 and the image diagonal as HD95)."""
    cols = ["dice", "surface_dice_2mm", "hd95_mm"]
    return folds.groupby(["structure", "region"], sort=False)[cols].mean().reset_index()


def _folds(start: ModelBundle, cases: dict[int, dict], cfg: FinetuneConfig, baseline: Any, *, device: str,
           show_progress: bool) -> tuple[pd.DataFrame, float, float]:
    """Leave one approved fraction out in turn: fine-tune on the others, score that model and the baseline
    (``baseline(entry, [])``) on it. Returns the score rows (columns ``fold``, ``model``), the scoring and the
    fine-tuning seconds."""
    rows, eval_s, fit_s = [], 0.0, 0.0
    for k, i in enumerate(cases, 1):
        rest = [e for j, e in cases.items() if j != i]
        log.info("fold %d/%d: fine-tuning on %s, holding out fx%02d", k, len(cases),
                 ", ".join(f"fx{j:02d}" for j in cases if j != i), i)
        fold_model, _, sec = fine_tune(start, rest, cfg, device=device, show_progress=show_progress)
        fit_s += sec
        t0 = time.perf_counter()
        _, b = baseline(cases[i], [])
        _, p = score_model(fold_model, [], cases[i], device=device)
        eval_s += time.perf_counter() - t0
        rows += [b.assign(fold=i, model="baseline"), p.assign(fold=i, model="patient")]
    return pd.concat(rows, ignore_index=True), eval_s, fit_s


def _device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return device


def _approved(patient_dir: Path, plan: Plan, out: Path, *, fractions: list[int] | None,
              holdout: int | None) -> tuple[dict[int, dict], dict[str, str]]:
    """The approved fractions' datalist entries by index and their sources (only the named ones when
    both ``fractions`` and ``holdout`` are given)."""
    named = {*(fractions or []), *([] if holdout is None else [holdout])}
    cases: dict[int, dict] = {}
    sources: dict[str, str] = {}
    for fx in load_course(patient_dir).fractions:
        if fractions is not None and holdout is not None and fx.index not in named:
            continue
        try:
            written = _write_case(fx, plan, out)
        except ConfigError as exc:
            if fx.index in named:
                raise
            log.warning("%s left out: %s", fx.name, exc)
            continue
        if written is not None:
            cases[fx.index], sources[fx.name] = written
    return cases, sources


def _prepare(patient_dir: Path, plan: Plan, out: Path, *, fractions: list[int] | None,
             holdout: int | None) -> tuple[list[dict], dict, dict[str, str]]:
    """Approved fractions -> (fine-tuning entries, held-out entry, source per fraction)."""
    cases, sources = _approved(patient_dir, plan, out, fractions=fractions, holdout=holdout)
    fit, hold = choose_fractions(sorted(cases), fractions=fractions, holdout=holdout)
    used = {f"fx{i:02d}" for i in (*fit, hold)}
    return [cases[i] for i in fit], cases[hold], {k: v for k, v in sources.items() if k in used}


def finetune(
    patient_dir: str | os.PathLike[str],
    model: str | os.PathLike[str],
    *,
    fractions: list[int] | None = None,
    holdout: int | None = None,
    config: FinetuneConfig | None = None,
    device: str | None = None,
    out: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
    show_progress: bool = False,
) -> FinetuneResult:
    """Fine-tune the population ``model`` for one patient and keep it only when not worse.

    Args:
        patient_dir: the patient's course folder (``course.yaml``, ``fxNN/``).
        model: population model (shipped name, bundle path/folder or MLflow URI), or this patient's
            model to fine-tune further (the baseline is then what the service runs: :func:`baseline_of`).
        fractions: fractions to fine-tune on (default: every approved one except the held-out one).
        holdout: the approved fraction to compare on (default: the latest approved one not in
            ``fractions``); never used for fine-tuning.
        config: schedule, learning rate, tolerances (:class:`FinetuneConfig`).
        device: ``cpu`` or ``cuda`` (default: CUDA when available).
        out: working folder (label maps, ``bundle.pt``, ``comparison.csv``, ``result.json``);
            default ``mlruns/finetune/<registered name>/``.
        store: MLflow store (folder or URI; default ``MLFLOW_TRACKING_URI`` or ``mlruns/``).

    Returns:
        A :class:`FinetuneResult`; ``kept`` says whether the alias ``champion`` moved to it,
        ``structures`` which structures the service takes from it.

    Raises:
        ConfigError: unusable fractions, a bad device, an unreadable model, another patient's model, or a
            patient model whose population model cannot be loaded.
        CourseLayoutError: ``patient_dir`` is not a course.
    """
    import torch

    cfg = config or FinetuneConfig()
    dev = _device(device)
    torch.set_num_threads(cfg.threads)
    start = load_bundle(resolve_model(model, store=store))  # an MLflow URI is fetched from store
    root, start_structures = baseline_of(start, patient=patient_key(patient_dir), store=store)
    name = model_name(start.plan.task, patient_dir)
    dst = Path(out) if out is not None else tracking.project_root() / "mlruns" / "finetune" / name
    dst.mkdir(parents=True, exist_ok=True)

    def baseline(hold: dict, fit: list[dict]) -> tuple[float, pd.DataFrame]:
        loss, table = score_model(start, fit if cfg.fit_loss else [], hold, device=dev)
        if root is not None:  # the service draws some structures with the population model: their baseline
            table = deployed_table(table, score_model(root, [], hold, device=dev)[1], start_structures)
        return loss, table

    folds = None
    if cfg.cross_validate:
        if holdout is not None:
            raise ConfigError("--holdout names one held-out fraction, --cross-validate holds out each approved "
                              "fraction in turn; pass one of them")
        cases, sources = _approved(Path(patient_dir), start.plan, dst, fractions=fractions, holdout=None)
        chosen = sorted(cases) if fractions is None else sorted(set(fractions))
        missing = [i for i in chosen if i not in cases]
        if missing or len(chosen) < 2:
            raise ConfigError(f"cross-validation needs at least two approved fractions (approved: {sorted(cases)}"
                              + (f"; {missing} have no approved contours" if missing else "") + ")")
        sources = {k: v for k, v in sources.items() if int(k[2:]) in chosen}
        folds, eval_s, fold_s = _folds(start, {i: cases[i] for i in chosen}, cfg, baseline, device=dev,
                                       show_progress=show_progress)
        base_table = fold_means(folds[folds.model == "baseline"])
        pat_table = fold_means(folds[folds.model == "patient"])
        fit, hold = [cases[i] for i in chosen], None
        patient, losses, seconds = fine_tune(start, fit, cfg, device=dev, show_progress=show_progress)
        seconds += fold_s  # every fine-tuning the decision took
        loss_before = loss_after = float("nan")
    else:
        fit, hold, sources = _prepare(Path(patient_dir), start.plan, dst, fractions=fractions, holdout=holdout)
        patient, losses, seconds = fine_tune(start, fit, cfg, device=dev, show_progress=show_progress)
        t0 = time.perf_counter()
        loss_before, base_table = baseline(hold, fit)
        loss_after, pat_table = score_model(patient, fit if cfg.fit_loss else [], hold, device=dev)
        eval_s = time.perf_counter() - t0
    for k, v in sources.items():
        log.info("%s: approved contours from %s", k, v)
    _, table = compare(base_table, pat_table, sdice_tolerance=cfg.sdice_tolerance,
                       hd95_tolerance_mm=cfg.hd95_tolerance_mm)
    root_model = str(start.meta.get("population_model", model))
    table.insert(1, "baseline", [str(model) if s in start_structures else root_model for s in table.structure])
    used = choose_structures(table, start.plan.structures, per_structure=cfg.per_structure)
    res = FinetuneResult(
        name=name, kept=bool(used), structures=used, comparison=table, sources=sources,
        fit_fractions=[int(e["case"][2:]) for e in fit],
        holdout=None if hold is None else int(hold["case"][2:]), out_dir=dst, bundle_path=dst / "bundle.pt",
        loss_before=loss_before, loss_after=loss_after, epoch_losses=losses, finetune_seconds=seconds,
        eval_seconds=eval_s, folds=folds)
    meta = {**start.meta, "name": name, "task": start.plan.task, "patient": patient_key(patient_dir),
            "population_model": root_model,
            "population_version": start.meta.get("population_version", start.version),
            "population_digest": _population_digest(start, root),
            "started_from": str(model), "fit_fractions": res.fit_fractions, "holdout": res.holdout,
            "holdouts": res.holdouts,
            "finetune_seconds": round(seconds, 1), "patient_structures": used}
    for k in ("version", "mlflow_run_id", "registry_uri"):
        meta.pop(k, None)
    save_bundle(ModelBundle(patient.plan, patient.state_dict, meta), res.bundle_path)
    table.to_csv(dst / "comparison.csv", index=False, float_format="%.4f")
    if folds is not None:
        folds.to_csv(dst / "comparison_folds.csv", index=False, float_format="%.4f")
    if cfg.register_model:
        _register(res, cfg, start=start, model=str(model), store=store)
    (dst / "result.json").write_text(json.dumps(_summary(res), indent=1, default=str))
    return res


def _summary(res: FinetuneResult) -> dict[str, Any]:
    return {"name": res.name, "version": res.version, "kept": res.kept, "structures": res.structures,
            "model_uri": res.model_uri,
            "fit_fractions": res.fit_fractions, "holdout": res.holdout, "holdouts": res.holdouts,
            "cross_validated": res.folds is not None, "sources": res.sources,
            "loss_before": res.loss_before, "loss_after": res.loss_after, "epoch_losses": res.epoch_losses,
            "finetune_seconds": res.finetune_seconds, "eval_seconds": res.eval_seconds,
            "comparison": res.comparison.to_dict("records")}


def _register(res: FinetuneResult, cfg: FinetuneConfig, *, start: ModelBundle, model: str, store: Any) -> None:
    """Log the run, register the patient model, move ``champion`` to it only when kept (for at least one
    structure; the tag ``structures`` lists them). ``population_model`` names the population model also when
    ``model`` (``started_from``) is a patient model."""
    import mlflow

    from sarcart.training.mlflow_model import log_bundle_model

    task = start.plan.task
    exp = tracking.experiment_id(cfg.experiment or f"sarcart-{task}-finetune", store)
    version = tracking.registry_version(model, store=store) or start.version
    pop_model, pop_version = (str(start.meta["population_model"]), str(start.meta.get("population_version"))) \
        if "population_model" in start.meta else (model, version)
    decision = "kept" if res.kept else "rejected"
    tags = {"task": task, "patient": res.name.rsplit("-", 1)[-1], "population_model": pop_model,
            "population_version": pop_version, "started_from": model, "started_from_version": version,
            "fit_fractions": ",".join(map(str, res.fit_fractions)),
            "holdout": "each of " + ",".join(map(str, res.holdouts)) if res.folds is not None else str(res.holdout),
            "decision": decision, "structures": ",".join(res.structures) or "none"}
    with mlflow.start_run(experiment_id=exp, run_name=res.name, tags=tags) as run:
        tracking.log_config(cfg)
        mlflow.log_params({"approved_source." + k: v[:250] for k, v in res.sources.items()})
        for step, v in enumerate(res.epoch_losses):
            mlflow.log_metric("train_loss", v, step=step)
        metrics = {"fit_loss_baseline": res.loss_before, "fit_loss_patient": res.loss_after,
                   "finetune_seconds": res.finetune_seconds, "eval_seconds": res.eval_seconds}
        for r in res.comparison.to_dict("records"):
            for m in ("dice", "surface_dice_2mm", "hd95_mm"):
                for who in ("baseline", "patient"):
                    metrics[f"holdout_{m}_{r['structure']}_{who}"] = r[f"{m}_{who}"]
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_table(res.comparison, artifact_file="finetune/comparison.json")
        uri = log_bundle_model(res.bundle_path)
    res.run_id = run.info.run_id
    res.version = tracking.register_model(uri, res.name, tags={**tags, "run_id": res.run_id}, store=store)
    if res.kept:
        client = mlflow.MlflowClient(tracking_uri=tracking.configure(store))
        client.set_registered_model_alias(res.name, tracking.CHAMPION_ALIAS, res.version)
    log.info("%s v%s %s (judged on %s)", res.name, res.version, decision,
             ", ".join(f"fx{i:02d}" for i in res.holdouts))


def patient_model(patient_dir: str | os.PathLike[str], task: str, *,
                  store: str | os.PathLike[str] | None = None) -> str | None:
    """The kept patient model of ``patient_dir`` for ``task`` (``models:/<name>/<version>``), or None.

    The service uses this model, when it is not None, for the structures its bundle's
    ``meta["patient_structures"]`` names (every structure when the meta has none: patient models kept
    before the per-structure rule), and the population model for the others.
    """
    mv = tracking.alias_version(model_name(task, patient_dir), store=store)
    return f"models:/{mv.name}/{mv.version}" if mv is not None else None


__all__ = ["FinetuneConfig", "FinetuneResult", "approved_masks", "baseline_of", "choose_fractions",
           "choose_structures", "compare", "deployed_table", "fine_tune", "finetune", "fold_means", "model_name",
           "patient_key", "patient_model", "score_model"]
