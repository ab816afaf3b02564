"""Kernels that build an in-edge CSR from edge pairs, one destination range at a time."""
import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def count_in_degrees(src, dst, num_nodes, drop_self_loops, undirected, counts):
    """Check node ids and add each edge to the in-degree of its destination.

    src, dst: int64[E]; counts: int64[num_nodes], updated in place. With
    ``undirected`` the reverse edge (dst -> src) is counted as well (a
    self-loop once). Returns the index of the first edge with an id outside
    ``0 .. num_nodes-1`` (nothing of that edge or later ones is counted), or -1.
    """
    for e in range(src.shape[0]):
        s = src[e]
        d = dst[e]
        if s < 0 or s >= num_nodes or d < 0 or d >= num_nodes:
            return e
        if s == d:
            if not drop_self_loops:
                counts[d] += 1
            continue
        counts[d] += 1
        if undirected:
            counts[s] += 1
    return -1


@numba.njit(cache=True, nogil=True)
def choose_ranges(counts, max_edges):
    """Cut nodes 0..N-1 into consecutive ranges holding at most ``max_edges`` in-edges each.

    counts: int64[N]. A single node with more in-edges than ``max_edges`` gets a
    range of its own. Returns int64[R+1] range boundaries (0 first, N last).
    """
    n = counts.shape[0]
    bounds = np.empty(n + 1, dtype=np.int64)
    bounds[0] = 0
    r = 0
    held = 0
    for v in range(n):
        c = counts[v]
        if held > 0 and held + c > max_edges:
            r += 1
            bounds[r] = v
            held = 0
        held += c
    r += 1
    bounds[r] = n
    return bounds[:r + 1].copy()


@numba.njit(cache=True, nogil=True, inline="always")
def _range_of(bounds, v):
    lo = 0
    hi = bounds.shape[0] - 1
    while hi - lo > 1:  # bounds[lo] <= v < bounds[hi]
        mid = (lo + hi) >> 1
        if bounds[mid] <= v:
            lo = mid
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def group_by_range(src, dst, bounds, drop_self_loops, undirected, out_local_dst, out_src, range_starts):
    """Scatter edges into destination-range order (stable), as (local destination, source) pairs.

    src, dst: int64[E] with valid ids; bounds: int64[R+1] from :func:`choose_ranges`.
    out_local_dst, out_src: [>= 2E with ``undirected``, else >= E] of any integer
    dtype wide enough; range_starts: int64[R+1], filled with where each range's
    edges start. ``local destination = dst - bounds[range]``. Self-loops are
    skipped with ``drop_self_loops``; ``undirected`` adds (dst, src) for every
    non-loop edge. Returns the number of pairs written.
    """
    nr = bounds.shape[0] - 1
    fill = np.zeros(nr + 1, dtype=np.int64)
    for e in range(src.shape[0]):
        s = src[e]
        d = dst[e]
        if s == d:
            if not drop_self_loops:
                fill[_range_of(bounds, d) + 1] += 1
            continue
        fill[_range_of(bounds, d) + 1] += 1
        if undirected:
            fill[_range_of(bounds, s) + 1] += 1
    for r in range(nr):
        fill[r + 1] += fill[r]
    for r in range(nr + 1):
        range_starts[r] = fill[r]
    for e in range(src.shape[0]):
        s = src[e]
        d = dst[e]
        if s == d and drop_self_loops:
            continue
        r = _range_of(bounds, d)
        p = fill[r]
        out_local_dst[p] = d - bounds[r]
        out_src[p] = s
        fill[r] = p + 1
        if undirected and s != d:
            r = _range_of(bounds, s)
            p = fill[r]
            out_local_dst[p] = s - bounds[r]
            out_src[p] = d
            fill[r] = p + 1
    return range_starts[nr]


@numba.njit(cache=True, nogil=True)
def counting_sort_by_destination(local_dst, src, num_dst, indptr, out_src):
    """Group ``src`` by ``local_dst`` (stable): a CSR over destinations 0..num_dst-1.

    local_dst: int[E] in 0..num_dst-1; src: int[E]; indptr: int64[num_dst+1]
    (output offsets); out_src: [E] (output, same dtype as ``src``).
    """
    for v in range(num_dst + 1):
        indptr[v] = 0
    for e in range(local_dst.shape[0]):
        indptr[local_dst[e] + 1] += 1
    for v in range(num_dst):
        indptr[v + 1] += indptr[v]
    fill = indptr[:num_dst].copy()
    for e in range(local_dst.shape[0]):
        v = local_dst[e]
        out_src[fill[v]] = src[e]
        fill[v] += 1


@numba.njit(cache=True, nogil=True, parallel=True)
def sort_segments(indptr, indices, drop_duplicates, counts):
    """Sort each node's sources ascending in place; ``counts[v]`` gets its kept length.

    indptr: int64[V+1]; indices: int[E]; counts: int64[V]. With
    ``drop_duplicates`` the unique sources are moved to the front of the
    segment and only they are counted.
    """
    for v in numba.prange(indptr.shape[0] - 1):
        lo = indptr[v]
        hi = indptr[v + 1]
        if hi - lo > 1:
            indices[lo:hi] = np.sort(indices[lo:hi])
        if drop_duplicates and hi - lo > 1:
            m = 1
            for j in range(lo + 1, hi):
                if indices[j] != indices[lo + m - 1]:
                    indices[lo + m] = indices[j]
                    m += 1
            counts[v] = m
        else:
            counts[v] = hi - lo


@numba.njit(cache=True, nogil=True)
def compact_segments_inplace(indptr, indices, counts):
    """Move the first ``counts[v]`` items of each segment to the front, back to back.

    Rewrites ``indptr`` (int64[V+1]) to the compacted offsets; returns the new
    total. Safe in place because every item moves left or stays.
    """
    pos = 0
    for v in range(indptr.shape[0] - 1):
        lo = indptr[v]
        c = counts[v]
        if pos != lo:
            for j in range(c):
                indices[pos + j] = indices[lo + j]
        indptr[v] = pos
        pos += c
    indptr[indptr.shape[0] - 1] = pos
    return pos
