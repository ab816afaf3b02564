"""The packed feature store (stage 3 output) and the four-level feature store that trains from it.

A packed directory holds, besides ``manifest.json`` (format ``diskgnn.packed``):

* ``tier_device.bin``, ``tier_pinned.bin``, ``tier_host.bin``: the cached rows
  [rows, F] in the storage dtype (bf16/fp16 as uint16 bits). Slots number the
  rows of all tiers together: device slots first, then pinned, then host;
  inside a tier rows are sorted by node id (so the packer writes them while
  streaming ``features.bin``).
* ``cache_nodes.bin`` int64 [n_cached]: the node held by each slot.
* ``packed.bin``: every batch's uncached rows. Plain layout: one extent per
  batch, starting on a 4096-byte boundary, its rows ordered by node block of
  features.bin (``block_rows`` in the manifest) and in input order inside a
  block, so a streamed pack writes each block's stretch of every extent as
  soon as the block was read. Under a disk budget: one extent per *segment* of
  consecutive batches of one part, each row stored once per segment, by node
  id; the segment's batches share one read run, so a pass reads the segment
  once and keeps it in memory while they are assembled. A streamed pack records no
  whole-file crc32 for packed.bin (its writes are not sequential): the
  per-run checksums in runs.bin cover every byte a batch reads.
* ``maps.bin`` int32/int64 [T]: per input node of every batch, in the
  samples' order: a value v < n_cached is a cache slot; v >= n_cached is row
  v - n_cached of the batch's extent (plain) or segment.
* ``batches.bin`` int64 [G, 5]: per batch (parts in manifest order): map range
  (lo, hi) in maps.bin, run range (lo, hi) in runs.bin, and the byte offset of
  its extent/segment in packed.bin.
* ``runs.bin`` int64 [R, 3]: (first page relative to the extent, pages, crc32 of
  those pages), checked on every read so a damaged extent never trains silently.

:class:`FeatureStore` loads the memory tiers and serves batches:
:meth:`FeatureStore.read` is the I/O stage (aligned O_DIRECT reads of the
batch's page runs, GIL released; with :meth:`FeatureStore.plan_reads` the next
batch's or segment's requests are queued before the current read is waited
for, so the disk never idles between batches), :meth:`FeatureStore.assemble`
gathers rows from tiers and the read buffer with nogil kernels into a float32
matrix.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import weakref
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from diskgnn.dataset import ArraySpec, Dataset, array_crc32, feature_dtype, open_array
from diskgnn.dtypes import convert_rows, to_float32, upcast_table  # noqa: F401 (to_float32 re-exported)
from diskgnn.errors import ConfigError, DiskGNNError, IntegrityError, ManifestError, MemoryBudgetError, MismatchError
from diskgnn.io import ALIGN, IO_DEPTH, REQUEST_SIZE, AlignedReader, aligned_empty, pread_elements
from diskgnn.kernels.gather import (assemble_map, assemble_map_lut, extent_row_starts, gather_flat,
                                    gather_flat_lut, gather_rows, gather_rows_lut, split_map)
from diskgnn.kernels.packing import tier_hits
from diskgnn.manifest import file_crc32, read_manifest
from diskgnn.memory import (HostMemoryPlan, TrainingMemory, describe_budget, process_anon_bytes,
                            resolve_memory_budget)
from diskgnn.progress import ProgressFn, no_progress
from diskgnn.sizes import format_bytes

log = logging.getLogger(__name__)

FORMAT = "diskgnn.packed"
VERSION = 1
TIER_NAMES = ("device", "pinned", "host")


def samples_fingerprint(samples) -> str:
    """A short id of a samples directory (its own ``fingerprint`` when it has one, else of its manifest)."""
    fp = getattr(samples, "fingerprint", None)
    if isinstance(fp, str) and fp:
        return fp
    manifest = {k: v for k, v in dict(samples.manifest).items() if k != "created"}
    return f"{zlib.crc32(json.dumps(manifest, sort_keys=True, default=str).encode()):08x}"


# --- tiers ---------------------------------------------------------------------------------

RUNTIME_FILE_PAGES = 128 << 20
"""Page cache a training process keeps for its own code (torch, numba and their libraries): part of its
memory plan (``HostMemoryPlan.runtime_files``). Measured at scale m, 3 layers, 2 GiB cgroup: a plan without
it left 70 MiB beside 1,980 MiB of anonymous memory, and one run of about ten was killed by the cgroup."""
INDEX_BYTES_PER_OFFSET = 20
"""Loader bytes per block offset of a batch: the int64 offsets, the int64 degrees and the float32 in-degrees."""
INDEX_BYTES_PER_EDGE = 20
"""Loader bytes per sampled edge: the int32 source id read, and the int64 source and destination tensors."""


class HostTier:
    """Cached rows in host memory: the ``lookup(rows) -> float32 rows`` interface every tier offers."""

    name = "host"

    def __init__(self, rows: np.ndarray, store_dtype: str):
        if rows.ndim != 2:
            raise ConfigError(f"{self.name} tier rows must be 2-D, got shape {rows.shape}")
        self.rows = rows
        self.store_dtype = store_dtype
        self._lut = upcast_table(store_dtype)

    @property
    def num_rows(self) -> int:
        return int(self.rows.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes)

    def _check(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= self.num_rows):
            raise IntegrityError(f"{self.name} tier: row {int(rows.max()) if rows.max() >= self.num_rows else int(rows.min())} "
                                 f"is outside 0..{self.num_rows - 1}; the packed index is corrupt, re-run pack")
        return rows

    def gather_into(self, rows: np.ndarray, positions: np.ndarray, out: np.ndarray) -> None:
        """``out[positions[i]] = row rows[i]`` as float32 (``out``: float32 [n, F] numpy array)."""
        rows = self._check(rows)
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        if self._lut is None:
            gather_rows(self.rows, rows, positions, out)
        else:
            gather_rows_lut(self.rows.view(np.uint16), rows, positions, self._lut, out)

    def lookup(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of this tier as float32 [len(rows), F]."""
        rows = self._check(rows)
        out = np.empty((rows.size, self.rows.shape[1]), dtype=np.float32)
        self.gather_into(rows, np.arange(rows.size, dtype=np.int64), out)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rows={self.num_rows}, {format_bytes(self.nbytes)}, {self.store_dtype})"


class PinnedTier(HostTier):
    """Cached rows in page-locked host memory when CUDA is present (plain host memory otherwise)."""

    name = "pinned"

    def __init__(self, rows: np.ndarray, store_dtype: str, *, pin: bool = False):
        self.pinned = None
        if pin and rows.size:
            import torch
            t = torch.from_numpy(_torch_compatible(rows)).pin_memory()
            self.pinned = t
            rows = t.numpy().view(rows.dtype)
        super().__init__(rows, store_dtype)


class DeviceTier(HostTier):
    """Cached rows on the training device: a CUDA tensor on a GPU, host memory without one."""

    name = "device"

    def __init__(self, rows: np.ndarray, store_dtype: str, device=None):
        super().__init__(rows, store_dtype)
        self.device = device
        self.tensor = None
        if device is not None and getattr(device, "type", "cpu") == "cuda" and rows.size:
            import torch
            t = torch.from_numpy(_torch_compatible(rows)).to(device)
            if store_dtype == "fp16":
                t = t.view(torch.float16)
            elif store_dtype == "bf16":
                t = t.view(torch.bfloat16)
            self.tensor = t
            self.rows = np.empty((0, rows.shape[1]), dtype=rows.dtype)  # the host copy is dropped
            self._num_rows = int(rows.shape[0])

    @property
    def num_rows(self) -> int:
        return self._num_rows if self.tensor is not None else int(self.rows.shape[0])

    @property
    def nbytes(self) -> int:
        if self.tensor is not None:
            return int(self.tensor.numel() * self.tensor.element_size())
        return int(self.rows.nbytes)

    def gather_into_tensor(self, rows, positions, out) -> None:
        """On CUDA: ``out[positions] = tensor[rows].float()`` with device index tensors."""
        out.index_copy_(0, positions, self.tensor.index_select(0, rows).float())

    def lookup(self, rows: np.ndarray) -> np.ndarray:
        if self.tensor is None:
            return super().lookup(rows)
        import torch
        rows = self._check(rows)
        return self.tensor.index_select(0, torch.from_numpy(rows).to(self.tensor.device)).float().cpu().numpy()


