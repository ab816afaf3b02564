"""Kernels of link prediction: the seeded edge split, negative draws and one presampled link batch.

Every random choice is a pure function of a key and a counter (see
:mod:`diskgnn.kernels.rng`), so results do not depend on the thread count:
an edge's split is a function of ``(split key, its endpoints)``, negative j of
positive i of a batch a function of ``(batch key, i * k + j)``.
"""
import numba
import numpy as np

from diskgnn.kernels.rng import mix_key, randint_below, uniform01
from diskgnn.kernels.sampling import (concat_layers, draw_positions, relabel, reset_map, room_for,
                                     sample_count)
from diskgnn.kernels.synth import _search

# What assign_edges decides for an edge of the message-passing graph.
GRAPH = 0
"""Stays in the graph, not a training target (the share of the edges outside the split)."""
TRAIN = 1
"""Stays in the graph and is a training positive."""
VAL = 2
"""Held out for validation: removed from the graph."""
TEST = 3
"""Held out for testing: removed from the graph."""
REMOVED = 4
"""A given held-out edge (or its reverse) found in the input graph: removed, not recorded again."""

NEGATIVE_TAG = 0x4E45474154495645
"""Mixed into a batch's key for its negative draws (its layer draws use the layer numbers 0 .. L-1)."""


