"""Online cache replacement simulators over an access trace (node ids, int64).

Each function returns the number of hits of a cache of ``capacity`` rows over
``trace``; a miss inserts the row (evicting one when full). ``num_ids`` bounds
the ids (0 .. num_ids-1). All are O(1) per access. Belady's optimal offline
policy lives with the packer (:mod:`diskgnn.kernels.packing`), which reports it
as the bound of the tiers' hit rate.
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
def static_hits(trace, cached):
    """Hits of a fixed cache: ``cached`` is a bool mask over ids."""
    hits = 0
    for t in range(trace.shape[0]):
        if cached[trace[t]]:
            hits += 1
    return hits