def _torch_compatible(a: np.ndarray) -> np.ndarray:
    """uint16 bit patterns viewed as int16 (older torch cannot wrap uint16 arrays)."""
    return a.view(np.int16) if a.dtype == np.uint16 else a


class ExtentTier:
    """The rows of one batch's extent/segment that :meth:`FeatureStore.read` brought into memory."""

    name = "disk"

    def __init__(self, read: "ExtentRead", row_bytes: int, feat_dim: int, store_dtype: str):
        self.read = read
        self.row_bytes = row_bytes
        self.feat_dim = feat_dim
        self.store_dtype = store_dtype
        self._dtype = feature_dtype(store_dtype)
        self._lut = upcast_table(store_dtype)

    def starts(self, rows: np.ndarray) -> np.ndarray:
        """Element offsets of ``rows`` in the read buffer; raises on rows the read did not cover."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        r = self.read
        starts = extent_row_starts(rows, self.row_bytes, self._dtype.itemsize, r.run_pages, r.run_npages,
                                   r.run_buf_pages, ALIGN)
        if starts.size and int(starts.min()) < 0:
            bad = int(rows[np.flatnonzero(starts < 0)[0]])
            raise IntegrityError(f"batch {r.part}/{r.index}: extent row {bad} lies outside the pages read; "
                                 f"the packed index is corrupt, re-run pack")
        return starts

    def gather_into(self, rows: np.ndarray, positions: np.ndarray, out: np.ndarray) -> None:
        starts = self.starts(rows)
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        flat = self.read.buffer.view(self._dtype if self._lut is None else np.uint16)
        if self._lut is None:
            gather_flat(flat, starts, positions, self.feat_dim, out)
        else:
            gather_flat_lut(flat, starts, positions, self.feat_dim, self._lut, out)

    def lookup(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.feat_dim), dtype=np.float32)
        self.gather_into(rows, np.arange(rows.size, dtype=np.int64), out)
        return out


# --- the packed directory ----------------------------------------------------------------------

class Packed:
    """A read-only view of a packed directory (manifest checked, files sized, sources matched)."""

    def __init__(self, path: str | os.PathLike, manifest: dict, *, samples=None, dataset: Dataset | None = None):
        self.path = Path(path)
        self.manifest = manifest
        where = self.path / "manifest.json"
        try:
            self.num_nodes = int(manifest["num_nodes"])
            self.feat_dim = int(manifest["feat_dim"])
            self.store_dtype = str(manifest["store_dtype"])
            self.row_bytes = int(manifest["row_bytes"])
            self.n_cached = int(manifest["n_cached"])
            self.tier_rows = {t["name"]: int(t["rows"]) for t in manifest["tiers"]}
            self.layout = str(manifest["layout"])
            self._parts = [(str(p["name"]), int(p["first_batch"]), int(p["num_batches"])) for p in manifest["parts"]]
            self.specs = {name: ArraySpec.from_json(obj, str(where)) for name, obj in manifest["files"].items()}
            self.stats = dict(manifest.get("stats", {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(f"{where} lacks a valid field ({exc}); re-run diskgnn pack") from None
        if set(self.tier_rows) != set(TIER_NAMES) or min(self.tier_rows.values()) < 0:
            raise IntegrityError(f"{where}: tiers {self.tier_rows} must be {', '.join(TIER_NAMES)} with row counts "
                                 f">= 0; re-run diskgnn pack")
        if self.store_dtype not in ("fp32", "fp16", "bf16"):
            raise IntegrityError(f"{where}: unknown store dtype {self.store_dtype!r}")
        if self.row_bytes != self.feat_dim * feature_dtype(self.store_dtype).itemsize:
            raise IntegrityError(f"{where}: row_bytes {self.row_bytes} does not match {self.feat_dim} x "
                                 f"{self.store_dtype}")
        for name in ("packed", "maps", "batches", "runs", "cache_nodes", *(f"tier_{t}" for t in TIER_NAMES)):
            if name not in self.specs:
                raise IntegrityError(f"{where} does not list the {name} file; re-run diskgnn pack")
        # The kernels index with these arrays: a float or odd-shaped one must stop here.
        store = feature_dtype(self.store_dtype).newbyteorder("<").str
        expected = {"packed": (("|u1",), 1), "maps": (("<i4", "<i8"), 1), "batches": (("<i8",), 2),
                    "runs": (("<i8",), 2), "cache_nodes": (("<i8",), 1),
                    **{f"tier_{t}": ((store,), 2) for t in TIER_NAMES}}
        for name, (dtypes, ndim) in expected.items():
            spec = self.specs[name]
            if spec.dtype not in dtypes or len(spec.shape) != ndim:
                raise IntegrityError(f"{where}: {name} is described as {spec.dtype} {list(spec.shape)}, expected "
                                     f"{' or '.join(dtypes)} with {ndim} dimension(s); re-run diskgnn pack")
        first = 0
        for name, fb, nb in self._parts:  # parts tile batches.bin in order
            raw = next(p for p in manifest["parts"] if str(p["name"]) == name)
            if not all(isinstance(raw[k], int) and not isinstance(raw[k], bool) for k in ("first_batch", "num_batches")) \
                    or fb != first or nb < 0:
                raise IntegrityError(f"{where}: part {name} claims batches {raw['first_batch']!r} + "
                                     f"{raw['num_batches']!r}, expected to start at {first}; re-run diskgnn pack")
            first += nb
        if first != self.specs["batches"].shape[0]:
            raise IntegrityError(f"{where}: the parts hold {first} batches, batches.bin has "
                                 f"{self.specs['batches'].shape[0]}; re-run diskgnn pack")
        if self.specs["runs"].shape[1] == 2:
            raise IntegrityError(f"{self.path} was packed by an older diskgnn (no per-run checksums in runs.bin); "
                                 f"re-run diskgnn pack to make it again")
        if self.specs["batches"].shape[1] != 5 or self.specs["runs"].shape[1] != 3 or any(
                self.specs[f"tier_{t}"].shape != (self.tier_rows[t], self.feat_dim) for t in TIER_NAMES):
            raise IntegrityError(f"{where}: the batches, runs or tier files have the wrong shape; re-run diskgnn pack")
        for spec in self.specs.values():
            path = self.path / spec.path
            if not path.exists():
                raise IntegrityError(f"{path} is missing although the manifest lists it; re-run diskgnn pack")
            if path.stat().st_size != spec.nbytes:
                what = "truncated" if path.stat().st_size < spec.nbytes else "longer than expected"
                raise IntegrityError(f"{path} is {what}: {path.stat().st_size} bytes on disk, the manifest "
                                     f"promises {spec.nbytes}; re-run diskgnn pack")
        self._part_index = {name: (first, nb) for name, first, nb in self._parts}
        self._samples = samples
        self._dataset = dataset
        self._arrays: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, *, samples=None, dataset: Dataset | None = None) -> "Packed":
        """Open a packed directory; ``samples``/``dataset`` default to the ones recorded in the manifest."""
        manifest = read_manifest(path, FORMAT, VERSION)
        packed = cls(path, manifest, samples=samples, dataset=dataset)
        packed.samples  # noqa: B018 -- opens and checks the samples now, so a mix-up fails early
        return packed

    def _resolve(self, key: str) -> Path:
        rec = self.manifest.get(key, {})
        if not isinstance(rec, dict) or not isinstance(rec.get("path", ""), str) \
                or not isinstance(rec.get("relpath") or "", str):
            raise IntegrityError(f"{self.path}/manifest.json: the {key} entry {rec!r} is not a path record; "
                                 f"re-run diskgnn pack")
        candidates = [Path(rec.get("path", ""))]
        if rec.get("relpath"):
            candidates.append((self.path / rec["relpath"]).resolve())
        for c in candidates:
            if str(c) and c.exists():
                return c
        raise ManifestError(f"{self.path} was packed from the {key} directory {rec.get('path')!r}, which no "
                            f"longer exists; training needs it: restore it or re-run diskgnn pack")

    @property
    def samples(self):
        """The samples this directory was packed from (their fingerprint is checked)."""
        if self._samples is None:
            from diskgnn.sampling import Samples
            self._samples = Samples.open(self._resolve("samples"))
        want = self.manifest.get("samples", {}).get("fingerprint")
        got = samples_fingerprint(self._samples)
        if want == got:
            for name, _, nb in self._parts:
                if name not in self._samples.parts or self._samples.num_batches(name) != nb:
                    raise IntegrityError(f"{self.path}/manifest.json: part {name} has {nb} batches, the samples "
                                         f"{self._samples.path} do not match; re-run diskgnn pack")
        if want != got:
            raise MismatchError(f"{self.path} was packed from samples with fingerprint {want}, but "
                                f"{getattr(self._samples, 'path', 'the samples given')} has {got}: they were "
                                f"re-sampled since; re-run diskgnn pack on them")
        return self._samples

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = Dataset.open(self._resolve("dataset"))
        want = self.manifest.get("dataset", {}).get("fingerprint")
        if self._dataset.fingerprint != want:
            raise MismatchError(f"{self.path} was packed from dataset {want}, but {self._dataset.path} is "
                                f"{self._dataset.fingerprint}; re-run diskgnn pack on the right dataset")
        return self._dataset

    @property
    def parts(self) -> list[str]:
        return [name for name, _, _ in self._parts]

    def num_batches(self, part: str) -> int:
        return self._part(part)[1]

    def _part(self, part: str) -> tuple[int, int]:
        try:
            return self._part_index[part]
        except KeyError:
            raise ConfigError(f"{self.path} has no part {part!r}; it has {', '.join(self.parts)}") from None

    def batch_id(self, part: str, index: int) -> int:
        """The global batch number of ``part``'s batch ``index`` (row of batches.bin)."""
        first, nb = self._part(part)
        if not 0 <= int(index) < nb:
            raise ConfigError(f"batch {index} of {part!r} does not exist: it has {nb} batches")
        if not self.holds(part, index):
            shards = self.manifest["shard"]["num_shards"]
            raise ConfigError(f"batch {index} of {part!r} belongs to shard {int(index) % shards} of {shards}, but "
                              f"{self.path} was packed for shard {self.manifest['shard']['shard']}; use that "
                              f"shard's packed directory")
        return first + int(index)

    def holds(self, part: str, index: int) -> bool:
        """Whether this directory packed batch ``index`` of ``part`` (``pack --num-shards`` packs every S-th)."""
        shard = self.manifest.get("shard") or {}
        shards = int(shard.get("num_shards", 1))
        return shards == 1 or int(index) % shards == int(shard.get("shard", 0))

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = open_array(self.path, self.specs[name])
        return self._arrays[name]

    @property
    def cache_nodes(self) -> np.ndarray:
        return self.array("cache_nodes")

    @property
    def tier_bounds(self) -> np.ndarray:
        """int64 [4]: first slot of the device, pinned and host tiers, then n_cached."""
        return np.cumsum([0] + [self.tier_rows[t] for t in TIER_NAMES]).astype(np.int64)

    def summary(self) -> dict:
        st = self.stats
        tiers = {}
        for t in TIER_NAMES:
            tiers[t] = {"rows": self.tier_rows[t], "bytes": self.specs[f"tier_{t}"].nbytes,
                        "hit_rate": st.get("hit_rate", {}).get(t)}
        return {
            "path": str(self.path), "format_version": self.manifest.get("version"),
            "samples": self.manifest.get("samples", {}).get("path"),
            "dataset": self.manifest.get("dataset", {}).get("path"),
            "store_dtype": self.store_dtype, "layout": self.layout,
            "segment_batches": self.manifest.get("segment_batches"),
            "parts": {name: nb for name, _, nb in self._parts},
            "tiers": tiers,
            "disk_hit_rate": st.get("hit_rate", {}).get("disk"),
            "cache_hit_rate": st.get("cache_hit_rate"), "belady_hit_rate": st.get("belady_hit_rate"),
            "packed_bytes": self.specs["packed"].nbytes, "feature_bytes": st.get("feature_bytes"),
            "blowup": st.get("blowup"), "footprint": st.get("footprint"),
            "read_amplification": st.get("read_amplification"),
            "seconds": st.get("seconds"), "pack_io_seconds": st.get("io_seconds"),
            "write_GBps": st.get("write_GBps"), "passes": st.get("passes"),
        }

    def __repr__(self) -> str:
        return (f"Packed({str(self.path)!r}, layout={self.layout}, store={self.store_dtype}, "
                f"cached={self.n_cached}, packed={format_bytes(self.specs['packed'].nbytes)})")


