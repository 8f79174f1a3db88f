"""Training configuration: one YAML file per experiment, unknown keys rejected.

Example (``configs/train/gtv-t1.yaml``)::

    task: gtv-t1
    datalist: ../../data/gtv-t1/datalist.json   # relative to this file
    output_dir: ../../mlruns/train
    budget: {time_budget_min: 45}
    optim: {name: adamw, lr: 0.002}
    trainer: {val_every_epochs: 5}

Relative paths are resolved against the folder of the YAML file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sarcart.config import read_yaml_mapping, validate_model
from sarcart.models.plan import Budget


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimConfig(_Frozen):
    """Optimiser with a polynomial learning-rate decay over all steps (nnU-Net's schedule)."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=3e-5, ge=0)
    momentum: float = Field(default=0.99, ge=0, lt=1, description="SGD only (Nesterov)")
    poly_power: float = Field(default=0.9, ge=0)
    warmup_steps: int = Field(default=0, ge=0)


class AugmentConfig(_Frozen):
    """MR augmentations; each probability is per patch. Flips follow the plan's ``flip_axes``."""

    enabled: bool = True
    rotate_deg: float = Field(default=15.0, ge=0, le=45, description="in-plane (about the S axis)")
    rotate_out_of_plane_deg: float = Field(default=5.0, ge=0, le=30)
    scale: float = Field(default=0.15, ge=0, le=0.5, description="+- fraction")
    p_affine: float = Field(default=0.2, ge=0, le=1)
    p_bias_field: float = Field(default=0.3, ge=0, le=1)
    bias_coeff: float = Field(default=0.3, ge=0, le=1)
    p_noise: float = Field(default=0.15, ge=0, le=1)
    noise_std: float = Field(default=0.1, ge=0)
    p_gamma: float = Field(default=0.15, ge=0, le=1)
    gamma: tuple[float, float] = (0.7, 1.5)
    p_contrast: float = Field(default=0.15, ge=0, le=1)
    contrast: float = Field(default=0.25, ge=0, le=1, description="multiplicative +- fraction")
    p_flip: float = Field(default=0.5, ge=0, le=1)


class DataConfig(_Frozen):
    num_workers: int = Field(default=0, ge=0)
    cache_rate: float = Field(default=1.0, ge=0, le=1)
    max_val_cases: int | None = Field(default=None, ge=1, description="cap on cases scored during training")


class TrainerConfig(_Frozen):
    """Lightning settings. ``precision: auto`` = bf16-mixed on a GPU that supports it, 16-mixed on
    other GPUs, 32-true on CPU (no mixed precision on CPU)."""

    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = Field(default=1, ge=1)
    num_nodes: int = Field(default=1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed"] = "auto"
    val_every_epochs: int = Field(default=5, ge=1)
    threads: int = Field(default=2, ge=1, description="torch CPU threads per process")
    checkpoint_every_epochs: int = Field(default=1, ge=1)


class InferenceConfig(_Frozen):
    """How the trained model should be run, written to its bundle (``meta["inference"]``); the predictor,
    the service, the validation scoring and the champion comparison follow it."""

    subvoxel: bool = Field(default=False, description="average over the plan grid's half-voxel phases "
                           "(docs/training.md §6); choose it on validation data, as trufi 3.1 was")


class TrainConfig(_Frozen):
    """One training experiment. ``fold``: the validation fold (``all``: train on every case)."""

    task: str = Field(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    datalist: Path
    output_dir: Path = Path("mlruns/train")
    experiment: str | None = Field(default=None, description="MLflow experiment; default sarcart-<task>")
    fold: int | Literal["all"] = 0
    seed: int = 0
    register_model: bool = True
    init_from: str | None = Field(
        default=None, description="continue a trained model instead of starting from random weights: a shipped "
        "name (trufi), a bundle file or an MLflow URI. Its plan (grid, patch, network, normalisation, batch) is "
        "kept; budget.epochs (required) and budget.iterations_per_epoch set how long, optim how fast")
    budget: Budget = Budget()
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()
    data: DataConfig = DataConfig()
    trainer: TrainerConfig = TrainerConfig()
    inference: InferenceConfig = InferenceConfig()

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"sarcart-{self.task}"

    @property
    def registered_name(self) -> str:
        return f"sarcart-{self.task}"

    def with_updates(self, **updates: object) -> TrainConfig:
        """A copy with top-level fields replaced (validated again)."""
        data = self.model_dump()
        data.update({k: v for k, v in updates.items() if v is not None})
        return TrainConfig.model_validate(data)


def _resolve(base: Path, value: object) -> object:
    if value is None:
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a training YAML file; relative ``datalist``/``output_dir`` are taken from its folder.

    Raises:
        ConfigError: missing file, invalid YAML, unknown keys or invalid values (the message lists
            each offending key).
    """
    p = Path(path)
    raw = read_yaml_mapping(p, what="training config", hint="see configs/train/ for examples")
    for key in ("datalist", "output_dir"):
        if key in raw:
            raw[key] = _resolve(p.parent, raw[key])
    init = raw.get("init_from")
    if isinstance(init, str) and init.endswith(".pt"):  # a bundle file: relative to the config, as the datalist
        raw["init_from"] = str(_resolve(p.parent, init))
    return validate_model(TrainConfig, raw, where=str(p))
