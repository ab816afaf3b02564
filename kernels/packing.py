"""Planning kernels of the packer: per-batch maps, segments, Belady.

Batches are described by the samples' concatenated input nodes ``inputs``
(int64 [T]) and offsets (int64 [nb + 1]); ``slot_of_node`` (int64 [N]) holds
the cache slot of every node, or -1 for a row that lives on disk.
"""
import numba
import numpy as np

from diskgnn.kernels.rng import splitmix64

_U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)


@numba.njit(cache=True, nogil=True, parallel=True)
def count_uncached(inputs, offsets, slot_of_node, counts):
    """counts[b] = how many input nodes of batch b are not cached (int64 [nb]); batches in parallel."""
    for b in numba.prange(offsets.shape[0] - 1):
        c = 0
        for k in range(offsets[b], offsets[b + 1]):
            if slot_of_node[inputs[k]] < 0:
                c += 1
        counts[b] = c


@numba.njit(cache=True, nogil=True, parallel=True)
def plain_maps(inputs, offsets, slot_of_node, n_cached, row_starts, nblocks, maps, row_nodes, block_starts):
    """Maps of the plain layout: each batch's uncached rows in its own extent, ordered by node block.

    Here ``slot_of_node[v]`` is the cache slot, or ``-1 - block`` for a row on
    disk, where block = v // (rows per block) (all -1: one block, plain input
    order). A batch's uncached rows are ordered by block and, inside a block,
    in input order, so the rows of one block of features.bin fill a contiguous
    stretch of every extent: the packer can write each block's stretches as
    soon as the block was read. row_starts: int64 [nb + 1], the prefix sums of
    :func:`count_uncached`. Outputs: maps [T] (int32/int64) the cache slot, or
    n_cached + k for the input stored as the k-th row of the extent; row_nodes
    [>= row_starts[-1]] the node of each packed row; block_starts int64
    [nb, nblocks + 1]: batch b's rows of block c are rows block_starts[b, c] ..
    block_starts[b, c + 1] - 1 of its extent. Batches in parallel.
    """
    for b in numba.prange(offsets.shape[0] - 1):
        starts = block_starts[b]
        for c in range(nblocks + 1):
            starts[c] = 0
        for e in range(offsets[b], offsets[b + 1]):
            s = slot_of_node[inputs[e]]
            if s < 0:
                starts[-s] += 1
        for c in range(nblocks):
            starts[c + 1] += starts[c]
        fill = starts[:nblocks].copy()
        base = row_starts[b]
        for e in range(offsets[b], offsets[b + 1]):
            v = inputs[e]
            s = slot_of_node[v]
            if s >= 0:
                maps[e] = s
            else:
                c = -1 - s
                k = fill[c]
                fill[c] = k + 1
                maps[e] = n_cached + k
                row_nodes[base + k] = v


@numba.njit(cache=True, nogil=True, parallel=True)
def stage_block(chunk, lo_node, row_nodes, row_starts, lo_rows, hi_rows, total_rows, piece_offsets, carry, staging):
    """Copy one block's packed rows of every extent into a staging buffer of page-aligned pieces.

    chunk: uint8 [R, rb], the block's rows of features.bin (first node
    ``lo_node``). For extent e, rows lo_rows[e] .. hi_rows[e] - 1 (of
    total_rows[e]) come from this block; they are written into ``staging``
    (flat uint8) at piece_offsets[e] + (row * rb - page start of row lo_rows[e]),
    so a piece starts on the page holding its first row. The head of that page
    (rows of earlier blocks) is taken from carry[e] (uint8 [E, 4096]); the
    piece's last partial page is saved back to carry[e] for the next block, or
    zero-padded when the extent is complete. Extents without rows here are
    skipped (piece_offsets[e] < 0). Extents in parallel. Any element type
    works (uint64 views copy 8 bytes at a time when the row size allows):
    rb, the page and the offsets are then counted in elements.
    """
    rb = chunk.shape[1]
    page = carry.shape[1]
    for e in numba.prange(lo_rows.shape[0]):
        o = piece_offsets[e]
        lo = lo_rows[e]
        hi = hi_rows[e]
        if o < 0 or hi <= lo:
            continue
        first = lo * rb // page * page
        head = lo * rb - first
        for j in range(head):
            staging[o + j] = carry[e, j]
        base = row_starts[e]
        for k in range(lo, hi):
            r = row_nodes[base + k] - lo_node
            d = o + k * rb - first
            for j in range(rb):
                staging[d + j] = chunk[r, j]
        end = hi * rb
        last = end // page * page
        if hi == total_rows[e]:
            pad_end = (end + page - 1) // page * page
            for j in range(end - first, pad_end - first):
                staging[o + j] = 0
        else:
            for j in range(end - last):
                carry[e, j] = staging[o + last - first + j]


