"""The offline sampler (stage 2): presampled minibatch blocks, stored for the packer and trainer.

A samples directory holds, for every *part* (``train/0`` .. ``train/K-1``,
``val``, ``test``), four raw little-endian arrays (file prefix ``train-0``,
``val``, ``test``):

* ``<p>.input_nodes.bin``   int64  all batches' input node ids back to back
* ``<p>.block_indptr.bin``  int64  every batch's block offset arrays back to back
  (outermost block first; each block's offsets start at 0)
* ``<p>.block_indices.bin`` int32  every batch's blocks' local source ids back to back
* ``<p>.index.bin``         int64  [nb+1, 3+L+1]: row b = where batch b starts in the
  three files above, then its layer sizes (``blocks[i].num_src`` for i < L, then the
  batch size); the last row holds the totals (layer sizes 0)

plus ``access_counts.bin`` (int64 [N], how often each node is an input node over all
stored batches) and ``manifest.json`` (format ``diskgnn.samples`` version 1, written
last) with the config, the dataset's path and fingerprint, per-file crc32, sizes and
throughput.

A link-prediction samples directory (``config.task == "link"``, see
:mod:`diskgnn.link`) also holds per part

* ``<p>.pairs.bin``         int32  [rows, 2+k] every batch's positives back to back: seed
  positions of (source, destination, k negative or candidate destinations)
* ``<p>.pair_offsets.bin``  int64  [nb+1]  where batch b's rows start in ``pairs``

and its seeds are the distinct endpoints of the batch's pairs; the four files
above are unchanged (so packing and the store see an ordinary batch).

Training parts shuffle the training nodes per epoch (seeded); ``val`` and ``test`` are
one pass in node-id order. Sampling is uniform without replacement per layer, with
DGL's fanout order (``fanouts[-1]`` for the seeds' layer); each draw depends only on
``(seed, part, batch index, layer, node)``, so output is identical whatever the
number of threads, and shard ``I`` of ``S`` holds exactly the batches ``i % S == I``
of the unsharded output.
"""
from __future__ import annotations

import itertools
import json
import logging
import queue
import shutil
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from diskgnn.dataset import ArraySpec, Dataset, check_topology, open_array
from diskgnn.errors import (ConfigError, DiskGNNError, IntegrityError, MismatchError)
from diskgnn.io import pread_elements
from diskgnn.keys import EVAL_PARTS, batch_key, part_code
from diskgnn.manifest import (abort_output_dir, Crc32Writer, check_free_space, expect_output_bytes,
                              finish_output_dir, prepare_output_dir,
                              read_manifest, write_json_atomic, write_manifest)
from diskgnn.memory import resolve_memory_budget
from diskgnn.progress import ProgressFn, no_progress

log = logging.getLogger(__name__)

FORMAT = "diskgnn.samples"
VERSION = 1
_INDEX_FIXED = 3  # input offset, block_indptr offset, block_indices offset
_WRITE_QUEUE_DEPTH = 4


# --- values that cross the stage boundary ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Block:
    """One message-passing layer as CSR over its destination nodes.

    Destination nodes are source nodes ``0 .. num_dst-1`` (a prefix), so a
    layer's output for node j is row j of its input.
    """
    indptr: np.ndarray
    """int64 [num_dst + 1], starts at 0; sources of destination j are ``indices[indptr[j]:indptr[j+1]]``."""
    indices: np.ndarray
    """int32 [nnz], local source ids in ``0 .. num_src-1``."""
    num_src: int
    """Number of source nodes (rows of the layer's input)."""
    num_dst: int
    """Number of destination nodes (rows of the layer's output); ``num_dst <= num_src``."""

    @property
    def num_edges(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True, slots=True)
class MiniBatch:
    """One presampled minibatch.

    ``input_nodes[:blocks[i].num_src]`` are layer i's source nodes (nested
    prefixes) and ``input_nodes[:B] == seeds``.
    """
    part: str
    """``train/0`` .. ``train/K-1``, ``val`` or ``test``."""
    index: int
    """Batch number inside the part as stored (equal to the global number unless sharded)."""
    seeds: np.ndarray
    """int64 [B] global ids of the nodes whose outputs are trained/evaluated."""
    input_nodes: np.ndarray | None
    """int64 [n_in] distinct global ids; ``blocks[0].num_src == n_in`` (None when read without them, see
    :meth:`Samples.batch`)."""
    blocks: tuple[Block, ...]
    """Outermost (input side) first; ``blocks[-1].num_dst == B``, ``blocks[i].num_dst == blocks[i+1].num_src``."""
    pairs: np.ndarray | None = None
    """Link prediction only: int32 [P, 2 + k], row i the seed positions of positive i's source, destination and
    its k negative (training) or candidate (evaluation) destinations; None for node classification."""

    @property
    def batch_size(self) -> int:
        return int(self.seeds.shape[0])

    @property
    def num_pairs(self) -> int:
        """Positive edges of a link batch (0 for node classification)."""
        return 0 if self.pairs is None else int(self.pairs.shape[0])

    @property
    def num_edges(self) -> int:
        return sum(b.num_edges for b in self.blocks)


