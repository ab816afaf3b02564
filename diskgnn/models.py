"""GNN models in plain torch over the presampled CSR blocks.

No DGL, no torch_scatter: message passing is a gather of source rows along the
edges and an ``index_add_`` into the destination rows, which runs on CPU and
CUDA with any torch >= 2.1. A :class:`diskgnn.sampling.Block` is converted once
per batch into a :class:`TorchBlock` (edge index tensors on the training
device); every model takes ``(blocks, x)`` where ``x`` holds the input-side
rows (``blocks[0].num_src`` of them) and returns logits for the seeds
(``blocks[-1].num_dst`` rows).

Destination nodes of a block are its source nodes ``0 .. num_dst - 1`` (the
prefix invariant of the sampler), so a layer reads ``h[:num_dst]`` as the
destination's own representation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from diskgnn.errors import ConfigError
from diskgnn.ops import aggregate, edge_softmax, gat_aggregate, linear, relu_  # noqa: F401 (edge_softmax re-exported)
from diskgnn.recipe_defaults import DEFAULT_INIT, INITS  # noqa: F401 (defined without torch, for the CLI)

MODELS = ("sage", "gat", "gcn")
"""diskgnn's own architectures; ``pyg:<Conv>`` and ``dgl:<Conv>`` name stacks of another library's
convolution (:mod:`diskgnn.interop`)."""

LIBRARY_INIT = "library"
"""The init of a ``pyg:``/``dgl:`` stack: whatever its library's convolution does."""


def check_init(init: str) -> str:
    """``init`` if it names one of :data:`INITS`, else a ConfigError naming the choices."""
    if init not in INITS:
        raise ConfigError(f"--init {init!r} is not one of {', '.join(INITS)} (torch = torch's nn.Linear "
                          f"default, as PyG; xavier = Glorot with gain 1; xavier-relu = Glorot with the ReLU gain, "
                          f"as DGL)")
    return init


def _xavier_gain(init: str) -> float:
    return nn.init.calculate_gain("relu") if init == "xavier-relu" else 1.0


def _torch_bias_(bias: torch.Tensor, fan_in: int) -> None:
    bound = 1.0 / fan_in ** 0.5 if fan_in > 0 else 0.0
    nn.init.uniform_(bias, -bound, bound)


@dataclass(frozen=True, slots=True)
class TorchBlock:
    """One message-passing layer as tensors: edge ``e`` goes ``src[e] -> dst[e]``."""
    indptr: torch.Tensor
    """int64 [num_dst + 1]: CSR offsets over destination nodes."""
    src: torch.Tensor
    """int64 [nnz]: local source id of every edge, in [0, num_src)."""
    dst: torch.Tensor
    """int64 [nnz]: destination of every edge, non-decreasing, in [0, num_dst)."""
    in_degree: torch.Tensor
    """float32 [num_dst, 1]: number of in-edges of each destination."""
    num_src: int
    num_dst: int
    cache: dict = field(default_factory=dict, compare=False, repr=False)
    """Derived arrays of this block built on demand (the transpose of :mod:`diskgnn.ops`)."""

    @classmethod
    def from_csr(cls, indptr: np.ndarray, indices: np.ndarray, num_src: int, num_dst: int) -> "TorchBlock":
        """Build from CSR arrays over destination nodes (``indptr`` [num_dst+1], ``indices`` [nnz])."""
        indptr = np.asarray(indptr, dtype=np.int64)
        degree = np.diff(indptr)
        dst = np.repeat(np.arange(num_dst, dtype=np.int64), degree)
        return cls(indptr=torch.from_numpy(np.ascontiguousarray(indptr)),
                   src=torch.from_numpy(np.asarray(indices, dtype=np.int64)),
                   dst=torch.from_numpy(dst),
                   in_degree=torch.from_numpy(degree.astype(np.float32)).unsqueeze(1),
                   num_src=int(num_src), num_dst=int(num_dst))

    @classmethod
    def from_block(cls, block) -> "TorchBlock":
        """Convert a sampler :class:`~diskgnn.sampling.Block` (CPU tensors)."""
        return cls.from_csr(block.indptr, block.indices, block.num_src, block.num_dst)

    @property
    def num_edges(self) -> int:
        return int(self.src.shape[0])

    def to(self, device, non_blocking: bool = False) -> "TorchBlock":
        """A copy on ``device`` (``non_blocking`` pays off from pinned memory)."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return TorchBlock(indptr=move(self.indptr), src=move(self.src), dst=move(self.dst),
                          in_degree=move(self.in_degree), num_src=self.num_src, num_dst=self.num_dst)

    def pin_memory(self) -> "TorchBlock":
        return TorchBlock(indptr=self.indptr.pin_memory(), src=self.src.pin_memory(),
                          dst=self.dst.pin_memory(), in_degree=self.in_degree.pin_memory(),
                          num_src=self.num_src, num_dst=self.num_dst)


def to_torch_blocks(blocks: Sequence) -> list[TorchBlock]:
    """Convert the sampler's blocks of one minibatch (outermost first)."""
    return [TorchBlock.from_block(b) for b in blocks]


