"""Feature sources of the benchmarked systems, all behind the trainer's FeatureSource interface.

``read(part, i)`` is the I/O stage and ``assemble(part, i, read)`` the
assembly stage, so every system runs in the same threaded pipeline
(:class:`diskgnn.pipeline.Pipeline`): the comparison is about where the bytes
come from, not about who got a prefetch thread.
"""
from __future__ import annotations

import concurrent.futures as cf
import mmap
import os

import numpy as np
import torch

from diskgnn.cgroup import thread_read_bytes
from diskgnn.dataset import bf16_bits_to_float32
from diskgnn.io import ALIGN, aligned_empty


def _widen(rows: np.ndarray, dtype_name: str) -> np.ndarray:
    return bf16_bits_to_float32(rows) if dtype_name == "bf16" else np.asarray(rows, dtype=np.float32)


def gather_memmap(features: np.ndarray, ids: np.ndarray, dtype_name: str) -> tuple[torch.Tensor, int]:
    """Rows ``ids`` of a memory-mapped feature matrix as float32 (read in ascending id order, as a DGL user's
    memmap gather would) and the bytes this thread read from disk for them."""
    order = np.argsort(ids, kind="stable")
    rows = np.empty((ids.shape[0], features.shape[1]), dtype=features.dtype)
    before = thread_read_bytes()
    rows[order] = features[ids[order]]
    read = thread_read_bytes() - before
    return torch.from_numpy(_widen(rows, dtype_name)), read


class MmapFeatures:
    """Rows gathered from a numpy.memmap of features.bin in sorted id order (the page cache does the caching).

    ``random_advice``: madvise(MADV_RANDOM), the strong form; otherwise the kernel's default readahead.
    """

    def __init__(self, samples, dataset, *, random_advice: bool = True):
        self.samples, self.dataset = samples, dataset
        self.features = np.memmap(dataset.features_path, dtype=dataset.features.dtype, mode="r",
                                  shape=(dataset.num_nodes, dataset.feat_dim))
        if random_advice and hasattr(mmap, "MADV_RANDOM"):
            self.features._mmap.madvise(mmap.MADV_RANDOM)
        self._useful = 0
        self._read = 0

    def read(self, part: str, i: int) -> np.ndarray:
        ids = np.asarray(self.samples.input_nodes(part, i))
        order = np.argsort(ids, kind="stable")
        rows = np.empty((ids.shape[0], self.dataset.feat_dim), dtype=self.features.dtype)
        before = thread_read_bytes()  # page faults are served in this thread
        rows[order] = self.features[ids[order]]
        self._read += thread_read_bytes() - before
        self._useful += rows.nbytes
        return rows

    def assemble(self, part: str, i: int, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(_widen(rows, self.dataset.feat_dtype))

    def stats(self) -> dict:
        return {"bytes_useful": self._useful, "bytes_read": self._read}


class InMemoryFeatures(MmapFeatures):
    """All rows in RAM (the ceiling; run without a memory cap), gathered by diskgnn's own numba gather
    kernel, so the ceiling is not slowed by numpy fancy indexing."""

    def __init__(self, samples, dataset):
        from diskgnn.store import HostTier
        self.samples, self.dataset = samples, dataset
        self.features = np.fromfile(dataset.features_path, dtype=dataset.features.dtype).reshape(
            dataset.num_nodes, dataset.feat_dim)
        self.tier = HostTier(self.features, dataset.feat_dtype)
        self._useful = 0
        self._read = 0

    def read(self, part: str, i: int) -> np.ndarray:
        return np.asarray(self.samples.input_nodes(part, i), dtype=np.int64)

    def assemble(self, part: str, i: int, ids: np.ndarray) -> torch.Tensor:
        out = np.empty((ids.shape[0], self.dataset.feat_dim), dtype=np.float32)
        self.tier.gather_into(ids, np.arange(ids.shape[0], dtype=np.int64), out)
        self._useful += ids.shape[0] * self.dataset.row_bytes
        return torch.from_numpy(out)


class PreadFeatures:
    """The same memory tiers as diskgnn, but uncached rows come by per-row O_DIRECT reads of features.bin.

    What a system without packing does: every missing row costs at least one
    4 KiB page, read with ``depth`` requests in flight.
    """

    def __init__(self, samples, dataset, store, *, depth: int = 64):
        self.samples, self.dataset, self.store = samples, dataset, store
        self.row_bytes = dataset.row_bytes
        self.fd = os.open(dataset.features_path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        self.depth = depth
        self.pool = cf.ThreadPoolExecutor(max_workers=depth)
        self._read = 0
        self._useful = 0

    def _read_rows(self, nodes: np.ndarray) -> np.ndarray:
        rb = self.row_bytes
        out = np.empty((nodes.shape[0], rb), dtype=np.uint8)
        chunks = np.array_split(np.arange(nodes.shape[0]), min(self.depth, max(1, nodes.shape[0])))

        def work(idx):
            span = ((rb + ALIGN - 1) // ALIGN + 1) * ALIGN
            buf = aligned_empty(span)
            view = memoryview(buf)
            total = 0
            for j in idx:
                start = int(nodes[j]) * rb
                lo = start - start % ALIGN
                hi = -(-(start + rb) // ALIGN) * ALIGN
                got = os.preadv(self.fd, [view[:hi - lo]], lo)
                total += got
                out[j] = buf[start - lo:start - lo + rb]
            return total

        self._read += sum(self.pool.map(work, [c for c in chunks if c.size]))
        return out

    def read(self, part: str, i: int):
        n, counts, rows, positions = self.store._split(part, i)
        disk = len(self.store.tiers)
        c = int(counts[disk])
        pos = positions[disk, :c].copy()
        nodes = np.asarray(self.samples.input_nodes(part, i))[pos]
        raw = self._read_rows(nodes) if c else np.zeros((0, self.row_bytes), dtype=np.uint8)
        self._useful += c * self.row_bytes
        return n, counts, rows, positions, pos, raw

    def assemble(self, part: str, i: int, read) -> torch.Tensor:
        n, counts, rows, positions, pos, raw = read
        out = np.empty((n, self.dataset.feat_dim), dtype=np.float32)
        for t, tier in enumerate(self.store.tiers):
            c = int(counts[t])
            if c:
                tier.gather_into(rows[t, :c], positions[t, :c], out)
        if pos.size:
            out[pos] = _widen(raw.view(self.dataset.features.dtype).reshape(pos.size, -1), self.dataset.feat_dtype)
        return torch.from_numpy(out)

    def stats(self) -> dict:
        s = self.store.stats()
        return {"bytes_useful": self._useful, "bytes_read": self._read, "hit_rate": s.get("hit_rate")}


def make_features(system: str, samples, dataset, packed_dir=None, training=None):
    """The FeatureSource of ``system``; ``training`` (a :class:`diskgnn.memory.TrainingMemory`) is what the
    process holds beside diskgnn's store, which plans its memory with it."""
    if system == "in-memory":
        return InMemoryFeatures(samples, dataset)
    if system in ("mmap", "mmap-readahead"):
        return MmapFeatures(samples, dataset, random_advice=(system == "mmap"))
    from diskgnn.store import FeatureStore, Packed
    packed = Packed.open(packed_dir, samples=samples, dataset=dataset)
    store = FeatureStore(packed, "cpu", training=training)
    if system == "pread":
        return PreadFeatures(samples, dataset, store)
    if system == "diskgnn":
        return store
    raise ValueError(f"unknown system {system!r}")
