"""The sampling kernels against a plain-Python twin, and the statistics of their draws."""
import itertools
import math

import numba
import numpy as np
import pytest

from conftest import requires_dgl
from diskgnn.kernels.rng import mix_key
from diskgnn.kernels.sampling import (count_missing_edges, first_repeat, floyd_positions,
                                      repeated_in_segments, sample_blocks, selection_positions)

# --- plain-Python twin of the kernels (same counter-based RNG, same algorithms) ------------------

_M = (1 << 64) - 1


def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & _M
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M
    return z ^ (z >> 31)


def _mix_key(a, b):
    return _splitmix64(a ^ ((_splitmix64(b) * 0x2545F4914F6CDD1D) & _M))


def _draw(key, counter):
    return _splitmix64(key ^ ((counter * 0xD1B54A32D192ED03) & _M))


def _ref_positions(key, deg, k):
    if k * k <= 8 * deg:  # Floyd
        chosen = []
        for j in range(deg - k, deg):
            t = _draw(key, j) % (j + 1)
            chosen.append(j if t in chosen else t)
        return sorted(chosen)
    out, t = [], 0  # selection sampling
    while len(out) < k:
        if (deg - t) * ((_draw(key, t) >> 11) * (1.0 / 9007199254740992.0)) < k - len(out):
            out.append(t)
        t += 1
    return out


def ref_sample_blocks(indptr, indices, seeds, fanouts, batch_key):
    """What sample_blocks must return, written as plainly as possible."""
    nodes = [int(s) for s in seeds]
    local = {v: i for i, v in enumerate(nodes)}
    sizes = [0] * len(fanouts) + [len(nodes)]
    blocks = [None] * len(fanouts)
    for layer in range(len(fanouts) - 1, -1, -1):
        layer_key = _mix_key(batch_key, layer)
        ptr, idx = [0], []
        for v in list(nodes):
            lo, hi = int(indptr[v]), int(indptr[v + 1])
            deg, f = hi - lo, fanouts[layer]
            if f < 0 or deg <= f:
                picked = list(range(deg))
            else:
                picked = _ref_positions(_mix_key(layer_key, v), deg, f)
            for p in picked:
                u = int(indices[lo + p])
                if u not in local:
                    local[u] = len(nodes)
                    nodes.append(u)
                idx.append(local[u])
            ptr.append(len(idx))
        sizes[layer] = len(nodes)
        blocks[layer] = (ptr, idx)
    block_indptr = [p for b in blocks for p in b[0]]
    block_indices = [i for b in blocks for i in b[1]]
    return nodes, sizes, block_indptr, block_indices


def odd_graph():
    """23 nodes: isolated nodes, self-loops, a node with degree exactly 3, a hub with 40 in-edges."""
    rng = np.random.default_rng(5)
    n = 23
    neighbours = [[] for _ in range(n)]
    neighbours[0] = list(range(1, 23)) + list(range(1, 19))  # hub; in-edges repeat sources (a multigraph)
    neighbours[0] = list(rng.permutation(neighbours[0])[:40])
    neighbours[1] = [1, 2, 3]             # self-loop, degree exactly 3
    neighbours[2] = [5, 7, 11]            # degree exactly 3
    neighbours[3] = [3]                   # only a self-loop
    neighbours[4] = []                    # isolated
    neighbours[5] = [0, 0 + 6, 22]
    neighbours[6] = [0]
    neighbours[7] = list(range(8, 20))    # degree 12
    for v in range(8, 22):
        if v % 3:
            neighbours[v] = sorted(set(int(x) for x in rng.integers(0, n, 5)))
    neighbours[22] = [22, 21, 0, 4, 9]
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(x) for x in neighbours])
    indices = np.array([u for x in neighbours for u in x], dtype=np.int32)
    return indptr, indices


@pytest.mark.parametrize("fanouts", [(3,), (2, 3), (-1, 2), (1, -1, 3), (5, 40, 1)])
@pytest.mark.parametrize("seeds", [[0], [4], [1, 2, 3, 7], [22, 0, 5, 13, 4, 8, 16]])
def test_kernel_matches_reference(fanouts, seeds):
    indptr, indices = odd_graph()
    node_map = np.full(indptr.shape[0] - 1, -1, dtype=np.int32)
    for key in (0, 12345, 2**63 + 7):
        got = sample_blocks(indptr, indices, np.array(seeds, dtype=np.int64), np.array(fanouts, dtype=np.int64),
                            np.uint64(key), node_map)
        want = ref_sample_blocks(indptr, indices, seeds, fanouts, key)
        assert got[0].tolist() == want[0]
        assert got[1].tolist() == want[1]
        assert got[2].tolist() == want[2]
        assert got[3].tolist() == want[3]
        assert got[2].dtype == np.int64 and got[3].dtype == np.int32
        assert (node_map == -1).all(), "the node map must be restored for the next batch"


