"""Kernels of the offline neighbour sampler.

Multi-layer uniform neighbour sampling without replacement over the in-edge
CSR (``indptr`` int64 [N+1], ``indices`` int32/int64 [E]), then relabelling
of every layer's nodes to local ids. Every random draw is a pure function of
``(batch_key, layer, node, counter)`` (see :mod:`diskgnn.kernels.rng`), so the
result does not depend on how many threads run or which thread takes a node.
"""
import numba
import numpy as np

from diskgnn.kernels.rng import mix_key, randint_below, uniform01


@numba.njit(cache=True, nogil=True)
def floyd_positions(key, deg, k, out, start):
    """Draw ``k`` distinct positions from ``0 .. deg-1`` (0 < k < deg) with Floyd's algorithm.

    Every k-subset is equally likely. The positions are written sorted ascending
    to ``out[start:start+k]`` (int64). Costs k draws and O(k^2) comparisons.
    """
    n = 0  # positions chosen so far, kept sorted in out[start:start+n]
    for j in range(deg - k, deg):
        t = randint_below(key, j, j + 1)
        # find where t belongs; every chosen position is < j, so j itself always goes last
        p = start + n
        while p > start and out[p - 1] > t:
            p -= 1
        if p > start and out[p - 1] == t:
            out[start + n] = j
        else:
            q = start + n
            while q > p:
                out[q] = out[q - 1]
                q -= 1
            out[p] = t
        n += 1


@numba.njit(cache=True, nogil=True)
def selection_positions(key, deg, k, out, start):
    """Draw ``k`` distinct positions from ``0 .. deg-1`` by selection sampling (Knuth's algorithm S).

    Every k-subset is equally likely; positions come out sorted ascending into
    ``out[start:start+k]``. Costs up to ``deg`` draws, no comparisons: the
    better choice when ``k`` is a large share of ``deg``.
    """
    chosen = 0
    t = 0
    while chosen < k:
        if (deg - t) * uniform01(key, t) < k - chosen:
            out[start + chosen] = t
            chosen += 1
        t += 1


@numba.njit(cache=True, nogil=True, inline="always")
def sample_count(deg, fanout):
    """How many neighbours a node of in-degree ``deg`` gets with ``fanout`` (-1 = all)."""
    if fanout < 0 or deg <= fanout:
        return deg
    return fanout


@numba.njit(cache=True, nogil=True)
def draw_positions(key, deg, k, out, start):
    """Write ``k`` distinct sorted positions out of ``deg`` (0 < k < deg) into ``out[start:start + k]``:
    Floyd's method for small draws, a selection pass otherwise. Every sampler draws through this rule."""
    if k * k <= 8 * deg:
        floyd_positions(key, deg, k, out, start)
    else:
        selection_positions(key, deg, k, out, start)


@numba.njit(cache=True, nogil=True, parallel=True)
def sample_layer(indptr, indices, dst_nodes, fanout, layer_key, offsets, out_neighbors):
    """Sample the in-neighbours of every node in ``dst_nodes`` (int64 [n]) in parallel.

    ``offsets`` (int64 [n+1]) says where each node's sample goes in
    ``out_neighbors`` (int64, global source ids); it must come from
    :func:`sample_count`. A node with degree <= fanout (or fanout -1) takes all
    its in-neighbours in CSR order; otherwise a uniform subset without
    replacement, in CSR order.
    """
    for i in numba.prange(dst_nodes.shape[0]):
        v = dst_nodes[i]
        lo = indptr[v]
        deg = indptr[v + 1] - lo
        start = offsets[i]
        k = offsets[i + 1] - start
        if k == deg:
            for j in range(k):
                out_neighbors[start + j] = indices[lo + j]
            continue
        key = mix_key(layer_key, v)
        draw_positions(key, deg, k, out_neighbors, start)
        for j in range(k):
            out_neighbors[start + j] = indices[lo + out_neighbors[start + j]]


@numba.njit(cache=True, nogil=True)
def relabel(neighbors, node_map, nodes, num_nodes, out_local):
    """Give every node of ``neighbors`` a local id, new nodes in first-appearance order.

    ``node_map`` (int32 [N]) holds the local id of each node already in
    ``nodes`` (int64 buffer, the first ``num_nodes`` entries used) and -1
    elsewhere; new nodes are appended to ``nodes``. ``out_local`` (int32) gets
    the local id of each neighbour. Returns the new node count.
    """
    for e in range(neighbors.shape[0]):
        u = neighbors[e]
        local = node_map[u]
        if local < 0:
            local = num_nodes
            node_map[u] = local
            nodes[num_nodes] = u
            num_nodes += 1
        out_local[e] = local
    return num_nodes


@numba.njit(cache=True, nogil=True)
def reset_map(node_map, nodes, num_nodes):
    """Set ``node_map`` back to -1 at the first ``num_nodes`` entries of ``nodes``."""
    for i in range(num_nodes):
        node_map[nodes[i]] = -1


