"""Row gather/scatter kernels of the feature store and the packer.

Every kernel works on preallocated outputs and releases the GIL, so the
trainer's I/O and assembly threads overlap. The gathers run in parallel over
rows (each output row is written once, so there are no races): assembly is
bound by memory latency of random row reads, which more cores hide. Feature rows are stored as
float32, or as uint16 bit patterns (fp16 / bf16) that are widened through a
65,536-entry float32 look-up table (exact for both formats).
"""
import numba
import numpy as np

from diskgnn.kernels.prefetch import LOOKAHEAD, prefetch_row, prefetch_span


@numba.njit(cache=True, nogil=True, parallel=True)
def gather_rows(src, rows, positions, out):
    """``out[positions[i]] = src[rows[i]]`` for a float32 ``src`` [R, F] into float32 ``out`` [n, F].

    rows, positions: int64 [m]; rows index ``src``, positions index ``out``.
    """
    f = src.shape[1]
    m = rows.shape[0]
    for i in numba.prange(m):
        if i + LOOKAHEAD < m:  # ask for the source row early (prefetching the written rows measured slower)
            prefetch_row(src, rows[i + LOOKAHEAD])
        r = rows[i]
        p = positions[i]
        for j in range(f):
            out[p, j] = src[r, j]


@numba.njit(cache=True, nogil=True, parallel=True)
def gather_rows_lut(src, rows, positions, lut, out):
    """``out[positions[i], j] = lut[src[rows[i], j]]``: uint16 ``src`` [R, F] widened to float32 ``out``.

    lut: float32 [65536], the value of every 16-bit pattern.
    """
    f = src.shape[1]
    m = rows.shape[0]
    for i in numba.prange(m):
        if i + LOOKAHEAD < m:
            prefetch_row(src, rows[i + LOOKAHEAD])
        r = rows[i]
        p = positions[i]
        for j in range(f):
            out[p, j] = lut[src[r, j]]


@numba.njit(cache=True, nogil=True, parallel=True)
def gather_flat(src, starts, positions, f, out):
    """``out[positions[i]] = src[starts[i] : starts[i] + f]`` from a flat float32 buffer ``src``.

    starts: int64 [m] element offsets of each row in ``src``.
    """
    for i in numba.prange(starts.shape[0]):
        s = starts[i]
        p = positions[i]
        for j in range(f):
            out[p, j] = src[s + j]


@numba.njit(cache=True, nogil=True, parallel=True)
def gather_flat_lut(src, starts, positions, f, lut, out):
    """As :func:`gather_flat` for a flat uint16 buffer widened through ``lut``."""
    for i in numba.prange(starts.shape[0]):
        s = starts[i]
        p = positions[i]
        for j in range(f):
            out[p, j] = lut[src[s + j]]


@numba.njit(cache=True, nogil=True, parallel=True)
def scatter_bytes(src, rows, dst, offsets):
    """``dst[offsets[i] : offsets[i] + rb] = src[rows[i]]`` for uint8 ``src`` [R, rb] and flat uint8 ``dst``.

    The packer's scatter: ``src`` is a chunk of feature rows, ``offsets`` are
    byte positions in an output buffer (see :func:`scatter_words` for the
    faster path when rows and offsets are multiples of 8 bytes). The destinations must not
    overlap (each packed row has its own place), so rows are copied in parallel.
    """
    rb = src.shape[1]
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        o = offsets[i]
        for j in range(rb):
            dst[o + j] = src[r, j]


@numba.njit(cache=True, nogil=True, parallel=True)
def scatter_words(src, rows, dst, offsets):
    """As :func:`scatter_bytes` over uint64 words: ``src`` [R, rb/8], ``dst`` flat, ``offsets`` in words."""
    w = src.shape[1]
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        o = offsets[i]
        for j in range(w):
            dst[o + j] = src[r, j]


