"""Fused message-passing kernels against the plain-torch reference and numpy twins: values and gradients."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from diskgnn import ops
from diskgnn.errors import ConfigError
from diskgnn.kernels import message
from diskgnn.models import TorchBlock, build_model


def block_of(indptr, indices, num_src):
    indptr = np.asarray(indptr, dtype=np.int64)
    return TorchBlock.from_csr(indptr, np.asarray(indices, dtype=np.int32), num_src, len(indptr) - 1)


def odd_blocks():
    """Tiny blocks with the shapes that break kernels: empty rows, a single destination, sources
    without out-edges, destinations with in-degree 0, a block without any edge."""
    rng = np.random.default_rng(11)
    out = {"one destination": block_of([0, 3], [4, 1, 2], 5),
           "no edges": block_of([0, 0, 0], [], 4),
           "isolated sources": block_of([0, 2, 2, 3], [5, 6, 5], 9),  # sources 0-4, 7, 8 have no out-edge
           "all rows empty but one": block_of([0, 0, 0, 4, 4], [0, 6, 2, 5], 7)}
    indptr, indices = [0], []
    for v in range(9):  # random, duplicate-free rows, some empty
        k = int(rng.integers(0, 5))
        indices += rng.choice(13, size=k, replace=False).tolist()
        indptr.append(len(indices))
    out["random"] = block_of(indptr, indices, 13)
    return out


BLOCKS = odd_blocks()


def numpy_transpose(indptr, indices, num_src):
    """By-source listing of the edges, stable in edge order."""
    dst = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    order = np.argsort(indices, kind="stable")
    t_indptr = np.concatenate([[0], np.cumsum(np.bincount(indices, minlength=num_src))])
    return t_indptr, dst[order], order


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_csr_transpose_matches_numpy(name):
    b = BLOCKS[name]
    got = ops.block_transpose(b)
    want = numpy_transpose(b.indptr.numpy(), b.src.numpy(), b.num_src)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert ops.block_transpose(b) is got, "the transpose is built once per block"


@pytest.mark.parametrize("how", ["sum", "mean", "gcn"])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_aggregate_fused_equals_reference(name, how):
    b = BLOCKS[name]
    h = torch.randn(b.num_src, 3, dtype=torch.float64)
    with ops.backend("torch"):
        want = ops.aggregate(b, h, how)
    with ops.backend("fused"):
        got = ops.aggregate(b, h, how)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if how == "mean" and b.num_dst:
        empty = b.in_degree.squeeze(1) == 0
        assert torch.all(got[empty] == 0)


@pytest.mark.parametrize("how,concat", [("sum", False), ("mean", False), ("gcn", False), ("mean", True)])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_aggregate_gradcheck(name, how, concat):
    b = BLOCKS[name]
    h = torch.randn(b.num_src, 4, dtype=torch.float64, requires_grad=True)
    with ops.backend("fused"):
        assert torch.autograd.gradcheck(lambda t: ops.aggregate(b, t, how, concat_self=concat), (h,))
        got = ops.aggregate(b, h, how, concat_self=concat)
    with ops.backend("torch"):
        want = ops.aggregate(b, h, how, concat_self=concat)
    g = torch.randn_like(want)
    grad_got, = torch.autograd.grad(got, h, g)
    grad_want, = torch.autograd.grad(want, h, g)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-12, atol=1e-12)


def gat_inputs(b, heads=3, width=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feat = torch.randn(b.num_src, heads, width, dtype=torch.float64, generator=gen, requires_grad=True)
    el = torch.randn(b.num_src, heads, dtype=torch.float64, generator=gen, requires_grad=True)
    er = torch.randn(b.num_dst, heads, dtype=torch.float64, generator=gen, requires_grad=True)
    return feat, el, er


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_gat_aggregate_fused_equals_reference_and_gradcheck(name):
    b = BLOCKS[name]
    feat, el, er = gat_inputs(b)
    with ops.backend("torch"):
        want = ops.gat_aggregate(b, feat, el, er, 0.2)
    with ops.backend("fused"):
        got = ops.gat_aggregate(b, feat, el, er, 0.2)
        assert torch.autograd.gradcheck(lambda f, l, r: ops.gat_aggregate(b, f, l, r, 0.2), (feat, el, er))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(want)
    for a, w in zip(torch.autograd.grad(got, (feat, el, er), g), torch.autograd.grad(want, (feat, el, er), g)):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-12)


def test_gat_softmax_is_stable_for_large_scores():
    b = BLOCKS["random"]
    feat, el, er = gat_inputs(b, seed=3)
    with torch.no_grad(), ops.backend("fused"):
        out = ops.gat_aggregate(b, feat, el * 1e3, er * 1e3, 0.2)
    assert torch.isfinite(out).all()


def test_linear_fused_equals_torch_with_gradients():
    pool = ops.scratch
    before = pool.min_bytes
    pool.min_bytes = 0  # take the pooled path even for tiny matrices
    try:
        x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
        w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
        bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(ops.linear, (x, w, bias))
        assert torch.autograd.gradcheck(lambda a, b: ops.linear(a, b), (x, w))
        torch.testing.assert_close(ops.linear(x, w, bias), torch.nn.functional.linear(x, w, bias))
    finally:
        pool.min_bytes = before


def test_scratch_pool_never_hands_out_a_buffer_in_use():
    pool = ops.ScratchPool(max_spare_bytes=1 << 20, min_bytes=0)
    a = pool.take((10, 4))
    a.fill_(1.0)
    b = pool.take((10, 4))  # a is alive: must be another buffer
    b.fill_(2.0)
    assert torch.all(a == 1.0) and pool.allocated == 2
    view = a[2:5]  # a view keeps the memory in use
    del a
    gc.collect()
    c = pool.take((10, 4))
    c.fill_(3.0)
    assert torch.all(view == 1.0)
    del view, b, c
    gc.collect()
    assert pool.spare_bytes > 0
    d = pool.take((9, 4))
    assert pool.reused >= 1 and d.shape == (9, 4)
    big = ops.ScratchPool(max_spare_bytes=100, min_bytes=0)
    t = big.take((50,))
    del t
    gc.collect()
    assert big.spare_bytes == 0, "spares beyond max_spare_bytes are freed"


def test_scratch_pool_tensor_survives_autograd():
    """A pooled output saved for backward stays untouched until backward has run."""
    pool_before = ops.scratch.min_bytes
    ops.scratch.min_bytes = 0
    try:
        b = BLOCKS["random"]
        h = torch.randn(b.num_src, 4, dtype=torch.float64, requires_grad=True)
        w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
        with ops.backend("fused"):
            out = ops.aggregate(b, ops.linear(h, w), "mean")
            for _ in range(5):  # other allocations meanwhile
                ops.scratch.take((b.num_src, 4), torch.float64).fill_(float("nan"))
            out.sum().backward()
        with ops.backend("torch"):
            h2 = h.detach().clone().requires_grad_(True)
            ops.aggregate(b, h2 @ w.detach().t(), "mean").sum().backward()
        torch.testing.assert_close(h.grad, h2.grad)
    finally:
        ops.scratch.min_bytes = pool_before


@pytest.mark.parametrize("kind", ["sage", "gcn", "gat"])
@pytest.mark.parametrize("in_dim", [6, 3])  # project before (6 > 4) and after (3 < 4) aggregating
def test_models_fused_equal_reference(kind, in_dim):
    blocks = [BLOCKS["random"], block_of([0, 2, 3, 3], [0, 4, 8], 9)]
    x = torch.randn(13, in_dim, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    grads = {}
    outs = {}
    for be in ("torch", "fused"):
        torch.manual_seed(4)
        model = build_model(kind, in_dim=in_dim, num_classes=3, num_layers=2, hidden=4, heads=2).double()
        with ops.backend(be):
            out = model(blocks, x)
            torch.nn.functional.cross_entropy(out, y).backward()
        outs[be] = out.detach()
        grads[be] = {n: p.grad for n, p in model.named_parameters()}
    torch.testing.assert_close(outs["fused"], outs["torch"], rtol=1e-10, atol=1e-12)
    for n, g in grads["torch"].items():
        torch.testing.assert_close(grads["fused"][n], g, rtol=1e-9, atol=1e-12, msg=f"gradient of {n}")


def test_float32_path_is_fused_and_close_to_float64():
    b = BLOCKS["random"]
    h = torch.randn(b.num_src, 5, dtype=torch.float64)
    with ops.backend("fused"):
        got = ops.aggregate(b, h.float(), "mean")
    with ops.backend("torch"):
        want = ops.aggregate(b, h, "mean")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_backend_errors():
    with pytest.raises(ConfigError, match="unknown message-passing backend"):
        ops.set_backend("cuda-magic")
    b = BLOCKS["random"]
    with ops.backend("fused"), pytest.raises(ConfigError, match="CPU float32/float64"):
        ops.aggregate(b, torch.zeros(b.num_src, 2, dtype=torch.float16))
    with pytest.raises(ConfigError, match="unknown aggregation"):
        ops.aggregate(b, torch.zeros(b.num_src, 2), "max")
    with pytest.raises(ConfigError, match="concat_self"):
        ops.aggregate(b, torch.zeros(b.num_src, 2), "gcn", concat_self=True)


def test_aggregate_kernel_matches_numpy_twin():
    """The raw kernel in float32 (the training dtype) against a loop in numpy."""
    rng = np.random.default_rng(5)
    b = BLOCKS["random"]
    indptr, indices = b.indptr.numpy(), b.src.numpy()
    h = rng.standard_normal((b.num_src, 6)).astype(np.float32)
    scale = rng.random(b.num_dst).astype(np.float32)
    for mode in (message.SELF_NONE, message.SELF_ADD, message.SELF_CONCAT):
        out = np.empty((b.num_dst, 12 if mode == message.SELF_CONCAT else 6), dtype=np.float32)
        message.aggregate_rows(indptr, indices, h, scale, mode, out)
        for v in range(b.num_dst):
            total = h[indices[indptr[v]:indptr[v + 1]]].sum(0, dtype=np.float64)
            if mode == message.SELF_ADD:
                total = total + h[v]
            want = total * scale[v]
            if mode == message.SELF_CONCAT:
                want = np.concatenate([h[v], want])
            np.testing.assert_allclose(out[v], want, rtol=1e-5, atol=1e-6)


def test_relu_in_place_with_pooled_gradient():
    pool_before = ops.scratch.min_bytes
    ops.scratch.min_bytes = 0
    try:
        x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: ops.relu_(t * 1.0), (x,))
        h = x * 2.0
        out = ops.relu_(h)
        assert out.data_ptr() == h.data_ptr(), "in place"
        torch.testing.assert_close(out, torch.relu(x * 2.0))
        g = torch.randn(9, 4, dtype=torch.float64)
        out.backward(g)
        torch.testing.assert_close(x.grad, 2.0 * g * (x > 0))
    finally:
        ops.scratch.min_bytes = pool_before
