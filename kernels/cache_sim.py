"""Cache replacement simulators over an access trace (node ids, int64).

Each function returns the number of hits of a cache of ``capacity`` rows over
``trace``; a miss inserts the row (evicting one when full). ``num_ids`` bounds
the ids (0 .. num_ids-1). All are O(1) or O(log n) per access.
"""
import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def lru_hits(trace, capacity, num_ids):
    """Least-recently-used: a doubly linked list over ids, most recent at the head."""
    if capacity <= 0:
        return 0
    prev = np.full(num_ids, -1, dtype=np.int64)
    nxt = np.full(num_ids, -1, dtype=np.int64)
    present = np.zeros(num_ids, dtype=np.bool_)
    head = -1
    tail = -1
    size = 0
    hits = 0
    for t in range(trace.shape[0]):
        x = trace[t]
        if present[x]:
            hits += 1
            if x == head:
                continue
            # unlink
            p = prev[x]
            n = nxt[x]
            nxt[p] = n
            if n >= 0:
                prev[n] = p
            else:
                tail = p
        else:
            if size == capacity:
                victim = tail
                tail = prev[victim]
                if tail >= 0:
                    nxt[tail] = -1
                else:
                    head = -1
                present[victim] = False
                size -= 1
            present[x] = True
            size += 1
        prev[x] = -1
        nxt[x] = head
        if head >= 0:
            prev[head] = x
        head = x
        if tail < 0:
            tail = x
    return hits


@numba.njit(cache=True, nogil=True)
def clock_hits(trace, capacity, num_ids):
    """CLOCK (second chance): a circular buffer of slots with reference bits."""
    if capacity <= 0:
        return 0
    slot_of = np.full(num_ids, -1, dtype=np.int64)
    slots = np.full(capacity, -1, dtype=np.int64)
    ref = np.zeros(capacity, dtype=np.bool_)
    hand = 0
    used = 0
    hits = 0
    for t in range(trace.shape[0]):
        x = trace[t]
        s = slot_of[x]
        if s >= 0:
            hits += 1
            ref[s] = True
            continue
        if used < capacity:
            s = used
            used += 1
        else:
            while ref[hand]:
                ref[hand] = False
                hand = (hand + 1) % capacity
            s = hand
            slot_of[slots[s]] = -1
            hand = (hand + 1) % capacity
        slots[s] = x
        slot_of[x] = s
        ref[s] = False
    return hits


@numba.njit(cache=True, nogil=True)
def sieve_hits(trace, capacity, num_ids):
    """SIEVE: FIFO insertion at the head, a hand moving tail to head evicts the first unvisited item."""
    if capacity <= 0:
        return 0
    prev = np.full(num_ids, -1, dtype=np.int64)  # towards the tail (older)
    nxt = np.full(num_ids, -1, dtype=np.int64)   # towards the head (newer)
    present = np.zeros(num_ids, dtype=np.bool_)
    visited = np.zeros(num_ids, dtype=np.bool_)
    head = -1
    tail = -1
    hand = -1
    size = 0
    hits = 0
    for t in range(trace.shape[0]):
        x = trace[t]
        if present[x]:
            hits += 1
            visited[x] = True
            continue
        if size == capacity:
            o = hand if hand >= 0 else tail
            while visited[o]:
                visited[o] = False
                o = nxt[o] if nxt[o] >= 0 else tail
            hand = nxt[o]
            # unlink o
            p = prev[o]
            n = nxt[o]
            if p >= 0:
                nxt[p] = n
            else:
                tail = n
            if n >= 0:
                prev[n] = p
            else:
                head = p
            present[o] = False
            size -= 1
        present[x] = True
        visited[x] = False
        prev[x] = head
        nxt[x] = -1
        if head >= 0:
            nxt[head] = x
        head = x
        if tail < 0:
            tail = x
        size += 1
    return hits


@numba.njit(cache=True, nogil=True)
def next_use(trace, num_ids):
    """For each position, the next position of the same id (len(trace) when never again)."""
    n = trace.shape[0]
    out = np.empty(n, dtype=np.int64)
    last = np.full(num_ids, n, dtype=np.int64)
    for t in range(n - 1, -1, -1):
        x = trace[t]
        out[t] = last[x]
        last[x] = t
    return out


@numba.njit(cache=True, nogil=True)
def _sift_down(heap_key, heap_id, i, hsize):
    """Restore the max-heap property below position ``i`` of a heap of ``hsize`` items."""
    while True:
        left = 2 * i + 1
        if left >= hsize:
            return
        right = left + 1
        c = left if (right >= hsize or heap_key[left] >= heap_key[right]) else right
        if heap_key[c] <= heap_key[i]:
            return
        heap_key[c], heap_key[i] = heap_key[i], heap_key[c]
        heap_id[c], heap_id[i] = heap_id[i], heap_id[c]
        i = c


@numba.njit(cache=True, nogil=True)
def belady_hits(trace, capacity, num_ids):
    """Belady's optimal offline policy (evict the row used furthest in the future).

    A max-heap of (next use, id) with lazy deletion of stale entries; rows never
    used again are not inserted (bypass), which is optimal too.
    """
    if capacity <= 0:
        return 0
    n = trace.shape[0]
    nu = next_use(trace, num_ids)
    cur = np.full(num_ids, -1, dtype=np.int64)  # current next-use key of a cached id, -1 = absent
    heap_key = np.empty(n + 1, dtype=np.int64)
    heap_id = np.empty(n + 1, dtype=np.int64)
    hsize = 0
    size = 0
    hits = 0
    for t in range(n):
        x = trace[t]
        if cur[x] >= 0:
            hits += 1
        elif nu[t] < n:
            if size == capacity:
                # pop until a live entry; evict it unless x's next use is even later
                while True:
                    k = heap_key[0]
                    v = heap_id[0]
                    if cur[v] == k:
                        break
                    hsize -= 1
                    heap_key[0] = heap_key[hsize]
                    heap_id[0] = heap_id[hsize]
                    _sift_down(heap_key, heap_id, 0, hsize)
                if nu[t] >= heap_key[0]:
                    continue  # bypass: x is needed later than everything cached
                cur[heap_id[0]] = -1
                size -= 1
            size += 1
        else:
            if cur[x] < 0:
                continue
        if cur[x] < 0 and nu[t] >= n:
            continue
        # (re)insert x with its new next-use key
        if nu[t] >= n:
            cur[x] = -1
            size -= 1
            continue
        cur[x] = nu[t]
        i = hsize
        heap_key[i] = nu[t]
        heap_id[i] = x
        hsize += 1
        while i > 0:
            p = (i - 1) >> 1
            if heap_key[p] < heap_key[i]:
                heap_key[p], heap_key[i] = heap_key[i], heap_key[p]
                heap_id[p], heap_id[i] = heap_id[i], heap_id[p]
                i = p
            else:
                break
        if hsize > 2 * capacity + 16:
            # compact: drop stale entries and rebuild the heap
            m = 0
            for j in range(hsize):
                if cur[heap_id[j]] == heap_key[j]:
                    heap_key[m] = heap_key[j]
                    heap_id[m] = heap_id[j]
                    m += 1
            hsize = m
            for s in range(hsize // 2 - 1, -1, -1):
                _sift_down(heap_key, heap_id, s, hsize)
    return hits


@numba.njit(cache=True, nogil=True)
def static_hits(trace, cached):
    """Hits of a fixed cache: ``cached`` is a bool mask over ids."""
    hits = 0
    for t in range(trace.shape[0]):
        if cached[trace[t]]:
            hits += 1
    return hits
