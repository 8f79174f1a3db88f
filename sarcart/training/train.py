"""``sarcart train``: fingerprint -> plan -> Lightning fit -> per-case validation -> MLflow -> registry.

Files of a run (``<output_dir>/<task>/fold<K>/``): ``config.json`` (resolved), ``plan.json``,
``checkpoints/last.ckpt`` (resume), ``bundle.pt`` (the trained model), ``validation.csv``
(per case, hashed case ids) and ``mlflow_run_id``. The fingerprint of the whole datalist is cached
in ``<output_dir>/<task>/fingerprint.json``, so every fold and the final model share one plan.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sarcart import tracking
from sarcart.errors import ConfigError
from sarcart.models.bundle import ModelBundle, load_bundle, resolve_model, save_bundle
from sarcart.models.plan import Fingerprint, Plan
from sarcart.models.planner import make_plan
from sarcart.training.config import TrainConfig
from sarcart.training.dataset import load_datalist, split
from sarcart.training.fingerprint import compute_fingerprint, load_fingerprint, save_fingerprint

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    plan: Plan
    bundle_path: Path | None = None
    run_id: str | None = None
    epoch_losses: list[float] = field(default_factory=list)
    validation: pd.DataFrame | None = None
    val_score: float = float("nan")
    train_seconds: float = 0.0
    model_version: str | None = None
    champion: dict[str, Any] | None = None


def run_dir_for(config: TrainConfig) -> Path:
    out = config.output_dir if config.output_dir.is_absolute() else tracking.project_root() / config.output_dir
    return out / config.task / (f"fold{config.fold}" if config.fold != "all" else "all")


def _fingerprint(config: TrainConfig, data: dict, show_progress: bool) -> Fingerprint:
    digest = hashlib.sha256(json.dumps([[e["image"], e["label"]] for e in data["training"]]).encode()).hexdigest()[:16]
    path = run_dir_for(config).parent / "fingerprint.json"
    key = path.with_suffix(".key")
    if path.is_file() and key.is_file() and key.read_text() == digest:
        return load_fingerprint(path)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    fp = compute_fingerprint(data["training"], data["structures"], seed=config.seed, show_progress=show_progress)
    if getattr(rank_zero_only, "rank", 0) == 0:  # under DDP every rank computes the same fingerprint; one writes it
        save_fingerprint(fp, path)
        key.write_text(digest)
    return fp


def plan_for(config: TrainConfig, *, show_progress: bool = True) -> tuple[Plan, dict]:
    """The plan of a configuration (fingerprint of the whole datalist + budget) and the datalist."""
    data = load_datalist(config.datalist)
    plan = make_plan(_fingerprint(config, data, show_progress), config.budget, task=config.task)
    return plan, data


def continued_plan(config: TrainConfig) -> tuple[Plan, dict, ModelBundle]:
    """For ``init_from``: the start model's plan with the configuration's schedule, the datalist and the start.

    Raises:
        ConfigError: ``budget.epochs`` unset, the model not found, or the datalist labels other structures
            than the model segments.
    """
    b = config.budget
    if b.epochs is None:
        raise ConfigError("init_from continues a trained model on its own plan, so the budget cannot plan the "
                          "schedule: set budget.epochs (iterations = budget.epochs x budget.iterations_per_epoch)")
    start = load_bundle(resolve_model(config.init_from))  # type: ignore[arg-type]
    data = load_datalist(config.datalist)
    if list(data["structures"]) != list(start.plan.structures):
        raise ConfigError(f"init_from {config.init_from} segments {start.plan.structures}, but {config.datalist} "
                          f"labels {data['structures']}: build the datalist with the model's structures, in its order")
    old = start.plan.schedule
    sched = old.model_copy(update={"epochs": b.epochs, "iterations_per_epoch": b.iterations_per_epoch,
                                   "est_training_minutes": round(b.epochs * b.iterations_per_epoch
                                                                 * old.est_seconds_per_iteration / 60, 1)})
    start.meta["weights_digest"] = start.weights_digest()  # named in the plan and in the new bundle's meta
    note = (f"continued from {config.init_from} (weights {start.meta['weights_digest']}): its plan, {b.epochs} x "
            f"{b.iterations_per_epoch} iterations at lr {config.optim.lr:g}")
    plan = start.plan.model_copy(update={"task": config.task, "schedule": sched,
                                         "decisions": [*start.plan.decisions, note]})
    return plan, data, start


def segmenter_for(bundle: ModelBundle, device: str = "cpu") -> Any:
    """Raw network segmenter (no post-processing): ``Volume -> {structure: mask}`` on the image grid, over
    the sub-voxel phases when the bundle recommends them (as the predictor runs it)."""
    from sarcart.inference.predictor import bundle_subvoxel
    from sarcart.training.predict import predict_volume

    net = bundle.network(device)
    subvoxel = bundle_subvoxel(bundle)

    def segment(image: Any) -> dict[str, np.ndarray]:
        probs, _ = predict_volume(net, image, bundle.plan, subvoxel=subvoxel)
        labels = np.argmax(probs, axis=0)
        return {s: labels == k for k, s in enumerate(bundle.plan.structures, start=1)}

    return segment


def mean_dice(table: pd.DataFrame | None) -> float:
    """Mean Dice over cases and structures (region ``all``); NaN without a table."""
    if table is None or not len(table):
        return float("nan")
    v = table[table.region == "all"]["dice"].to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _trainer(config: TrainConfig, plan: Plan, run_dir: Path, *, logger: Any, show_progress: bool) -> Any:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sarcart.training.module import EpochProgress

    t = config.trainer
    gpu = t.accelerator == "gpu" or (t.accelerator == "auto" and torch.cuda.is_available())
    precision = t.precision
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if gpu else "32-true"
    # the newest epoch as checkpoints/latest.ckpt (overwritten) and last.ckpt linking to it, written at the
    # end of every training epoch (Lightning writes last.ckpt only together with a top-k checkpoint)
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="latest", save_top_k=1, save_last="link",
                           every_n_epochs=t.checkpoint_every_epochs, save_on_train_epoch_end=True,
                           enable_version_counter=False)
    return L.Trainer(
        max_epochs=plan.schedule.epochs, accelerator="gpu" if gpu else "cpu", devices=t.devices,
        num_nodes=t.num_nodes, strategy=t.strategy, precision=precision, logger=logger,
        callbacks=[ckpt, EpochProgress(enabled=show_progress, budget=config.budget)], check_val_every_n_epoch=t.val_every_epochs,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        num_sanity_val_steps=0, log_every_n_steps=max(1, plan.schedule.iterations_per_epoch),
        default_root_dir=str(run_dir),
    )


def _fit(config: TrainConfig, plan: Plan, entries: tuple[list, list], *, run_dir: Path, store: Any, resume: bool,
         show_progress: bool, start: ModelBundle | None = None) -> tuple[Any, Any, str | None, float]:
    import lightning as L
    from lightning.pytorch.loggers import MLFlowLogger

    from sarcart.training.data import SegmentationDataModule
    from sarcart.training.module import SegmentationModule

    uri = tracking.configure(store)
    tracking.experiment_id(config.experiment_name, store)
    id_file = run_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
    fold = "all" if config.fold == "all" else f"fold{config.fold}"
    logger = MLFlowLogger(experiment_name=config.experiment_name, tracking_uri=uri, run_name=f"{config.task}-{fold}",
                          run_id=run_id, log_model=False, tags={"task": config.task, "fold": str(config.fold)})
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0 and logger.run_id:
        id_file.write_text(str(logger.run_id))  # known before fitting, so a killed run can be resumed
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = SegmentationModule(plan.model_dump(mode="json"), config.optim.model_dump())
    if start is not None:  # init_from (a resumed run's checkpoint replaces these weights with its own)
        module.net.load_state_dict(start.state_dict)
    dm = SegmentationDataModule(plan, entries[0], entries[1], augment=config.augment, data=config.data,
                                seed=config.seed)
    trainer = _trainer(config, plan, run_dir, logger=logger, show_progress=show_progress)
    last = run_dir / "checkpoints" / "last.ckpt"
    t0 = time.perf_counter()
    trainer.fit(module, dm, ckpt_path=str(last) if resume and last.is_file() else None)
    seconds = time.perf_counter() - t0
    return trainer, module, logger.run_id, seconds


def train(config: TrainConfig, *, store: str | os.PathLike[str] | None = None, resume: bool = False,
          show_progress: bool = True) -> TrainResult:
    """Train one fold (or ``all``) of ``config``, log it to MLflow and register the model.

    Args:
        config: the experiment (see :mod:`sarcart.training.config`).
        store: MLflow store (folder or URI); ``MLFLOW_TRACKING_URI`` or ``mlruns/`` by default.
        resume: continue from ``checkpoints/last.ckpt`` and the same MLflow run.

    Returns:
        A :class:`TrainResult` (on DDP ranks other than 0: without bundle or validation).
    """
    import torch

    torch.set_num_threads(config.trainer.threads)
    run_dir = run_dir_for(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = None
    if config.init_from:
        plan, data, start = continued_plan(config)
    else:
        plan, data = plan_for(config, show_progress=show_progress)
    plan.save(run_dir / "plan.json")
    (run_dir / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=1))
    train_e, val_e = split(data, config.fold)
    trainer, module, run_id, seconds = _fit(config, plan, (train_e, val_e), run_dir=run_dir, store=store, resume=resume,
                                            show_progress=show_progress, start=start)
    result = TrainResult(run_dir=run_dir, plan=plan, run_id=run_id, epoch_losses=list(module.epoch_losses),
                         train_seconds=seconds)
    if not trainer.is_global_zero:
        return result
    meta = {"name": config.task, "task": config.task, "fold": config.fold, "structures": plan.structures,
            "n_train_cases": len(train_e), "train_seconds": round(seconds, 1), "mlflow_run_id": run_id,
            "inference": config.inference.model_dump()}
    if start is not None:
        meta["init_from"] = {"model": str(config.init_from), "name": start.name, "version": start.version,
                             "weights_digest": start.meta["weights_digest"]}
    result.bundle_path = save_bundle(ModelBundle(plan, module.net.state_dict(), meta), run_dir / "bundle.pt")
    if val_e:
        result.validation = _validate(result.bundle_path, val_e, plan.structures, show_progress=show_progress)
        result.validation.to_csv(run_dir / "validation.csv", index=False, float_format="%.4f")
    result.val_score = mean_dice(result.validation)
    _log_run(config, result, val_e=val_e, store=store)
    return result


def _validate(bundle_path: Path, entries: list[dict], structures: list[str], *, show_progress: bool) -> pd.DataFrame:
    from sarcart.training.evaluation import evaluate_cases

    seg = segmenter_for(load_bundle(bundle_path))
    return evaluate_cases(seg, entries, structures, case_key=tracking.hash_id, show_progress=show_progress)


def _log_metrics(result: TrainResult) -> None:
    """Timing and validation metrics and the per-case table of a finished run (in the active run)."""
    import mlflow

    iters = result.plan.schedule.epochs * result.plan.schedule.iterations_per_epoch
    mlflow.log_metrics({"train_seconds": result.train_seconds,
                        "seconds_per_iteration": result.train_seconds / max(iters, 1)})
    if result.validation is not None:
        mlflow.log_table(result.validation, artifact_file="validation/cases.json")
        mlflow.log_metric("val_case_dice_mean", result.val_score)
        for s, v in result.validation[result.validation.region == "all"].groupby("structure"):
            mlflow.log_metric(f"val_case_dice_{s}", float(np.nanmean(v["dice"])))
            mlflow.log_metric(f"val_case_hd95_{s}", float(np.nanmedian(v["hd95_mm"])))


def _log_run(config: TrainConfig, result: TrainResult, *, val_e: list[dict], store: Any) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from sarcart.training.mlflow_model import log_bundle_model

    tracking.configure(store)
    with mlflow.start_run(run_id=result.run_id):
        try:
            tracking.log_config(config.model_dump(mode="json"))
        except MlflowException:  # a resumed run whose settings changed (e.g. more epochs): keep the first
            log.warning("settings changed on resume; the new ones are logged as config_resumed.json")
            mlflow.log_dict(config.model_dump(mode="json"), "config_resumed.json")
        mlflow.log_dict(result.plan.model_dump(mode="json"), "plan.json")
        _log_metrics(result)
        model_uri = log_bundle_model(result.bundle_path)  # type: ignore[arg-type]
    if not config.register_model:
        return
    result.model_version = tracking.register_model(
        model_uri, config.registered_name, tags={"fold": config.fold, "run_id": result.run_id}, store=store)
    structures = result.plan.structures
    result.champion = tracking.promote_if_better(
        config.registered_name, result.model_version, score=result.val_score,
        cases=tracking.cases_key([tracking.hash_id(e["case"]) for e in val_e]),
        evaluate=(lambda uri: mean_dice(_validate(resolve_model(uri, store=store), val_e, structures,
                                                  show_progress=False)))
        if val_e else None,
        store=store,
    )


__all__ = ["TrainResult", "mean_dice", "plan_for", "run_dir_for", "segmenter_for", "train"]