def test_kernel_on_int64_indices_and_memmap(tmp_path):
    indptr, indices = odd_graph()
    path = tmp_path / "indices.bin"
    indices.astype(np.int64).tofile(path)
    mapped = np.memmap(path, dtype=np.int64, mode="r", shape=indices.shape)
    node_map = np.full(23, -1, dtype=np.int32)
    seeds, fanouts = np.array([0, 7, 22], dtype=np.int64), np.array([2, 4], dtype=np.int64)
    a = sample_blocks(indptr, indices, seeds, fanouts, np.uint64(9), node_map)
    b = sample_blocks(indptr, mapped, seeds, fanouts, np.uint64(9), node_map)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def test_structure_on_random_graph():
    rng = np.random.default_rng(1)
    n = 501
    deg = rng.integers(0, 30, n)
    deg[17] = 300
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(deg)
    # distinct sources per node, so repeats in a sample would be a bug
    indices = np.concatenate([rng.choice(n, d, replace=False) for d in deg]).astype(np.int32)
    node_map = np.full(n, -1, dtype=np.int32)
    mark = np.zeros(n, dtype=np.uint8)
    fanouts = (4, 7, 25)
    for b in range(5):
        seeds = rng.choice(n, 33, replace=False).astype(np.int64)
        nodes, sizes, bptr, bidx = sample_blocks(indptr, indices, seeds, np.array(fanouts, dtype=np.int64),
                                                 np.uint64(b), node_map)
        assert np.array_equal(nodes[:33], seeds)
        assert np.unique(nodes).size == nodes.size
        assert sizes[-1] == 33 and (np.diff(sizes) <= 0).all() and sizes[0] == nodes.size
        p = q = 0
        for layer, f in enumerate(fanouts):
            num_src, num_dst = sizes[layer], sizes[layer + 1]
            ptr = bptr[p:p + num_dst + 1]
            idx = bidx[q:q + ptr[-1]]
            p, q = p + num_dst + 1, q + ptr[-1]
            assert ptr[0] == 0 and (idx < num_src).all() and (idx >= 0).all()
            true_deg = deg[nodes[:num_dst]]
            assert np.array_equal(np.diff(ptr), np.minimum(true_deg, f))
            assert count_missing_edges(indptr, indices, nodes, ptr, idx) == 0
            assert repeated_in_segments(ptr, idx, mark) == -1
            for j in range(num_dst):
                if true_deg[j] <= f:  # all neighbours taken, in CSR order
                    v = nodes[j]
                    assert np.array_equal(nodes[idx[ptr[j]:ptr[j + 1]]], indices[indptr[v]:indptr[v + 1]])
        assert p == bptr.size and q == bidx.size
    assert (mark == 0).all()


def test_check_kernels_detect_problems():
    indptr = np.array([0, 2, 3, 3], dtype=np.int64)
    indices = np.array([1, 2, 0], dtype=np.int32)
    nodes = np.array([0, 1, 2], dtype=np.int64)
    assert count_missing_edges(indptr, indices, nodes, np.array([0, 2, 3]), np.array([1, 2, 0], np.int32)) == 0
    assert count_missing_edges(indptr, indices, nodes, np.array([0, 2, 3]), np.array([1, 0, 2], np.int32)) == 2
    mark = np.zeros(3, dtype=np.uint8)
    assert repeated_in_segments(np.array([0, 2, 3]), np.array([1, 1, 0], np.int32), mark) == 0
    assert repeated_in_segments(np.array([0, 1, 3]), np.array([1, 2, 2], np.int32), mark) == 1
    assert first_repeat(np.array([2, 0, 1, 0], dtype=np.int64), mark) == 3
    assert first_repeat(np.array([2, 0, 1], dtype=np.int64), mark) == -1
    assert (mark == 0).all()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
