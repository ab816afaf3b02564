"""DGL interop: presampled batches as DGL message flow graphs (reference stack only).

DGL is imported inside the functions, never at module import, so the core
works without it. Blocks are built from the CSR over destination nodes, which
is DGL's ``csc`` layout (column pointer over destinations, row = source).

``--model dgl:SAGEConv`` (:func:`conv_spec`, :func:`build_stack`) stacks one
convolution class of ``dgl.nn`` as deep as the samples' fanouts; each layer
gets ``feat=(h_src, h_src[:num_dst])`` (destinations are the first sources).
"""
from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from diskgnn.errors import ConfigError
from diskgnn.interop import ForeignConv, check_block_count, first_line, suggest

_IN = ("in_feats", "in_feat")
_OUT = ("out_feats", "out_feat")
_EXAMPLES = ("SAGEConv", "GraphConv", "GATConv", "GATv2Conv", "GINConv", "EdgeConv")


def _import_dgl(what: str | None = None):
    try:
        import dgl
    except ImportError as exc:
        if what is not None:
            raise ConfigError(f"{what} needs DGL, which cannot be imported here ({exc}); DGL's newest Linux wheel "
                              f"(2.1.0) loads only with torch 2.0-2.2.1: install the reference stack with pip "
                              f"install 'diskgnn[dgl]' (torch 2.2.1, dgl 2.1.0, numpy<2), or use pyg:<Conv> "
                              f"(PyTorch Geometric works with current torch) or diskgnn's own sage, gat or "
                              f"gcn") from None
        raise ConfigError(f"DGL is not importable ({exc}); the DGL adapter needs the reference stack "
                          f"(pip install 'diskgnn[dgl]': torch 2.2.1, dgl 2.1.0, numpy<2)") from None
    return dgl


def _create_block(dgl, indptr, indices, num_src: int, num_dst: int, device):
    indptr = torch.as_tensor(np.asarray(indptr, dtype=np.int64)) if not torch.is_tensor(indptr) else indptr
    indices = torch.as_tensor(np.asarray(indices, dtype=np.int64)) if not torch.is_tensor(indices) else indices
    # explicit edge ids: DGL's CPU SpMM (libxsmm path) refuses a CSR without them in backward passes (GATConv)
    edge_ids = torch.arange(indices.shape[0], dtype=torch.int64)
    block = dgl.create_block(("csc", (indptr.cpu().long(), indices.cpu().long(), edge_ids)),
                             num_src_nodes=int(num_src), num_dst_nodes=int(num_dst), idtype=torch.int64)
    return block.to(device) if device is not None else block


def to_dgl_blocks(minibatch, device=None) -> list:
    """DGL blocks (outermost first) of a :class:`~diskgnn.sampling.MiniBatch`.

    Source and destination nodes carry their global ids in ``dgl.NID``.
    Also accepts a sequence of :class:`~diskgnn.models.TorchBlock` (then without ids).
    """
    dgl = _import_dgl()
    if hasattr(minibatch, "blocks"):
        input_nodes = torch.as_tensor(np.asarray(minibatch.input_nodes, dtype=np.int64))
        blocks = []
        for b in minibatch.blocks:
            g = _create_block(dgl, b.indptr, b.indices, b.num_src, b.num_dst, None)
            g.srcdata[dgl.NID] = input_nodes[:b.num_src]
            g.dstdata[dgl.NID] = input_nodes[:b.num_dst]
            blocks.append(g.to(device) if device is not None else g)
        return blocks
    return [_create_block(dgl, b.indptr, b.src, b.num_src, b.num_dst, device) for b in minibatch]


