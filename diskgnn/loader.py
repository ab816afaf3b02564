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
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from diskgnn.errors import ConfigError, MismatchError
from diskgnn.models import TorchBlock
from diskgnn.pipeline import Pipeline

log = logging.getLogger(__name__)


class FeatureSource(Protocol):
    """What a loader needs from a feature store (see :class:`diskgnn.store.FeatureStore`)."""

    def read(self, part: str, i: int) -> Any: ...
    def assemble(self, part: str, i: int, extent_read: Any) -> torch.Tensor: ...
    def stats(self) -> dict: ...


# --- runtime helpers shared with the trainer --------------------------------------------------

def epoch_permutation(seed: int, epoch: int, num_batches: int, segments: list[np.ndarray] | None = None) -> np.ndarray:
    """The shuffled batch order of training epoch ``epoch`` (0-based) over ``num_batches`` batches.

    With ``segments`` (groups of batches that read one segment of the disk-budget layout), the
    segments are visited in a shuffled order and the batches of each in a shuffled order, so a
    segment is read once per epoch.
    """
    if not segments:
        return np.random.default_rng([seed, 0x0DE5, epoch]).permutation(num_batches)
    rng = np.random.default_rng([seed, 0x5E6, epoch])
    return np.concatenate([rng.permutation(segments[k]) for k in rng.permutation(len(segments))]).astype(np.int64)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA request without CUDA is a clear error."""
    from diskgnn.capabilities import cuda_available
    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if name.startswith("cuda"):
        if not cuda_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}); use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA devices are visible")
        return dev
    return torch.device("cpu")


@dataclass(frozen=True, slots=True)
class ThreadBudget:
    """How a loader's (and the trainer's) threads share the cores.

    The pipeline's stages run at once: while the consumer computes batch k
    (torch's intra-op threads, then the fused message-passing kernels' numba
    threads, one after the other in the same thread), the assembly stage
    gathers batch k+1 with its own numba threads, and the read stage's I/O
    threads wait on the disk (they need almost no CPU). Measured at 2 cores on
    scale m (``python -m diskgnn.bench.threads``): compute 2 + assembly 2 and
    2 + 1 and 1 + 1 are within the run-to-run spread, 1 + 2 is about 15 % slower,
    so both get every core by default and the OS shares them.
    """
    compute: int
    """torch intra-op threads and numba threads of the compute thread's kernels."""
    assemble: int
    """numba threads of the assembly gathers."""

    @classmethod
    def of(cls, threads: int | None = None, assemble_threads: int | None = None) -> "ThreadBudget":
        """``threads`` (None: every core this process may use) and ``assemble_threads`` (None: the same)."""
        from diskgnn.capabilities import available_cores
        compute = threads or available_cores()
        return cls(compute=compute, assemble=assemble_threads or compute)

    def apply_to_compute_thread(self) -> None:
        """Set torch's and numba's thread counts for the calling (compute) thread."""
        torch.set_num_threads(self.compute)
        set_numba_threads(self.compute)


def set_numba_threads(n: int) -> None:
    """Use ``n`` numba threads in the calling thread (numba's setting is per thread), capped by its pool."""
    import numba
    from diskgnn.threads import start_numba_threads
    start_numba_threads()
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)


def open_packed(packed_dir):
    """Open a packed directory and check it belongs to its samples and dataset."""
    from diskgnn.store import Packed
    packed = Packed.open(packed_dir)
    samples, ds = packed.samples, packed.dataset
    if samples.dataset_fingerprint != ds.fingerprint:
        raise MismatchError(f"{packed_dir} was packed from samples of dataset {samples.dataset_fingerprint}, but "
                            f"its dataset {ds.path} has fingerprint {ds.fingerprint}; run sample and pack again")
    return packed


# --- batches ------------------------------------------------------------------------------------

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
    seeds: np.ndarray
    """int64 global ids of the output rows (``blocks[-1]``'s destinations)."""
    x: torch.Tensor | None = None
    """float32 [len(input_nodes), F] input features (on the loader's device)."""
    pairs: torch.Tensor | None = None
    """Link prediction: int64 [P, 2 + k] seed positions of each positive edge and its negatives."""
    extent: Any = None
    ready: Any = None
    """A CUDA event recorded on the side stream after the copies (None on CPU)."""
    samples: Any = field(default=None, repr=False)
    """The samples the batch came from (:attr:`input_nodes` are read from them on first use)."""
    _input_nodes: np.ndarray | None = field(default=None, repr=False)
    """:attr:`input_nodes` once read."""

    @property
    def input_nodes(self) -> np.ndarray:
        """int64 global ids of ``x``'s rows (``blocks[0]``'s sources).

        Read from the samples on first use: the loader assembles ``x`` from the store's map
        and never needs them, and they are the largest per-batch file it would read.
        """
        if self._input_nodes is None:
            self._input_nodes = self.samples.input_nodes(self.part, self.index)
        return self._input_nodes

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
        n = self.blocks[0].num_src if self.blocks else len(self.input_nodes)
        return (f"Batch({self.part}/{self.index}: {len(self.seeds)} seeds, {n} input nodes, "
                f"{len(self.blocks)} blocks, x={shape})")