def test_same_output_with_one_or_two_threads():
    rng = np.random.default_rng(2)
    n = 2000
    deg = rng.integers(0, 60, n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(deg)
    indices = rng.integers(0, n, int(indptr[-1])).astype(np.int32)
    seeds = rng.choice(n, 257, replace=False).astype(np.int64)
    fanouts = np.array([5, 11], dtype=np.int64)
    node_map = np.full(n, -1, dtype=np.int32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = sample_blocks(indptr, indices, seeds, fanouts, np.uint64(3), node_map)
        numba.set_num_threads(2)
        two = sample_blocks(indptr, indices, seeds, fanouts, np.uint64(3), node_map)
    finally:
        numba.set_num_threads(before)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


# --- statistics ----------------------------------------------------------------------------------

def chi2_upper(df: int, p_value: float = 1e-3) -> float:
    """Upper quantile of the chi-square distribution (Wilson-Hilferty), z for p = 1e-3."""
    z = {1e-3: 3.0902}[p_value]
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def inclusion_statistic(counts: np.ndarray, trials: int, k: int) -> float:
    """Chi-square statistic (df = deg - 1) of how often each of deg items was among k drawn without replacement.

    Each count has mean trials*p and variance trials*p*(1-p) with p = k/deg; the
    counts sum to trials*k, which makes sum(z^2) * (deg-1)/deg chi-square with deg-1 df.
    """
    deg = counts.shape[0]
    p = k / deg
    z2 = (counts - trials * p) ** 2 / (trials * p * (1 - p))
    return float(z2.sum() * (deg - 1) / deg)


@pytest.mark.parametrize("deg,k", [(10, 3), (40, 10), (16, 15), (9, 8), (300, 25)])
def test_each_neighbour_picked_with_probability_fanout_over_degree(deg, k):
    # node 0 has `deg` in-neighbours 1..deg; sample it under many batch keys
    indptr = np.zeros(deg + 2, dtype=np.int64)
    indptr[1:] = deg
    indices = np.arange(1, deg + 1, dtype=np.int32)
    node_map = np.full(deg + 1, -1, dtype=np.int32)
    trials = 4000
    counts = np.zeros(deg, dtype=np.int64)
    seeds, fanouts = np.zeros(1, dtype=np.int64), np.array([k], dtype=np.int64)
    for t in range(trials):
        nodes, _, _, bidx = sample_blocks(indptr, indices, seeds, fanouts, np.uint64(mix_key(77, t)), node_map)
        picked = nodes[bidx]
        assert np.unique(picked).size == k
        counts[picked - 1] += 1
    assert inclusion_statistic(counts, trials, k) < chi2_upper(deg - 1)
    assert np.allclose(counts / trials, k / deg, atol=5 * math.sqrt(k / deg * (1 - k / deg) / trials))


@pytest.mark.parametrize("deg,k,fn", [(6, 2, floyd_positions), (6, 4, floyd_positions),
                                      (7, 3, selection_positions), (10, 9, selection_positions)])
def test_every_subset_equally_likely(deg, k, fn):
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(deg), k))}
    trials = 30 * len(subsets) + 600
    counts = np.zeros(len(subsets), dtype=np.int64)
    out = np.zeros(k + 3, dtype=np.int64)
    for t in range(trials):
        fn(np.uint64(mix_key(5, t)), deg, k, out, 2)
        counts[subsets[tuple(out[2:2 + k].tolist())]] += 1
    expected = trials / len(subsets)
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert stat < chi2_upper(len(subsets) - 1)


def test_statistic_rejects_a_biased_sampler():
    # the test above must be able to fail: always preferring low positions is caught
    deg, k, trials = 10, 3, 4000
    rng = np.random.default_rng(0)
    counts = np.zeros(deg, dtype=np.int64)
    weights = np.linspace(1.0, 1.3, deg)
    for _ in range(trials):
        counts[rng.choice(deg, k, replace=False, p=weights / weights.sum())] += 1
    assert inclusion_statistic(counts, trials, k) > chi2_upper(deg - 1)


@requires_dgl
@pytest.mark.parametrize("deg,k", [(10, 3), (40, 10), (16, 15)])
def test_dgl_picks_each_neighbour_with_probability_fanout_over_degree(deg, k):
    import dgl
    import torch
    src = torch.arange(1, deg + 1, dtype=torch.int64)
    g = dgl.graph((src, torch.zeros(deg, dtype=torch.int64)), num_nodes=deg + 1)
    dgl.seed(11)
    trials = 4000
    counts = np.zeros(deg, dtype=np.int64)
    seeds = torch.zeros(1, dtype=torch.int64)
    for _ in range(trials):
        sg = dgl.sampling.sample_neighbors(g, seeds, k, replace=False)
        picked = sg.edges()[0].numpy()
        assert np.unique(picked).size == k
        counts[picked - 1] += 1
    assert inclusion_statistic(counts, trials, k) < chi2_upper(deg - 1)
