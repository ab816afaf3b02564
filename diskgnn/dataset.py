"""The on-disk dataset format (stage 1 output) and its reader/writer.

A dataset directory holds raw little-endian arrays, each described in
``manifest.json`` (path, dtype, shape, bytes, crc32), and is complete only once
the manifest exists:

* ``indptr.bin``   int64  [N + 1]  in-edge CSR offsets (monotone, 0 .. E)
* ``indices.bin``  int32 (N < 2**31) or int64 [E]  source node of each in-edge
* ``features.bin`` fp32 / fp16 / bf16 [N, F]  row-major, data at offset 0 (4096-aligned)
* ``labels.bin``   int64  [N]  class in 0 .. C-1, or -1 for an unlabelled node
* ``train_idx.bin``, ``val_idx.bin``, ``test_idx.bin`` int64  disjoint node ids

A link-prediction dataset (manifest key ``link``) also holds

* ``train_pos.bin`` int64 [E_train, 2]  the training positive edges (source, destination), all edges of
  the message-passing graph above (each undirected edge once)
* ``val_pos.bin``, ``test_pos.bin`` int64 [E_val, 2], [E_test, 2]  held-out edges, not in the graph (nor,
  for an undirected graph, their reverses)
* ``val_neg.bin``, ``test_neg.bin`` int64 [E_val, K], [E_test, K]  K candidate destinations per held-out
  edge (the OGB convention: positive (s, d) is ranked against (s, c_1) .. (s, c_K))

Labels and node splits are optional there (all -1 and empty without them).

bf16 rows are stored as their raw 16-bit patterns (numpy has no bf16); use
:func:`features_to_torch` to view them as ``torch.bfloat16``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from diskgnn.errors import ConfigError, InputFormatError, IntegrityError
from diskgnn.manifest import (RESUME_JOURNAL, Crc32Writer, abort_output_dir, check_free_space, expect_output_bytes,
                              finish_output_dir, prepare_output_dir, prepare_resumable_output_dir, read_manifest,
                              write_manifest, write_resume_journal)

log = logging.getLogger(__name__)

FORMAT = "diskgnn.dataset"
VERSION = 1
FEATURE_DTYPES = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2"), "bf16": np.dtype("<u2")}
SPLITS = ("train", "val", "test")
ALIGN = 4096
LINK_POSITIVES = ("train_pos", "val_pos", "test_pos")
LINK_CANDIDATES = ("val_neg", "test_neg")


def feature_dtype(name: str) -> np.dtype:
    """The numpy storage dtype of a feature dtype name (bf16 is stored as uint16 bits)."""
    try:
        return FEATURE_DTYPES[name]
    except KeyError:
        raise ConfigError(f"feature dtype {name!r} is not supported; choose one of {', '.join(FEATURE_DTYPES)}") from None


def node_id_dtype(num_nodes: int) -> np.dtype:
    """int32 node ids while N < 2**31, int64 beyond."""
    return np.dtype("<i4") if num_nodes < 2**31 else np.dtype("<i8")


def features_to_torch(rows: np.ndarray, dtype_name: str):
    """View stored feature rows as a torch tensor of the stored precision (no copy)."""
    import torch
    t = torch.from_numpy(rows)
    if dtype_name == "bf16":
        t = t.view(torch.bfloat16)
    return t


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bf16 (round-to-nearest-even) and return the uint16 bit patterns."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bf16 bit patterns (uint16) to float32 exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def convert_features(rows: np.ndarray, dtype_name: str) -> np.ndarray:
    """Convert float rows to the storage representation of ``dtype_name``."""
    if dtype_name == "bf16":
        if rows.dtype == np.uint16:
            return rows
        return float32_to_bf16_bits(np.asarray(rows, dtype=np.float32))
    return np.asarray(rows, dtype=feature_dtype(dtype_name))


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """Where one raw array lives and what it holds."""
    path: str
    """File name relative to the dataset directory."""
    dtype: str
    """numpy dtype string, little-endian (e.g. ``<i8``)."""
    shape: tuple[int, ...]
    """Array shape; the file holds exactly ``prod(shape) * itemsize`` bytes."""
    crc32: int | None = None
    """crc32 of the file bytes, computed while writing."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict:
        return {"path": self.path, "dtype": self.dtype, "shape": list(self.shape),
                "offset": 0, "bytes": self.nbytes, "crc32": self.crc32}

    @classmethod
    def from_json(cls, obj: dict, where: str) -> "ArraySpec":
        try:
            crc = obj.get("crc32")
            if crc is not None and (isinstance(crc, bool) or not isinstance(crc, int) or not 0 <= crc < 2**32):
                raise ValueError(f"crc32 {crc!r} is not a 32-bit checksum")
            spec = cls(path=str(obj["path"]), dtype=str(np.dtype(obj["dtype"]).str),
                       shape=tuple(int(s) for s in obj["shape"]), crc32=crc)
            if any(d < 0 for d in spec.shape) or np.dtype(spec.dtype).hasobject:
                raise ValueError("negative dimension or object dtype")
            if spec.nbytes >= 2**62:  # no file is that large; numpy's int64 arithmetic would overflow
                raise ValueError(f"{spec.nbytes} bytes is beyond any file size")
            return spec
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(f"{where}: malformed file entry {obj!r} ({exc}); re-create the directory") from None


