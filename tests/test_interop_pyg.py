"""PyG interop: presampled blocks as bipartite message passing, pyg:<Conv> stacks, the CLI, and bad names.

The reference for every output is PyG itself, run the ordinary way: each layer
called on all nodes of the graph made of that layer's sampled edges (global
ids), its rows at the seeds compared with diskgnn's.
"""
from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import requires_pyg, run_cli
from diskgnn.errors import ConfigError
from diskgnn.interop.pyg import PyGBlock, pyg_block, to_pyg_blocks
from diskgnn.models import TorchBlock, build_model, to_torch_blocks
from diskgnn.train import TrainConfig

CONVS = ["SAGEConv", "GraphConv", "GATConv", "GATv2Conv", "GINConv", "TransformerConv"]
SMALL = ["--fanouts", "4,3", "--batch-size", "97", "--lr", "0.01", "--threads", "1"]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pyg_model.py"


@pytest.fixture(scope="module")
def tiny_samples(tiny_dataset, tmp_path_factory):
    from diskgnn.sampling import SampleConfig, presample
    return presample(tiny_dataset.path, tmp_path_factory.mktemp("pyg") / "samples",
                     SampleConfig(fanouts=(4, 3), batch_size=97, epochs=1, seed=2))


@pytest.fixture(scope="module")
def tiny_packed(tiny_samples):
    from diskgnn.packing import PackConfig, pack
    return pack(tiny_samples.path, tiny_samples.path.parent / "packed", PackConfig(host_cache="20%"))


def features64(dataset) -> torch.Tensor:
    return torch.from_numpy(np.asarray(dataset.features, dtype=np.float64))


def full_subgraph_forward(stack, minibatch, features: torch.Tensor) -> torch.Tensor:
    """The stack's convolutions called the ordinary PyG way on all N nodes, layer l over block l's edges in
    global ids, with the stack's activations between layers; returns [N, classes]."""
    ids = torch.from_numpy(np.asarray(minibatch.input_nodes, dtype=np.int64))
    h = features
    last = len(stack.convs) - 1
    for i, (conv, b) in enumerate(zip(stack.convs, minibatch.blocks)):
        dst = np.repeat(np.arange(b.num_dst, dtype=np.int64), np.diff(b.indptr))
        edge_index = torch.stack([ids[torch.from_numpy(b.indices.astype(np.int64))], ids[torch.from_numpy(dst)]])
        h = conv(h, edge_index)
        if i != last:
            h = F.elu(h) if stack.multi_head else F.relu(h)
    return h


# --- blocks (no PyG needed) -----------------------------------------------------------------------------

def test_pyg_block_of_a_torch_block_and_of_a_minibatch(tiny_samples):
    mb = tiny_samples.batch("train/0", 1)
    blocks = to_torch_blocks(mb.blocks)
    for tb, b in zip(blocks, mb.blocks):
        pb = pyg_block(tb)
        assert pb.size == (b.num_src, b.num_dst) and pb.num_edges == b.num_edges
        assert torch.equal(pb.edge_index[0], tb.src) and torch.equal(pb.edge_index[1], tb.dst)
        assert int(pb.edge_index[0].max()) < b.num_src and int(pb.edge_index[1].max()) < b.num_dst
        assert pyg_block(tb).edge_index is pb.edge_index, "a block's edge_index is stacked once"
    from_mb = to_pyg_blocks(mb)
    for pb, tb, b in zip(from_mb, blocks, mb.blocks):
        assert torch.equal(pb.edge_index, pyg_block(tb).edge_index)
        assert pb.n_id.tolist() == mb.input_nodes[:b.num_src].tolist()
    assert [b.size for b in to_pyg_blocks(mb.blocks)] == [b.size for b in from_mb]