# --- the feature store ---------------------------------------------------------------------------

@dataclass(slots=True, eq=False)
class ExtentRead:
    """The pages of one batch's extent read into an aligned buffer (the read stage's output)."""
    part: str
    index: int
    buffer: np.ndarray
    """uint8 view of the bytes read: run k at page ``run_buf_pages[k]``."""
    run_pages: np.ndarray
    """int64: first page of each run inside the extent/segment."""
    run_npages: np.ndarray
    """int64: pages of each run."""
    run_buf_pages: np.ndarray
    """int64: first page of each run inside ``buffer``."""
    bytes_read: int
    """Bytes transferred from disk (0 for a batch served from a segment another batch read)."""
    _pooled: np.ndarray | None = field(default=None, repr=False)
    _pending: object = field(default=None, repr=False)
    """The reader's :class:`~diskgnn.io.PendingRead` until the bytes are checked (see ``FeatureStore._finish``)."""
    _crcs: list | None = field(default=None, repr=False)
    _runs: np.ndarray | None = field(default=None, repr=False)
    _run_lo: int = 0
    """Index of the first of ``_runs`` in runs.bin (marks them checked once their crc32 matched)."""
    _base: int = 0
    _shared: tuple | None = field(default=None, repr=False)
    """The key of the segment this batch's rows come from (released after assembly)."""
    batch_map: np.ndarray | None = field(default=None, repr=False)
    """The batch's map entries, read by the read stage while its pages are in flight (None: the
    assembly reads them)."""


class _HeldSegment:
    """A segment read into memory, shared by the batches of the segment while they use it."""

    def __init__(self, read: ExtentRead):
        self.read = read
        self.refs = 0
        self.lock = threading.Lock()
        self.done = False
        self.error: BaseException | None = None

    def wait_done(self) -> None:
        """Let the segment's requests finish (its buffer is reused after this)."""
        pending = self.read._pending
        if pending is not None:
            try:
                pending.wait()
            except BaseException:
                pass


GATHER_CHUNK_ROWS = 2048
"""Rows per work item of the parallel gathers (numba's dynamic chunking)."""
SPARE_OUTPUTS = 2
"""Assembled matrices a CPU store keeps for reuse (see :meth:`FeatureStore._take_output`)."""
READ_AHEAD = 1
"""Batches (or segments) whose reads are submitted before the read stage asks for them, so the disk has the
next requests queued while the current ones complete."""


