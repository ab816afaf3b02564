"""DGL interop: presampled batches as DGL message flow graphs (reference stack only).

DGL is imported inside the functions, never at module import, so the core
works without it. Blocks are built from the CSR over destination nodes, which
is DGL's ``csc`` layout (column pointer over destinations, row = source).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from diskgnn.errors import ConfigError


def _import_dgl():
    try:
        import dgl
    except ImportError as exc:
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


class DGLModel(nn.Module):
    """Wrap a model written for DGL blocks, ``module(blocks, x)``, so diskgnn's trainer can run it.

    The trainer hands over :class:`~diskgnn.models.TorchBlock` lists; they are
    rebuilt as DGL blocks on the fly (CPU only: DGL 2.1 from PyPI has no CUDA).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, blocks: Sequence, x: torch.Tensor) -> torch.Tensor:
        return self.module(to_dgl_blocks(blocks, device=x.device), x)
