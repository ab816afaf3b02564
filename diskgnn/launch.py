"""Launching training: in this process, or as data-parallel ranks, chosen from the config.

:mod:`diskgnn.train` holds the single-process trainer and
:mod:`diskgnn.distributed` the ranks built on it; the choice between them is
made here, by the caller's side, so neither imports the other's caller.
"""
from __future__ import annotations

from diskgnn.errors import ConfigError
from diskgnn.progress import ProgressFn, no_progress
from diskgnn.train import TrainConfig, train_single


def train(packed, cfg: TrainConfig, *, progress: ProgressFn = no_progress, memory_budget=None) -> dict:
    """Train on a packed directory (path or :class:`~diskgnn.store.Packed`); returns the final report.

    ``--nproc N > 1`` (or running as one rank of ``torchrun``) trains data-parallel
    (:func:`diskgnn.distributed.train_distributed`), otherwise in this process.
    """
    from diskgnn.distributed import train_distributed, wants_distributed
    if wants_distributed(cfg):
        if cfg.eval_mode == "layerwise":
            raise ConfigError("--eval-mode layerwise runs in one process, not in a data-parallel job; evaluate "
                              "on presampled batches (sample --eval-fanouts -1,... for all neighbours)")
        return train_distributed(packed, cfg, progress=progress, memory_budget=memory_budget)
    return train_single(packed, cfg, progress=progress, memory_budget=memory_budget)


def train_cli(packed_dir, cfg: TrainConfig, *, args=None, progress: ProgressFn = no_progress) -> dict:
    """``diskgnn train``: train and return the final report."""
    return train(packed_dir, cfg, progress=progress, memory_budget=getattr(args, "memory_budget", None))