def open_array(directory: Path, spec: ArraySpec, mode: str = "r") -> np.ndarray:
    """Memory-map one array, checking that the file has exactly the promised size."""
    path = directory / spec.path
    if not path.exists():
        raise IntegrityError(f"{path} is missing although the manifest lists it; re-create {directory}")
    size = path.stat().st_size
    if size != spec.nbytes:
        what = "truncated" if size < spec.nbytes else "longer than expected"
        raise IntegrityError(f"{path} is {what}: {size} bytes on disk, the manifest promises {spec.nbytes} "
                             f"({spec.dtype} {list(spec.shape)}); re-create {directory}")
    if spec.nbytes == 0:
        return np.zeros(spec.shape, dtype=spec.dtype)
    return np.memmap(path, dtype=spec.dtype, mode=mode, shape=spec.shape)


def read_array(directory: Path, spec: ArraySpec, piece_bytes: int = 64 << 20) -> np.ndarray:
    """One array read into a new in-memory array with plain reads (not a memory map), in large pieces."""
    open_array(directory, spec)  # exists and has exactly the promised size
    out = np.empty(spec.shape, dtype=spec.dtype)
    view = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")
    path = Path(directory) / spec.path
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < view.nbytes:
            got = f.readinto(view[done:done + piece_bytes])
            if not got:
                raise IntegrityError(f"{path} ends after {done} bytes although the manifest promises "
                                     f"{spec.nbytes}; re-create {directory}")
            done += got
    return out


