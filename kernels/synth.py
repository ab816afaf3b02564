"""Kernels of the synthetic graph generator."""
import numba
import numpy as np

from diskgnn.kernels.rng import mix_key, uniform01


@numba.njit(cache=True, nogil=True)
def _search(cum, lo, hi, r):
    """First index i in [lo, hi) with cum[i] > r (cum is non-decreasing)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if cum[mid] > r:
            hi = mid
        else:
            lo = mid + 1
    return lo


@numba.njit(cache=True, nogil=True, parallel=True)
def generate_in_edges(lo, hi, seed, degree, community, comm_start, by_community, cum_in_community,
                      cum_global, homophily, edge_offsets, out_sources, out_counts):
    """Draw the in-neighbours of destination nodes ``lo .. hi-1``.

    degree: int64[N] target in-degree; community: int32[N]; comm_start: int64[C+1]
    offsets of each community in ``by_community`` (int64[N], node ids grouped by
    community); cum_in_community: float64[N] cumulative popularity within each
    community's range; cum_global: float64[N] cumulative popularity over all nodes.
    edge_offsets: int64[hi-lo+1] where each node's draws go in ``out_sources``.
    A draw picks, with probability ``homophily``, a node of the same community,
    otherwise any node, proportionally to popularity. Each node's sources are
    sorted and de-duplicated in place; ``out_counts[i]`` gets the unique count.
    """
    n = hi - lo
    total = cum_global[cum_global.shape[0] - 1]
    for i in numba.prange(n):
        v = lo + i
        key = mix_key(seed, v)
        start = edge_offsets[i]
        d = edge_offsets[i + 1] - start
        c = community[v]
        c_lo = comm_start[c]
        c_hi = comm_start[c + 1]
        base = cum_in_community[c_lo - 1] if c_lo > 0 else 0.0
        c_total = cum_in_community[c_hi - 1] - base
        for j in range(d):
            if uniform01(key, 2 * j) < homophily and c_total > 0.0:
                r = base + uniform01(key, 2 * j + 1) * c_total
                k = _search(cum_in_community, c_lo, c_hi, r)
                if k >= c_hi:
                    k = c_hi - 1
                out_sources[start + j] = by_community[k]
            else:
                r = uniform01(key, 2 * j + 1) * total
                k = _search(cum_global, 0, cum_global.shape[0], r)
                if k >= cum_global.shape[0]:
                    k = cum_global.shape[0] - 1
                out_sources[start + j] = k
        seg = np.sort(out_sources[start:start + d])
        m = 0
        for j in range(d):
            if j == 0 or seg[j] != seg[j - 1]:
                out_sources[start + m] = seg[j]
                m += 1
        out_counts[i] = m


@numba.njit(cache=True, nogil=True)
def compact_segments(values, offsets, counts, out):
    """Copy the first ``counts[i]`` items of each segment ``offsets[i]..`` into ``out`` back to back."""
    pos = 0
    for i in range(counts.shape[0]):
        s = offsets[i]
        for j in range(counts[i]):
            out[pos] = values[s + j]
            pos += 1
    return pos


@numba.njit(cache=True, nogil=True)
def group_by_community(community, comm_start, out):
    """Node ids grouped by community, ascending inside each (a stable counting sort).

    community: int32 [N]; comm_start: int64 [C+1] offsets of each community's
    nodes (the cumulative counts); out: int32/int64 [N] receives the ids, equal
    to ``np.argsort(community, kind="stable")`` without its int64 temporaries.
    """
    fill = comm_start[:-1].copy()
    for v in range(community.shape[0]):
        c = community[v]
        out[fill[c]] = v
        fill[c] += 1
