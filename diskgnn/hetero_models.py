"""Models on heterogeneous minibatches: relation-wise GraphSAGE and RGCN, in plain torch.

Both see a :class:`~diskgnn.hetero_sampling.HeteroMiniBatch` as per-layer
:class:`HeteroBlock` s: for every relation, a CSR block whose destinations are the
layer's destination nodes of the relation's destination type (their positions in
the layer) and whose sources are local ids of the layer's source nodes. The mean
over a relation's sampled in-neighbours runs through the fused kernels of
:func:`diskgnn.ops.aggregate`.

* ``rsage`` (relation-wise SAGE): ``h_v' = sum_r (W_self,r h_v + W_neigh,r mean_r(h_u) + b_r)`` over
  the relations ``r`` in which ``v`` has at least one sampled in-neighbour. DGL's ``HeteroGraphConv``
  of ``SAGEConv`` with ``aggregate='sum'`` sums over every relation into ``v``'s type instead (a
  relation without neighbours of ``v`` still adds ``W_self,r h_v + b_r``); test accuracy agrees
  within 0.3 pt (``bench/results/hetero-parity-s.json``).
* ``rgcn``: ``h_v' = W_0 h_v + sum_r mean_r(h_u) W_r + b`` with, given
  ``num_bases``, ``W_r = sum_b a_rb V_b`` (basis decomposition).

A layer's per-relation means are one aggregation over (relation, destination)
pairs (:class:`HeteroBlock`), so the backward pass makes one gradient of the
source rows, not one per relation.

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
    """One layer. ``merged`` is one CSR block over (relation, destination) pairs, grouped by relation (pairs
    ``lo..hi`` of relation ``r``), so the per-relation means of a layer are one aggregation (and one
    gradient of the source rows in the backward pass, not one per relation); ``relations[r] = (destination
    positions, lo, hi)`` for the relations that have a destination in the layer."""
    num_src: int
    num_dst: int
    merged: TorchBlock
    relations: dict[int, tuple[torch.Tensor, int, int]]

    @property
    def pair_sizes(self) -> list[int]:
        return [hi - lo for _, lo, hi in self.relations.values()]


def hetero_blocks(mb, num_relations: int) -> list[HeteroBlock]:
    """The per-relation blocks of a minibatch, outermost layer first."""
    out = []
    for layer in range(mb.num_layers):
        ptr, idx, et = mb.block_indptr[layer], mb.block_indices[layer], mb.block_etypes[layer]
        n_dst, n_src = int(mb.layer_sizes[layer + 1]), int(mb.layer_sizes[layer])
        dst = np.repeat(np.arange(n_dst, dtype=np.int64), np.diff(ptr))
        # edges come by destination, then relation: a stable sort by relation keeps destinations ascending
        order = np.argsort(et, kind="stable")
        et_s, dst_s, src_s = et[order].astype(np.int64), dst[order], idx[order]
        key = et_s * n_dst + dst_s
        first = np.ones(key.size, dtype=bool)
        first[1:] = key[1:] != key[:-1]
        starts = np.flatnonzero(first)
        pair_rel, pair_dst = et_s[starts], dst_s[starts]
        indptr = np.append(starts, key.size).astype(np.int64)
        merged = TorchBlock.from_csr(indptr, src_s, n_src, starts.size)
        bounds = np.searchsorted(pair_rel, np.arange(num_relations + 1))
        rels = {r: (torch.from_numpy(pair_dst[bounds[r]:bounds[r + 1]]), int(bounds[r]), int(bounds[r + 1]))
                for r in range(num_relations) if bounds[r + 1] > bounds[r]}
        out.append(HeteroBlock(n_src, n_dst, merged, rels))
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
        positions, rows = [], []
        for name, (pos, local) in by_type.items():
            if pos.numel() == 0:
                continue
            positions.append(pos)
            rows.append(self.proj[name](feats[name].float()) if name in self.proj else self.embed[name](local))
        h = torch.zeros((num_inputs, self.hidden), dtype=rows[0].dtype if rows else torch.float32)
        if rows:  # one scatter of every type's rows (its backward is one gather, then views per type)
            h.index_copy_(0, torch.cat(positions), torch.cat(rows) if len(rows) > 1 else rows[0])
        return h


class RelSAGELayer(nn.Module):
    def __init__(self, num_relations: int, in_dim: int, out_dim: int):
        super().__init__()
        self.fc_self = nn.ModuleList(nn.Linear(in_dim, out_dim, bias=True) for _ in range(num_relations))
        self.fc_neigh = nn.ModuleList(nn.Linear(in_dim, out_dim, bias=False) for _ in range(num_relations))
        self.out_dim = out_dim

    def forward(self, block: HeteroBlock, h: torch.Tensor) -> torch.Tensor:
        out = h.new_zeros((block.num_dst, self.out_dim))
        if not block.relations:
            return out
        h_dst = h[:block.num_dst]  # destinations are the first source rows (the sampler's prefix)
        means = aggregate(block.merged, h, "mean").split(block.pair_sizes)
        for (r, (rows, _, _)), mean in zip(block.relations.items(), means):
            part = self.fc_self[r](h_dst.index_select(0, rows)) + self.fc_neigh[r](mean)
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
        if not block.relations:
            return out
        weights = self.relation_weights()
        means = aggregate(block.merged, h, "mean").split(block.pair_sizes)
        for (r, (rows, _, _)), mean in zip(block.relations.items(), means):
            out = out.index_add(0, rows, mean @ weights[r])
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