def read_rows(path, ids, *, num_rows: int, dim: int, dtype, gap_bytes: int = 64 << 10, where=None) -> np.ndarray:
    """Rows ``ids`` (in their order) of a row-major ``[num_rows, dim]`` file, read with ``pread`` in ascending id
    order, rows less than ``gap_bytes`` apart in one request. No memory map: scattered rows through a map cost
    readahead around every row (tens of times the bytes) and stay in the process's RSS."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    dtype = np.dtype(dtype)
    rb = dim * dtype.itemsize
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_rows):
        raise ConfigError(f"feature rows must lie in 0..{num_rows - 1}")
    uniq, inverse = np.unique(ids, return_inverse=True)
    out = np.empty((uniq.size, dim), dtype=dtype)
    if uniq.size:
        cut = np.flatnonzero(np.diff(uniq) * rb > gap_bytes) + 1
        starts = np.concatenate([[0], cut]).tolist()
        ends = np.concatenate([cut, [uniq.size]]).tolist()
        fd = os.open(path, os.O_RDONLY)
        try:
            for a, b in zip(starts, ends):
                lo, hi = int(uniq[a]), int(uniq[b - 1]) + 1
                raw = os.pread(fd, (hi - lo) * rb, lo * rb)
                if len(raw) != (hi - lo) * rb:
                    raise IntegrityError(f"{path} ends early (row {hi - 1}); re-create {where or path}")
                out[a:b] = np.frombuffer(raw, dtype=dtype).reshape(hi - lo, dim)[uniq[a:b] - lo]
        finally:
            os.close(fd)
    return out[inverse]


HETERO_VERSION = 2
"""Dataset format version of heterogeneous datasets (:mod:`diskgnn.hetero`); version 1 is homogeneous."""


def is_hetero(path) -> bool:
    """Whether ``path`` holds a heterogeneous dataset (a version-2 dataset manifest with a 'hetero' section)."""
    try:
        m = json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT and m.get("version") == HETERO_VERSION \
        and isinstance(m.get("hetero"), dict)


class ArrayWriter:
    """Streams one raw array to disk in chunks, counting rows and computing crc32.

    ``resume`` (what :meth:`sync` returned before a kill) continues the file
    after its first ``resume["bytes"]`` bytes instead of starting it afresh.
    """

    def __init__(self, directory: Path, name: str, dtype, row_shape: tuple[int, ...] = (), *,
                 resume: dict | None = None):
        self.name = name
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.row_shape = tuple(row_shape)
        self.rows = 0
        path = directory / self.path
        if resume is None:
            self._writer = Crc32Writer(path)
            return
        row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.rows, rest = divmod(int(resume["bytes"]), row_bytes)
        if rest:
            raise IntegrityError(f"{path}: cannot resume after {resume['bytes']} bytes, not a whole number of "
                                 f"{row_bytes}-byte rows; run the command again with --overwrite")
        self._writer = Crc32Writer(path, resume=resume)

    @property
    def path(self) -> str:
        """The file name, relative to the output directory."""
        return f"{self.name}.bin"

    def sync(self) -> dict:
        """Flush and fsync the rows written so far; returns the ``resume`` state for them."""
        return self._writer.sync()

    def write(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        if chunk.shape[1:] != self.row_shape:
            raise InputFormatError(f"{self.name}: chunk of shape {chunk.shape} does not have rows of shape {self.row_shape}")
        self._writer.write(chunk)
        self.rows += chunk.shape[0]

    def close(self) -> ArraySpec:
        info = self._writer.close()
        return ArraySpec(path=self.path, dtype=self.dtype.str, shape=(self.rows, *self.row_shape),
                         crc32=info["crc32"])


class DatasetWriter:
    """Writes a dataset directory; the manifest is published by :meth:`finish` only.

    Use as a context manager: leaving the block with an exception removes the
    partial files, so nothing that looks like a dataset is left behind.

    With ``resume_key`` the step is resumable: :meth:`save_progress` fsyncs the
    growing files and journals their lengths and checksums with the step's own
    state; a rerun with an equal key (and without ``overwrite``) finds that
    journal in :attr:`resumed` and reopens the files with ``writer(...,
    resume=True)``, cut back to the journaled lengths. A journal of another key,
    or one whose files no longer match, is ignored and the step starts afresh.
    """

    def __init__(self, out: str | os.PathLike, *, num_nodes: int, feat_dim: int, feat_dtype: str,
                 num_classes: int, source: dict, config: dict, overwrite: bool = False,
                 expected_edges: int | None = None, resume_key: dict | None = None):
        if num_nodes <= 0:
            raise InputFormatError(f"a dataset needs at least one node, got {num_nodes}")
        if feat_dim <= 0:
            raise InputFormatError(f"features need at least one column, got {feat_dim}")
        if num_classes <= 0:
            raise InputFormatError(f"labels need at least one class, got {num_classes}")
        feature_dtype(feat_dtype)
        self.resume_key = resume_key
        self.resumed: dict | None = None
        """The step state of the interrupted run being resumed (None: a fresh start)."""
        self._resumed_files: dict[str, dict] = {}
        if resume_key is None:
            self.out = prepare_output_dir(out, overwrite=overwrite)
        else:
            self.out, journal = prepare_resumable_output_dir(out, resume_key, overwrite=overwrite)
            if journal is not None:
                self.resumed, self._resumed_files = journal["state"], journal["files"]
        # Features, offsets, labels and splits have known sizes; edges are an estimate when given.
        certain = num_nodes * (feat_dim * feature_dtype(feat_dtype).itemsize + 8 + 8) + 8
        id_bytes = node_id_dtype(num_nodes).itemsize
        expect_output_bytes(self.out, certain + num_nodes * 8 + (expected_edges or 0) * id_bytes)
        kept = sum(int(f["bytes"]) for f in self._resumed_files.values())
        # the edges too when their count is known up front (an upper bound, before de-duplication)
        check_free_space(self.out, max(certain + (expected_edges or 0) * id_bytes - kept, 0), "the dataset")
        self.num_nodes, self.feat_dim, self.feat_dtype = int(num_nodes), int(feat_dim), feat_dtype
        self.num_classes = int(num_classes)
        self.source, self.config = source, config
        self.specs: dict[str, ArraySpec] = {}
        self.stats: dict = {}

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        """Remove everything written so far (the directory never had a manifest)."""
        abort_output_dir(self.out)

    def writer(self, name: str, dtype, row_shape: tuple[int, ...] = (), *, resume: bool = False) -> ArrayWriter:
        """A writer of array ``name``; with ``resume``, continuing the file the resumed journal lists (if any)."""
        state = self._resumed_files.get(f"{name}.bin") if resume else None
        return ArrayWriter(self.out, name, dtype, row_shape, resume=state)

    def features_writer(self, *, resume: bool = False) -> ArrayWriter:
        return self.writer("features", feature_dtype(self.feat_dtype), (self.feat_dim,), resume=resume)

    def resumed_file(self, path: str) -> dict | None:
        """The journaled ``{"bytes", "crc32"}`` of ``path`` (relative to the output) when resuming, else None."""
        return self._resumed_files.get(path)

    def save_progress(self, state: dict, writers=(), files: dict[str, dict] | None = None) -> None:
        """Journal how far the step got: fsync ``writers`` and record their lengths and checksums, the
        finished (fsynced) ``files`` given as ``{path: {"bytes", "crc32"}}``, and the step's ``state``."""
        if self.resume_key is None:
            raise ConfigError("save_progress needs a DatasetWriter made with resume_key")
        recorded = {w.path: w.sync() for w in writers}
        recorded.update(files or {})
        write_resume_journal(self.out, self.resume_key, recorded, state)

    def add(self, spec: ArraySpec, name: str) -> None:
        self.specs[name] = spec

    def write_array(self, name: str, array: np.ndarray, dtype=None, chunk_rows: int = 1 << 22) -> ArraySpec:
        w = self.writer(name, dtype or array.dtype, tuple(array.shape[1:]))
        for lo in range(0, array.shape[0], chunk_rows):
            w.write(np.asarray(array[lo:lo + chunk_rows]))
        spec = w.close()
        self.specs[name] = spec
        return spec

    def finish(self, *, extra: dict | None = None, check: bool = True) -> "Dataset":
        """Check the arrays, then publish the manifest."""
        missing = [n for n in ("indptr", "indices", "features", "labels", *(f"{s}_idx" for s in SPLITS))
                   if n not in self.specs]
        if missing:
            raise InputFormatError(f"dataset is missing arrays: {', '.join(missing)}")
        num_edges = self.specs["indices"].shape[0]
        body = {
            "num_nodes": self.num_nodes, "num_edges": int(num_edges), "feat_dim": self.feat_dim,
            "feat_dtype": self.feat_dtype, "num_classes": self.num_classes,
            "files": {n: s.to_json() for n, s in sorted(self.specs.items())},
            "source": self.source, "config": self.config, "stats": self.stats, **(extra or {}),
        }
        tmp = Dataset(self.out, body, check_files=True)
        if check:
            verify_dataset(tmp, check_crc=False, check_features=False)
        (self.out / RESUME_JOURNAL).unlink(missing_ok=True)  # the output is the same as an uninterrupted run's
        write_manifest(self.out, FORMAT, VERSION, body)
        finish_output_dir(self.out)
        return Dataset.open(self.out)