@dataclass(frozen=True, slots=True)
class SampleConfig:
    """What to presample; saved into the samples manifest."""
    fanouts: tuple[int, ...]
    """Neighbours per layer, input side first (DGL order); -1 takes all neighbours."""
    batch_size: int
    """Seeds per minibatch (the last batch of a part may be smaller)."""
    epochs: int = 1
    """Presampled training epochs K, each with its own shuffle of the training nodes."""
    seed: int = 0
    """Seed of the shuffles and of every neighbour draw."""
    task: str = "node"
    """``node`` (node classification: batches of seed nodes) or ``link`` (link prediction: batches of
    positive edges with negatives; see :mod:`diskgnn.link`)."""
    negatives: int | None = None
    """link: negative destinations per positive training edge (None: 1)."""
    negative_sampler: str | None = None
    """link: how negatives are drawn: ``uniform`` over nodes or ``degree`` (probability ~ degree^0.75);
    None: uniform."""
    eval_batch_size: int | None = None
    """link: held-out edges per evaluation batch (None: about a training batch's endpoints)."""
    eval_fanouts: tuple[int, ...] | None = None
    """Neighbours per layer of the ``val`` and ``test`` batches (same order and rules; -1 = all), one per
    layer of ``fanouts`` (the model has that many layers); None = ``fanouts``."""

    def __post_init__(self):
        object.__setattr__(self, "fanouts", _checked_fanouts(self.fanouts, "fanouts"))
        if self.eval_fanouts is not None:
            eval_fanouts = _checked_fanouts(self.eval_fanouts, "eval_fanouts")
            if len(eval_fanouts) != len(self.fanouts):
                n, k = len(eval_fanouts), len(self.fanouts)
                raise ConfigError(
                    f"--eval-fanouts {','.join(map(str, eval_fanouts))} has {n} layer{'s' * (n != 1)}, but --fanouts "
                    f"{','.join(map(str, self.fanouts))} has {k}: the model gets one layer per training fanout and "
                    f"is evaluated with the same layers, so give one eval fanout per layer (e.g. --eval-fanouts "
                    f"{','.join(['-1'] * k)} for all neighbours), or leave --eval-fanouts out to evaluate with the "
                    f"training fanouts")
            object.__setattr__(self, "eval_fanouts", None if eval_fanouts == self.fanouts else eval_fanouts)
            if self.task == "link" and self.eval_fanouts is not None:
                raise ConfigError("--eval-fanouts applies to node classification; link prediction samples its "
                                  "validation and test edges' neighbourhoods with --fanouts")
        for name, low in (("batch_size", 1), ("epochs", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.seed >= 2**63:
            raise ConfigError(f"seed must be below 2**63, got {self.seed}")
        self._check_task()

    def _check_task(self) -> None:
        from diskgnn.link import NEGATIVE_SAMPLERS
        if self.task not in ("node", "link"):
            raise ConfigError(f"--task must be node or link, got {self.task!r}")
        if self.task == "node":
            for name in ("negatives", "negative_sampler", "eval_batch_size"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"--{name.replace('_', '-')} applies to link prediction only; add --task link "
                                      f"(or leave it out for node classification)")
            return
        negatives = 1 if self.negatives is None else self.negatives
        if isinstance(negatives, bool) or not isinstance(negatives, (int, np.integer)) or negatives < 1:
            raise ConfigError(f"--negatives must be an integer >= 1 (negative destinations drawn per positive edge; "
                              f"link prediction needs negatives to learn from), got {self.negatives!r}")
        object.__setattr__(self, "negatives", int(negatives))
        sampler = "uniform" if self.negative_sampler is None else self.negative_sampler
        if sampler not in NEGATIVE_SAMPLERS:
            raise ConfigError(f"--negative-sampler must be one of {', '.join(NEGATIVE_SAMPLERS)}, got {sampler!r}")
        object.__setattr__(self, "negative_sampler", sampler)
        ebs = self.eval_batch_size
        if ebs is not None:
            if isinstance(ebs, bool) or not isinstance(ebs, (int, np.integer)) or ebs < 1:
                raise ConfigError(f"--eval-batch-size must be an integer >= 1 (held-out edges per batch), got {ebs!r}")
            object.__setattr__(self, "eval_batch_size", int(ebs))

    @property
    def is_link(self) -> bool:
        return self.task == "link"

    @property
    def num_layers(self) -> int:
        return len(self.fanouts)

    def part_fanouts(self, part: str) -> tuple[int, ...]:
        """The fanouts ``part`` is sampled with: ``eval_fanouts`` for val and test (when given), else ``fanouts``."""
        return self.eval_fanouts if part in EVAL_PARTS and self.eval_fanouts is not None else self.fanouts

    @classmethod
    def from_cli(cls, args) -> "SampleConfig":
        """Build from parsed CLI args: ``fanouts`` ("10,15"), ``eval_fanouts``, ``batch_size``, ``sample_epochs``,
        ``seed``."""
        epochs = getattr(args, "sample_epochs", None)
        eval_fanouts = getattr(args, "eval_fanouts", None)
        return cls(fanouts=parse_fanouts(args.fanouts), batch_size=args.batch_size,
                   epochs=1 if epochs is None else epochs, seed=getattr(args, "seed", 0) or 0,
                   task=getattr(args, "task", None) or "node", negatives=getattr(args, "negatives", None),
                   negative_sampler=getattr(args, "negative_sampler", None),
                   eval_batch_size=getattr(args, "eval_batch_size", None),
                   eval_fanouts=None if eval_fanouts is None else parse_fanouts(eval_fanouts, "--eval-fanouts"))

    def to_json(self) -> dict:
        out = {"fanouts": list(self.fanouts), "batch_size": self.batch_size, "epochs": self.epochs,
               "seed": self.seed}
        if self.is_link:  # node classification keeps the keys it always had (fingerprints stay the same)
            out.update(task=self.task, negatives=self.negatives, negative_sampler=self.negative_sampler,
                       eval_batch_size=self.eval_batch_size)
        if self.eval_fanouts is not None:  # absent otherwise: a config without it reads as before
            out["eval_fanouts"] = list(self.eval_fanouts)
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "SampleConfig":
        eval_fanouts = obj.get("eval_fanouts")
        return cls(fanouts=tuple(obj["fanouts"]), batch_size=obj["batch_size"], epochs=obj["epochs"],
                   seed=obj["seed"], task=obj.get("task", "node"), negatives=obj.get("negatives"),
                   negative_sampler=obj.get("negative_sampler"), eval_batch_size=obj.get("eval_batch_size"),
                   eval_fanouts=None if eval_fanouts is None else tuple(eval_fanouts))


def _checked_fanouts(fanouts, name: str) -> tuple[int, ...]:
    """``fanouts`` as a tuple of ints, each positive or -1; ConfigError naming ``name`` otherwise."""
    flag = "--" + name.replace("_", "-")
    original = fanouts
    if isinstance(fanouts, (int, np.integer)):
        fanouts = (fanouts,)
    try:
        fanouts = tuple(fanouts)
    except TypeError:
        raise ConfigError(f"{name} must be a list of integers such as 10,15, got {original!r}") from None
    if not fanouts:
        raise ConfigError(f"{name} is empty; give one fanout per layer, e.g. {flag} 10,15")
    for f in fanouts:
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
            raise ConfigError(f"{name} must be integers, got {f!r} in {fanouts!r}")
        if f == 0 or f < -1:
            raise ConfigError(f"fanout {int(f)} in {list(map(int, fanouts))} is invalid; each layer's fanout "
                              f"must be a positive count of neighbours or -1 for all neighbours")
    return tuple(int(f) for f in fanouts)


def parse_fanouts(text, flag: str = "--fanouts") -> tuple[int, ...]:
    """Parse ``"10,15"`` (or a sequence of ints) into a fanout tuple; validation is SampleConfig's."""
    if isinstance(text, (list, tuple)):
        return tuple(text)
    items = [s.strip() for s in str(text).split(",")]
    if items == [""]:
        raise ConfigError(f"{flag} is empty; give one fanout per layer, e.g. {flag} 10,15")
    try:
        return tuple(int(s) for s in items)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a comma-separated list of integers; "
                          f"use e.g. {flag} 10,15 (-1 = all neighbours)") from None


# --- parts, seeds and keys ----------------------------------------------------------------------

def part_names(epochs: int) -> list[str]:
    """All part names of a samples directory with ``epochs`` training epochs."""
    return [f"train/{e}" for e in range(epochs)] + list(EVAL_PARTS)


def _part_file_prefix(part: str) -> str:
    return part.replace("/", "-")


def _check_part(part: str, epochs: int) -> None:
    if part not in part_names(epochs):
        raise ConfigError(f"unknown part {part!r}; choose train/0 .. train/{epochs - 1}, val or test")


def part_seeds(dataset: Dataset, cfg: SampleConfig, part: str) -> np.ndarray:
    """The seed order of ``part``: a seeded shuffle of the training nodes per epoch; eval nodes sorted by id."""
    _check_part(part, cfg.epochs)
    if part.startswith("train/"):
        train = np.asarray(dataset.split("train"), dtype=np.int64)
        rng = np.random.default_rng([cfg.seed, 0x5A3D1E, part_code(part)])
        return train[rng.permutation(train.shape[0])]
    return np.sort(np.asarray(dataset.split(part), dtype=np.int64))


def part_num_items(dataset: Dataset, cfg: SampleConfig, part: str) -> int:
    """What ``part``'s batches cover: seed nodes (node classification) or positive edges (link prediction)."""
    _check_part(part, cfg.epochs)
    if cfg.is_link:
        name = "train_pos" if part.startswith("train/") else f"{part}_pos"
        return int(dataset.link_array(name).shape[0])
    return int(dataset.split("train" if part.startswith("train/") else part).shape[0])


def part_batch_size(dataset: Dataset, cfg: SampleConfig, part: str) -> int:
    """Items per batch of ``part`` (link evaluation parts: :func:`diskgnn.link.eval_batch_size`)."""
    if cfg.is_link and not part.startswith("train/"):
        from diskgnn.link import eval_batch_size
        return eval_batch_size(cfg, dataset)
    return cfg.batch_size


def num_batches_of(num_seeds: int, batch_size: int, num_shards: int = 1, shard: int = 0) -> int:
    """Batches of a part with ``num_seeds`` seeds that shard ``shard`` of ``num_shards`` holds."""
    total = -(-num_seeds // batch_size)
    return max(0, -(-(total - shard) // num_shards))


def _pair_width(ds: Dataset, cfg: SampleConfig, part: str) -> int:
    """Columns of a link part's pairs: source, destination and the negatives (train) or candidates (val, test)."""
    if not cfg.is_link:
        return 0
    if part.startswith("train/"):
        return 2 + cfg.negatives
    from diskgnn.link import eval_candidates
    return 2 + eval_candidates(ds, part)


def _check_shards(num_shards: int, shard: int) -> None:
    if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)) or num_shards < 1:
        raise ConfigError(f"--num-shards must be an integer >= 1, got {num_shards!r}")
    if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)) or not 0 <= shard < num_shards:
        raise ConfigError(f"--shard must lie in 0 .. {num_shards - 1} (for --num-shards {num_shards}), got {shard!r}")


# --- topology and the sampler -------------------------------------------------------------------

def _as_dataset(dataset) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    return Dataset.open(dataset)


def topology_bytes(dataset: Dataset) -> int:
    return dataset.specs["indptr"].nbytes + dataset.specs["indices"].nbytes


