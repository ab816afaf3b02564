"""PyTorch Geometric interop: presampled blocks as PyG bipartite message passing.

A block's edge ``e`` goes from local source ``src[e]`` (a row of ``h_src``,
``num_src`` rows) to local destination ``dst[e]`` (a row of ``h_dst``,
``num_dst`` rows). Destinations are the first ``num_dst`` sources (the
sampler's prefix invariant), so ``h_dst = h_src[:num_dst]``, and a PyG
convolution called as ``conv((h_src, h_dst), edge_index, size=(num_src,
num_dst))`` with ``edge_index = [src; dst]`` computes every destination's
output from its own row and its sampled in-neighbours: the rows it would
compute on the full graph made of the block's edges (and self-loops a
convolution adds itself land on the right node, since local destination ``i``
is local source ``i``).

PyG is imported inside the functions, never at module import, so the core
works without it. Two ways in:

* ``--model pyg:SAGEConv`` (:func:`conv_spec`, :func:`build_stack`): a stack of
  one convolution class, as deep as the samples' fanouts.
* A hand-written model: wrap a module whose ``forward(blocks, x)`` takes a list
  of :class:`PyGBlock` in :class:`PyGModel` and give it to
  :class:`diskgnn.train.Trainer` (``model=``); see ``examples/pyg_model.py``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from diskgnn.errors import ConfigError
from diskgnn.interop import ForeignConv, check_block_count, first_line, suggest

_NN_INPUT = {"GINConv": 1, "EdgeConv": 2}
"""Convolutions whose update is an MLP passed as ``nn``, and its input width in multiples of the features
(EdgeConv's MLP reads ``[x_i, x_j - x_i]``)."""

_PROBE_WIDTHS = (3, 2, 2)
"""(in, out, heads) of the probe convolutions that :func:`conv_spec` runs."""


def _import_pyg(what: str):
    """``torch_geometric.nn``, or a ConfigError saying how to install it."""
    try:
        import torch_geometric.nn as pyg_nn
    except (ImportError, OSError) as exc:
        raise ConfigError(f"{what} needs PyTorch Geometric, which cannot be imported here ({exc}); install it with "
                          f"pip install 'diskgnn[pyg]' (or pip install torch-geometric: pure Python, it works with "
                          f"the torch installed here, {torch.__version__}), or pick one of diskgnn's own models: "
                          f"sage, gat or gcn") from None
    return pyg_nn


# --- blocks ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PyGBlock:
    """One message-passing layer in PyG's bipartite form.

    ``edge_index[:, e] = (source, destination)`` in local ids: row 0 in
    ``[0, num_src)`` indexes ``h_src``, row 1 in ``[0, num_dst)`` indexes
    ``h_dst``, sorted by destination. Destination ``i`` is source ``i``, so
    ``h_dst = h_src[:num_dst]``.
    """
    edge_index: torch.Tensor
    """int64 [2, E]: source row, destination row."""
    num_src: int
    num_dst: int
    n_id: torch.Tensor | None = None
    """int64 [num_src]: global node id of every source (from a sampler minibatch), or None."""

    @property
    def size(self) -> tuple[int, int]:
        """``(num_src, num_dst)``: the ``size`` argument of PyG's ``propagate``."""
        return self.num_src, self.num_dst

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def to(self, device, non_blocking: bool = False) -> "PyGBlock":
        move = (lambda t: None if t is None else t.to(device, non_blocking=non_blocking))  # noqa: E731
        return PyGBlock(move(self.edge_index), self.num_src, self.num_dst, move(self.n_id))


def pyg_block(block) -> PyGBlock:
    """A :class:`~diskgnn.models.TorchBlock` (or a sampler ``Block``) as a :class:`PyGBlock`.

    A TorchBlock keeps its ``edge_index`` in its cache, so each layer of a batch stacks it once.
    """
    if isinstance(block, PyGBlock):
        return block
    if hasattr(block, "src"):  # TorchBlock: tensors already on the training device
        edge_index = block.cache.get("pyg_edge_index")
        if edge_index is None:
            edge_index = block.cache["pyg_edge_index"] = torch.stack([block.src, block.dst])
        return PyGBlock(edge_index, int(block.num_src), int(block.num_dst))
    indptr = np.asarray(block.indptr, dtype=np.int64)
    dst = np.repeat(np.arange(block.num_dst, dtype=np.int64), np.diff(indptr))
    src = np.asarray(block.indices, dtype=np.int64)
    return PyGBlock(torch.from_numpy(np.stack([src, dst])), int(block.num_src), int(block.num_dst))


def to_pyg_blocks(batch, device=None) -> list[PyGBlock]:
    """The blocks (outermost first) of a sampler ``MiniBatch`` or a sequence of TorchBlocks as PyGBlocks.

    From a MiniBatch each block carries the global ids of its sources in ``n_id``.
    """
    if hasattr(batch, "blocks"):
        input_nodes = torch.from_numpy(np.asarray(batch.input_nodes, dtype=np.int64))
        out = [PyGBlock(pyg_block(b).edge_index, b.num_src, b.num_dst, input_nodes[:b.num_src])
               for b in batch.blocks]
    else:
        out = [pyg_block(b) for b in batch]
    return [b.to(device) for b in out] if device is not None else out


class PyGModel(nn.Module):
    """Wrap a hand-written PyG model, ``module(blocks, x)`` over :class:`PyGBlock` s, for diskgnn's trainer.

    The trainer hands over TorchBlocks on the training device; they become
    PyGBlocks (``edge_index`` stacked once per block) before ``module`` runs.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, blocks: Sequence, x: torch.Tensor) -> torch.Tensor:
        return self.module([pyg_block(b) for b in blocks], x)


def propagate(conv: nn.Module, block: PyGBlock, h_src: torch.Tensor, *, takes_size: bool = True) -> torch.Tensor:
    """Run a bipartite PyG convolution over one block: ``conv((h_src, h_src[:num_dst]), edge_index, size)``."""
    x = (h_src, h_src[:block.num_dst])
    if takes_size:
        return conv(x, block.edge_index, size=block.size)
    return conv(x, block.edge_index)


# --- stacks of one convolution class ------------------------------------------------------------------

class PyGStack(nn.Module):
    """``num_layers`` PyG convolutions over the blocks of a batch, like :class:`diskgnn.models.GNN`.

    Between layers: ReLU (ELU for multi-head convolutions), then dropout.
    Multi-head convolutions concatenate their heads in hidden layers and
    average them in the output layer (``concat=False``).
    """

    def __init__(self, conv: ForeignConv, layers: Sequence[nn.Module], dropout: float):
        super().__init__()
        self.conv_name = conv.model_name
        self.multi_head = conv.multi_head
        self.takes_size = conv.takes_size
        self.convs = nn.ModuleList(layers)
        self.dropout = nn.Dropout(dropout)

    @property
    def num_layers(self) -> int:
        return len(self.convs)

    def forward(self, blocks: Sequence, x: torch.Tensor) -> torch.Tensor:
        check_block_count(len(self.convs), blocks)
        h = x
        last = len(self.convs) - 1
        for i, (conv, block) in enumerate(zip(self.convs, blocks)):
            h = propagate(conv, pyg_block(block), h, takes_size=self.takes_size)
            if i != last:
                h = self.dropout(F.elu(h) if self.multi_head else F.relu(h))
        return h


def _conv_class(name: str):
    pyg_nn = _import_pyg(f"--model pyg:{name}")
    from torch_geometric.nn.conv import MessagePassing
    cls = getattr(pyg_nn, name, None)
    if not (isinstance(cls, type) and issubclass(cls, MessagePassing)):
        import torch_geometric
        what = (f"torch_geometric.nn.{name} is not a message-passing convolution" if cls is not None else
                f"torch_geometric.nn has no class {name!r}")
        raise ConfigError(f"--model pyg:{name}: {what} (torch-geometric {torch_geometric.__version__})."
                          f"{suggest(name, _conv_names(pyg_nn), 'pyg')} Convolutions --model can stack: "
                          f"{_list(buildable_convs())} (names are case-sensitive)")
    return cls


def _conv_names(pyg_nn) -> list[str]:
    from torch_geometric.nn.conv import MessagePassing
    return [n for n in dir(pyg_nn) if isinstance(getattr(pyg_nn, n), type)
            and issubclass(getattr(pyg_nn, n), MessagePassing) and n != "MessagePassing"]


def _list(names: Sequence[str]) -> str:
    return ", ".join(f"pyg:{n}" for n in names)


def _static_problem(cls) -> str | None:
    """Why ``cls`` cannot be stacked on bipartite blocks, judged from its signatures; None if it may be."""
    fwd = inspect.signature(cls.forward).parameters
    init = inspect.signature(cls.__init__).parameters
    if "x" not in fwd or "edge_index" not in fwd:
        return (f"its forward takes ({', '.join(list(fwd)[1:])}), not (x, edge_index): it is not a convolution "
                f"over one edge type")
    extra = [p.name for p in list(fwd.values())[1:] if p.name not in ("x", "edge_index")
             and p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if extra:
        return (f"its forward also needs {', '.join(extra)}, which diskgnn's blocks do not carry (they hold the "
                f"sampled edges and node features only)")
    if not _takes_pair(fwd["x"]):
        return ("it does not take bipartite input x=(h_src, h_dst): it computes on one node set (PyG lists it "
                "without bipartite support)")
    if cls.__name__ not in _NN_INPUT and not ("in_channels" in init and "out_channels" in init):
        return ("its constructor has no in_channels/out_channels, so a stack of it cannot map the features to "
                "hidden units and classes")
    supplied = {"in_channels", "out_channels", "heads", "concat"} | ({"nn"} if cls.__name__ in _NN_INPUT else set())
    missing = [p.name for p in list(init.values())[1:] if p.default is inspect.Parameter.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in supplied]
    if missing:
        return f"its constructor needs {', '.join(missing)}, which --model cannot choose"
    return None


def _takes_pair(param: inspect.Parameter) -> bool:
    # the rule of PyG's own operator cheatsheet: the annotation of x admits a pair of tensors
    text = str(param.annotation)
    return any(t in text for t in ("Tuple[", "tuple[", "PairTensor"))


def buildable_convs() -> list[str]:
    """The convolutions of ``torch_geometric.nn`` that pass the signature checks of :func:`conv_spec`."""
    pyg_nn = _import_pyg("listing PyG convolutions")
    names = []
    for n in _conv_names(pyg_nn):
        try:
            ok = _static_problem(getattr(pyg_nn, n)) is None
        except (TypeError, ValueError):  # a signature inspect cannot read
            ok = False
        if ok:
            names.append(n)
    return sorted(names)


def _make_conv(cls, in_dim: int, out_dim: int, heads: int, last: bool) -> nn.Module:
    """One convolution ``in_dim -> out_dim`` (per head); ``last``: average the heads instead of concatenating."""
    params = inspect.signature(cls.__init__).parameters
    kw: dict = {}
    factor = _NN_INPUT.get(cls.__name__)
    if factor is not None:
        kw["nn"] = nn.Sequential(nn.Linear(factor * in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))
    else:
        kw.update(in_channels=in_dim, out_channels=out_dim)
    if "heads" in params:
        kw["heads"] = heads
        if "concat" in params:
            kw["concat"] = not last
    return cls(**kw)


def conv_spec(name: str) -> ForeignConv:
    """Check that ``torch_geometric.nn.<name>`` can be stacked on diskgnn's blocks; ConfigError naming why not.

    Checks the signatures (bipartite ``x``, no inputs the blocks lack, a
    constructor of ``in_channels``/``out_channels`` [+ ``heads``]), then builds
    the convolution small and runs it on a bipartite probe block.
    """
    cls = _conv_class(name)
    problem = _static_problem(cls)
    if problem:
        raise ConfigError(f"--model pyg:{name} cannot be stacked on diskgnn's bipartite blocks: {problem}. Pick a "
                          f"convolution that takes x=(h_src, h_dst), e.g. {_list(_examples())}, or diskgnn's own "
                          f"sage, gat or gcn; a model of your own can call any convolution (see "
                          f"examples/pyg_model.py)")
    params = inspect.signature(cls.__init__).parameters
    multi_head = "heads" in params
    takes_size = "size" in inspect.signature(cls.forward).parameters
    in_dim, out_dim, heads = _PROBE_WIDTHS
    probe = PyGBlock(torch.tensor([[1, 3, 0, 2, 3], [0, 0, 1, 1, 1]]), num_src=4, num_dst=3)
    widths = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        for last in (False, True):
            try:
                conv = _make_conv(cls, in_dim, out_dim, heads, last).eval()
                out = propagate(conv, probe, torch.randn(probe.num_src, in_dim), takes_size=takes_size)
            except Exception as exc:  # noqa: BLE001 - a foreign class can raise anything; say what it raised
                raise ConfigError(f"--model pyg:{name} does not run on a bipartite block (x=(h_src, h_dst) with "
                                  f"4 sources and 3 destinations): it raised {first_line(exc)}. Pick a convolution that takes bipartite input, e.g. "
                                  f"{_list(_examples())}, or diskgnn's own sage, gat or gcn") from None
            if not (isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == probe.num_dst):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ConfigError(f"--model pyg:{name} returns {shape} on a block with 3 destinations, not one row "
                                  f"per destination; pick a convolution that takes bipartite input, e.g. "
                                  f"{_list(_examples())}")
            widths.append(int(out.shape[1]))
    if widths[1] != out_dim or widths[0] not in (out_dim, out_dim * heads):
        raise ConfigError(f"--model pyg:{name} built with out_channels={out_dim}, heads={heads} returns "
                          f"{widths[0]} columns in a hidden layer and {widths[1]} in the output layer (concat=False); "
                          f"--model cannot size a stack of it: write the model by hand (examples/pyg_model.py)")
    return ForeignConv(library="pyg", name=name, multi_head=multi_head,
                       concat_heads=multi_head and widths[0] == out_dim * heads, takes_size=takes_size)


def _examples() -> list[str]:
    return ["SAGEConv", "GraphConv", "GATConv", "GATv2Conv", "GINConv", "TransformerConv"]


def build_stack(conv: ForeignConv, *, in_dim: int, num_classes: int, num_layers: int, hidden: int, heads: int,
                dropout: float) -> PyGStack:
    """A :class:`PyGStack` of ``conv``: ``in_dim`` > ``hidden`` (x heads) > ... > ``num_classes``."""
    cls = _conv_class(conv.name)
    layers, width = [], in_dim
    for i in range(num_layers):
        last = i == num_layers - 1
        out = num_classes if last else hidden
        layers.append(_make_conv(cls, width, out, heads, last))
        width = out * heads if conv.concat_heads and not last else out
    return PyGStack(conv, layers, dropout)
