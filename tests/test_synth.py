import numpy as np
import pytest

from diskgnn.dataset import Dataset, verify_dataset
from diskgnn.errors import ConfigError
from diskgnn.synth import SynthConfig, scale_config, synthesize


def test_tiny_dataset_is_valid(tiny_dataset):
    ds = Dataset.open(tiny_dataset.path)
    verify_dataset(ds)
    assert ds.num_nodes == 1237 and ds.feat_dim == 13
    assert ds.indptr[-1] == ds.num_edges > 1237
    assert ds.features.shape == (1237, 13)
    assert set(np.unique(ds.labels)) <= set(range(5))


def test_deterministic_by_seed(tmp_path):
    cfg = SynthConfig(nodes=503, avg_degree=5, dim=7, classes=3, seed=11)
    a = synthesize(cfg, tmp_path / "a")
    b = synthesize(cfg, tmp_path / "b")
    c = synthesize(SynthConfig(nodes=503, avg_degree=5, dim=7, classes=3, seed=12), tmp_path / "c")
    for name in a.specs:
        assert (tmp_path / "a" / a.specs[name].path).read_bytes() == (tmp_path / "b" / b.specs[name].path).read_bytes()
    assert not np.array_equal(np.asarray(a.indices), np.asarray(c.indices))


def test_chunking_does_not_change_output(tmp_path):
    cfg = SynthConfig(nodes=777, avg_degree=4, dim=5, classes=3, seed=2)
    a = synthesize(cfg, tmp_path / "a", chunk_nodes=100)
    b = synthesize(cfg, tmp_path / "b", chunk_nodes=1 << 18)
    assert np.array_equal(np.asarray(a.indices), np.asarray(b.indices))
    assert np.array_equal(np.asarray(a.indptr), np.asarray(b.indptr))