def resolve_mmap_topology(dataset: Dataset, mmap_topology: str | bool = "auto", memory_budget=None) -> bool:
    """Whether to read the CSR through its memory map: 'yes', 'no', or 'auto' (when it needs more than half the budget)."""
    budget = resolve_memory_budget(memory_budget)  # checked whatever the choice: a bad --memory-budget is an error
    if mmap_topology in (True, "yes"):
        return True
    if mmap_topology in (False, "no"):
        return False
    if mmap_topology != "auto":
        raise ConfigError(f"--mmap-topology must be auto, yes or no, got {mmap_topology!r}")
    return topology_bytes(dataset) > budget // 2


GROUP_SHARE = 0.7
"""Share of the memory left beside the sampler's own arrays that a group of batches sampled from disk may take
(the rest: batches queued for writing, the page cache of the files written)."""


class Sampler:
    """Samples minibatches from one dataset's in-edge CSR (loaded, or memory-mapped from disk).

    With the CSR on disk, :meth:`raw_batches` samples many batches at once, layer by layer,
    reading the neighbour lists in file order (:mod:`diskgnn.disk_sampling`); the output is the
    same. Link batches (:class:`diskgnn.link.LinkSampler`) are sampled one at a time through
    ``indptr``/``indices``, the memory map when the CSR is on disk. Not thread-safe: one sampler
    per thread (it reuses a node -> local id map of size N).
    """

    def __init__(self, dataset, fanouts, *, mmap_topology: str | bool = "auto", memory_budget=None):
        self.dataset = _as_dataset(dataset)
        self.fanouts = np.asarray(SampleConfig(fanouts=fanouts, batch_size=1).fanouts, dtype=np.int64)
        self.mmapped = resolve_mmap_topology(self.dataset, mmap_topology, memory_budget)
        self.memory_budget = resolve_memory_budget(memory_budget)
        self.disk_stats: dict | None = None
        """With the CSR on disk: what the last :meth:`raw_batches` read (bytes, runs, windows, groups)."""
        if self.mmapped:
            self.indptr = np.asarray(self.dataset.indptr)
            self.indices = np.asarray(self.dataset.indices)
            _advise_random(self.dataset.indices)
        else:
            self.indptr, self.indices = self.dataset.load_topology()
        # the kernels trust every offset and id; a mapped CSR is checked from its files, in one pass
        check_topology(self.dataset, *(() if self.mmapped else (self.indptr, self.indices)))
        self.num_nodes = self.dataset.num_nodes
        self._node_map = np.full(self.num_nodes, -1, dtype=np.int32)
        self._mark: np.ndarray | None = None

    def sample(self, seeds, key, *, part: str = "", index: int = 0, check: bool = True) -> MiniBatch:
        """Sample the blocks around ``seeds`` (distinct node ids) with random key ``key``."""
        from diskgnn.kernels.sampling import sample_blocks
        seeds = np.ascontiguousarray(seeds, dtype=np.int64)
        if check:
            self.check_seeds(seeds)
        input_nodes, layer_sizes, block_indptr, block_indices = sample_blocks(
            self.indptr, self.indices, seeds, self.fanouts, np.uint64(key), self._node_map)
        return _make_batch(part, index, input_nodes, layer_sizes, block_indptr, block_indices)

    def raw_batches(self, jobs) -> Iterator[tuple]:
        """``sample_blocks``' raw output ``(input_nodes, layer_sizes, block_indptr, block_indices)`` of each job
        ``(seeds, batch key[, fanouts])`` (seeds checked by the caller; fanouts int64, the sampler's when not
        given), in order: batch by batch with the CSR in memory, in groups of batches as large as the memory
        budget allows with the CSR on disk (a group's batches share their fanouts)."""
        from diskgnn.kernels.sampling import sample_blocks
        if not self.mmapped:
            for job in jobs:
                fanouts = job[2] if len(job) > 2 else self.fanouts
                yield sample_blocks(self.indptr, self.indices, job[0], fanouts, np.uint64(job[1]), self._node_map)
            return
        from diskgnn.disk_sampling import DiskCSR, sample_on_disk
        from diskgnn.memory import process_anon_bytes
        stats = self.disk_stats = {"groups": 0, "largest_group": 0, "group_bytes": 0}

        def on_group(batches: int, used: int) -> None:
            stats["groups"] += 1
            stats["largest_group"] = max(stats["largest_group"], batches)
            stats["peak_group_bytes"] = max(stats.get("peak_group_bytes", 0), int(used))
            log.debug("sampled a group of %d batches from disk (%s)", batches, used)

        with DiskCSR(self.dataset) as csr:
            room = self.memory_budget - process_anon_bytes() - csr.memory_bytes
            stats["group_bytes"] = group_bytes = max(int(room * GROUP_SHARE), 16 << 20)
            avg_degree = self.dataset.num_edges / max(self.num_nodes, 1)
            try:
                yield from sample_on_disk(csr, jobs, self.fanouts, self._node_map, group_bytes,
                                          avg_degree=avg_degree, on_group=on_group)
            finally:
                stats.update(csr.stats.to_json())

    def check_seeds(self, seeds: np.ndarray) -> None:
        if seeds.ndim != 1 or seeds.shape[0] == 0:
            raise ConfigError(f"seeds must be a non-empty 1-d array of node ids, got shape {seeds.shape}")
        lo, hi = int(seeds.min()), int(seeds.max())
        if lo < 0 or hi >= self.num_nodes:
            bad = lo if lo < 0 else hi
            raise ConfigError(f"seed node {bad} is out of range: {self.dataset.path} has nodes 0 .. "
                              f"{self.num_nodes - 1}")
        from diskgnn.kernels.sampling import first_repeat
        if self._mark is None:
            self._mark = np.zeros(self.num_nodes, dtype=np.uint8)
        rep = first_repeat(seeds, self._mark)  # restores the marks
        if rep >= 0:
            raise ConfigError(f"seed node {int(seeds[rep])} appears twice in one batch; seeds must be distinct")

    def __repr__(self) -> str:
        return (f"Sampler({str(self.dataset.path)!r}, fanouts={self.fanouts.tolist()}, "
                f"topology={'mmap' if self.mmapped else 'in-memory'})")


