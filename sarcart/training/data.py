"""LightningDataModule: cached datasets, one shard per rank, fixed-length epochs of random patches.

Each DDP rank caches only its own share of the cases (``entries[rank::world_size]``), so memory
per process does not grow with the number of GPUs/nodes; Lightning's distributed sampler is
therefore switched off (``use_distributed_sampler=False``) and every rank draws
``iterations_per_epoch * batch_size`` patches per epoch from its shard with replacement.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from monai.data import CacheDataset, DataLoader
from torch.utils.data import RandomSampler

from sarcart.errors import ConfigError
from sarcart.models.plan import Plan
from sarcart.training.config import AugmentConfig, DataConfig
from sarcart.training.transforms import train_transforms, val_transforms

log = logging.getLogger(__name__)


def shard(entries: list[dict], rank: int, world_size: int) -> list[dict]:
    """The cases rank ``rank`` of ``world_size`` caches (every case when there are fewer cases than ranks)."""
    if world_size <= 1 or len(entries) < world_size:
        return list(entries)
    return list(entries[rank::world_size])


class SegmentationDataModule(L.LightningDataModule):
    """Training patches and whole validation volumes for one fold.

    Args:
        plan: the training plan (patch, batch size, schedule, flips).
        train_entries, val_entries: datalist entries with absolute paths.
    """

    def __init__(self, plan: Plan, train_entries: list[dict], val_entries: list[dict], *,
                 augment: AugmentConfig, data: DataConfig, seed: int = 0) -> None:
        super().__init__()
        if not train_entries:
            raise ConfigError("no training cases; check the datalist and the fold")
        self.plan, self.augment, self.data_cfg, self.seed = plan, augment, data, seed
        self.train_entries, self.val_entries = train_entries, val_entries
        self.train_ds: CacheDataset | None = None
        self.val_ds: CacheDataset | None = None

    def _rank(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        if self.train_ds is not None:
            return
        rank, world = self._rank()
        mine = shard(self.train_entries, rank, world)
        log.info("rank %d/%d caches %d training case(s)", rank, world, len(mine))
        tf = train_transforms(self.plan, self.augment)
        tf.set_random_state(seed=self.seed + rank)
        self.train_ds = CacheDataset(mine, transform=tf, cache_rate=self.data_cfg.cache_rate, num_workers=0,
                                     progress=False)
        val = self.val_entries[: self.data_cfg.max_val_cases] if self.data_cfg.max_val_cases else self.val_entries
        if val:
            self.val_ds = CacheDataset(shard(val, rank, world), transform=val_transforms(self.plan),
                                       cache_rate=self.data_cfg.cache_rate, num_workers=0, progress=False)

    def train_dataloader(self) -> DataLoader:
        assert self.train_ds is not None, "setup() must run first"
        rank, _ = self._rank()
        n = self.plan.schedule.iterations_per_epoch * self.plan.schedule.batch_size
        gen = torch.Generator().manual_seed(self.seed * 1000 + rank)
        sampler = RandomSampler(self.train_ds, replacement=True, num_samples=n, generator=gen)
        nw = self.data_cfg.num_workers
        return DataLoader(self.train_ds, batch_size=self.plan.schedule.batch_size, sampler=sampler,
                          num_workers=nw, persistent_workers=nw > 0, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_ds is None:
            return []
        return DataLoader(self.val_ds, batch_size=1, num_workers=0)
