"""diskgnn: out-of-core GNN training that is both fast and exact.

Stages (one module each): :mod:`diskgnn.dataset` (format), :mod:`diskgnn.ingest`
and :mod:`diskgnn.synth` (prepare), :mod:`diskgnn.sampling` (offline sampler),
:mod:`diskgnn.packing` and :mod:`diskgnn.store` (packer, cache tiers),
:mod:`diskgnn.loader` (the pipelined batches: the public loader),
:mod:`diskgnn.train` (the trainer built on it) and :mod:`diskgnn.launch`
(one process or data-parallel ranks).

The stable Python API, for a training loop of your own::

    import diskgnn
    data = diskgnn.open("work/s.packed")          # PackedData
    for batch in data.loader("train", epoch=0):   # Batch: blocks, x, y, input_nodes, seeds
        ...

Names are imported on first use, so ``import diskgnn`` (and the command line)
stays quick.
"""
__version__ = "0.1.0"

from diskgnn.errors import DiskGNNError  # noqa: F401

_EXPORTS = {
    "open": "diskgnn.loader", "PackedData": "diskgnn.loader", "Loader": "diskgnn.loader", "Batch": "diskgnn.loader",
    "TorchBlock": "diskgnn.models", "build_model": "diskgnn.models",
    "TrainConfig": "diskgnn.train", "Trainer": "diskgnn.train",
    "train": "diskgnn.launch",
}
__all__ = ["DiskGNNError", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diskgnn' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
