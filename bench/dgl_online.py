"""The real-library baselines: DGL's NeighborSampler + DataLoader, features on disk or in RAM.

Online sampling every epoch on an int64 DGL graph (DGL 2.1 with int32 ids was
seen to corrupt blocks from the second batch on), on the main thread.

* ``dgl-online``: features gathered from a ``numpy.memmap`` of features.bin
  with MADV_RANDOM (under the memory cap), the model from
  :mod:`diskgnn.models` on the converted blocks;
* ``dgl-inmem``: every feature in RAM as a float32 torch tensor gathered with
  ``index_select``, and DGL's own layers (:class:`diskgnn.bench.compute.DGLStack`):
  what a user with enough RAM runs (no cap).

Reference stack only.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from diskgnn.errors import ConfigError
from diskgnn.bench.packed_systems import _widen, gather_memmap


class DGLOnline:
    def __init__(self, ds, sample_config, *, kind: str, model: str, hidden, in_memory: bool = False):
        try:
            import dgl
        except ImportError:
            raise ConfigError("the dgl-online system needs DGL (the reference stack: pip install '.[dgl]')") from None
        self.dgl = dgl
        indptr = torch.from_numpy(np.asarray(ds.indptr, dtype=np.int64))
        indices = torch.from_numpy(np.asarray(ds.indices).astype(np.int64))
        # no explicit edge ids: DGL numbers edges itself, and an int64 arange would cost 8 bytes per edge
        self.graph = dgl.graph(("csc", (indptr, indices, [])), num_nodes=ds.num_nodes, idtype=torch.int64)
        del indices, indptr
        self.train_idx = torch.from_numpy(np.asarray(ds.split("train"), dtype=np.int64))
        self.sampler = dgl.dataloading.NeighborSampler(list(sample_config.fanouts))
        self.batch_size = sample_config.batch_size
        self.in_memory = in_memory
        self.feat_dtype = ds.feat_dtype
        if in_memory:
            self.features = torch.from_numpy(_widen(np.array(ds.features), ds.feat_dtype))
        else:
            self.features = np.memmap(ds.features_path, dtype=ds.features.dtype, mode="r",
                                      shape=(ds.num_nodes, ds.feat_dim))
            import mmap as _mmap
            self.features._mmap.madvise(_mmap.MADV_RANDOM)
        self.labels = np.asarray(ds.labels)
        self.kind = kind
        self.rows = 0
        self.read = 0
        self.row_bytes = ds.row_bytes
        if kind == "train" and in_memory:
            from diskgnn.bench.compute import DGLStack
            self.model = DGLStack(model, ds.feat_dim, ds.num_classes, len(sample_config.fanouts),
                                  hidden or (32 if model == "gat" else 128), 4)
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        elif kind == "train":
            from diskgnn.models import build_model
            self.model = build_model(model, in_dim=ds.feat_dim, num_classes=ds.num_classes,
                                     num_layers=len(sample_config.fanouts), hidden=hidden)
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def bytes_useful(self) -> int:
        return self.rows * self.row_bytes

    def bytes_read(self) -> int:
        return self.read

    def _blocks(self, blocks):
        from diskgnn.models import TorchBlock
        out = []
        for b in blocks:
            indptr, indices, _ = b.adj_tensors("csc")
            out.append(TorchBlock.from_csr(indptr.numpy(), indices.numpy(), b.num_src_nodes(), b.num_dst_nodes()))
        return out

    def epoch(self, max_batches: int, clock) -> None:
        import torch.nn.functional as F
        loader = self.dgl.dataloading.DataLoader(self.graph, self.train_idx, self.sampler,
                                                 batch_size=self.batch_size, shuffle=True, drop_last=False)
        it = iter(loader)
        for _ in range(max_batches):
            t0 = time.perf_counter()
            try:
                input_nodes, seeds, blocks = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            if self.in_memory:
                x = self.features.index_select(0, input_nodes)
            else:
                x, read = gather_memmap(self.features, input_nodes.numpy(), self.feat_dtype)
                self.read += read
            self.rows += int(input_nodes.shape[0])
            t2 = time.perf_counter()
            clock.add("sample", busy=t1 - t0)
            clock.add("fetch", busy=t2 - t1)
            if self.kind == "train":
                tb = blocks if self.in_memory else self._blocks(blocks)
                y = torch.from_numpy(self.labels[seeds.numpy()])
                loss = F.cross_entropy(self.model(tb, x), y)
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                clock.add("compute", busy=time.perf_counter() - t2)