def test_core_imports_neither_pyg_nor_dgl():
    code = ("import sys, diskgnn.train, diskgnn.models, diskgnn.interop, diskgnn.interop.pyg, "
            "diskgnn.interop.dgl, diskgnn.tools.cli\n"
            "print(sorted(m for m in ('torch_geometric', 'dgl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_pyg_names_without_pyg_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)
    monkeypatch.setitem(sys.modules, "torch_geometric.nn", None)
    with pytest.raises(ConfigError) as err:
        TrainConfig(model="pyg:SAGEConv")
    text = str(err.value)
    assert "pyg:SAGEConv" in text and "pip install 'diskgnn[pyg]'" in text and "sage, gat or gcn" in text
    assert "\n" not in text


@pytest.mark.parametrize("name,match", [("pyg:", "after 'pyg:' comes the class name"),
                                        ("pyg:Two Words", "after 'pyg:' comes the class name"),
                                        ("torch:SAGEConv", "unknown library prefix 'torch'"),
                                        ("gin", "does not exist")])
def test_malformed_model_names(name, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(model=name)


# --- stacks against PyG on the full subgraph ----------------------------------------------------------------

@requires_pyg
@pytest.mark.parametrize("conv", CONVS)
def test_stack_equals_pyg_on_the_full_subgraph(conv, tiny_samples, tiny_dataset):
    torch.manual_seed(0)
    classes = tiny_dataset.num_classes
    model = build_model(f"pyg:{conv}", in_dim=tiny_dataset.feat_dim, num_classes=classes, num_layers=2, hidden=6,
                        heads=3).double()
    params = list(model.parameters())
    feats = features64(tiny_dataset)
    labels = torch.from_numpy(np.array(tiny_dataset.labels, dtype=np.int64))
    last = tiny_samples.num_batches("train/0") - 1
    for i in (0, last):  # the last batch is the odd-sized one
        mb = tiny_samples.batch("train/0", i)
        seeds = torch.from_numpy(mb.seeds)
        out = model(to_torch_blocks(mb.blocks), feats[mb.input_nodes])
        ref = full_subgraph_forward(model, mb, feats)[seeds]
        assert out.shape == (mb.batch_size, classes)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        grads = torch.autograd.grad(F.cross_entropy(out, labels[seeds]), params)
        ref_grads = torch.autograd.grad(F.cross_entropy(ref, labels[seeds]), params)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)
        assert all(torch.isfinite(g).all() for g in grads)
        assert sum(int(g.abs().sum() > 0) for g in grads) == len(grads), "every parameter gets a gradient"


@requires_pyg
@pytest.mark.parametrize("conv", CONVS)
def test_destinations_without_in_edges_keep_their_rows(conv):
    # the last two destinations have no in-edges, so only size (or h_dst) says how many rows there are
    block = TorchBlock.from_csr(np.array([0, 2, 3, 3, 3]), np.array([4, 5, 1], dtype=np.int32), num_src=6, num_dst=4)
    torch.manual_seed(1)
    model = build_model(f"pyg:{conv}", in_dim=5, num_classes=3, num_layers=1, heads=2).double().eval()
    x = torch.randn(6, 5, dtype=torch.float64)
    out = model([block], x)
    assert out.shape == (4, 3)
    # destination i is source i: the same convolution over the block's sources as one node set agrees
    square = model.convs[0](x, pyg_block(block).edge_index)[:4]
    torch.testing.assert_close(out, square, rtol=1e-12, atol=1e-12)


@requires_pyg
def test_pyg_sage_stack_with_diskgnn_weights_equals_diskgnn_sage(tiny_samples, tiny_dataset):
    from diskgnn.bench.pyg_parity import copy_sage_weights
    shape = dict(in_dim=tiny_dataset.feat_dim, num_classes=tiny_dataset.num_classes, num_layers=2, hidden=9)
    sage = build_model("sage", **shape).double()
    stack = build_model("pyg:SAGEConv", **shape).double()
    copy_sage_weights(stack, sage)
    mb = tiny_samples.batch("train/0", 2)
    x = features64(tiny_dataset)[mb.input_nodes]
    torch.testing.assert_close(stack(to_torch_blocks(mb.blocks), x), sage(to_torch_blocks(mb.blocks), x),
                               rtol=1e-10, atol=1e-10)


@requires_pyg
def test_multi_head_widths_and_activations():
    gat = build_model("pyg:GATConv", in_dim=7, num_classes=3, num_layers=3, hidden=5, heads=2)
    assert [(c.in_channels, c.out_channels, c.heads, c.concat) for c in gat.convs] == \
        [(7, 5, 2, True), (10, 5, 2, True), (10, 3, 2, False)]
    assert gat.multi_head
    default = build_model("pyg:GATConv", in_dim=7, num_classes=3, num_layers=2)
    assert default.convs[0].out_channels == 32 and default.convs[0].heads == 4  # 32 per head, 4 heads
    sage = build_model("pyg:SAGEConv", in_dim=7, num_classes=3, num_layers=2)
    assert sage.convs[0].out_channels == 128 and not sage.multi_head
    assert TrainConfig(model="pyg:GATConv").hidden == 32 and TrainConfig(model="pyg:SAGEConv").hidden == 128


@requires_pyg
def test_stack_refuses_a_batch_of_another_depth(tiny_samples, tiny_dataset):
    model = build_model("pyg:SAGEConv", in_dim=tiny_dataset.feat_dim, num_classes=5, num_layers=3)
    mb = tiny_samples.batch("train/0", 0)
    with pytest.raises(ConfigError, match="3 layers but the batch has 2 blocks"):
        model(to_torch_blocks(mb.blocks), torch.zeros(mb.blocks[0].num_src, tiny_dataset.feat_dim))


# --- training and the command line ---------------------------------------------------------------------------

@requires_pyg
def test_train_command_with_a_pyg_stack_learns_and_resumes(tiny_packed, tiny_dataset, tmp_path):
    metrics, ck = tmp_path / "m.jsonl", tmp_path / "ck"
    rc, err = run_cli("train", tiny_packed.path, "--model", "pyg:SAGEConv", "--epochs", "3", "--lr", "0.01",
                      "--threads", "1", "--metrics", metrics, "--checkpoint", ck)
    assert rc == 0, err
    final = json.loads(metrics.read_text().splitlines()[-1])
    assert final["model"] == "pyg:SAGEConv" and final["epochs"] == 3
    assert final["best_val_acc"] > 1.0 / tiny_dataset.num_classes + 0.2, "the stack should beat chance clearly"
    rc, err = run_cli("train", tiny_packed.path, "--model", "pyg:SAGEConv", "--epochs", "4", "--lr", "0.01",
                      "--threads", "1", "--metrics", metrics, "--checkpoint", ck, "--resume")
    assert rc == 0, err
    epochs = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines() if '"event": "epoch"' in x]
    assert epochs == [1, 2, 3, 4]