class BatchStages:
    """The stage functions of a loader (load > read > assemble); :meth:`pipeline` chains them in threads."""

    def __init__(self, samples, labels: np.ndarray, features: FeatureSource, device: torch.device, *,
                 assemble_threads: int | None = None):
        self.samples, self.labels, self.features, self.device = samples, labels, features, device
        self.cuda = device.type == "cuda"
        self.side_stream = torch.cuda.Stream(device) if self.cuda else None
        self.direct = bool(getattr(features, "direct_index_reads", False))
        """Read the blocks with O_DIRECT (the store found no page cache to keep them in; see
        :meth:`diskgnn.store.FeatureStore._choose_index_reads`)."""
        self.assemble_threads = assemble_threads
        """numba threads of the assembly stage's gathers (None: numba's default); see
        :class:`diskgnn.train.ThreadBudget`."""

    def load(self, key: tuple[str, int]) -> Batch:
        part, i = key
        mb = self.samples.batch(part, i, input_nodes=False, direct=self.direct)
        blocks = [TorchBlock.from_block(b) for b in mb.blocks]
        pairs = None
        if mb.pairs is not None:  # link prediction: no labels, the pairs say what to score
            pairs = torch.from_numpy(mb.pairs.astype(np.int64))
            y = torch.empty(0, dtype=torch.int64)
        else:
            y = torch.from_numpy(np.asarray(self.labels[mb.seeds], dtype=np.int64))
        if self.cuda:
            blocks = [b.pin_memory() for b in blocks]
            y = y.pin_memory()
            pairs = pairs.pin_memory() if pairs is not None else None
        return Batch(part=part, index=i, blocks=blocks, y=y, seeds=np.asarray(mb.seeds), pairs=pairs,
                     samples=self.samples)

    def read(self, batch: Batch) -> Batch:
        batch.extent = self.features.read(batch.part, batch.index)
        return batch

    def assemble(self, batch: Batch) -> Batch:
        if self.assemble_threads:
            set_numba_threads(self.assemble_threads)  # per thread: the compute thread keeps its own count
        if self.cuda:
            with torch.cuda.stream(self.side_stream):
                batch.x = self.features.assemble(batch.part, batch.index, batch.extent)
                batch.blocks = [b.to(self.device, non_blocking=True) for b in batch.blocks]
                batch.y = batch.y.to(self.device, non_blocking=True)
                if batch.pairs is not None:
                    batch.pairs = batch.pairs.to(self.device, non_blocking=True)
                batch.ready = torch.cuda.Event()
                batch.ready.record(self.side_stream)
        else:
            batch.x = self.features.assemble(batch.part, batch.index, batch.extent)
        batch.extent = None  # the read buffer can go back to the store
        return batch

    def pipeline(self, keys: list[tuple[str, int]], depth: int, name: str) -> Pipeline:
        if hasattr(self.features, "plan_reads"):  # the store queues each next read before waiting on this one
            self.features.plan_reads(keys)
        return Pipeline(keys, [("load", self.load), ("read", self.read), ("assemble", self.assemble)],
                        depth=depth, consumer="compute", name=name)


class Loader:
    """One pass over presampled batches ``keys`` (``(part, index)`` pairs, in order) through the pipeline.

    Iterating starts the stage threads (load, read, assemble), yields each
    :class:`Batch` ready for the model (CUDA copies waited for) and stops
    them when the loop ends or is left early. :meth:`stats` gives each
    stage's busy and wait time of the last pass (the consumer is ``compute``).
    """

    def __init__(self, stages: BatchStages, keys, *, depth: int = 2, name: str = "loader"):
        self.stages = stages
        self.keys = [(str(p), int(i)) for p, i in keys]
        self.depth = depth
        self.name = name
        self._pipe: Pipeline | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Batch]:
        pipe = self.stages.pipeline(self.keys, self.depth, self.name)
        self._pipe = pipe
        with pipe:
            for batch in pipe:
                batch.wait()
                yield batch

    def stats(self) -> dict:
        """Per stage ``{busy_s, wait_s, ...}`` of the last pass (empty before the first)."""
        return self._pipe.stats() if self._pipe is not None else {}

    def __repr__(self) -> str:
        parts = sorted({p for p, _ in self.keys})
        return (f"Loader({self.name!r}: {len(self.keys)} batches of {', '.join(parts) or 'nothing'}, "
                f"device={self.stages.device}, queue depth {self.depth})")


