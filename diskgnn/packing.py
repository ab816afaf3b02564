"""Stage 3: choose cache tiers and lay every minibatch's uncached rows out contiguously on disk.

``pack`` reads the samples' per-batch input nodes and access counts and

1. ranks rows by access count and fills the device, pinned and host tiers
   (most-used first) up to their byte sizes;
2. plans the disk layout: one 4096-aligned extent per batch holding its
   uncached rows ordered by node block of features.bin, in input order inside
   a block (plain), or, when that exceeds ``--disk-budget`` (or, without one,
   the free disk space), one extent per *segment* of consecutive batches of a
   part, each row stored once, by node id. Training reads a segment once per
   pass and keeps it in memory while its batches are assembled, so segments
   are the shortest that fit the budget and must fit ``--segment-memory``;
3. writes the rows in one of two modes (same bytes either way):

   * ``stream`` (both layouts, the default when it fits the budget): reads
     ``features.bin`` once, block by block; block c's rows of every extent are
     one contiguous stretch right after block c-1's, so they are staged in
     page-aligned pieces and written at once, while the next block is read.
     Memory is a few blocks and two staging buffers whatever the graph's size,
     and a killed run resumes after its last journal (every ~1 GiB).
   * ``groups``: scatters each row into the output buffer of a *group* of
     extents; a group is written sequentially while the next group's pass over
     ``features.bin`` runs. Groups are as large as the memory budget allows;
     without ``--chunk-size`` the chunk shrinks under a tight budget until the
     passes are as few as they can be (:func:`plan_pack_memory`).

   Neither ever reads a row at random.

The directory is marked partial until its manifest (with a crc32 of every
file, or of every read run for a streamed packed.bin) is written, last. See
:mod:`diskgnn.store` for the format.
"""
from __future__ import annotations

import concurrent.futures as cf
import errno
import logging
import math
import os
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numba
import numpy as np

from diskgnn.dataset import ArraySpec, Dataset, feature_dtype, node_id_dtype
from diskgnn.dtypes import convert_rows  # noqa: F401 (also imported from here)
from diskgnn.errors import ConfigError, DiskFullError, MemoryBudgetError, MismatchError
from diskgnn.io import (ALIGN, HUGE_BUFFER, AlignedReader, AlignedWriter, PositionalWriter, align_up, aligned_empty,
                        prefault)
from diskgnn.kernels.gather import gather_rows, scatter_bytes, scatter_words
from diskgnn.kernels.packing import (belady_hits, bucket_rows, count_uncached, disk_bitmap, extent_dests, next_use,
                                     plain_maps, reuse_histogram, segment_block_maps, segment_group, segment_row_counts,
                                     segment_rows_from_histogram, stage_block, tier_hits)
from diskgnn.manifest import (RESUME_JOURNAL, Crc32Writer, abort_output_dir, check_free_space, expect_output_bytes,
                              finish_output_dir, prepare_output_dir, prepare_resumable_output_dir,
                              write_manifest, write_resume_journal)
from diskgnn.memory import resolve_memory_budget
from diskgnn.progress import ProgressFn, no_progress
from diskgnn.sizes import format_bytes, parse_factor, parse_size
from diskgnn.store import FORMAT, TIER_NAMES, VERSION, Packed, samples_fingerprint

log = logging.getLogger(__name__)

STORE_DTYPES = ("fp32", "fp16", "bf16")


def _check_size_text(value, name: str) -> None:
    if isinstance(value, str) and value.strip().startswith("-"):
        raise ConfigError(f"{name} must not be negative, got {value!r}; give bytes (512M, 2G) or a percentage (10%)")
    parse_size(value, total=1 << 40, name=name)


WRITE_MODES = ("auto", "stream", "groups")


@dataclass(frozen=True, slots=True, kw_only=True)
class PackConfig:
    """What ``pack`` does; saved in the packed manifest."""
    device_cache: str | int = 0
    """Bytes of rows on the training device (GPU memory, host memory without CUDA): ``2G`` or ``10%`` of the feature bytes."""
    pinned_cache: str | int = 0
    """Bytes of rows in pinned host memory (pinned only with CUDA)."""
    host_cache: str | int = "10%"
    """Bytes of rows in host memory."""
    disk_budget: str | float | None = None
    """Cap on packed.bin as a multiple of the feature bytes (``3x``); None = no cap."""
    store_dtype: str | None = None
    """Precision of stored rows: fp32, fp16, bf16; None = the dataset's."""
    chunk_size: str | int | None = None
    """Bytes of features.bin streamed per chunk; None = chosen from the memory budget (see :func:`plan_pack_memory`)."""
    belady: bool = True
    """Compute the Belady (optimal offline) hit rate of the same cache size as a bound."""
    segment_memory: str | int | None = None
    """Largest segment of the disk-budget layout, in bytes (``512M``): training reads a segment once per
    pass and keeps it in memory while its batches are assembled (and the next one being read beside it).
    None = a quarter of the step's memory budget."""
    order_block: str | int | None = None
    """Bytes of features.bin per node block of the plain layout's row order (an extent's rows are ordered
    by block, then by input position): the stream write mode reads one block at a time and writes each
    extent's stretch from it. None = sized from the plan so each stretch is ~256 KiB (64 MiB-1 GiB)."""
    write_mode: str = "auto"
    """How rows reach packed.bin: ``stream`` (plain layout: every block of features.bin is read once and
    its stretch of every extent written at once, in bounded memory), ``groups`` (extents are filled in
    output buffers as large as the memory budget allows, one pass over features.bin per buffer), or
    ``auto`` (stream when it fits the budget and its writes are large enough). The output is the same."""

    def __post_init__(self):
        for name in ("device_cache", "pinned_cache", "host_cache"):
            _check_size_text(getattr(self, name), f"--{name.replace('_', '-')}")
        if self.disk_budget is not None:
            parse_factor(self.disk_budget, name="--disk-budget")
        if self.store_dtype is not None and self.store_dtype not in STORE_DTYPES:
            raise ConfigError(f"--store-dtype must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype!r}")
        if self.chunk_size is not None:
            _check_size_text(self.chunk_size, "--chunk-size")
            if parse_size(self.chunk_size, name="--chunk-size") < ALIGN:
                raise ConfigError(f"--chunk-size must be at least 4K, got {self.chunk_size!r}")
        if self.segment_memory is not None:
            _check_size_text(self.segment_memory, "--segment-memory")
            if parse_size(self.segment_memory, name="--segment-memory") < ALIGN:
                raise ConfigError(f"--segment-memory must be at least 4K, got {self.segment_memory!r}")
        if self.order_block is not None:
            _check_size_text(self.order_block, "order_block")
            if parse_size(self.order_block, name="order_block") < ALIGN:
                raise ConfigError(f"order_block must be at least 4K, got {self.order_block!r}")
        if self.write_mode not in WRITE_MODES:
            raise ConfigError(f"write_mode must be one of {', '.join(WRITE_MODES)}, got {self.write_mode!r}")

    @classmethod
    def from_cli(cls, args) -> "PackConfig":
        kw = {}
        for name in ("device_cache", "pinned_cache", "host_cache", "disk_budget", "store_dtype", "chunk_size",
                     "write_mode", "order_block", "segment_memory"):
            value = getattr(args, name, None)
            if value is not None:
                kw[name] = value
        kw["belady"] = bool(getattr(args, "belady", False))  # the command line computes the bound on request
        return cls(**kw)

    def cache_bytes(self, feature_bytes: int) -> dict[str, int]:
        """Bytes of each tier, percentages taken of ``feature_bytes``."""
        return {t: parse_size(getattr(self, f"{t}_cache"), total=feature_bytes, name=f"--{t}-cache")
                for t in TIER_NAMES}

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PackPlan:
    """Everything ``pack`` decided before writing rows (also what ``plan_pack`` reports)."""
    store_dtype: str
    row_bytes: int
    tier_rows: dict
    cache_nodes: np.ndarray
    """int64 [n_cached] node of each slot (tiers in order, nodes ascending inside a tier)."""
    inputs: np.ndarray
    """[T] input nodes of the packed batches, concatenated (int32 below 2**31 nodes); empty when the maps were
    computed in their place (``maps_in_place``)."""
    offsets: np.ndarray
    """int64 [nb_sel + 1] batch boundaries in ``inputs``."""
    maps: np.ndarray
    batches: np.ndarray
    """int64 [G, 5] (map lo, map hi, run lo, run hi, extent offset) of every batch."""
    runs: np.ndarray
    """int64 [R, 3] (first page, pages, crc32 of those pages: filled while writing)."""
    row_nodes: np.ndarray
    """Node of every packed row, in file order."""
    extent_rows: np.ndarray
    """int64 [E] rows per extent (batch or segment)."""
    extent_offsets: np.ndarray
    """int64 [E] byte offset of each extent in packed.bin."""
    packed_bytes: int
    plain_bytes: int
    layout: str
    segment_batches: int | None
    parts: list
    stats: dict
    block_rows: int = 0
    """Rows of an extent are ordered by node block of this many nodes (plain: then input order; segments:
    then node id)."""
    block_starts: np.ndarray | None = None
    """int64 [E, blocks + 1], extent e's rows of block c are block_starts[e, c] .. [e, c + 1] - 1."""
    maps_in_place: bool = False
    """The maps overwrote the input nodes (there is no trace left for the Belady bound)."""


def _open_samples(samples):
    if isinstance(samples, (str, os.PathLike)):
        from diskgnn.sampling import Samples
        return Samples.open(samples)
    return samples


def _open_dataset(samples, dataset) -> Dataset:
    if isinstance(dataset, Dataset) or hasattr(dataset, "features_path"):  # or a view with Dataset's feature API
        ds = dataset
    elif dataset is not None:
        ds = Dataset.open(dataset)
    else:
        ds = Dataset.open(samples.dataset_path)
    want = getattr(samples, "dataset_fingerprint", None)
    if want is not None and want != ds.fingerprint:
        raise MismatchError(f"the samples in {getattr(samples, 'path', '?')} were made from a dataset with "
                            f"fingerprint {want}, but {ds.path} has fingerprint {ds.fingerprint}; pass the dataset "
                            f"they were sampled from (--dataset) or re-run diskgnn sample on {ds.path}")
    if int(samples.num_nodes) != ds.num_nodes:
        raise MismatchError(f"the samples have {samples.num_nodes} nodes but {ds.path} has {ds.num_nodes}; "
                            f"they belong to different graphs")
    return ds


