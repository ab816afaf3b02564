"""The public loader: presampled, packed batches for your own training loop.

``diskgnn.open(packed_dir)`` gives a :class:`PackedData`; its
:meth:`~PackedData.loader` yields :class:`Batch`\\ es through the same
pipelined, out-of-core path the trainer uses (load > read > assemble in
threads, the model's work in your loop)::

    import torch, torch.nn.functional as F
    import diskgnn

    data = diskgnn.open("work/s.packed")
    model = diskgnn.build_model("sage", in_dim=data.feat_dim, num_classes=data.num_classes,
                                num_layers=data.num_layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(3):
        for batch in data.loader("train", epoch=epoch):
            loss = F.cross_entropy(model(batch.blocks, batch.x), batch.y)
            opt.zero_grad(); loss.backward(); opt.step()

A batch is exact: ``batch.x`` equals the features of ``batch.input_nodes``
bit for bit (after the packed storage dtype), ``batch.blocks`` are the
presampled message-flow graphs (outermost first; destinations are the first
``num_dst`` sources) and ``batch.y`` the labels of ``batch.seeds``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from diskgnn.errors import ConfigError
from diskgnn.models import TorchBlock
from diskgnn.pipeline import Pipeline

log = logging.getLogger(__name__)


class FeatureSource(Protocol):
    """What a loader needs from a feature store (see :class:`diskgnn.store.FeatureStore`)."""

    def read(self, part: str, i: int) -> Any: ...
    def assemble(self, part: str, i: int, extent_read: Any) -> torch.Tensor: ...
    def stats(self) -> dict: ...


@dataclass(slots=True)
class Batch:
    """One presampled minibatch, ready for the model once it comes out of a :class:`Loader`."""
    part: str
    """The samples' part (``train/0``, ``val``, ``test``)."""
    index: int
    """The batch's number in its part."""
    blocks: list[TorchBlock]
    """Message-flow graphs, outermost first (on the loader's device)."""
    y: torch.Tensor
    """int64 labels of the seeds (empty for link prediction)."""
    input_nodes: np.ndarray
    """int64 global ids of ``x``'s rows (``blocks[0]``'s sources)."""
    seeds: np.ndarray
    """int64 global ids of the output rows (``blocks[-1]``'s destinations)."""
    x: torch.Tensor | None = None
    """float32 [len(input_nodes), F] input features (on the loader's device)."""
    pairs: torch.Tensor | None = None
    """Link prediction: int64 [P, 2 + k] seed positions of each positive edge and its negatives."""
    extent: Any = None
    ready: Any = None
    """A CUDA event recorded on the side stream after the copies (None on CPU)."""

    def wait(self) -> None:
        """Make the current CUDA stream wait for this batch's side-stream copies (a no-op on CPU)."""
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.x.device)
            stream.wait_event(self.ready)
            extra = (self.pairs,) if self.pairs is not None else ()
            for t in (self.x, self.y, *extra,
                      *(t for b in self.blocks for t in (b.src, b.dst, b.indptr, b.in_degree))):
                t.record_stream(stream)
            self.ready = None

    def __repr__(self) -> str:
        shape = tuple(self.x.shape) if self.x is not None else None
        return (f"Batch({self.part}/{self.index}: {len(self.seeds)} seeds, {len(self.input_nodes)} input nodes, "
                f"{len(self.blocks)} blocks, x={shape})")
