"""LightningModule: network from the plan, Dice + cross-entropy with deep supervision, poly LR.

Loss: soft Dice over the foreground classes, computed over the whole batch, plus cross-entropy
(Milletari et al., 3DV 2016, doi 10.1109/3DV.2016.79; nnU-Net's combination, Isensee et al. 2021,
doi 10.1038/s41592-020-01008-z). With deep supervision every head is scored against the full
resolution labels with weights 1, 1/2, 1/4, ... (normalised). Validation runs sliding-window
inference on whole volumes and logs the mean foreground Dice on the plan grid.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sarcart.models.networks import build_network
from sarcart.models.plan import Budget, Plan, Schedule
from sarcart.training.config import OptimConfig
from sarcart.training.predict import sliding_window_probs

log = logging.getLogger(__name__)

#: window overlap of the in-training validation (cheaper than the plan's; the final per-case
#: validation after training uses the plan's overlap, as deployed)
VAL_OVERLAP = 0.25


def poly_lr(step: int, total: int, *, power: float, warmup: int = 0) -> float:
    """Learning-rate factor: linear warm-up, then ``(1 - step/total) ** power``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - step / max(total, 1)) ** power


class SegmentationModule(L.LightningModule):
    """Trains the plan's network.

    Args:
        plan: the plan as a JSON dict (saved in checkpoints as a hyper-parameter).
        optim: optimiser settings as a dict (:class:`OptimConfig`).
    """

    def __init__(self, plan: dict[str, Any], optim: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # the resolved config and plan are logged by train()
        self.plan = Plan.model_validate(plan)
        self.optim_cfg = OptimConfig.model_validate(optim)
        self.net = build_network(self.plan.network, out_channels=self.plan.n_classes)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
        self.epoch_losses: list[float] = []
        # this rank's running sum of step losses, kept on the device: reading it every step would be a
        # host-device sync per step on a GPU; it is read once per epoch
        self._sum: torch.Tensor | float = 0.0
        self._n = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if out.ndim == 6:  # DynUNet deep supervision: (B, heads, C, X, Y, Z)
            heads = torch.unbind(out, dim=1)
            w = torch.tensor([0.5 ** i for i in range(len(heads))])
            w = w / w.sum()
            return sum(float(wi) * self.loss_fn(h, y) for wi, h in zip(w, heads))  # type: ignore[return-value]
        return self.loss_fn(out, y)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch["image"], batch["label"].long()
        loss = self._loss(self.net(x), y)
        self._sum = self._sum + loss.detach()
        self._n += 1
        return loss

    def running_train_loss(self) -> float:
        """This rank's mean step loss so far in the epoch (NaN before the first step), without a collective.

        The progress line reads it on rank 0 alone, in the callbacks' epoch-end hook, which runs before the
        module's (:meth:`on_train_epoch_end`, which gives the logger every rank's mean and starts the next sum).
        """
        return float(self._sum / self._n) if self._n else float("nan")

    def on_train_epoch_end(self) -> None:
        """Send the epoch's mean training loss and learning rate to the logger (MLflow).

        Directly, not through ``self.log``: Lightning hands epoch-level ``self.log`` values to the logger
        only after the epoch-end callbacks, i.e. after ``ModelCheckpoint`` has written the epoch's
        checkpoint, so a crash in between left a checkpoint whose epoch had no ``train_loss`` in MLflow,
        and the resumed run, starting after that epoch, never logged it. The module's hook runs before
        the checkpoint callback's.
        """
        total = torch.as_tensor(self._sum, device=self.device).to(torch.float64)
        totals = torch.stack([total, torch.tensor(float(self._n), dtype=torch.float64, device=self.device)])
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")  # every rank's batches
        self._sum, self._n = 0.0, 0
        if float(totals[1]) == 0:
            return
        loss = float(totals[0] / totals[1])
        self.epoch_losses.append(loss)
        if self.logger is not None:  # rank 0 only (the logger's method is rank-zero-only)
            lr = float(self.optimizers().param_groups[0]["lr"])  # type: ignore[union-attr]
            self.logger.log_metrics({"train_loss": loss, "lr": lr}, step=self.global_step)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        probs = sliding_window_probs(self.net, batch["image"][0], self.plan, overlap=VAL_OVERLAP)
        pred = torch.argmax(probs, dim=0)
        y = batch["label"][0, 0].long().to(pred.device)
        c = self.plan.n_classes
        onehot_p = torch.nn.functional.one_hot(pred, c).permute(3, 0, 1, 2)[None].float()
        onehot_y = torch.nn.functional.one_hot(y, c).permute(3, 0, 1, 2)[None].float()
        dice = compute_dice(onehot_p, onehot_y, include_background=False)[0]
        for k, name in enumerate(self.plan.structures):
            if torch.isfinite(dice[k]):
                self.log(f"val_dice_{name}", dice[k], on_epoch=True, batch_size=1, sync_dist=True)
        finite = dice[torch.isfinite(dice)]
        if finite.numel():
            self.log("val_dice", finite.mean(), on_epoch=True, batch_size=1, sync_dist=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        o = self.optim_cfg
        if o.name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(self.parameters(), lr=o.lr, momentum=o.momentum,
                                                         nesterov=True, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        total = self.plan.schedule.epochs * self.plan.schedule.iterations_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: poly_lr(s, total, power=o.poly_power, warmup=o.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def pace_note(seconds_per_iteration: float, schedule: Schedule, budget: Budget) -> tuple[int, str]:
    """``(logging level, message)`` comparing the measured training pace with the plan's estimate.

    The plan chose its grid, patch and schedule for ``budget.time_budget_min`` at ``budget.throughput_gflops``;
    a pace more than 1.5x slower than estimated makes the fold overrun it (a WARNING naming the throughput that
    would have predicted this machine), one at least 2x faster leaves budget for a finer plan (INFO).
    """
    est = schedule.est_seconds_per_iteration
    iters = schedule.epochs * schedule.iterations_per_epoch
    minutes = iters * seconds_per_iteration / 60.0
    head = (f"training pace {seconds_per_iteration:.3f} s/iteration, the plan estimated {est:.3f}: the "
            f"{iters} iterations take about {minutes:.1f} min (plan {schedule.est_training_minutes:.1f} min, budget "
            f"{budget.time_budget_min:g} min per fold)")
    if est <= 0:
        return logging.INFO, head
    implied = budget.throughput_gflops * est / seconds_per_iteration
    if seconds_per_iteration > 1.5 * est:
        return logging.WARNING, (
            f"{head}. This machine trains slower than the plan's throughput_gflops {budget.throughput_gflops:g} "
            f"assumes (are the cores shared?): free the cores, or plan for it with budget.throughput_gflops about "
            f"{implied:.0f}")
    if seconds_per_iteration < 0.5 * est:
        return logging.INFO, (
            f"{head}. This machine is faster than planned: budget.throughput_gflops about {implied:.0f} would "
            f"afford a finer plan in the same budget")
    return logging.INFO, head


class EpochProgress(Callback):
    """One progress bar over epochs (stderr) and one log line per epoch, on rank 0 only.

    With a ``budget``, the pace of the first two epochs (median time from one training batch to the next,
    data loading included, validation and checkpoints not) is compared with the plan's estimate once
    (:func:`pace_note`) and logged to the run as ``early_seconds_per_iteration``. The loss shown is rank 0's
    own mean step loss of the epoch (:meth:`SegmentationModule.running_train_loss`); MLflow gets every rank's.
    """

    def __init__(self, enabled: bool = True, budget: Budget | None = None) -> None:
        self.enabled = enabled
        self.budget = budget
        self._bar: Progress | None = None
        self._task: Any = None
        self._t0 = 0.0
        self._last_batch: float | None = None
        self._gaps: list[float] = []
        self._paced = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self.enabled:
            cols = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn())
            self._bar = Progress(*cols, console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task("epochs", total=trainer.max_epochs, completed=trainer.current_epoch,
                                            info="")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._last_batch = None  # the first gap of an epoch would include its start-up

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.budget is None or self._paced:
            return
        now = time.perf_counter()
        if self._last_batch is not None:
            self._gaps.append(now - self._last_batch)
        self._last_batch = now

    def _report_pace(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paced = True
        if not self._gaps or self.budget is None:
            return
        pace = float(statistics.median(self._gaps))
        level, msg = pace_note(pace, pl_module.plan.schedule, self.budget)
        log.log(level, msg)
        if trainer.logger is not None:
            trainer.logger.log_metrics({"early_seconds_per_iteration": pace}, step=trainer.global_step)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        running = getattr(pl_module, "running_train_loss", None)
        loss = running() if callable(running) else float("nan")
        val = f" val_dice {float(m['val_dice']):.3f}" if "val_dice" in m else ""
        info = f"loss {loss:.4f}{val}"
        log.info("epoch %d/%d %s (%.1f s)", trainer.current_epoch + 1, trainer.max_epochs, info,
                 time.perf_counter() - self._t0)
        if self._bar is not None:
            self._bar.update(self._task, advance=1, info=info)
        if self.budget is not None and not self._paced:
            two_epochs = 2 * max(1, trainer.num_training_batches - 1)  # gaps: batches per epoch less one
            if len(self._gaps) >= two_epochs or trainer.current_epoch + 1 >= trainer.max_epochs:
                self._report_pace(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