def _check_tier_memory(tier_bytes: dict[str, int]) -> None:
    from diskgnn.capabilities import available_memory, cuda_available
    cuda = tier_bytes["device"] > 0 and cuda_available()  # importing torch costs seconds: only when it matters
    host = sum(b for t, b in tier_bytes.items() if t != "device" or not cuda)
    avail = available_memory()
    if host > avail:
        raise MemoryBudgetError(
            f"the cache tiers need {format_bytes(host)} of host memory (device {format_bytes(tier_bytes['device'])}, "
            f"pinned {format_bytes(tier_bytes['pinned'])}, host {format_bytes(tier_bytes['host'])}) but only "
            f"{format_bytes(avail)} is available; lower --host-cache/--pinned-cache/--device-cache")
    if cuda:
        import torch
        free, _ = torch.cuda.mem_get_info()
        if tier_bytes["device"] > free:
            raise MemoryBudgetError(f"--device-cache {format_bytes(tier_bytes['device'])} exceeds the free GPU "
                                    f"memory ({format_bytes(free)}); lower it")


MEMORY_SHARE = 0.5
"""Without ``--memory-budget``, pack plans for this share of the available memory."""
FREE_SPACE_MARGIN = 0.05
"""Share of the output filesystem's free space (at least :data:`FREE_SPACE_MARGIN_MIN`) that an automatic
disk budget leaves free."""
FREE_SPACE_MARGIN_MIN = 256 << 20