def mean_aggregate(block: TorchBlock, h_src: torch.Tensor) -> torch.Tensor:
    """Mean of the in-neighbours' rows for each destination (0 for a node without in-edges)."""
    return aggregate(block, h_src, "mean")


class SAGEConv(nn.Module):
    """GraphSAGE layer, mean aggregator: ``W_self h_dst + W_neigh mean(h_src) + b``.

    Like DGL's ``SAGEConv(aggregator_type='mean')``: when the layer shrinks the
    width, rows are projected before aggregation (cheaper, same result).
    """

    def __init__(self, in_dim: int, out_dim: int, init: str = DEFAULT_INIT):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.fc_self = nn.Linear(in_dim, out_dim, bias=False)
        self.fc_neigh = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self._initialise(init)

    @torch.no_grad()
    def _initialise(self, init: str) -> None:
        """Initialise as ``init`` (:data:`INITS`), after the Linears drew torch's default in the constructor;
        ``torch`` is PyG's SAGEConv (its ``lin_l`` holds the bias)."""
        if check_init(init) == "torch":
            _torch_bias_(self.bias, self.in_dim)
            return
        nn.init.xavier_uniform_(self.fc_self.weight, gain=_xavier_gain(init))
        nn.init.xavier_uniform_(self.fc_neigh.weight, gain=_xavier_gain(init))
        self.bias.zero_()

    def forward(self, block: TorchBlock, h_src: torch.Tensor) -> torch.Tensor:
        if self.in_dim > self.out_dim:
            neigh = mean_aggregate(block, linear(h_src, self.fc_neigh.weight))
            return torch.addmm(neigh + self.bias, h_src[:block.num_dst], self.fc_self.weight.t())
        # [h_dst, mean] @ [W_self, W_neigh]^T: both projections in one matmul
        both = aggregate(block, h_src, "mean", concat_self=True)
        return linear(both, torch.cat([self.fc_self.weight, self.fc_neigh.weight], 1), self.bias)


class GCNConv(nn.Module):
    """GCN layer on sampled blocks: ``W (h_dst + sum h_src) / (deg + 1) + b``.

    The self-loop is added implicitly (the destination is its own source) and
    the normalisation is by destination degree, which stays unbiased under
    neighbour sampling.
    """

    def __init__(self, in_dim: int, out_dim: int, init: str = DEFAULT_INIT):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.fc = nn.Linear(in_dim, out_dim, bias=True)
        self._initialise(init)

    @torch.no_grad()
    def _initialise(self, init: str) -> None:
        """Initialise as ``init`` (:data:`INITS`), after the Linear drew torch's default in the constructor."""
        if check_init(init) == "torch":
            return  # the Linear's own default (no second draw: gcn's weights of earlier releases)
        nn.init.xavier_uniform_(self.fc.weight, gain=_xavier_gain(init))
        self.fc.bias.zero_()

    def forward(self, block: TorchBlock, h_src: torch.Tensor) -> torch.Tensor:
        if self.in_dim > self.out_dim:
            return aggregate(block, linear(h_src, self.fc.weight), "gcn") + self.fc.bias
        return linear(aggregate(block, h_src, "gcn"), self.fc.weight, self.fc.bias)