@requires_pyg
def test_run_command_with_an_attention_stack(tiny_dataset, tmp_path):
    wd = tmp_path / "wd"
    rc, err = run_cli("run", "--dataset", tiny_dataset.path, "--workdir", wd, "--model", "pyg:GATConv", "--heads",
                      "2", "--hidden", "4", "--epochs", "1", *SMALL)
    assert rc == 0, err
    final = json.loads((wd / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["model"] == "pyg:GATConv" and final["test_acc"] is not None


@requires_pyg
@pytest.mark.parametrize("name,expected", [
    ("pyg:NoSuchConv", ["torch_geometric.nn has no class 'NoSuchConv'", "pyg:SAGEConv"]),
    ("pyg:sageconv", ["Did you mean pyg:SAGEConv?"]),
    ("pyg:GCNConv", ["pyg:GCNConv", "does not take bipartite input", "pyg:SAGEConv", "pyg:GraphConv"]),
    ("pyg:ChebConv", ["does not take bipartite input"]),
    ("pyg:PointNetConv", ["its forward also needs pos"]),
    ("pyg:NNConv", ["its constructor needs nn"]),
    ("pyg:Linear", ["torch_geometric.nn.Linear is not a message-passing convolution"]),
])
def test_bad_pyg_models_fail_with_one_paragraph(tiny_packed, name, expected):
    rc, err = run_cli("train", tiny_packed.path, "--model", name)
    assert rc == 2
    for text in expected:
        assert text in err, err
    assert err.startswith("diskgnn train: error: --model") and err.strip().count("\n") == 0, err


@requires_pyg
def test_run_with_a_bad_pyg_model_fails_before_any_step(tmp_path):
    wd = tmp_path / "wd"
    rc, err = run_cli("run", "--scale", "tiny", "--workdir", wd, "--model", "pyg:GCNConv")
    assert rc == 2 and "does not take bipartite input" in err
    assert not (wd / "dataset").exists()


@requires_pyg
def test_hand_written_pyg_example_trains(tiny_dataset, tmp_path, capsys):
    main = runpy.run_path(str(EXAMPLE))["main"]
    report = main([str(tiny_dataset.path), "--workdir", str(tmp_path / "ex"), "--epochs", "3", "--fanouts", "4,3",
                   "--batch-size", "97", "--hidden", "16", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["test_acc"] == report["test_acc"]
    assert report["best_val_acc"] > 1.0 / tiny_dataset.num_classes + 0.2, "the example should beat chance clearly"
