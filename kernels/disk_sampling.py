"""Kernels of sampling with the CSR on disk: read plans in file order and per-window sampling and checks.

The on-disk sampler (:mod:`diskgnn.disk_sampling`) takes one layer of many
minibatches at once: every (batch, destination node) *pair* of the layer, the
pairs' nodes de-duplicated and sorted (``uniq``), their neighbour lists read in
file order through a few large windows, and each pair sampled from the window
that holds its node's list. Draws are the ones of
:func:`diskgnn.kernels.sampling.sample_layer` (keyed by the pair's layer key and
node), so the result is the same as sampling each batch on its own.
"""
import numba

from diskgnn.kernels.rng import mix_key
from diskgnn.kernels.sampling import draw_positions

ALIGN = 4096


@numba.njit(cache=True, nogil=True)
def plan_windows(starts, ends, itemsize, gap_bytes, window_bytes, run_offset, run_length, range_pos,
                 window_ranges, window_runs):
    """Plan the reads of ranges ``[starts[j], ends[j])`` (items of ``itemsize`` bytes) of one file.

    starts, ends: int64 [U], both non-decreasing (ranges may overlap or be empty). A
    range that starts within ``gap_bytes`` of the end of the previous read is read with
    it (one run over the gap); runs are page-aligned, land back to back in a window's
    buffer (each at a page boundary), and a window's runs take at most
    ``window_bytes`` (at least three pages). A range too large for any window gets a
    window of its own without runs and ``range_pos`` -1: its consumer reads only what
    it needs.

    Outputs (preallocated): run_offset, run_length int64 [U] (bytes; offsets
    page-aligned); range_pos int64 [U], the range's first item in its window's buffer
    (0 for an empty range); window_ranges, window_runs int64 [U+1]: window w holds
    ranges window_ranges[w] .. [w+1] and runs window_runs[w] .. [w+1].
    Returns the number of windows.
    """
    u = starts.shape[0]
    runs = 0
    windows = 0
    window_ranges[0] = 0
    window_runs[0] = 0
    first = 0  # first range of the open window
    used = 0  # buffer bytes of the open window's runs
    run_lo = -1  # the open window's last run covers file bytes [run_lo, run_hi); -1: no run yet
    run_hi = 0
    run_pos = 0  # where that run starts in the buffer
    for j in range(u):
        a = starts[j] * itemsize
        b = ends[j] * itemsize
        if b - a > window_bytes - 2 * ALIGN:  # too long for a window: alone, without runs
            if j > first:
                windows += 1
                window_ranges[windows] = j
                window_runs[windows] = runs
            range_pos[j] = -1
            windows += 1
            window_ranges[windows] = j + 1
            window_runs[windows] = runs
            first = j + 1
            used = 0
            run_lo = -1
            continue
        if b == a:  # nothing to read
            range_pos[j] = 0
            continue
        if run_lo >= 0 and a - run_hi <= gap_bytes:
            new_hi = b if b > run_hi else run_hi
            old_span = ((run_hi + ALIGN - 1) // ALIGN) * ALIGN - run_lo
            new_span = ((new_hi + ALIGN - 1) // ALIGN) * ALIGN - run_lo
            if used - old_span + new_span <= window_bytes:
                used += new_span - old_span
                run_hi = new_hi
                run_length[runs - 1] = run_hi - run_lo
                range_pos[j] = (run_pos + a - run_lo) // itemsize
                continue
        lo = (a // ALIGN) * ALIGN
        span = ((b + ALIGN - 1) // ALIGN) * ALIGN - lo
        if used + span > window_bytes:  # the open window is full: close it
            windows += 1
            window_ranges[windows] = j
            window_runs[windows] = runs
            first = j
            used = 0
        run_offset[runs] = lo
        run_length[runs] = b - lo
        run_pos = used
        runs += 1
        run_lo = lo
        run_hi = b
        used += span
        range_pos[j] = (run_pos + a - lo) // itemsize
    if u > first:
        windows += 1
        window_ranges[windows] = u
        window_runs[windows] = runs
    return windows


@numba.njit(cache=True, nogil=True, parallel=True)
def sample_window(window, range_pos, uniq_lo, uniq_deg, j0, j1, pair_start, order, pair_nodes, pair_keys,
                  out_offsets, out_neighbors):
    """Sample every pair whose node is ``uniq[j0:j1]`` from the lists in ``window``.

    window: the buffer of the window's runs as int32/int64 ids; range_pos int64 [U]
    (:func:`plan_windows`); uniq_lo, uniq_deg: int64 [U] each node's first edge and
    in-degree; pair_start int64 [U+1]: the pairs of uniq[j] are order[pair_start[j] ..
    pair_start[j+1]] (order: pair ids sorted by node); pair_nodes int64 [P];
    pair_keys uint64 [P] the layer key of the pair's batch; out_offsets int64 [P+1]
    from :func:`~diskgnn.kernels.sampling.sample_count`. Writes each pair's sample
    (global source ids, CSR order) to ``out_neighbors`` (int64), exactly as
    :func:`~diskgnn.kernels.sampling.sample_layer` does.
    """
    for s in numba.prange(pair_start[j0], pair_start[j1]):
        p = order[s]
        j = _uniq_of(pair_start, j0, j1, s)
        base = range_pos[j]
        deg = uniq_deg[j]
        start = out_offsets[p]
        k = out_offsets[p + 1] - start
        if k == deg:
            for t in range(k):
                out_neighbors[start + t] = window[base + t]
            continue
        key = mix_key(pair_keys[p], pair_nodes[p])
        draw_positions(key, deg, k, out_neighbors, start)
        for t in range(k):
            out_neighbors[start + t] = window[base + out_neighbors[start + t]]


@numba.njit(cache=True, nogil=True, inline="always")
def _uniq_of(pair_start, j0, j1, s):
    """The j in [j0, j1) with pair_start[j] <= s < pair_start[j+1] (binary search)."""
    lo = j0
    hi = j1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if pair_start[mid] <= s:
            lo = mid
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True, parallel=True)
def check_window(window, range_pos, uniq_deg, j0, j1, pair_start, order, pair_fanout, nbr_offsets, neighbors,
                 bad_count, bad_missing):
    """Check every pair of ``uniq[j0:j1]`` against its node's list in ``window``.

    Pair p's sampled sources are ``neighbors[nbr_offsets[p]:nbr_offsets[p+1]]``
    (global ids); it must have ``min(degree, pair_fanout[p])`` of them (all for
    fanout -1), each one a member of the list. Sets ``bad_count[p]`` when the
    count is wrong and ``bad_missing[p]`` to the number of sources not in the list.
    """
    for s in numba.prange(pair_start[j0], pair_start[j1]):
        p = order[s]
        j = _uniq_of(pair_start, j0, j1, s)
        base = range_pos[j]
        deg = uniq_deg[j]
        f = pair_fanout[p]
        want = deg if f < 0 or deg <= f else f
        lo = nbr_offsets[p]
        hi = nbr_offsets[p + 1]
        bad_count[p] = (hi - lo) != want
        missing = 0
        for e in range(lo, hi):
            u = neighbors[e]
            found = False
            for t in range(deg):
                if window[base + t] == u:
                    found = True
                    break
            if not found:
                missing += 1
        bad_missing[p] = missing


@numba.njit(cache=True, nogil=True)
def set_map(node_map, nodes, num_nodes):
    """``node_map[nodes[i]] = i`` for the first ``num_nodes`` nodes (undone by :func:`~diskgnn.kernels.sampling.reset_map`)."""
    for i in range(num_nodes):
        node_map[nodes[i]] = i