class GATConv(nn.Module):
    """Multi-head graph attention (GAT) layer, as DGL's ``GATConv`` without residual.

    Returns ``[num_dst, heads, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int, negative_slope: float = 0.2,
                 init: str = DEFAULT_INIT):
        super().__init__()
        self.in_dim, self.out_dim, self.heads = in_dim, out_dim, heads
        self.fc = nn.Linear(in_dim, out_dim * heads, bias=False)
        self.attn_src = nn.Parameter(torch.empty(1, heads, out_dim))
        self.attn_dst = nn.Parameter(torch.empty(1, heads, out_dim))
        self.bias = nn.Parameter(torch.zeros(heads * out_dim))
        self.negative_slope = negative_slope
        self._initialise(init)

    @torch.no_grad()
    def _initialise(self, init: str) -> None:
        """Initialise as ``init`` (:data:`INITS`), after the Linear drew torch's default in the constructor:
        Xavier-normal as DGL's GATConv, or that default with the attention vectors of a Linear from
        ``out_dim`` to 1 per head."""
        if check_init(init) == "torch":
            bound = 1.0 / self.out_dim ** 0.5
            nn.init.uniform_(self.attn_src, -bound, bound)
            nn.init.uniform_(self.attn_dst, -bound, bound)
        else:
            gain = _xavier_gain(init)
            nn.init.xavier_normal_(self.fc.weight, gain=gain)
            nn.init.xavier_normal_(self.attn_src, gain=gain)
            nn.init.xavier_normal_(self.attn_dst, gain=gain)
        self.bias.zero_()

    def attention_projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[H, in_dim]`` maps of input rows straight to their source and destination attention terms.

        ``<fc(h)[head], attn[head]> = h . (fc.weight[head]^T attn[head])``: folding the attention
        vectors into the weights turns two ``[rows, H, D]`` products into thin matmuls.
        """
        w = self.fc.weight.view(self.heads, self.out_dim, self.in_dim)
        return ((w * self.attn_src.view(self.heads, self.out_dim, 1)).sum(1),
                (w * self.attn_dst.view(self.heads, self.out_dim, 1)).sum(1))

    def forward(self, block: TorchBlock, h_src: torch.Tensor) -> torch.Tensor:
        feat = linear(h_src, self.fc.weight).view(-1, self.heads, self.out_dim)
        proj_src, proj_dst = self.attention_projections()
        score_src = h_src @ proj_src.t()                               # [num_src, H]
        score_dst = h_src[:block.num_dst] @ proj_dst.t()               # [num_dst, H]
        out = gat_aggregate(block, feat, score_src, score_dst, self.negative_slope)
        return out + self.bias.view(1, self.heads, self.out_dim)


class GNN(nn.Module):
    """A stack of layers over ``len(blocks)`` blocks with ReLU (ELU for GAT) and dropout between layers."""

    def __init__(self, kind: str, layers: Sequence[nn.Module], dropout: float):
        super().__init__()
        self.kind = kind
        self.layers = nn.ModuleList(layers)
        self.dropout = nn.Dropout(dropout)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, blocks: Sequence[TorchBlock], x: torch.Tensor) -> torch.Tensor:
        if len(blocks) != len(self.layers):
            raise ConfigError(f"the model has {len(self.layers)} layers but the batch has {len(blocks)} blocks; "
                              f"build the model with num_layers equal to the number of sampling fanouts")
        h = x
        last = len(self.layers) - 1
        for i, (layer, block) in enumerate(zip(self.layers, blocks)):
            h = layer(block, h)
            if self.kind == "gat":
                h = h.mean(1) if i == last else F.elu(h.flatten(1))
            elif i != last:
                h = relu_(h)  # the layer's own output: nothing else holds it
            if i != last:
                h = self.dropout(h)
        return h


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a model name (``--model``) stands for, checked (see :func:`model_spec`)."""
    name: str
    """The name as given: ``sage``, ``gat``, ``gcn``, ``pyg:<Conv>`` or ``dgl:<Conv>``."""
    library: str | None
    """None for diskgnn's own models, else ``pyg`` or ``dgl``."""
    multi_head: bool
    """Hidden layers output ``--heads`` x ``--hidden`` columns (GAT, concatenating attention convolutions)."""
    foreign: object = None
    """The checked :class:`diskgnn.interop.ForeignConv` of a ``pyg:``/``dgl:`` name."""

    @property
    def default_hidden(self) -> int:
        """Hidden width when ``--hidden`` is not given: 32 per head for multi-head models, else 128."""
        return 32 if self.multi_head else 128


