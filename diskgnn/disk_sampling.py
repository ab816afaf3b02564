"""Sampling (and checking samples) with the CSR on disk: groups of minibatches, layer by layer, in file order.

With a topology larger than memory, sampling one minibatch at a time through a
memory map faults a random page of ``indices.bin`` (and one of ``indptr.bin``)
for nearly every node it visits: at scale ``l`` (9.7 GB of CSR under a 4 GiB
cap) that is tens of millions of random 4 KiB reads. Instead, a *group* of
consecutive minibatches (as many as the memory budget holds) is sampled one
layer at a time:

1. every (batch, destination node) *pair* of the layer is listed and the pairs'
   nodes de-duplicated and sorted;
2. their offsets are read from ``indptr.bin`` and their neighbour lists from
   ``indices.bin`` in file order, through a few large windows (nearby lists are
   read together, the gaps between them too when they are short), with the
   next window read while the current one is sampled;
3. each pair is sampled from the window that holds its node's list, with the
   draws of :func:`diskgnn.kernels.sampling.sample_layer`; then each batch
   relabels its new nodes exactly as :func:`~diskgnn.kernels.sampling.sample_blocks`.

So the output is identical to sampling each batch on its own (tested), and a
group costs about one sequential pass over the CSR per layer. A list too long
for a window (a hub) is read only where its draws land.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from diskgnn.dataset import Dataset
from diskgnn.io import ALIGN, AlignedReader, align_up, aligned_empty

log = logging.getLogger(__name__)

WINDOW_BYTES = 64 << 20
"""Bytes of one read window (two are in memory: the one sampled and the one being read)."""
GAP_BYTES = 64 << 10
"""Two lists closer than this in the file are read as one run, gap included: reading 64 KiB more costs
about what one more request does on the disks measured here (~1.5 GB/s sequential, ~50k 4 KiB reads/s)."""
PAIR_BYTES = 56
"""Bytes per (batch, node) pair of a layer while it is sampled: node, key, order, degree, count, offset."""
UNIQ_BYTES = 72
"""Bytes per distinct node of a layer: node, first index, first edge, degree, read plan."""
EDGE_BYTES = 16
"""Bytes per sampled edge: its global source (int64) and local id (int32), and the block's copy of the local id."""
NODE_BYTES = 24
"""Bytes per input node of a batch: its buffer (grown by doubling) and the copy handed out."""


