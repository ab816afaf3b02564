"""Fused message-passing kernels over one block's CSR and its transpose.

A block has ``num_dst`` destination rows; edge ``e`` of row ``v`` (``indptr[v] <= e <
indptr[v + 1]``) goes from source ``indices[e]`` to ``v``. The transpose lists the same
edges by source: ``t_indptr`` [num_src + 1], ``t_dst`` (each edge's destination) and
``t_edge`` (its position in the CSR), in increasing edge order within a source.

No kernel materialises a per-edge feature row: forward passes run in parallel over
destination rows, backward passes over source rows through the transpose, so every
output row is written by exactly one thread (no atomics, no races). Per-edge scalars
(GAT's attention, ``[nnz, heads]``) are small and kept. Feature arrays are float32 or
float64 (one compiled specialisation each); outputs are preallocated by the caller.
"""
import numba
import numpy as np

from diskgnn.kernels.prefetch import LOOKAHEAD, prefetch_row


@numba.njit(cache=True, nogil=True)
def csr_transpose(indptr, indices, num_src, t_indptr, t_dst, t_edge):
    """Fill the by-source transpose of a CSR over destinations (counting sort, stable in edge order).

    indptr: int64 [num_dst + 1]; indices: int32/int64 [nnz] in [0, num_src).
    t_indptr: int64 [num_src + 1]; t_dst: int32 [nnz]; t_edge: int64 [nnz] (outputs).
    """
    num_dst = indptr.shape[0] - 1
    t_indptr[:] = 0
    for e in range(indices.shape[0]):
        t_indptr[indices[e] + 1] += 1
    for u in range(num_src):
        t_indptr[u + 1] += t_indptr[u]
    fill = t_indptr[:num_src].copy()
    for v in range(num_dst):
        for e in range(indptr[v], indptr[v + 1]):
            u = indices[e]
            k = fill[u]
            t_dst[k] = v
            t_edge[k] = e
            fill[u] = k + 1


SELF_NONE = 0
"""``aggregate_rows`` self modes: the destination's own row is left out,"""
SELF_ADD = 1
"""added to the sum before scaling (GCN),"""
SELF_CONCAT = 2
"""or written beside the scaled sum: ``out[v] = [h[v], row_scale[v] * sum]`` (GraphSAGE)."""


@numba.njit(cache=True, nogil=True, parallel=True)
def aggregate_rows(indptr, indices, h, row_scale, self_mode, out):
    """``out[v] = row_scale[v] * sum_{e in row v} h[indices[e]]``, with the destination's own row per ``self_mode``.

    h: float [num_src, F] (C-contiguous); row_scale: float [num_dst] (same dtype);
    out: float [num_dst, F], or [num_dst, 2F] with :data:`SELF_CONCAT`. Mean aggregation
    is ``row_scale = 1 / max(degree, 1)``; GCN's is ``1 / (degree + 1)`` with :data:`SELF_ADD`.
    """
    f = h.shape[1]
    nnz = indices.shape[0]
    for v in numba.prange(indptr.shape[0] - 1):
        if self_mode == SELF_CONCAT:
            own = out[v, :f]
            acc = out[v, f:]
            for j in range(f):
                own[j] = h[v, j]
                acc[j] = 0
        else:
            acc = out[v]
            for j in range(f):
                acc[j] = h[v, j] if self_mode == SELF_ADD else 0
        for e in range(indptr[v], indptr[v + 1]):
            if e + LOOKAHEAD < nnz:
                prefetch_row(h, indices[e + LOOKAHEAD])
            row = h[indices[e]]
            for j in range(f):
                acc[j] += row[j]
        s = row_scale[v]
        for j in range(f):
            acc[j] *= s


@numba.njit(cache=True, nogil=True, parallel=True)
def aggregate_rows_backward(t_indptr, t_dst, grad_out, row_scale, self_mode, grad_h):
    """Gradient of :func:`aggregate_rows` with respect to ``h``, by source row through the transpose.

    ``grad_h[u] = sum_{edges u -> v} row_scale[v] * g[v]`` plus, for ``u < num_dst``, the
    own-row term: ``row_scale[u] * g[u]`` (:data:`SELF_ADD`) or ``grad_out[u, :F]``
    (:data:`SELF_CONCAT`, where ``g`` is ``grad_out[:, F:]``; else ``g = grad_out``).
    grad_out: float [num_dst, F] or [num_dst, 2F]; grad_h: float [num_src, F] (output).
    """
    f = grad_h.shape[1]
    num_dst = grad_out.shape[0]
    off = f if self_mode == SELF_CONCAT else 0
    nnz = t_dst.shape[0]
    for u in numba.prange(t_indptr.shape[0] - 1):
        acc = grad_h[u]
        if u < num_dst and self_mode == SELF_CONCAT:
            for j in range(f):
                acc[j] = grad_out[u, j]
        elif u < num_dst and self_mode == SELF_ADD:
            s = row_scale[u]
            for j in range(f):
                acc[j] = s * grad_out[u, j]
        else:
            for j in range(f):
                acc[j] = 0
        for k in range(t_indptr[u], t_indptr[u + 1]):
            if k + LOOKAHEAD < nnz:
                prefetch_row(grad_out, t_dst[k + LOOKAHEAD])
            v = t_dst[k]
            s = row_scale[v]
            g = grad_out[v, off:]
            for j in range(f):
                acc[j] += s * g[j]