@numba.njit(cache=True, nogil=True)
def split_map(batch_map, bounds, extent_code, counts, rows, positions):
    """Sort one batch's map entries by where they come from.

    batch_map: int32/int64 [n]; a value v < bounds[-1] is a cache slot, tier t
    holding slots bounds[t] .. bounds[t+1]-1 (bounds: int64 [T+1], bounds[0] = 0);
    v >= bounds[-1] is row v - bounds[-1] of the batch's extent (tier index
    ``extent_code`` = T). Outputs: counts int64 [T+1] (zeroed here), rows and
    positions int64 [T+1, n]: for tier t, ``rows[t, :counts[t]]`` are rows of
    that tier (slot minus its first slot) and ``positions[t, :counts[t]]`` the
    entries' indices in the batch.
    """
    ntiers = bounds.shape[0] - 1
    n_cached = bounds[ntiers]
    for t in range(counts.shape[0]):
        counts[t] = 0
    for i in range(batch_map.shape[0]):
        v = np.int64(batch_map[i])
        if v >= n_cached:
            t = extent_code
            r = v - n_cached
        else:
            t = 0
            while v >= bounds[t + 1]:
                t += 1
            r = v - bounds[t]
        c = counts[t]
        rows[t, c] = r
        positions[t, c] = i
        counts[t] = c + 1


@numba.njit(cache=True, nogil=True)
def extent_row_starts(rows, row_bytes, itemsize, run_pages, run_npages, run_buf_pages, page):
    """Element offsets in a read buffer of rows of a packed extent or segment.

    rows: int64 [m] row indices in the extent/segment (row r spans bytes
    r*row_bytes .. +row_bytes). The buffer holds runs of pages back to back:
    run k covers run_npages[k] pages from page run_pages[k] of the extent
    (ascending) and starts at page run_buf_pages[k] of the buffer. A row that
    crosses a page boundary lies inside one run (runs cover every page of the
    rows they serve). Returns int64 [m] element offsets (bytes / itemsize);
    -1 where a row is not inside one run (a broken index).
    """
    out = np.empty(rows.shape[0], dtype=np.int64)
    nruns = run_pages.shape[0]
    for i in range(rows.shape[0]):
        b = rows[i] * row_bytes
        pg = b // page
        lo = 0
        hi = nruns
        while lo < hi:  # last run starting at or before pg
            mid = (lo + hi) >> 1
            if run_pages[mid] <= pg:
                lo = mid + 1
            else:
                hi = mid
        k = lo - 1
        if k < 0 or (b + row_bytes - 1) // page >= run_pages[k] + run_npages[k]:
            out[i] = -1
        else:
            out[i] = ((run_buf_pages[k] - run_pages[k]) * page + b) // itemsize
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _locate(v, bounds, row_bytes, itemsize, run_pages, run_npages, run_buf_pages, page):
    """Where map entry ``v`` lives: ``(t, r)`` with t < T a tier and r its row there, ``(T, s)`` the
    extent/segment with s the row's element offset in the read buffer, or ``(-1, 0)`` for an entry that
    names no tier row and no row of the pages read (a corrupt map). See :func:`split_map` and
    :func:`extent_row_starts` for the encodings."""
    ntiers = bounds.shape[0] - 1
    if v < 0:
        return -1, 0
    if v < bounds[ntiers]:
        t = 0
        while v >= bounds[t + 1]:
            t += 1
        return t, v - bounds[t]
    b = (v - bounds[ntiers]) * row_bytes
    pg = b // page
    lo = 0
    hi = run_pages.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if run_pages[mid] <= pg:
            lo = mid + 1
        else:
            hi = mid
    k = lo - 1
    if k < 0 or (b + row_bytes - 1) // page >= run_pages[k] + run_npages[k]:
        return -1, 0
    return ntiers, ((run_buf_pages[k] - run_pages[k]) * page + b) // itemsize


