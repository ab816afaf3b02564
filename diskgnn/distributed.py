"""Data-parallel training over ``torch.distributed`` (stage 5).

Every rank is one process with its own pipeline, its own feature store (memory
tiers sized from the node's budget divided among the node's ranks) and a
:class:`~torch.nn.parallel.DistributedDataParallel` replica of the model:
gloo on CPU, NCCL on GPU, rendezvous through ``env://`` (``MASTER_ADDR``,
``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``), which ``torchrun`` sets and :func:`launch_local` sets
for ``diskgnn train --nproc N`` on one machine.

Which batches a rank trains on. Epoch ``e`` shuffles the part's *global*
batches exactly as single-process training does
(:func:`diskgnn.train.epoch_permutation`); rank ``r`` of ``W`` takes, in that
order, the batches ``g`` with ``g % W == r``. Ranks then have equal step
counts up to one; a shorter rank repeats its own first batches (deterministic
padding, so every rank runs ``ceil(nb / W)`` steps and none waits forever in a
collective). Step ``k`` averages the gradients of batch ``k`` of every rank.
Evaluation splits the val/test batches the same way (no padding) and sums the
counts.

Where a rank's batches live (each rank reads only its own files):

* a *shared* directory: ``PACKED`` is one packed directory on a filesystem
  every node sees; each rank opens it and reads only its batches;
* a *shard set*: ``PACKED`` holds ``shard-0`` .. ``shard-(W-1)``, the packed
  directories of ``diskgnn sample --num-shards W --shard r`` (then ``diskgnn
  pack``); rank ``r`` opens only ``PACKED/shard-r``, so a node needs only its
  own ranks' shards. Shard ``r`` holds exactly the batches ``g % W == r``
  (batch ``i`` of the shard is global batch ``i*W + r``), so both layouts train
  on the same batches in the same order. The shards' manifests are the
  combining step: every rank checks its shard is ``r of W`` and the ranks
  compare dataset fingerprints and sampling configs before training.

Failure handling: the process group has a timeout (``DISKGNN_DIST_TIMEOUT_S``,
default 600 s); a rank that dies closes its connections, so the others fail at
their next collective with :class:`~diskgnn.errors.DistributedError`, and the
local launcher watches its children, stops the rest when one fails, and
reports the first cause.
"""
from __future__ import annotations

import datetime
import faulthandler
import gc
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diskgnn.errors import ConfigError, DiskGNNError, DistributedError, InputNotFoundError, MismatchError
from diskgnn.progress import ProgressFn, no_progress
from diskgnn.loader import epoch_permutation, open_packed, resolve_device
from diskgnn.train import Trainer, TrainConfig

log = logging.getLogger(__name__)

TIMEOUT_ENV = "DISKGNN_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
SHARD_DIR = "shard-{rank}"
"""Name of rank ``r``'s directory inside a shard set."""
_PEER_MARKERS = ("gloo", "nccl", "connection", "closed by peer", "timed out", "timeout", "processgroup",
                 "broken pipe", "connection reset", "socket")


# --- who am I -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class RankInfo:
    """This process's place in the job (from the ``env://`` variables)."""
    rank: int
    """Global rank, 0 .. world_size-1."""
    world_size: int
    """Processes in the job over all nodes."""
    local_rank: int
    """Rank among the processes of this node."""
    local_world_size: int
    """Processes on this node (the node's memory budget and cores are divided among them)."""

    def __post_init__(self):
        if not (self.world_size >= 1 and 0 <= self.rank < self.world_size and self.local_world_size >= 1
                and 0 <= self.local_rank < self.local_world_size):
            raise ConfigError(f"inconsistent process-group environment: RANK={self.rank}, WORLD_SIZE="
                              f"{self.world_size}, LOCAL_RANK={self.local_rank}, LOCAL_WORLD_SIZE="
                              f"{self.local_world_size}; launch with torchrun or diskgnn train --nproc N")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_info_from_env(environ=None) -> RankInfo | None:
    """The :class:`RankInfo` that ``torchrun`` (or :func:`launch_local`) put into the environment; None outside."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise ConfigError(f"the process-group environment is not numeric (RANK={env.get('RANK')!r}, WORLD_SIZE="
                          f"{env.get('WORLD_SIZE')!r}); launch with torchrun or diskgnn train --nproc N") from None
    return RankInfo(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world)


def wants_distributed(cfg: TrainConfig) -> bool:
    """True for ``--nproc N > 1`` or when this process is one rank of a multi-process job."""
    info = rank_info_from_env()
    return cfg.nproc > 1 or (info is not None and info.world_size > 1)


def timeout_s() -> float:
    """The collective/rendezvous timeout in seconds (``DISKGNN_DIST_TIMEOUT_S``, default 600)."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None or text == "":
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{TIMEOUT_ENV}={text!r} must be a positive number of seconds (default "
                          f"{DEFAULT_TIMEOUT_S:.0f})")
    return value


