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
