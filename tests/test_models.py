"""Models over CSR blocks, compared with plain-numpy message passing and with DGL's layers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import requires_dgl
from diskgnn.errors import ConfigError
from diskgnn.models import (GATConv, GCNConv, MLP, SAGEConv, TorchBlock, build_model, edge_softmax,
                            mean_aggregate)


def random_csr(rng, num_dst, num_src, max_degree=5, isolated=(1,)):
    """CSR over destinations; destinations listed in ``isolated`` get no in-edges."""
    indptr = [0]
    indices = []
    for v in range(num_dst):
        k = 0 if v in isolated else int(rng.integers(1, max_degree + 1))
        indices.extend(rng.choice(num_src, size=k, replace=False).tolist())
        indptr.append(len(indices))
    return np.array(indptr, dtype=np.int64), np.array(indices, dtype=np.int32)


def random_blocks(seed=0, sizes=(23, 11, 5)):
    """Nested blocks: sizes[i] sources -> sizes[i+1] destinations, outermost first."""
    rng = np.random.default_rng(seed)
    blocks = []
    for num_src, num_dst in zip(sizes[:-1], sizes[1:]):
        indptr, indices = random_csr(rng, num_dst, num_src)
        blocks.append(TorchBlock.from_csr(indptr, indices, num_src, num_dst))
    return blocks


def numpy_mean(indptr, indices, h):
    out = np.zeros((len(indptr) - 1, h.shape[1]), dtype=np.float64)
    for v in range(len(indptr) - 1):
        nb = indices[indptr[v]:indptr[v + 1]]
        if nb.size:
            out[v] = h[nb].mean(0)
    return out


def test_torch_block_from_csr():
    indptr = np.array([0, 2, 2, 5])
    indices = np.array([4, 0, 1, 2, 3], dtype=np.int32)
    b = TorchBlock.from_csr(indptr, indices, num_src=6, num_dst=3)
    assert b.dst.tolist() == [0, 0, 2, 2, 2]
    assert b.src.dtype == torch.int64 and b.src.tolist() == [4, 0, 1, 2, 3]
    assert b.in_degree.squeeze(1).tolist() == [2.0, 0.0, 3.0]
    assert b.num_edges == 5


def test_mean_aggregate_matches_numpy():
    rng = np.random.default_rng(1)
    indptr, indices = random_csr(rng, 9, 17)
    b = TorchBlock.from_csr(indptr, indices, 17, 9)
    h = rng.standard_normal((17, 3))
    got = mean_aggregate(b, torch.from_numpy(h)).numpy()
    np.testing.assert_allclose(got, numpy_mean(indptr, indices, h), rtol=1e-12)
    assert np.all(got[1] == 0)  # isolated destination


def test_edge_softmax_sums_to_one_per_destination():
    b = random_blocks()[0]
    scores = torch.randn(b.num_edges, 3, dtype=torch.float64) * 30  # large: checks the max shift
    alpha = edge_softmax(b, scores)
    sums = torch.zeros(b.num_dst, 3, dtype=torch.float64).index_add_(0, b.dst, alpha)
    has_edges = b.in_degree.squeeze(1) > 0
    assert torch.allclose(sums[has_edges], torch.ones_like(sums[has_edges]))
    assert torch.isfinite(alpha).all()
    # reference on one destination
    v = int(torch.nonzero(has_edges)[0])
    lo, hi = int(b.indptr[v]), int(b.indptr[v + 1])
    assert torch.allclose(alpha[lo:hi], torch.softmax(scores[lo:hi], dim=0))


@pytest.mark.parametrize("in_dim,out_dim", [(6, 4), (3, 8)])  # both projection orders
def test_sage_layer_matches_numpy(in_dim, out_dim):
    rng = np.random.default_rng(2)
    indptr, indices = random_csr(rng, 7, 13)
    b = TorchBlock.from_csr(indptr, indices, 13, 7)
    layer = SAGEConv(in_dim, out_dim).double()
    with torch.no_grad():
        layer.bias.uniform_()
    h = rng.standard_normal((13, in_dim))
    got = layer(b, torch.from_numpy(h)).detach().numpy()
    ws, wn, bias = (p.detach().numpy() for p in (layer.fc_self.weight, layer.fc_neigh.weight, layer.bias))
    want = h[:7] @ ws.T + numpy_mean(indptr, indices, h) @ wn.T + bias
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("in_dim,out_dim", [(6, 4), (3, 8)])
def test_gcn_layer_matches_numpy(in_dim, out_dim):
    rng = np.random.default_rng(3)
    indptr, indices = random_csr(rng, 7, 13)
    b = TorchBlock.from_csr(indptr, indices, 13, 7)
    layer = GCNConv(in_dim, out_dim).double()
    h = rng.standard_normal((13, in_dim))
    got = layer(b, torch.from_numpy(h)).detach().numpy()
    deg = np.diff(indptr)[:, None]
    agg = (h[:7] + numpy_mean(indptr, indices, h) * deg) / (deg + 1)
    want = agg @ layer.fc.weight.detach().numpy().T + layer.fc.bias.detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_gat_layer_matches_numpy():
    rng = np.random.default_rng(4)
    indptr, indices = random_csr(rng, 6, 11)
    b = TorchBlock.from_csr(indptr, indices, 11, 6)
    heads, d = 3, 2
    layer = GATConv(5, d, heads).double()
    h = rng.standard_normal((11, 5))
    got = layer(b, torch.from_numpy(h)).detach().numpy()
    feat = (h @ layer.fc.weight.detach().numpy().T).reshape(11, heads, d)
    a_src = layer.attn_src.detach().numpy()[0]
    a_dst = layer.attn_dst.detach().numpy()[0]
    bias = layer.bias.detach().numpy().reshape(heads, d)
    for v in range(6):
        nb = indices[indptr[v]:indptr[v + 1]]
        want = bias.copy()
        if nb.size:
            e = (feat[nb] * a_src).sum(-1) + (feat[v] * a_dst).sum(-1)
            e = np.where(e > 0, e, 0.2 * e)
            a = np.exp(e - e.max(0))
            a /= a.sum(0)
            want += (a[:, :, None] * feat[nb]).sum(0)
        np.testing.assert_allclose(got[v], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["sage", "gat", "gcn"])
def test_models_train_step(name):
    torch.manual_seed(0)
    blocks = random_blocks(seed=5)
    x = torch.randn(blocks[0].num_src, 7)
    y = torch.tensor([0, 1, 2, 1, 0])
    model = build_model(name, in_dim=7, num_classes=3, num_layers=2, hidden=6, heads=2, dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(blocks, x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model(blocks, x).shape == (5, 3)
    assert losses[-1] < losses[0] * 0.5, f"{name} did not fit 5 labels: {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert all(p.grad is not None for p in model.parameters())


def test_default_hidden_widths():
    sage = build_model("sage", in_dim=5, num_classes=3, num_layers=2)
    assert sage.layers[0].out_dim == 128
    gat = build_model("gat", in_dim=5, num_classes=3, num_layers=2)
    assert gat.layers[0].out_dim == 32 and gat.layers[0].heads == 4
    assert gat.layers[1].in_dim == 128


def test_mlp_ignores_graph():
    blocks = random_blocks(seed=6)
    x = torch.randn(blocks[0].num_src, 4)
    mlp = MLP(4, 3, hidden=8)
    out = mlp(blocks, x)
    x2 = x.clone()
    x2[5:] = 0  # rows beyond the seeds must not matter
    assert out.shape == (5, 3) and torch.equal(out, mlp(blocks, x2))


@pytest.mark.parametrize("kwargs", [dict(name="gin"), dict(name="sage", num_layers=0),
                                    dict(name="gat", heads=0), dict(name="sage", dropout=1.0),
                                    dict(name="sage", hidden=0)])
def test_bad_model_arguments(kwargs):
    args = dict(in_dim=3, num_classes=2, num_layers=2)
    args.update(kwargs)
    name = args.pop("name")
    with pytest.raises(ConfigError):
        build_model(name, **args)


def test_blocks_count_must_match_layers():
    model = build_model("sage", in_dim=4, num_classes=2, num_layers=3, hidden=5)
    blocks = random_blocks()
    with pytest.raises(ConfigError, match="3 layers but the batch has 2 blocks"):
        model(blocks, torch.randn(blocks[0].num_src, 4))


# --- DGL reference -------------------------------------------------------------------------------

@requires_dgl
@pytest.mark.parametrize("in_dim,out_dim", [(6, 4), (3, 8)])
def test_sage_layer_equals_dgl_sageconv(in_dim, out_dim):
    from dgl.nn import SAGEConv as DGLSAGEConv
    from diskgnn.interop.dgl import to_dgl_blocks
    torch.manual_seed(1)
    block = random_blocks(seed=7, sizes=(19, 8))[0]
    ours = SAGEConv(in_dim, out_dim)
    theirs = DGLSAGEConv(in_dim, out_dim, aggregator_type="mean")
    with torch.no_grad():
        theirs.fc_self.weight.copy_(ours.fc_self.weight)
        theirs.fc_neigh.weight.copy_(ours.fc_neigh.weight)
        ours.bias.uniform_()
        theirs.fc_self.bias.copy_(ours.bias)  # DGL 2.1 keeps the mean aggregator's bias in fc_self
    x = torch.randn(19, in_dim)
    (g,) = to_dgl_blocks([block])
    assert g.num_src_nodes() == 19 and g.num_dst_nodes() == 8 and g.num_edges() == block.num_edges
    torch.testing.assert_close(ours(block, x), theirs(g, (x, x[:8])), rtol=1e-5, atol=1e-6)


@requires_dgl
def test_gat_layer_equals_dgl_gatconv():
    from dgl.nn import GATConv as DGLGATConv
    from diskgnn.interop.dgl import to_dgl_blocks
    torch.manual_seed(2)
    block = random_blocks(seed=8, sizes=(17, 9))[0]
    ours = GATConv(5, 3, heads=2)
    theirs = DGLGATConv(5, 3, num_heads=2, allow_zero_in_degree=True)
    with torch.no_grad():
        theirs.fc.weight.copy_(ours.fc.weight)
        theirs.attn_l.copy_(ours.attn_src)
        theirs.attn_r.copy_(ours.attn_dst)
        ours.bias.uniform_()
        theirs.bias.copy_(ours.bias)
    x = torch.randn(17, 5)
    (g,) = to_dgl_blocks([block])
    torch.testing.assert_close(ours(block, x), theirs(g, (x, x[:9])), rtol=1e-5, atol=1e-6)


@requires_dgl
def test_dgl_model_adapter_trains():
    import dgl.nn
    from diskgnn.interop.dgl import DGLModel

    class TwoLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = dgl.nn.SAGEConv(7, 8, "mean")
            self.l2 = dgl.nn.SAGEConv(8, 3, "mean")

        def forward(self, blocks, x):
            h = torch.relu(self.l1(blocks[0], x))
            return self.l2(blocks[1], h)

    torch.manual_seed(0)
    blocks = random_blocks(seed=9)
    model = DGLModel(TwoLayer())
    out = model(blocks, torch.randn(blocks[0].num_src, 7))
    assert out.shape == (5, 3)
    out.sum().backward()
    assert model.module.l1.fc_neigh.weight.grad is not None


# --- initialisation (--init) ---------------------------------------------------------------------

def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["sage", "gcn", "gat"])
def test_inits_draw_from_their_distributions(name):
    import math
    for init in ("torch", "xavier", "xavier-relu"):
        torch.manual_seed(3)
        model = build_model(name, in_dim=97, num_classes=5, num_layers=2, hidden=64, heads=2, init=init)
        layer = model.layers[0]
        w = layer.fc.weight if name != "sage" else layer.fc_neigh.weight
        fan_out, fan_in = w.shape
        gain = math.sqrt(2.0) if init == "xavier-relu" else 1.0
        if init == "torch":
            bound = 1 / math.sqrt(fan_in)
            assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
        elif name == "gat":  # Xavier-normal, as DGL's GATConv
            assert w.std().item() == pytest.approx(gain * math.sqrt(2 / (fan_in + fan_out)), rel=0.1)
        else:
            bound = gain * math.sqrt(6 / (fan_in + fan_out))
            assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        bias = layer.fc.bias if name == "gcn" else layer.bias
        if init == "torch" and name != "gat":  # PyG's lin_l / nn.Linear hold a bias drawn like the weights
            assert 0 < bias.abs().max() <= 1 / math.sqrt(97)
        else:
            assert torch.count_nonzero(bias) == 0


def test_xavier_relu_is_the_initialisation_of_earlier_releases():
    """sage and gat with --init xavier-relu, gcn with --init torch: bit for bit the weights diskgnn drew before
    --init existed (the accuracy figures measured then stay reproducible)."""
    gain = torch.nn.init.calculate_gain("relu")

    def old_sage(i, o):
        a, b = torch.nn.Linear(i, o, bias=False), torch.nn.Linear(i, o, bias=False)
        torch.nn.init.xavier_uniform_(a.weight, gain=gain)
        torch.nn.init.xavier_uniform_(b.weight, gain=gain)
        return [torch.zeros(o), a.weight, b.weight]  # named_parameters: a module's own first, then its children's

    def old_gcn(i, o):
        lin = torch.nn.Linear(i, o)
        return [lin.weight, lin.bias]

    def old_gat(i, o, h):
        fc = torch.nn.Linear(i, o * h, bias=False)
        a, b = torch.empty(1, h, o), torch.empty(1, h, o)
        for t in (fc.weight, a, b):
            torch.nn.init.xavier_normal_(t, gain=gain)
        return [a, b, torch.zeros(h * o), fc.weight]

    for name, init, old in (("sage", "xavier-relu", lambda: old_sage(7, 6) + old_sage(6, 3)),
                            ("gcn", "torch", lambda: old_gcn(7, 6) + old_gcn(6, 3)),
                            ("gat", "xavier-relu", lambda: old_gat(7, 6, 2) + old_gat(12, 3, 2))):
        torch.manual_seed(11)
        want = [t.detach() for t in old()]
        torch.manual_seed(11)
        got = list(_weights(build_model(name, in_dim=7, num_classes=3, num_layers=2, hidden=6, heads=2,
                                        init=init)).values())
        assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want)), name


def test_init_choices_are_checked():
    with pytest.raises(ConfigError, match="--init 'kaiming' is not one of torch, xavier, xavier-relu"):
        build_model("sage", in_dim=3, num_classes=2, num_layers=2, init="kaiming")
    from diskgnn.models import DEFAULT_INIT
    torch.manual_seed(0)
    a = _weights(build_model("gcn", in_dim=3, num_classes=2, num_layers=2))
    torch.manual_seed(0)
    b = _weights(build_model("gcn", in_dim=3, num_classes=2, num_layers=2, init=DEFAULT_INIT))
    assert all(torch.equal(a[k], b[k]) for k in a)
