"""Message-passing operators: fused CSR kernels on CPU, plain torch elsewhere.

The models call :func:`aggregate` (sum/mean/GCN aggregation) and
:func:`gat_aggregate` (GAT's edge softmax and weighted sum). On CPU tensors of
float32 or float64 they run the numba kernels of :mod:`diskgnn.kernels.message`
inside ``torch.autograd.Function``\\ s: forward over the block's destination rows,
backward over its source rows through the block's transpose (built once per
block, only when a gradient with respect to the source rows is needed). No
per-edge feature tensor is ever made, forward or backward. On CUDA (and for
other dtypes) the same results come from the reference implementation in
plain torch: a gather of source rows along the edges and an ``index_add_``.

:func:`set_backend` forces one path (``"torch"`` is the reference the tests
compare the kernels with).
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from diskgnn.errors import ConfigError

BACKENDS = ("auto", "fused", "torch")
_backend = "auto"


def set_backend(name: str) -> None:
    """Choose the message-passing path: ``auto`` (fused on CPU), ``fused`` or ``torch``."""
    global _backend
    if name not in BACKENDS:
        raise ConfigError(f"unknown message-passing backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _backend = name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Use backend ``name`` inside a ``with`` block."""
    before = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(before)


def _fused(*tensors: torch.Tensor) -> bool:
    if _backend == "torch":
        return False
    ok = all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)
    if _backend == "fused" and not ok:
        raise ConfigError("the fused message-passing kernels run on CPU float32/float64 tensors only")
    return ok


class ScratchPool:
    """Large temporaries of the CPU ops (layer outputs, gradients), reused from batch to batch.

    A new tensor of tens of MB is fresh memory that the first write faults in page
    by page (measured here: a [81k, 128] matmul takes 30 ms into a new tensor, 18 ms
    into a reused one), and glibc hands every allocation above 32 MiB back to the
    kernel when it is freed. A tensor from :meth:`take` is backed by a buffer that
    comes back here when the last tensor using its memory is gone (autograd's saved
    tensors included), so it can never be handed out twice while in use. At most
    ``max_spare_bytes`` of unused buffers are kept.
    """

    def __init__(self, max_spare_bytes: int = 256 << 20, min_bytes: int = 4 << 20):
        self.max_spare_bytes = int(max_spare_bytes)
        self.min_bytes = int(min_bytes)
        self._spares: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.reused = 0
        self.allocated = 0

    @property
    def spare_bytes(self) -> int:
        with self._lock:
            return sum(b.nbytes for b in self._spares)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """An uninitialised CPU tensor of ``shape`` and ``dtype``: every element must be written."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        nbytes = itemsize * int(np.prod(shape, dtype=np.int64))
        if nbytes < self.min_bytes:
            return torch.empty(shape, dtype=dtype)
        base = None
        with self._lock:
            fits = [k for k, b in enumerate(self._spares) if b.nbytes >= nbytes]
            if fits:
                base = self._spares.pop(min(fits, key=lambda k: self._spares[k].nbytes))
                self.reused += 1
        if base is None:
            base = np.empty(nbytes + nbytes // 4, dtype=np.uint8)  # headroom: the next batch is a bit larger
            self.allocated += 1
        view = base[:nbytes].view(torch.empty((), dtype=dtype).numpy().dtype).reshape(shape)
        weakref.finalize(view, self._give, base).atexit = False
        return torch.from_numpy(view)

    def _give(self, base: np.ndarray) -> None:
        with self._lock:
            if sum(b.nbytes for b in self._spares) + base.nbytes <= self.max_spare_bytes:
                self._spares.append(base)

    def clear(self) -> None:
        with self._lock:
            self._spares.clear()


scratch = ScratchPool()
"""The process's pool of reusable temporaries (see :class:`ScratchPool`)."""