def model_spec(name: str) -> ModelSpec:
    """Check a model name; a ``pyg:``/``dgl:`` name imports that library and runs its convolution on a probe
    block (see :func:`diskgnn.interop.foreign_conv`). ConfigError for a name that cannot be built."""
    from diskgnn.interop import split_model_name
    foreign = split_model_name(name)
    if foreign is None:
        if name not in MODELS:
            raise ConfigError(f"--model {name!r} does not exist; choose one of {', '.join(MODELS)}, or a "
                              f"convolution of PyTorch Geometric or DGL as pyg:<Conv> / dgl:<Conv> (e.g. "
                              f"pyg:SAGEConv)")
        return ModelSpec(name=name, library=None, multi_head=name == "gat")
    from diskgnn.interop import foreign_conv
    conv = foreign_conv(*foreign)
    return ModelSpec(name=name, library=conv.library, multi_head=conv.concat_heads, foreign=conv)


def resolve_init(spec: ModelSpec, init: str | None) -> str:
    """The init a model named by ``spec`` gets for ``init`` (None: the default; ``library`` for pyg:/dgl:)."""
    if spec.library is not None:
        if init not in (None, LIBRARY_INIT):
            raise ConfigError(f"--init {init} applies to diskgnn's own models ({', '.join(MODELS)}); --model "
                              f"{spec.name} keeps {spec.library}'s own initialisation: leave --init out")
        return LIBRARY_INIT
    return check_init(DEFAULT_INIT if init is None else init)


def build_model(name: str, *, in_dim: int, num_classes: int, num_layers: int, hidden: int | None = None,
                heads: int = 4, dropout: float = 0.0, init: str | None = None) -> nn.Module:
    """Create ``sage``, ``gat``, ``gcn`` or a stack of ``pyg:<Conv>``/``dgl:<Conv>`` with ``num_layers`` layers.

    Every model is called as ``model(blocks, x)`` with TorchBlocks. ``hidden``
    is the width of hidden layers (per head for GAT and multi-head foreign
    convolutions; default 128, multi-head 32 per head). ``init`` is one of
    :data:`INITS` (None: :data:`DEFAULT_INIT`); a ``pyg:``/``dgl:`` stack keeps
    its library's initialisation (``init`` None or :data:`LIBRARY_INIT`).
    """
    spec = model_spec(name)
    init = resolve_init(spec, init)
    if num_layers < 1:
        raise ConfigError(f"a model needs at least one layer, got num_layers={num_layers}")
    if heads < 1:
        raise ConfigError(f"--heads must be at least 1, got {heads}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"--dropout must lie in [0, 1), got {dropout}")
    if hidden is None:
        hidden = spec.default_hidden
    if hidden < 1:
        raise ConfigError(f"--hidden must be at least 1, got {hidden}")
    if spec.library is not None:
        from diskgnn.interop import build_foreign_stack
        return build_foreign_stack(spec.foreign, in_dim=in_dim, num_classes=num_classes, num_layers=num_layers,
                                   hidden=hidden, heads=heads, dropout=dropout)
    layers: list[nn.Module] = []
    width = in_dim
    for i in range(num_layers):
        out = num_classes if i == num_layers - 1 else hidden
        if name == "sage":
            layers.append(SAGEConv(width, out, init=init))
            width = out
        elif name == "gcn":
            layers.append(GCNConv(width, out, init=init))
            width = out
        else:
            layers.append(GATConv(width, out, heads, init=init))
            width = out * heads
    return GNN(name, layers, dropout)


class MLP(nn.Module):
    """Features-only baseline: ignores the blocks and classifies each seed from its own row."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 128, num_layers: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [num_classes]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = nn.Dropout(dropout)

    def forward(self, blocks: Sequence[TorchBlock], x: torch.Tensor) -> torch.Tensor:
        h = x[:blocks[-1].num_dst] if blocks else x
        for i, lin in enumerate(self.linears):
            h = lin(h)
            if i != len(self.linears) - 1:
                h = self.dropout(F.relu(h))
        return h