class FeatureStore:
    """Serves exact input feature matrices from the memory tiers and the packed extents.

    ``device`` is the training device: the device tier lives there (host memory
    without CUDA) and :meth:`assemble` returns float32 tensors on it. The memory
    tiers are loaded at construction and checked against ``memory_budget``
    (default: the available memory), together with the read buffers and, when
    ``training`` says what the trainer holds, its in-flight batches and model.

    ``check_crc`` checks the index files when the store opens, and the crc32 of every run of
    packed.bin the first time it is read; ``recheck_reads`` checks the runs on every read
    instead (see :meth:`_must_check`). A mismatch is an :class:`IntegrityError`.
    """

    def __init__(self, packed, device="cpu", memory_budget=None, *, io_depth: int = IO_DEPTH,
                 request_size: int = REQUEST_SIZE, direct: bool | None = None, pool_size: int = 4,
                 mmap_tiers: bool = False, check_crc: bool = True, recheck_reads: bool = False,
                 training: TrainingMemory | None = None):
        import torch
        from diskgnn.threads import start_numba_threads
        start_numba_threads()  # idle gather threads sleep: the reader and the trainer share the cores
        self.packed = packed if isinstance(packed, Packed) else Packed.open(packed)
        p = self.packed
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.feat_dim, self.row_bytes, self.store_dtype = p.feat_dim, p.row_bytes, p.store_dtype
        self.check_crc = check_crc
        self.recheck_reads = bool(recheck_reads)
        self._dtype = feature_dtype(p.store_dtype)
        self.batches = np.array(p.array("batches"))
        self.runs = np.array(p.array("runs"))
        self.maps = p.array("maps")
        if check_crc:  # the index decides which bytes are read and where rows go: it must be intact
            for name, arr in (("batches", self.batches), ("runs", self.runs), ("maps", self.maps),
                              ("cache_nodes", p.array("cache_nodes"))):
                self._check_crc(name, arr)
        runs_pages = np.zeros(len(self.batches), dtype=np.int64)
        if len(self.runs):
            cum = np.concatenate([[0], np.cumsum(self.runs[:, 1])])
            runs_pages = cum[self.batches[:, 3]] - cum[self.batches[:, 2]]
        # batches that read the same runs of the same extent share a segment: it is read once and kept
        keyed = self.batches[self.batches[:, 3] > self.batches[:, 2]][:, 2:5]
        uniq, users = np.unique(keyed, axis=0, return_counts=True) if len(keyed) else (keyed, np.zeros(0, int))
        self._segment_keys = {tuple(int(x) for x in k) for k, u in zip(uniq, users) if u > 1}
        shared = np.array([tuple(int(x) for x in k) in self._segment_keys for k in self.batches[:, 2:5]], dtype=bool) \
            if self._segment_keys else np.zeros(len(self.batches), dtype=bool)
        self.max_segment_bytes = int(runs_pages[shared].max(initial=0)) * ALIGN if len(self.batches) else 0
        self.max_read_bytes = int(runs_pages[~shared].max(initial=0)) * ALIGN if len(self.batches) else 0
        self.held_segments = 2  # the one being assembled and the next one, read beside it
        self.max_input_nodes = int((self.batches[:, 1] - self.batches[:, 0]).max(initial=0))
        self.direct_index_reads = False
        self._batch_indexes: int | None = None  # see _largest_batch_indexes
        """Whether the batches' maps (and, through the loader, their blocks) are read with O_DIRECT: set
        by the memory check where the budget leaves no page cache to keep a pass's worth of them."""
        self._check_memory(memory_budget, pool_size, training)
        if self.cuda:
            free, _ = torch.cuda.mem_get_info(self.device)
            dev = p.specs["tier_device"].nbytes
            if dev > free:
                raise MemoryBudgetError(f"the device cache of {p.path} needs {format_bytes(dev)} of GPU memory, "
                                        f"{format_bytes(free)} is free; re-pack with a smaller --device-cache")
        rows = {t: self._load_tier(t, mmap_tiers) for t in TIER_NAMES}
        self.tiers = (DeviceTier(rows["device"], p.store_dtype, self.device if self.cuda else None),
                      PinnedTier(rows["pinned"], p.store_dtype, pin=self.cuda),
                      HostTier(rows["host"], p.store_dtype))
        self.bounds = p.tier_bounds
        self.reader = AlignedReader(p.path / p.specs["packed"].path, direct=direct, request_size=request_size,
                                    depth=io_depth)
        self._checked = np.zeros(len(self.runs), dtype=bool)  # runs whose crc32 matched on a read
        self._checked_stamp = self._packed_stamp()
        self._checked_lock = threading.Lock()  # its own lock: reads are submitted with self._lock held
        self._pool: list[np.ndarray] = []
        self._pool_size = pool_size
        self._spare_outputs: list[np.ndarray] = []
        self._closed = False
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._staging: list = []
        self._ahead: dict[tuple, ExtentRead] = {}
        """Reads submitted before their batch asked for them (at most :data:`READ_AHEAD`)."""
        self._held: dict[tuple, list] = {}
        """Segments in memory: key -> [their ExtentRead, batches using it now, aligned buffer]; insertion
        order is use order."""
        self.reset_stats()

    def memory_plan(self, pool_size: int = 4, training: TrainingMemory | None = None) -> HostMemoryPlan:
        """Host bytes this store (and, with ``training``, the trainer reading from it) holds at most."""
        p = self.packed
        tiers = sum(p.specs[f"tier_{t}"].nbytes for t in TIER_NAMES if t != "device" or not self.cuda)
        batch_bytes = self.max_input_nodes * self.feat_dim * 4
        spare = 0 if self.cuda else SPARE_OUTPUTS
        segments = self.held_segments * self.max_segment_bytes
        if training is None:
            return HostMemoryPlan(tiers=int(tiers), read_buffers=(pool_size + READ_AHEAD) * self.max_read_bytes,
                                  in_flight_batches=0, batch_bytes=batch_bytes, model=0, spare_batches=spare,
                                  segment_buffers=segments)
        # a trainer's budget is for the whole process: what the runtimes already hold counts too
        # an extent per batch between read and assembly (the pool keeps up to pool_size); assembled
        # matrices in the queue, in assembly and in the forward/backward pass
        return HostMemoryPlan(tiers=int(tiers), segment_buffers=segments,
                              read_buffers=(max(pool_size, training.in_flight_batches) + READ_AHEAD)
                              * self.max_read_bytes,
                              in_flight_batches=training.in_flight_batches, batch_bytes=batch_bytes,
                              model=int(training.model_bytes), spare_batches=spare,
                              process=process_anon_bytes(),
                              activation_batches=0 if self.cuda else training.activation_batches,
                              batch_index_bytes=self._largest_batch_indexes(), runtime_files=RUNTIME_FILE_PAGES)

    def _largest_batch_indexes(self) -> int:
        """Host bytes of the largest batch's blocks (as the loader holds them) and map; 0 without the samples."""
        if self._batch_indexes is None:
            p = self.packed
            best = 0
            try:
                samples = p.samples
                for part in p.parts:
                    idx = samples.index(part)
                    first, nb = p._part(part)
                    rows = self.batches[first:first + nb]
                    per = (INDEX_BYTES_PER_OFFSET * np.diff(idx[:, 1]) + INDEX_BYTES_PER_EDGE * np.diff(idx[:, 2])
                           + self.maps.dtype.itemsize * (rows[:, 1] - rows[:, 0]))
                    if per.size:
                        best = max(best, int(per.max()))
            except (DiskGNNError, KeyError, IndexError, ValueError):
                best = 0  # samples out of reach or of another shape: the plan counts the matrices alone
            self._batch_indexes = best
        return self._batch_indexes

    def _check_memory(self, memory_budget, pool_size: int, training: TrainingMemory | None) -> None:
        plan = self.memory_plan(pool_size, training)
        budget = resolve_memory_budget(memory_budget)
        if memory_budget is None and training is not None:
            # the available memory excludes what this process holds already, which the plan counts (process):
            # the whole process may use both
            budget += plan.process
        what = describe_budget(memory_budget, budget)
        if plan.total > budget and self.max_segment_bytes and plan.total - self.max_segment_bytes <= budget:
            self.held_segments = 1  # no room to read the next segment while this one is used: one at a time
            log.warning("%s: %s holds one segment of %s but not two, so the next segment is read only after the "
                        "current one is done (no overlap); raise the memory budget or pack with a smaller "
                        "--segment-memory", self.packed.path, what, format_bytes(self.max_segment_bytes))
            plan = self.memory_plan(pool_size, training)
        if plan.total <= budget:
            self._choose_index_reads(budget - plan.total, what, plan.runtime_files)
            return
        if self.max_segment_bytes and plan.segment_buffers >= plan.total - budget:
            raise MemoryBudgetError(
                f"{self.packed.path}: its segments take up to {format_bytes(self.max_segment_bytes)}, and a segment "
                f"is kept in memory while its batches are assembled, but {what} leaves "
                f"{format_bytes(max(budget - (plan.total - plan.segment_buffers), 0))} for it beside the rest "
                f"({format_bytes(plan.total - plan.segment_buffers)}: tiers, batches in flight, model, runtimes); "
                f"re-pack with --segment-memory {format_bytes(max(budget - (plan.total - plan.segment_buffers), 0))} "
                f"or less (and a larger --disk-budget if needed), or raise --memory-budget")
        if training is None:
            raise MemoryBudgetError(
                f"{self.packed.path}: the memory tiers ({format_bytes(plan.tiers)}) and read buffers need "
                f"{format_bytes(plan.total)}, more than {what}; re-pack with smaller --host-cache/--pinned-cache/"
                f"--device-cache or raise the budget")
        raise MemoryBudgetError(
            f"{self.packed.path}: training needs {format_bytes(plan.total)} of host memory, more than {what}: "
            f"memory tiers {format_bytes(plan.tiers)}, read buffers {format_bytes(plan.read_buffers)}, "
            f"{plan.in_flight_batches} batches in flight (queue depth {training.queue_depth} + 2; the "
            f"{plan.spare_batches} kept for reuse are among them) and {plan.activation_batches} for the model's "
            f"temporaries, "
            f"of up to "
            f"{format_bytes(plan.batch_bytes)} each ({self.max_input_nodes} input nodes x {self.feat_dim} "
            f"features x 4 B) = {format_bytes(plan.in_flight)}, model and optimizer state "
            f"{format_bytes(plan.model)}, this process's runtimes {format_bytes(plan.process)}; re-pack with smaller --host-cache/--pinned-cache/--device-cache, "
            f"sample smaller batches (--batch-size, --fanouts), or raise --memory-budget")

    def _choose_index_reads(self, room: int, what: str, planned_files: int = 0) -> None:
        """Read the maps and blocks with O_DIRECT when the page cache that ``room`` (the budget beside the
        plan) leaves cannot keep a pass's worth of them next to the program's own code.

        Under a tight cap each pass reads them from disk either way; through the page cache they also
        push out the pages of the libraries' code, which are then read again (measured at scale m, 3
        layers, 2 GiB: 8-14 thousand major faults per run and epochs of 4.7-8.5 s, against about 500
        faults and 4.2-4.8 s with O_DIRECT). Where they fit, the page cache keeps them from one pass to
        the next and nothing is read twice. ``planned_files``: the code's page cache the plan already
        counts (a training plan does; the store's own plan does not).
        """
        p = self.packed
        try:
            samples = p.samples
        except DiskGNNError:
            samples = None
        lean = getattr(samples, "lean_read_bytes", None)
        per_pass = 0
        for part in p.parts:
            first, nb = p._part(part)
            rows = self.batches[first:first + nb]
            maps = int((rows[:, 1] - rows[:, 0]).sum()) * self.maps.dtype.itemsize
            per_pass = max(per_pass, maps + (lean(part) if lean is not None else 0))
        self.direct_index_reads = per_pass + RUNTIME_FILE_PAGES - planned_files > room
        if self.direct_index_reads:
            log.info("%s: a pass reads up to %s of maps and blocks, and %s leaves %s beside the plan for the "
                     "page cache: they are read with O_DIRECT", p.path, format_bytes(per_pass), what,
                     format_bytes(max(room, 0)))

    def _load_tier(self, tier: str, mmap: bool) -> np.ndarray:
        p = self.packed
        spec = p.specs[f"tier_{tier}"]
        shape = (p.tier_rows[tier], p.feat_dim)
        if spec.nbytes == 0:
            return np.zeros(shape, dtype=self._dtype)
        if mmap:
            return p.array(f"tier_{tier}")
        with AlignedReader(p.path / spec.path) as r:
            data = r.read_file(spec.nbytes, huge_pages=True)  # read at random rows for the store's life
        if self.check_crc:
            self._check_crc(f"tier_{tier}", data[:spec.nbytes])
        return data.view(self._dtype).reshape(shape)

    def _check_crc(self, name: str, array: np.ndarray) -> None:
        spec = self.packed.specs[name]
        if spec.crc32 is not None and array_crc32(np.asarray(array)) != spec.crc32:
            raise IntegrityError(f"{self.packed.path / spec.path}: checksum mismatch (the manifest says crc32 "
                                 f"{spec.crc32:08x}); the file is corrupt, re-run diskgnn pack")

    # -- stats --
    def reset_stats(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self._hits = np.zeros(len(TIER_NAMES) + 1, dtype=np.int64)
            self._bytes_read = 0
            self._bytes_useful = 0
            self._batches = 0

    def stats(self) -> dict:
        """bytes read from disk, bytes of rows used, hits per tier (counts and rates), read amplification."""
        with self._lock:
            hits = self._hits.copy()
            read, useful, batches = self._bytes_read, self._bytes_useful, self._batches
        total = int(hits.sum())
        names = (*TIER_NAMES, "disk")
        return {"batches": batches, "bytes_read": read, "bytes_useful": useful,
                "read_amplification": read / useful if useful else (1.0 if read == 0 else float("inf")),
                "hits": {n: int(h) for n, h in zip(names, hits)},
                "hit_rate": {n: (int(h) / total if total else 0.0) for n, h in zip(names, hits)}}

    # -- I/O stage --
    def num_input_nodes(self, part: str, index: int) -> int:
        g = self.packed.batch_id(part, index)
        return int(self.batches[g, 1] - self.batches[g, 0])

    def _take_buffer(self, nbytes: int) -> np.ndarray:
        with self._lock:
            for k, buf in enumerate(self._pool):
                if len(buf) >= nbytes:
                    return self._pool.pop(k)
        return aligned_empty(max(nbytes, self.max_read_bytes, ALIGN))

    def _take_output(self, n: int) -> np.ndarray:
        """A float32 [n, F] matrix for an assembled batch, reusing one whose batch is done.

        A new matrix of tens of MB is fresh memory: the kernel faults its pages in
        one by one (more slowly in a VM) on every batch. A matrix handed out is
        returned here when the last reference to it (the tensor) goes away; if the
        caller keeps it, a new one is made.
        """
        with self._lock:
            base = self._spare_outputs.pop() if self._spare_outputs else None
        if base is None:
            base = np.empty((max(self.max_input_nodes, n), self.feat_dim), dtype=np.float32)
        out = base[:n]
        fin = weakref.finalize(out, self._give_output, base)
        fin.atexit = False
        return out

    def _give_output(self, base: np.ndarray) -> None:
        with self._lock:
            if not self._closed and len(self._spare_outputs) < SPARE_OUTPUTS:
                self._spare_outputs.append(base)

    def _give_buffer(self, buf: np.ndarray | None) -> None:
        if buf is None:
            return
        with self._lock:
            if len(self._pool) < self._pool_size:
                self._pool.append(buf)

    def segments(self, part: str) -> list[np.ndarray] | None:
        """The batch indices of ``part`` grouped by the segment they read (disk-budget layout, in index
        order); None when every batch reads its own extent (plain layout)."""
        first, nb = self.packed._part(part)
        rkeys = [tuple(int(x) for x in self.batches[first + i, 2:5]) for i in range(nb)]
        if not any(k in self._segment_keys for k in rkeys):
            return None
        groups: dict[tuple, list[int]] = {}
        for i, k in enumerate(rkeys):
            groups.setdefault(k if k in self._segment_keys else ("own", i), []).append(i)
        return [np.array(v, dtype=np.int64) for v in groups.values()]

    def plan_reads(self, keys) -> None:
        """The order of the ``(part, index)`` batches the next pass reads: lets :meth:`read` submit the
        next batch's read (or the next segment's) while the current one is still being read or used."""
        keys = [(str(p), int(i)) for p, i in keys]
        rkeys = [tuple(int(x) for x in self.batches[self.packed.batch_id(p, i), 2:5]) for p, i in keys]
        after: list[int | None] = [None] * len(keys)  # next position whose read differs and is not empty
        for p in range(len(keys) - 2, -1, -1):
            q = p + 1
            while q is not None and (rkeys[q][1] == rkeys[q][0] or rkeys[q] == rkeys[p]):
                q = after[q]
            after[p] = q
        nxt = {keys[p]: keys[q] for p, q in enumerate(after) if q is not None}
        with self._lock:
            self._next_read = nxt

    def read(self, part: str, index: int) -> ExtentRead:
        """The pages of batch ``index`` of ``part`` that hold its uncached rows (O_DIRECT, GIL released).

        Batches of one segment (disk-budget layout) share one read of the whole segment, kept in
        memory while they use it (:meth:`release` after assembly). With :meth:`plan_reads`, the
        next batch's (or segment's) requests are queued before this one is waited for.
        """
        g = self.packed.batch_id(part, index)
        _, _, run_lo, run_hi, base = (int(x) for x in self.batches[g])
        key = (run_lo, run_hi, base)
        if run_hi == run_lo:
            return ExtentRead(part=part, index=int(index), buffer=np.zeros(0, dtype=np.uint8),
                              run_pages=np.zeros(0, dtype=np.int64), run_npages=np.zeros(0, dtype=np.int64),
                              run_buf_pages=np.zeros(0, dtype=np.int64), bytes_read=0)
        if key in self._segment_keys:
            with self._cond:
                seg = self._held.get(key)
                if seg is None:
                    seg = self._hold(key, part, index, wait=True)
                else:
                    self._held[key] = self._held.pop(key)  # most recently used last
                seg.refs += 1
            read = ExtentRead(part=part, index=int(index), buffer=seg.read.buffer, run_pages=seg.read.run_pages,
                              run_npages=seg.read.run_npages, run_buf_pages=seg.read.run_buf_pages, bytes_read=0,
                              _shared=key)
        else:
            with self._lock:
                read = self._ahead.pop(key, None)  # None also when its read-ahead is still being submitted
            if read is None:
                read = self._submit(part, index, key)
            read.part, read.index = part, int(index)
        self._read_ahead(part, int(index))
        try:
            read.batch_map = self._map_of(part, index)  # from the page cache or the disk, beside the pages
            if read._shared is not None:
                read.bytes_read = self._finish_segment(read._shared)
            else:
                self._finish(read)
        except BaseException:
            self.release(read)
            raise
        return read

    def _submit(self, part: str, index: int, key: tuple, buffer: np.ndarray | None = None) -> ExtentRead:
        run_lo, run_hi, base = key
        runs = self.runs[run_lo:run_hi]
        npages = runs[:, 1].astype(np.int64)
        buf_pages = np.concatenate([[0], np.cumsum(npages)[:-1]]).astype(np.int64)
        total = int(npages.sum()) * ALIGN
        pooled = buffer if buffer is not None else self._take_buffer(total)
        read = ExtentRead(part=part, index=int(index), buffer=pooled[:total],
                          run_pages=np.ascontiguousarray(runs[:, 0], dtype=np.int64), run_npages=npages,
                          run_buf_pages=buf_pages, bytes_read=0, _pooled=pooled if buffer is None else None,
                          _runs=runs, _run_lo=run_lo, _base=base,
                          _crcs=[] if self._must_check(run_lo, run_hi) else None)
        file_runs = [(base + int(pg) * ALIGN, int(n) * ALIGN) for pg, n, _ in runs]
        try:
            read._pending = self.reader.submit_runs(file_runs, read.buffer, checksums=read._crcs)
        except BaseException:
            self._give_buffer(read._pooled)
            raise
        return read

    def _packed_stamp(self) -> tuple[int, int, int]:
        st = os.fstat(self.reader.fd)
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _must_check(self, run_lo: int, run_hi: int) -> bool:
        """Whether a read of runs ``run_lo .. run_hi-1`` computes and checks their crc32.

        A run is checked on its first read; later reads skip the check (1 s of CPU per epoch
        of 5 GiB on 2 cores), unless ``recheck_reads`` asks for every read, or packed.bin has
        changed since (another size, inode or modification time: every run is checked again).
        The bytes come from the disk on every read (O_DIRECT), and the drive checks its own
        sectors; the crc32 guards against a damaged or replaced file, which the first read finds.
        """
        if not self.check_crc:
            return False
        if self.recheck_reads:
            return True
        stamp = self._packed_stamp()
        with self._checked_lock:
            if stamp != self._checked_stamp:
                if self._checked.any():
                    log.warning("%s changed while it was open (size, inode or time); checking every read again",
                                self.reader.path)
                self._checked[:] = False
                self._checked_stamp = stamp
            return not bool(self._checked[run_lo:run_hi].all())

    def _finish(self, read: ExtentRead) -> None:
        """Wait for ``read``'s requests and check every run's crc32 against the index."""
        if read._pending is None:
            return
        pending, read._pending = read._pending, None
        got = pending.wait()
        if read._crcs is not None:
            for k, (pg, n, want) in enumerate(read._runs):
                if read._crcs[k] != int(want):
                    raise IntegrityError(
                        f"{self.reader.path}: batch {read.part}/{read.index} reads {int(n) * ALIGN} bytes at offset "
                        f"{read._base + int(pg) * ALIGN} whose checksum does not match (crc32 {read._crcs[k]:08x}, "
                        f"index says {int(want):08x}); the file is corrupt, re-run diskgnn pack")
            with self._checked_lock:
                self._checked[read._run_lo:read._run_lo + len(read._runs)] = True
        read.bytes_read = got
        with self._lock:
            self._bytes_read += got

    def _hold(self, key: tuple, part: str, index: int, *, wait: bool):
        """Start reading segment ``key`` into a held slot (call with the lock held); None when no slot is
        free and ``wait`` is false. A slot frees when no batch uses its segment any more."""
        while len(self._held) >= self.held_segments:
            idle = next((k for k, seg in self._held.items() if seg.refs == 0), None)
            if idle is not None:
                old = self._held.pop(idle)
                old.wait_done()
                self._spare_segment = old.read._pooled
                continue
            if not wait:
                return None
            if self._closed:
                raise ConfigError("the feature store was closed while a read waited for a segment slot")
            self._cond.wait(0.05)
        buffer = getattr(self, "_spare_segment", None)
        self._spare_segment = None
        if buffer is None or len(buffer) < self.max_segment_bytes:
            buffer = aligned_empty(max(self.max_segment_bytes, ALIGN), huge_pages=True)  # reused, read at random
        read = self._submit(part, index, key, buffer=buffer)
        read._pooled = buffer
        seg = _HeldSegment(read)
        self._held[key] = seg
        return seg

    def _finish_segment(self, key: tuple) -> int:
        """Wait for segment ``key``'s read (once, for all its batches); the bytes read (0 after the first)."""
        with self._lock:
            seg = self._held[key]
        with seg.lock:
            if seg.error is not None:
                raise seg.error
            if seg.done:
                return 0
            try:
                self._finish(seg.read)
            except BaseException as exc:
                seg.error = exc
                raise
            seg.done = True
            return seg.read.bytes_read

    def _read_ahead(self, part: str, index: int) -> None:
        """Submit the read of the batch or segment :meth:`plan_reads` says comes next, if there is room."""
        with self._cond:
            nxt = getattr(self, "_next_read", {}).get((part, index))
            if nxt is None or self._closed:
                return
            g = self.packed.batch_id(*nxt)
            key = tuple(int(x) for x in self.batches[g, 2:5])
            if key[1] == key[0]:
                return
            if key in self._segment_keys:
                if key not in self._held:
                    self._hold(key, nxt[0], nxt[1], wait=False)
                return
            if key in self._ahead or len(self._ahead) >= READ_AHEAD:
                return
            self._ahead[key] = None  # reserved: the buffer is taken outside the lock
        read = self._submit(nxt[0], nxt[1], key)
        with self._lock:
            keep = not self._closed and key in self._ahead and self._ahead[key] is None
            if keep:
                self._ahead[key] = read
        if not keep:
            self.release(read)

    def release(self, read: ExtentRead | None) -> None:
        """Give the memory of ``read`` back once its batch is assembled (called by :meth:`assemble`)."""
        if read is None:
            return
        if read._shared is not None:
            with self._cond:
                seg = self._held.get(read._shared)
                if seg is not None:
                    seg.refs -= 1
                self._cond.notify_all()
            read._shared = None
            return
        if read._pending is not None:  # never waited for: let its requests finish before the buffer is reused
            try:
                read._pending.wait()
            except BaseException:
                pass
            read._pending = None
        self._give_buffer(read._pooled)
        read._pooled = None

    # -- assembly stage --
    def _split(self, part: str, index: int, batch_map: np.ndarray | None = None):
        if batch_map is None:
            batch_map = self._map_of(part, index)
        if batch_map.size and int(batch_map.min()) < 0:
            raise IntegrityError(f"{self.packed.path}/maps.bin: batch {part}/{index} has a negative entry; "
                                 f"the file is corrupt, re-run pack")
        ntiers = len(TIER_NAMES)
        counts = np.zeros(ntiers + 1, dtype=np.int64)
        rows = np.empty((ntiers + 1, batch_map.size), dtype=np.int64)
        positions = np.empty((ntiers + 1, batch_map.size), dtype=np.int64)
        split_map(batch_map, self.bounds, ntiers, counts, rows, positions)
        return batch_map.size, counts, rows, positions

    def assemble(self, part: str, index: int, extent_read: ExtentRead | None = None):
        """The batch's input features: float32 [n_in, F] on the store's device.

        Row j equals ``features[input_nodes[j]]`` after the storage dtype
        conversion. Gives ``extent_read``'s buffer back for reuse.
        """
        import torch
        if extent_read is None:
            extent_read = self.read(part, index)
        if (extent_read.part, extent_read.index) != (part, int(index)):
            raise ConfigError(f"assemble({part!r}, {index}) was given the read of batch "
                              f"{extent_read.part}/{extent_read.index}")
        # dynamic scheduling of the gathers: with the reader's threads on the same cores, a static half
        # per thread leaves the kernel waiting for its slowest thread
        prev = numba.set_parallel_chunksize(GATHER_CHUNK_ROWS)
        try:
            if not self.cuda:
                result = self._assemble_host(part, index, extent_read)
                if result is not None:
                    return result
            n, counts, rows, positions = self._split(part, index, extent_read.batch_map)
            ext = ExtentTier(extent_read, self.row_bytes, self.feat_dim, self.store_dtype)
            host_side = [(t, self.tiers[t] if t < len(self.tiers) else ext) for t in range(len(self.tiers) + 1)
                         if not (self.cuda and t == 0)]
            if not self.cuda:
                out = self._take_output(n)
                for t, tier in host_side:
                    c = int(counts[t])
                    if c:
                        tier.gather_into(rows[t, :c], positions[t, :c], out)
                result = torch.from_numpy(out)
            else:
                result = self._assemble_cuda(n, counts, rows, positions, host_side)
        finally:
            numba.set_parallel_chunksize(prev)
            self.release(extent_read)
        with self._lock:
            self._hits += counts
            self._bytes_useful += int(counts[len(TIER_NAMES)]) * self.row_bytes
            self._batches += 1
        return result

    def _map_of(self, part: str, index: int) -> np.ndarray:
        """The batch's map entries, read with pread (no readahead: see :func:`~diskgnn.io.pread_elements`)."""
        g = self.packed.batch_id(part, index)
        lo, hi = int(self.batches[g, 0]), int(self.batches[g, 1])
        spec = self.packed.specs["maps"]  # a raw array: the file holds the entries from byte 0
        return pread_elements(self.packed.path / spec.path, self.maps.dtype, lo, hi,
                              fix="the file is truncated; re-run diskgnn pack", direct=self.direct_index_reads)

    def _assemble_host(self, part: str, index: int, extent_read: ExtentRead):
        """The CPU store's assembly in one pass over the batch's map (:func:`assemble_map`): rows come
        from whichever tier or read buffer holds them, written in batch order. None when the map names a
        row nowhere (the split path then says what is wrong)."""
        import torch
        batch_map = extent_read.batch_map if extent_read.batch_map is not None else self._map_of(part, index)
        n = batch_map.size
        out = self._take_output(n)
        r = extent_read
        lut = self.tiers[-1]._lut  # the store dtype's widening table, built once with the tiers
        flat = r.buffer.view(np.float32 if lut is None else np.uint16)
        t0, t1, t2 = (t.rows if lut is None else t.rows.view(np.uint16) for t in self.tiers)
        args = (batch_map, self.bounds, t0, t1, t2, flat, self.row_bytes, r.run_pages, r.run_npages,
                r.run_buf_pages, ALIGN)
        bad = assemble_map(*args, out) if lut is None else assemble_map_lut(*args, lut, out)
        if bad:
            return None
        counts = tier_hits(batch_map, self.bounds)
        with self._lock:
            self._hits += counts
            self._bytes_useful += int(counts[len(TIER_NAMES)]) * self.row_bytes
            self._batches += 1
        return torch.from_numpy(out)  # the caller's finally gives extent_read back

    def _assemble_cuda(self, n, counts, rows, positions, host_side):
        # Host-side rows go compacted into a pinned staging buffer, one non_blocking H2D copy, then an
        # index_copy into place on the GPU; device-tier rows are gathered on the GPU directly.
        import torch
        k = int(sum(int(counts[t]) for t, _ in host_side))
        staging, event = self._staging_buffer(k)
        host = staging.numpy()[:k]
        start = 0
        pos_parts = []
        for t, tier in host_side:
            c = int(counts[t])
            if c:
                tier.gather_into(rows[t, :c], np.arange(start, start + c, dtype=np.int64), host)
                pos_parts.append(positions[t, :c])
                start += c
        out = torch.empty((n, self.feat_dim), dtype=torch.float32, device=self.device)
        if k:
            pos = torch.from_numpy(np.concatenate(pos_parts)).to(self.device, non_blocking=False)
            out.index_copy_(0, pos, staging[:k].to(self.device, non_blocking=True))
            event.record()
        c = int(counts[0])
        if c:
            dev_rows = torch.from_numpy(np.ascontiguousarray(rows[0, :c])).to(self.device)
            dev_pos = torch.from_numpy(np.ascontiguousarray(positions[0, :c])).to(self.device)
            self.tiers[0].gather_into_tensor(dev_rows, dev_pos, out)
        with self._lock:
            self._staging.append((staging, event))
        return out

    def _staging_buffer(self, k: int):
        import torch
        with self._lock:
            for i, (buf, ev) in enumerate(self._staging):
                if buf.shape[0] >= k:
                    self._staging.pop(i)
                    ev.synchronize()  # the previous copy out of this buffer has finished
                    return buf, ev
        rows = max(k, 1)
        buf = torch.empty((rows, self.feat_dim), dtype=torch.float32).pin_memory()
        return buf, torch.cuda.Event()

    def lookup_nodes(self, part: str, index: int) -> np.ndarray:
        """The batch's features as float32 numpy (a convenience for tests and tools)."""
        return self.assemble(part, index).cpu().numpy()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            ahead, held = list(self._ahead.values()), list(self._held.values())
            self._ahead.clear()
            self._held.clear()
            self._cond.notify_all()
        for read in ahead:
            if read is not None:
                self.release(read)
        for seg in held:
            seg.wait_done()
        self.reader.close()
        with self._lock:
            self._pool.clear()
            self._spare_outputs.clear()
            self._spare_segment = None

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.packed.path)!r}, device={self.device}, tiers={list(self.tiers)})"