def _kernels():
    from diskgnn.kernels import message
    return message


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def block_transpose(block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The block's edges listed by source: ``(t_indptr, t_dst, t_edge)``, built once and cached on the block."""
    cached = block.cache.get("transpose")
    if cached is None:
        nnz = block.num_edges
        cached = (np.empty(block.num_src + 1, dtype=np.int64), np.empty(nnz, dtype=np.int32),
                  np.empty(nnz, dtype=np.int64))
        _kernels().csr_transpose(_np(block.indptr), _np(block.src), block.num_src, *cached)
        block.cache["transpose"] = cached
    return cached


# --- linear layers ---------------------------------------------------------------------------------

class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = x.detach()
        out = scratch.take((x.shape[0], weight.shape[0]), x.dtype)
        torch.mm(x, weight.detach().t(), out=out)
        if bias is not None:
            out += bias.detach()
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = scratch.take(tuple(x.shape), x.dtype)
            torch.mm(grad_out, weight, out=grad_x)
        if ctx.needs_input_grad[1]:
            grad_w = grad_out.t() @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` (as ``F.linear``) for 2-D ``x``; on CPU the output and the input's
    gradient come from :data:`scratch`."""
    if (x.dim() != 2 or _backend == "torch" or not _fused(x, weight)
            or x.shape[0] * weight.shape[0] * x.element_size() < scratch.min_bytes):
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight, bias)


class _ReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(x)
        x.clamp_(min=0)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (out,) = ctx.saved_tensors
        grad = scratch.take(tuple(out.shape), grad_out.dtype)
        _kernels().relu_backward(_np(out.reshape(-1)), _np(grad_out.contiguous().reshape(-1)),
                                 grad.reshape(-1).numpy())
        return grad


def relu_(x: torch.Tensor) -> torch.Tensor:
    """ReLU in place, its gradient in a reused buffer (a layer's output is tens of MB: fresh memory for the
    activation and its gradient costs more than the ReLU itself). ``x`` must not be needed unchanged."""
    if not _fused(x) or x.numel() * x.element_size() < scratch.min_bytes:
        return F.relu(x)
    return _ReLU.apply(x)


# --- sum / mean / GCN aggregation ----------------------------------------------------------------

class _Aggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, block, row_scale: torch.Tensor, self_mode: int) -> torch.Tensor:
        h = h.detach().contiguous()
        width = h.shape[1] * (2 if self_mode == _SELF_CONCAT else 1)
        out = scratch.take((block.num_dst, width), h.dtype)
        _kernels().aggregate_rows(_np(block.indptr), _np(block.src), h.numpy(), _np(row_scale), self_mode,
                                  out.numpy())
        ctx.block, ctx.self_mode, ctx.num_src, ctx.width = block, self_mode, h.shape[0], h.shape[1]
        ctx.save_for_backward(row_scale)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (row_scale,) = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        t_indptr, t_dst, _ = block_transpose(ctx.block)
        grad_h = scratch.take((ctx.num_src, ctx.width), grad_out.dtype)
        _kernels().aggregate_rows_backward(t_indptr, t_dst, grad_out.numpy(), _np(row_scale), ctx.self_mode,
                                           grad_h.numpy())
        return grad_h, None, None, None


_SELF_NONE, _SELF_ADD, _SELF_CONCAT = 0, 1, 2  # kernels.message.SELF_* (not imported: numba loads lazily)


def _row_scale(block, how: str, dtype: torch.dtype) -> torch.Tensor:
    degree = block.in_degree.squeeze(1)
    if how == "sum":
        return torch.ones(block.num_dst, dtype=dtype, device=degree.device)
    if how == "mean":
        return 1.0 / degree.clamp(min=1.0).to(dtype)
    return 1.0 / (degree + 1.0).to(dtype)  # gcn


def aggregate(block, h_src: torch.Tensor, how: str = "mean", *, concat_self: bool = False) -> torch.Tensor:
    """Aggregate source rows ``h_src`` [num_src, F] into the destinations [num_dst, F].

    ``how``: ``sum``; ``mean`` of the in-neighbours (0 without in-edges); ``gcn``:
    ``(h_dst + sum of in-neighbours) / (degree + 1)``, the destination counted as
    its own neighbour (it is source row ``v``, the sampler's prefix invariant).
    ``concat_self`` returns ``[h_dst, aggregate]`` ([num_dst, 2F]; not with ``gcn``),
    so that GraphSAGE's two projections run as one matmul.
    """
    if how not in ("sum", "mean", "gcn"):
        raise ConfigError(f"unknown aggregation {how!r}; choose sum, mean or gcn")
    if h_src.dim() != 2:
        raise ConfigError(f"aggregate takes [num_src, F] rows, got shape {tuple(h_src.shape)}")
    if concat_self and how == "gcn":
        raise ConfigError("concat_self does not apply to gcn aggregation (the own row is already in the sum)")
    scale = _row_scale(block, how, h_src.dtype)
    if _fused(h_src):
        mode = _SELF_CONCAT if concat_self else _SELF_ADD if how == "gcn" else _SELF_NONE
        return _Aggregate.apply(h_src, block, scale, mode)
    total = h_src.new_zeros((block.num_dst, h_src.shape[1])).index_add_(0, block.dst,
                                                                        h_src.index_select(0, block.src))
    if how == "gcn":
        total = total + h_src[:block.num_dst]
    total = total * scale.unsqueeze(1)
    return torch.cat([h_src[:block.num_dst], total], 1) if concat_self else total


# --- GAT -----------------------------------------------------------------------------------------

class _GATAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feat: torch.Tensor, el: torch.Tensor, er: torch.Tensor, block, slope: float) -> torch.Tensor:
        feat, el, er = (t.detach().contiguous() for t in (feat, el, er))
        num_dst, heads, width = block.num_dst, feat.shape[1], feat.shape[2]
        alpha = torch.empty((block.num_edges, heads), dtype=feat.dtype)
        out = scratch.take((num_dst, heads, width), feat.dtype)
        _kernels().gat_forward(_np(block.indptr), _np(block.src), feat.numpy(), el.numpy(), er.numpy(), slope,
                               alpha.numpy(), out.numpy())
        ctx.block, ctx.slope = block, slope
        ctx.save_for_backward(feat, el, er, alpha)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        feat, el, er, alpha = ctx.saved_tensors
        block = ctx.block
        k = _kernels()
        grad_out = grad_out.contiguous()
        grad_score = torch.empty_like(alpha)
        grad_er = torch.empty_like(er)
        k.gat_backward_dst(_np(block.indptr), _np(block.src), feat.numpy(), el.numpy(), er.numpy(), ctx.slope,
                           alpha.numpy(), grad_out.numpy(), grad_score.numpy(), grad_er.numpy())
        grad_feat = grad_el = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            t_indptr, t_dst, t_edge = block_transpose(block)
            grad_feat = scratch.take(tuple(feat.shape), feat.dtype)
            grad_el = torch.empty_like(el)
            k.gat_backward_src(t_indptr, t_dst, t_edge, alpha.numpy(), grad_score.numpy(), grad_out.numpy(),
                               grad_feat.numpy(), grad_el.numpy())
        return grad_feat, grad_el, grad_er if ctx.needs_input_grad[2] else None, None, None


def edge_softmax(block, scores: torch.Tensor) -> torch.Tensor:
    """Softmax of per-edge ``scores`` [nnz, H] over the in-edges of each destination (plain torch)."""
    index = block.dst.unsqueeze(1).expand_as(scores)
    with torch.no_grad():  # the shift cancels out of the softmax, so it needs no gradient
        peak = scores.new_full((block.num_dst, scores.shape[1]), float("-inf"))
        peak = peak.scatter_reduce(0, index, scores, reduce="amax", include_self=True)
    weights = torch.exp(scores - peak.index_select(0, block.dst))
    denom = weights.new_zeros((block.num_dst, scores.shape[1])).index_add_(0, block.dst, weights)
    return weights / denom.index_select(0, block.dst)


def gat_aggregate(block, feat: torch.Tensor, el: torch.Tensor, er: torch.Tensor,
                  negative_slope: float = 0.2) -> torch.Tensor:
    """GAT's attention-weighted sum: ``out[v, h] = sum_e softmax_v(leaky_relu(el[u, h] + er[v, h]))[e] * feat[u, h]``.

    feat: [num_src, H, D] projected source rows; el: [num_src, H]; er: [num_dst, H].
    Returns [num_dst, H, D] (zero rows for destinations without in-edges).
    """
    if feat.dim() != 3 or el.shape != feat.shape[:2] or er.shape != (block.num_dst, feat.shape[1]):
        raise ConfigError(f"gat_aggregate: feat [num_src, H, D], el [num_src, H] and er [num_dst, H] expected, "
                          f"got {tuple(feat.shape)}, {tuple(el.shape)}, {tuple(er.shape)}")
    if _fused(feat, el, er):
        return _GATAggregate.apply(feat, el, er, block, float(negative_slope))
    scores = F.leaky_relu(el.index_select(0, block.src) + er.index_select(0, block.dst), negative_slope)
    alpha = edge_softmax(block, scores)
    messages = feat.index_select(0, block.src) * alpha.unsqueeze(-1)
    return feat.new_zeros((block.num_dst, *feat.shape[1:])).index_add_(0, block.dst, messages)