def hetero_positions(minibatch, type_offsets: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """For every input node of a heterogeneous minibatch: its type's index (in ``type_offsets`` order) and its
    rank among the batch's input nodes of that type (its id in a DGL heterogeneous block)."""
    names = list(type_offsets)
    starts = np.array([type_offsets[t] for t in names], dtype=np.int64)
    if np.any(np.diff(starts) < 0):
        raise ConfigError(f"type_offsets must list the types in id order, got {type_offsets}")
    nodes = np.asarray(minibatch.input_nodes, dtype=np.int64)
    tidx = np.searchsorted(starts, nodes, side="right") - 1
    rank = np.empty(nodes.size, dtype=np.int64)
    for k in range(len(names)):
        pos = np.flatnonzero(tidx == k)
        rank[pos] = np.arange(pos.size)
    return tidx, rank


def to_dgl_hetero_blocks(minibatch, type_offsets: dict[str, int], relations: Sequence[tuple[str, str, str]],
                         device=None) -> list:
    """DGL heterogeneous blocks (outermost first) of a heterogeneous minibatch
    (:class:`~diskgnn.hetero_sampling.HeteroMiniBatch`), for ``HeteroGraphConv`` models.

    ``relations`` are the dataset's ``(src type, relation, dst type)`` in relation-index order (the
    samples' ``relations``); ``type_offsets`` its global-id offsets. A type's source nodes in a block are
    the batch's input nodes of that type in batch order, so its destinations come first (DGL's block
    convention) and layer 0's sources of type ``T`` are the rows of ``T``'s assembled feature matrix.
    Every relation appears in every block (with no edges where none were sampled), as in DGL's own
    samplers; ``dgl.NID`` holds each node's local id in its type.
    """
    dgl = _import_dgl("the heterogeneous DGL adapter")
    names = list(type_offsets)
    tidx, rank = hetero_positions(minibatch, type_offsets)
    nodes = np.asarray(minibatch.input_nodes, dtype=np.int64)
    offs = np.array([type_offsets[t] for t in names], dtype=np.int64)
    blocks = []
    for layer in range(minibatch.num_layers):
        n_src, n_dst = int(minibatch.layer_sizes[layer]), int(minibatch.layer_sizes[layer + 1])
        ptr = np.asarray(minibatch.block_indptr[layer], dtype=np.int64)
        src = np.asarray(minibatch.block_indices[layer], dtype=np.int64)
        et = np.asarray(minibatch.block_etypes[layer])
        dst = np.repeat(np.arange(n_dst, dtype=np.int64), np.diff(ptr))
        data = {}
        for r, rel in enumerate(relations):
            sel = et == r
            data[tuple(rel)] = (torch.from_numpy(rank[src[sel]]), torch.from_numpy(rank[dst[sel]]))
        n_src_t = {t: int(np.count_nonzero(tidx[:n_src] == k)) for k, t in enumerate(names)}
        n_dst_t = {t: int(np.count_nonzero(tidx[:n_dst] == k)) for k, t in enumerate(names)}
        g = dgl.create_block(data, num_src_nodes=n_src_t, num_dst_nodes=n_dst_t, idtype=torch.int64)
        for k, t in enumerate(names):
            src_pos = np.flatnonzero(tidx[:n_src] == k)
            g.srcnodes[t].data[dgl.NID] = torch.from_numpy(nodes[src_pos] - offs[k])
            g.dstnodes[t].data[dgl.NID] = torch.from_numpy(nodes[src_pos[:n_dst_t[t]]] - offs[k])
        blocks.append(g.to(device) if device is not None else g)
    return blocks


class DGLHeteroModel(nn.Module):
    """A DGL heterogeneous model trained by :func:`diskgnn.hetero_train.train_hetero` (``model=``).

    ``module(blocks, inputs)`` gets the batch's DGL heterogeneous blocks (:func:`to_dgl_hetero_blocks`) and
    ``inputs[t]``: the float32 rows of the batch's input nodes of featured type ``t`` (from the packed
    stores), or, for a featureless type, their local ids (int64, for an embedding inside ``module``). It
    returns ``{type: output}``, a stack of ``dgl.nn.HeteroGraphConv`` as is; the target type's rows are
    the seeds' logits.
    """
    takes_minibatch = True

    def __init__(self, module: nn.Module, type_offsets: dict[str, int], relations: Sequence[tuple[str, str, str]],
                 target: str):
        super().__init__()
        _import_dgl("the heterogeneous DGL adapter")
        self.module = module
        self.type_offsets = dict(type_offsets)
        self.relations = [tuple(r) for r in relations]
        self.target = target

    def forward(self, minibatch, by_type: dict, feats: dict) -> torch.Tensor:
        blocks = to_dgl_hetero_blocks(minibatch, self.type_offsets, self.relations)
        inputs = {t: feats[t] if t in feats else torch.as_tensor(local, dtype=torch.int64)
                  for t, (pos, local) in by_type.items() if len(pos)}
        out = self.module(blocks, inputs)
        if self.target not in out:
            raise ConfigError(f"the DGL model returned outputs for {sorted(out)}, not for the target type "
                              f"{self.target!r}; its last layer must produce the target type's logits")
        return out[self.target]


class DGLModel(nn.Module):
    """Wrap a model written for DGL blocks, ``module(blocks, x)``, so diskgnn's trainer can run it.

    The trainer hands over :class:`~diskgnn.models.TorchBlock` lists; they are
    rebuilt as DGL blocks on the fly (CPU only: DGL 2.1 from PyPI has no CUDA).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, blocks: Sequence, x: torch.Tensor) -> torch.Tensor:
        try:
            dgl_blocks = to_dgl_blocks(blocks, device=x.device)
        except Exception as exc:  # noqa: BLE001 - DGL's own error types; only a device move fails here
            if x.device.type != "cuda":
                raise
            raise ConfigError(f"DGL cannot put blocks on {x.device} ({first_line(exc)}); DGL 2.1 from PyPI is a "
                              f"CPU-only build: train dgl: models with --device cpu, or use pyg:<Conv> on the "
                              f"GPU") from None
        return self.module(dgl_blocks, x)


# --- stacks of one convolution class ------------------------------------------------------------------

class DGLConvStack(nn.Module):
    """``num_layers`` DGL convolutions over DGL blocks, like :class:`diskgnn.models.GNN`.

    Between layers: ReLU (ELU for multi-head convolutions, whose ``[N, heads,
    width]`` output is flattened; the output layer averages its heads), then dropout.
    """

    def __init__(self, conv: ForeignConv, layers: Sequence[nn.Module], dropout: float):
        super().__init__()
        self.conv_name = conv.model_name
        self.multi_head = conv.multi_head
        self.convs = nn.ModuleList(layers)
        self.dropout = nn.Dropout(dropout)

    def forward(self, blocks: Sequence, x: torch.Tensor) -> torch.Tensor:
        check_block_count(len(self.convs), blocks)
        h = x
        last = len(self.convs) - 1
        for i, (conv, block) in enumerate(zip(self.convs, blocks)):
            h = conv(block, (h, h[:block.num_dst_nodes()]))
            if h.dim() == 3:
                h = h.mean(1) if i == last else h.flatten(1)
            if i != last:
                h = self.dropout(F.elu(h) if self.multi_head else F.relu(h))
        return h


def _conv_class(name: str):
    _import_dgl(f"--model dgl:{name}")
    import dgl.nn.pytorch as dgl_nn
    cls = getattr(dgl_nn, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        names = [n for n in dir(dgl_nn) if n.endswith("Conv")]
        raise ConfigError(f"--model dgl:{name}: dgl.nn has no convolution of that name."
                          f"{suggest(name, names, 'dgl')} Convolutions --model can stack include "
                          f"{', '.join('dgl:' + n for n in _EXAMPLES)} (names are case-sensitive)")
    return cls


def _make_conv(cls, in_dim: int, out_dim: int, heads: int, pair_widths: bool = False) -> nn.Module:
    """One convolution ``in_dim -> out_dim`` (per head); ConfigError when its constructor needs more.

    ``pair_widths``: pass the input width as ``(in_dim, in_dim)`` (source, destination).
    """
    params = inspect.signature(cls.__init__).parameters
    kw: dict = {}
    if cls.__name__ == "GINConv":  # GIN's update is an MLP: without one it cannot change the width
        kw["apply_func"] = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))
    else:
        in_name = next((n for n in _IN if n in params), None)
        out_name = next((n for n in _OUT if n in params), None)
        if in_name is None or out_name is None:
            raise ConfigError(f"--model dgl:{cls.__name__} cannot be stacked: its constructor has no in_feats/"
                              f"out_feats, so a stack of it cannot map the features to hidden units and classes; "
                              f"pick e.g. {', '.join('dgl:' + n for n in _EXAMPLES)}")
        kw.update({in_name: (in_dim, in_dim) if pair_widths else in_dim, out_name: out_dim})
    if "num_heads" in params:
        kw["num_heads"] = heads
    if "aggregator_type" in params and params["aggregator_type"].default is inspect.Parameter.empty:
        kw["aggregator_type"] = "mean"
    if "allow_zero_in_degree" in params:
        kw["allow_zero_in_degree"] = True  # a sampled destination may have no in-edges
    missing = [p.name for p in list(params.values())[1:] if p.default is inspect.Parameter.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in kw]
    if missing:
        raise ConfigError(f"--model dgl:{cls.__name__} cannot be stacked: its constructor needs "
                          f"{', '.join(missing)}, which --model cannot choose; pick e.g. "
                          f"{', '.join('dgl:' + n for n in _EXAMPLES)}, or write the model by hand")
    return cls(**kw)


def conv_spec(name: str) -> ForeignConv:
    """Check that ``dgl.nn.<name>`` can be stacked on diskgnn's blocks; ConfigError naming why not.

    Builds the convolution small and runs it on a bipartite probe block (4
    sources, 3 destinations, one without in-edges) with ``feat=(h_src, h_dst)``:
    it must return one row per destination.
    """
    cls = _conv_class(name)
    fwd = list(inspect.signature(cls.forward).parameters.values())[1:]
    extra = [p.name for p in fwd[2:] if p.default is inspect.Parameter.empty
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if extra:
        raise ConfigError(f"--model dgl:{name} cannot be stacked: its forward also needs {', '.join(extra)}, which "
                          f"diskgnn's blocks do not carry; pick e.g. {', '.join('dgl:' + n for n in _EXAMPLES)}")
    dgl = _import_dgl()
    params = inspect.signature(cls.__init__).parameters
    in_dim, out_dim, heads = 3, 2, 2
    block = _create_block(dgl, np.array([0, 2, 5, 5]), np.array([1, 3, 0, 2, 3]), 4, 3, None)
    errors = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        h = torch.randn(4, in_dim)
        # some convolutions take a pair of features only when built with a pair of widths
        for pair_widths in (False, True):
            conv = None
            try:
                conv = _make_conv(cls, in_dim, out_dim, heads, pair_widths).eval()
                out = conv(block, (h, h[:3]))
                break
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - a foreign class can raise anything; say what it raised
                errors.append(exc)
        else:
            raise ConfigError(f"--model dgl:{name} does not take bipartite input: on a block with 4 sources and 3 "
                              f"destinations, given feat=(h_src, h_dst), it raised {first_line(errors[0])}. Pick a "
                              f"convolution that takes a pair of source and destination features, e.g. {', '.join('dgl:' + n for n in _EXAMPLES)}, or diskgnn's own sage, "
                              f"gat or gcn") from None
    multi_head = "num_heads" in params
    want = (3, heads, out_dim) if multi_head else (3, out_dim)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"--model dgl:{name} returns {shape} on a block with 3 destinations (expected {want}); "
                          f"--model cannot stack it: pick e.g. {', '.join('dgl:' + n for n in _EXAMPLES)}")
    return ForeignConv(library="dgl", name=name, multi_head=multi_head, concat_heads=multi_head,
                       pair_widths=pair_widths)


def build_stack(conv: ForeignConv, *, in_dim: int, num_classes: int, num_layers: int, hidden: int, heads: int,
                dropout: float) -> DGLModel:
    """A :class:`DGLConvStack` of ``conv`` (``in_dim`` > ``hidden`` (x heads) > ... > ``num_classes``) that
    takes diskgnn's TorchBlocks (:class:`DGLModel` rebuilds them as DGL blocks)."""
    cls = _conv_class(conv.name)
    layers, width = [], in_dim
    for i in range(num_layers):
        last = i == num_layers - 1
        out = num_classes if last else hidden
        layers.append(_make_conv(cls, width, out, heads, conv.pair_widths))
        width = out * heads if conv.concat_heads and not last else out
    return DGLModel(DGLConvStack(conv, layers, dropout))