class Dataset:
    """A read-only view of a dataset directory; arrays are memory-mapped lazily."""

    def __init__(self, path: str | os.PathLike, manifest: dict, check_files: bool = True):
        self.path = Path(path)
        self.manifest = manifest
        where = str(self.path / "manifest.json")
        try:
            self.num_nodes = int(manifest["num_nodes"])
            self.num_edges = int(manifest["num_edges"])
            self.feat_dim = int(manifest["feat_dim"])
            self.feat_dtype = str(manifest["feat_dtype"])
            self.num_classes = int(manifest["num_classes"])
            files = manifest["files"]
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{where} lacks a valid field ({exc}); re-create {self.path}") from None
        if self.feat_dtype not in FEATURE_DTYPES:
            raise IntegrityError(f"{where}: unknown feature dtype {self.feat_dtype!r}")
        self.specs = {name: ArraySpec.from_json(obj, where) for name, obj in files.items()}
        expect = {"indptr": (self.num_nodes + 1,), "indices": (self.num_edges,),
                  "features": (self.num_nodes, self.feat_dim), "labels": (self.num_nodes,)}
        for name, shape in expect.items():
            if name not in self.specs:
                raise IntegrityError(f"{where} does not list the {name} array; re-create {self.path}")
            if self.specs[name].shape != shape:
                raise IntegrityError(f"{where}: {name} has shape {list(self.specs[name].shape)}, "
                                     f"expected {list(shape)} for {self.num_nodes} nodes")
        if np.dtype(self.specs["features"].dtype) != feature_dtype(self.feat_dtype):
            raise IntegrityError(f"{where}: features stored as {self.specs['features'].dtype} but feat_dtype "
                                 f"is {self.feat_dtype}")
        for s in SPLITS:
            if f"{s}_idx" not in self.specs:
                raise IntegrityError(f"{where} does not list the {s}_idx array")
        allowed = {"indptr": ("<i8",), "indices": ("<i4", "<i8"), "labels": ("<i8",),
                   **{f"{s}_idx": ("<i8",) for s in SPLITS}}
        for name, dtypes in allowed.items():
            if self.specs[name].dtype not in dtypes:
                raise IntegrityError(f"{where}: {name} is stored as {self.specs[name].dtype}, the format requires "
                                     f"{' or '.join(dtypes)}; re-create {self.path}")
            if len(self.specs[name].shape) != 1:
                raise IntegrityError(f"{where}: {name} has shape {list(self.specs[name].shape)}, expected 1-d")
        self.link = self._check_link(manifest, where)
        self._cache: dict[str, np.ndarray] = {}
        if check_files:
            for spec in self.specs.values():
                open_array(self.path, spec)

    def _check_link(self, manifest: dict, where: str) -> dict | None:
        """The manifest's ``link`` section after checking the held-out edge arrays it needs (None: no link data)."""
        link = manifest.get("link")
        names = [n for n in (*LINK_POSITIVES, *LINK_CANDIDATES) if n in self.specs]
        if link is None:
            if names:
                raise IntegrityError(f"{where} lists {', '.join(names)} but has no link section; re-create "
                                     f"{self.path}")
            return None
        if not isinstance(link, dict) or not isinstance(link.get("undirected"), bool):
            raise IntegrityError(f"{where}: the link section must be an object with a boolean 'undirected'; "
                                 f"re-create {self.path}")
        for name in LINK_POSITIVES:
            spec = self.specs.get(name)
            if spec is None:
                raise IntegrityError(f"{where} does not list the {name} array of a link dataset; re-create "
                                     f"{self.path}")
            if spec.dtype != "<i8" or len(spec.shape) != 2 or spec.shape[1] != 2:
                raise IntegrityError(f"{where}: {name} is {spec.dtype} {list(spec.shape)}, expected <i8 [E, 2] "
                                     f"(source, destination per row); re-create {self.path}")
        for name in LINK_CANDIDATES:
            spec = self.specs.get(name)
            rows = self.specs[name.replace("_neg", "_pos")].shape[0]
            if spec is None or spec.dtype != "<i8" or len(spec.shape) != 2 or spec.shape[0] != rows \
                    or (rows and spec.shape[1] < 1):
                got = "missing" if spec is None else f"{spec.dtype} {list(spec.shape)}"
                raise IntegrityError(f"{where}: {name} is {got}, expected <i8 [{rows}, K] (K candidates per "
                                     f"held-out edge); re-create {self.path}")
        return link

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Dataset":
        if is_hetero(path):
            raise ConfigError(f"{path} is a heterogeneous dataset (typed nodes and relations); sample, pack and "
                              f"train take homogeneous ones. Train it with diskgnn train-hetero (docs/HETERO.md)")
        manifest = read_manifest(path, FORMAT, VERSION)
        return cls(path, manifest)

    def array(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = open_array(self.path, self.specs[name])
        return self._cache[name]

    @property
    def indptr(self) -> np.ndarray:
        return self.array("indptr")

    @property
    def indices(self) -> np.ndarray:
        return self.array("indices")

    @property
    def features(self) -> np.ndarray:
        """[N, F] memory map of the stored rows (bf16 as uint16 bits)."""
        return self.array("features")

    def feature_rows(self, ids, gap_bytes: int = 64 << 10) -> np.ndarray:
        """Stored rows ``ids`` (in their order): :func:`read_rows` of ``features.bin``."""
        return read_rows(self.features_path, ids, num_rows=self.num_nodes, dim=self.feat_dim,
                         dtype=feature_dtype(self.feat_dtype), gap_bytes=gap_bytes, where=self.path)

    @property
    def labels(self) -> np.ndarray:
        return self.array("labels")

    @property
    def has_link(self) -> bool:
        """Whether the dataset holds link-prediction edges (``train_pos`` .. ``test_neg``)."""
        return self.link is not None

    @property
    def undirected(self) -> bool:
        """Whether the graph of a link dataset is undirected (every edge's reverse is an edge too)."""
        return bool(self.link and self.link.get("undirected"))

    def link_array(self, name: str) -> np.ndarray:
        """A link array (``train_pos`` [E, 2], ``val_pos``, ``test_pos``, ``val_neg`` [E, K], ``test_neg``)."""
        if name not in (*LINK_POSITIVES, *LINK_CANDIDATES):
            raise ConfigError(f"unknown link array {name!r}; choose one of "
                              f"{', '.join((*LINK_POSITIVES, *LINK_CANDIDATES))}")
        if self.link is None:
            raise ConfigError(f"{self.path} holds no link-prediction edges; prepare it with --edge-split (or "
                              f"val_pos/test_pos in the input) to train --task link")
        return self.array(name)

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return self.array(f"{name}_idx")

    @property
    def features_path(self) -> Path:
        return self.path / self.specs["features"].path

    @property
    def row_bytes(self) -> int:
        return self.feat_dim * feature_dtype(self.feat_dtype).itemsize

    @property
    def feature_bytes(self) -> int:
        return self.num_nodes * self.row_bytes

    def load_topology(self) -> tuple[np.ndarray, np.ndarray]:
        """indptr and indices read fully into memory (plain reads: no mapped copy stays resident beside them)."""
        return read_array(self.path, self.specs["indptr"]), read_array(self.path, self.specs["indices"])

    @property
    def fingerprint(self) -> str:
        """A short id of the data (sizes and checksums), stored by later steps to detect mix-ups."""
        key = json.dumps({n: [s.dtype, list(s.shape), s.crc32] for n, s in sorted(self.specs.items())},
                         sort_keys=True)
        return f"{zlib.crc32(key.encode()):08x}"

    def __repr__(self) -> str:
        return (f"Dataset({str(self.path)!r}, nodes={self.num_nodes}, edges={self.num_edges}, "
                f"feat={self.feat_dim}x{self.feat_dtype}, classes={self.num_classes})")


def summary(ds: Dataset) -> dict:
    """Human-facing statistics of a dataset (degree stats are computed from indptr in chunks)."""
    indptr = ds.indptr
    dmin, dmax, zero = None, 0, 0
    chunk = 1 << 24
    for lo in range(0, ds.num_nodes, chunk):
        deg = np.diff(np.asarray(indptr[lo:min(lo + chunk, ds.num_nodes) + 1]))
        if deg.size:
            dmin = int(deg.min()) if dmin is None else min(dmin, int(deg.min()))
            dmax = max(dmax, int(deg.max()))
            zero += int((deg == 0).sum())
    return {
        "path": str(ds.path), "format_version": ds.manifest.get("version"),
        "nodes": ds.num_nodes, "edges": ds.num_edges,
        "in_degree": {"mean": ds.num_edges / max(ds.num_nodes, 1), "min": dmin or 0, "max": dmax,
                      "isolated": zero},
        "features": {"dim": ds.feat_dim, "dtype": ds.feat_dtype, "bytes": ds.feature_bytes},
        "classes": ds.num_classes,
        "splits": {s: int(ds.specs[f"{s}_idx"].shape[0]) for s in SPLITS},
        "source": ds.manifest.get("source"), "fingerprint": ds.fingerprint,
        **({"link": {"undirected": ds.undirected,
                     **{n: int(ds.specs[n].shape[0]) for n in LINK_POSITIVES},
                     "eval_candidates": {n: int(ds.specs[n].shape[1]) for n in LINK_CANDIDATES},
                     **{k: v for k, v in ds.link.items() if k in ("edge_split", "seed", "held_out")}}}
           if ds.has_link else {}),
    }


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def array_crc32(array: np.ndarray, chunk_bytes: int = 64 << 20) -> int:
    """crc32 of an array's bytes (a memory map is read in chunks, so memory stays bounded)."""
    flat = array.reshape(-1) if array.ndim != 1 else array
    step = max(1, chunk_bytes // max(flat.itemsize, 1))
    crc = 0
    for lo in range(0, flat.shape[0], step):
        crc = zlib.crc32(np.ascontiguousarray(flat[lo:lo + step]).view(np.uint8), crc)
    return crc


class ArrayChunks:
    """One array file read front to back in pieces of ``rows`` rows, with the crc32 of what was read.

    Plain reads into one reused buffer, not a memory map: a map keeps every page it touched
    resident (file-mapped RSS) for as long as it lives, and a 10 GB array scanned through it
    fills whatever memory the process may use; read pages stay in the page cache, which the
    kernel drops first. After a complete pass :attr:`crc32` is the file's checksum.
    """

    def __init__(self, directory: Path, spec: ArraySpec, rows: int):
        open_array(directory, spec)  # exists and has exactly the promised size
        self.path = Path(directory) / spec.path
        self.dtype = np.dtype(spec.dtype)
        self.row_shape = tuple(spec.shape[1:])
        self.num_rows = spec.shape[0] if spec.shape else 1
        self.rows = max(int(rows), 1)
        self.crc32 = 0

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, rows)`` of each piece; the array yielded is reused for the next piece."""
        row_items = math.prod(self.row_shape)
        buf = np.empty((min(self.rows, self.num_rows), *self.row_shape), dtype=self.dtype)
        self.crc32 = 0
        with open(self.path, "rb", buffering=0) as f:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            for lo in range(0, self.num_rows, self.rows):
                piece = buf[:min(self.rows, self.num_rows - lo)]
                view, done = memoryview(piece.reshape(-1).view(np.uint8)) if row_items else memoryview(b""), 0
                while done < view.nbytes:
                    got = f.readinto(view[done:])
                    if not got:
                        raise IntegrityError(f"{self.path} ends after {lo * self.dtype.itemsize * row_items + done} "
                                             f"bytes although the manifest promises more; re-create "
                                             f"{self.path.parent}")
                    done += got
                self.crc32 = zlib.crc32(view, self.crc32)
                yield lo, piece


def _topology_problem(where: Path, n: int, e: int, indptr_pieces, indices_pieces) -> None:
    """Raise the first CSR problem met while walking the pieces: offsets 0 .. E and monotone, sources in 0 .. N-1."""
    last = None
    for lo, part in indptr_pieces:
        if part.size == 0:
            continue
        if lo == 0 and int(part[0]) != 0:
            raise IntegrityError(f"{where}/indptr.bin: offsets must start at 0 and end at {e} (edges), "
                                 f"found {int(part[0])} .. ; re-create the dataset")
        if last is not None and int(part[0]) < last:
            raise IntegrityError(f"{where}/indptr.bin: offsets decrease at node {lo - 1}; the CSR is corrupt")
        step = np.diff(part)
        if (step < 0).any():
            bad = lo + int(np.flatnonzero(step < 0)[0])
            raise IntegrityError(f"{where}/indptr.bin: offsets decrease at node {bad}; the CSR is corrupt")
        last = int(part[-1])
    if last != e:
        raise IntegrityError(f"{where}/indptr.bin: offsets must start at 0 and end at {e} (edges), "
                             f"found .. {last}; re-create the dataset")
    for lo, part in indices_pieces:
        if part.size and (int(part.min()) < 0 or int(part.max()) >= n):
            bad = lo + int(np.flatnonzero((part < 0) | (part >= n))[0])
            raise IntegrityError(f"{where}/indices.bin: edge {bad} has source node {int(part[bad - lo])}, "
                                 f"outside 0..{n - 1}; the CSR is corrupt")


def _array_pieces(array: np.ndarray, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    for lo in range(0, array.shape[0], chunk):
        yield lo, np.asarray(array[lo:lo + chunk])


def check_topology(ds: Dataset, indptr: np.ndarray | None = None, indices: np.ndarray | None = None, *,
                   check_crc: bool = True, chunk: int = 1 << 24) -> None:
    """Check the CSR before a kernel walks it: checksums, offsets 0 .. E and monotone, sources in 0 .. N-1.

    A corrupt offset or id would make a kernel read or write out of bounds, so
    the sampler calls this once on the arrays it will use: ``indptr`` and
    ``indices`` in memory, or (None) the files, read once front to back in
    pieces whatever their size (one pass for the checksum and the invariants).
    """
    where = ds.path
    n, e = ds.num_nodes, ds.num_edges
    if indptr is None or indices is None:
        ptr_chunks = ArrayChunks(ds.path, ds.specs["indptr"], chunk)
        idx_chunks = ArrayChunks(ds.path, ds.specs["indices"], chunk)
        _topology_problem(where, n, e, ptr_chunks, idx_chunks)
        crcs = {"indptr": ptr_chunks.crc32, "indices": idx_chunks.crc32}
    else:
        _topology_problem(where, n, e, _array_pieces(indptr, chunk), _array_pieces(indices, chunk))
        crcs = {name: array_crc32(arr) for name, arr in (("indptr", indptr), ("indices", indices))} if check_crc \
            else {}
    if check_crc:
        for name in ("indptr", "indices"):
            spec = ds.specs[name]
            if spec.crc32 is not None and crcs[name] != spec.crc32:
                raise IntegrityError(f"{where}/{spec.path}: checksum mismatch (the manifest says crc32 "
                                     f"{spec.crc32:08x}); the file is corrupt, re-create the dataset")


def verify_dataset(ds: Dataset, *, check_crc: bool = True, check_features: bool = True,
                   chunk: int = 1 << 24, progress=None) -> None:
    """Check every invariant of ``ds``; raise :class:`IntegrityError` naming the first problem.

    Each file is read once, front to back in pieces (never through a memory map, so memory
    stays at a few pieces whatever the dataset's size); checksums are computed on the way and
    compared last, so a broken invariant is named rather than only a mismatch.
    """
    where = ds.path
    n, e = ds.num_nodes, ds.num_edges
    chunks = {name: ArrayChunks(where, spec, chunk) for name, spec in ds.specs.items()}
    _topology_problem(where, n, e, chunks["indptr"], chunks["indices"])
    for lo, part in chunks["labels"]:
        if part.size and (int(part.min()) < -1 or int(part.max()) >= ds.num_classes):
            bad = lo + int(np.flatnonzero((part < -1) | (part >= ds.num_classes))[0])
            raise IntegrityError(f"{where}/labels.bin: node {bad} has label {int(part[bad - lo])}, outside "
                                 f"0..{ds.num_classes - 1} (or -1 for unlabelled)")
    labels = ds.labels
    seen = np.zeros(n, dtype=np.uint8)
    for s in SPLITS:
        idx = np.concatenate([part.copy() for _, part in chunks[f"{s}_idx"]] or [np.zeros(0, np.int64)])
        if idx.size == 0:
            continue
        if int(idx.min()) < 0 or int(idx.max()) >= n:
            raise IntegrityError(f"{where}/{s}_idx.bin: node ids must lie in 0..{n - 1}, "
                                 f"found {int(idx.min())}..{int(idx.max())}")
        if np.unique(idx).size != idx.size:
            raise IntegrityError(f"{where}/{s}_idx.bin: repeats node ids")
        if seen[idx].any():
            bad = int(idx[np.flatnonzero(seen[idx])[0]])
            raise IntegrityError(f"{where}: splits overlap; node {bad} is in {s} and in an earlier split")
        seen[idx] = 1
        if (np.asarray(labels[np.sort(idx)]) < 0).any():
            raise IntegrityError(f"{where}/{s}_idx.bin: contains unlabelled nodes (label -1)")
    del seen
    read = {"indptr", "indices", "labels", *(f"{s}_idx" for s in SPLITS)}
    if ds.has_link:
        verify_link(ds)
    # A dataset prepared with --allow-nonfinite may hold NaN/inf rows on purpose.
    finite = check_features and not (ds.manifest.get("config") or {}).get("allow_nonfinite", False)
    if finite or check_crc:
        chunks["features"] = ArrayChunks(where, ds.specs["features"], max(1, (64 << 20) // max(ds.row_bytes, 1)))
        for lo, block in chunks["features"]:
            if finite:
                if ds.feat_dtype == "bf16":
                    block = bf16_bits_to_float32(block)
                if not np.isfinite(block).all():
                    bad = lo + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                    raise IntegrityError(f"{where}/features.bin: row {bad} holds NaN or inf")
            if progress:
                progress(block.shape[0])
        read.add("features")
    if check_crc:
        from diskgnn.manifest import file_crc32
        for name, spec in ds.specs.items():
            if spec.crc32 is None:
                continue
            got = chunks[name].crc32 if name in read else file_crc32(where / spec.path)
            if got != spec.crc32:
                raise IntegrityError(f"{where}/{spec.path}: checksum mismatch (crc32 {got:08x}, manifest says "
                                     f"{spec.crc32:08x}); the file is corrupt, re-create the dataset")


def verify_link(ds: Dataset, chunk: int = 1 << 22) -> None:
    """Check a link dataset's edges: ids in range, training edges in the graph, held-out edges (and, when
    undirected, their reverses) not in it; raise :class:`IntegrityError` naming the first problem."""
    from diskgnn.kernels.link import count_present_edges
    where = ds.path
    n = ds.num_nodes
    indptr, indices = ds.indptr, ds.indices
    for name in (*LINK_POSITIVES, *LINK_CANDIDATES):
        arr = ds.array(name)
        for lo, hi in _chunks(arr.shape[0], chunk):
            part = np.asarray(arr[lo:hi])
            if part.size and (int(part.min()) < 0 or int(part.max()) >= n):
                bad = lo + int(np.flatnonzero(((part < 0) | (part >= n)).any(axis=1))[0])
                raise IntegrityError(f"{where}/{name}.bin: row {bad} holds a node id outside 0..{n - 1}")
            if name == "train_pos":
                present = count_present_edges(indptr, indices, np.ascontiguousarray(part[:, 0]),
                                              np.ascontiguousarray(part[:, 1]))
                if present != part.shape[0]:
                    raise IntegrityError(f"{where}/train_pos.bin: {part.shape[0] - present} training edges near "
                                         f"row {lo} are not edges of the graph")
            elif name in ("val_pos", "test_pos"):
                for src, dst, what in ((0, 1, "edges"), (1, 0, "reverse edges")):
                    if what == "reverse edges" and not ds.undirected:
                        continue
                    present = count_present_edges(indptr, indices, np.ascontiguousarray(part[:, src]),
                                                  np.ascontiguousarray(part[:, dst]))
                    if present:
                        raise IntegrityError(f"{where}/{name}.bin: {present} held-out {what} near row {lo} are "
                                             f"edges of the message-passing graph, so a model could read the "
                                             f"answer; re-create the dataset")