@numba.njit(cache=True, nogil=True, parallel=True)
def gat_forward(indptr, indices, feat, el, er, slope, alpha, out):
    """Multi-head attention aggregation of one block, fused with its edge softmax.

    feat: float [num_src, H, D] projected source rows; el: float [num_src, H] and
    er: float [num_dst, H] the source and destination attention terms. Edge ``e``
    (``u -> v``) scores ``leaky_relu(el[u] + er[v], slope)``, ``alpha[e]`` is the softmax of
    the scores over row ``v`` (output, float [nnz, H]) and
    ``out[v, h] = sum_e alpha[e, h] * feat[u, h]`` (output, float [num_dst, H, D];
    zero for a destination without in-edges).
    """
    heads = feat.shape[1]
    d = feat.shape[2]
    flat = feat.reshape((feat.shape[0], heads * d))
    nnz = indices.shape[0]
    for v in numba.prange(indptr.shape[0] - 1):
        lo = indptr[v]
        hi = indptr[v + 1]
        for e in range(hi, min(hi + LOOKAHEAD, nnz)):  # the next row's sources, while this row computes
            prefetch_row(flat, indices[e])
            prefetch_row(el, indices[e])
        for h in range(heads):
            acc = out[v, h]
            for j in range(d):
                acc[j] = 0
            if lo == hi:
                continue
            peak = -np.inf
            for e in range(lo, hi):
                s = el[indices[e], h] + er[v, h]
                if s < 0:
                    s = s * slope
                alpha[e, h] = s
                if s > peak:
                    peak = s
            total = 0.0
            for e in range(lo, hi):
                w = np.exp(alpha[e, h] - peak)
                alpha[e, h] = w
                total += w
            inv = 1.0 / total
            for e in range(lo, hi):
                w = alpha[e, h] * inv
                alpha[e, h] = w
                row = feat[indices[e], h]
                for j in range(d):
                    acc[j] += w * row[j]


@numba.njit(cache=True, nogil=True, parallel=True)
def gat_backward_dst(indptr, indices, feat, el, er, slope, alpha, grad_out, grad_score, grad_er):
    """First half of :func:`gat_forward`'s backward, by destination row.

    Fills ``grad_score[e, h]`` (float [nnz, H]): the loss gradient with respect to the
    edge's pre-activation score ``el[u, h] + er[v, h]``, through the weighted sum, the
    softmax and the leaky ReLU; and ``grad_er[v, h]`` (float [num_dst, H]), its row sums.
    """
    heads = feat.shape[1]
    d = feat.shape[2]
    flat = feat.reshape((feat.shape[0], heads * d))
    nnz = indices.shape[0]
    for v in numba.prange(indptr.shape[0] - 1):
        lo = indptr[v]
        hi = indptr[v + 1]
        for e in range(hi, min(hi + LOOKAHEAD, nnz)):  # the next row's sources, while this row computes
            prefetch_row(flat, indices[e])
            prefetch_row(el, indices[e])
        for h in range(heads):
            g = grad_out[v, h]
            weighted = 0.0
            for e in range(lo, hi):
                row = feat[indices[e], h]
                dot = 0.0
                for j in range(d):
                    dot += g[j] * row[j]
                grad_score[e, h] = dot
                weighted += alpha[e, h] * dot
            total = 0.0
            for e in range(lo, hi):
                ds = alpha[e, h] * (grad_score[e, h] - weighted)
                if not el[indices[e], h] + er[v, h] > 0:
                    ds = ds * slope
                grad_score[e, h] = ds
                total += ds
            grad_er[v, h] = total


@numba.njit(cache=True, nogil=True, parallel=True)
def gat_backward_src(t_indptr, t_dst, t_edge, alpha, grad_score, grad_out, grad_feat, grad_el):
    """Second half of :func:`gat_forward`'s backward, by source row through the transpose.

    ``grad_feat[u, h] = sum_{edges e: u -> v} alpha[e, h] * grad_out[v, h]`` (float
    [num_src, H, D]) and ``grad_el[u, h] = sum_e grad_score[e, h]`` (float [num_src, H]).
    """
    heads = grad_out.shape[1]
    d = grad_out.shape[2]
    flat = grad_out.reshape((grad_out.shape[0], heads * d))
    nnz = t_dst.shape[0]
    for u in numba.prange(t_indptr.shape[0] - 1):
        for h in range(heads):
            acc = grad_feat[u, h]
            for j in range(d):
                acc[j] = 0
            grad_el[u, h] = 0
        for k in range(t_indptr[u], t_indptr[u + 1]):
            if k + LOOKAHEAD < nnz:
                prefetch_row(flat, t_dst[k + LOOKAHEAD])
            v = t_dst[k]
            e = t_edge[k]
            for h in range(heads):
                a = alpha[e, h]
                grad_el[u, h] += grad_score[e, h]
                acc = grad_feat[u, h]
                g = grad_out[v, h]
                for j in range(d):
                    acc[j] += a * g[j]


@numba.njit(cache=True, nogil=True, parallel=True)
def relu_backward(out, grad_out, grad):
    """``grad = grad_out * (out > 0)`` over flat float arrays of one length (no temporary mask)."""
    for i in numba.prange(out.shape[0]):
        grad[i] = grad_out[i] if out[i] > 0 else 0