def rank_memory_budget(memory_budget, local_world_size: int) -> int:
    """This rank's share (bytes) of the node budget (``--memory-budget``, default: the available memory)."""
    from diskgnn.memory import resolve_memory_budget
    return resolve_memory_budget(memory_budget) // max(1, local_world_size)


def rank_threads(threads: int | None, local_world_size: int) -> int:
    """Compute threads per rank: ``--threads`` if given, else the node's cores divided among its ranks."""
    from diskgnn.capabilities import available_cores
    if threads is not None:
        return threads
    return max(1, available_cores() // max(1, local_world_size))


def rank_device(name: str, info: RankInfo) -> torch.device:
    """The rank's training device: ``cuda:<local rank>`` (modulo the visible GPUs) on CUDA, else CPU."""
    dev = resolve_device(name)
    if dev.type != "cuda":
        return dev
    if dev.index is not None:
        if info.local_world_size > 1:
            raise ConfigError(f"--device {name}: {info.local_world_size} processes on one node cannot share one "
                              f"named GPU; use --device cuda (rank r uses GPU r) or auto")
        return dev
    return torch.device("cuda", info.local_rank % torch.cuda.device_count())


# --- which batches a rank reads ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ShardLayout:
    """How the batches of a directory are numbered."""
    num_shards: int
    """1: the directory holds (or addresses) every batch."""
    shard: int
    """Which shard it is (0 when ``num_shards`` is 1)."""
    local_numbering: bool
    """True when batch ``i`` of the directory is global batch ``i * num_shards + shard`` (sharded samples)."""


def shard_layout(samples, packed_manifest: dict | None = None) -> ShardLayout:
    """The layout of a samples directory (sharded by ``diskgnn sample --num-shards``) or of a packed one."""
    if getattr(samples, "num_shards", 1) > 1:
        return ShardLayout(int(samples.num_shards), int(samples.shard), True)
    shard = (packed_manifest or {}).get("shard")
    if isinstance(shard, dict) and int(shard.get("num_shards", 1)) > 1:
        # a packed shard of unsharded samples: global numbering, only its own batches have extents
        return ShardLayout(int(shard["num_shards"]), int(shard["shard"]), False)
    return ShardLayout(1, 0, False)


def global_num_batches(samples, part: str, dataset=None) -> int:
    """Batches of ``part`` over all shards (``samples.num_batches`` when unsharded; else from the dataset's split)."""
    if getattr(samples, "num_shards", 1) == 1:
        return samples.num_batches(part)
    from diskgnn.sampling import num_batches_of, part_batch_size, part_num_items
    dataset = dataset if dataset is not None else samples.open_dataset()
    seeds = part_num_items(dataset, samples.config, part)
    size = part_batch_size(dataset, samples.config, part)
    total = num_batches_of(seeds, size)
    if num_batches_of(seeds, size, samples.num_shards, samples.shard) != samples.num_batches(part):
        raise MismatchError(f"{samples.path}: part {part} holds {samples.num_batches(part)} batches, but shard "
                            f"{samples.shard} of {samples.num_shards} of {total} batches should hold "
                            f"{num_batches_of(seeds, size, samples.num_shards, samples.shard)}; "
                            f"the shard does not belong to dataset {dataset.path}: sample it again")
    return total


@dataclass(frozen=True, slots=True)
class BatchShare:
    """The batches of each part that one rank of ``world_size`` trains and evaluates on."""
    rank: int
    world_size: int
    layout: ShardLayout

    def __post_init__(self):
        lay = self.layout
        if lay.num_shards > 1 and (lay.num_shards != self.world_size or lay.shard != self.rank):
            raise ConfigError(f"rank {self.rank} of {self.world_size} was given shard {lay.shard} of "
                              f"{lay.num_shards}; a shard set must have one shard per rank: run with "
                              f"{lay.num_shards} processes, or sample again with --num-shards {self.world_size}")

    def owns(self, g: int) -> bool:
        return g % self.world_size == self.rank

    def local(self, g: int) -> int:
        """The number of global batch ``g`` in the directory this rank reads."""
        return g // self.world_size if self.layout.local_numbering else g

    def train_order(self, permutation: np.ndarray, part: str = "train") -> np.ndarray:
        """This rank's local batch numbers for an epoch whose global order is ``permutation``.

        Padded by repeating the rank's first batches to ``ceil(nb / world_size)``
        steps, so all ranks run the same number of steps.
        """
        nb = len(permutation)
        mine = [self.local(int(g)) for g in permutation if self.owns(int(g))]
        steps = -(-nb // self.world_size)
        if not mine:
            raise ConfigError(f"part {part} has {nb} batches, fewer than the {self.world_size} processes, so rank "
                              f"{self.rank} has nothing to train on; use fewer processes or a smaller --batch-size")
        while len(mine) < steps:
            mine.extend(mine[:steps - len(mine)])
        return np.asarray(mine, dtype=np.int64)

    def eval_batches(self, num_batches: int) -> list[int]:
        """This rank's local batch numbers of an evaluation part with ``num_batches`` global batches."""
        return [self.local(g) for g in range(self.rank, num_batches, self.world_size)]


# --- collectives --------------------------------------------------------------------------------------

def _is_peer_failure(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, RuntimeError) and not isinstance(exc, DiskGNNError) and any(
        m in text for m in _PEER_MARKERS)


class PeerLostError(DistributedError):
    """A collective failed because another rank died, hung or was stopped."""


def gather(obj: Any) -> list:
    """``obj`` of every rank, in rank order (on every rank)."""
    import torch.distributed as dist
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# --- the data-parallel trainer -------------------------------------------------------------------------

def _weighted(values: list[dict], key: str, weight: str) -> float | None:
    pairs = [(v.get(key), v.get(weight) or 0) for v in values if v.get(key) is not None]
    total = sum(w for _, w in pairs)
    return sum(x * w for x, w in pairs) / total if total else None


class DistributedTrainer(Trainer):
    """A :class:`~diskgnn.train.Trainer` that is one rank of a data-parallel job.

    Trains ``share``'s batches through a DDP replica (gradients averaged over
    ranks at every step), evaluates its share of val/test and sums the counts,
    and merges every rank's epoch record (all ranks' stage times under
    ``rank_stages``). Only rank 0 writes metrics and checkpoints (its config
    has them; the others get a config without); a resumed run reads the
    checkpoint on rank 0 and broadcasts it.
    """

    def __init__(self, samples, dataset, features, cfg: TrainConfig, *, info: RankInfo, share: BatchShare,
                 device: torch.device, progress: ProgressFn = no_progress, data_id: dict | None = None):
        self._resume = cfg.resume
        if not info.is_main:
            cfg = replace(cfg, metrics=None, checkpoint=None, resume=False)
        super().__init__(samples, dataset, features, cfg, device=device, progress=progress, data_id=data_id)
        self.info, self.share = info, share
        if not info.is_main:  # same initial weights everywhere (seeded above), different dropout draws
            torch.manual_seed(int(np.random.SeedSequence([cfg.seed, info.rank]).generate_state(1)[0]))
        self._num_batches = {p: global_num_batches(samples, p, dataset) for p in samples.parts}
        for part in self.train_parts:  # every rank refuses alike, so none is left waiting in a collective
            if self._num_batches[part] < info.world_size:
                raise ConfigError(f"part {part} has {self._num_batches[part]} batches, fewer than the "
                                  f"{info.world_size} processes, so some would have nothing to train on; use fewer "
                                  f"processes or sample with a smaller --batch-size")
        from torch.nn.parallel import DistributedDataParallel
        self.train_module = DistributedDataParallel(
            self.model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        self._rng_states: list | None = None

    # --- batches -------------------------------------------------------------------------------

    def epoch_order(self, epoch: int) -> tuple[str, np.ndarray]:
        """The part of epoch ``epoch`` and *this rank's* local batch numbers, in step order."""
        part = self.train_parts[epoch % len(self.train_parts)]
        order = epoch_permutation(self.cfg.seed, epoch, self._num_batches[part])
        return part, self.share.train_order(order, part)

    def eval_keys(self, parts) -> list[tuple[str, int]]:
        return [(p, i) for p in parts for i in self.share.eval_batches(self._num_batches[p])]

    # --- passes --------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict:
        mine = super().train_epoch(epoch)
        mine["peak_rss_bytes"] = _peak_rss()
        mine["torch_rng"] = torch.get_rng_state()
        ranks = gather(mine)
        self._rng_states = [r.pop("torch_rng") for r in ranks]
        mine.pop("torch_rng", None)
        t = max(r["epoch_time_s"] for r in ranks)
        batches = sum(r["batches"] for r in ranks)
        out = dict(mine)
        out.update({
            "epoch_time_s": t, "batches": batches, "steps": mine["batches"], "world_size": self.info.world_size,
            "batches_per_s": batches / t if t > 0 else None,
            "loss": _weighted(ranks, "loss", "seeds"), "train_acc": _weighted(ranks, "train_acc", "seeds"),
            "seeds": sum(r["seeds"] for r in ranks),
            "rank_stages": [r["stages"] for r in ranks],
            "rank_epoch_time_s": [round(r["epoch_time_s"], 4) for r in ranks],
            "rank_peak_rss_bytes": [r["peak_rss_bytes"] for r in ranks],
        })
        for key in ("bytes_read", "bytes_useful"):
            if all(isinstance(r.get(key), (int, float)) for r in ranks):
                out[key] = int(sum(r[key] for r in ranks))
        if out.get("bytes_useful"):
            out["read_amplification"] = round(out.get("bytes_read", 0) / out["bytes_useful"], 4)
        if all(isinstance(r.get("hit_rate"), dict) for r in ranks):
            out["rank_hit_rate"] = [r["hit_rate"] for r in ranks]
        out.pop("peak_rss_bytes", None)
        return out

    @torch.no_grad()
    def evaluate(self, parts=("val", "test"), task: str = "eval") -> dict:
        mine = super().evaluate(parts, task)
        ranks = gather(mine)
        out = dict(mine)
        out["eval_time_s"] = max(r["eval_time_s"] for r in ranks)
        out["rank_eval_stages"] = [r["eval_stages"] for r in ranks]
        for p in parts:
            total = sum(r[f"{p}_seeds"] for r in ranks)
            out[f"{p}_seeds"] = total
            if self.link:  # MRR, Hits@K and loss are means over held-out edges: weight by each rank's count
                from diskgnn.decoders import HITS_AT
                for m in ("mrr", "loss", *(f"hits@{k}" for k in HITS_AT)):
                    value = sum(r[f"{p}_{m}"] * r[f"{p}_seeds"] for r in ranks if r[f"{p}_seeds"])
                    out[f"{p}_{m}"] = value / total if total else None
                continue
            correct = sum(round(r[f"{p}_acc"] * r[f"{p}_seeds"]) for r in ranks if r[f"{p}_seeds"])
            loss = sum(r[f"{p}_loss"] * r[f"{p}_seeds"] for r in ranks if r[f"{p}_seeds"])
            out[f"{p}_acc"] = correct / total if total else None
            out[f"{p}_loss"] = loss / total if total else None
        if all(isinstance(r.get("eval_bytes_read"), (int, float)) for r in ranks):
            out["eval_bytes_read"] = int(sum(r["eval_bytes_read"] for r in ranks))
        return out

    # --- checkpoint ----------------------------------------------------------------------------

    def state(self) -> dict:
        state = super().state()
        state["world_size"] = self.info.world_size
        if self._rng_states is not None:
            state["torch_rng_ranks"] = list(self._rng_states)
        return state

    def restore(self, state: dict | None, where: str) -> None:
        """Called by ``fit`` on rank 0 with the loaded checkpoint; the other ranks receive it here."""
        state = broadcast(state if self.info.is_main else None)
        super().restore(state, where)
        written = int(state.get("world_size", 1))
        if written != self.info.world_size and self.info.is_main:
            log.warning("%s was written by a run with %d processes, this run has %d: training continues from it, "
                        "but the batch order differs from an uninterrupted %d-process run", where, written,
                        self.info.world_size, written)
        rngs = state.get("torch_rng_ranks")
        if isinstance(rngs, list) and len(rngs) == self.info.world_size:
            torch.set_rng_state(rngs[self.info.rank])

    def fit(self) -> dict:
        if self.info.is_main or not self._resume:
            return super().fit()
        self.restore(None, "the checkpoint")  # rank 0 reads it inside its fit and broadcasts it
        return super().fit()

    def report(self) -> dict:
        rep = super().report()
        n = len(self.history)
        per_rank: list[dict] = []
        for r in range(self.info.world_size):
            acc: dict[str, dict] = {}
            for h in self.history:
                stages = h.get("rank_stages") or []
                for name, s in (stages[r] if r < len(stages) else {}).items():
                    a = acc.setdefault(name, {"busy_s": 0.0, "wait_s": 0.0})
                    a["busy_s"] += s["busy_s"] / n
                    a["wait_s"] += s["wait_s"] / n
            per_rank.append({k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in acc.items()})
        rates = [h["batches_per_s"] for h in self.history if h.get("batches_per_s")]
        rep.update({"nproc": self.info.world_size, "rank_stages_mean": per_rank,
                    "batches_per_s": sorted(rates)[len(rates) // 2] if rates else None,
                    "rank_peak_rss_bytes": (self.history[-1].get("rank_peak_rss_bytes") if self.history else None)})
        return rep


def _peak_rss() -> int:
    from diskgnn.train import peak_rss_bytes
    return peak_rss_bytes()


# --- one rank -------------------------------------------------------------------------------------------

def resolve_rank_dir(path: str | os.PathLike, rank: int) -> Path:
    """The directory rank ``rank`` reads: ``path`` itself, or ``path/shard-<rank>`` of a shard set."""
    path = Path(path)
    if (path / "manifest.json").exists():
        return path
    if path.is_dir() and any(p.name.startswith("shard-") for p in path.iterdir()):
        mine = path / SHARD_DIR.format(rank=rank)
        if not (mine / "manifest.json").exists():
            raise InputNotFoundError(
                f"{path} is a shard set, but its shard for rank {rank} ({mine}) is missing or incomplete; make it "
                f"with diskgnn sample DATASET --out {path.parent}/<samples>/shard-{rank} --num-shards <W> --shard "
                f"{rank} and diskgnn pack ... --out {mine}")
        return mine
    return path  # let the opener raise its own error naming the missing manifest


def _open_rank_data(path, info: RankInfo, device: torch.device, memory_budget: int, features: str,
                    cfg: TrainConfig):
    """(samples, dataset, feature source, data id, layout) for this rank."""
    from diskgnn.train import DatasetFeatures, packed_data_id, training_memory
    where = resolve_rank_dir(path, info.rank)
    if features == "packed":
        from diskgnn.store import FeatureStore
        packed = open_packed(where)
        samples, dataset = packed.samples, packed.dataset
        training = training_memory(cfg, dataset, samples.config.num_layers, device, link=samples.config.is_link)
        source = FeatureStore(packed, device, memory_budget=memory_budget, training=training, io_depth=cfg.io_depth,
                              request_size=cfg.io_request, recheck_reads=cfg.recheck_reads)
        return samples, dataset, source, packed_data_id(packed), shard_layout(samples, packed.manifest)
    if features == "memmap":  # a samples directory with features gathered from the dataset (baseline, tests)
        from diskgnn.sampling import Samples
        samples = Samples.open(where)
        dataset = samples.open_dataset()
        data_id = {"dataset_fingerprint": dataset.fingerprint, "samples": samples.config.to_json(),
                   "num_nodes": int(dataset.num_nodes)}
        return samples, dataset, DatasetFeatures(samples, dataset, device), data_id, shard_layout(samples)
    raise ConfigError(f"features={features!r}: use 'packed' or 'memmap'")


def _check_same_data(data_id: dict, layout: ShardLayout, info: RankInfo) -> None:
    """Every rank must train on shards of the same data with the same sampling config."""
    ids = gather((data_id, layout.num_shards))
    for r, (other, shards) in enumerate(ids):
        if other != ids[0][0] or shards != ids[0][1]:
            raise DistributedError(f"rank {r} reads data {other} (shards: {shards}), rank 0 reads {ids[0][0]} "
                                   f"(shards: {ids[0][1]}); all ranks must read shards of the same samples: "
                                   f"re-run sample/pack with the same dataset and flags")


def run_rank(path, cfg: TrainConfig, *, progress: ProgressFn = no_progress, memory_budget=None,
             features: str = "packed") -> dict | None:
    """Train as this process's rank (the environment says which); rank 0 returns the report, the others None."""
    import torch.distributed as dist
    info = rank_info_from_env()
    if info is None:
        raise ConfigError("run_rank needs RANK and WORLD_SIZE in the environment; launch with torchrun or "
                          "diskgnn train --nproc N")
    if cfg.nproc > 1 and cfg.nproc != info.local_world_size:
        log.warning("--nproc %d is ignored: the launcher started %d processes on this node", cfg.nproc,
                    info.local_world_size)
    device = rank_device(cfg.device, info)
    threads = rank_threads(cfg.threads, info.local_world_size)
    cfg = replace(cfg, threads=threads, device=str(device))
    try:
        import numba
        from diskgnn.threads import start_numba_threads
        start_numba_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    budget = rank_memory_budget(memory_budget, info.local_world_size)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seconds = timeout_s()
    try:
        dist.init_process_group(backend, init_method="env://", rank=info.rank, world_size=info.world_size,
                                timeout=datetime.timedelta(seconds=seconds))
    except RuntimeError as exc:
        raise DistributedError(f"rank {info.rank}: cannot join the process group at {os.environ.get('MASTER_ADDR')}:"
                               f"{os.environ.get('MASTER_PORT')} within {seconds:.0f} s ({str(exc)[:300]}); check "
                               f"that every node can reach MASTER_ADDR and that all {info.world_size} ranks "
                               f"started") from None
    try:
        log.info("rank %d/%d (local %d/%d): %s, %s backend, %d threads, memory budget %.0f MiB", info.rank,
                 info.world_size, info.local_rank, info.local_world_size, device, backend, threads, budget / 2**20)
        samples, dataset, source, data_id, layout = _open_rank_data(path, info, device, budget, features, cfg)
        share = BatchShare(info.rank, info.world_size, layout)
        _check_same_data(data_id, layout, info)
        trainer = DistributedTrainer(samples, dataset, source, cfg, info=info, share=share, device=device,
                                     progress=progress if info.is_main else no_progress, data_id=data_id)
        report = trainer.fit()
        dist.barrier()
        # drop the DDP reducer while the group still exists: destroying it afterwards was seen to hang
        trainer.train_module = None
        del trainer
        gc.collect()
        close = getattr(source, "close", None)
        if close is not None:
            close()
    except Exception as exc:
        if _is_peer_failure(exc):
            raise PeerLostError(f"rank {info.rank} lost contact with the other ranks ({type(exc).__name__}: "
                                f"{str(exc)[:300]}); another rank probably failed or was stopped: see its "
                                f"error") from None
        raise
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # a broken group cannot always be torn down; the process exits anyway
            pass
    if not info.is_main:
        return None
    report["packed"] = str(path)
    return report


# --- the local launcher -----------------------------------------------------------------------------------

def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _watch_parent(parent: int) -> None:
    """Exit when the launcher is gone (so a killed launcher leaves no orphan ranks).

    The kernel's parent-death signal works even when the rank is stuck in C
    code holding the GIL; the polling thread covers systems without prctl.
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before the signal was armed
            os._exit(3)
    except (OSError, AttributeError):
        pass

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)
    threading.Thread(target=watch, name="diskgnn-parent-watch", daemon=True).start()


def _spawned_rank(rank: int, nproc: int, port: int, parent: int, path: str, cfg: TrainConfig, memory_budget,
                  features: str, log_level: int, results) -> None:
    """Body of one child of :func:`launch_local`."""
    _watch_parent(parent)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 <pid> prints where a rank hangs
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(nproc),
                       "GROUP_RANK": "0"})
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    level = log_level if rank == 0 or log_level < logging.INFO else max(log_level, logging.WARNING)
    logging.basicConfig(level=level, format=f"%(levelname)s [rank {rank}] %(name)s: %(message)s", stream=sys.stderr)
    try:
        report = run_rank(path, cfg, memory_budget=memory_budget, features=features)
        if rank == 0:
            results.put(("report", rank, report))
        results.close()
        results.join_thread()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # the report is delivered; skip interpreter teardown (C++ destructors of a finished group)
    except PeerLostError as exc:
        results.put(("error", rank, "peer", str(exc)))
        sys.exit(2)
    except DiskGNNError as exc:
        results.put(("error", rank, "user", str(exc)))
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as exc:  # an unexpected crash: the launcher shows its last frames
        tb = traceback.format_exc(limit=6)
        results.put(("error", rank, "crash", f"{type(exc).__name__}: {exc}\n{tb}"))
        sys.exit(1)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "was still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


def launch_local(path, cfg: TrainConfig, *, memory_budget=None, features: str = "packed",
                 grace_s: float = 5.0) -> dict:
    """Run ``cfg.nproc`` ranks on this machine (spawned processes, gloo/NCCL over loopback); rank 0's report.

    Watches the children: when one fails, the others get ``grace_s`` seconds to
    stop on their own (their next collective fails), then are terminated and
    killed; raises :class:`DistributedError` naming the first cause.
    """
    import multiprocessing as mp
    nproc = cfg.nproc
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    level = logging.getLogger("diskgnn").getEffectiveLevel()
    procs = []
    try:
        for rank in range(nproc):
            p = ctx.Process(target=_spawned_rank, name=f"diskgnn-rank-{rank}",
                            args=(rank, nproc, port, os.getpid(), str(path), cfg, memory_budget, features, level,
                                  results))
            p.start()
            procs.append(p)
            log.info("started rank %d of %d (pid %d)", rank, nproc, p.pid)
        report, errors, failed, released = _monitor(procs, results, grace_s, timeout_s())
    except BaseException:
        _stop(procs, grace_s=1.0)
        raise
    finally:
        results.close()
    codes = [0 if r in released else p.exitcode for r, p in enumerate(procs)]
    if failed or any(c != 0 for c in codes):
        raise DistributedError(_failure_message(procs, codes, errors, failed, cfg))
    if report is None:
        raise DistributedError("rank 0 finished without a report; re-run with -v to see the ranks' logs")
    return report


def _monitor(procs, results, grace_s: float, stuck_s: float, linger_s: float = 10.0):
    """Wait for the ranks; returns (rank 0's report, errors by rank, failed ranks in order seen, ranks stopped
    after the job had finished)."""
    import queue as queue_mod
    report = None
    errors: dict[int, tuple[str, str]] = {}
    failed: list[int] = []          # ranks in the order their failure was seen
    released: set[int] = set()      # stopped after training had finished (stuck in teardown): not a failure
    first_failure = first_exit = report_at = None
    stopped = False

    def drain():
        nonlocal report, report_at
        while True:
            try:
                kind, rank, *rest = results.get_nowait()
            except queue_mod.Empty:
                return
            except (EOFError, OSError):
                return
            if kind == "report":
                report, report_at = rest[0], time.monotonic()
            else:
                errors.setdefault(rank, (rest[0], rest[1]))

    while True:
        drain()
        now = time.monotonic()
        for rank, p in enumerate(procs):
            if p.exitcode is not None:
                first_exit = first_exit or now
                if p.exitcode != 0 and rank not in failed:
                    failed.append(rank)
                    first_failure = first_failure or now
        if all(p.exitcode is not None for p in procs):
            break
        if not stopped and not first_failure and report_at and now - report_at > linger_s:
            # rank 0 reports after the final barrier, so every rank has finished training
            released = {r for r, p in enumerate(procs) if p.exitcode is None}
            log.warning("ranks %s did not exit after training finished; stopping them", sorted(released))
            _stop(procs, grace_s=2.0)
            stopped = True
        if not stopped and ((first_failure and now - first_failure > grace_s) or
                            (first_exit and now - first_exit > stuck_s)):
            stuck = [r for r, p in enumerate(procs) if p.exitcode is None]
            log.warning("stopping ranks %s", stuck)
            if not first_failure:
                failed.extend(stuck)  # finished ranks wait no longer than the collective timeout for the rest
            _stop(procs, grace_s=2.0)
            stopped = True
        time.sleep(0.05)
    time.sleep(0.05)
    drain()
    return report, errors, [r for r in failed if r not in released], released


def _stop(procs, grace_s: float) -> None:
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.exitcode is None:
            p.kill()
            p.join(5.0)


def _failure_message(procs, codes, errors, failed, cfg: TrainConfig) -> str:
    bad = [r for r in range(len(procs)) if codes[r] != 0] or failed
    # the cause: the first rank that reported its own error or was killed, before ranks that exited without a
    # word, before ranks that only noticed that a peer died
    def rank_of_evidence(r: int) -> int:
        kind = errors.get(r, ("", ""))[0]
        if kind in ("user", "crash") or (codes[r] is not None and codes[r] < 0):
            return 0
        return 2 if kind == "peer" else 1
    candidates = failed or bad
    cause = min(candidates, key=lambda r: (rank_of_evidence(r), candidates.index(r)))
    what = f"rank {cause} of {len(procs)} (pid {procs[cause].pid}) {_describe_exit(codes[cause])}"
    if cause in errors:
        what += f": {errors[cause][1].strip()}"
    others = [r for r in bad if r != cause]
    tail = ""
    if others:
        tail = f" The other ranks were stopped ({', '.join(f'rank {r} {_describe_exit(codes[r])}' for r in others)})."
    if errors.get(cause, ("", ""))[0] == "user":
        fix = ""  # the rank's own message says what to change
    else:
        fix = (" Re-run with --resume to continue from the last finished epoch." if cfg.checkpoint
               else " Pass --checkpoint DIR to be able to resume after a failure.")
    return f"data-parallel training failed: {what}.{tail}{fix}"


# --- entry point -----------------------------------------------------------------------------------------

def train_distributed(packed, cfg: TrainConfig, *, progress: ProgressFn = no_progress, memory_budget=None,
                      features: str = "packed") -> dict | None:
    """``diskgnn train`` with several processes: join the job (under torchrun) or launch ``--nproc`` ranks here.

    ``packed`` is a packed directory, a shard set of them, or an opened
    :class:`~diskgnn.store.Packed`. Returns rank 0's report (None on other ranks).
    """
    path = getattr(packed, "path", packed)
    if rank_info_from_env() is not None:
        return run_rank(path, cfg, progress=progress, memory_budget=memory_budget, features=features)
    return launch_local(path, cfg, memory_budget=memory_budget, features=features)