@numba.njit(cache=True, nogil=True, inline="always")
def _popcount(x):
    """Set bits of a uint64 (SWAR)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@numba.njit(cache=True, nogil=True, inline="always")
def _mark_segment(inputs, lo, hi, on_disk, bitmap):
    """Set the bit of every node of inputs[lo:hi] that is on disk (its bit set in ``on_disk``) in ``bitmap``
    (uint64 words, zeroed); return how many bits were new."""
    count = 0
    for e in range(lo, hi):
        v = inputs[e]
        w = v >> 6
        bit = np.uint64(1) << np.uint64(v & 63)
        if on_disk[w] & bit and not bitmap[w] & bit:
            bitmap[w] |= bit
            count += 1
    return count


@numba.njit(cache=True, nogil=True, parallel=True)
def segment_row_counts(inputs, offsets, on_disk, seg_bounds):
    """Distinct uncached nodes of each segment of consecutive batches (segments in parallel).

    on_disk: uint64 bitmap words, bit v set for a node whose row is not cached (see
    :func:`disk_bitmap`). seg_bounds: int64 [S + 1] first batch of each segment
    (ascending, last = nb). Each segment marks its nodes in a bitmap as large as
    ``on_disk``: both stay in cache, where n-sized arrays would miss on every input.
    Returns int64 [S].
    """
    nseg = seg_bounds.shape[0] - 1
    out = np.zeros(nseg, dtype=np.int64)
    for s in numba.prange(nseg):
        bitmap = np.zeros(on_disk.shape[0], dtype=np.uint64)
        out[s] = _mark_segment(inputs, offsets[seg_bounds[s]], offsets[seg_bounds[s + 1]], on_disk, bitmap)
    return out


def disk_bitmap(slot_of_node: np.ndarray) -> np.ndarray:
    """uint64 words with bit v set where ``slot_of_node[v] < 0`` (the row is on disk); little-endian bit order."""
    bits = np.packbits(np.asarray(slot_of_node) < 0, bitorder="little")
    words = np.zeros(-(-bits.size // 8) * 8, dtype=np.uint8)
    words[:bits.size] = bits
    return words.view("<u8").astype(np.uint64)


SEGMENT_GROUP_BYTES = 32 << 20
"""Bitmap and rank memory of the segments :func:`segment_block_maps` works on at once (at least one per thread)."""


def segment_group(num_nodes: int) -> int:
    """How many segments :func:`segment_block_maps` takes at once for a graph of ``num_nodes``."""
    words = -(-int(num_nodes) // 64)
    return max(numba.get_num_threads(), SEGMENT_GROUP_BYTES // max(16 * words, 1))


@numba.njit(cache=True, nogil=True, parallel=True)
def segment_block_maps(inputs, offsets, seg_bounds, slot_of_node, on_disk, n_cached, row_starts, maps, nodes,
                       block_starts, group):
    """Maps of the segment layout: each segment's uncached rows stored once, by node id (in parallel: the
    segments' row sets, then their batches' maps).

    ``slot_of_node[v]`` is the cache slot of v, or ``-1 - block`` for a row on disk
    (as for :func:`plain_maps`); ``on_disk`` the bitmap of the latter (:func:`disk_bitmap`). Segment s (batches seg_bounds[s] .. seg_bounds[s+1]-1)
    holds its distinct uncached nodes in ascending order, so by node block, the order
    in which the packer streams features.bin: ``nodes[row_starts[s] + k]`` (row_starts:
    int64 [S + 1], from :func:`segment_row_counts`). Its batches' maps point into them:
    ``maps[e] = n_cached + k`` for the node stored as row k, or the cache slot. A node's
    row is its rank among the segment's set bits, so no sort is needed.
    block_starts: int64 [S, nblocks + 1] output, segment s's rows of block c are
    ``block_starts[s, c] .. block_starts[s, c + 1] - 1``. Segments go ``group`` at a time
    (their bitmaps take 16 B per 64 nodes each; see :func:`segment_group`).
    """
    nseg = seg_bounds.shape[0] - 1
    words = on_disk.shape[0]
    nblocks = block_starts.shape[1] - 1
    for g0 in range(0, nseg, group):
        g1 = min(nseg, g0 + group)
        bitmaps = np.zeros((g1 - g0, words), dtype=np.uint64)
        ranks = np.empty((g1 - g0, words), dtype=np.int64)  # rows before each word
        for s in numba.prange(g0, g1):  # each segment's set of rows, in node order
            bitmap = bitmaps[s - g0]
            rank = ranks[s - g0]
            _mark_segment(inputs, offsets[seg_bounds[s]], offsets[seg_bounds[s + 1]], on_disk, bitmap)
            starts = block_starts[s]
            for c in range(nblocks + 1):
                starts[c] = 0
            base = row_starts[s]
            k = 0
            for w in range(words):
                rank[w] = k
                x = bitmap[w]
                while x:
                    low = x & (~x + np.uint64(1))
                    v = (w << 6) + np.int64(_popcount(low - np.uint64(1)))
                    nodes[base + k] = v
                    starts[-slot_of_node[v]] += 1
                    k += 1
                    x ^= low
            for c in range(nblocks):
                starts[c + 1] += starts[c]
        b0 = seg_bounds[g0]
        seg_of = np.empty(seg_bounds[g1] - b0, dtype=np.int64)
        for s in range(g0, g1):
            for b in range(seg_bounds[s], seg_bounds[s + 1]):
                seg_of[b - b0] = s - g0
        for b in numba.prange(b0, seg_bounds[g1]):  # the batches' maps
            bitmap = bitmaps[seg_of[b - b0]]
            rank = ranks[seg_of[b - b0]]
            for e in range(offsets[b], offsets[b + 1]):
                v = inputs[e]
                slot = slot_of_node[v]
                if slot >= 0:
                    maps[e] = slot
                else:
                    w = v >> 6
                    below = bitmap[w] & ((np.uint64(1) << np.uint64(v & 63)) - np.uint64(1))
                    maps[e] = n_cached + rank[w] + np.int64(_popcount(below))


@numba.njit(cache=True, nogil=True)
def bucket_rows(nodes, dests, lo_node, rows_per_chunk, nchunks):
    """Group packed rows by the feature chunk that holds their node (a counting sort).

    nodes: int32/int64 [m] source node of each row, all in
    [lo_node, lo_node + nchunks * rows_per_chunk); dests: int64 [m] byte
    offsets in the output buffer. Returns (starts int64 [nchunks + 1],
    chunk-local row of each entry int64 [m], dests int64 [m]) ordered by chunk.
    """
    m = nodes.shape[0]
    starts = np.zeros(nchunks + 1, dtype=np.int64)
    for i in range(m):
        starts[(nodes[i] - lo_node) // rows_per_chunk + 1] += 1
    for c in range(nchunks):
        starts[c + 1] += starts[c]
    fill = starts[:nchunks].copy()
    local = np.empty(m, dtype=np.int64)
    out_dests = np.empty(m, dtype=np.int64)
    for i in range(m):
        rel = nodes[i] - lo_node
        c = rel // rows_per_chunk
        j = fill[c]
        local[j] = rel - c * rows_per_chunk
        out_dests[j] = dests[i]
        fill[c] = j + 1
    return starts, local, out_dests


@numba.njit(cache=True, nogil=True)
def extent_dests(row_counts, extent_offsets, row_bytes, base):
    """Byte offset in an output buffer of every packed row of consecutive extents.

    row_counts: int64 [k] rows of each extent; extent_offsets: int64 [k] byte
    offset of each extent in the file; base: file offset of the buffer's first
    byte. Returns int64 [sum(row_counts)].
    """
    total = 0
    for i in range(row_counts.shape[0]):
        total += row_counts[i]
    out = np.empty(total, dtype=np.int64)
    j = 0
    for i in range(row_counts.shape[0]):
        o = extent_offsets[i] - base
        for r in range(row_counts[i]):
            out[j] = o + r * row_bytes
            j += 1
    return out


@numba.njit(cache=True, nogil=True)
def tier_hits(maps, bounds):
    """How many map entries fall in each tier: int64 [T + 1] (the last entry: rows read from disk)."""
    ntiers = bounds.shape[0] - 1
    out = np.zeros(ntiers + 1, dtype=np.int64)
    n_cached = bounds[ntiers]
    for i in range(maps.shape[0]):
        v = np.int64(maps[i])
        if v >= n_cached:
            out[ntiers] += 1
        else:
            t = 0
            while v >= bounds[t + 1]:
                t += 1
            out[t] += 1
    return out


@numba.njit(cache=True, nogil=True)
def next_use(trace, last, nxt):
    """nxt[t] = the next position after t where trace[t] occurs again, or len(trace) if never.

    last: scratch [N] (any integer dtype wide enough for len(trace)); nxt: [T].
    """
    t_end = trace.shape[0]
    for i in range(last.shape[0]):
        last[i] = t_end
    for t in range(t_end - 1, -1, -1):
        v = trace[t]
        nxt[t] = last[v]
        last[v] = t


@numba.njit(cache=True, nogil=True)
def belady_hits(trace, nxt, pos, capacity, preload_nodes, preload_keys):
    """Hits of the optimal offline cache (Belady's MIN, with bypass) of ``capacity`` rows on ``trace``.

    trace: node ids [T]; nxt: next-use positions from :func:`next_use`
    (len(trace) = never again); pos: int64 [N] scratch. The cache starts
    holding ``preload_nodes`` (at most ``capacity``, keyed by their first use
    ``preload_keys``), as the static tiers are loaded before training: the
    best preload is the rows used first. On a miss with a full cache the row
    whose next use is furthest is evicted, or the incoming row is not admitted
    if its own next use is later still. An indexed max-heap keyed by next use
    keeps each step O(log capacity).
    """
    t_end = trace.shape[0]
    for i in range(pos.shape[0]):
        pos[i] = -1
    if capacity <= 0:
        return 0
    heap_node = np.empty(capacity, dtype=np.int64)
    heap_key = np.empty(capacity, dtype=np.int64)
    size = 0
    for i in range(min(preload_nodes.shape[0], capacity)):
        heap_node[size] = preload_nodes[i]
        heap_key[size] = preload_keys[i]
        pos[preload_nodes[i]] = size
        _sift_up(heap_node, heap_key, pos, size)
        size += 1
    hits = 0
    for t in range(t_end):
        v = trace[t]
        key = np.int64(nxt[t])
        i = pos[v]
        if i >= 0:
            hits += 1
            if key >= t_end:  # never used again: drop it, freeing space
                size -= 1
                pos[v] = -1
                if i != size:
                    heap_node[i] = heap_node[size]
                    heap_key[i] = heap_key[size]
                    pos[heap_node[i]] = i
                    i = _sift_up(heap_node, heap_key, pos, i)
                    _sift_down(heap_node, heap_key, pos, i, size)
                continue
            heap_key[i] = key  # next use only moves later: sift towards the root
            _sift_up(heap_node, heap_key, pos, i)
            continue
        if key >= t_end:
            continue
        if size < capacity:
            heap_node[size] = v
            heap_key[size] = key
            pos[v] = size
            _sift_up(heap_node, heap_key, pos, size)
            size += 1
        elif heap_key[0] > key:
            pos[heap_node[0]] = -1
            heap_node[0] = v
            heap_key[0] = key
            pos[v] = 0
            _sift_down(heap_node, heap_key, pos, 0, size)
    return hits


@numba.njit(cache=True, nogil=True, inline="always")
def _swap(heap_node, heap_key, pos, a, b):
    na = heap_node[a]
    ka = heap_key[a]
    heap_node[a] = heap_node[b]
    heap_key[a] = heap_key[b]
    heap_node[b] = na
    heap_key[b] = ka
    pos[heap_node[a]] = a
    pos[heap_node[b]] = b


@numba.njit(cache=True, nogil=True)
def _sift_up(heap_node, heap_key, pos, i):
    while i > 0:
        parent = (i - 1) >> 1
        if heap_key[parent] >= heap_key[i]:
            break
        _swap(heap_node, heap_key, pos, i, parent)
        i = parent
    return i


@numba.njit(cache=True, nogil=True)
def _sift_down(heap_node, heap_key, pos, i, size):
    while True:
        left = 2 * i + 1
        if left >= size:
            return i
        big = left
        if left + 1 < size and heap_key[left + 1] > heap_key[left]:
            big = left + 1
        if heap_key[i] >= heap_key[big]:
            return i
        _swap(heap_node, heap_key, pos, i, big)
        i = big


@numba.njit(cache=True, nogil=True, parallel=True)
def reuse_histogram(inputs, offsets, on_disk, part_bounds, last, hist):
    """How long ago each batch's uncached nodes were last read, for sizing segments without a pass per length.

    For the uncached inputs of batch b (``on_disk`` bitmap as in :func:`segment_row_counts`;
    a batch's inputs are distinct), ``hist[t, b, d]`` summed over t counts those whose node
    was last read d batches earlier in the same part (1 <= d < D, D = hist.shape[2]);
    ``d = 0`` counts the rest: first reads in the part and reuses D or more batches apart.
    So the sum over d is the batch's uncached inputs. hist: int64 [T, nb, D], zeroed, one
    slice per thread: thread t takes the t-th of T equal node ranges, so every node's
    history stays in one thread. part_bounds: int64 [P + 1] first batch of each part.
    last: int32/int64 [n] scratch (the last batch that read each node), filled with -1.
    A node of batch b is new in its segment of length g (segments aligned on the part's
    first batch) iff d > (b - part start) mod g, counted by :func:`segment_rows_from_histogram`.
    """
    nthreads = hist.shape[0]
    width = hist.shape[2]
    span = (last.shape[0] + nthreads - 1) // nthreads
    for t in numba.prange(nthreads):
        lo_node = t * span
        hi_node = lo_node + span
        for p in range(part_bounds.shape[0] - 1):
            first = part_bounds[p]
            for b in range(part_bounds[p], part_bounds[p + 1]):
                for e in range(offsets[b], offsets[b + 1]):
                    v = inputs[e]
                    if v < lo_node or v >= hi_node or not on_disk[v >> 6] & (np.uint64(1) << np.uint64(v & 63)):
                        continue
                    prev = np.int64(last[v])
                    d = b - prev
                    if prev < first or d >= width:
                        hist[t, b, 0] += 1
                    else:
                        hist[t, b, d] += 1
                    last[v] = b


@numba.njit(cache=True, nogil=True)
def segment_rows_from_histogram(hist, part_bounds, seg_bounds, out):
    """Distinct uncached nodes of each segment (as :func:`segment_row_counts`) from :func:`reuse_histogram`.

    Exact for segments of at most D batches (``hist.shape[1]``); seg_bounds as for
    :func:`segment_row_counts` (no segment across a part's boundary). out: int64 [S].
    """
    width = hist.shape[1]
    p = 0
    for s in range(seg_bounds.shape[0] - 1):
        start = seg_bounds[s]
        while part_bounds[p + 1] <= start:
            p += 1
        c = 0
        for b in range(start, seg_bounds[s + 1]):
            r = b - start  # new in the segment: last read before its first batch
            c += hist[b, 0]
            for d in range(r + 1, width):
                c += hist[b, d]
        out[s] = c
