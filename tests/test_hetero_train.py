"""Relation-wise SAGE and RGCN on heterogeneous minibatches: the layers' arithmetic and that they learn."""
import numpy as np
import pytest
import torch

from diskgnn.errors import ConfigError
from diskgnn.hetero import hetero_scale_config, synthesize_hetero
from diskgnn.hetero_models import RelSAGELayer, RGCNLayer, hetero_blocks
from diskgnn.hetero_sampling import HeteroSampler
from diskgnn.hetero_train import HeteroTrainConfig, train_hetero


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return synthesize_hetero(hetero_scale_config("tiny"), tmp_path_factory.mktemp("h") / "ds")


def _reference(mb, layer, h, per_relation):
    """Per destination: the sum over its relations of per_relation(r, h_dst, mean of sampled sources)."""
    ptr, idx, et = mb.block_indptr[layer], mb.block_indices[layer], mb.block_etypes[layer]
    out = []
    for i in range(int(mb.layer_sizes[layer + 1])):
        seg_idx, seg_t = idx[ptr[i]:ptr[i + 1]], et[ptr[i]:ptr[i + 1]]
        acc = None
        for r in np.unique(seg_t):
            part = per_relation(int(r), h[i], h[torch.from_numpy(seg_idx[seg_t == r].astype(np.int64))].mean(0))
            acc = part if acc is None else acc + part
        out.append(acc)
    return out


def test_layers_compute_their_formulas(ds):
    torch.manual_seed(0)
    sampler = HeteroSampler(ds, "3,4")
    mb = sampler.sample(np.array([1, 8, 600, 2997]), key=3)
    blocks = hetero_blocks(mb, len(sampler.relations))
    h = torch.randn(int(mb.layer_sizes[0]), 6, dtype=torch.float64)
    sage = RelSAGELayer(len(sampler.relations), 6, 5).double()
    got = sage(blocks[0], h)
    ref = _reference(mb, 0, h, lambda r, hd, m: sage.fc_self[r](hd) + sage.fc_neigh[r](m))
    for i, row in enumerate(ref):
        assert row is None and torch.all(got[i] == 0) or torch.allclose(got[i], row)
    rgcn = RGCNLayer(len(sampler.relations), 6, 5, num_bases=2).double()
    w = rgcn.relation_weights()
    assert w.shape == (len(sampler.relations), 6, 5)
    got = rgcn(blocks[0], h)
    ref = _reference(mb, 0, h, lambda r, hd, m: m @ w[r])
    for i, row in enumerate(ref):
        want = rgcn.self_loop(h[i]) + (0 if row is None else row)
        assert torch.allclose(got[i], want)
    # gradients reach every relation weight that had edges
    got.sum().backward()
    assert rgcn.coeff.grad is not None and torch.any(rgcn.bases.grad != 0)


@pytest.mark.parametrize("model, bases", [("rsage", None), ("rgcn", 2)])
def test_models_learn_labels_that_need_the_typed_neighbourhood(ds, model, bases):
    """The paper's own features are a weak signal (a nearest-mean guess gets < 60 %, see test_hetero)."""
    r = train_hetero(ds, HeteroTrainConfig(model=model, fanouts="5,5", batch_size=64, epochs=5, hidden=32,
                                           num_bases=bases, threads=1))
    assert len(r["history"]) == 5 and r["history"][-1]["loss"] < r["history"][0]["loss"]
    assert r["test_acc"] > 0.85, r["history"]
    assert any(n.startswith("input.embed.author") for n, _ in r["model"].named_parameters())


def test_eval_fanouts_must_match_the_layers(ds):
    with pytest.raises(ConfigError, match="--eval-fanouts has 1 layers"):
        train_hetero(ds, HeteroTrainConfig(fanouts="5,5", eval_fanouts="-1", epochs=1))


def test_the_dgl_baseline_sees_the_same_graph_and_learns(ds):
    pytest.importorskip("dgl", reason="the DGL baseline needs the reference stack")
    from diskgnn.bench.hetero_parity import dgl_heterograph, train_dgl
    g = dgl_heterograph(ds)
    for name, r in ds.relations.items():
        src, dst = g.edges(etype=(r.src, r.rel, r.dst))
        indptr = np.asarray(ds.indptr(name))
        assert np.array_equal(np.bincount(dst.numpy(), minlength=indptr.size - 1), np.diff(indptr))
        assert np.array_equal(np.sort(src.numpy()), np.sort(np.asarray(ds.indices(name))))
    r = train_dgl(ds, fanouts=[5, 5], batch_size=64, epochs=3, hidden=32, lr=1e-3, embed_lr=1e-2, seed=0)
    assert r["test_acc"] > 0.8, r["history"]


def test_embeddings_that_do_not_fit_the_budget_are_refused(ds):
    from diskgnn.errors import MemoryBudgetError
    from diskgnn.hetero_train import embedding_bytes
    sizes = embedding_bytes(ds, 32)
    assert set(sizes) == {"author", "institution"} and sizes["author"] == 2003 * 32 * 4 * 3
    with pytest.raises(MemoryBudgetError, match=r"featureless node types need .*author .*--hidden"):
        train_hetero(ds, HeteroTrainConfig(fanouts="2,2", hidden=32, epochs=1, memory_budget=sum(sizes.values())))