@numba.njit(cache=True, nogil=True, inline="always")
def _prefetch_entry(v, bounds, tier0, tier1, tier2, ext, row_bytes, itemsize, run_pages, run_npages, run_buf_pages,
                    page, f):
    """Prefetch the row map entry ``v`` names (see :func:`_locate`), wherever it lives."""
    u, w = _locate(v, bounds, row_bytes, itemsize, run_pages, run_npages, run_buf_pages, page)
    if u == 0:
        prefetch_row(tier0, w)
    elif u == 1:
        prefetch_row(tier1, w)
    elif u == 2:
        prefetch_row(tier2, w)
    elif u == 3:
        prefetch_span(ext, w, f)


@numba.njit(cache=True, nogil=True, parallel=True)
def assemble_map(batch_map, bounds, tier0, tier1, tier2, ext, row_bytes, run_pages, run_npages, run_buf_pages,
                 page, out):
    """One batch's float32 input matrix straight from its map: ``out[i]`` = the row entry ``i`` names.

    The fused form of :func:`split_map` + :func:`gather_rows` per tier + :func:`gather_flat` for the
    CPU store: one pass in batch order, so ``out`` is written sequentially and the source rows a few
    entries ahead are prefetched from whichever tier or read buffer holds them. ``tier0..2``: float32
    [R_t, F] rows of the three cache tiers (bounds: int64 [4], slots of tier t are bounds[t] ..
    bounds[t+1]-1); ``ext``: the float32 flat read buffer of the batch's extent or segment, its runs as in
    :func:`extent_row_starts`. Returns the number of entries that name no row (their output rows are
    zero; the caller treats any as a corrupt index).
    """
    n = batch_map.shape[0]
    f = out.shape[1]
    itemsize = 4
    bad = 0
    for i in numba.prange(n):
        if i + LOOKAHEAD < n:
            _prefetch_entry(np.int64(batch_map[i + LOOKAHEAD]), bounds, tier0, tier1, tier2, ext, row_bytes, itemsize,
                            run_pages, run_npages, run_buf_pages, page, f)
        t, s = _locate(np.int64(batch_map[i]), bounds, row_bytes, itemsize, run_pages, run_npages, run_buf_pages,
                       page)
        if t == 0:
            for j in range(f):
                out[i, j] = tier0[s, j]
        elif t == 1:
            for j in range(f):
                out[i, j] = tier1[s, j]
        elif t == 2:
            for j in range(f):
                out[i, j] = tier2[s, j]
        elif t == 3:
            for j in range(f):
                out[i, j] = ext[s + j]
        else:
            bad += 1
            for j in range(f):
                out[i, j] = 0.0
    return bad


@numba.njit(cache=True, nogil=True, parallel=True)
def assemble_map_lut(batch_map, bounds, tier0, tier1, tier2, ext, row_bytes, run_pages, run_npages, run_buf_pages,
                     page, lut, out):
    """As :func:`assemble_map` for uint16 rows (fp16 / bf16 bit patterns) widened through ``lut``."""
    n = batch_map.shape[0]
    f = out.shape[1]
    itemsize = 2
    bad = 0
    for i in numba.prange(n):
        if i + LOOKAHEAD < n:
            _prefetch_entry(np.int64(batch_map[i + LOOKAHEAD]), bounds, tier0, tier1, tier2, ext, row_bytes, itemsize,
                            run_pages, run_npages, run_buf_pages, page, f)
        t, s = _locate(np.int64(batch_map[i]), bounds, row_bytes, itemsize, run_pages, run_npages, run_buf_pages,
                       page)
        if t == 0:
            for j in range(f):
                out[i, j] = lut[tier0[s, j]]
        elif t == 1:
            for j in range(f):
                out[i, j] = lut[tier1[s, j]]
        elif t == 2:
            for j in range(f):
                out[i, j] = lut[tier2[s, j]]
        elif t == 3:
            for j in range(f):
                out[i, j] = lut[ext[s + j]]
        else:
            bad += 1
            for j in range(f):
                out[i, j] = 0.0
    return bad