def group_by_node(pair_nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs grouped by their node: ``(order, uniq, pair_start)`` with ``pair_nodes[order]`` sorted (stable),
    ``uniq`` the distinct nodes ascending, and pairs ``order[pair_start[j]:pair_start[j + 1]]`` those of
    ``uniq[j]``."""
    order = np.argsort(pair_nodes, kind="stable")
    sorted_nodes = pair_nodes[order]
    first = np.flatnonzero(np.concatenate([[True], sorted_nodes[1:] != sorted_nodes[:-1]]))
    return order, sorted_nodes[first], np.append(first, pair_nodes.shape[0]).astype(np.int64)


@dataclass
class ReadStats:
    """What a :class:`DiskCSR` read, for the samples' manifest and the benchmarks."""
    bytes_read: int = 0
    runs: int = 0
    windows: int = 0
    long_lists: int = 0
    read_wait_s: float = 0.0
    passes: dict = field(default_factory=dict)
    """Windows read per purpose (``offsets``, ``lists``)."""

    def to_json(self) -> dict:
        return {"bytes_read": self.bytes_read, "runs": self.runs, "windows": self.windows,
                "long_lists": self.long_lists, "read_wait_s": round(self.read_wait_s, 3)}


class DiskCSR:
    """The in-edge CSR of a dataset read from disk in file order: offsets and neighbour lists of sorted node sets.

    Reads go through :class:`~diskgnn.io.AlignedReader` (O_DIRECT where possible: the page
    cache, which a memory cgroup counts, is left alone), ``depth`` requests in flight, two
    window buffers of ``window_bytes`` (one read while the other is used).
    """

    def __init__(self, dataset: Dataset, *, window_bytes: int | None = None, gap_bytes: int | None = None,
                 io_depth: int = 8):
        self.dataset = dataset
        self.window_bytes = max(align_up(int(WINDOW_BYTES if window_bytes is None else window_bytes)), 3 * ALIGN)
        self.gap_bytes = int(GAP_BYTES if gap_bytes is None else gap_bytes)
        self.id_dtype = np.dtype(dataset.specs["indices"].dtype)
        self.indptr = AlignedReader(dataset.path / dataset.specs["indptr"].path, depth=io_depth)
        self.indices = AlignedReader(dataset.path / dataset.specs["indices"].path, depth=io_depth)
        self._buffers = [aligned_empty(self.window_bytes), aligned_empty(self.window_bytes)]
        self.stats = ReadStats()

    @property
    def memory_bytes(self) -> int:
        """Bytes of the window buffers."""
        return 2 * self.window_bytes

    def close(self) -> None:
        self.indptr.close()
        self.indices.close()

    def __enter__(self) -> "DiskCSR":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- windows ---------------------------------------------------------------------------------
    def _windows(self, reader: AlignedReader, starts: np.ndarray, ends: np.ndarray, itemsize: int,
                 dtype: np.dtype, purpose: str) -> Iterator[tuple[int, int, np.ndarray | None, np.ndarray]]:
        """``(j0, j1, items or None, range_pos)`` per window of ranges ``[starts[j], ends[j])`` (sorted), in order.

        ``items`` is the window's buffer viewed as ``dtype`` (valid until the next window is
        requested); None for a window of one range too long to read whole (``range_pos`` -1).
        """
        from diskgnn.kernels.disk_sampling import plan_windows
        u = starts.shape[0]
        run_offset = np.empty(u, dtype=np.int64)
        run_length = np.empty(u, dtype=np.int64)
        range_pos = np.empty(u, dtype=np.int64)
        window_ranges = np.empty(u + 1, dtype=np.int64)
        window_runs = np.empty(u + 1, dtype=np.int64)
        nw = plan_windows(starts, ends, itemsize, self.gap_bytes, self.window_bytes, run_offset, run_length,
                          range_pos, window_ranges, window_runs)
        stats = self.stats
        stats.passes[purpose] = stats.passes.get(purpose, 0) + 1

        def submit(w: int):
            r0, r1 = int(window_runs[w]), int(window_runs[w + 1])
            if r1 == r0:
                return None
            runs = list(zip(run_offset[r0:r1].tolist(), run_length[r0:r1].tolist()))
            stats.runs += r1 - r0
            stats.windows += 1
            stats.bytes_read += int(sum(align_up(n) for _, n in runs))
            return reader.submit_runs(runs, self._buffers[w % 2])

        pending = submit(0) if nw else None
        for w in range(nw):
            current = pending
            pending = submit(w + 1) if w + 1 < nw else None  # the next window is read while this one is used
            if current is not None:
                t0 = time.perf_counter()
                current.wait()
                stats.read_wait_s += time.perf_counter() - t0
            j0, j1 = int(window_ranges[w]), int(window_ranges[w + 1])
            if j1 == j0 + 1 and range_pos[j0] < 0:
                yield j0, j1, None, range_pos
            else:
                yield j0, j1, self._buffers[w % 2].view(dtype), range_pos
        if pending is not None:
            pending.wait()

    def offsets(self, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(first edge, in-degree)`` (int64) of each node of ``uniq`` (sorted, distinct), read from indptr.bin."""
        lo = np.empty(uniq.shape[0], dtype=np.int64)
        hi = np.empty(uniq.shape[0], dtype=np.int64)
        for j0, j1, items, pos in self._windows(self.indptr, uniq, uniq + 2, 8, np.dtype("<i8"), "offsets"):
            at = pos[j0:j1]
            lo[j0:j1] = items[at]
            hi[j0:j1] = items[at + 1]
        return lo, hi - lo

    def lists(self, lo: np.ndarray, deg: np.ndarray):
        """Windows ``(j0, j1, ids or None, range_pos)`` over the lists ``indices[lo[j] : lo[j] + deg[j]]`` (lo sorted)."""
        return self._windows(self.indices, lo, lo + deg, self.id_dtype.itemsize, self.id_dtype, "lists")

    def read_ids(self, first: int, count: int) -> np.ndarray:
        """``indices[first : first + count]`` as int64 (a long list, or a piece of one)."""
        size = self.id_dtype.itemsize
        raw = self.indices.read(int(first) * size, int(count) * size)
        self.stats.bytes_read += align_up(raw.nbytes + ALIGN)
        self.stats.runs += 1
        return raw.view(self.id_dtype).astype(np.int64)

    def read_positions(self, first: int, positions: np.ndarray) -> np.ndarray:
        """``indices[first + positions]`` as int64 for a few positions of a long list (one small read each)."""
        size = self.id_dtype.itemsize
        out = np.empty(positions.shape[0], dtype=np.int64)
        for t, q in enumerate(positions.tolist()):
            out[t] = self.indices.read((int(first) + q) * size, size).view(self.id_dtype)[0]
        self.stats.bytes_read += ALIGN * positions.shape[0]
        self.stats.runs += positions.shape[0]
        return out


# --- sampling -------------------------------------------------------------------------------------

def batch_bytes_bound(batch_size: int, fanouts, num_nodes: int, avg_degree: float) -> int:
    """Bytes one batch of ``batch_size`` seeds holds at most while its group is sampled (fanout -1: 4x the mean degree)."""
    n_dst = batch_size
    total = 0
    for f in reversed([int(x) for x in fanouts]):
        per = 4.0 * avg_degree if f < 0 else f
        edges = int(n_dst * per)
        total += n_dst * (PAIR_BYTES + UNIQ_BYTES) + edges * EDGE_BYTES
        n_dst = min(n_dst + edges, num_nodes)
    return total + n_dst * NODE_BYTES + 1024


@dataclass
class _Batch:
    """One batch of a group while it is sampled (what sample_blocks keeps in locals)."""
    key: np.uint64
    nodes: np.ndarray
    num: int
    layer_sizes: np.ndarray
    offsets: list
    locals: list


def _sample_group(csr: DiskCSR, group: list[tuple[np.ndarray, np.uint64]], fanouts: np.ndarray,
                  node_map: np.ndarray) -> tuple[list[tuple], int]:
    """Sample every batch of ``group`` [(seeds, batch key)] layer by layer; returns the raw outputs and bytes used."""
    from diskgnn.kernels.disk_sampling import draw_positions, sample_window, set_map
    from diskgnn.kernels.rng import mix_key
    from diskgnn.kernels.sampling import relabel, reset_map
    num_layers = fanouts.shape[0]
    batches = []
    for seeds, key in group:
        b = seeds.shape[0]
        nodes = np.empty(max(2 * b, 16), dtype=np.int64)
        nodes[:b] = seeds
        sizes = np.empty(num_layers + 1, dtype=np.int64)
        sizes[num_layers] = b
        batches.append(_Batch(np.uint64(key), nodes, b, sizes, [None] * num_layers, [None] * num_layers))
    peak = 0
    for layer in range(num_layers - 1, -1, -1):
        fanout = int(fanouts[layer])
        num = np.array([bt.num for bt in batches], dtype=np.int64)
        bounds = np.zeros(len(batches) + 1, dtype=np.int64)
        np.cumsum(num, out=bounds[1:])
        pair_nodes = np.concatenate([bt.nodes[:bt.num] for bt in batches])
        layer_keys = np.array([mix_key(bt.key, np.int64(layer)) for bt in batches], dtype=np.uint64)
        pair_keys = np.repeat(layer_keys, num)
        order, uniq, pair_start = group_by_node(pair_nodes)
        lo, deg = csr.offsets(uniq)
        pair_deg = np.empty(pair_nodes.shape[0], dtype=np.int64)
        pair_deg[order] = np.repeat(deg, np.diff(pair_start))
        if fanout >= 0:
            np.minimum(pair_deg, fanout, out=pair_deg)
        out_offsets = np.zeros(pair_nodes.shape[0] + 1, dtype=np.int64)
        np.cumsum(pair_deg, out=out_offsets[1:])
        del pair_deg
        neighbors = np.empty(int(out_offsets[-1]), dtype=np.int64)
        for j0, j1, ids, pos in csr.lists(lo, deg):
            if ids is not None:
                sample_window(ids, pos, lo, deg, j0, j1, pair_start, order, pair_nodes, pair_keys, out_offsets,
                              neighbors)
                continue
            csr.stats.long_lists += 1  # one list longer than a window: read only where its draws land
            d, first_edge = int(deg[j0]), int(lo[j0])
            for s in range(int(pair_start[j0]), int(pair_start[j0 + 1])):
                p = int(order[s])
                start, stop = int(out_offsets[p]), int(out_offsets[p + 1])
                if stop - start == d:
                    step = max(csr.window_bytes // csr.id_dtype.itemsize // 2, 1)
                    for a in range(0, d, step):
                        neighbors[start + a:start + min(a + step, d)] = csr.read_ids(first_edge + a, min(step, d - a))
                    continue
                draw_positions(np.uint64(mix_key(pair_keys[p], pair_nodes[p])), d, stop - start, neighbors, start)
                neighbors[start:stop] = csr.read_positions(first_edge, neighbors[start:stop])
        peak = max(peak, pair_nodes.shape[0] * PAIR_BYTES + uniq.shape[0] * UNIQ_BYTES
                   + neighbors.shape[0] * EDGE_BYTES)
        del order, pair_keys, uniq, lo, deg, pair_start
        for b, bt in enumerate(batches):
            p0, p1 = int(bounds[b]), int(bounds[b + 1])
            offsets = out_offsets[p0:p1 + 1] - out_offsets[p0]
            nbr = neighbors[int(out_offsets[p0]):int(out_offsets[p1])]
            if bt.num + nbr.shape[0] > bt.nodes.shape[0]:
                grown = np.empty(max(2 * bt.nodes.shape[0], bt.num + nbr.shape[0]), dtype=np.int64)
                grown[:bt.num] = bt.nodes[:bt.num]
                bt.nodes = grown
            local = np.empty(nbr.shape[0], dtype=np.int32)
            set_map(node_map, bt.nodes, bt.num)  # the batch's nodes so far keep their local ids
            bt.num = relabel(nbr, node_map, bt.nodes, bt.num, local)
            reset_map(node_map, bt.nodes, bt.num)
            bt.layer_sizes[layer] = bt.num
            bt.offsets[layer] = offsets
            bt.locals[layer] = local
        del neighbors, out_offsets, pair_nodes
    out = []
    nodes_bytes = 0
    for bt in batches:
        out.append((bt.nodes[:bt.num].copy(), bt.layer_sizes, np.concatenate(bt.offsets).astype(np.int64, copy=False),
                    np.concatenate(bt.locals).astype(np.int32, copy=False)))
        nodes_bytes += bt.num * NODE_BYTES
    return out, peak + nodes_bytes


def sample_on_disk(csr: DiskCSR, jobs: Iterable[tuple], fanouts: np.ndarray,
                   node_map: np.ndarray, group_bytes: int, *, avg_degree: float,
                   on_group=None) -> Iterator[tuple]:
    """The raw ``sample_blocks`` output of every job ``(seeds, batch key[, fanouts])``, in order, sampled in groups.

    A job without fanouts is sampled with ``fanouts``; a group's jobs share their fanouts (a
    job with other fanouts, e.g. the first of a val part sampled with ``eval_fanouts``, starts
    a new group). A group takes consecutive jobs while their estimated memory fits
    ``group_bytes`` (at least one job): first the bound of :func:`batch_bytes_bound`, then
    what the groups before with the same fanouts really used per batch (plus a quarter).
    ``on_group(batches, bytes)`` is called after each group.
    """
    default = np.asarray(fanouts, dtype=np.int64)
    num_nodes = node_map.shape[0]
    observed: dict[tuple, float] = {}  # bytes per seed used so far, per fanouts

    def job_fanouts(job) -> np.ndarray:
        return default if len(job) < 3 or job[2] is None else np.asarray(job[2], dtype=np.int64)

    it = iter(jobs)
    pending = next(it, None)
    while pending is not None:
        group, estimate = [], 0
        group_fanouts = job_fanouts(pending)
        key = tuple(group_fanouts.tolist())
        seen = observed.get(key)
        while pending is not None:
            if group and not np.array_equal(job_fanouts(pending), group_fanouts):
                break
            seeds = pending[0]
            bound = batch_bytes_bound(seeds.shape[0], group_fanouts, num_nodes, avg_degree)
            need = bound if seen is None else min(bound, int(seen * seeds.shape[0] * 1.25) + 1024)
            if group and estimate + need > group_bytes:
                break
            group.append((pending[0], pending[1]))
            estimate += need
            pending = next(it, None)
        results, used = _sample_group(csr, group, group_fanouts, node_map)
        seeds_in_group = sum(g[0].shape[0] for g in group)
        per_seed = used / max(seeds_in_group, 1)
        observed[key] = per_seed if seen is None else max(seen, per_seed)
        if on_group is not None:
            on_group(len(group), used)
        yield from results


# --- checking stored batches against the graph ----------------------------------------------------

CHECK_PAIR_BYTES = 64
"""Bytes per destination collected for :class:`EdgeCheck`: node, fanout, offset, order, position, flags."""


class EdgeCheck:
    """Checks sampled blocks against the CSR on disk: every sampled edge is an in-edge, every count is min(degree, fanout).

    Blocks are collected with :meth:`add` (in the order a reader meets them) until their
    destinations and edges take ``budget_bytes``; :meth:`flush` then checks them all in one
    pass over the CSR in file order and raises :class:`~diskgnn.errors.IntegrityError` for
    the first block (in the order added) with a problem, in the words of ``verify``.
    """

    FLUSH_PEAK = 6
    """Memory a flush holds at its peak per byte collected: the blocks, their concatenated copies and the
    per-destination arrays of the check (offsets, order, fanouts, flags, degrees)."""

    def __init__(self, csr: DiskCSR, budget_bytes: int):
        self.csr = csr
        self.budget = max(int(budget_bytes), 1)
        self._blocks: list[tuple[str, int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._repeats: list[tuple[str, int, int, int]] = []
        self._bytes = 0
        self.groups = 0

    def add(self, what: str, layer: int, fanout: int, dst: np.ndarray, ptr: np.ndarray, sources: np.ndarray,
            excluded: np.ndarray | None = None) -> None:
        """Block ``layer`` of batch ``what``: destinations ``dst`` (global ids), offsets ``ptr``, global ``sources``.

        ``excluded`` (int64 per destination, optional): in-edges of each destination the batch
        left out of its graph (a link batch's own positive edges); each is then owed
        ``min(degree - excluded, fanout)`` sampled neighbours.
        """
        if excluded is not None:
            excluded = np.asarray(excluded, dtype=np.int64)
            if not excluded.any():
                excluded = None
        self._blocks.append((what, layer, int(fanout), np.asarray(dst, dtype=np.int64),
                             np.asarray(ptr, dtype=np.int64), np.asarray(sources, dtype=np.int64), excluded))
        self._bytes += dst.shape[0] * CHECK_PAIR_BYTES + sources.shape[0] * 8
        if self._bytes >= self.budget:
            self.flush()

    def add_repeat(self, what: str, layer: int, j: int, node: int, sources: np.ndarray) -> None:
        """Destination ``j`` (node ``node``) of a block samples a neighbour more than once (``sources``, global
        ids): allowed only where the graph itself repeats those in-edges of the node (a multigraph)."""
        values, times = np.unique(np.asarray(sources, dtype=np.int64), return_counts=True)
        self._repeats.append((what, layer, int(j), int(node), values[times > 1], times[times > 1]))

    def flush(self) -> None:
        from diskgnn.errors import IntegrityError
        from diskgnn.kernels.disk_sampling import check_window
        blocks, self._blocks, self._bytes = self._blocks, [], 0
        repeats, self._repeats = self._repeats, []
        for what, layer, j, node, values, times in repeats:
            if not self._repeated_in_graph(node, values, times):
                raise IntegrityError(f"{what} block {layer}: destination {j} has a repeated neighbour")
        if not blocks:
            return
        self.groups += 1
        pair_nodes = np.concatenate([b[3] for b in blocks])
        pair_fanout = np.repeat(np.array([b[2] for b in blocks], dtype=np.int64), [b[3].shape[0] for b in blocks])
        block_of_pair = np.repeat(np.arange(len(blocks)), [b[3].shape[0] for b in blocks])
        counts = np.concatenate([np.diff(b[4]) for b in blocks])
        nbr_offsets = np.zeros(pair_nodes.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=nbr_offsets[1:])
        neighbors = np.concatenate([b[5] for b in blocks])
        order, uniq, pair_start = group_by_node(pair_nodes)
        lo, deg = self.csr.offsets(uniq)
        pair_excluded = None
        if any(b[6] is not None for b in blocks):
            pair_excluded = np.concatenate([np.zeros(b[3].shape[0], np.int64) if b[6] is None else b[6]
                                            for b in blocks])
            # owed min(degree - excluded, fanout): as a fanout below the degree, the kernels' rule gives that
            pair_deg = np.empty(pair_nodes.shape[0], dtype=np.int64)
            pair_deg[order] = np.repeat(deg, np.diff(pair_start))
            has = pair_excluded > 0
            left = np.maximum(pair_deg[has] - pair_excluded[has], 0)
            f = pair_fanout[has]
            pair_fanout[has] = np.where(f < 0, left, np.minimum(left, f))
            del pair_deg
        bad_count = np.zeros(pair_nodes.shape[0], dtype=np.bool_)
        missing = np.zeros(pair_nodes.shape[0], dtype=np.int64)
        for j0, j1, ids, pos in self.csr.lists(lo, deg):
            if ids is not None:
                check_window(ids, pos, deg, j0, j1, pair_start, order, pair_fanout, nbr_offsets, neighbors,
                             bad_count, missing)
                continue
            self.csr.stats.long_lists += 1
            self._check_long(int(lo[j0]), int(deg[j0]), order[pair_start[j0]:pair_start[j0 + 1]], pair_fanout,
                             nbr_offsets, neighbors, bad_count, missing)
        bad = np.flatnonzero(bad_count | (missing > 0))
        if bad.size == 0:
            return
        k = int(block_of_pair[bad[0]])  # the first block with a problem: a wrong count first, as verify reads it
        what, layer, fanout, dst, ptr, _, _ = blocks[k]
        in_block = block_of_pair == k
        wrong = np.flatnonzero(in_block & bad_count)
        if wrong.size:
            p = int(wrong[0])
            j = p - int(np.flatnonzero(in_block)[0])
            d = int(deg[np.searchsorted(uniq, pair_nodes[p])])
            x = 0 if pair_excluded is None else int(pair_excluded[p])
            note = f" ({d} in the graph, {x} excluded by the batch)" if x else ""
            raise IntegrityError(f"{what} block {layer}: node {int(dst[j])} has {int(ptr[j + 1] - ptr[j])} sampled "
                                 f"neighbours, expected min(degree {d - x}{note}, fanout {fanout})")
        raise IntegrityError(f"{what} block {layer}: {int(missing[in_block].sum())} sampled edges are not edges of "
                             f"the graph {self.csr.dataset.path}")

    def _repeated_in_graph(self, node: int, values: np.ndarray, times: np.ndarray) -> bool:
        """Whether ``node``'s in-edge list holds each of ``values`` at least ``times`` times (read in pieces,
        stopping once it does: a list may be longer than memory)."""
        lo, deg = self.csr.offsets(np.array([node], dtype=np.int64))
        first, deg = int(lo[0]), int(deg[0])
        seen = np.zeros(values.shape[0], dtype=np.int64)
        step = max(self.csr.window_bytes // self.csr.id_dtype.itemsize // 2, 1)
        for a in range(0, deg, step):
            piece = np.sort(self.csr.read_ids(first + a, min(step, deg - a)))
            seen += np.searchsorted(piece, values, side="right") - np.searchsorted(piece, values, side="left")
            if (seen >= times).all():
                return True
        return bool((seen >= times).all())

    def _check_long(self, first: int, deg: int, pairs: np.ndarray, pair_fanout, nbr_offsets, neighbors, bad_count,
                    missing) -> None:
        """:func:`check_window` for the pairs of one list too long for a window: read piece by piece until every
        sampled source is found (or the list ends)."""
        wanted = {int(p): set(neighbors[nbr_offsets[p]:nbr_offsets[p + 1]].tolist()) for p in pairs.tolist()}
        for p in wanted:
            f = int(pair_fanout[p])
            bad_count[p] = (nbr_offsets[p + 1] - nbr_offsets[p]) != (deg if f < 0 or deg <= f else f)
        left = set().union(*wanted.values()) if wanted else set()
        step = max(self.csr.window_bytes // self.csr.id_dtype.itemsize // 2, 1)
        for a in range(0, deg, step):
            if not left:
                break
            left -= set(np.intersect1d(self.csr.read_ids(first + a, min(step, deg - a)),
                                       np.fromiter(left, dtype=np.int64)).tolist())
        for p, srcs in wanted.items():
            missing[p] = sum(1 for u in neighbors[nbr_offsets[p]:nbr_offsets[p + 1]].tolist() if u in left)
