"""DGL interop: dgl:<Conv> stacks against DGL's own convolutions on the full subgraph, the CLI, bad names."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import requires_dgl, run_cli
from diskgnn.errors import ConfigError
from diskgnn.models import build_model, to_torch_blocks
from diskgnn.train import TrainConfig


@pytest.fixture(scope="module")
def tiny_packed(tiny_dataset, tmp_path_factory):
    from diskgnn.packing import PackConfig, pack
    from diskgnn.sampling import SampleConfig, presample
    work = tmp_path_factory.mktemp("dgl")
    samples = presample(tiny_dataset.path, work / "samples", SampleConfig(fanouts=(4, 3), batch_size=97, seed=2))
    return pack(samples.path, work / "packed", PackConfig(host_cache="20%"))


def test_dgl_names_without_dgl_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dgl", None)
    with pytest.raises(ConfigError) as err:
        TrainConfig(model="dgl:SAGEConv")
    text = str(err.value)
    assert "dgl:SAGEConv" in text and "diskgnn[dgl]" in text and "pyg:<Conv>" in text and "\n" not in text


@requires_dgl
@pytest.mark.parametrize("conv", ["SAGEConv", "GraphConv", "GATConv", "GATv2Conv", "GINConv"])
def test_stack_equals_dgl_on_the_full_subgraph(conv, tiny_packed, tiny_dataset):
    import dgl
    torch.manual_seed(0)
    samples = tiny_packed.samples
    model = build_model(f"dgl:{conv}", in_dim=tiny_dataset.feat_dim, num_classes=tiny_dataset.num_classes,
                        num_layers=2, hidden=6, heads=3).double()
    stack = model.module
    feats = torch.from_numpy(np.asarray(tiny_dataset.features, dtype=np.float64))
    mb = samples.batch("train/0", samples.num_batches("train/0") - 1)
    out = model(to_torch_blocks(mb.blocks), feats[mb.input_nodes])
    # DGL's ordinary call: each layer over all N nodes of the graph of its sampled edges (global ids)
    ids = torch.from_numpy(mb.input_nodes)
    h = feats
    for i, (layer, b) in enumerate(zip(stack.convs, mb.blocks)):
        dst = np.repeat(np.arange(b.num_dst), np.diff(b.indptr))
        g = dgl.graph((ids[torch.from_numpy(b.indices.astype(np.int64))], ids[torch.from_numpy(dst)]),
                      num_nodes=tiny_dataset.num_nodes)
        h = layer(g, h)
        if h.dim() == 3:
            h = h.mean(1) if i == 1 else h.flatten(1)
        if i == 0:
            h = F.elu(h) if stack.multi_head else F.relu(h)
    torch.testing.assert_close(out, h[torch.from_numpy(mb.seeds)], rtol=1e-10, atol=1e-10)


@requires_dgl
def test_train_command_with_a_dgl_stack(tiny_packed, tiny_dataset, tmp_path):
    metrics = tmp_path / "m.jsonl"
    rc, err = run_cli("train", tiny_packed.path, "--model", "dgl:SAGEConv", "--epochs", "3", "--lr", "0.01",
                      "--threads", "1", "--metrics", metrics)
    assert rc == 0, err
    final = json.loads(metrics.read_text().splitlines()[-1])
    assert final["model"] == "dgl:SAGEConv"
    assert final["best_val_acc"] > 1.0 / tiny_dataset.num_classes + 0.2


@requires_dgl
@pytest.mark.parametrize("name,expected", [
    ("dgl:SGConv", ["dgl:SGConv does not take bipartite input", "dgl:SAGEConv"]),
    ("dgl:TAGConv", ["does not take bipartite input"]),
    ("dgl:NNConv", ["its forward also needs efeat"]),
    ("dgl:APPNPConv", ["no in_feats/out_feats"]),
    ("dgl:SageConv", ["Did you mean dgl:SAGEConv?"]),
])
def test_bad_dgl_models_fail_with_one_paragraph(tiny_packed, name, expected):
    rc, err = run_cli("train", tiny_packed.path, "--model", name)
    assert rc == 2
    for text in expected:
        assert text in err, err
    assert err.strip().count("\n") == 0, err