@numba.njit(cache=True, nogil=True, inline="always")
def _contains_sorted(values, x):
    lo = 0
    hi = values.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if values[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo < values.shape[0] and values[lo] == x


@numba.njit(cache=True, nogil=True, parallel=True)
def assign_edges(indptr, indices, first_node, num_nodes, split_key, cut_train, cut_val, cut_test, undirected,
                 removed_keys, out_code):
    """Decide, for every in-edge of destinations ``first_node ..``, whether it is train, val, test or neither.

    indptr: int64 [n+1] local CSR offsets of the destinations ``first_node ..
    first_node+n-1``; indices: int32/int64 [nnz] their sources; out_code: int8
    [nnz] gets one of GRAPH, TRAIN, VAL, TEST, REMOVED per edge.

    ``removed_keys`` (int64, sorted; may be empty) lists ``dst * num_nodes +
    src`` of given held-out edges: such an edge is REMOVED and every other edge
    is TRAIN. Otherwise (``removed_keys`` empty) an edge draws ``x`` uniform in
    [0, 1) keyed by its endpoints (unordered with ``undirected``, so an edge and
    its reverse always share their fate) and is TRAIN below ``cut_train``, VAL
    below ``cut_val``, TEST below ``cut_test``, else GRAPH.
    """
    given = removed_keys.shape[0] > 0
    for j in numba.prange(indptr.shape[0] - 1):
        v = first_node + j
        for e in range(indptr[j], indptr[j + 1]):
            u = np.int64(indices[e])
            if given:
                if _contains_sorted(removed_keys, v * num_nodes + u):
                    out_code[e] = REMOVED
                else:
                    out_code[e] = TRAIN
                continue
            a = u
            b = v
            if undirected and b < a:
                a = v
                b = u
            x = uniform01(mix_key(split_key, a), b)
            if x < cut_train:
                out_code[e] = TRAIN
            elif x < cut_val:
                out_code[e] = VAL
            elif x < cut_test:
                out_code[e] = TEST
            else:
                out_code[e] = GRAPH


@numba.njit(cache=True, nogil=True, parallel=True)
def uniform_candidates(key, first_row, num_nodes, out):
    """Fill ``out`` (int64 [rows, k]) with node ids uniform in ``0 .. num_nodes-1``.

    Entry (i, j) is draw ``(first_row + i) * k + j`` of ``key``, so a matrix
    filled in pieces equals one filled at once.
    """
    k = out.shape[1]
    for i in numba.prange(out.shape[0]):
        base = (first_row + i) * k
        for j in range(k):
            out[i, j] = randint_below(key, base + j, num_nodes)


@numba.njit(cache=True, nogil=True, parallel=True)
def weighted_candidates(key, first_row, cum_weights, out):
    """Fill ``out`` (int64 [rows, k]) with node ids drawn with probability proportional to their weight.

    cum_weights: float64 [N], the running sum of non-negative node weights (last
    entry > 0). Entry (i, j) uses draw ``(first_row + i) * k + j`` of ``key``.
    """
    k = out.shape[1]
    n = cum_weights.shape[0]
    total = cum_weights[n - 1]
    for i in numba.prange(out.shape[0]):
        base = (first_row + i) * k
        for j in range(k):
            v = _search(cum_weights, 0, cum_weights.shape[0], uniform01(key, base + j) * total)
            out[i, j] = v if v < n else n - 1


@numba.njit(cache=True, nogil=True, inline="always")
def _is_excluded(u, group, group_ptr, group_src):
    """Whether source ``u`` is one of the sorted excluded sources of exclusion group ``group``."""
    lo = group_ptr[group]
    hi = group_ptr[group + 1]
    while lo < hi:
        mid = (lo + hi) >> 1
        if group_src[mid] < u:
            lo = mid + 1
        else:
            hi = mid
    return lo < group_ptr[group + 1] and group_src[lo] == u


@numba.njit(cache=True, nogil=True, parallel=True)
def sample_layer_excluding(indptr, indices, dst_nodes, fanout, layer_key, offsets, out_neighbors,
                           excl_group, group_ptr, group_src, group_count):
    """:func:`~diskgnn.kernels.sampling.sample_layer` on the graph minus some edges (link prediction's excluded edges).

    ``excl_group`` (int32 [N], or empty for no exclusion) holds, for a node with
    excluded in-edges, its exclusion group g (else -1); the group's excluded
    sources are ``group_src[group_ptr[g]:group_ptr[g+1]]`` (int64, sorted), and
    ``group_count[g]`` is how many positions of the node's CSR segment hold one
    of them. Such a node samples from its other in-edges exactly as a node of
    that smaller degree would (same key, same draws), mapped back to CSR order.
    """
    has_excl = excl_group.shape[0] > 0
    for i in numba.prange(dst_nodes.shape[0]):
        v = dst_nodes[i]
        lo = indptr[v]
        deg = indptr[v + 1] - lo
        start = offsets[i]
        k = offsets[i + 1] - start
        g = excl_group[v] if has_excl else -1
        if g < 0:
            if k == deg:
                for j in range(k):
                    out_neighbors[start + j] = indices[lo + j]
                continue
            key = mix_key(layer_key, v)
            draw_positions(key, deg, k, out_neighbors, start)
            for j in range(k):
                out_neighbors[start + j] = indices[lo + out_neighbors[start + j]]
            continue
        kept = deg - group_count[g]
        if k == kept:
            q = 0
            for p in range(deg):
                u = indices[lo + p]
                if not _is_excluded(u, g, group_ptr, group_src):
                    out_neighbors[start + q] = u
                    q += 1
            continue
        key = mix_key(layer_key, v)
        draw_positions(key, kept, k, out_neighbors, start)
        # positions among the kept in-edges, ascending: walk the segment once, skipping excluded ones
        q = 0
        r = 0
        for p in range(deg):
            if q == k:
                break
            u = indices[lo + p]
            if _is_excluded(u, g, group_ptr, group_src):
                continue
            if r == out_neighbors[start + q]:
                out_neighbors[start + q] = u
                q += 1
            r += 1


@numba.njit(cache=True, nogil=True)
def sample_blocks_excluding(indptr, indices, seeds, fanouts, batch_key, node_map, excl_group, group_ptr, group_src,
                            group_count):
    """:func:`~diskgnn.kernels.sampling.sample_blocks` on the graph minus the excluded edges of :func:`sample_layer_excluding`.

    Every node then samples ``min(fanout, degree - excluded in-edges)`` of its
    other in-edges, at every layer. ``excl_group`` empty: no exclusion (the same
    output as :func:`sample_blocks`).
    """
    num_layers = fanouts.shape[0]
    batch = seeds.shape[0]
    has_excl = excl_group.shape[0] > 0
    nodes = np.empty(max(2 * batch, 16), dtype=np.int64)
    for i in range(batch):
        nodes[i] = seeds[i]
        node_map[seeds[i]] = i
    num_nodes = batch
    layer_sizes = np.empty(num_layers + 1, dtype=np.int64)
    layer_sizes[num_layers] = batch
    offsets_of = [np.empty(0, dtype=np.int64) for _ in range(num_layers)]
    locals_of = [np.empty(0, dtype=np.int32) for _ in range(num_layers)]
    for layer in range(num_layers - 1, -1, -1):
        num_dst = num_nodes
        dst = nodes[:num_dst]
        offsets = np.empty(num_dst + 1, dtype=np.int64)
        offsets[0] = 0
        fanout = fanouts[layer]
        for i in range(num_dst):
            v = dst[i]
            deg = indptr[v + 1] - indptr[v]
            if has_excl and excl_group[v] >= 0:
                deg -= group_count[excl_group[v]]
            offsets[i + 1] = offsets[i] + sample_count(deg, fanout)
        num_edges = offsets[num_dst]
        neighbors = np.empty(num_edges, dtype=np.int64)
        sample_layer_excluding(indptr, indices, dst, fanout, mix_key(batch_key, layer), offsets, neighbors,
                               excl_group, group_ptr, group_src, group_count)
        nodes = room_for(nodes, num_nodes, num_edges)
        local = np.empty(num_edges, dtype=np.int32)
        num_nodes = relabel(neighbors, node_map, nodes, num_nodes, local)
        layer_sizes[layer] = num_nodes
        offsets_of[layer] = offsets
        locals_of[layer] = local
    reset_map(node_map, nodes, num_nodes)
    block_indptr, block_indices = concat_layers(offsets_of, locals_of)
    return nodes[:num_nodes].copy(), layer_sizes, block_indptr, block_indices


@numba.njit(cache=True, nogil=True)
def _relabel_one(v, node_map, nodes, num_nodes):
    local = node_map[v]
    if local < 0:
        local = num_nodes
        node_map[v] = local
        nodes[num_nodes] = v
    return local


@numba.njit(cache=True, nogil=True)
def endpoint_seeds(pos_src, pos_dst, candidates, node_map):
    """The distinct endpoints of a batch as seeds, and each pair's seed positions.

    pos_src, pos_dst: int64 [P]; candidates: int64 [P, k] (negative or candidate
    destinations of each positive); node_map: int32 [N] all -1 (restored).
    Seeds are the endpoints in first-appearance order: every source, then
    every destination, then the candidates row by row. Returns ``(seeds int64
    [B], pairs int32 [P, 2 + k])`` with row i = positions of (src, dst,
    candidate 0, ..., candidate k-1) of positive i in ``seeds``.
    """
    p = pos_src.shape[0]
    k = candidates.shape[1]
    nodes = np.empty(p * (2 + k), dtype=np.int64)
    pairs = np.empty((p, 2 + k), dtype=np.int32)
    n = 0
    for i in range(p):
        local = _relabel_one(pos_src[i], node_map, nodes, n)
        if local == n:
            n += 1
        pairs[i, 0] = local
    for i in range(p):
        local = _relabel_one(pos_dst[i], node_map, nodes, n)
        if local == n:
            n += 1
        pairs[i, 1] = local
    for i in range(p):
        for j in range(k):
            local = _relabel_one(candidates[i, j], node_map, nodes, n)
            if local == n:
                n += 1
            pairs[i, 2 + j] = local
    reset_map(node_map, nodes, n)
    return nodes[:n].copy(), pairs


@numba.njit(cache=True, nogil=True)
def exclusion_groups(indptr, indices, pos_src, pos_dst, reverse, excl_group):
    """Group the in-edges to exclude from a batch's sampling by destination.

    The excluded edges are ``src -> dst`` of every positive and, with
    ``reverse``, ``dst -> src`` too. Sets ``excl_group[v]`` (int32 [N], all -1
    on entry) to the group of every destination v with excluded in-edges and
    returns ``(group_nodes, group_ptr, group_src, group_count)``: the group's
    node, offsets into ``group_src`` (its distinct excluded sources, sorted) and
    how many positions of the node's CSR segment hold one of them (a multigraph
    repeats an edge; every copy is excluded). Undo with :func:`clear_groups`.
    """
    p = pos_src.shape[0]
    m = 2 * p if reverse else p
    dst = np.empty(m, dtype=np.int64)
    src = np.empty(m, dtype=np.int64)
    for i in range(p):
        dst[i] = pos_dst[i]
        src[i] = pos_src[i]
        if reverse:
            dst[p + i] = pos_src[i]
            src[p + i] = pos_dst[i]
    order = np.argsort(dst * np.int64(indptr.shape[0]) + src, kind="mergesort")
    group_nodes = np.empty(m, dtype=np.int64)
    group_ptr = np.zeros(m + 1, dtype=np.int64)
    group_src = np.empty(m, dtype=np.int64)
    g = -1
    q = 0
    for t in range(m):
        e = order[t]
        v = dst[e]
        u = src[e]
        if g < 0 or group_nodes[g] != v:
            g += 1
            group_nodes[g] = v
            group_ptr[g] = q
            excl_group[v] = g
        elif group_src[q - 1] == u:
            continue  # the same edge twice in the batch
        group_src[q] = u
        q += 1
    num_groups = g + 1
    group_ptr[num_groups] = q
    group_count = np.zeros(num_groups, dtype=np.int64)
    for g in range(num_groups):
        v = group_nodes[g]
        lo = group_ptr[g]
        hi = group_ptr[g + 1]
        for e in range(indptr[v], indptr[v + 1]):
            if _contains_sorted(group_src[lo:hi], np.int64(indices[e])):
                group_count[g] += 1
    return group_nodes[:num_groups].copy(), group_ptr[:num_groups + 1].copy(), group_src[:q].copy(), group_count


@numba.njit(cache=True, nogil=True)
def clear_groups(excl_group, group_nodes):
    """Set ``excl_group`` back to -1 at the groups' nodes."""
    for g in range(group_nodes.shape[0]):
        excl_group[group_nodes[g]] = -1


@numba.njit(cache=True, nogil=True)
def sample_link_batch(indptr, indices, pos_src, pos_dst, candidates, fanouts, batch_key, node_map, excl_group,
                      exclude, reverse):
    """Sample one link-prediction batch: the blocks around every endpoint, the batch's positives excluded.

    pos_src, pos_dst: int64 [P] the positive edges; candidates: int64 [P, k]
    their negative (training) or candidate (evaluation) destinations; fanouts,
    batch_key, node_map as :func:`~diskgnn.kernels.sampling.sample_blocks`;
    excl_group: int32 [N] all -1 (restored). With ``exclude`` the positive
    edges (and with ``reverse`` their reverses) are removed from the graph for
    this batch's sampling, at every layer.

    Returns ``(input_nodes, layer_sizes, block_indptr, block_indices, pairs)``:
    the first four as sample_blocks over the seeds of :func:`endpoint_seeds`,
    ``pairs`` int32 [P, 2 + k] each positive's seed positions.
    """
    seeds, pairs = endpoint_seeds(pos_src, pos_dst, candidates, node_map)
    if exclude:
        group_nodes, group_ptr, group_src, group_count = exclusion_groups(indptr, indices, pos_src, pos_dst,
                                                                          reverse, excl_group)
        out = sample_blocks_excluding(indptr, indices, seeds, fanouts, batch_key, node_map, excl_group, group_ptr,
                                      group_src, group_count)
        clear_groups(excl_group, group_nodes)
    else:
        empty = np.empty(0, dtype=np.int64)
        out = sample_blocks_excluding(indptr, indices, seeds, fanouts, batch_key, node_map,
                                      np.full(0, -1, dtype=np.int32), empty, empty, empty)
    return out[0], out[1], out[2], out[3], pairs


@numba.njit(cache=True, nogil=True)
def count_excluded_edges(input_nodes, block_indptr, block_indices, pos_src, pos_dst, reverse):
    """How many edges of one block are excluded edges (``src -> dst`` of a positive, or the reverse).

    Destination j is ``input_nodes[j]``, its sources
    ``input_nodes[block_indices[block_indptr[j]:block_indptr[j+1]]]``.
    """
    p = pos_src.shape[0]
    n = np.int64(0)
    for i in range(input_nodes.shape[0]):
        if input_nodes[i] > n:
            n = input_nodes[i]
    n += 1
    for i in range(p):
        if pos_src[i] >= n:
            n = pos_src[i] + 1
        if pos_dst[i] >= n:
            n = pos_dst[i] + 1
    m = 2 * p if reverse else p
    keys = np.empty(m, dtype=np.int64)
    for i in range(p):
        keys[i] = pos_dst[i] * n + pos_src[i]
        if reverse:
            keys[p + i] = pos_src[i] * n + pos_dst[i]
    keys.sort()
    bad = 0
    for j in range(block_indptr.shape[0] - 1):
        v = input_nodes[j]
        for e in range(block_indptr[j], block_indptr[j + 1]):
            if _contains_sorted(keys, v * n + input_nodes[block_indices[e]]):
                bad += 1
    return bad


@numba.njit(cache=True, nogil=True, parallel=True)
def count_present_edges(indptr, indices, src, dst):
    """How many of the edges ``src[i] -> dst[i]`` (int64 [m] each) are in-edges of the CSR graph."""
    found = 0
    for i in numba.prange(src.shape[0]):
        v = dst[i]
        u = src[i]
        for e in range(indptr[v], indptr[v + 1]):
            if indices[e] == u:
                found += 1
                break
    return found


@numba.njit(cache=True, nogil=True, parallel=True)
def find_edge_ids(indptr, indices, src, dst, out):
    """CSR position (edge id) of every edge ``src[i] -> dst[i]`` into ``out`` (int64 [m]); -1 when absent.

    Edge ids are positions in the in-edge CSR, the numbering a DGL graph built
    from it in CSC form uses. With repeated edges, the first copy is found.
    """
    for i in numba.prange(src.shape[0]):
        v = dst[i]
        u = src[i]
        out[i] = -1
        for e in range(indptr[v], indptr[v + 1]):
            if indices[e] == u:
                out[i] = e
                break