def segment_memory_limit(cfg: PackConfig, memory_budget: int) -> int:
    """The largest segment a pack with ``cfg`` may lay out (``--segment-memory``, else a quarter of the budget)."""
    if cfg.segment_memory is not None:
        return parse_size(cfg.segment_memory, name="--segment-memory")
    return max(memory_budget // 4, ALIGN)


def plan_pack(samples, cfg: PackConfig, *, dataset=None, num_shards: int = 1, shard: int = 0,
              memory_budget=None) -> PackPlan:
    """Decide tiers, maps and the disk layout without writing anything."""
    samples = _open_samples(samples)
    ds = _open_dataset(samples, dataset)
    budget = resolve_memory_budget(memory_budget, fraction=MEMORY_SHARE)
    return _plan(samples, ds, cfg, num_shards=num_shards, shard=shard,
                 max_segment_bytes=segment_memory_limit(cfg, budget))


def _existing_bytes(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _fit_free_space(plan: PackPlan, samples, ds: Dataset, cfg: PackConfig, out: Path, overwrite: bool, *,
                    num_shards: int, shard: int, max_segment_bytes: int, plan_budget: int | None = None) -> PackPlan:
    """Without ``--disk-budget``, a plan whose files would not fit the output filesystem is re-made
    with the disk budget that does (segments), keeping a margin free; refuses when nothing fits."""
    from diskgnn.manifest import _free_bytes
    if cfg.disk_budget is not None:
        return plan
    need = footprint_bytes(plan)["total"]
    free = _free_bytes(out) + _existing_bytes(out)  # an unfinished or replaced output's files are reused
    margin = max(int(free * FREE_SPACE_MARGIN), FREE_SPACE_MARGIN_MIN)
    if need <= free - margin:
        return plan
    room = free - margin - (need - plan.packed_bytes)  # tiers and index do not shrink with the layout
    why = (f"the plain layout needs about {format_bytes(need)} but {out}'s filesystem has {format_bytes(free)} free "
           f"(keeping {format_bytes(margin)} of it free)")
    if room <= 0:
        raise DiskFullError(errno.ENOSPC, f"not enough space to pack into {out}: {why}, and the memory tiers and "
                                          f"the index alone need {format_bytes(need - plan.packed_bytes)}. Free some "
                                          f"space or choose another --out directory")
    log.warning("%s: packing with a disk budget of %s (%.2fx the feature bytes) instead", why, format_bytes(room),
                room / ds.feature_bytes)
    try:
        fitted = _plan(samples, ds, cfg, num_shards=num_shards, shard=shard, disk_budget_bytes=room,
                       maps_in_place=plan.maps_in_place, plan_budget=plan_budget,
                       max_segment_bytes=max_segment_bytes)
    except (ConfigError, MemoryBudgetError) as exc:
        raise DiskFullError(errno.ENOSPC, f"not enough space to pack into {out}: {why}, and no disk-budget layout "
                                          f"fits in {format_bytes(room)} either ({exc}). Free some space or choose "
                                          f"another --out directory") from None
    fitted.stats["disk_budget_auto"] = {"free_bytes": int(free), "margin_bytes": int(margin),
                                        "budget_bytes": int(room), "plain_total_bytes": int(need)}
    return fitted


INPUT_PIECE = 1 << 18
"""Input nodes (and access counts, and nodes labelled by block) per piece while the plan reads and checks them."""


def _read_inputs(samples, part: str, lo: int, hi: int) -> np.ndarray:
    """Entries lo..hi-1 of a part's concatenated input nodes (read, not mapped, where the samples allow)."""
    reader = getattr(samples, "read_input_nodes", None)
    if reader is not None:
        return reader(part, lo, hi)
    return np.asarray(samples.all_input_nodes(part)[lo:hi], dtype=np.int64)


def _access_count_pieces(samples, rows: int = INPUT_PIECE):
    """``(first node, counts)`` pieces of the samples' access counts, in node order (read, not mapped)."""
    spec = getattr(samples, "_counts_spec", None)
    if spec is not None:
        from diskgnn.dataset import ArrayChunks
        yield from ArrayChunks(samples.path, spec, rows)
        return
    counts = samples.access_counts
    for lo in range(0, counts.shape[0], rows):
        yield lo, np.asarray(counts[lo:lo + rows], dtype=np.int64)


def _hottest(count_pieces, capacity: int) -> tuple[np.ndarray, int]:
    """The ``min(capacity, accessed)`` most-accessed nodes, most first, ties by ascending node id, and the number
    of accessed nodes.

    ``count_pieces()`` yields ``(first node, counts)`` in node order (it is walked twice). The
    nodes are found from a histogram of the counts (they are small: at most the number of
    batches), so nothing of the graph's size is sorted or held beyond one piece: the choice is
    the one of sorting every node by (count, -id).
    """
    hist = np.zeros(1, dtype=np.int64)
    for lo, piece in count_pieces():
        if piece.size and int(piece.min()) < 0:
            raise MismatchError(f"the samples' access counts are negative near node {lo}; re-run diskgnn sample")
        h = np.bincount(piece)
        if h.size > hist.size:
            hist = np.concatenate([hist, np.zeros(h.size - hist.size, dtype=np.int64)])
        hist[:h.size] += h
    at_least = np.cumsum(hist[::-1])[::-1]  # at_least[c]: nodes used c times or more
    accessed = int(at_least[1]) if at_least.size > 1 else 0
    want = min(int(capacity), accessed)
    if want <= 0:
        return np.zeros(0, dtype=np.int64), accessed
    c = int(np.flatnonzero(at_least >= want).max())  # the threshold count (>= 1)
    ties = want - (int(at_least[c + 1]) if c + 1 < at_least.size else 0)  # nodes used c times, lowest ids
    nodes, counts = [], []
    for lo, piece in count_pieces():
        pick = np.flatnonzero(piece > c)
        if ties > 0:
            tie = np.flatnonzero(piece == c)[:ties]
            ties -= tie.size
            pick = np.concatenate([pick, tie])
        nodes.append(pick + lo)
        counts.append(piece[pick])
    nodes = np.concatenate(nodes).astype(np.int64)
    counts = np.concatenate(counts)
    return nodes[np.lexsort((nodes, -counts))], accessed


def plan_memory_bytes(total_inputs: int, num_nodes: int, id_itemsize: int, *, num_shards: int = 1,
                      maps_in_place: bool = False) -> int:
    """Bytes the plan of a pack holds at most (an upper bound): the input nodes, their maps (unless computed in
    place over them), the packed rows' nodes, the slot of every node, the shard's access counts."""
    arrays = total_inputs * id_itemsize * (2 if maps_in_place else 3)
    pieces = 8 * (min(INPUT_PIECE, total_inputs) + min(INPUT_PIECE, num_nodes))  # int64 pieces read
    return arrays + pieces + num_nodes * (8 + 2) + (num_nodes * 8 if num_shards > 1 else 0)


def _check_plan_memory(total_inputs: int, n: int, id_itemsize: int, num_shards: int, maps_in_place: bool,
                       budget: int | None) -> None:
    if budget is None:
        return
    need = plan_memory_bytes(total_inputs, n, id_itemsize, num_shards=num_shards, maps_in_place=maps_in_place)
    if need > budget:
        raise MemoryBudgetError(
            f"planning this pack needs about {format_bytes(need)} of memory ({total_inputs} input nodes over the "
            f"batches, {n} nodes) but the memory budget is {format_bytes(budget)}; raise --memory-budget, or pack "
            f"in shards (sample and pack with --num-shards, one shard at a time)")


def _plan(samples, ds: Dataset, cfg: PackConfig, *, num_shards: int, shard: int,
          disk_budget_bytes: int | None = None, max_segment_bytes: int | None = None,
          maps_in_place: bool = False, plan_budget: int | None = None) -> PackPlan:
    """Tiers, maps and layout of a pack; ``maps_in_place`` computes the maps over the input nodes (then
    ``PackPlan.inputs`` is empty: nothing can compute the Belady bound from it)."""
    t0 = time.perf_counter()
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ConfigError(f"--shard must lie in 0..--num-shards-1, got shard {shard} of {num_shards}")
    n = ds.num_nodes
    store_dtype = cfg.store_dtype or ds.feat_dtype
    rb = ds.feat_dim * feature_dtype(store_dtype).itemsize
    tier_bytes = cfg.cache_bytes(ds.feature_bytes)
    _check_tier_memory(tier_bytes)

    # The batches this shard packs, concatenated over parts: node ids in the maps' dtype (int32 below 2**31
    # nodes), so that the maps can be computed in place over them; read in pieces, never mapped whole.
    id_dtype = np.dtype(node_id_dtype(n + 1))
    parts, lens_l, selected, ranges = [], [], [], []
    g = 0
    for part in samples.parts:
        offs = np.asarray(samples.input_offsets(part), dtype=np.int64)
        nb = len(offs) - 1
        parts.append({"name": part, "first_batch": g, "num_batches": nb})
        if num_shards == 1:
            lens_l.append(np.diff(offs))
            selected.append(np.arange(g, g + nb, dtype=np.int64))
            ranges.append((part, [(0, int(offs[-1]))]))
        else:
            mine = np.arange(shard, nb, num_shards)
            lens_l.append(np.diff(offs)[mine])
            selected.append(g + mine)
            ranges.append((part, [(int(offs[i]), int(offs[i + 1])) for i in mine]))
        g += nb
    total_batches = g
    lens = np.concatenate(lens_l) if lens_l else np.zeros(0, dtype=np.int64)
    selected_l = selected
    selected = np.concatenate(selected) if selected else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    if plan_budget is not None and not maps_in_place:
        # the Belady bound reads the input nodes beside its own arrays; where that alone exceeds the budget it
        # is left out anyway, and the maps take the inputs' place (a third less memory)
        total = int(offsets[-1])
        cache_rows = min(sum(tier_bytes[t] // rb for t in TIER_NAMES), n)
        maps_in_place = (not cfg.belady
                         or total * id_dtype.itemsize + belady_memory(total, n, cache_rows) > plan_budget
                         or plan_memory_bytes(total, n, id_dtype.itemsize, num_shards=num_shards) > plan_budget)
    _check_plan_memory(int(offsets[-1]), n, id_dtype.itemsize, num_shards, maps_in_place, plan_budget)
    inputs = np.empty(int(offsets[-1]), dtype=id_dtype)
    pos = 0
    for part, spans in ranges:
        for lo, hi in spans:
            for a in range(lo, hi, INPUT_PIECE):
                piece = _read_inputs(samples, part, a, min(hi, a + INPUT_PIECE))
                if piece.size and (int(piece.min()) < 0 or int(piece.max()) >= n):
                    raise MismatchError(f"the samples hold node ids outside 0..{n - 1} of {ds.path}; they belong "
                                        f"to another graph")
                inputs[pos:pos + piece.size] = piece
                pos += piece.size

    # Tiers: most-accessed rows first; never-accessed rows are never cached.
    if num_shards == 1:
        if int(samples.num_nodes) != n:
            raise MismatchError(f"the samples' access counts cover {samples.num_nodes} nodes, expected {n}")

        def count_pieces():
            return _access_count_pieces(samples)
    else:
        shard_counts = np.bincount(inputs, minlength=n).astype(np.int64)

        def count_pieces():
            return [(0, shard_counts)]
    order, accessed = _hottest(count_pieces, sum(tier_bytes[t] // rb for t in TIER_NAMES))
    want = order.size
    slot_of_node = np.full(n, -1, dtype=np.int32 if n < 2**31 - 1 else np.int64)
    tier_rows, tier_nodes, taken = {}, [], 0
    for t in TIER_NAMES:
        r = min(tier_bytes[t] // rb, want - taken)
        nodes = np.sort(order[taken:taken + r])
        slot_of_node[nodes] = taken + np.arange(r, dtype=slot_of_node.dtype)
        tier_rows[t] = int(r)
        tier_nodes.append(nodes)
        taken += r
    del order
    n_cached = taken
    cache_nodes = np.concatenate(tier_nodes).astype(np.int64) if tier_nodes else np.zeros(0, np.int64)
    map_dtype = node_id_dtype(n + 1)

    nsel = len(offsets) - 1
    budget = disk_budget_bytes
    if budget is None and cfg.disk_budget is not None:
        budget = int(parse_factor(cfg.disk_budget, name="--disk-budget") * ds.feature_bytes)
    part_bounds = np.concatenate([[0], np.cumsum([len(x) for x in selected_l])]).astype(np.int64)
    # under a disk budget the segment search needs the reuse histogram, which also counts each batch's
    # uncached inputs: one pass over the inputs for both
    disk_bits = None if budget is None else disk_bitmap(slot_of_node)  # only segments need it
    hist = None if budget is None else _reuse_histogram(inputs, offsets, disk_bits, part_bounds, n)
    if hist is not None:
        uncached = hist.sum(axis=1)
    else:
        uncached = np.zeros(nsel, dtype=np.int64)
        count_uncached(inputs, offsets, slot_of_node, uncached)
    row_starts = np.concatenate([[0], np.cumsum(uncached)]).astype(np.int64)
    plain_bytes = int(((uncached * rb + (ALIGN - 1)) // ALIGN * ALIGN).sum())
    plain = budget is None or plain_bytes <= budget
    if plain:
        layout, seg_batches = "plain", None
        extent_rows = uncached
        extent_of_batch = np.arange(nsel, dtype=np.int64)
        block_bytes = _order_block_bytes(ds, cfg, plain_bytes, int(np.count_nonzero(uncached)))
    else:
        layout = "segments"
        seg_batches, bounds, extent_rows = _segments(inputs, offsets, disk_bits, hist, part_bounds, rb, budget,
                                                     max_segment_bytes, ds, cfg, plain_bytes)
        extent_of_batch = np.repeat(np.arange(len(bounds) - 1, dtype=np.int64), np.diff(bounds))
        block_bytes = _order_block_bytes(ds, cfg, int(sum(align_up(int(r) * rb) for r in extent_rows)),
                                         int(np.count_nonzero(extent_rows)))
    block_rows = max(block_bytes // ds.row_bytes, 1)
    nblocks = max(-(-n // block_rows), 1)
    if nblocks > 1:  # rows on disk: -1 - their node block (a lookup the maps need anyway, no division)
        for lo in range(0, n, INPUT_PIECE):  # in pieces: no index array of every node on disk
            piece = slot_of_node[lo:lo + INPUT_PIECE]
            on_disk = np.flatnonzero(piece < 0)
            piece[on_disk] = (-1 - (on_disk + lo) // block_rows).astype(piece.dtype)
        del piece, on_disk
    # each batch's kernel reads its inputs before writing their maps: the maps may take the inputs' place
    maps = inputs if maps_in_place else np.empty(inputs.size, dtype=map_dtype)
    extents = len(extent_rows)
    block_starts = np.empty((extents, nblocks + 1), dtype=np.int64)
    if plain:
        row_nodes = np.empty(int(row_starts[-1]), dtype=id_dtype)
        plain_maps(inputs, offsets, slot_of_node, n_cached, row_starts, nblocks, maps, row_nodes, block_starts)
    else:
        row_nodes = np.empty(int(extent_rows.sum()), dtype=id_dtype)
        seg_row_starts = np.concatenate([[0], np.cumsum(extent_rows)]).astype(np.int64)
        segment_block_maps(inputs, offsets, bounds, slot_of_node, disk_bits, n_cached,
                           seg_row_starts, maps, row_nodes, block_starts, segment_group(n))
    del slot_of_node, disk_bits, hist
    if maps_in_place:
        inputs = np.zeros(0, dtype=id_dtype)
    # one read run per non-empty extent; a segment's batches share their segment's run (read once, kept)
    extent_bytes = (extent_rows.astype(np.int64) * rb + (ALIGN - 1)) // ALIGN * ALIGN
    nonempty = extent_rows > 0
    run_lo_of_extent = (np.cumsum(nonempty) - nonempty).astype(np.int64)
    runs = np.zeros((int(nonempty.sum()), 3), dtype=np.int64)
    runs[:, 1] = extent_bytes[nonempty] // ALIGN
    extent_offsets = np.concatenate([[0], np.cumsum(extent_bytes)[:-1]]).astype(np.int64) if extent_bytes.size \
        else np.zeros(0, dtype=np.int64)
    packed_bytes = int(extent_bytes.sum())

    batches = np.zeros((total_batches, 5), dtype=np.int64)
    batches[selected, 0] = offsets[:-1]
    batches[selected, 1] = offsets[1:]
    if nsel:
        batches[selected, 2] = run_lo_of_extent[extent_of_batch]
        batches[selected, 3] = run_lo_of_extent[extent_of_batch] + nonempty[extent_of_batch]
        batches[selected, 4] = extent_offsets[extent_of_batch]
    run_bytes = int(runs[:, 1].sum()) * ALIGN if runs.size else 0  # every extent read once per pass
    useful = int(uncached.sum()) * rb
    bounds_arr = np.cumsum([0] + [tier_rows[t] for t in TIER_NAMES]).astype(np.int64)
    hits = tier_hits(maps, bounds_arr)
    total_access = max(int(maps.size), 1)
    hit_rate = {name: int(h) / total_access for name, h in zip((*TIER_NAMES, "disk"), hits)}
    stats = {
        "feature_bytes": ds.feature_bytes, "plain_bytes": plain_bytes, "packed_bytes": packed_bytes,
        "disk_budget_bytes": budget, "blowup": packed_bytes / ds.feature_bytes,
        "useful_bytes": useful, "run_bytes": run_bytes,
        "read_amplification": run_bytes / useful if useful else 1.0,
        "read_requests": int(runs.shape[0]),
        "accesses": int(maps.size), "accessed_rows": accessed, "cache_rows": n_cached,
        "tier_bytes_requested": tier_bytes,
        "hit_rate": hit_rate, "cache_hit_rate": 1.0 - hit_rate["disk"] if maps.size else 0.0,
        "plan_seconds": time.perf_counter() - t0,
    }
    return PackPlan(store_dtype=store_dtype, row_bytes=rb, tier_rows=tier_rows, cache_nodes=cache_nodes,
                    inputs=inputs, offsets=offsets, maps=maps, batches=batches, runs=runs, row_nodes=row_nodes,
                    extent_rows=extent_rows, extent_offsets=extent_offsets, packed_bytes=packed_bytes,
                    plain_bytes=plain_bytes, layout=layout, segment_batches=seg_batches, parts=parts, stats=stats,
                    block_rows=block_rows, block_starts=block_starts, maps_in_place=maps_in_place)


def _segment_bounds(part_bounds: np.ndarray, g: int) -> np.ndarray:
    """First batch of every segment of ``g`` consecutive batches, never across a part's boundary."""
    starts = [np.arange(int(part_bounds[p]), int(part_bounds[p + 1]), g) for p in range(len(part_bounds) - 1)]
    return np.unique(np.concatenate(starts + [part_bounds[-1:]])).astype(np.int64)


HISTOGRAM_MAX = 64 << 20
"""The largest reuse histogram the segment search builds (batches x lengths x 8 B)."""


def _reuse_histogram(inputs, offsets, on_disk, part_bounds, num_nodes: int) -> np.ndarray | None:
    """:func:`reuse_histogram` of the batches, int64 [nb, D] (summed over threads), or None where it
    would not fit in the memory that the plan's maps and packed-row nodes take later (the plan's
    bound) or exceed :data:`HISTOGRAM_MAX`: one pass over the inputs, after which every segment
    length up to D that the search tries costs no pass."""
    nb = len(offsets) - 1
    threads = numba.get_num_threads()
    longest = max(int(np.diff(part_bounds).max(initial=1)), 1)
    width = max(min(longest, HISTOGRAM_MAX // max(8 * nb * threads, 1)), 1)
    last_dtype = np.int32 if nb < 2**31 - 1 else np.int64
    if num_nodes * np.dtype(last_dtype).itemsize + nb * width * 8 * (threads + 1) > inputs.nbytes or width < 2:
        return None
    last = np.full(num_nodes, -1, dtype=last_dtype)
    hist = np.zeros((threads, nb, width), dtype=np.int64)
    reuse_histogram(inputs, offsets, on_disk, part_bounds, last, hist)
    return hist.sum(axis=0)


def _segments(inputs, offsets, on_disk, hist, part_bounds, rb: int, budget: int, max_segment_bytes: int | None,
              ds: Dataset, cfg: PackConfig, plain_bytes: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The segment layout for a disk budget: ``(batches per segment, segment bounds, rows per segment)``.

    A segment stores each of its batches' uncached rows once; training reads it once per pass
    and keeps it in memory while its batches are assembled, so a segment must fit in
    ``max_segment_bytes``. Longer segments share more rows (a smaller file) but need more
    memory: the shortest length whose file fits ``budget`` is taken.
    """
    longest = max(int(np.diff(part_bounds).max(initial=1)), 1)

    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def rows_of(g: int) -> tuple[np.ndarray, np.ndarray]:
        if g not in seen:
            bounds = _segment_bounds(part_bounds, g)
            if hist is not None and g <= hist.shape[1]:  # from the histogram: no pass over the inputs
                rows = np.zeros(len(bounds) - 1, dtype=np.int64)
                segment_rows_from_histogram(hist, part_bounds, bounds, rows)
            else:  # a pass over every input
                rows = segment_row_counts(inputs, offsets, on_disk, bounds)
            seen[g] = bounds, rows
        return seen[g]

    def file_bytes(rows: np.ndarray) -> int:
        return int(((rows * rb + ALIGN - 1) // ALIGN * ALIGN).sum())

    bounds, rows = rows_of(longest)
    minimum = file_bytes(rows)
    if minimum > budget:
        raise ConfigError(
            f"--disk-budget {cfg.disk_budget or format_bytes(budget)} ({format_bytes(budget)}) is below the smallest "
            f"possible packed size: even storing each of the rows that batches read from disk once per part (one "
            f"segment per part) takes {format_bytes(minimum)} = {minimum / ds.feature_bytes:.3f}x the feature "
            f"bytes. Raise --disk-budget to at least {math.ceil(minimum / ds.feature_bytes * 100) / 100:.2f}x, or "
            f"cache more rows (--host-cache) so fewer go to disk")

    # the shortest segments whose file fits: sizes fall smoothly with log(g), so interpolate there
    # (bisecting where that stalls) and stop within 1/16 of the length: a few passes over the inputs
    lo, lo_bytes = 1, plain_bytes  # one batch per segment is the plain layout, which does not fit
    hi, hi_bytes = longest, minimum
    while hi - lo > max(1, hi // 16):
        t = (math.log(lo_bytes) - math.log(budget)) / max(math.log(lo_bytes) - math.log(hi_bytes), 1e-12)
        guess = math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))
        step = max((hi - lo) // 8, 1)
        mid = int(min(max(round(guess), lo + step), hi - step))
        mid_bytes = file_bytes(rows_of(mid)[1])
        if mid_bytes <= budget:
            hi, hi_bytes = mid, mid_bytes
        else:
            lo, lo_bytes = mid, mid_bytes
    g = hi
    bounds, rows = rows_of(g)
    largest = int(rows.max(initial=0)) * rb
    if max_segment_bytes is not None and largest > max_segment_bytes:
        a, b = 1, g  # the longest segments that fit the memory limit, to say what budget they need
        while b - a > 1:
            mid = (a + b) // 2
            a, b = (mid, b) if int(rows_of(mid)[1].max(initial=0)) * rb <= max_segment_bytes else (a, mid)
        need = file_bytes(rows_of(a)[1])
        raise MemoryBudgetError(
            f"--disk-budget {cfg.disk_budget or format_bytes(budget)} needs segments of {g} batches, and the largest "
            f"holds {format_bytes(largest)} of rows; training reads a segment once and keeps it in memory while its "
            f"batches are assembled, so a segment may take at most {format_bytes(max_segment_bytes)} "
            f"(--segment-memory; by default a quarter of --memory-budget). Segments of {a} batches fit, and "
            f"pack to {format_bytes(need)} = {need / ds.feature_bytes:.2f}x the feature bytes: raise --disk-budget "
            f"to {math.ceil(need / ds.feature_bytes * 100) / 100:.2f}x, or raise --segment-memory to "
            f"{format_bytes(largest)} (training then needs that much for a segment, twice to read the next one "
            f"ahead), or cache more rows (--host-cache)")
    return g, bounds, rows


ORDER_BLOCK_MIN = 64 << 20
ORDER_BLOCK_MAX = 1 << 30
PIECE_TARGET = 256 << 10
"""Without ``order_block`` the order block is sized so that an average extent gets about this many bytes
from each block: writes of ~256 KiB run at the sequential speed on the disks measured here, 56 KiB ones
at less than half of it."""


STREAM_STAGING_MAX = 128 << 20
"""Without ``order_block``, the block is also small enough that the rows every extent takes from one block
(one staging buffer of the stream write mode; two are held) average at most this: where the packed rows
are many times the feature bytes (deep or typed batches), a 64 MiB block would stage gigabytes."""
STREAM_WRITE_DEPTH = 16
"""Piece writes in flight when streaming (8 left the writes behind the reads in A/B runs at scale m)."""


def _order_block_bytes(ds: Dataset, cfg: PackConfig, plain_bytes: int, extents: int) -> int:
    """Bytes of features.bin per node block of the plain layout's row order (a multiple of the chunk unit).

    It depends only on the plan and ``order_block`` (never on the memory budget or the chunk
    size), so a pack's bytes are the same for any budget.
    """
    if cfg.order_block is not None:
        return _chunk_bytes(ds, parse_size(cfg.order_block, name="order_block"))
    avg_extent = plain_bytes / max(extents, 1)
    want = PIECE_TARGET * ds.feature_bytes / max(avg_extent, 1.0)
    block = min(max(want, ORDER_BLOCK_MIN), ORDER_BLOCK_MAX)
    # staging ~ plain_bytes * block / feature_bytes: bounded (a plan-only choice still), unless that would cut
    # the average write below half the piece target
    block = min(block, max(STREAM_STAGING_MAX * ds.feature_bytes / max(plain_bytes, 1), want / 2))
    return _chunk_bytes(ds, int(block))


def belady_hit_rate(trace: np.ndarray, num_nodes: int, capacity: int) -> float:
    """Hit rate of the optimal offline cache (Belady's MIN with bypass) of ``capacity`` rows on ``trace``.

    The cache starts full with the rows used first (a preload, as the static tiers have), so the
    bound is comparable with the tiers' hit rate.
    """
    t = int(trace.size)
    if t == 0 or capacity <= 0:
        return 0.0
    idx = np.int32 if t < 2**31 - 1 else np.int64
    nxt = np.empty(t, dtype=idx)
    first = np.empty(num_nodes, dtype=idx)
    next_use(trace, first, nxt)
    used = np.flatnonzero(first < t)
    k = min(int(capacity), used.size)
    if k < used.size:
        used = used[np.argpartition(first[used], k - 1)[:k]]
    preload_keys = first[used].astype(np.int64)
    del first
    pos = np.empty(num_nodes, dtype=np.int64)
    return belady_hits(trace, nxt, pos, int(capacity), used.astype(np.int64), preload_keys) / t


def _timed_belady(trace: np.ndarray, num_nodes: int, capacity: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    rate = belady_hit_rate(trace, num_nodes, capacity)
    return rate, time.perf_counter() - t0


def footprint_bytes(plan: PackPlan) -> dict:
    """Bytes of every file a pack with ``plan`` writes."""
    tier = {t: plan.tier_rows[t] * plan.row_bytes for t in TIER_NAMES}
    index = (plan.maps.nbytes + plan.batches.nbytes + plan.runs.nbytes + plan.cache_nodes.nbytes)
    return {"packed": plan.packed_bytes, "tiers": tier, "index": int(index),
            "total": plan.packed_bytes + sum(tier.values()) + int(index)}


def belady_memory(trace_len: int, num_nodes: int, capacity: int) -> int:
    """Bytes :func:`belady_hit_rate` allocates for a trace of ``trace_len`` accesses."""
    idx = 4 if trace_len < 2**31 - 1 else 8
    return trace_len * idx + num_nodes * (idx + 8) + capacity * 16


AUTO_CHUNK_MAX = 256 << 20
"""The largest chunk ``pack`` picks by itself: larger chunks stream no faster."""
AUTO_CHUNK_MIN = 8 << 20
"""The smallest chunk ``pack`` picks by itself: sequential reads this large still run at the disk's full speed."""
BUCKET_BYTES_PER_ROW = 24
"""Memory per row of an output group while it fills: its destination, then its bucketed position and destination."""


def _chunk_unit(ds: Dataset) -> int:
    """Chunks start on a row and a page boundary: they are multiples of lcm(row bytes, 4096)."""
    return ds.row_bytes * ALIGN // math.gcd(ds.row_bytes, ALIGN)


def _chunk_bytes(ds: Dataset, wanted: int) -> int:
    unit = _chunk_unit(ds)
    return min(max(unit, wanted // unit * unit), align_up(ds.feature_bytes, unit))


def _fixed_bytes(plan: PackPlan, ds: Dataset, cfg: PackConfig, chunk_bytes: int) -> int:
    """Memory of writing the rows besides the output buffers and their bucketed rows, with chunks of ``chunk_bytes``.

    The packed rows' nodes, the cached nodes, two chunk buffers and a converted copy: the input
    nodes and maps are released once the index is written (the plan's own peak is bounded by
    :func:`plan_memory_bytes`), except that the Belady bound reads the input nodes.
    """
    fixed = plan.row_nodes.nbytes + plan.cache_nodes.nbytes + 3 * chunk_bytes
    if cfg.belady:  # the Belady bound runs beside the writes: its arrays and its trace share the budget
        fixed += plan.inputs.nbytes + belady_memory(int(plan.maps.size), ds.num_nodes, sum(plan.tier_rows.values()))
    return int(fixed)


def _max_extent(plan: PackPlan) -> int:
    return int(align_up(int(plan.extent_rows.max(initial=0)) * plan.row_bytes))


def pack_memory(plan: PackPlan, ds: Dataset, cfg: PackConfig, chunk_bytes: int | None = None) -> tuple[int, int, int]:
    """(chunk bytes, memory used besides the output groups, largest extent) of packing ``plan``.

    ``chunk_bytes`` defaults to ``--chunk-size`` (the largest automatic chunk when there is none).
    Two output buffers of at least the largest extent (and :data:`BUCKET_BYTES_PER_ROW` per row
    of a group) come on top; the larger they are, the fewer passes over features.bin.
    """
    if chunk_bytes is None:
        chunk_bytes = AUTO_CHUNK_MAX if cfg.chunk_size is None else parse_size(cfg.chunk_size, name="--chunk-size")
    chunk_bytes = _chunk_bytes(ds, chunk_bytes)
    return chunk_bytes, _fixed_bytes(plan, ds, cfg, chunk_bytes), _max_extent(plan)


@dataclass(frozen=True, slots=True)
class PackMemory:
    """How ``pack`` spends its memory budget (what :func:`plan_pack_memory` decided)."""
    budget: int
    """The memory budget in bytes."""
    chunk_bytes: int
    """Bytes of features.bin per streamed chunk (three buffers: two being read, one converted copy)."""
    group_bytes: int
    """Bytes of an output buffer: the largest group of consecutive extents written at once."""
    buffers: int
    """Output buffers (two when there are several groups: one is written while the other fills)."""
    bucket_bytes: int
    """The largest group's rows bucketed by chunk (:data:`BUCKET_BYTES_PER_ROW` each)."""
    fixed_bytes: int
    """Memory besides the output groups: indexes, chunk buffers, the Belady arrays."""
    passes: int
    """Passes over features.bin (one per group; one for the tiers alone)."""
    reason: str
    """Why this chunk size, in words (logged)."""
    mode: str = "groups"
    """``groups``, or ``stream``: then ``chunk_bytes`` is the order block, ``group_bytes`` one of the two
    staging buffers and ``bucket_bytes`` the carried pages."""

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + self.buffers * self.group_bytes + self.bucket_bytes


def _stream_staging(plan: PackPlan) -> tuple[int, np.ndarray]:
    """(largest staging buffer, write bytes per block) of streaming ``plan``'s plain layout."""
    rb, bs = plan.row_bytes, plan.block_starts
    lo, hi = bs[:, :-1], bs[:, 1:]
    first = lo * rb // ALIGN * ALIGN
    alloc = np.where(hi > lo, (hi * rb + ALIGN - 1) // ALIGN * ALIGN - first, 0)
    per_block = alloc.sum(axis=0) if alloc.size else np.zeros(0, dtype=np.int64)
    return int(per_block.max(initial=0)), per_block


def _stream_memory(plan: PackPlan, ds: Dataset, cfg: PackConfig, budget: int) -> PackMemory | None:
    """The memory of streaming ``plan`` (None where the layout cannot stream or ``write_mode`` forbids it)."""
    if plan.block_starts is None or cfg.write_mode == "groups" or plan.packed_bytes == 0:
        return None
    block = plan.block_rows * ds.row_bytes
    chunk = min(block, align_up(ds.feature_bytes, _chunk_unit(ds)))
    staging, per_block = _stream_staging(plan)
    carry = plan.block_starts.shape[0] * ALIGN
    fixed = _fixed_bytes(plan, ds, cfg, chunk) + plan.block_starts.nbytes
    avg_piece = _average_piece(plan)
    return PackMemory(budget=budget, chunk_bytes=chunk, group_bytes=staging, buffers=2, bucket_bytes=carry,
                      fixed_bytes=fixed, passes=1, mode="stream",
                      reason=f"one pass in blocks of {format_bytes(chunk)}, writes of {format_bytes(avg_piece)} "
                             f"on average")


def _extent_ends(plan: PackPlan) -> np.ndarray:
    sizes = (plan.extent_rows.astype(np.int64) * plan.row_bytes + (ALIGN - 1)) // ALIGN * ALIGN
    return plan.extent_offsets.astype(np.int64) + sizes


def _groups(plan: PackPlan, group_bytes: int) -> list[tuple[int, int]]:
    """Consecutive extents [e0, e1) whose bytes fit one output buffer (greedy: the fewest groups)."""
    ends = _extent_ends(plan)
    groups, e0, num = [], 0, len(plan.extent_rows)
    while e0 < num:
        e1 = max(int(np.searchsorted(ends, int(plan.extent_offsets[e0]) + group_bytes, side="right")), e0 + 1)
        if ends[e1 - 1] > plan.extent_offsets[e0] or e1 < num:  # trailing empty extents need no group
            groups.append((e0, e1))
        e0 = e1
    return groups


def _layout_with(plan: PackPlan, budget: int, fixed: int, max_extent: int) -> tuple[int, int, int, int] | None:
    """(passes, group bytes, buffers, bucket bytes) of packing with ``budget - fixed`` bytes for the output
    groups; None if that is too small."""
    room = budget - fixed
    tiers_pass = 1 if plan.cache_nodes.size else 0
    if plan.packed_bytes == 0:
        return (tiers_pass, 0, 0, 0) if room >= 0 else None
    all_rows = int(plan.extent_rows.sum())
    if plan.packed_bytes + BUCKET_BYTES_PER_ROW * all_rows <= room:  # one group: one buffer, none to overlap with
        return 1, plan.packed_bytes, 1, BUCKET_BYTES_PER_ROW * all_rows
    # two buffers, and the rows of one group (at most group bytes / row bytes) bucketed
    half = int(room // (2 + BUCKET_BYTES_PER_ROW / plan.row_bytes)) // ALIGN * ALIGN if room > 0 else 0
    if half < max_extent:
        return None
    groups = _groups(plan, half)
    ends = _extent_ends(plan)
    rows = np.concatenate([[0], np.cumsum(plan.extent_rows)])
    largest = max(int(ends[e1 - 1] - plan.extent_offsets[e0]) for e0, e1 in groups)
    most_rows = max(int(rows[e1] - rows[e0]) for e0, e1 in groups)
    return max(len(groups), tiers_pass), largest, 2 if len(groups) > 1 else 1, BUCKET_BYTES_PER_ROW * most_rows


def plan_pack_memory(plan: PackPlan, ds: Dataset, cfg: PackConfig, budget: int) -> PackMemory:
    """Chunk size and output buffers of packing ``plan`` within ``budget`` bytes, with the fewest passes.

    Every byte not spent on chunk buffers goes to the output groups, and larger groups mean
    fewer passes over features.bin; so without ``--chunk-size`` the chunk is the largest one
    (at most :data:`AUTO_CHUNK_MAX`, at least :data:`AUTO_CHUNK_MIN`) that still reaches the
    fewest passes the smallest chunk allows (passes only grow with the chunk: a binary search).
    """
    stream = _stream_memory(plan, ds, cfg, budget)
    if stream is not None and cfg.write_mode == "stream":
        if stream.total_bytes > budget:
            raise MemoryBudgetError(
                f"streaming the packed rows needs {format_bytes(stream.total_bytes)} of memory (blocks of "
                f"{format_bytes(stream.chunk_bytes)}, two staging buffers of {format_bytes(stream.group_bytes)}) "
                f"but the memory budget is {format_bytes(budget)}; raise --memory-budget, lower --chunk-size, "
                f"or let diskgnn choose the write mode")
        return stream
    stream_fits = stream is not None and stream.total_bytes <= budget
    try:
        groups = _groups_memory(plan, ds, cfg, budget)
    except MemoryBudgetError:
        if not stream_fits:
            raise
        return stream
    if not stream_fits:
        return groups
    # both fit: streaming is one pass with the writes overlapping the reads; a single group is one pass
    # too, with one large sequential write at the end, better when the stream's writes would be small
    if groups.passes == 1 and _average_piece(plan) < PIECE_TARGET // 2:
        return groups
    return stream


def _average_piece(plan: PackPlan) -> float:
    """Average bytes written per extent and block when streaming."""
    pieces = int(np.count_nonzero(plan.block_starts[:, 1:] > plan.block_starts[:, :-1]))
    return plan.packed_bytes / max(pieces, 1)


def _groups_memory(plan: PackPlan, ds: Dataset, cfg: PackConfig, budget: int) -> PackMemory:
    """The memory of the ``groups`` write mode; MemoryBudgetError if even two extents do not fit."""
    max_extent = _max_extent(plan)

    def layout(chunk: int):
        return _layout_with(plan, budget, _fixed_bytes(plan, ds, cfg, chunk), max_extent)

    def refuse(chunk: int, chunk_fix: str):
        need = (_fixed_bytes(plan, ds, cfg, chunk) + min(2 * max_extent, plan.packed_bytes)
                + BUCKET_BYTES_PER_ROW * max_extent // plan.row_bytes)
        raise MemoryBudgetError(
            f"packing needs at least {format_bytes(need)} of memory (two buffers of the largest extent, "
            f"{format_bytes(max_extent)}, plus indexes and chunks of {format_bytes(chunk)}) but the memory budget "
            f"is {format_bytes(budget)}; raise --memory-budget, {chunk_fix}, or use a larger --disk-budget")

    if cfg.chunk_size is not None:
        chunk = _chunk_bytes(ds, parse_size(cfg.chunk_size, name="--chunk-size"))
        chosen = layout(chunk)
        if chosen is None:
            refuse(chunk, "lower --chunk-size")
        reason = "--chunk-size given"
    else:
        unit = _chunk_unit(ds)
        top = _chunk_bytes(ds, AUTO_CHUNK_MAX)
        floor = _chunk_bytes(ds, min(AUTO_CHUNK_MIN, top))
        at_floor, at_top = layout(floor), layout(top)
        if at_floor is None:
            refuse(floor, f"the chunk is already down to {format_bytes(floor)}")
        fewest = at_floor[0]
        if at_top is not None and at_top[0] == fewest:
            chunk, chosen = top, at_top
            reason = f"chunks of {format_bytes(chunk)} already give the fewest passes"
        else:
            good, bad = floor // unit, top // unit  # layout(good * unit) reaches the fewest passes, bad does not
            while bad - good > 1:
                mid = (good + bad) // 2
                got = layout(mid * unit)
                good, bad = (mid, bad) if got is not None and got[0] == fewest else (good, mid)
            chunk = good * unit
            chosen = layout(chunk)
            was = (f"the output groups would take {at_top[0]} passes" if at_top is not None
                   else "two buffers of the largest extent would not fit")
            reason = (f"chunk shrunk from {format_bytes(top)}: beside its three chunk buffers {was}; "
                      f"{format_bytes(chunk)} is the largest chunk that needs only {fewest}")
    passes, group_bytes, buffers, bucket_bytes = chosen
    return PackMemory(budget=budget, chunk_bytes=chunk, group_bytes=group_bytes, buffers=buffers,
                      bucket_bytes=bucket_bytes, fixed_bytes=_fixed_bytes(plan, ds, cfg, chunk), passes=passes,
                      reason=reason)


def pack(samples_dir, out, cfg: PackConfig, *, dataset=None, overwrite: bool = False,
         progress: ProgressFn = no_progress, memory_budget=None, num_shards: int = 1, shard: int = 0,
         journal_every=None) -> Packed:
    """Pack the features of the samples in ``samples_dir`` into the directory ``out``; see the module doc.

    ``journal_every`` (bytes or text such as ``64M``; default :data:`JOURNAL_BYTES`): in the stream
    write mode, how much of features.bin is read between two resume journals.
    """
    from diskgnn.threads import start_numba_threads
    start_numba_threads()  # idle scatter threads sleep while the reader and writer use the cores
    t0 = time.perf_counter()
    journal_bytes = JOURNAL_BYTES if journal_every is None else parse_size(journal_every, name="--journal-every")
    if journal_bytes < 1:
        raise ConfigError(f"--journal-every must be positive, got {journal_every!r}")
    samples = _open_samples(samples_dir)
    ds = _open_dataset(samples, dataset)
    budget = resolve_memory_budget(memory_budget, fraction=MEMORY_SHARE)
    max_segment = segment_memory_limit(cfg, budget)
    plan = _plan(samples, ds, cfg, num_shards=num_shards, shard=shard, max_segment_bytes=max_segment,
                 plan_budget=budget)
    plan = _fit_free_space(plan, samples, ds, cfg, Path(out), overwrite, num_shards=num_shards, shard=shard,
                           max_segment_bytes=max_segment, plan_budget=budget)
    if plan.maps_in_place and cfg.belady:
        log.warning("the Belady bound of the cache needs %s with its trace, more than the %s budget: not computed "
                    "this time", format_bytes(plan.maps.nbytes + belady_memory(int(plan.maps.size), ds.num_nodes,
                                                                             sum(plan.tier_rows.values()))),
                    format_bytes(budget))
    memory, with_belady = _pack_memory_and_bound(plan, ds, replace(cfg, belady=cfg.belady and not plan.maps_in_place),
                                                 budget)
    chunk_bytes, group_bytes = memory.chunk_bytes, memory.group_bytes
    log.info("pack memory: %s of the %s budget = %s for indexes, chunks and the Belady bound + %d output "
             "buffer(s) of %s + %s of bucketed rows; chunks of %s, %d pass(es) over %s (%s)",
             format_bytes(memory.total_bytes), format_bytes(budget), format_bytes(memory.fixed_bytes),
             memory.buffers, format_bytes(group_bytes), format_bytes(memory.bucket_bytes),
             format_bytes(chunk_bytes), memory.passes, ds.features_path, memory.reason)
    journal = None
    if memory.mode == "stream":  # a run of the same command killed midway is resumed from its last journal
        key = _resume_key(samples, ds, cfg, plan, memory, num_shards, shard)
        out, journal = prepare_resumable_output_dir(out, key, overwrite=overwrite)
    else:
        out = prepare_output_dir(out, overwrite=overwrite)
    need = footprint_bytes(plan)["total"]  # exact: the plan fixes every file's size
    expect_output_bytes(out, need)
    if journal is None:
        check_free_space(out, need, "the packed features")
    try:
        files = _write_index(out, plan)
        # the maps are on disk and the input nodes are only the Belady bound's trace: release them for the writes
        # (new empty arrays: a [:0] view would keep the whole buffer alive through the writes)
        plan = replace(plan, maps=np.zeros(0, dtype=plan.maps.dtype),
                       inputs=plan.inputs if with_belady else np.zeros(0, dtype=plan.inputs.dtype))
        belady = None
        if with_belady:  # a nogil kernel: it runs on the other core while packing waits on the disk
            belady = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diskgnn-belady")
            belady_future = belady.submit(_timed_belady, plan.inputs, ds.num_nodes, sum(plan.tier_rows.values()))
        t_io = time.perf_counter()
        try:
            if memory.mode == "stream":
                try:
                    io_stats = _stream_rows(out, plan, ds, memory, progress, key, journal, journal_bytes)
                except _CannotResume as exc:
                    log.warning("cannot resume %s (%s): packing from the start", out, exc)
                    _clear_except(out, {*(Path(f["path"]).name for f in files.values()), ".diskgnn-partial"})
                    plan.runs[:, 2] = 0
                    io_stats = _stream_rows(out, plan, ds, memory, progress, key, None, journal_bytes)
            else:
                io_stats = _write_rows(out, plan, ds, chunk_bytes, group_bytes, progress)
            io_end = time.perf_counter()
        finally:
            if belady is not None:
                belady.shutdown(wait=True)
        io_seconds = io_end - t_io  # the writes alone: waiting for the Belady figure is counted apart
        belady_wait = time.perf_counter() - io_end
        files.update(io_stats.pop("files"))
        files["runs"] = _write_array(out, "runs", plan.runs)  # their checksums were filled while writing
        stats = dict(plan.stats)
        stats.update(io_stats)
        stats["io_seconds"] = io_seconds
        stats["memory_budget_bytes"] = budget
        stats["memory_plan_bytes"] = memory.total_bytes
        stats["chunk_reason"] = memory.reason
        stats["write_GBps"] = io_stats["bytes_written"] / io_seconds / 1e9 if io_seconds > 0 else None
        stats["read_GBps"] = io_stats["bytes_read"] / io_seconds / 1e9 if io_seconds > 0 else None
        if belady is not None:
            stats["belady_hit_rate"], stats["belady_seconds"] = belady_future.result()
            stats["belady_wait_seconds"] = belady_wait
        total_bytes = sum(ArraySpec.from_json(f, "pack").nbytes for f in files.values())
        (out / RESUME_JOURNAL).unlink(missing_ok=True)  # the output is the same as an uninterrupted run's
        (out / RESUME_CARRY).unlink(missing_ok=True)
        stats["footprint"] = total_bytes / ds.feature_bytes
        stats["footprint_bytes"] = total_bytes
        stats["seconds"] = time.perf_counter() - t0
        body = {
            "samples": {"path": str(Path(getattr(samples, "path", "")).resolve()),
                        "relpath": os.path.relpath(Path(getattr(samples, "path", "")).resolve(), out.resolve()),
                        "fingerprint": samples_fingerprint(samples)},
            "dataset": {"path": str(ds.path.resolve()), "relpath": os.path.relpath(ds.path.resolve(), out.resolve()),
                        "fingerprint": ds.fingerprint},
            "config": cfg.to_json(), "num_nodes": ds.num_nodes, "feat_dim": ds.feat_dim,
            "source_dtype": ds.feat_dtype, "store_dtype": plan.store_dtype, "row_bytes": plan.row_bytes,
            "n_cached": int(plan.cache_nodes.size),
            "tiers": [{"name": t, "rows": plan.tier_rows[t]} for t in TIER_NAMES],
            "layout": plan.layout, "segment_batches": plan.segment_batches, "block_rows": plan.block_rows,
            "parts": plan.parts,
            "shard": {"num_shards": num_shards, "shard": shard},
            "files": files, "stats": stats,
        }
        write_manifest(out, FORMAT, VERSION, body)
        finish_output_dir(out)
    except BaseException:
        abort_output_dir(out)
        raise
    log.info("packed %s: %s on disk (%.2fx the features), %s layout, cache hit rate %.3f, %.1f s",
             out, format_bytes(stats["footprint_bytes"]), stats["footprint"], plan.layout, stats["cache_hit_rate"],
             stats["seconds"])
    return Packed.open(out, samples=samples, dataset=ds)


def _pack_memory_and_bound(plan: PackPlan, ds: Dataset, cfg: PackConfig, budget: int) -> tuple[PackMemory, bool]:
    """The write plan within ``budget``, and whether the Belady bound is computed beside the writes.

    The bound is only a figure for the report: when its arrays would push the writes into more
    passes (or out of the budget), it is left out, with a warning.
    """
    try:
        memory = plan_pack_memory(plan, ds, cfg, budget)
    except MemoryBudgetError:
        if not cfg.belady:
            raise
        memory = None
    if not cfg.belady or (memory is not None and (memory.mode == "stream" or memory.passes <= 1)):
        return memory, cfg.belady
    lean = plan_pack_memory(plan, ds, replace(cfg, belady=False), budget)
    if memory is not None and lean.passes >= memory.passes and lean.mode != "stream":
        return memory, True
    log.warning("the Belady bound of the cache needs %s beside the writes, more than the %s budget leaves: "
                "not computed this time", format_bytes(belady_memory(int(plan.inputs.size), ds.num_nodes,
                                                                     sum(plan.tier_rows.values()))),
                format_bytes(budget))
    return lean, False


def _clear_except(out: Path, keep: set) -> None:
    """Remove every entry of the unfinished ``out`` but ``keep`` (the index files this run just wrote)."""
    import shutil
    for entry in out.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _write_array(out: Path, name: str, array: np.ndarray) -> dict:
    with Crc32Writer(out / f"{name}.bin") as w:
        if array.size:
            w.write(np.ascontiguousarray(array))
        info = w.close()
    return ArraySpec(path=f"{name}.bin", dtype=array.dtype.newbyteorder("<").str, shape=tuple(array.shape),
                     crc32=info["crc32"]).to_json()


def _write_index(out: Path, plan: PackPlan) -> dict:
    return {name: _write_array(out, name, arr) for name, arr in
            (("maps", plan.maps), ("batches", plan.batches), ("cache_nodes", plan.cache_nodes))}


def _run_checksums(plan: PackPlan, buf: np.ndarray, g_lo: int, g_hi: int) -> None:
    """Fill the crc32 of every read run whose extent lies in the buffer holding packed.bin[g_lo:g_hi]."""
    b = plan.batches
    inside = b[(b[:, 3] > b[:, 2]) & (b[:, 4] >= g_lo) & (b[:, 4] < g_hi)][:, 2:5]
    for lo, hi, base in np.unique(inside, axis=0).tolist():  # a segment's batches share its run
        base -= g_lo
        for r in range(lo, hi):
            a = base + int(plan.runs[r, 0]) * ALIGN
            plan.runs[r, 2] = zlib.crc32(buf[a:a + int(plan.runs[r, 1]) * ALIGN])


RESUME_CARRY = "resume-carry.bin"
"""Beside the journal of a streamed pack: the carried partial pages and the tier files' staged bytes."""
JOURNAL_BYTES = 1 << 30
"""A streamed pack journals its progress after about this many bytes of features.bin."""


class _CannotResume(Exception):
    """The files an interrupted pack left do not match its journal: start from zero."""


def _resume_key(samples, ds: Dataset, cfg: PackConfig, plan: PackPlan, memory: "PackMemory", num_shards: int,
                shard: int) -> dict:
    return {"format": FORMAT, "version": VERSION, "config": cfg.to_json(), "samples": samples_fingerprint(samples),
            "dataset": ds.fingerprint, "shard": [num_shards, shard], "mode": memory.mode,
            "block_bytes": memory.chunk_bytes, "packed_bytes": plan.packed_bytes,
            "tier_rows": [plan.tier_rows[t] for t in TIER_NAMES]}


def _extent_written(plan: PackPlan, c: int) -> np.ndarray:
    """Bytes of each extent on disk once blocks 0 .. c-1 are written (whole pages; a complete extent padded)."""
    rows = plan.block_starts[:, c]
    full = rows == plan.extent_rows
    return np.where(full, (rows * plan.row_bytes + ALIGN - 1) // ALIGN * ALIGN, rows * plan.row_bytes // ALIGN * ALIGN)


def _check_resumed_extents(path: Path, plan: PackPlan, written: np.ndarray, crcs: np.ndarray) -> None:
    """Every extent's written prefix must have the journaled crc32 (else :class:`_CannotResume`)."""
    with open(path, "rb", buffering=0) as fh:
        for e in np.flatnonzero(written > 0):
            lo, n = int(plan.extent_offsets[e]), int(written[e])
            crc, done = 0, 0
            while done < n:
                block = os.pread(fh.fileno(), min(n - done, 64 << 20), lo + done)
                if not block:
                    raise _CannotResume(f"{path} ends before extent {e}")
                crc = zlib.crc32(block, crc)
                done += len(block)
            if crc != int(crcs[e]):
                raise _CannotResume(f"extent {e} of {path} does not match its journaled checksum")


class _TierFiles:
    """The memory tiers' files, written while features.bin streams by (nodes ascending inside a tier).

    :meth:`add` gathers a chunk's cached rows (nogil) into one reused buffer, sized up front for the
    chunk holding the most, and appends them to their tier's file; ``resume``/``staged`` continue the
    files of an interrupted streamed pack (see :meth:`AlignedWriter.checkpoint`).
    """

    def __init__(self, out: Path, plan: PackPlan, rows_per_chunk: int, nchunks: int,
                 resume: list | None = None, staged: list | None = None):
        bounds = np.cumsum([0] + [plan.tier_rows[t] for t in TIER_NAMES]).astype(np.int64)
        self.nodes = [plan.cache_nodes[bounds[k]:bounds[k + 1]] for k in range(len(TIER_NAMES))]
        most = max((int(np.diff(np.searchsorted(tn, np.arange(0, nchunks + 1) * rows_per_chunk)).max())
                    for tn in self.nodes if tn.size), default=0)
        self._picked = np.empty((most, plan.row_bytes), dtype=np.uint8)
        self._positions = np.arange(most, dtype=np.int64)
        self.plan = plan
        resume = resume or [None] * len(TIER_NAMES)
        self.writers = [AlignedWriter(out / f"tier_{t}.bin", resume=resume[k]) for k, t in enumerate(TIER_NAMES)]
        for w, data in zip(self.writers, staged or ()):
            if data:
                w.write(np.frombuffer(data, dtype=np.uint8))

    def add(self, rows: np.ndarray, lo_node: int) -> None:
        """Append the cached rows among ``rows`` (uint8 [R, row bytes], nodes lo_node ..) to their tiers."""
        for tn, w in zip(self.nodes, self.writers):
            a, b = np.searchsorted(tn, [lo_node, lo_node + rows.shape[0]])
            if b > a:
                picked = self._picked[:b - a]
                gather_rows(rows, tn[a:b] - lo_node, self._positions[:b - a], picked)
                w.write(picked)

    def close(self, files: dict, feat_dim: int) -> int:
        """Finish every tier file, add its spec to ``files``; returns the bytes written."""
        store_dtype = feature_dtype(self.plan.store_dtype).newbyteorder("<").str
        written = 0
        for t, w in zip(TIER_NAMES, self.writers):
            info = w.close()
            files[f"tier_{t}"] = ArraySpec(path=f"tier_{t}.bin", dtype=store_dtype,
                                           shape=(self.plan.tier_rows[t], feat_dim), crc32=info["crc32"]).to_json()
            written += info["bytes"]
        return written

    def abort(self) -> None:
        for w in self.writers:
            w.abort()


def _extent_crcs(view: np.ndarray, extents: np.ndarray, buf_offsets: np.ndarray, lengths: np.ndarray,
                 crcs: np.ndarray, done: np.ndarray, run_of_extent: np.ndarray, runs: np.ndarray) -> None:
    """Extend each extent's running crc32 with its piece (pieces of an extent arrive in file order)."""
    for e, o, n, fin in zip(extents.tolist(), buf_offsets.tolist(), lengths.tolist(), done.tolist()):
        crcs[e] = zlib.crc32(view[o:o + n], int(crcs[e]))
        if fin:
            runs[run_of_extent[e], 2] = crcs[e]


def _stream_rows(out: Path, plan: PackPlan, ds: Dataset, memory: PackMemory, progress: ProgressFn,
                 key: dict | None = None, journal: dict | None = None, journal_bytes: int | None = None) -> dict:
    """Read features.bin once, block by block; write each block's stretch of every extent as soon as it is staged.

    The plain layout orders an extent's rows by node block (:func:`plain_maps`), so block c's rows
    of extent e are one contiguous stretch that follows block c-1's: it is staged in a page-aligned
    piece (the partial page before it comes from the carry of the previous block) and written at
    once, while the next block is read. Memory: the blocks being read, two staging buffers, one
    carried page per extent; the writes overlap the reads and there is no write tail.
    """
    n, f = ds.num_nodes, ds.feat_dim
    src_dtype = feature_dtype(ds.feat_dtype)
    rb, src_rb = plan.row_bytes, ds.row_bytes
    block_rows = plan.block_rows
    chunk_bytes = memory.chunk_bytes
    if chunk_bytes != block_rows * src_rb and chunk_bytes < ds.feature_bytes:
        raise ConfigError(f"internal: stream chunk {chunk_bytes} is not the order block {block_rows * src_rb}")
    file_end = n * src_rb
    bs = plan.block_starts
    num_ext = bs.shape[0]
    ext_rows = plan.extent_rows.astype(np.int64)
    row_starts = np.concatenate([[0], np.cumsum(ext_rows)]).astype(np.int64)
    ext_offsets = plan.extent_offsets.astype(np.int64)
    run_of_extent = np.cumsum(ext_rows > 0) - 1  # one run per non-empty extent, in order (both layouts)
    nblocks = bs.shape[1] - 1
    carry = np.zeros((num_ext, ALIGN), dtype=np.uint8)
    staging = [aligned_empty(memory.group_bytes), aligned_empty(memory.group_bytes)]
    words = rb % 8 == 0
    crcs = np.zeros(num_ext, dtype=np.int64)
    phase = {"read_wait_s": 0.0, "convert_and_tiers_s": 0.0, "stage_s": 0.0, "staging_wait_s": 0.0}

    first_block, tier_resume, staged = 0, [None] * len(TIER_NAMES), [b""] * len(TIER_NAMES)
    if journal is not None:
        first_block, tier_resume, staged = _load_stream_journal(out, plan, journal, carry, crcs, run_of_extent)
        log.info("resuming %s from block %d of %d", out, first_block, nblocks)
    journal_every = max(1, (JOURNAL_BYTES if journal_bytes is None else journal_bytes) // max(chunk_bytes, 1))

    reader = AlignedReader(ds.features_path)
    writer = PositionalWriter(out / "packed.bin", plan.packed_bytes, depth=STREAM_WRITE_DEPTH,
                              keep=journal is not None)
    tiers = _TierFiles(out, plan, chunk_bytes // src_rb, nblocks, resume=tier_resume, staged=staged)
    crc_pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diskgnn-runcrc")
    handles: list = [None, None]
    bytes_read = 0
    try:
        with reader.stream(chunk_bytes, first_block * chunk_bytes, file_end) as chunks:
            for c in range(first_block, nblocks):
                if key is not None and c > first_block and (c - first_block) % journal_every == 0:
                    for h in handles:  # everything up to block c - 1 on disk, then the journal
                        if h is not None:
                            h.wait()
                    handles = [None, None]
                    _write_stream_journal(out, key, c, writer, tiers.writers, carry, crcs)
                t_wait = time.perf_counter()
                off, raw = next(chunks)
                t_got = time.perf_counter()
                phase["read_wait_s"] += t_got - t_wait
                lo_node = off // src_rb
                rows = raw.view(src_dtype).reshape(-1, f)
                conv = convert_rows(rows, ds.feat_dtype, plan.store_dtype)
                conv_bytes = conv.view(np.uint8).reshape(conv.shape[0], rb)
                tiers.add(conv_bytes, lo_node)
                t_stage = time.perf_counter()
                phase["convert_and_tiers_s"] += t_stage - t_got
                lo, hi = bs[:, c], bs[:, c + 1]
                has = hi > lo
                first = lo * rb // ALIGN * ALIGN
                end = hi * rb
                alloc = np.where(has, (end + ALIGN - 1) // ALIGN * ALIGN - first, 0)
                piece_offsets = np.where(has, np.cumsum(alloc) - alloc, -1)
                if handles[c % 2] is not None:  # block c - 2's writes still read this staging buffer
                    handles[c % 2].wait()
                    handles[c % 2] = None
                t_staged = time.perf_counter()
                phase["staging_wait_s"] += t_staged - t_stage
                buf = staging[c % 2]
                if words and conv.ctypes.data % 8 == 0:  # the same copy in 8-byte words: rows, pieces and pages are multiples of 8 bytes
                    stage_block(conv.view(np.uint64).reshape(conv.shape[0], rb // 8), lo_node, plan.row_nodes,
                                row_starts, lo, hi, ext_rows, np.where(has, piece_offsets // 8, -1),
                                carry.view(np.uint64), buf.view(np.uint64))
                else:
                    stage_block(conv_bytes, lo_node, plan.row_nodes, row_starts, lo, hi, ext_rows, piece_offsets,
                                carry, buf)
                phase["stage_kernel_s"] = phase.get("stage_kernel_s", 0.0) + time.perf_counter() - t_staged
                complete = has & (hi == ext_rows)
                write_end = np.where(complete, (end + ALIGN - 1) // ALIGN * ALIGN, end // ALIGN * ALIGN)
                lengths = np.where(has, write_end - first, 0)
                which = np.flatnonzero(lengths > 0)
                handle = writer.write_pieces(buf, ext_offsets[which] + first[which], piece_offsets[which],
                                             lengths[which])
                crc = crc_pool.submit(_extent_crcs, buf, which, piece_offsets[which], lengths[which], crcs,
                                      complete[which], run_of_extent, plan.runs)
                handles[c % 2] = _Both(handle, crc)
                phase["stage_s"] += time.perf_counter() - t_staged
                bytes_read += len(raw)
                progress("pack", len(raw), file_end - first_block * chunk_bytes)
        t_tail = time.perf_counter()
        for h in handles:
            if h is not None:
                h.wait()
        writer.close()
        phase["write_tail_s"] = time.perf_counter() - t_tail
        files = {"packed": ArraySpec(path="packed.bin", dtype="|u1", shape=(plan.packed_bytes,),
                                     crc32=None).to_json()}
        written = writer.bytes_written + tiers.close(files, f)
    except BaseException:
        writer.abort()
        tiers.abort()
        raise
    finally:
        crc_pool.shutdown(wait=True)
        reader.close()
    return {"files": files, "passes": 1, "bytes_read": bytes_read, "bytes_written": written,
            "group_bytes": memory.group_bytes, "chunk_bytes": chunk_bytes, "phases": phase, "write_mode": "stream",
            "resumed_from_block": first_block}


def _write_stream_journal(out: Path, key: dict, c: int, writer: "PositionalWriter", tier_writers: list,
                          carry: np.ndarray, crcs: np.ndarray) -> None:
    """Record that blocks 0 .. c-1 are on disk: fsynced files, the carried pages, every extent's crc."""
    writer.sync()
    tiers, staged = [], []
    for w in tier_writers:
        info, data = w.checkpoint()
        tiers.append(info)
        staged.append(data)
    side = Crc32Writer(out / (RESUME_CARRY + ".tmp"))
    with side:
        side.write(carry)
        for data in staged:
            side.write(data)
        side_info = side.close()
    os.replace(out / (RESUME_CARRY + ".tmp"), out / RESUME_CARRY)
    files = {"packed.bin": {"bytes": 0, "crc32": 0}, RESUME_CARRY: side_info}
    files.update({f"tier_{t}.bin": info for t, info in zip(TIER_NAMES, tiers)})
    write_resume_journal(out, key, files, {"next_block": c, "extent_crcs": [int(x) for x in crcs],
                                           "staged_bytes": [len(d) for d in staged]})


def _load_stream_journal(out: Path, plan: PackPlan, journal: dict, carry: np.ndarray, crcs: np.ndarray,
                         run_of_extent: np.ndarray) -> tuple[int, list, list]:
    """Restore a streamed pack's state from its journal (the journal's files were checked by the caller)."""
    try:
        state = journal["state"]
        c = int(state["next_block"])
        got = np.asarray(state["extent_crcs"], dtype=np.int64)
        staged_bytes = [int(x) for x in state["staged_bytes"]]
        tiers = [journal["files"][f"tier_{t}.bin"] for t in TIER_NAMES]
    except (KeyError, TypeError, ValueError) as exc:
        raise _CannotResume(f"the journal is incomplete ({exc})") from None
    if not 0 < c < plan.block_starts.shape[1] or got.shape != crcs.shape or len(staged_bytes) != len(TIER_NAMES):
        raise _CannotResume("the journal does not fit this plan")
    side = np.fromfile(out / RESUME_CARRY, dtype=np.uint8)
    if side.size != carry.nbytes + sum(staged_bytes):
        raise _CannotResume(f"{RESUME_CARRY} has {side.size} bytes, the journal expects {carry.nbytes + sum(staged_bytes)}")
    written = _extent_written(plan, c)
    _check_resumed_extents(out / "packed.bin", plan, written, got)
    carry[:] = side[:carry.nbytes].reshape(carry.shape)
    crcs[:] = got
    complete = plan.block_starts[:, c] == plan.extent_rows
    for e in np.flatnonzero(complete & (plan.extent_rows > 0)):
        plan.runs[run_of_extent[e], 2] = crcs[e]
    staged, pos = [], carry.nbytes
    for n in staged_bytes:
        staged.append(side[pos:pos + n].tobytes())
        pos += n
    return c, tiers, staged


class _Both:
    """Waits for a write handle and a future."""

    def __init__(self, handle, future):
        self.handle, self.future = handle, future

    def wait(self) -> None:
        self.handle.wait()
        self.future.result()


def _write_rows(out: Path, plan: PackPlan, ds: Dataset, chunk_bytes: int, group_bytes: int,
                progress: ProgressFn) -> dict:
    """Stream features.bin once per group, scatter rows to the tier files and the group buffer, write."""
    n, f = ds.num_nodes, ds.feat_dim
    src_dtype = feature_dtype(ds.feat_dtype)
    rb = plan.row_bytes
    src_rb = ds.row_bytes
    file_end = n * src_rb
    rows_per_chunk = chunk_bytes // src_rb
    nchunks = max(1, -(-n // rows_per_chunk))
    groups = _groups(plan, group_bytes)
    row_starts = np.concatenate([[0], np.cumsum(plan.extent_rows)]).astype(np.int64)
    passes = max(len(groups), 1 if plan.cache_nodes.size else 0)
    words = rb % 8 == 0

    # the tiers' gather buffer is allocated before the output buffers are faulted in (a fault elsewhere
    # waits for the process's mmap lock while they are)
    tiers = _TierFiles(out, plan, rows_per_chunk, nchunks)
    reader = AlignedReader(ds.features_path)
    writer = AlignedWriter(out / "packed.bin")
    bufs = [aligned_empty(group_bytes) if groups else None, aligned_empty(group_bytes) if len(groups) > 1 else None]
    # fault the output buffers in on another core while the first chunks are read
    faulting = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diskgnn-prefault")
    for b in bufs:
        if b is not None and b.nbytes >= HUGE_BUFFER:
            faulting.submit(prefault, b)
    faulting.shutdown(wait=False)
    handles = [None, None]
    run_crcs = [None, None]
    phase = {"read_wait_s": 0.0, "convert_and_tiers_s": 0.0, "scatter_s": 0.0, "group_setup_s": 0.0}
    crc_pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diskgnn-runcrc")
    bytes_read = 0
    total_read = passes * file_end
    try:
        for gi in range(passes):
            need_tiers = gi == 0 and plan.cache_nodes.size > 0
            group = groups[gi] if gi < len(groups) else None
            t_setup = time.perf_counter()
            c_first, c_last = nchunks, -1
            if need_tiers:
                c_first, c_last = 0, nchunks - 1
            if group is not None:
                e0, e1 = group
                nodes = plan.row_nodes[row_starts[e0]:row_starts[e1]]
                if nodes.size:  # the chunks holding the group's rows
                    c_first = min(c_first, int(nodes.min()) // rows_per_chunk)
                    c_last = max(c_last, int(nodes.max()) // rows_per_chunk)
            chunks = None
            if c_last >= c_first:  # the first chunk is read while the group is set up
                chunks = reader.stream(chunk_bytes, c_first * chunk_bytes, min((c_last + 1) * chunk_bytes, file_end))
            if group is not None:
                g_lo = int(plan.extent_offsets[e0])
                g_hi = int(plan.extent_offsets[e1 - 1]) + align_up(int(plan.extent_rows[e1 - 1]) * rb)
                buf = bufs[gi % 2]
                if handles[gi % 2] is not None:
                    handles[gi % 2].wait()
                dests = extent_dests(plan.extent_rows[e0:e1], plan.extent_offsets[e0:e1], rb, g_lo)
                starts, local, dests = bucket_rows(nodes, dests, 0, rows_per_chunk, nchunks)
                for e in range(e0, e1):  # zero the padding after each extent's rows (deterministic crc)
                    a = int(plan.extent_offsets[e]) - g_lo + int(plan.extent_rows[e]) * rb
                    buf[a:int(plan.extent_offsets[e]) - g_lo + align_up(int(plan.extent_rows[e]) * rb)] = 0
                view = buf[:g_hi - g_lo]
                dst = view.view(np.uint64) if words else view
            phase["group_setup_s"] += time.perf_counter() - t_setup
            if chunks is not None:
                while True:
                    t_wait = time.perf_counter()
                    item = next(chunks, None)
                    t_got = time.perf_counter()
                    phase["read_wait_s"] += t_got - t_wait
                    if item is None:
                        break
                    off, raw = item
                    c = off // chunk_bytes
                    lo_node = off // src_rb
                    rows = raw.view(src_dtype).reshape(-1, f)
                    conv = convert_rows(rows, ds.feat_dtype, plan.store_dtype)
                    conv_bytes = conv.view(np.uint8).reshape(conv.shape[0], rb)
                    if need_tiers:
                        tiers.add(conv_bytes, lo_node)
                    t_scatter = time.perf_counter()
                    phase["convert_and_tiers_s"] += t_scatter - t_got
                    if group is not None and starts[c + 1] > starts[c]:
                        s, e = int(starts[c]), int(starts[c + 1])
                        if words and conv.ctypes.data % 8 == 0:
                            scatter_words(conv.view(np.uint64).reshape(conv.shape[0], rb // 8), local[s:e], dst,
                                          dests[s:e] // 8)
                        else:
                            scatter_bytes(conv_bytes, local[s:e], view, dests[s:e])
                    phase["scatter_s"] += time.perf_counter() - t_scatter
                    bytes_read += len(raw)
                    progress("pack", len(raw), total_read)
            if group is not None:
                handles[gi % 2] = writer.write_aligned(buf[:g_hi - g_lo])
                # run checksums off the critical path; the buffer is only reused after both finish
                run_crcs[gi % 2] = crc_pool.submit(_run_checksums, plan, buf, g_lo, g_hi)
                handles[gi % 2] = _Both(handles[gi % 2], run_crcs[gi % 2])
        t_tail = time.perf_counter()
        for fut in run_crcs:
            if fut is not None:
                fut.result()
        files = {}
        info = writer.close(keep_padding=True)
        phase["write_tail_s"] = time.perf_counter() - t_tail
        files["packed"] = ArraySpec(path="packed.bin", dtype="|u1", shape=(info["bytes"],),
                                    crc32=info["crc32"]).to_json()
        written = info["bytes"] + tiers.close(files, f)
    except BaseException:
        writer.abort()
        tiers.abort()
        raise
    finally:
        crc_pool.shutdown(wait=True)
        reader.close()
    return {"files": files, "passes": passes, "bytes_read": bytes_read, "bytes_written": written,
            "group_bytes": group_bytes, "chunk_bytes": chunk_bytes, "phases": phase, "write_mode": "groups"}