# --- verification ---------------------------------------------------------------------------------

def verify_packed(packed: Packed, check_crc: bool = True, progress: ProgressFn = no_progress,
                  check_rows: bool = True) -> None:
    """Check the index, the checksums and (``check_rows``) that sample batches assemble exactly.

    Raises :class:`IntegrityError` naming the first problem.
    """
    p = packed
    where = p.path
    specs = p.specs
    if check_crc:
        total = sum(s.nbytes for s in specs.values())
        for name, spec in specs.items():
            if spec.crc32 is None:
                continue
            got = file_crc32(where / spec.path)
            if got != spec.crc32:
                raise IntegrityError(f"{where / spec.path}: checksum mismatch (crc32 {got:08x}, manifest says "
                                     f"{spec.crc32:08x}); the file is corrupt, re-run diskgnn pack")
            progress("verify checksums", spec.nbytes, total)
    if check_crc and specs["packed"].crc32 is None:
        _check_run_crcs(p, progress)
    bounds = p.tier_bounds
    nodes = np.asarray(p.cache_nodes)
    if nodes.size != p.n_cached or bounds[-1] != p.n_cached:
        raise IntegrityError(f"{where}: {nodes.size} cache nodes for {p.n_cached} slots")
    if nodes.size and (int(nodes.min()) < 0 or int(nodes.max()) >= p.num_nodes or np.unique(nodes).size != nodes.size):
        raise IntegrityError(f"{where}/cache_nodes.bin: node ids must be distinct and in 0..{p.num_nodes - 1}")
    batches = np.asarray(p.array("batches"))
    runs = np.asarray(p.array("runs"))
    maps = p.array("maps")
    packed_bytes = specs["packed"].nbytes
    if len(batches) != sum(p.num_batches(x) for x in p.parts):
        raise IntegrityError(f"{where}/batches.bin: {len(batches)} rows for {sum(p.num_batches(x) for x in p.parts)} batches")
    if runs.ndim != 2 or runs.shape[1] != 3:
        raise IntegrityError(f"{where}/runs.bin: expected [R, 3] (page, pages, crc32), got {list(runs.shape)}")
    for g, (lo, hi, rlo, rhi, base) in enumerate(batches):
        if not (0 <= lo <= hi <= maps.shape[0] and 0 <= rlo <= rhi <= len(runs) and base % ALIGN == 0):
            raise IntegrityError(f"{where}/batches.bin: batch {g} has a bad map/run range or unaligned extent")
        r = runs[rlo:rhi]
        if len(r) and (base + (int((r[:, 0] + r[:, 1]).max())) * ALIGN > packed_bytes or int(r[:, 1].min()) < 1):
            raise IntegrityError(f"{where}: batch {g} reads pages past the end of packed.bin")
        m = np.asarray(maps[lo:hi])
        if m.size and int(m.min()) < 0:
            raise IntegrityError(f"{where}/maps.bin: batch {g} has negative entries")
        ext = m[m >= p.n_cached].astype(np.int64) - p.n_cached
        if ext.size:
            starts = extent_row_starts(ext, p.row_bytes, 1, r[:, 0].astype(np.int64), r[:, 1].astype(np.int64),
                                       np.zeros(len(r), dtype=np.int64), ALIGN)
            if int(starts.min()) < 0:
                raise IntegrityError(f"{where}: batch {g} maps rows outside the pages it reads")
        progress("verify index", 1, len(batches))
    if check_rows:
        _check_rows(p)


