"""Per-relation neighbour sampling on a heterogeneous dataset: valid typed subgraphs, exact counts, seeded."""
import numba
import numpy as np
import pytest

from diskgnn.errors import ConfigError
from diskgnn.hetero import hetero_scale_config, synthesize_hetero
from diskgnn.hetero_sampling import HeteroSampler, parse_hetero_fanouts


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return synthesize_hetero(hetero_scale_config("tiny"), tmp_path_factory.mktemp("h") / "ds")


def _check_batch(ds, sampler, mb, seeds):
    offs = sampler.type_offsets
    types = list(ds.node_types)
    starts = np.array([offs[t] for t in types])

    def type_of(g):
        return types[int(np.searchsorted(starts, g, side="right")) - 1]

    nodes = mb.input_nodes
    assert np.array_equal(nodes[:seeds.size], seeds + offs[ds.target])
    assert np.unique(nodes).size == nodes.size
    for layer in range(mb.num_layers):
        ptr, idx, et = mb.block_indptr[layer], mb.block_indices[layer], mb.block_etypes[layer]
        n_dst, n_src = int(mb.layer_sizes[layer + 1]), int(mb.layer_sizes[layer])
        assert ptr.shape == (n_dst + 1,) and ptr[-1] == idx.size == et.size
        assert idx.size == 0 or (idx.min() >= 0 and idx.max() < n_src)
        for i in range(n_dst):
            v = int(nodes[i])
            t_dst = type_of(v)
            seg = slice(ptr[i], ptr[i + 1])
            assert np.all(np.diff(et[seg]) >= 0)  # grouped by relation
            for ri, name in enumerate(sampler.relations):
                r = ds.relations[name]
                mine = idx[seg][et[seg] == ri]
                if r.dst != t_dst:
                    assert mine.size == 0
                    continue
                local = v - offs[r.dst]
                indptr, indices = np.asarray(ds.indptr(name)), np.asarray(ds.indices(name))
                nbrs = indices[indptr[local]:indptr[local + 1]]
                k = sampler.fanouts[layer][name]
                assert mine.size == (nbrs.size if k < 0 else min(k, nbrs.size))
                src = nodes[mine] - offs[r.src]
                assert all(type_of(int(g)) == r.src for g in nodes[mine])
                assert np.isin(src, nbrs).all() and np.unique(src).size == src.size  # real, distinct in-edges


def test_blocks_are_typed_subgraphs_with_each_relations_fanout(ds):
    sampler = HeteroSampler(ds, "cites=3|writes=2|*=-1,4")
    seeds = np.array([5, 17, 2999, 0, 1234, 77])
    mb = sampler.sample(seeds, key=42)
    assert mb.num_layers == 2 and mb.num_edges > 0
    _check_batch(ds, sampler, mb, seeds)
    by_type = sampler.inputs_by_type(mb)
    assert sum(p.size for p, _ in by_type.values()) == mb.input_nodes.size
    assert by_type["field"][0].size > 0 and by_type["author"][0].size > 0  # the typed neighbourhood is reached
    assert np.all(sampler.node_map == -1)


def test_sampling_is_seeded_and_thread_count_independent(ds):
    sampler = HeteroSampler(ds, "5,5")
    seeds = np.arange(3, 3000, 37)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = sampler.sample(seeds, key=7)
        numba.set_num_threads(max(before, 2))
        b = sampler.sample(seeds, key=7)
    finally:
        numba.set_num_threads(before)
    c = sampler.sample(seeds, key=8)
    assert np.array_equal(a.input_nodes, b.input_nodes)
    for x, y in zip(a.block_indices + a.block_etypes, b.block_indices + b.block_etypes):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.input_nodes, c.input_nodes)
    _check_batch(ds, sampler, a, seeds)


def test_fanout_parsing():
    rels = ["paper__cites__paper", "author__writes__paper", "paper__rev_cites__paper"]
    assert parse_hetero_fanouts("10,15", rels) == [dict.fromkeys(rels, 10), dict.fromkeys(rels, 15)]
    layer = parse_hetero_fanouts("writes=2|*=4", rels)[0]
    assert layer == {"paper__cites__paper": 4, "author__writes__paper": 2, "paper__rev_cites__paper": 4}
    with pytest.raises(ConfigError, match="gives no fanout for paper__cites__paper"):
        parse_hetero_fanouts("writes=2", rels)
    with pytest.raises(ConfigError, match="unknown relation 'likes'"):
        parse_hetero_fanouts("likes=2|*=3", rels)
    with pytest.raises(ConfigError, match="must be positive or -1"):
        parse_hetero_fanouts("0", rels)