@numba.njit(cache=True, nogil=True)
def room_for(nodes, num_nodes, extra):
    """``nodes`` (int64), or a copy of its first ``num_nodes`` in a buffer at least twice as large, so that
    ``extra`` more fit."""
    if num_nodes + extra <= nodes.shape[0]:
        return nodes
    grown = np.empty(max(2 * nodes.shape[0], num_nodes + extra), dtype=np.int64)
    grown[:num_nodes] = nodes[:num_nodes]
    return grown


@numba.njit(cache=True, nogil=True)
def concat_layers(offsets_of, locals_of):
    """The per-layer CSR offsets (int64) and local source ids (int32) of a batch, each concatenated in
    layer order: ``(block_indptr, block_indices)``."""
    total_ptr = 0
    total_idx = 0
    for layer in range(len(offsets_of)):
        total_ptr += offsets_of[layer].shape[0]
        total_idx += locals_of[layer].shape[0]
    block_indptr = np.empty(total_ptr, dtype=np.int64)
    block_indices = np.empty(total_idx, dtype=np.int32)
    p = 0
    q = 0
    for layer in range(len(offsets_of)):
        a = offsets_of[layer]
        block_indptr[p:p + a.shape[0]] = a
        p += a.shape[0]
        b = locals_of[layer]
        block_indices[q:q + b.shape[0]] = b
        q += b.shape[0]
    return block_indptr, block_indices


@numba.njit(cache=True, nogil=True)
def sample_blocks(indptr, indices, seeds, fanouts, batch_key, node_map):
    """Sample one minibatch: ``len(fanouts)`` layers of blocks around ``seeds``.

    indptr: int64 [N+1]; indices: int32/int64 [E] in-edge sources (may be memory
    maps); seeds: int64 [B], distinct; fanouts: int64 [L], outermost (input)
    layer first as in DGL, so ``fanouts[L-1]`` is used for the seeds;
    batch_key: uint64; node_map: int32 [N], all -1 (restored before returning).

    Returns ``(input_nodes, layer_sizes, block_indptr, block_indices)``:
    input_nodes int64 [n_in] (seeds first, then each layer's new nodes in
    first-appearance order, so every layer's nodes are a prefix);
    layer_sizes int64 [L+1] with block i having ``layer_sizes[i]`` source and
    ``layer_sizes[i+1]`` destination nodes (``layer_sizes[L] == B``);
    block_indptr int64, the L block offset arrays back to back (block i has
    ``layer_sizes[i+1] + 1`` entries starting at 0), outermost first;
    block_indices int32, the L blocks' local source ids back to back.
    """
    num_layers = fanouts.shape[0]
    batch = seeds.shape[0]
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
            offsets[i + 1] = offsets[i] + sample_count(indptr[v + 1] - indptr[v], fanout)
        num_edges = offsets[num_dst]
        neighbors = np.empty(num_edges, dtype=np.int64)
        sample_layer(indptr, indices, dst, fanout, mix_key(batch_key, layer), offsets, neighbors)
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
def count_missing_edges(indptr, indices, input_nodes, block_indptr, block_indices):
    """How many edges of one block are not in-edges of the graph.

    Destination j of the block is ``input_nodes[j]``, and its sources are
    ``input_nodes[block_indices[block_indptr[j]:block_indptr[j+1]]]``.
    """
    missing = 0
    for j in range(block_indptr.shape[0] - 1):
        v = input_nodes[j]
        lo = indptr[v]
        hi = indptr[v + 1]
        for e in range(block_indptr[j], block_indptr[j + 1]):
            u = input_nodes[block_indices[e]]
            found = False
            for p in range(lo, hi):
                if indices[p] == u:
                    found = True
                    break
            if not found:
                missing += 1
    return missing


@numba.njit(cache=True, nogil=True)
def first_repeat(nodes, mark):
    """Index of the first node of ``nodes`` seen earlier in it, or -1; ``mark`` (uint8 [N], zero) is restored."""
    found = -1
    n = 0
    for i in range(nodes.shape[0]):
        if mark[nodes[i]]:
            found = i
            break
        mark[nodes[i]] = 1
        n += 1
    for i in range(n):
        mark[nodes[i]] = 0
    return found


@numba.njit(cache=True, nogil=True)
def repeated_in_segments(block_indptr, block_indices, mark):
    """Index of the first destination whose sources repeat a local id, or -1; ``mark`` (uint8, zero) is restored."""
    for j in range(block_indptr.shape[0] - 1):
        bad = False
        lo = block_indptr[j]
        hi = block_indptr[j + 1]
        for e in range(lo, hi):
            u = block_indices[e]
            if mark[u]:
                bad = True
            mark[u] = 1
        for e in range(lo, hi):
            mark[block_indices[e]] = 0
        if bad:
            return j
    return -1
