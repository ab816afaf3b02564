"""The heterogeneous DGL adapter: presampled typed batches as DGL heterogeneous blocks, and a HeteroGraphConv
model trained from the packed per-type stores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import requires_dgl
from diskgnn.hetero import hetero_scale_config, synthesize_hetero
from diskgnn.hetero_packing import pack_hetero
from diskgnn.hetero_samples import HeteroSampleConfig, presample_hetero
from diskgnn.packing import PackConfig


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("dglh")
    ds = synthesize_hetero(hetero_scale_config("tiny", author_dim=6), root / "ds")
    samples = presample_hetero(ds, root / "s", HeteroSampleConfig(fanouts="3,4", batch_size=128, epochs=2))
    return pack_hetero(samples, root / "p", PackConfig(host_cache="10%"))


def _relations(samples, ds):
    return [(ds.relations[r].src, ds.relations[r].rel, ds.relations[r].dst) for r in samples.relations]


@requires_dgl
def test_blocks_hold_exactly_the_batch_edges_per_relation(packed):
    import dgl
    from diskgnn.interop.dgl import to_dgl_hetero_blocks
    samples, ds = packed.samples, packed.dataset
    rels = _relations(samples, ds)
    offs = samples.type_offsets
    mb = samples.batch("train/1", 1)
    blocks = to_dgl_hetero_blocks(mb, offs, rels)
    assert len(blocks) == mb.num_layers
    for layer, g in enumerate(blocks):
        ptr, idx, et = mb.block_indptr[layer], mb.block_indices[layer], mb.block_etypes[layer]
        dst = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
        for r, (s, name, d) in enumerate(rels):
            sel = et == r
            want = sorted(zip((mb.input_nodes[idx[sel]] - offs[s]).tolist(),
                              (mb.input_nodes[dst[sel]] - offs[d]).tolist()))
            u, v = g.edges(etype=(s, name, d))
            got = sorted(zip(g.srcnodes[s].data[dgl.NID][u].tolist(), g.dstnodes[d].data[dgl.NID][v].tolist()))
            assert got == want
        for t in offs:  # destinations are the first sources of each type (DGL's block convention)
            n = g.num_dst_nodes(t)
            assert torch.equal(g.srcnodes[t].data[dgl.NID][:n], g.dstnodes[t].data[dgl.NID])
    # layer 0's paper sources are the rows of the paper stream, in order
    assert np.array_equal(blocks[0].srcnodes["paper"].data[dgl.NID].numpy(),
                          samples.type_view("paper").input_nodes("train/1", 1))


@requires_dgl
def test_a_heterographconv_model_trains_from_the_packed_stores(packed):
    import dgl.nn as dglnn
    from diskgnn.hetero_train import HeteroTrainConfig, train_hetero
    from diskgnn.interop.dgl import DGLHeteroModel
    samples, ds = packed.samples, packed.dataset
    rels = _relations(samples, ds)
    hidden = 32

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.ModuleDict({t: torch.nn.Linear(x.feat_dim, hidden) for t, x in ds.node_types.items()
                                             if x.features is not None})
            self.embed = torch.nn.ModuleDict({t: torch.nn.Embedding(x.num_nodes, hidden, sparse=True)
                                              for t, x in ds.node_types.items() if x.features is None})
            dims = [hidden, hidden, ds.num_classes]
            self.layers = torch.nn.ModuleList(
                dglnn.HeteroGraphConv({r[1]: dglnn.SAGEConv(dims[i], dims[i + 1], "mean") for r in rels},
                                      aggregate="sum") for i in range(2))

        def forward(self, blocks, inputs):
            h = {t: self.proj[t](x) if t in self.proj else self.embed[t](x) for t, x in inputs.items()}
            for i, (layer, block) in enumerate(zip(self.layers, blocks)):
                h = layer(block, h)
                if i == 0:
                    h = {k: torch.relu(v) for k, v in h.items()}
            return h

    torch.manual_seed(0)
    model = DGLHeteroModel(Net(), samples.type_offsets, rels, ds.target)
    r = train_hetero(packed.path, HeteroTrainConfig(epochs=6, lr=1e-2, threads=1), model=model)
    assert r["path"] == "packed" and r["model"] is model
    assert r["test_acc"] > 0.8, r["history"]
