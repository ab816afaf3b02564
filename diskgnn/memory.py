"""The memory budget of a step: one place that turns ``--memory-budget`` into bytes.

Every step (prepare, sample, pack, train) takes ``--memory-budget``; without
it the budget is the memory available now (psutil, capped by this process's
memory cgroup), so a step started inside a container or a benchmark cgroup
plans for the memory it really has.

A size text (what the command line passes) must be at least :data:`MIN_BUDGET`;
a number of bytes given by code (tests, a rank's share of the node budget) is
taken as it is, as long as it is positive.
"""
from __future__ import annotations

from dataclasses import dataclass

from diskgnn.errors import ConfigError

MIN_BUDGET = 16 << 20
"""Below this no step can do useful work; smaller values are almost certainly a typo (``2`` for ``2G``)."""


def resolve_memory_budget(value=None, *, name: str = "--memory-budget", fraction: float = 1.0) -> int:
    """Bytes of memory a step may use.

    ``value`` is bytes (int), a size text (``512M``, ``2G``) or None for the
    available memory times ``fraction`` (the share a step plans for, leaving
    room for the interpreter and the page cache).
    """
    from diskgnn.sizes import parse_size
    if value is None:
        from diskgnn.capabilities import available_memory
        return max(int(available_memory() * fraction), MIN_BUDGET)
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be bytes or a size such as 512M or 2G, got {value!r}")
    if not isinstance(value, str):
        try:
            budget = int(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name} must be bytes or a size such as 512M or 2G, got {value!r}") from None
        if budget <= 0:
            raise ConfigError(f"{name} must be positive, got {value!r}; give bytes such as 512M or 2G")
        return budget
    if value.strip().startswith("-"):
        raise ConfigError(f"{name} must be positive, got {value!r}; give bytes such as 512M or 2G")
    budget = parse_size(value, name=name)
    if budget < MIN_BUDGET:
        raise ConfigError(f"{name} {value!r} is below the minimum of 16M; give bytes such as 512M or 2G")
    return budget


def describe_budget(value, budget: int) -> str:
    """How an error message names the budget: the one given, or the available memory it defaulted to."""
    from diskgnn.sizes import format_bytes
    if value is None:
        return f"the available memory ({format_bytes(budget)})"
    return f"the memory budget {format_bytes(budget)}"


@dataclass(frozen=True, slots=True)
class TrainingMemory:
    """What training holds in host memory beside the feature store's tiers and read buffers."""
    queue_depth: int
    """Items buffered between pipeline stages (``TrainConfig.queue_depth``)."""
    model_bytes: int
    """Host bytes of the model's parameters, gradients and optimizer state (0 when they live on a GPU)."""
    activation_batches: int = 6
    """Forward/backward temporaries of the batch being computed on the host, in multiples of its feature
    matrix (0 on a GPU). Measured: GraphSAGE 2x128 at scale m holds about 5 matrices' worth above the
    in-flight and kept matrices at its peak; 6 since the kept matrices are no longer added on top of the
    in-flight ones (so a training plan's total is what it was), plus the one being computed in
    ``in_flight_batches``."""

    @property
    def in_flight_batches(self) -> int:
        """Assembled batches alive at once: a full queue, the one being assembled and the one being computed."""
        return self.queue_depth + 2


@dataclass(frozen=True, slots=True)
class HostMemoryPlan:
    """Host bytes a feature store (and the trainer reading from it) holds at most."""
    tiers: int
    """The memory tiers loaded on the host (the device tier too without CUDA)."""
    read_buffers: int
    """Aligned buffers of the extents being read or waiting to be assembled."""
    in_flight_batches: int
    """Assembled feature matrices alive at once (0 for the store alone)."""
    batch_bytes: int
    """Bytes of the largest batch's assembled float32 matrix (a pinned staging copy with CUDA)."""
    model: int
    """Parameters, gradients and optimizer state on the host."""
    spare_batches: int = 0
    """Assembled matrices kept for reuse once their batch is done (fresh pages cost more than copying rows).
    They are drawn from the in-flight ones: a matrix is made only when none is kept, so the matrices alive
    (in use or kept) never outnumber the most in use at once, and the plan counts the larger of the two."""
    process: int = 0
    """What the process already holds (anonymous memory: the Python, torch and numba runtimes, indexes)."""
    activation_batches: int = 0
    """Forward/backward temporaries, in feature matrices of the largest batch."""
    segment_buffers: int = 0
    """Segments of the disk-budget layout held in memory (the one in use and the one read ahead)."""
    batch_index_bytes: int = 0
    """The largest batch's sampled blocks, as the loader holds them (the int64 tensors of the model and the
    arrays they were made from), and its feature map. Counted for every batch the pipeline holds: the
    in-flight ones and the two between loading and assembly."""
    runtime_files: int = 0
    """Page cache the program's own code needs (torch, numba and their libraries). Under a memory cgroup
    those pages count against the cap; a plan that leaves no room for them makes the process read its
    code from disk again and again."""

    @property
    def in_flight(self) -> int:
        return (max(self.in_flight_batches, self.spare_batches) + self.activation_batches) * self.batch_bytes

    @property
    def indexes(self) -> int:
        """The blocks and maps of the batches the pipeline holds (none for the store alone)."""
        return (self.in_flight_batches + 2) * self.batch_index_bytes if self.in_flight_batches else 0

    @property
    def total(self) -> int:
        return (self.tiers + self.read_buffers + self.segment_buffers + self.in_flight + self.indexes + self.model
                + self.process + self.runtime_files)


def process_rss_bytes() -> int:
    """Resident memory of this process (anonymous and file-mapped), or 0 where it cannot be read."""
    try:
        import psutil
        return int(psutil.Process().memory_info().rss)
    except Exception:  # no way to tell: count nothing rather than fail
        return 0


def process_anon_bytes() -> int:
    """Anonymous memory this process holds now (RssAnon; the whole RSS where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
        return int(psutil.Process().memory_info().rss)
    except Exception:  # no way to tell: count nothing rather than fail
        return 0