def _advise_random(array) -> None:
    # The CSR is read at random; readahead would only evict useful pages under a memory cap.
    import mmap
    mm = getattr(array, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        try:
            mm.madvise(mmap.MADV_RANDOM)
        except (OSError, ValueError):
            pass


def _make_batch(part, index, input_nodes, layer_sizes, block_indptr, block_indices, pairs=None, *,
                seeds_only: bool = False) -> MiniBatch:
    """``seeds_only``: ``input_nodes`` holds only the seeds (the MiniBatch's ``input_nodes`` is None)."""
    num_layers = layer_sizes.shape[0] - 1
    blocks = []
    p = q = 0
    for i in range(num_layers):
        num_src, num_dst = int(layer_sizes[i]), int(layer_sizes[i + 1])
        indptr = block_indptr[p:p + num_dst + 1]
        nnz = int(indptr[-1])
        blocks.append(Block(indptr=indptr, indices=block_indices[q:q + nnz], num_src=num_src, num_dst=num_dst))
        p += num_dst + 1
        q += nnz
    batch = int(layer_sizes[num_layers])
    return MiniBatch(part=part, index=int(index), seeds=input_nodes[:batch],
                     input_nodes=None if seeds_only else input_nodes, blocks=tuple(blocks), pairs=pairs)


def iter_batches(dataset, cfg: SampleConfig, part: str, *, sampler: Sampler | None = None,
                 mmap_topology: str | bool = "auto", memory_budget=None, num_shards: int = 1,
                 shard: int = 0) -> Iterator[MiniBatch]:
    """Yield the minibatches of ``part`` lazily, exactly as :func:`presample` stores them.

    ``MiniBatch.index`` is the position among the batches of this shard.
    """
    ds = _as_dataset(dataset)
    _check_part(part, cfg.epochs)
    _check_shards(num_shards, shard)
    if sampler is None:
        sampler = Sampler(ds, cfg.fanouts, mmap_topology=mmap_topology, memory_budget=memory_budget)
    elif tuple(sampler.fanouts.tolist()) != cfg.fanouts:
        raise ConfigError(f"the sampler was made for fanouts {sampler.fanouts.tolist()}, "
                          f"the config asks for {list(cfg.fanouts)}")
    if cfg.is_link:
        from diskgnn.link import LinkSampler
        sampler = LinkSampler(sampler, cfg, ds)
    for local, arrays in enumerate(_iter_raw(ds, cfg, part, sampler, num_shards, shard)):
        yield _make_batch(part, local, *arrays)


def _iter_raw(ds: Dataset, cfg: SampleConfig, part: str, sampler, num_shards: int, shard: int):
    """The kernel's raw output ``(input_nodes, layer_sizes, block_indptr, block_indices[, pairs])`` per batch of
    the shard (``pairs`` for link prediction, where ``sampler`` is a :class:`diskgnn.link.LinkSampler`)."""
    return _raw_stream(ds, cfg, [part], sampler, num_shards, shard)


def _raw_stream(ds: Dataset, cfg: SampleConfig, parts, sampler, num_shards: int, shard: int):
    """:func:`_iter_raw` of every part of ``parts``, one stream in order: node classification goes through
    :meth:`Sampler.raw_batches` (on disk, groups of batches span parts), link prediction part by part
    through :func:`diskgnn.link.iter_link_raw`."""
    if cfg.is_link:
        from diskgnn.link import iter_link_raw
        for part in parts:
            yield from iter_link_raw(ds, cfg, part, sampler, num_shards, shard)
        return
    yield from sampler.raw_batches(_jobs(ds, cfg, parts, sampler, num_shards, shard))


def _jobs(ds: Dataset, cfg: SampleConfig, parts, sampler: Sampler, num_shards: int, shard: int):
    """``(seeds, batch key, fanouts)`` of every batch of the shard in ``parts``, in order (seeds checked once per
    part; fanouts the part's: val and test may be sampled with ``eval_fanouts``)."""
    for part in parts:
        seeds = part_seeds(ds, cfg, part)
        if seeds.size:
            sampler.check_seeds(seeds)  # once per part, so each batch can skip it
        fanouts = np.asarray(cfg.part_fanouts(part), dtype=np.int64)
        total = -(-seeds.shape[0] // cfg.batch_size)
        for i in range(shard, total, num_shards):
            yield seeds[i * cfg.batch_size:(i + 1) * cfg.batch_size], batch_key(cfg.seed, part, i), fanouts


# --- writing ------------------------------------------------------------------------------------

class _PartWriter:
    """Streams one part's batches into its four files."""

    def __init__(self, out: Path, part: str, num_layers: int, pair_width: int = 0):
        self.part = part
        self.prefix = _part_file_prefix(part)
        self.num_layers = num_layers
        self.pair_width = pair_width
        """Columns of a link batch's pairs (0: node classification, no pairs)."""
        names = ("input_nodes", "block_indptr", "block_indices") + (("pairs",) if pair_width else ())
        self.writers = {name: Crc32Writer(out / f"{self.prefix}.{name}.bin") for name in names}
        self.pair_rows = [0]
        self.rows: list[list[int]] = []
        self.offsets = [0, 0, 0]
        self.num_edges = 0
        self.num_seeds = 0

    def add(self, input_nodes, layer_sizes, block_indptr, block_indices, pairs=None) -> None:
        if self.pair_width:
            if pairs is None or pairs.ndim != 2 or pairs.shape[1] != self.pair_width:
                raise IntegrityError(f"part {self.part}: a link batch's pairs must be [P, {self.pair_width}], got "
                                     f"{None if pairs is None else list(pairs.shape)}")
            self.writers["pairs"].write(np.ascontiguousarray(pairs, dtype="<i4"))
            self.pair_rows.append(self.pair_rows[-1] + int(pairs.shape[0]))
        self.rows.append(self.offsets + [int(s) for s in layer_sizes])
        self.writers["input_nodes"].write(np.ascontiguousarray(input_nodes, dtype="<i8"))
        self.writers["block_indptr"].write(np.ascontiguousarray(block_indptr, dtype="<i8"))
        self.writers["block_indices"].write(np.ascontiguousarray(block_indices, dtype="<i4"))
        self.offsets = [self.offsets[0] + input_nodes.shape[0], self.offsets[1] + block_indptr.shape[0],
                        self.offsets[2] + block_indices.shape[0]]
        self.num_edges += int(block_indices.shape[0])
        self.num_seeds += int(layer_sizes[-1])

    def close(self, out: Path) -> dict:
        specs = {}
        for name, dtype, count in (("input_nodes", "<i8", self.offsets[0]), ("block_indptr", "<i8", self.offsets[1]),
                                   ("block_indices", "<i4", self.offsets[2])):
            info = self.writers[name].close()
            specs[name] = ArraySpec(path=f"{self.prefix}.{name}.bin", dtype=dtype, shape=(count,), crc32=info["crc32"])
        extra = {}
        if self.pair_width:
            info = self.writers["pairs"].close()
            specs["pairs"] = ArraySpec(path=f"{self.prefix}.pairs.bin", dtype="<i4",
                                       shape=(self.pair_rows[-1], self.pair_width), crc32=info["crc32"])
            w = Crc32Writer(out / f"{self.prefix}.pair_offsets.bin")
            w.write(np.asarray(self.pair_rows, dtype="<i8"))
            info = w.close()
            specs["pair_offsets"] = ArraySpec(path=f"{self.prefix}.pair_offsets.bin", dtype="<i8",
                                              shape=(len(self.pair_rows),), crc32=info["crc32"])
            extra = {"pair_width": self.pair_width, "num_pairs": self.pair_rows[-1]}
        index = np.zeros((len(self.rows) + 1, _INDEX_FIXED + self.num_layers + 1), dtype="<i8")
        if self.rows:
            index[:-1] = np.asarray(self.rows, dtype=np.int64)
        index[-1, :_INDEX_FIXED] = self.offsets
        w = Crc32Writer(out / f"{self.prefix}.index.bin")
        w.write(index)
        info = w.close()
        specs["index"] = ArraySpec(path=f"{self.prefix}.index.bin", dtype="<i8", shape=index.shape, crc32=info["crc32"])
        return {"num_batches": len(self.rows), "num_seeds": self.num_seeds, "num_edges": self.num_edges,
                "num_input_nodes": self.offsets[0], **extra, "files": {n: s.to_json() for n, s in specs.items()}}

    def abort(self) -> None:
        for w in self.writers.values():
            w.__exit__(None, None, None)


def _close_part(pw: _PartWriter, out: Path, parts: dict, journal: dict | None = None) -> None:
    parts[pw.part] = pw.close(out)
    if journal is not None:  # the part is on disk: a killed run can resume after it
        journal["parts"][pw.part] = parts[pw.part]
        write_json_atomic(out / RESUME_JOURNAL, journal)


RESUME_JOURNAL = "resume.json"


def _resume_key(ds: Dataset, cfg: SampleConfig, num_shards: int, shard: int) -> dict:
    return {"format": FORMAT, "version": VERSION, "config": cfg.to_json(), "dataset": ds.fingerprint,
            "num_nodes": ds.num_nodes, "shard": [num_shards, shard]}


def _finished_parts(out: Path, key: dict) -> dict:
    """Parts that an interrupted run of the same command finished (files checked), or {} to start afresh.

    Only an unfinished directory (marked partial, no manifest) whose journal was
    written for the same dataset, config and shard is resumed; every file of a
    finished part must still have its recorded size and crc32.
    """
    from diskgnn.manifest import MANIFEST_NAME, file_crc32
    journal_path = out / RESUME_JOURNAL
    if not (out / ".diskgnn-partial").exists() or (out / MANIFEST_NAME).exists() or not journal_path.exists():
        return {}
    try:
        journal = json.loads(journal_path.read_text())
        if journal.get("key") != key:
            return {}
        done = {}
        for part, rec in journal["parts"].items():
            for spec in rec["files"].values():
                path = out / spec["path"]
                if not path.is_file() or path.stat().st_size != spec["bytes"] or file_crc32(path) != spec["crc32"]:
                    return {}
            done[part] = rec
        return done
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _prepare_resumable(out: Path, key: dict, overwrite: bool) -> tuple[Path, dict]:
    """Clear ``out`` for a new run, keeping the finished parts of an interrupted run of the same command."""
    done = {} if overwrite else _finished_parts(out, key)
    if not done:
        return prepare_output_dir(out, overwrite=overwrite), {}
    keep = {".diskgnn-partial", RESUME_JOURNAL} | {f["path"] for rec in done.values() for f in rec["files"].values()}
    for entry in out.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    log.info("resuming %s: %d finished parts kept (%s)", out, len(done), ", ".join(done))
    return out, done


class _BackgroundWriter:
    """Runs writes on one thread behind a bounded queue, so disk writes overlap sampling."""

    def __init__(self, depth: int = _WRITE_QUEUE_DEPTH):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="diskgnn-sample-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            fn, args = item
            try:
                fn(*args)
            except BaseException as exc:  # handed to the caller in submit/close
                self._error = exc

    def submit(self, fn, *args) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((fn, args))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _set_threads(threads):
    import numba
    from diskgnn.threads import start_numba_threads
    start_numba_threads()
    previous = numba.get_num_threads()
    if threads is None:
        return previous, previous
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ConfigError(f"--threads must be a positive integer, got {threads!r}")
    if threads > limit:
        log.warning("--threads %d is more than the %d threads numba may use here; using %d", threads, limit, limit)
        threads = limit
    numba.set_num_threads(int(threads))
    return previous, int(threads)


def presample(dataset_dir, out, cfg: SampleConfig, *, overwrite: bool = False, progress: ProgressFn = no_progress,
              mmap_topology: str | bool = "auto", memory_budget=None, threads: int | None = None,
              num_shards: int = 1, shard: int = 0) -> "Samples":
    """Presample ``cfg.epochs`` training epochs plus one pass over val and test into the directory ``out``.

    Batches stream to disk as they are sampled (memory stays at the topology plus a
    few batches); the manifest is written last, so an interrupted run leaves no
    complete-looking directory.
    """
    import numba
    t_start = time.perf_counter()
    if not isinstance(cfg, SampleConfig):
        raise ConfigError(f"cfg must be a SampleConfig, got {type(cfg).__name__}")
    _check_shards(num_shards, shard)
    ds = _as_dataset(dataset_dir)
    out = Path(out)
    if out.resolve() == ds.path.resolve() or ds.path.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out} lies inside the dataset directory {ds.path}; choose another directory")
    if cfg.is_link:
        from diskgnn.link import check_link_dataset
        check_link_dataset(ds)
    elif ds.has_link and ds.split("train").shape[0] == 0:
        raise ConfigError(f"{ds.path} is a link-prediction dataset without training nodes (no labels); sample it "
                          f"with --task link, or give labels and train_idx for node classification")
    previous_threads, used_threads = _set_threads(threads)
    try:
        t0 = time.perf_counter()
        sampler = Sampler(ds, cfg.fanouts, mmap_topology=mmap_topology, memory_budget=memory_budget)
        if cfg.is_link:
            from diskgnn.link import LinkSampler
            if sampler.mmapped:
                log.info("link batches are sampled one at a time through the CSR's memory map (the grouped "
                         "on-disk sampler serves node classification)")
            sampler = LinkSampler(sampler, cfg, ds)
        load_seconds = time.perf_counter() - t0
        log.info("%r loaded in %.2f s", sampler, load_seconds)
        key = _resume_key(ds, cfg, num_shards, shard)
        out, done = _prepare_resumable(out, key, overwrite)
        try:
            manifest = _presample_into(ds, out, cfg, sampler, progress, num_shards, shard,
                                       journal={"key": key, "parts": dict(done)})
            seconds = time.perf_counter() - t_start
            stats = manifest["stats"]
            base = getattr(sampler, "sampler", sampler)  # a LinkSampler wraps the Sampler
            stats.update({"seconds": round(seconds, 3), "topology_load_seconds": round(load_seconds, 3),
                          "mmap_topology": base.mmapped, "threads": used_threads})
            if base.disk_stats is not None:  # what sampling from disk read (groups, bytes, requests)
                stats["topology_reads"] = base.disk_stats
            stats["edges_per_second"] = round(stats["sampled_edges"] / max(stats["sample_seconds"], 1e-9), 1)
            (out / RESUME_JOURNAL).unlink(missing_ok=True)  # the output is the same as an uninterrupted run's
            write_manifest(out, FORMAT, VERSION, manifest)
            finish_output_dir(out)
        except BaseException:
            abort_output_dir(out)
            raise
    finally:
        numba.set_num_threads(previous_threads)
    samples = Samples.open(out)
    log.info("presampled %s in %.1f s: %s", out, seconds, samples.summary())
    return samples


def _presample_into(ds: Dataset, out: Path, cfg: SampleConfig, sampler: Sampler, progress: ProgressFn,
                    num_shards: int, shard: int, journal: dict | None = None) -> dict:
    counts = np.zeros(ds.num_nodes, dtype=np.int64)
    done = dict(journal["parts"]) if journal else {}
    parts = {}
    sampled_edges = 0
    sample_seconds = 0.0
    written = {"batches": 0, "bytes": 0}
    total_batches = sum(num_batches_of(part_num_items(ds, cfg, p), part_batch_size(ds, cfg, p), num_shards, shard)
                        for p in part_names(cfg.epochs))
    # For a disk-full message: the bytes per batch so far, extrapolated to every batch.
    expect_output_bytes(out, lambda: ds.num_nodes * 8 + written["bytes"] * total_batches // max(written["batches"], 1))
    full_batches = max(total_batches - len(part_names(cfg.epochs)), 0)  # each holds >= batch_size input nodes
    check_free_space(out, ds.num_nodes * 8 + full_batches * cfg.batch_size * 8, "the samples")
    writer = _BackgroundWriter()
    part_writers: list[_PartWriter] = []
    # one stream of batches over every part still to do (on disk, groups of batches span parts)
    raw = _raw_stream(ds, cfg, [p for p in part_names(cfg.epochs) if p not in done], sampler, num_shards, shard)
    try:
        for part in part_names(cfg.epochs):
            if part in done:  # finished by an interrupted run: count its input nodes, keep its files
                writer.submit(parts.__setitem__, part, done[part])
                spec = ArraySpec.from_json(done[part]["files"]["input_nodes"], str(out))
                nodes = open_array(out, spec)
                for lo in range(0, nodes.shape[0], 1 << 24):  # (no N-sized bincount per piece)
                    np.add.at(counts, np.asarray(nodes[lo:lo + (1 << 24)]), 1)
                sampled_edges += int(done[part]["num_edges"])
                continue
            nb = num_batches_of(part_num_items(ds, cfg, part), part_batch_size(ds, cfg, part), num_shards, shard)
            pw = _PartWriter(out, part, cfg.num_layers, pair_width=_pair_width(ds, cfg, part))
            part_writers.append(pw)
            if nb:
                progress(f"sample {part}", 0, nb)
            t0 = time.perf_counter()
            for arrays in itertools.islice(raw, nb):
                input_nodes, layer_sizes, block_indptr, block_indices = arrays[:4]
                counts[input_nodes] += 1  # input nodes are distinct within a batch
                writer.submit(pw.add, *arrays)
                sampled_edges += block_indices.shape[0]
                written["batches"] += 1
                written["bytes"] += 8 * (input_nodes.shape[0] + block_indptr.shape[0] + layer_sizes.shape[0] + 3) \
                    + 4 * block_indices.shape[0] + (arrays[4].nbytes + 8 if len(arrays) > 4 else 0)
                progress(f"sample {part}", 1, nb)
            sample_seconds += time.perf_counter() - t0
            writer.submit(_close_part, pw, out, parts, journal)
        raw.close()  # every batch is out: finish the sampler's reads (and its statistics)
        writer.close()
    except BaseException:
        raw.close()
        try:
            writer.close()
        except BaseException:
            pass
        for pw in part_writers:
            pw.abort()
        raise
    w = Crc32Writer(out / "access_counts.bin")
    with w:
        w.write(counts.astype("<i8", copy=False))
        info = w.close()
    files = {"access_counts": ArraySpec(path="access_counts.bin", dtype="<i8", shape=(ds.num_nodes,),
                                        crc32=info["crc32"]).to_json()}
    disk_bytes = sum(f["bytes"] for p in parts.values() for f in p["files"].values()) + files["access_counts"]["bytes"]
    extra = {}
    if cfg.is_link:
        from diskgnn.link import eval_batch_size
        extra["link"] = {"negatives": cfg.negatives, "negative_sampler": cfg.negative_sampler,
                         "eval_batch_size": eval_batch_size(cfg, ds), "undirected": ds.undirected,
                         "excluded": "each batch's positive edges and their reverses" if ds.undirected
                         else "each batch's positive edges",
                         "pair_width": {p: _pair_width(ds, cfg, p) for p in part_names(cfg.epochs)}}
    return {
        "task": cfg.task, **extra,
        "config": cfg.to_json(),
        "dataset": {"path": str(ds.path.resolve()), "fingerprint": ds.fingerprint, "num_nodes": ds.num_nodes,
                    "num_edges": ds.num_edges, "feature_bytes": ds.feature_bytes},
        "shard": {"num_shards": num_shards, "shard": shard,
                  "rule": "this directory holds batch i of every part where i % num_shards == shard"},
        "parts": parts,
        "files": files,
        "stats": {"sampled_edges": int(sampled_edges), "sample_seconds": round(sample_seconds, 3),
                  "disk_bytes": int(disk_bytes),
                  "footprint_of_features": round(disk_bytes / max(ds.feature_bytes, 1), 5)},
    }


# --- reading ------------------------------------------------------------------------------------

class Samples:
    """A read-only view of a samples directory; part files are memory-mapped lazily."""

    def __init__(self, path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        where = self.path / "manifest.json"
        try:
            self.config = SampleConfig.from_json(manifest["config"])
            dataset = manifest["dataset"]
            self.dataset_path = Path(dataset["path"])
            self.dataset_fingerprint = str(dataset["fingerprint"])
            self.num_nodes = int(dataset["num_nodes"])
            self.feature_bytes = int(dataset.get("feature_bytes", 0))
            self.num_shards = int(manifest["shard"]["num_shards"])
            self.shard = int(manifest["shard"]["shard"])
            parts = manifest["parts"]
            self._specs = {part: {name: ArraySpec.from_json(obj, str(where))
                                  for name, obj in parts[part]["files"].items()} for part in parts}
            self._counts_spec = ArraySpec.from_json(manifest["files"]["access_counts"], str(where))
            self._part_stats = {part: {k: int(parts[part][k]) for k in
                                       ("num_batches", "num_seeds", "num_edges", "num_input_nodes")}
                                for part in parts}
        except (KeyError, TypeError, ValueError, AttributeError, DiskGNNError) as exc:
            raise IntegrityError(f"{where} lacks a valid field ({exc}); re-create {self.path} with diskgnn sample") \
                from None
        expected = part_names(self.config.epochs)
        if sorted(self._specs) != sorted(expected):
            raise IntegrityError(f"{where} lists parts {sorted(self._specs)}, expected {expected}")
        self.parts = expected
        self.train_parts = [p for p in expected if p.startswith("train/")]
        width = _INDEX_FIXED + self.config.num_layers + 1
        layout = {"input_nodes": ("<i8", 1), "block_indptr": ("<i8", 1), "block_indices": ("<i4", 1),
                  "index": ("<i8", 2)}
        self.task = self.config.task
        """``node`` or ``link`` (see :class:`SampleConfig`)."""
        if self.config.is_link:
            layout.update({"pairs": ("<i4", 2), "pair_offsets": ("<i8", 1)})
            link = manifest.get("link")
            if not isinstance(link, dict) or not isinstance(link.get("undirected"), bool):
                raise IntegrityError(f"{where}: link samples need a link section with 'undirected'; re-create "
                                     f"{self.path} with diskgnn sample --task link")
            self.link = link
        else:
            self.link = None
        for part, specs in self._specs.items():
            for name, (dtype, ndim) in layout.items():
                if name not in specs:
                    raise IntegrityError(f"{where}: part {part} does not list its {name} file")
                if specs[name].dtype != dtype or len(specs[name].shape) != ndim:
                    raise IntegrityError(f"{where}: part {part} describes {name} as {specs[name].dtype} "
                                         f"{list(specs[name].shape)}, expected {dtype} with {ndim} dimension(s)")
            shape = specs["index"].shape
            nb = self._part_stats[part]["num_batches"]
            if len(shape) != 2 or shape[1] != width or shape[0] != nb + 1:
                raise IntegrityError(f"{where}: part {part} index has shape {list(shape)}, expected "
                                     f"[{nb + 1}, {width}]")
            if self.config.is_link:
                pw = specs["pairs"].shape[1]
                if specs["pair_offsets"].shape[0] != nb + 1 or pw < 3 or \
                        (part.startswith("train/") and pw != 2 + self.config.negatives):
                    raise IntegrityError(f"{where}: part {part} describes pairs {list(specs['pairs'].shape)} and "
                                         f"pair offsets {list(specs['pair_offsets'].shape)}, which do not fit its "
                                         f"{nb} batches; re-create {self.path}")
        if self._counts_spec.dtype != "<i8" or self._counts_spec.shape != (self.num_nodes,):
            raise IntegrityError(f"{where}: access_counts must be <i8 [{self.num_nodes}], the manifest says "
                                 f"{self._counts_spec.dtype} {list(self._counts_spec.shape)}")
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        self._index: dict[str, np.ndarray] = {}
        self._pair_offsets: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, path) -> "Samples":
        return cls(path, read_manifest(path, FORMAT, VERSION))

    def _array(self, part: str, name: str) -> np.ndarray:
        key = (part, name)
        if key not in self._arrays:
            self._check_part(part)
            self._arrays[key] = open_array(self.path, self._specs[part][name])
        return self._arrays[key]

    def _check_part(self, part: str) -> None:
        if part not in self._specs:
            raise ConfigError(f"{self.path} has no part {part!r}; it has {', '.join(self.parts)}")

    def index(self, part: str) -> np.ndarray:
        """int64 [nb+1, 3+L+1]: per batch, start offsets into input_nodes / block_indptr / block_indices, then layer sizes."""
        if part not in self._index:
            idx = np.array(self._array(part, "index"))
            self._check_index(part, idx)
            self._index[part] = idx
        return self._index[part]

    def _check_index(self, part: str, idx: np.ndarray) -> None:
        """The index's offsets and layer sizes must describe the part's files, or a reader would go out of bounds."""
        specs = self._specs[part]
        where = self.path / specs["index"].path
        off = idx[:, :_INDEX_FIXED]
        sizes = idx[:-1, _INDEX_FIXED:]
        totals = [specs[n].shape[0] for n in ("input_nodes", "block_indptr", "block_indices")]
        problem = None
        if (off[0] != 0).any() or (np.diff(off, axis=0) < 0).any() or off[-1].tolist() != totals:
            problem = f"its offsets must start at 0, not decrease and end at the file lengths {totals}"
        elif sizes.size and ((sizes < 1).any() or (np.diff(sizes, axis=1) > 0).any()):
            problem = "its layer sizes must be positive and shrink towards the seeds"
        elif sizes.size and ((np.diff(off[:, 0]) != sizes[:, 0]).any()
                             or (np.diff(off[:, 1]) != (sizes[:, 1:] + 1).sum(axis=1)).any()):
            problem = "its layer sizes do not match the lengths of the batches"
        if problem:
            raise IntegrityError(f"{where}: the index of part {part} is corrupt: {problem}; "
                                 f"run diskgnn sample again")

    def pair_offsets(self, part: str) -> np.ndarray:
        """int64 [nb+1]: link batch b's pairs are rows ``off[b]:off[b+1]`` of the part's pairs file."""
        if not self.config.is_link:
            raise ConfigError(f"{self.path} was sampled for node classification; it has no link pairs")
        if part not in self._pair_offsets:
            off = np.array(self._array(part, "pair_offsets"))
            rows = self._specs[part]["pairs"].shape[0]
            if off[0] != 0 or (np.diff(off) < 1).any() or off[-1] != rows:
                raise IntegrityError(f"{self.path / self._specs[part]['pair_offsets'].path}: offsets must start at "
                                     f"0, grow by at least one per batch and end at {rows}; run diskgnn sample again")
            self._pair_offsets[part] = off
        return self._pair_offsets[part]

    def lean_read_bytes(self, part: str) -> int:
        """Bytes that reading every batch of ``part`` with ``batch(..., input_nodes=False)`` takes: its
        blocks (and link pairs) and the seeds."""
        self._check_part(part)
        specs = self._specs[part]
        names = ["block_indptr", "block_indices"] + (["pairs"] if self.config.is_link else [])
        return sum(specs[n].nbytes for n in names) + 8 * self._part_stats[part]["num_seeds"]

    def num_batches(self, part: str) -> int:
        self._check_part(part)
        return int(self._specs[part]["index"].shape[0] - 1)

    def global_index(self, part: str, i: int) -> int:
        """The batch's number in the unsharded part (batch i of shard s of S is batch i*S + s)."""
        return i * self.num_shards + self.shard

    def _check_batch(self, part: str, i: int) -> int:
        nb = self.num_batches(part)
        if not -nb <= i < nb:
            raise ConfigError(f"{self.path}: part {part} has {nb} batches, there is no batch {i}")
        return i % nb

    def input_offsets(self, part: str) -> np.ndarray:
        """int64 [nb+1]: batch i's input nodes are ``all_input_nodes(part)[off[i]:off[i+1]]``."""
        return np.ascontiguousarray(self.index(part)[:, 0])

    def all_input_nodes(self, part: str) -> np.ndarray:
        """The concatenated int64 input nodes of every batch of the part (a memory map)."""
        return self._array(part, "input_nodes")

    def read_input_nodes(self, part: str, lo: int, hi: int) -> np.ndarray:
        """Entries lo..hi-1 of the part's concatenated input nodes, read into a new int64 array (not mapped)."""
        self._check_part(part)
        return self._read(part, "input_nodes", lo, hi)

    def input_nodes(self, part: str, i: int) -> np.ndarray:
        """Batch i's int64 input nodes, read into a new array (see :meth:`_read`)."""
        i = self._check_batch(part, i)
        idx = self.index(part)
        return self._read(part, "input_nodes", idx[i, 0], idx[i + 1, 0])

    def _read(self, part: str, name: str, lo: int, hi: int, direct: bool = False) -> np.ndarray:
        """Elements lo..hi-1 of one 1-d array of the part, read with pread into a new array.

        Not through the memory map: pages a map has touched stay in the process's resident set
        (file-mapped) for as long as the map lives, which a long training run would fill with
        every batch it read; a read leaves them to the page cache, which the kernel can drop.
        """
        self._array(part, name)  # the file was checked to have exactly its promised size
        spec = self._specs[part][name]
        return pread_elements(self.path / spec.path, spec.dtype, lo, hi, direct=direct)

    def batch(self, part: str, i: int, *, input_nodes: bool = True, direct: bool = False) -> MiniBatch:
        """Batch i of ``part``, read from the part's files.

        ``input_nodes=False`` reads only the seeds' prefix of the input nodes and leaves the
        MiniBatch's ``input_nodes`` None: a loader over a packed store assembles the features
        from the store's map and needs only the seeds (for the labels), and under a tight memory
        cap the input nodes are the largest file it would otherwise read again every epoch.
        ``direct`` reads with O_DIRECT (see :func:`~diskgnn.io.pread_elements`): for a loader whose
        memory budget leaves no page cache to keep the part's blocks in anyway.
        """
        i = self._check_batch(part, i)
        idx = self.index(part)
        row, nxt = idx[i], idx[i + 1]
        stop = nxt[0] if input_nodes else row[0] + int(row[-1])
        nodes = self._read(part, "input_nodes", row[0], stop, direct)
        block_indptr = self._read(part, "block_indptr", row[1], nxt[1], direct)
        block_indices = self._read(part, "block_indices", row[2], nxt[2], direct)
        self._check_batch_arrays(part, i, nodes, row[_INDEX_FIXED:], block_indptr, block_indices)
        pairs = None
        if self.config.is_link:
            off = self.pair_offsets(part)
            width = self._specs[part]["pairs"].shape[1]
            pairs = self._read(part, "pairs", off[i] * width, off[i + 1] * width, direct).reshape(-1, width)
            if pairs.size and (int(pairs.min()) < 0 or int(pairs.max()) >= int(row[-1])):
                raise IntegrityError(f"{self.path}: part {part} batch {i} is corrupt (pairs point outside its "
                                     f"seeds) in {_part_file_prefix(part)}.pairs.bin; run diskgnn sample again")
        return _make_batch(part, i, nodes, row[_INDEX_FIXED:], block_indptr, block_indices, pairs,
                           seeds_only=not input_nodes)

    def _check_batch_arrays(self, part, i, input_nodes, sizes, block_indptr, block_indices) -> None:
        """Cheap bounds checks of one stored batch, so a damaged file stops here rather than in a kernel."""
        bad = None
        if input_nodes.size and (int(input_nodes.min()) < 0 or int(input_nodes.max()) >= self.num_nodes):
            bad = f"input node ids outside 0..{self.num_nodes - 1}"
        p = q = 0
        for layer in range(len(sizes) - 1):
            if bad:
                break
            num_src, num_dst = int(sizes[layer]), int(sizes[layer + 1])
            ptr = block_indptr[p:p + num_dst + 1]
            if ptr.shape[0] != num_dst + 1 or ptr[0] != 0 or (np.diff(ptr) < 0).any() \
                    or q + int(ptr[-1]) > block_indices.shape[0]:
                bad = f"block {layer} has invalid offsets"
                break
            local = block_indices[q:q + int(ptr[-1])]
            if local.size and (int(local.min()) < 0 or int(local.max()) >= num_src):
                bad = f"block {layer} has local source ids outside 0..{num_src - 1}"
            p += num_dst + 1
            q += int(ptr[-1])
        if not bad and q != block_indices.shape[0]:
            bad = "its blocks do not use exactly its stored edges"
        if bad:
            raise IntegrityError(f"{self.path}: part {part} batch {i} is corrupt ({bad}) in the "
                                 f"{_part_file_prefix(part)}.* files; run diskgnn sample again")

    def batches(self, part: str) -> Iterator[MiniBatch]:
        for i in range(self.num_batches(part)):
            yield self.batch(part, i)

    @property
    def access_counts(self) -> np.ndarray:
        """int64 [N]: how often each node is an input node over every stored batch (train parts, val, test)."""
        return open_array(self.path, self._counts_spec)

    def open_dataset(self) -> Dataset:
        """The dataset these samples came from, checked by fingerprint."""
        ds = Dataset.open(self.dataset_path)
        if ds.fingerprint != self.dataset_fingerprint:
            raise MismatchError(f"{self.path} was sampled from a dataset with fingerprint {self.dataset_fingerprint}, "
                                f"but {ds.path} now has {ds.fingerprint}; sample it again")
        return ds

    @property
    def fingerprint(self) -> str:
        """A short id of the stored batches (config, dataset, shard and file checksums; not timings)."""
        key = json.dumps({"config": self.config.to_json(), "dataset": self.dataset_fingerprint,
                          "shard": [self.num_shards, self.shard],
                          "files": sorted((s.path, s.dtype, list(s.shape), s.crc32) for s in self.files())},
                         sort_keys=True)
        return f"{zlib.crc32(key.encode()):08x}"

    def files(self) -> list[ArraySpec]:
        return [s for specs in self._specs.values() for s in specs.values()] + [self._counts_spec]

    def summary(self) -> dict:
        parts = self._part_stats
        stats = self.manifest.get("stats")
        stats = stats if isinstance(stats, dict) else {}  # timings only: a damaged one is not worth an error

        def number(key, default):
            value = stats.get(key, default)
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default

        return {
            "path": str(self.path), "format_version": self.manifest.get("version"),
            "fingerprint": self.fingerprint,
            "dataset": str(self.dataset_path), "dataset_fingerprint": self.dataset_fingerprint,
            "config": self.config.to_json(),
            "shard": f"{self.shard} of {self.num_shards}",
            "batches": {p: parts[p]["num_batches"] for p in self.parts},
            "seeds": {p: parts[p]["num_seeds"] for p in self.parts},
            "sampled_edges": int(number("sampled_edges", sum(parts[p]["num_edges"] for p in self.parts))),
            "input_nodes": sum(parts[p]["num_input_nodes"] for p in self.parts),
            "disk_bytes": int(number("disk_bytes", sum(s.nbytes for s in self.files()))),
            "footprint_of_features": stats.get("footprint_of_features"),
            "seconds": stats.get("seconds"),
            "edges_per_second": stats.get("edges_per_second"),
            "mmap_topology": stats.get("mmap_topology"),
            "threads": stats.get("threads"),
            **({"task": "link", "link": {**self.link,
                                         "positives": {p: self.manifest["parts"][p].get("num_pairs")
                                                       for p in self.parts}}}
               if self.config.is_link else {}),
        }

    def __repr__(self) -> str:
        return (f"Samples({str(self.path)!r}, fanouts={list(self.config.fanouts)}, batch_size="
                f"{self.config.batch_size}, epochs={self.config.epochs}, shard={self.shard}/{self.num_shards})")


# --- verification -------------------------------------------------------------------------------

VERIFY_SLACK = 256 << 20
"""Bytes ``verify`` keeps free for each batch's arrays and the runtimes beside its edge check."""


def verify_samples(samples: Samples, check_crc: bool = True, progress: ProgressFn = no_progress, *,
                   check_graph: bool = True) -> None:
    """Check every invariant of a samples directory; raise :class:`IntegrityError` naming the first problem.

    Checks file sizes and crc32, each batch's block structure (nested prefixes,
    offsets, local ids in range, no neighbour repeated per destination), that
    input nodes are distinct and in range, the access counts, and, when the
    dataset is reachable and unchanged, that the seeds are the part's seeds and
    every sampled edge is an in-edge of the graph.
    """
    from diskgnn.manifest import file_crc32
    where = samples.path
    specs = samples.files()
    for spec in specs:
        open_array(where, spec)
    if check_crc:
        for spec in specs:
            if spec.crc32 is None:
                continue
            got = file_crc32(where / spec.path)
            if got != spec.crc32:
                raise IntegrityError(f"{where}/{spec.path}: checksum mismatch (crc32 {got:08x}, manifest says "
                                     f"{spec.crc32:08x}); the file is corrupt, run diskgnn sample again")
            progress("verify checksums", 1, len(specs))
    ds = None
    if check_graph:
        try:
            ds = samples.open_dataset()
        except DiskGNNError as exc:
            log.warning("not checking sampled edges against the graph: %s", exc)
    cfg = samples.config
    n = samples.num_nodes
    mark = np.zeros(n, dtype=np.uint8)
    counts = np.zeros(n, dtype=np.int64)
    edge_check = None
    if ds is not None:  # sampled edges are checked in groups, one pass over the CSR in file order each
        from diskgnn.disk_sampling import DiskCSR, EdgeCheck
        csr = DiskCSR(ds)
        # what the check may collect: the memory left beside the CSR windows, the per-node arrays above (zeroed
        # lazily, so not yet counted as used), each batch's arrays and the runtimes' growth (VERIFY_SLACK), over
        # what a flush needs at its peak per byte collected (EdgeCheck.FLUSH_PEAK)
        room = resolve_memory_budget(None) - csr.memory_bytes - mark.nbytes - counts.nbytes - VERIFY_SLACK
        edge_check = EdgeCheck(csr, max(room, 0) // EdgeCheck.FLUSH_PEAK)
    try:
        _verify_batches(samples, ds, cfg, mark, counts, edge_check, progress)
        if edge_check is not None:
            edge_check.flush()
    finally:
        if edge_check is not None:
            csr.close()
    from diskgnn.dataset import ArrayChunks
    stored = ArrayChunks(where, samples._counts_spec, 1 << 22)
    for lo, part in stored:  # read in pieces: the counts of a large graph are not mapped whole
        if not np.array_equal(counts[lo:lo + part.shape[0]], part):
            bad = lo + int(np.flatnonzero(counts[lo:lo + part.shape[0]] != part)[0])
            raise IntegrityError(f"{where}/access_counts.bin: node {bad} is counted {int(part[bad - lo])} "
                                 f"times, the batches use it {int(counts[bad])} times")


def _verify_batches(samples: Samples, ds: Dataset | None, cfg: SampleConfig, mark: np.ndarray, counts: np.ndarray,
                    edge_check, progress: ProgressFn) -> None:
    """The per-batch checks of :func:`verify_samples` (sampled edges go to ``edge_check``)."""
    from diskgnn.kernels.sampling import first_repeat, repeated_in_segments
    where = samples.path
    n = samples.num_nodes
    for part in samples.parts:
        nb = samples.num_batches(part)
        idx = samples.index(part)
        if (np.diff(idx[:, :_INDEX_FIXED], axis=0) < 0).any():
            raise IntegrityError(f"{where}: the index of part {part} has decreasing offsets")
        totals = [samples._specs[part][name].shape[0] for name in ("input_nodes", "block_indptr", "block_indices")]
        if list(idx[-1, :_INDEX_FIXED]) != totals:
            raise IntegrityError(f"{where}: the index of part {part} ends at {list(idx[-1, :_INDEX_FIXED])}, "
                                 f"the files hold {totals} items")
        seeds_all = None
        link_check = None
        if ds is not None and cfg.is_link:
            from diskgnn.link import LinkBatchCheck
            link_check = LinkBatchCheck(ds, cfg, part)
        elif ds is not None:
            seeds_all = part_seeds(ds, cfg, part)
        for i in range(nb):
            what = f"{where}: part {part} batch {i}"
            row, nxt = idx[i], idx[i + 1]
            sizes = row[_INDEX_FIXED:]
            if (np.diff(sizes) > 0).any() or sizes[-1] < 1:
                raise IntegrityError(f"{what}: layer sizes {sizes.tolist()} must shrink towards the seeds")
            if nxt[0] - row[0] != sizes[0]:
                raise IntegrityError(f"{what}: holds {nxt[0] - row[0]} input nodes, its first block has {sizes[0]}")
            if nxt[1] - row[1] != int(np.sum(sizes[1:] + 1)):
                raise IntegrityError(f"{what}: block offsets have {nxt[1] - row[1]} entries, expected "
                                     f"{int(np.sum(sizes[1:] + 1))}")
            try:
                mb = samples.batch(part, i)
            except (ValueError, IndexError) as exc:
                raise IntegrityError(f"{what}: cannot be read ({exc})") from None
            nodes = mb.input_nodes
            if nodes.size and (int(nodes.min()) < 0 or int(nodes.max()) >= n):
                raise IntegrityError(f"{what}: input node ids must lie in 0 .. {n - 1}")
            rep = first_repeat(nodes, mark)
            if rep >= 0:
                raise IntegrityError(f"{what}: input node {int(nodes[rep])} appears twice")
            counts[nodes] += 1
            edges = 0
            for layer, b in enumerate(mb.blocks):
                ptr = b.indptr
                if ptr[0] != 0 or (np.diff(ptr) < 0).any():
                    raise IntegrityError(f"{what} block {layer}: offsets must start at 0 and not decrease")
                if b.indices.size and (int(b.indices.min()) < 0 or int(b.indices.max()) >= b.num_src):
                    raise IntegrityError(f"{what} block {layer}: local source ids must lie in 0 .. {b.num_src - 1}")
                fanout = cfg.part_fanouts(part)[layer]
                if fanout > 0 and int(np.diff(ptr).max(initial=0)) > fanout:
                    raise IntegrityError(f"{what} block {layer}: a node has more than fanout {fanout} neighbours")
                start = 0
                while True:
                    j = repeated_in_segments(ptr[start:], b.indices, mark)
                    if j < 0:
                        break
                    j += start
                    if edge_check is None:
                        raise IntegrityError(f"{what} block {layer}: destination {j} has a repeated neighbour")
                    # allowed where the graph repeats those in-edges (a multigraph)
                    edge_check.add_repeat(what, layer, j, int(nodes[j]), nodes[b.indices[ptr[j]:ptr[j + 1]]])
                    start = j + 1
                if edge_check is not None:  # in-edges of the graph, min(degree, fanout) of them
                    dst = nodes[:b.num_dst]
                    # a link training batch's own positive edges are not in its graph: owed min(degree - those, fanout)
                    excluded = None if link_check is None else link_check.excluded_in_degree(mb, dst)
                    edge_check.add(what, layer, fanout, dst, ptr, nodes[b.indices], excluded)
                edges += b.num_edges
            if nxt[2] - row[2] != edges:
                raise IntegrityError(f"{what}: blocks hold {edges} edges, the index says {nxt[2] - row[2]}")
            if link_check is not None:
                link_check.check(mb, samples.global_index(part, i), what)
            elif cfg.is_link and (mb.pairs is None or mb.pairs.size == 0 or np.unique(mb.pairs).size != mb.batch_size):
                raise IntegrityError(f"{what}: its seeds must be exactly the endpoints of its pairs")
            if seeds_all is not None:
                g = samples.global_index(part, i)
                expect = seeds_all[g * cfg.batch_size:(g + 1) * cfg.batch_size]
                if not np.array_equal(mb.seeds, expect):
                    raise IntegrityError(f"{what}: seeds differ from the part's seed order (config "
                                         f"{cfg.to_json()}); the samples do not match the dataset")
            progress(f"verify {part}", 1, nb)
