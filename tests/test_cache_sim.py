"""Cache simulators against plain-Python twins on small random traces."""
from collections import OrderedDict

import numpy as np
import pytest

from diskgnn.bench.cache import warm_prefix
from diskgnn.kernels.cache_sim import clock_hits, lru_hits, sieve_hits, static_hits
from diskgnn.packing import belady_hit_rate


def lru_ref(trace, cap):
    c, hits = OrderedDict(), 0
    for x in trace:
        if x in c:
            hits += 1
            c.move_to_end(x)
        elif cap > 0:
            if len(c) == cap:
                c.popitem(last=False)
            c[x] = True
    return hits


def clock_ref(trace, cap):
    slots, ref, where, hand, hits = [], [], {}, 0, 0
    for x in trace:
        if x in where:
            hits += 1
            ref[where[x]] = True
            continue
        if cap == 0:
            continue
        if len(slots) < cap:
            where[x] = len(slots)
            slots.append(x)
            ref.append(False)
            continue
        while ref[hand]:
            ref[hand] = False
            hand = (hand + 1) % cap
        del where[slots[hand]]
        slots[hand], ref[hand], where[x] = x, False, hand
        hand = (hand + 1) % cap
    return hits


def sieve_ref(trace, cap):
    q, visited, hand, hits = [], {}, None, 0  # q[0] is the tail (oldest)
    for x in trace:
        if x in visited:
            hits += 1
            visited[x] = True
            continue
        if cap == 0:
            continue
        if len(q) == cap:
            i = hand if hand is not None else 0
            while visited[q[i]]:
                visited[q[i]] = False
                i = i + 1 if i + 1 < len(q) else 0
            victim = q.pop(i)
            del visited[victim]
            hand = i if i < len(q) else None
        q.append(x)
        visited[x] = False
    return hits


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("cap", [0, 1, 3, 7, 40])
def test_policies_match_reference(seed, cap):
    rng = np.random.default_rng(seed)
    n = 37
    trace = (rng.zipf(1.6, size=301) % n).astype(np.int64)
    assert lru_hits(trace, cap, n) == lru_ref(trace.tolist(), cap)
    assert clock_hits(trace, cap, n) == clock_ref(trace.tolist(), cap)
    assert sieve_hits(trace, cap, n) == sieve_ref(trace.tolist(), cap)


def test_belady_bounds_every_policy():
    rng = np.random.default_rng(9)
    n = 500
    trace = (rng.zipf(1.3, size=20000) % n).astype(np.int64)
    for cap in (5, 50, 200):
        best = round(belady_hit_rate(trace, n, cap) * trace.size)
        counts = np.bincount(trace, minlength=n)
        mask = np.zeros(n, dtype=bool)
        mask[np.argsort(-counts)[:cap]] = True
        warm = np.concatenate([warm_prefix(trace, cap), trace])
        for hits in (lru_hits(warm, cap, n), clock_hits(warm, cap, n), sieve_hits(warm, cap, n),
                     static_hits(trace, mask)):
            assert hits <= best
    # a cache that holds every row, preloaded, hits every access
    assert round(belady_hit_rate(trace, n, n) * trace.size) == trace.size