def test_power_law_and_homophily(tmp_path):
    ds = synthesize(SynthConfig(nodes=20000, avg_degree=10, dim=4, classes=4, seed=0), tmp_path / "g")
    src = np.asarray(ds.indices)
    dst = np.repeat(np.arange(ds.num_nodes), np.diff(np.asarray(ds.indptr)))
    out_deg = np.bincount(src, minlength=ds.num_nodes)
    top = np.sort(out_deg)[-ds.num_nodes // 100:].sum() / out_deg.sum()
    assert top > 0.1, "the top 1% of nodes should carry a large share of edges (hot rows)"
    labels = np.asarray(ds.labels)
    same = (labels[src] == labels[dst]).mean()
    assert same > 0.6, f"edges should mostly join nodes of one class, got {same:.2f}"
    # no duplicate in-edges per node
    for v in range(0, ds.num_nodes, 997):
        nb = src[ds.indptr[v]:ds.indptr[v + 1]]
        assert np.unique(nb).size == nb.size


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_reduced_precision(tmp_path, dtype):
    ds = synthesize(SynthConfig(nodes=301, avg_degree=3, dim=9, classes=2, dtype=dtype), tmp_path / dtype)
    assert ds.feat_dtype == dtype and ds.features.dtype.itemsize == 2
    verify_dataset(ds)


@pytest.mark.parametrize("bad", [dict(nodes=1), dict(homophily=1.5), dict(dtype="int8"),
                                 dict(train_fraction=0.9, val_fraction=0.2), dict(classes=1)])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        scale_config("tiny", **bad)


def test_unknown_scale():
    with pytest.raises(ConfigError, match="unknown scale"):
        scale_config("xl")


def test_scale_l_for_link_prediction_needs_an_edge_split():
    assert scale_config("l").nodes == 64_000_000 and scale_config("l").edge_split is None
    with pytest.raises(ConfigError, match="scale l has no default --edge-split for --task link"):
        scale_config("l", task="link")
    assert scale_config("l", task="link", edge_split=(0.001, 0.0001, 0.0001)).edge_split == (0.001, 0.0001, 0.0001)
    assert scale_config("s", task="link").edge_split is not None  # the named scales with a default keep it


def _node_arrays_at_once(cfg: SynthConfig) -> dict:
    """The per-node arrays computed all at once with plain numpy (the generator's reference)."""
    n = cfg.nodes
    rng = np.random.default_rng([cfg.seed, 0x5EED])
    num_comm = cfg.classes * cfg.communities_per_class
    community = rng.integers(0, num_comm, n, dtype=np.int32)
    raw = (1.0 - rng.random(n)) ** (-1.0 / (cfg.degree_exponent - 1.0))
    cap = float(min(n - 1, max(50.0 * cfg.avg_degree, 10.0)))
    scale = cfg.avg_degree / np.minimum(raw, cap).mean()
    for _ in range(3):
        scale *= cfg.avg_degree / max(np.minimum(raw * scale, cap).mean(), 1e-12)
    degree = np.minimum(np.floor(raw * scale + rng.random(n)), cap).astype(np.int64)
    popularity = np.minimum((1.0 - rng.random(n)) ** (-1.0 / (cfg.popularity_exponent - 1.0)), cfg.max_popularity)
    by_community = np.argsort(community, kind="stable")
    means = rng.standard_normal((cfg.classes, cfg.dim))
    means *= cfg.separation / np.sqrt(2.0) / np.linalg.norm(means, axis=1, keepdims=True)
    offsets = rng.standard_normal((num_comm, cfg.dim)) * (0.5 * cfg.separation / np.sqrt(2 * cfg.dim))
    u = rng.random(n)
    f1, f2, f3 = cfg.train_fraction, cfg.train_fraction + cfg.val_fraction, \
        cfg.train_fraction + cfg.val_fraction + cfg.test_fraction
    return {"community": community, "degree": degree, "by_community": by_community,
            "cum_in_community": np.cumsum(popularity[by_community]), "cum_global": np.cumsum(popularity),
            "centers": (means[np.arange(num_comm) % cfg.classes] + offsets).astype(np.float32),
            "splits": {"train": np.flatnonzero(u < f1), "val": np.flatnonzero((u >= f1) & (u < f2)),
                       "test": np.flatnonzero((u >= f2) & (u < f3))}}


def test_node_arrays_in_pieces_equal_the_all_at_once_formulas():
    from diskgnn.synth import node_arrays
    cfg = SynthConfig(nodes=20011, avg_degree=7.5, dim=6, classes=3, seed=5, train_fraction=0.2)
    want = _node_arrays_at_once(cfg)
    for chunk in (97, 4096, 1 << 22):  # many pieces, a few, one
        got = node_arrays(cfg, chunk)
        for name in ("community", "degree", "by_community", "cum_in_community", "cum_global", "centers"):
            assert np.array_equal(getattr(got, name), want[name]), (name, chunk)
        for s in ("train", "val", "test"):
            assert np.array_equal(got.splits[s], want["splits"][s]) and got.splits[s].dtype == np.int64
        assert got.degree.dtype == np.int32 and got.by_community.dtype == np.int32  # 4 bytes a node, not 8


def test_group_by_community_is_a_stable_argsort():
    from diskgnn.kernels.synth import group_by_community
    community = np.random.default_rng(3).integers(0, 11, 5003, dtype=np.int32)
    start = np.zeros(12, dtype=np.int64)
    np.cumsum(np.bincount(community, minlength=11), out=start[1:])
    for dtype in (np.int32, np.int64):
        out = np.empty(5003, dtype=dtype)
        group_by_community(community, start, out)
        assert np.array_equal(out, np.argsort(community, kind="stable"))


def test_node_arrays_hold_no_temporary_of_the_graphs_size():
    """Peak memory of the set-up is its arrays (~26 bytes a node) plus two float64 arrays, not ~10 temporaries."""
    import tracemalloc
    from diskgnn.synth import node_arrays
    cfg = SynthConfig(nodes=400_003, avg_degree=36, dim=4, classes=16, seed=1)
    node_arrays(SynthConfig(nodes=101, avg_degree=3, dim=4, classes=2), 64)  # compile the kernel first
    tracemalloc.start()
    try:
        arrays = node_arrays(cfg, 1 << 14)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    kept = sum(a.nbytes for a in arrays[:6])
    assert kept <= 30 * cfg.nodes
    assert peak <= kept + 17 * cfg.nodes, f"peak {peak / cfg.nodes:.1f} bytes a node"  # all at once: ~80
