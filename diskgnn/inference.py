"""Out-of-core layer-wise inference over every node, and ``diskgnn embed``.

Minibatch inference recomputes each node's multi-hop neighbourhood for every
seed; layer-wise inference computes layer 1 for *all* nodes with all their
in-neighbours, writes it to disk, then layer 2 from it, and so on (as DGL's and
PyG's full-graph ``inference`` loops do in memory). The result equals the
model on full-neighbour blocks (``--eval-fanouts -1,...``) for every node at
once, in time linear in the graph.

Nothing of size N x F is ever held in memory. Layer ``l`` works through
*destination ranges* (consecutive nodes whose accumulators and in-edges fit
the memory budget):

1. read the range's slice of the in-edge CSR (``indptr.bin``, ``indices.bin``;
   direct I/O) and group its edges by *source block* (a stable counting sort,
   :func:`diskgnn.kernels.layerwise.bucket_by_source`);
2. stream the input rows (layer 0: the dataset's ``features.bin`` in its storage
   dtype; layer ``l > 0``: the previous layer's file) block by block with
   aligned O_DIRECT reads, the next block in flight while one is used, skipping
   blocks no edge of the range comes from; fold each block into the range's
   accumulators (:func:`~diskgnn.kernels.layerwise.accumulate_rows`, or GAT's
   online softmax :func:`~diskgnn.kernels.layerwise.gat_accumulate`), capturing
   the destinations' own rows as their block passes;
3. finish the range (normalise, project, bias, activation) and append its rows
   to the layer's file (``layer-<l>.bin``: float32 [N, width], row-major, written
   sequentially with O_DIRECT, crc32 computed on the way).

Each range reads the input once, so a layer reads ``ranges x input bytes`` (one
pass when the accumulators of all nodes fit). Memory is the destination range
(its accumulators and in-edges), two source blocks and the writer's staging,
planned from the memory budget before anything is read
(:func:`plan_ranges`). Computation runs on the CPU whatever the device the
model trained on.

The embeddings directory (``diskgnn embed PACKED --checkpoint DIR --out DIR``)
holds the layer files asked for and ``manifest.json`` (format
``diskgnn.embeddings`` version 1), written last.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diskgnn.errors import ConfigError, MemoryBudgetError, MismatchError
from diskgnn.memory import process_rss_bytes
from diskgnn.progress import ProgressFn, no_progress
from diskgnn.sizes import format_bytes

log = logging.getLogger(__name__)

FORMAT = "diskgnn.embeddings"
VERSION = 1
LAYER_FILE = "layer-{}.bin"
KEEP = ("last", "all")
"""Which layer files ``diskgnn embed`` keeps: the model's output only, or every layer's."""
BLOCK_BYTES = 64 << 20
"""Input bytes per source block (two are in memory: the one used and the one being read)."""
WRITER_STAGING = 8 << 20
HEADROOM = 0.85
"""Share of the memory left after the fixed buffers that destination ranges may plan for (allocator slack)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerwiseConfig:
    """How layer-wise inference runs (not what it computes: that is the model's)."""
    memory_budget: int | str | None = None
    """Bytes this process may use (``--memory-budget``); None = the memory available now."""
    block_bytes: int = BLOCK_BYTES
    """Input bytes per source block streamed from disk (rounded to whole rows and 4 KiB)."""
    max_range_nodes: int | None = None
    """Cap on the destination nodes of one range (None: as many as the budget allows)."""
    io_depth: int = 8
    """Read requests in flight."""
    threads: int | None = None
    """Compute threads (torch and numba); None = the cores this process may use."""

    def __post_init__(self):
        for name, low in (("block_bytes", 4096), ("io_depth", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("max_range_nodes", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")


@dataclass(slots=True)
class LayerStats:
    """What one layer cost."""
    layer: int
    width: int
    ranges: int
    seconds: float
    bytes_read: int
    bytes_written: int
    range_nodes_max: int


@dataclass(slots=True)
class LayerwiseResult:
    """The outcome of :func:`layerwise_inference`."""
    files: dict[int, dict] = field(default_factory=dict)
    """Layer number (1-based) -> ``{"path", "dtype", "shape", "bytes", "crc32"}`` of each file kept."""
    collected: np.ndarray | None = None
    """float32 [len(collect), out width]: the model's output for the nodes asked for (in their order)."""
    stats: list[LayerStats] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes_read(self) -> int:
        return sum(s.bytes_read for s in self.stats)


# --- one layer's arithmetic ------------------------------------------------------------------------

class _LayerOp:
    """The arithmetic of one model layer for a destination range (see the subclasses)."""
    acc_width: int
    """Columns of the per-destination accumulator that source rows are summed into."""
    out_width: int
    """Columns of the layer's output (after the activation)."""
    dst_rows_first = False
    """Whether the destinations' own rows are needed before any edge (GAT's destination scores)."""

    def range_bytes_per_node(self) -> int:
        raise NotImplementedError

    def block_bytes_per_row(self) -> int:
        """Bytes per source row of what :meth:`source` makes from a block (beyond the block itself)."""
        raise NotImplementedError


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def _pieces() -> int:
    """Parts a bucket's edges are cut into for the kernels' threads (a few per thread: hubs are uneven)."""
    import numba
    return 4 * numba.get_num_threads()


class _SageOp(_LayerOp):
    """``W_self h_v + W_neigh mean(h_u) + b``; projects before aggregating when the layer narrows (as SAGEConv)."""

    def __init__(self, layer, last: bool):
        self.w_self = layer.fc_self.weight.detach().cpu().float().contiguous()
        self.w_neigh = layer.fc_neigh.weight.detach().cpu().float().contiguous()
        self.bias = layer.bias.detach().cpu().float()
        self.project_first = layer.in_dim > layer.out_dim
        self.acc_width = layer.out_dim if self.project_first else layer.in_dim
        self.out_width = layer.out_dim
        self.relu = not last

    def range_bytes_per_node(self) -> int:
        return 4 * (self.acc_width + self.out_width)

    def block_bytes_per_row(self) -> int:
        return 4 * self.acc_width if self.project_first else 0

    def start(self, nd: int) -> None:
        self.acc = np.zeros((nd, self.acc_width), dtype=np.float32)
        self.out = np.empty((nd, self.out_width), dtype=np.float32)

    def source(self, rows: np.ndarray) -> tuple:
        if not self.project_first:
            return (rows,)
        return (np.ascontiguousarray((_t(rows) @ self.w_neigh.t()).numpy()),)

    def own(self, rows: np.ndarray, transformed: tuple, lo: int, hi: int) -> None:
        torch.mm(_t(rows), self.w_self.t(), out=_t(self.out[lo:hi]))

    def accumulate(self, kernels, dst, src, transformed: tuple, lo: int, hi: int) -> None:
        kernels.accumulate_rows(dst, src, transformed[0], lo, hi, _pieces(), self.acc)

    def finish(self, degree: np.ndarray) -> np.ndarray:
        acc, out = _t(self.acc), _t(self.out)
        acc.mul_(1.0 / _t(degree).clamp(min=1.0).unsqueeze(1))
        if self.project_first:
            out.add_(acc)
        else:
            out.addmm_(acc, self.w_neigh.t())
        out.add_(self.bias)
        if self.relu:
            out.relu_()
        self.acc = None
        result, self.out = self.out, None
        return result


class _GCNOp(_LayerOp):
    """``W (h_v + sum h_u) / (deg + 1) + b``; projects first when the layer narrows (as diskgnn's GCNConv)."""

    def __init__(self, layer, last: bool):
        self.weight = layer.fc.weight.detach().cpu().float().contiguous()
        self.bias = layer.fc.bias.detach().cpu().float()
        self.project_first = layer.in_dim > layer.out_dim
        self.acc_width = layer.out_dim if self.project_first else layer.in_dim
        self.out_width = layer.out_dim
        self.relu = not last

    def range_bytes_per_node(self) -> int:
        return 4 * (self.acc_width + (0 if self.project_first else self.out_width))

    def block_bytes_per_row(self) -> int:
        return 4 * self.acc_width if self.project_first else 0

    def start(self, nd: int) -> None:
        self.acc = np.zeros((nd, self.acc_width), dtype=np.float32)

    def source(self, rows: np.ndarray) -> tuple:
        if not self.project_first:
            return (rows,)
        return (np.ascontiguousarray((_t(rows) @ self.weight.t()).numpy()),)

    def own(self, rows: np.ndarray, transformed: tuple, lo: int, hi: int) -> None:
        self.acc[lo:hi] += transformed[0]  # the destination counts as its own neighbour

    def accumulate(self, kernels, dst, src, transformed: tuple, lo: int, hi: int) -> None:
        kernels.accumulate_rows(dst, src, transformed[0], lo, hi, _pieces(), self.acc)

    def finish(self, degree: np.ndarray) -> np.ndarray:
        acc = _t(self.acc)
        acc.mul_(1.0 / (_t(degree) + 1.0).unsqueeze(1))
        out = acc.add_(self.bias) if self.project_first else torch.addmm(self.bias, acc, self.weight.t())
        if self.relu:
            out.relu_()
        self.acc = None
        return out.numpy()


class _GATOp(_LayerOp):
    """GAT's attention over every in-edge, heads flattened after ELU (hidden layers) or averaged (output)."""

    dst_rows_first = True

    def __init__(self, layer, last: bool):
        self.heads, self.width = layer.heads, layer.out_dim
        self.weight = layer.fc.weight.detach().cpu().float().contiguous()
        proj_src, proj_dst = layer.attention_projections()
        self.proj_src = proj_src.detach().cpu().float().contiguous()
        self.proj_dst = proj_dst.detach().cpu().float().contiguous()
        self.bias = layer.bias.detach().cpu().float().view(1, self.heads, self.width)
        self.slope = float(layer.negative_slope)
        self.last = last
        self.acc_width = self.heads * self.width
        self.out_width = self.width if last else self.heads * self.width

    def range_bytes_per_node(self) -> int:
        return 4 * (self.heads * self.width + 3 * self.heads + (self.width if self.last else 0))

    def block_bytes_per_row(self) -> int:
        return 4 * (self.heads * self.width + self.heads)

    def start(self, nd: int) -> None:
        self.acc = np.zeros((nd, self.heads, self.width), dtype=np.float32)
        self.denom = np.zeros((nd, self.heads), dtype=np.float32)
        self.peak = np.full((nd, self.heads), -np.inf, dtype=np.float32)
        self.er = np.empty((nd, self.heads), dtype=np.float32)

    def dst_rows(self, rows: np.ndarray, lo: int, hi: int) -> None:
        torch.mm(_t(rows), self.proj_dst.t(), out=_t(self.er[lo:hi]))

    def source(self, rows: np.ndarray) -> tuple:
        x = _t(rows)
        feat = (x @ self.weight.t()).view(-1, self.heads, self.width)
        return np.ascontiguousarray(feat.numpy()), np.ascontiguousarray((x @ self.proj_src.t()).numpy())

    def own(self, rows, transformed, lo, hi) -> None:
        pass  # GAT has no self term beyond the edges the graph has

    def accumulate(self, kernels, dst, src, transformed: tuple, lo: int, hi: int) -> None:
        feat, el = transformed
        kernels.gat_accumulate(dst, src, feat, el, self.er, np.float32(self.slope), lo, hi, _pieces(),
                               self.peak, self.denom, self.acc)

    def finish(self, degree: np.ndarray) -> np.ndarray:
        acc, denom = _t(self.acc), _t(self.denom)
        acc.mul_(torch.where(denom > 0, 1.0 / denom.clamp(min=1e-38), torch.zeros_like(denom)).unsqueeze(2))
        acc.add_(self.bias)
        out = acc.mean(1) if self.last else F.elu(acc.view(acc.shape[0], -1), inplace=True)
        self.acc = self.denom = self.peak = self.er = None
        return np.ascontiguousarray(out.numpy())


def layer_ops(model) -> list[_LayerOp]:
    """The layer-wise arithmetic of each layer of one of diskgnn's own models (ConfigError for others)."""
    from diskgnn.models import GNN, GATConv, GCNConv, SAGEConv
    if not isinstance(model, GNN):
        raise ConfigError(f"layer-wise inference runs diskgnn's own models (sage, gcn, gat), not "
                          f"{type(model).__name__}; evaluate a pyg:/dgl: model on presampled batches "
                          f"(--eval-fanouts -1,... for all neighbours)")
    ops = []
    for i, layer in enumerate(model.layers):
        last = i == len(model.layers) - 1
        kind = {SAGEConv: _SageOp, GCNConv: _GCNOp, GATConv: _GATOp}.get(type(layer))
        if kind is None:
            raise ConfigError(f"layer-wise inference does not know layer {i} of type {type(layer).__name__}")
        ops.append(kind(layer, last))
    return ops


# --- planning --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RangePlan:
    """How one layer splits the destinations, and what it needs in memory."""
    bounds: np.ndarray
    """int64 [ranges + 1]: range k is destinations ``bounds[k]:bounds[k + 1]``."""
    block_rows: int
    """Source nodes per streamed block."""
    fixed_bytes: int
    """Source blocks (two), their float32 and transformed copies, the writer's staging."""
    room_bytes: int
    """What each range may use (accumulators and in-edges)."""
    range_bytes: int
    """What the largest range needs (at most ``room_bytes``, unless one node's in-edges alone exceed it)."""


def _block_rows(row_bytes: int, block_bytes: int, num_nodes: int) -> int:
    """Rows per source block: a multiple of the rows that make a whole number of 4 KiB pages."""
    unit = 4096 // math.gcd(int(row_bytes), 4096)
    rows = max(unit, int(block_bytes) // int(row_bytes) // unit * unit)
    return int(min(rows, -(-num_nodes // unit) * unit))


def plan_ranges(indptr, *, op: _LayerOp, in_width: int, in_row_bytes: int, index_itemsize: int,
                cfg: LayerwiseConfig, budget_room: int) -> RangePlan:
    """Split the destinations into ranges whose accumulators and in-edges fit ``budget_room`` beside the
    fixed buffers; MemoryBudgetError naming the numbers when not even one node fits."""
    num_nodes = int(indptr.shape[0]) - 1
    block_rows = _block_rows(in_row_bytes, cfg.block_bytes, num_nodes)
    widen = 0 if in_row_bytes == 4 * in_width else 4 * in_width  # float32 copy of a 16-bit block
    fixed = block_rows * (2 * in_row_bytes + widen + op.block_bytes_per_row()) + 2 * WRITER_STAGING
    room = int((budget_room - fixed) * HEADROOM)
    per_node = op.range_bytes_per_node() + 8 + 8 + 4  # accumulators, CSR offsets (read + rebased), degree
    per_edge = 8 + index_itemsize                      # bucketed (dst, src) int32 pairs + the edges as read
    if room < per_node + per_edge * 64:
        raise MemoryBudgetError(
            f"layer-wise inference needs {format_bytes(fixed)} for two source blocks of {block_rows} rows and "
            f"the writer, plus {per_node} bytes per destination node and {per_edge} per in-edge of a range, "
            f"but the memory budget leaves {format_bytes(max(budget_room, 0))}; raise --memory-budget")
    cap = cfg.max_range_nodes or num_nodes
    bounds = [0]
    lo, largest = 0, 0
    while lo < num_nodes:
        base = int(indptr[lo])
        # the largest hi with (hi - lo) * per_node + (indptr[hi] - base) * per_edge <= room (at least lo + 1)
        a, b = lo + 1, min(num_nodes, lo + cap)
        while a < b:
            mid = (a + b + 1) // 2
            if (mid - lo) * per_node + (int(indptr[mid]) - base) * per_edge <= room:
                a = mid
            else:
                b = mid - 1
        largest = max(largest, (a - lo) * per_node + (int(indptr[a]) - base) * per_edge)
        bounds.append(a)
        lo = a
    return RangePlan(bounds=np.asarray(bounds, dtype=np.int64), block_rows=block_rows, fixed_bytes=int(fixed),
                     room_bytes=room, range_bytes=int(largest))


def _budget_room(memory_budget) -> int:
    """Bytes layer-wise inference may add to this process."""
    from diskgnn.memory import process_anon_bytes, resolve_memory_budget
    budget = resolve_memory_budget(memory_budget)
    if memory_budget is None:
        # the available memory, with what the process holds taken out; in a cgroup its mapped files count
        # too (the cgroup's page cache looks reclaimable, but pages this process maps are in use)
        from diskgnn.capabilities import cgroup_memory_limit
        limit = cgroup_memory_limit()
        if limit is not None:
            budget = min(budget, limit - process_rss_bytes())
        return budget
    return budget - process_anon_bytes()



# --- the streaming loop ----------------------------------------------------------------------------

class _Input:
    """The rows a layer reads: the dataset's features (storage dtype) or a previous layer's float32 file."""

    def __init__(self, path: Path, num_nodes: int, width: int, dtype: str, io_depth: int):
        from diskgnn.dataset import feature_dtype
        from diskgnn.io import AlignedReader
        self.path, self.num_nodes, self.width, self.dtype = path, num_nodes, width, dtype
        self.np_dtype = feature_dtype(dtype)
        self.row_bytes = width * self.np_dtype.itemsize
        self.reader = AlignedReader(path, depth=io_depth)
        self.bytes_read = 0

    def _submit(self, lo: int, hi: int, buf: np.ndarray):
        from diskgnn.io import align_up
        length = (hi - lo) * self.row_bytes
        pending = self.reader.submit_runs([(lo * self.row_bytes, length)], buf[:align_up(length)])
        return pending, buf[:length]

    def float_rows(self, raw: np.ndarray, n: int) -> np.ndarray:
        from diskgnn.dtypes import to_float32
        rows = raw.view(self.np_dtype).reshape(n, self.width)
        return rows if self.dtype == "fp32" else to_float32(rows, self.dtype)

    def blocks(self, block_rows: int, wanted: np.ndarray, buffers: list):
        """Yield ``(block, first row, float32 rows)`` for the blocks in ``wanted`` (sorted), reading the next
        one while the caller uses the current one."""
        spans = [(int(b) * block_rows, min(self.num_nodes, (int(b) + 1) * block_rows)) for b in wanted]
        if not spans:
            return
        pending = self._submit(*spans[0], buffers[0])
        for k, (lo, hi) in enumerate(spans):
            waiting, raw = pending
            self.bytes_read += waiting.wait()
            if k + 1 < len(spans):
                pending = self._submit(*spans[k + 1], buffers[(k + 1) % 2])
            yield int(wanted[k]), lo, self.float_rows(raw, hi - lo)

    def rows(self, lo: int, hi: int, block_rows: int, buffers: list):
        """Yield ``(first row, float32 rows)`` of rows ``lo:hi`` in pieces of at most ``block_rows``."""
        for a in range(lo, hi, block_rows):
            b = min(hi, a + block_rows)
            got = self.reader.read(a * self.row_bytes, (b - a) * self.row_bytes, out=buffers[0])  # page-aligned
            self.bytes_read += (b - a) * self.row_bytes
            yield a, self.float_rows(got, b - a)

    def close(self) -> None:
        self.reader.close()


class _CSR:
    """Slices of the dataset's in-edge CSR, read with direct I/O (never the whole arrays)."""

    def __init__(self, dataset):
        from diskgnn.io import AlignedReader
        self.indptr_spec, self.indices_spec = dataset.specs["indptr"], dataset.specs["indices"]
        self.indptr_map = dataset.indptr  # a memory map, touched only at the range bounds while planning
        self.index_dtype = np.dtype(self.indices_spec.dtype)
        self.ptr_reader = AlignedReader(dataset.path / self.indptr_spec.path)
        self.idx_reader = AlignedReader(dataset.path / self.indices_spec.path)
        self.bytes_read = 0

    def range(self, d0: int, d1: int) -> tuple[np.ndarray, np.ndarray]:
        ptr = self.ptr_reader.read(d0 * 8, (d1 - d0 + 1) * 8).view("<i8").astype(np.int64)
        lo, hi = int(ptr[0]), int(ptr[-1])
        isz = self.index_dtype.itemsize
        nbr = self.idx_reader.read(lo * isz, (hi - lo) * isz).view(self.index_dtype) if hi > lo else \
            np.zeros(0, dtype=self.index_dtype)
        self.bytes_read += ptr.nbytes + nbr.nbytes
        ptr -= lo
        return ptr, nbr

    def close(self) -> None:
        self.ptr_reader.close()
        self.idx_reader.close()


def _set_threads(threads: int | None) -> tuple[int, int]:
    """Use ``threads`` (None: every available core) for torch and numba; the previous counts, to restore."""
    import numba
    from diskgnn.capabilities import available_cores
    from diskgnn.loader import set_numba_threads
    previous = (torch.get_num_threads(), numba.get_num_threads())
    n = threads or available_cores()
    torch.set_num_threads(n)
    set_numba_threads(n)
    return previous


@torch.inference_mode()
def layerwise_inference(model, dataset, out_dir, cfg: LayerwiseConfig = LayerwiseConfig(), *,
                        keep: str = "last", collect: np.ndarray | None = None,
                        progress: ProgressFn = no_progress) -> LayerwiseResult:
    """Run ``model`` (one of diskgnn's own, any device) layer by layer over every node of ``dataset``.

    Layer ``l``'s output for all nodes goes to ``out_dir/layer-<l>.bin`` (float32 [N, width]); ``keep``
    says which stay: ``last`` (the model's output), ``all``, or ``none`` (files of hidden layers are
    removed once the next layer is done, and the last layer is not written: evaluation needs only
    ``collect``). ``collect`` (sorted node ids) returns the model's output for those nodes in memory.
    """
    from diskgnn.io import AlignedWriter, aligned_empty
    from diskgnn.kernels import layerwise as kernels
    if keep not in (*KEEP, "none"):
        raise ConfigError(f"keep must be one of {', '.join(KEEP)} or none, got {keep!r}")
    out_dir = Path(out_dir)
    ops = layer_ops(model)
    n = int(dataset.num_nodes)
    if ops and int(model.layers[0].in_dim) != int(dataset.feat_dim):
        raise MismatchError(f"the model takes {model.layers[0].in_dim}-wide input rows, the dataset {dataset.path} "
                            f"has {dataset.feat_dim}-wide features; use the checkpoint trained on this data")
    if collect is not None:
        collect = np.asarray(collect, dtype=np.int64)
        if collect.size and ((np.diff(collect) <= 0).any() or collect[0] < 0 or collect[-1] >= n):
            raise ConfigError("collect must hold distinct node ids in increasing order, each in 0 .. N-1")
    previous_threads = _set_threads(cfg.threads)
    result = LayerwiseResult(collected=None if collect is None else
                             np.empty((collect.size, ops[-1].out_width), dtype=np.float32))
    t_start = time.perf_counter()
    csr = _CSR(dataset)
    source = _Input(dataset.features_path, n, int(dataset.feat_dim), dataset.feat_dtype, cfg.io_depth)
    previous: Path | None = None
    try:
        for i, op in enumerate(ops):
            t0 = time.perf_counter()
            last = i == len(ops) - 1
            plan = plan_ranges(csr.indptr_map, op=op, in_width=source.width, in_row_bytes=source.row_bytes,
                               index_itemsize=csr.index_dtype.itemsize, cfg=cfg,
                               budget_room=_budget_room(cfg.memory_budget))
            num_blocks = -(-n // plan.block_rows)
            log.info("layer %d/%d: %d ranges of up to %d nodes, source blocks of %d rows (buffers %s + the "
                     "largest range %s)", i + 1, len(ops), len(plan.bounds) - 1,
                     int(np.diff(plan.bounds).max(initial=0)), plan.block_rows, format_bytes(plan.fixed_bytes),
                     format_bytes(plan.range_bytes))
            block_bytes = plan.block_rows * source.row_bytes
            buffers = [aligned_empty(block_bytes + 4096), aligned_empty(block_bytes + 4096)]
            path = out_dir / LAYER_FILE.format(i + 1)
            writer = None if (last and keep == "none") else AlignedWriter(path, staging_bytes=WRITER_STAGING)
            read_before = source.bytes_read + csr.bytes_read
            try:
                for k in range(len(plan.bounds) - 1):
                    d0, d1 = int(plan.bounds[k]), int(plan.bounds[k + 1])
                    out = _one_range(kernels, op, csr, source, plan, num_blocks, buffers, d0, d1)
                    if writer is not None:
                        writer.write(out)
                    if last and collect is not None:
                        a, b = np.searchsorted(collect, [d0, d1])
                        result.collected[a:b] = out[collect[a:b] - d0]
                    progress(f"layer {i + 1}/{len(ops)}", d1 - d0, n)
                info = writer.close() if writer is not None else None
            except BaseException:
                if writer is not None:
                    writer.abort()
                    path.unlink(missing_ok=True)
                raise
            del buffers
            stats = LayerStats(layer=i + 1, width=op.out_width, ranges=len(plan.bounds) - 1,
                               seconds=time.perf_counter() - t0,
                               bytes_read=source.bytes_read + csr.bytes_read - read_before,
                               bytes_written=0 if info is None else int(info["bytes"]),
                               range_nodes_max=int(np.diff(plan.bounds).max(initial=0)))
            result.stats.append(stats)
            log.info("layer %d/%d done in %.2f s: read %s, wrote %s", i + 1, len(ops), stats.seconds,
                     format_bytes(stats.bytes_read), format_bytes(stats.bytes_written))
            source.close()
            if previous is not None and keep != "all":
                previous.unlink(missing_ok=True)
                result.files.pop(i, None)
            if info is not None:
                result.files[i + 1] = {"path": path.name, "dtype": "<f4", "shape": [n, op.out_width],
                                       "bytes": int(info["bytes"]), "crc32": int(info["crc32"])}
                previous = path
                if not last:
                    source = _Input(path, n, op.out_width, "fp32", cfg.io_depth)
    finally:
        source.close()
        csr.close()
        from diskgnn.loader import set_numba_threads
        torch.set_num_threads(previous_threads[0])  # a library call leaves the process's thread counts as it found them
        set_numba_threads(previous_threads[1])
    result.seconds = time.perf_counter() - t_start
    return result


def _one_range(kernels, op: _LayerOp, csr: _CSR, source: _Input, plan: RangePlan, num_blocks: int,
               buffers: list, d0: int, d1: int) -> np.ndarray:
    """One destination range of one layer: its rows of the layer's output (float32 [d1 - d0, out width])."""
    nd = d1 - d0
    ptr, nbr = csr.range(d0, d1)
    offsets = np.empty(num_blocks + 1, dtype=np.int64)
    dst = np.empty(nbr.shape[0], dtype=np.int32)
    src = np.empty(nbr.shape[0], dtype=np.int32)
    kernels.bucket_by_source(ptr, nbr, plan.block_rows, offsets, dst, src)
    del nbr
    degree = np.diff(ptr).astype(np.float32)
    del ptr
    op.start(nd)
    if op.dst_rows_first:  # GAT scores every edge with its destination's row: read those rows first
        for a, rows in source.rows(d0, d1, plan.block_rows, buffers):
            op.dst_rows(rows, a - d0, a - d0 + rows.shape[0])
    own_blocks = np.arange(d0 // plan.block_rows, (d1 - 1) // plan.block_rows + 1)
    wanted = np.union1d(np.flatnonzero(np.diff(offsets) > 0), own_blocks)
    for b, lo, rows in source.blocks(plan.block_rows, wanted, buffers):
        transformed = op.source(rows)
        a, z = max(lo, d0), min(lo + rows.shape[0], d1)
        if a < z:
            op.own(rows[a - lo:z - lo], tuple(t[a - lo:z - lo] for t in transformed), a - d0, z - d0)
        if offsets[b + 1] > offsets[b]:
            op.accumulate(kernels, dst, src, transformed, int(offsets[b]), int(offsets[b + 1]))
    return op.finish(degree)


# --- diskgnn embed -------------------------------------------------------------------------------
