"""Models on heterogeneous minibatches: relation-wise GraphSAGE and RGCN, in plain torch.

Both see a :class:`~diskgnn.hetero_sampling.HeteroMiniBatch` as per-layer
:class:`HeteroBlock` s: for every relation, a CSR block whose destinations are the
layer's destination nodes of the relation's destination type (their positions in
the layer) and whose sources are local ids of the layer's source nodes. The mean
over a relation's sampled in-neighbours runs through the fused kernels of
:func:`diskgnn.ops.aggregate`.

* ``rsage`` (relation-wise SAGE, as DGL's ``HeteroGraphConv`` of ``SAGEConv`` with
  ``aggregate='sum'``): ``h_v' = sum_r (W_self,r h_v + W_neigh,r mean_r(h_u) + b_r)``
  over the relations into ``v``'s type.
* ``rgcn``: ``h_v' = W_0 h_v + sum_r mean_r(h_u) W_r + b`` with, given
  ``num_bases``, ``W_r = sum_b a_rb V_b`` (basis decomposition).

Inputs: each featured type is projected to the hidden width by its own linear
layer; a featureless type gets a learnable embedding per node (``nn.Embedding``
with sparse gradients: only the rows a batch touches are updated).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from diskgnn.errors import ConfigError
from diskgnn.models import TorchBlock
from diskgnn.ops import aggregate

HETERO_MODELS = ("rsage", "rgcn")


@dataclass
class HeteroBlock:
    """One layer: per relation index, ``(destination positions, block)`` (relations with no destination in the
    layer are left out)."""
    num_src: int
    num_dst: int
    relations: dict[int, tuple[torch.Tensor, TorchBlock]]


def hetero_blocks(mb, num_relations: int) -> list[HeteroBlock]:
    """The per-relation blocks of a minibatch, outermost layer first."""
    out = []
    for layer in range(mb.num_layers):
        ptr, idx, et = mb.block_indptr[layer], mb.block_indices[layer], mb.block_etypes[layer]
        n_dst, n_src = int(mb.layer_sizes[layer + 1]), int(mb.layer_sizes[layer])
        dst = np.repeat(np.arange(n_dst, dtype=np.int64), np.diff(ptr))
        rels = {}
        for r in range(num_relations):
            mask = et == r
            if not mask.any():
                continue
            d = dst[mask]
            rows, local = np.unique(d, return_inverse=True)
            counts = np.bincount(local, minlength=rows.size)
            indptr = np.zeros(rows.size + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
            rels[r] = (torch.from_numpy(rows), TorchBlock.from_csr(indptr, idx[mask], n_src, rows.size))
        out.append(HeteroBlock(n_src, n_dst, rels))
    return out


class HeteroInput(nn.Module):
    """Input rows of every type at the hidden width: a linear layer per featured type, an embedding per
    featureless one."""

    def __init__(self, node_types: dict, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.proj = nn.ModuleDict()
        self.embed = nn.ModuleDict()
        for name, t in node_types.items():
            if t.feat_dim:
                self.proj[name] = nn.Linear(t.feat_dim, hidden)
            else:
                self.embed[name] = nn.Embedding(t.num_nodes, hidden, sparse=True)
                nn.init.normal_(self.embed[name].weight, std=1.0 / hidden ** 0.5)

    def forward(self, num_inputs: int, by_type: dict[str, tuple[torch.Tensor, torch.Tensor]],
                feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """``by_type[t] = (positions, local ids)`` of the batch's inputs of type ``t``; ``feats[t]`` their rows."""
        h = None
        for name, (pos, local) in by_type.items():
            if pos.numel() == 0:
                continue
            rows = self.proj[name](feats[name].float()) if name in self.proj else self.embed[name](local)
            if h is None:
                h = rows.new_zeros((num_inputs, self.hidden))
            h = h.index_copy(0, pos, rows)
        return h


class RelSAGELayer(nn.Module):
    def __init__(self, num_relations: int, in_dim: int, out_dim: int):
        super().__init__()
        self.fc_self = nn.ModuleList(nn.Linear(in_dim, out_dim, bias=True) for _ in range(num_relations))
        self.fc_neigh = nn.ModuleList(nn.Linear(in_dim, out_dim, bias=False) for _ in range(num_relations))
        self.out_dim = out_dim

    def forward(self, block: HeteroBlock, h: torch.Tensor) -> torch.Tensor:
        out = h.new_zeros((block.num_dst, self.out_dim))
        for r, (rows, b) in block.relations.items():
            part = self.fc_self[r](h.index_select(0, rows)) + self.fc_neigh[r](aggregate(b, h, "mean"))
            out = out.index_add(0, rows, part)
        return out


class RGCNLayer(nn.Module):
    def __init__(self, num_relations: int, in_dim: int, out_dim: int, num_bases: int | None = None):
        super().__init__()
        self.num_relations, self.out_dim = num_relations, out_dim
        self.self_loop = nn.Linear(in_dim, out_dim, bias=True)
        bound = 1.0 / in_dim ** 0.5
        if num_bases:
            if not 0 < num_bases <= num_relations:
                raise ConfigError(f"--num-bases must lie in 1..{num_relations} (the relations), got {num_bases}")
            self.bases = nn.Parameter(torch.empty(num_bases, in_dim, out_dim).uniform_(-bound, bound))
            self.coeff = nn.Parameter(torch.empty(num_relations, num_bases).uniform_(-1, 1) / num_bases ** 0.5)
            self.weight = None
        else:
            self.weight = nn.Parameter(torch.empty(num_relations, in_dim, out_dim).uniform_(-bound, bound))

    def relation_weights(self) -> torch.Tensor:
        if self.weight is not None:
            return self.weight
        return torch.einsum("rb,bio->rio", self.coeff, self.bases)

    def forward(self, block: HeteroBlock, h: torch.Tensor) -> torch.Tensor:
        out = self.self_loop(h[:block.num_dst])
        weights = self.relation_weights()
        for r, (rows, b) in block.relations.items():
            out = out.index_add(0, rows, aggregate(b, h, "mean") @ weights[r])
        return out


class HeteroGNN(nn.Module):
    """Input projections, then ``num_layers`` relation-aware layers; logits of the seeds (the target type)."""

    def __init__(self, model: str, node_types: dict, num_relations: int, num_classes: int, num_layers: int,
                 hidden: int = 128, num_bases: int | None = None, dropout: float = 0.0):
        super().__init__()
        if model not in HETERO_MODELS:
            raise ConfigError(f"unknown heterogeneous model {model!r}; choose {', '.join(HETERO_MODELS)}")
        if num_layers < 1:
            raise ConfigError("a model needs at least one layer")
        self.model = model
        self.input = HeteroInput(node_types, hidden)
        dims = [hidden] * num_layers + [num_classes]
        make = (lambda i, o: RelSAGELayer(num_relations, i, o)) if model == "rsage" else \
            (lambda i, o: RGCNLayer(num_relations, i, o, num_bases))
        self.layers = nn.ModuleList(make(dims[i], dims[i + 1]) for i in range(num_layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, blocks: list[HeteroBlock], by_type, feats) -> torch.Tensor:
        h = self.input(blocks[0].num_src, by_type, feats)
        for i, (layer, block) in enumerate(zip(self.layers, blocks)):
            h = layer(block, h)
            if i < len(self.layers) - 1:
                h = self.dropout(torch.relu(h))
        return h

    def dense_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("input.embed.")]

    def sparse_parameters(self):
        return [p for n, p in self.named_parameters() if n.startswith("input.embed.")]