class PackedData:
    """A packed directory opened for training: its samples, dataset, feature store and loaders.

    ``device``: where batches land (``auto``: CUDA when available). ``memory_budget``
    bounds the store's tiers and buffers together with ``queue_depth + 2`` assembled
    batches in flight and (on the host) room for the model's temporaries. Close it
    (or use ``with``) to stop its reader threads.
    """

    def __init__(self, path, *, device: str | torch.device = "auto", memory_budget=None, queue_depth: int = 2,
                 threads: int | None = None, assemble_threads: int | None = None, io_depth: int = 8,
                 io_request: int = 1 << 20, model_bytes: int = 0, recheck_reads: bool = False):
        from diskgnn.memory import TrainingMemory
        from diskgnn.store import FeatureStore
        self.packed = open_packed(path) if not hasattr(path, "samples") else path
        self.samples, self.dataset = self.packed.samples, self.packed.dataset
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        if queue_depth < 1:
            raise ConfigError(f"queue_depth must be at least 1, got {queue_depth}")
        self.queue_depth = queue_depth
        budget = ThreadBudget.of(threads, assemble_threads)
        budget.apply_to_compute_thread()
        training = TrainingMemory(queue_depth=queue_depth, model_bytes=int(model_bytes),
                                  activation_batches=0 if self.device.type == "cuda" else 6)
        self.store = FeatureStore(self.packed, self.device, memory_budget=memory_budget, training=training,
                                  io_depth=io_depth, request_size=io_request, recheck_reads=recheck_reads)
        self.stages = BatchStages(self.samples, self.dataset.labels, self.store, self.device,
                                  assemble_threads=budget.assemble)

    # --- what the data is ------------------------------------------------------------------------

    @property
    def num_nodes(self) -> int:
        return int(self.dataset.num_nodes)

    @property
    def feat_dim(self) -> int:
        return int(self.dataset.feat_dim)

    @property
    def num_classes(self) -> int:
        return int(self.dataset.num_classes)

    @property
    def num_layers(self) -> int:
        """Blocks per batch (the sampling fanouts' count): the depth a model needs."""
        return int(self.samples.config.num_layers)

    @property
    def parts(self) -> list[str]:
        return list(self.samples.parts)

    @property
    def train_parts(self) -> list[str]:
        """Presampled training epochs (``train/0`` ..): epoch e uses ``train/(e % K)``."""
        return list(self.samples.train_parts)

    def num_batches(self, part: str) -> int:
        return int(self.samples.num_batches(self._part(part, 0)))

    # --- loaders ---------------------------------------------------------------------------------

    def _part(self, part: str, epoch: int) -> str:
        if part == "train":
            return self.train_parts[epoch % len(self.train_parts)]
        if part not in self.parts:
            raise ConfigError(f"{self.packed.path} has no part {part!r}; choose train, "
                              f"{', '.join(self.parts)}")
        return part

    def order(self, part: str = "train", *, epoch: int = 0, shuffle: bool | None = None,
              seed: int = 0) -> list[tuple[str, int]]:
        """The ``(part, index)`` keys a loader visits (see :meth:`loader`)."""
        name = self._part(part, epoch)
        nb = self.samples.num_batches(name)
        if shuffle is None:
            shuffle = part == "train" or name.startswith("train/")
        order = (epoch_permutation(seed, epoch, nb, self.store.segments(name)) if shuffle
                 else np.arange(nb, dtype=np.int64))
        return [(name, int(i)) for i in order]

    def loader(self, part: str = "train", *, epoch: int = 0, shuffle: bool | None = None,
               seed: int = 0) -> Loader:
        """The batches of one pass over ``part``.

        ``part="train"`` is presampled epoch ``epoch % K`` (``train/0`` ..) in the
        trainer's order for ``(seed, epoch)``: shuffled, segment by segment under a
        disk budget; ``val``, ``test`` (or any part named) come in order unless
        ``shuffle``.
        """
        return Loader(self.stages, self.order(part, epoch=epoch, shuffle=shuffle, seed=seed),
                      depth=self.queue_depth, name=f"{part} epoch {epoch}" if part == "train" else part)

    # --- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "PackedData":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        ds = self.dataset
        parts = ", ".join(f"{p} ({self.samples.num_batches(p)} batches)" for p in self.parts)
        return (f"PackedData({str(self.packed.path)!r}: {ds.num_nodes} nodes, {ds.feat_dim}-d {ds.feat_dtype} "
                f"features stored as {self.packed.store_dtype}, {ds.num_classes} classes, {self.num_layers} layers; "
                f"{parts}; layout {self.packed.layout}; device {self.device})")


def open(path, **kwargs) -> PackedData:  # noqa: A001 - diskgnn.open reads like the builtin on purpose
    """Open a packed directory (the output of ``diskgnn pack``) for a custom training loop; see :class:`PackedData`."""
    return PackedData(path, **kwargs)
