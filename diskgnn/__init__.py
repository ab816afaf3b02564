"""diskgnn: out-of-core GNN training that is both fast and exact.

Stages (one module each): :mod:`diskgnn.dataset` (format), :mod:`diskgnn.ingest`
and :mod:`diskgnn.synth` (prepare), :mod:`diskgnn.sampling` (offline sampler),
:mod:`diskgnn.packing` and :mod:`diskgnn.store` (packer, cache tiers),
:mod:`diskgnn.pipeline` and :mod:`diskgnn.train` (pipelined trainer).
"""
__version__ = "0.1.0"

from diskgnn.errors import DiskGNNError  # noqa: F401
