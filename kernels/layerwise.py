"""Kernels of layer-wise inference: one destination range's in-edges, grouped by source block, aggregated.

Layer-wise inference (``diskgnn.inference``) computes a layer for a range of destination
nodes at a time while it streams the previous layer's rows in blocks of source nodes. The
range's in-edges (a slice of the in-edge CSR) are first grouped by the block their source
lies in (:func:`bucket_by_source`: a stable counting sort, so inside a bucket the edges
stay in CSR order, i.e. sorted by destination); then, as block ``b``'s rows arrive, its
bucket is folded into per-destination accumulators (:func:`accumulate_rows` for sum, mean
and GCN; :func:`gat_accumulate` for GAT's attention, with an online softmax because a
destination's in-edges arrive block by block).

The parallel kernels split a bucket into pieces that start at a change of destination, so
each destination row is written by one thread (no atomics, no races). Feature arrays are
float32 or float64; outputs are preallocated by the caller.
"""
import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def bucket_by_source(indptr, indices, block_rows, offsets, dst, src):
    """Group a destination range's in-edges by source block (stable counting sort).

    indptr: int64 [nd + 1], this range's CSR offsets rebased to start at 0; indices: int32/int64
    [ne] global source ids; block_rows: source nodes per block. Outputs: offsets int64
    [num_blocks + 1] (bucket b is ``offsets[b]:offsets[b + 1]``), dst int32 [ne] (the edge's
    destination, local to the range) and src int32 [ne] (its source, local to its block).
    """
    num_blocks = offsets.shape[0] - 1
    offsets[:] = 0
    for e in range(indices.shape[0]):
        offsets[indices[e] // block_rows + 1] += 1
    for b in range(num_blocks):
        offsets[b + 1] += offsets[b]
    fill = offsets[:num_blocks].copy()
    for v in range(indptr.shape[0] - 1):
        for e in range(indptr[v], indptr[v + 1]):
            u = indices[e]
            b = u // block_rows
            k = fill[b]
            dst[k] = v
            src[k] = u - b * block_rows
            fill[b] = k + 1


@numba.njit(cache=True, nogil=True)
def _piece_bounds(dst, lo, hi, pieces):
    """``pieces + 1`` cut points of edges ``lo:hi`` (dst non-decreasing), each at a change of destination."""
    cuts = np.empty(pieces + 1, dtype=np.int64)
    cuts[0] = lo
    cuts[pieces] = hi
    for p in range(1, pieces):
        c = lo + (hi - lo) * p // pieces
        if c < cuts[p - 1]:
            c = cuts[p - 1]
        while c > lo and c < hi and dst[c] == dst[c - 1]:
            c += 1
        cuts[p] = c
    return cuts


@numba.njit(cache=True, nogil=True, parallel=True)
def accumulate_rows(dst, src, rows, lo, hi, pieces, acc):
    """``acc[dst[e]] += rows[src[e]]`` for the edges ``e`` in ``lo:hi`` (dst non-decreasing there).

    rows: float [block rows, F]; acc: float [nd, F] (same dtype), updated in place; ``pieces``: how many
    parts the edges are cut into for the threads (a few per thread).
    """
    f = rows.shape[1]
    cuts = _piece_bounds(dst, lo, hi, pieces)
    for p in numba.prange(pieces):
        for e in range(cuts[p], cuts[p + 1]):
            out = acc[dst[e]]
            row = rows[src[e]]
            for j in range(f):
                out[j] += row[j]


@numba.njit(cache=True, nogil=True, parallel=True)
def gat_accumulate(dst, src, feat, el, er, slope, lo, hi, pieces, peak, denom, acc):
    """Fold the edges ``lo:hi`` into GAT's attention sums with an online softmax.

    For edge ``u -> v`` and head ``h`` the score is ``s = leaky_relu(el[u, h] + er[v, h], slope)``;
    per destination and head this keeps the largest score so far (``peak``, start -inf), the sum
    of ``exp(s - peak)`` (``denom``, start 0) and of ``exp(s - peak) * feat[u, h]`` (``acc``,
    start 0), rescaling both when the peak rises. After every block ``acc / denom`` is the
    softmax-weighted sum of the destination's in-edges (0 without any).

    feat: float [block rows, H, D]; el: [block rows, H]; er: [nd, H]; peak, denom: [nd, H];
    acc: [nd, H, D]; all one float dtype. ``pieces`` as in :func:`accumulate_rows`.
    """
    heads, width = feat.shape[1], feat.shape[2]
    cuts = _piece_bounds(dst, lo, hi, pieces)
    for p in numba.prange(pieces):
        for e in range(cuts[p], cuts[p + 1]):
            v, u = dst[e], src[e]
            for h in range(heads):
                s = el[u, h] + er[v, h]
                if s < 0:
                    s = s * slope
                if s > peak[v, h]:
                    shrink = np.exp(peak[v, h] - s)  # 0 for the first edge (peak = -inf)
                    denom[v, h] *= shrink
                    for j in range(width):
                        acc[v, h, j] *= shrink
                    peak[v, h] = s
                w = np.exp(s - peak[v, h])
                denom[v, h] += w
                for j in range(width):
                    acc[v, h, j] += w * feat[u, h, j]