def _check_run_crcs(p: Packed, progress: ProgressFn = no_progress) -> None:
    """Check packed.bin against the crc32 of every read run (a streamed pack writes no whole-file crc)."""
    batches = np.asarray(p.array("batches"))
    runs = np.asarray(p.array("runs"))
    path = p.path / p.specs["packed"].path
    size = path.stat().st_size
    total = int(runs[:, 1].sum()) * ALIGN if runs.size else 0
    with open(path, "rb", buffering=0) as fh:
        for g, (_, _, rlo, rhi, base) in enumerate(batches):
            for r in range(int(rlo), int(rhi)):
                if not (0 <= r < len(runs)):
                    raise IntegrityError(f"{p.path}/batches.bin: batch {g} names read run {r} of {len(runs)}")
                page, pages, want = (int(x) for x in runs[r])
                lo = int(base) + page * ALIGN
                if page < 0 or pages < 1 or lo + pages * ALIGN > size:
                    raise IntegrityError(f"{path}: batch {g} reads pages past the end of the file ({size} bytes)")
                got = zlib.crc32(os.pread(fh.fileno(), pages * ALIGN, lo))
                if got != want:
                    raise IntegrityError(f"{path}: the {pages} page(s) at offset {lo} read by batch {g} do not match "
                                         f"their checksum (crc32 {got:08x}, runs.bin says {want & 0xFFFFFFFF:08x}); "
                                         f"the file is corrupt, re-run diskgnn pack")
                progress("verify checksums", pages * ALIGN, total)


def _check_rows(p: Packed) -> None:
    """Assemble the first and last batch of each part and compare with the dataset's rows."""
    ds = p.dataset
    samples = p.samples
    store = FeatureStore(p, "cpu", memory_budget=1 << 62, mmap_tiers=True)
    try:
        for part in p.parts:
            nb = p.num_batches(part)
            for i in sorted({0, nb - 1} if nb else set()):
                if not p.holds(part, i):
                    continue
                got = store.assemble(part, i).numpy()
                nodes = np.asarray(samples.input_nodes(part, i))
                want = to_float32(convert_rows(ds.feature_rows(nodes), ds.feat_dtype, p.store_dtype),
                                  p.store_dtype)
                if got.shape != want.shape or not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
                    raise IntegrityError(f"{p.path}: batch {part}/{i} does not assemble to the dataset's rows; "
                                         f"re-run diskgnn pack")
    finally:
        store.close()
