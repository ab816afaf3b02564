"""Import a user's graph into the dataset format (``diskgnn prepare``).

Readers for four input formats (``npz``, ``edgelist``, ``ogb``, ``dgl``) turn
the input into the same parts: an edge stream of (source, destination) chunks,
a feature stream of row chunks, labels and split ids. :func:`prepare` then

1. checks everything it can cheaply (files, shapes, dtypes, labels, splits);
2. scans the edges once, checking ids and counting in-degrees (text input is
   parsed once and cached as binary pairs under the output directory);
3. cuts the nodes into destination ranges whose in-edges fit the memory
   budget and, when there is more than one range, scatters the edges into a
   run file grouped by range (an external bucket sort);
4. builds each range's CSR in memory (counting sort by destination, then
   sort and de-duplicate each node's sources) and appends it to
   ``indices.bin`` / ``indptr.bin``;
5. copies the features in chunks, converting the dtype and rejecting NaN/inf.

Memory is the budget for edge work plus about 16 bytes per node (in-degree
counts and labels). Temporary files live in ``OUT/.prepare-scratch`` and are
removed; on any error :class:`~diskgnn.dataset.DatasetWriter` clears the
output, so nothing that looks like a dataset is left behind.

After a kill (SIGKILL, power cut) the same command resumes: the end of the
scan and of the grouping, and the progress of the CSR build and of the feature
copy (every ``journal_bytes`` of output) are journaled in ``OUT/resume.json``
(see :class:`_Journal`), and a rerun continues after the last of them with the
output of an uninterrupted run.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import time
import tokenize
import warnings
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from diskgnn.dataset import FORMAT as DATASET_FORMAT, VERSION as DATASET_VERSION
from diskgnn.dataset import (FEATURE_DTYPES, SPLITS, ArraySpec, Dataset, DatasetWriter, convert_features,
                             node_id_dtype)
from diskgnn.errors import (ConfigError, InputFormatError, InputNotFoundError, MemoryBudgetError,
                            MismatchError)
from diskgnn.manifest import RESUME_JOURNAL, Crc32Writer, raise_if_disk_full
from diskgnn.memory import resolve_memory_budget
from diskgnn.progress import ProgressFn, no_progress
from diskgnn.sizes import format_bytes

log = logging.getLogger(__name__)

FORMATS = ("npz", "edgelist", "ogb", "dgl")
MAX_CLASSES = 1 << 16
SCRATCH = ".prepare-scratch"
_MIN_WORK_BYTES = 8 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareConfig:
    """What to import and how."""
    format: str
    """Input format: npz, edgelist, ogb or dgl."""
    input: str
    """Input file or directory."""
    undirected: bool = False
    """Add the reverse of every edge."""
    drop_self_loops: bool = True
    """Drop edges from a node to itself."""
    drop_duplicates: bool = True
    """Keep each (source, destination) pair once."""
    dtype: str | None = None
    """Stored feature dtype (fp32, fp16, bf16); None keeps the input's (fp64 becomes fp32)."""
    memory_budget: str | int | None = None
    """Memory for edge work, bytes or "2G"; None = the memory available now."""
    allow_nonfinite: bool = False
    """Accept NaN/inf in features instead of stopping at the first such row."""
    features: str | None = None
    """edgelist: features .npy (N x F)."""
    labels: str | None = None
    """edgelist: labels .npy (N); -1 marks unlabelled nodes."""
    splits: str | None = None
    """edgelist: .npz holding train_idx, val_idx, test_idx."""
    num_nodes: int | None = None
    """Node count; must agree with the feature rows when given."""
    split_name: str | None = None
    """ogb: the split directory under split/ (default: the only one)."""
    edge_split: str | tuple | None = None
    """Link prediction: train,val,test shares of the edges to split off (seeded), e.g. "0.90,0.05,0.05"."""
    eval_negatives: int | None = None
    """Link prediction: candidates drawn per held-out edge when the input gives none (None: 100)."""
    split_seed: int = 0
    """Seed of ``edge_split`` and of the drawn candidates."""

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ConfigError(f"--format {self.format!r} is not supported; choose one of {', '.join(FORMATS)}")
        if not self.input or not isinstance(self.input, (str, os.PathLike)):
            raise ConfigError(f"input must be a file or directory path, got {self.input!r}")
        if self.dtype is not None and self.dtype not in FEATURE_DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r} is not supported; choose one of {', '.join(FEATURE_DTYPES)}")
        if self.memory_budget is not None:
            resolve_memory_budget(self.memory_budget)
        if self.num_nodes is not None and (isinstance(self.num_nodes, bool) or int(self.num_nodes) < 1):
            raise ConfigError(f"--num-nodes must be a positive integer, got {self.num_nodes!r}")
        if self.format != "edgelist":
            for name in ("features", "labels", "splits"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"--{name} only applies to --format edgelist; the {self.format} input "
                                      f"holds its own {name}")
        if self.split_name is not None and self.format != "ogb":
            raise ConfigError("--dataset-name only applies to --format ogb")
        from diskgnn.link import check_eval_negatives, parse_edge_split
        if self.edge_split is not None:
            object.__setattr__(self, "edge_split", parse_edge_split(self.edge_split))
        if self.eval_negatives is not None:
            object.__setattr__(self, "eval_negatives", check_eval_negatives(self.eval_negatives))
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, (int, np.integer)) \
                or not 0 <= self.split_seed < 2**63:
            raise ConfigError(f"--split-seed must be an integer in 0 .. 2**63-1, got {self.split_seed!r}")

    def budget_bytes(self) -> int:
        """The memory budget in bytes (the available memory when none was given)."""
        return resolve_memory_budget(self.memory_budget, fraction=0.7)


# --- input parts ---------------------------------------------------------------------------------

EdgeChunk = tuple  # (src int64[k], dst int64[k], where: Callable[[int], str])


@dataclass
class _Features:
    """A stream of feature rows, in order."""
    where: str
    num_rows: int
    dim: int
    dtype: np.dtype | str
    """Input dtype (numpy float dtype) or "bf16" (uint16 bit patterns)."""
    chunks: Callable[..., Iterator[np.ndarray]]
    """chunks(rows, start=0) yields consecutive blocks of at most ``rows`` rows, from row ``start`` on."""


@dataclass
class _Graph:
    """One input graph, checked for shapes and dtypes, not yet for edge ids."""
    num_nodes: int
    feat_dim: int
    feat_dtype: np.dtype | str
    """Input feature dtype (a numpy float dtype) or "bf16"."""
    labels: np.ndarray
    num_classes: int
    splits: dict
    source: dict
    edges: object = None
    """_ArrayEdges or _TextEdges; None until ``materialize`` ran (compressed .npz)."""
    features: _Features | None = None
    held_out: object = None
    """Link prediction: the held-out edges the input gives (:class:`diskgnn.link.GivenHeldOut`), or None."""


def _require(path: Path, what: str, fix: str = "") -> Path:
    if not path.exists():
        raise InputNotFoundError(f"{path} does not exist ({what}){'; ' + fix if fix else ''}")
    return path


# --- .npy / .npz access ----------------------------------------------------------------------------

def _read_npy_header(f, where: str):
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as exc:  # numpy parses the header text
        raise InputFormatError(f"{where} is not a valid .npy array ({exc}); save it with numpy.save") from None
    if dtype.hasobject:
        raise InputFormatError(f"{where} holds Python objects ({dtype}); save a plain numeric array")
    return shape, fortran, dtype, f.tell()


def _memmap_npy(path: Path, where: str, base: int = 0, available: int | None = None) -> np.ndarray:
    """Memory-map the .npy data at byte ``base`` of ``path``, checking it is not truncated."""
    with open(path, "rb") as f:
        f.seek(base)
        shape, fortran, dtype, data_at = _read_npy_header(f, where)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = (available if available is not None else path.stat().st_size - base) - (data_at - base)
    if have < nbytes:
        raise InputFormatError(
            f"{where} is truncated: its header promises {dtype} {list(shape)} ({nbytes} bytes of data), "
            f"the file holds {max(have, 0)}; the copy is incomplete, save or copy it again")
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_at, shape=tuple(shape),
                     order="F" if fortran else "C")


def _reader(arr: np.ndarray, row: int | None = None) -> Callable[[int, int], np.ndarray]:
    """``read(lo, hi)``: items ``lo..hi`` of ``arr`` (or of its row ``row``), as a fresh array.

    A C-ordered memory map is read with plain file reads: pages touched through a
    mapping stay in the process's resident set until unmapped, so streaming a
    4 GiB feature file through a map would show up as 4 GiB of RSS.
    """
    view = arr if row is None else arr[row]
    if isinstance(arr, np.memmap) and arr.filename and arr.flags.c_contiguous:
        path = arr.filename
        shape = tuple(view.shape)
        item_bytes = int(np.prod(shape[1:], dtype=np.int64)) * arr.itemsize
        start = int(arr.offset) + (0 if row is None else row * int(np.prod(arr.shape[1:])) * arr.itemsize)

        def read(lo: int, hi: int) -> np.ndarray:
            hi = min(hi, shape[0])
            out = np.empty((max(hi - lo, 0), *shape[1:]), dtype=arr.dtype)
            if out.size:
                with open(path, "rb") as f:
                    _read_into(f, start + lo * item_bytes, out, Path(path))
            return out
        return read
    return lambda lo, hi: np.array(view[lo:hi])


class _NpzArrays:
    """Named arrays of a ``.npz`` file or a directory of ``.npy`` files, memory-mapped.

    Members of a compressed ``.npz`` cannot be mapped; :meth:`materialize` extracts
    them (streaming) into a scratch directory first.
    """

    def __init__(self, path: Path):
        self.path = path
        self.is_dir = path.is_dir()
        self.names: set[str] = set()
        self._stored: dict[str, tuple[int, int]] = {}
        self._headers: dict[str, tuple] = {}
        self._materialized: dict[str, np.ndarray] = {}
        if self.is_dir:
            self.names = {p.stem for p in path.glob("*.npy")}
            return
        try:
            with zipfile.ZipFile(path) as zf:
                infos = {i.filename: i for i in zf.infolist()}
                for member, info in infos.items():
                    if not member.endswith(".npy"):
                        continue
                    name = member[:-4]
                    self.names.add(name)
                    with zf.open(member) as f:
                        shape, fortran, dtype, _ = _read_npy_header(f, f"{path}:{member}")
                    self._headers[name] = (shape, dtype)
                    if info.compress_type == zipfile.ZIP_STORED:
                        self._stored[name] = (info.header_offset, info.file_size)
        except zipfile.BadZipFile as exc:
            raise InputFormatError(f"{path} is not a valid .npz file ({exc}); save it with numpy.savez, or "
                                   f"give a directory of .npy files") from None

    def where(self, name: str) -> str:
        return str(self.path / f"{name}.npy") if self.is_dir else f"{self.path} (array {name!r})"

    def has(self, name: str) -> bool:
        return name in self.names

    def header(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        if self.is_dir:
            with open(self.path / f"{name}.npy", "rb") as f:
                shape, _, dtype, _ = _read_npy_header(f, self.where(name))
            return tuple(shape), dtype
        shape, dtype = self._headers[name]
        return tuple(shape), dtype

    def array(self, name: str) -> np.ndarray:
        """A memory map of array ``name`` (compressed members must be materialized first)."""
        if self.is_dir:
            return _memmap_npy(self.path / f"{name}.npy", self.where(name))
        if name in self._materialized:
            return self._materialized[name]
        if name in self._stored:
            header_offset, size = self._stored[name]
            with open(self.path, "rb") as f:
                f.seek(header_offset)
                local = f.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise InputFormatError(f"{self.path}: damaged zip entry for {name!r}; save the file again")
            data_at = header_offset + 30 + int.from_bytes(local[26:28], "little") + \
                int.from_bytes(local[28:30], "little")
            return _memmap_npy(self.path, self.where(name), base=data_at, available=size)
        raise InputFormatError(f"{self.where(name)} is compressed; call materialize first")

    def small(self, name: str) -> np.ndarray:
        """Load a small array (labels, split ids) fully."""
        if self.is_dir or name in self._stored:
            arr = self.array(name)
            return _reader(arr)(0, arr.shape[0]) if arr.ndim else np.asarray(arr)
        with zipfile.ZipFile(self.path) as zf, zf.open(f"{name}.npy") as f:
            try:
                return np.lib.format.read_array(f, allow_pickle=False)
            except (ValueError, EOFError, OSError, SyntaxError, tokenize.TokenError) as exc:
                raise InputFormatError(f"{self.where(name)} cannot be read ({exc}); save the file again") from None

    def needs_scratch(self, *names: str) -> bool:
        """Whether any of ``names`` is a compressed member that must be extracted to be mapped."""
        return not self.is_dir and any(name not in self._stored for name in names)

    def materialize(self, name: str, scratch: Path | None) -> np.ndarray:
        if self.is_dir or name in self._stored:
            return self.array(name)
        target = scratch / f"{name}.npy"
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(f"{name}.npy") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
        except OSError as exc:
            raise_if_disk_full(exc, scratch)
            raise
        except (zipfile.BadZipFile, EOFError) as exc:
            raise InputFormatError(f"{self.where(name)} cannot be decompressed ({exc}); save the file again") from None
        self._materialized[name] = _memmap_npy(target, self.where(name))
        return self._materialized[name]


# --- checks of the parts ---------------------------------------------------------------------------

def _check_feature_dtype(dtype, where: str) -> None:
    if isinstance(dtype, str):
        return
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise InputFormatError(
            f"{where} has dtype {dtype}; features must be floating point (float16/32/64). Convert them, "
            f"e.g. numpy.save(path, feat.astype(numpy.float32))")


def _memmap_features(arr: np.ndarray, where: str) -> _Features:
    if arr.ndim != 2:
        raise InputFormatError(f"{where} has shape {list(arr.shape)}; features must be a 2-D N x F array")
    _check_feature_dtype(arr.dtype, where)
    if arr.shape[1] < 1:
        raise InputFormatError(f"{where} has no feature columns (shape {list(arr.shape)})")

    read = _reader(arr)

    def chunks(rows: int, start: int = 0) -> Iterator[np.ndarray]:
        for lo in range(start, arr.shape[0], rows):
            yield read(lo, lo + rows)
    return _Features(where, int(arr.shape[0]), int(arr.shape[1]), arr.dtype, chunks)


def _clean_labels(raw: np.ndarray | None, num_nodes: int, where: str, chunk: int = 1 << 22, *,
                  quiet: bool = False) -> tuple[np.ndarray, int]:
    """Labels as int64 [N] (-1 = unlabelled) and the class count; NaN in float labels means unlabelled."""
    if raw is None:
        (log.info if quiet else log.warning)("no labels given: every node is unlabelled (-1)")
        return np.full(num_nodes, -1, dtype=np.int64), 1
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise InputFormatError(f"{where} has shape {list(raw.shape)}; labels must be one class id per node "
                               f"(multi-label targets are not supported)")
    if raw.shape[0] != num_nodes:
        raise MismatchError(f"{where} has {raw.shape[0]} labels but the graph has {num_nodes} nodes (feature "
                            f"rows); give one label per node, -1 for unlabelled ones")
    if raw.dtype.kind not in "iuf":
        raise InputFormatError(f"{where} has dtype {raw.dtype}; labels must be integer class ids "
                               f"(or floats with NaN for unlabelled nodes)")
    labels = np.empty(num_nodes, dtype=np.int64)
    for lo in range(0, num_nodes, chunk):
        part = np.asarray(raw[lo:lo + chunk])
        if part.dtype.kind == "f":
            nan = np.isnan(part)
            bad = ~nan & ((part != np.round(part)) | ~np.isfinite(part))
            if bad.any():
                i = lo + int(np.flatnonzero(bad)[0])
                raise InputFormatError(f"{where}: node {i} has label {raw[i]!r}, not a whole number; labels "
                                       f"must be integer class ids (NaN or -1 for unlabelled)")
            out = np.where(nan, -1, part).astype(np.int64)
        else:
            out = part.astype(np.int64)
            if part.dtype.kind == "u" and part.dtype.itemsize == 8 and (part > np.iinfo(np.int64).max).any():
                out[part > np.iinfo(np.int64).max] = np.iinfo(np.int64).min
        labels[lo:lo + out.shape[0]] = out
    if num_nodes:
        low, high = int(labels.min()), int(labels.max())
        if low < -1:
            i = int(np.flatnonzero(labels < -1)[0])
            raise InputFormatError(f"{where}: node {i} has label {int(labels[i])}, out of range; labels must "
                                   f"be 0..C-1, or -1 for an unlabelled node")
        if high >= MAX_CLASSES:
            i = int(np.argmax(labels))
            raise InputFormatError(f"{where}: node {i} has label {high}, out of range; labels must be class "
                                   f"ids 0..{MAX_CLASSES - 1} (renumber the classes 0..C-1)")
    else:
        high = -1
    return labels, max(high + 1, 1)


def _clean_splits(raw: dict, labels: np.ndarray, where: dict) -> dict:
    """Split ids as int64 arrays: in range, unique, labelled and pairwise disjoint."""
    n = labels.shape[0]
    owner = np.full(n, -1, dtype=np.int8)
    out = {}
    for k, name in enumerate(SPLITS):
        arr = raw.get(name)
        w = where.get(name, name)
        if arr is None:
            out[name] = np.zeros(0, dtype=np.int64)
            continue
        arr = np.asarray(arr)
        if arr.dtype == np.bool_:
            if arr.shape != (n,):
                raise MismatchError(f"{w}: a boolean mask needs one entry per node ({n}), got shape {list(arr.shape)}")
            arr = np.flatnonzero(arr)
        if arr.ndim == 2 and 1 in arr.shape:
            arr = arr.reshape(-1)
        if arr.ndim != 1:
            raise InputFormatError(f"{w} has shape {list(arr.shape)}; a split is a 1-D array of node ids")
        if arr.dtype.kind not in "iu":
            raise InputFormatError(f"{w} has dtype {arr.dtype}; split node ids must be integers, e.g. "
                                   f"idx.astype(numpy.int64)")
        ids = arr.astype(np.int64)
        if ids.size:
            bad = (ids < 0) | (ids >= n)
            if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
                bad |= arr > np.iinfo(np.int64).max
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InputFormatError(f"{w}: entry {i} is node {arr[i]}, outside 0..{n - 1}; split ids must "
                                       f"be node ids of this graph")
            uniq, counts = np.unique(ids, return_counts=True)
            if uniq.size != ids.size:
                raise InputFormatError(f"{w}: node {int(uniq[np.argmax(counts > 1)])} appears more than once; "
                                       f"list each node once")
            taken = owner[ids] >= 0
            if taken.any():
                v = int(ids[np.flatnonzero(taken)[0]])
                raise InputFormatError(f"splits overlap: node {v} is in {SPLITS[owner[v]]} ({where.get(SPLITS[owner[v]])}) "
                                       f"and in {name} ({w}); each node may belong to one split only")
            owner[ids] = k
            unlabelled = labels[ids] < 0
            if unlabelled.any():
                v = int(ids[np.flatnonzero(unlabelled)[0]])
                raise InputFormatError(f"{w}: node {v} is in the {name} split but has no label (-1/NaN); "
                                       f"splits may only hold labelled nodes")
        out[name] = ids
    return out


def _check_num_nodes(cfg: PrepareConfig, num_rows: int, where: str) -> int:
    if cfg.num_nodes is not None and int(cfg.num_nodes) != num_rows:
        raise MismatchError(f"--num-nodes {cfg.num_nodes} does not match the {num_rows} feature rows of "
                            f"{where}; features need one row per node")
    if num_rows < 1:
        raise InputFormatError(f"{where} has no rows; a graph needs at least one node")
    return num_rows


# --- edges -------------------------------------------------------------------------------------------

class _ArrayEdges:
    """Edges held in two (possibly memory-mapped) integer arrays."""
    cache_needed = False

    def __init__(self, src: Callable[[int, int], np.ndarray], dst: Callable[[int, int], np.ndarray],
                 num_edges: int, where: str, unit: str = "edge"):
        self.src, self.dst, self.where, self.unit = src, dst, where, unit
        self.num_edges = int(num_edges)
        self.progress_total = self.num_edges

    def chunks(self, max_edges: int) -> Iterator[EdgeChunk]:
        for lo in range(0, self.num_edges, max_edges):
            hi = min(self.num_edges, lo + max_edges)
            src = self.src(lo, hi).astype(np.int64, copy=False)
            dst = self.dst(lo, hi).astype(np.int64, copy=False)
            yield src, dst, (lambda k, lo=lo: f"{self.where}, {self.unit} {lo + k}"), hi - lo


def _check_edge_index(shape, dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "iu":
        raise InputFormatError(f"{where} has dtype {dtype}; node ids must be integers. Convert it, "
                               f"e.g. edge_index.astype(numpy.int64)")
    if len(shape) != 2 or shape[0] != 2:
        hint = " (it looks transposed: save edge_index.T)" if len(shape) == 2 and shape[1] == 2 else ""
        raise InputFormatError(f"{where} has shape {list(shape)}; it must be 2 x E (source row, then "
                               f"destination row){hint}")


def _array_edges(edge_index: np.ndarray, where: str) -> _ArrayEdges:
    _check_edge_index(edge_index.shape, edge_index.dtype, where)
    return _ArrayEdges(_reader(edge_index, 0), _reader(edge_index, 1), edge_index.shape[1], where, unit="column")


_PARSE_ERRORS = {
    1: "is not a non-negative integer node id (edge lists hold integer ids: write 'src dst' per line, "
       "converting float ids to integers)",
    2: "is a negative node id; node ids are 0..N-1",
    3: "has only one column; each line needs 'src dst'",
    4: "is too large to be a node id",
}


def _line_at(block: bytes, pos: int) -> tuple[int, bytes]:
    start = block.rfind(b"\n", 0, pos) + 1
    end = block.find(b"\n", pos)
    return block.count(b"\n", 0, start), block[start:end if end >= 0 else len(block)].rstrip(b"\r")


def _is_data_line(line: bytes) -> bool:
    s = line.strip()
    return bool(s) and s[:1] not in (b"#", b"%")


def _looks_like_header(line: bytes) -> bool:
    tokens = [t for t in line.replace(b",", b" ").split() if t]
    if len(tokens) < 2:
        return False
    try:
        float(tokens[0]), float(tokens[1])
    except ValueError:
        return True
    return False


class _TextEdges:
    """A text edge list (plain or gzip): lines "src dst", optional header, # or % comments."""
    cache_needed = True

    def __init__(self, path: Path, allow_header: bool = True):
        self.path = path
        self.gz = path.suffix == ".gz"
        self.allow_header = allow_header
        self.num_edges = None
        self.progress_total = None if self.gz else path.stat().st_size

    def _open(self):
        return gzip.open(self.path, "rb") if self.gz else open(self.path, "rb")

    def blocks(self, block_bytes: int) -> Iterator[tuple[bytes, int, int]]:
        """Whole-line blocks: (bytes, number of the block's first line, input bytes consumed)."""
        line_no, carry, first = 1, b"", True
        try:
            with self._open() as f:
                while True:
                    data = f.read(block_bytes)
                    if not data:
                        if carry:
                            yield carry, line_no, 0
                        return
                    consumed = len(data)
                    if carry:
                        data = carry + data
                    cut = data.rfind(b"\n")
                    if cut < 0:
                        carry = data
                        continue
                    block, carry = data[:cut + 1], data[cut + 1:]
                    if first and self.allow_header:
                        first = False
                        block, skipped = self._strip_header(block)
                        line_no += skipped
                    yield block, line_no, consumed
                    line_no += block.count(b"\n")
        except (OSError, EOFError, zlib.error) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise InputFormatError(f"{self.path} cannot be read ({exc}); the file is damaged or incomplete, "
                                   f"copy it again") from None

    def _strip_header(self, block: bytes) -> tuple[bytes, int]:
        pos, lines = 0, 0
        while pos < len(block):
            end = block.find(b"\n", pos)
            end = len(block) if end < 0 else end
            line = block[pos:end]
            if _is_data_line(line):
                if _looks_like_header(line):
                    log.info("%s: skipping header line %r", self.path, line[:80].decode(errors="replace"))
                    return block[end + 1:], lines + 1
                return block, 0
            pos = end + 1
            lines += 1
        return block, 0

    def chunks(self, max_edges: int) -> Iterator[EdgeChunk]:
        from diskgnn.kernels.parse import parse_edge_lines
        block_bytes = int(min(max(max_edges * 4, 256), 32 << 20))
        cap = block_bytes // 4 + 16
        out_src = np.empty(cap, dtype=np.int64)
        out_dst = np.empty(cap, dtype=np.int64)
        for block, line_no, consumed in self.blocks(block_bytes):
            need = len(block) // 4 + 2
            if need > out_src.shape[0]:  # a long carried line: grow once
                out_src = np.empty(need, dtype=np.int64)
                out_dst = np.empty(need, dtype=np.int64)
            buf = np.frombuffer(block, dtype=np.uint8)
            k, err, pos = parse_edge_lines(buf, out_src, out_dst)
            if err:
                lines_before, text = _line_at(block, pos)
                token = block[pos:pos + 24].split()[0] if block[pos:pos + 24].split() else b""
                what = f"{token.decode(errors='replace')!r} " if err != 3 else ""
                raise InputFormatError(f"{self.path}, line {line_no + lines_before}: {what}"
                                       f"{_PARSE_ERRORS[err]} (line: {text[:80].decode(errors='replace')!r})")

            def where(i, block=block, line_no=line_no):
                return f"{self.path}, line {line_no + _nth_data_line(block, i)}"
            yield out_src[:k], out_dst[:k], where, consumed


def _nth_data_line(block: bytes, i: int) -> int:
    """Zero-based line offset of the i-th data line of ``block`` (error messages only)."""
    seen = -1
    for offset, line in enumerate(block.split(b"\n")):
        if _is_data_line(line):
            seen += 1
            if seen == i:
                return offset
    return 0


class _ScratchFile(Crc32Writer):
    """An append-only binary file in the scratch directory (checksummed, so a resumed run can check it)."""

    def write(self, array: np.ndarray) -> int:
        """Append ``array``; returns the offset it starts at."""
        at = self.nbytes
        super().write(np.ascontiguousarray(array))
        return at


def _read_into(f, offset: int, out: np.ndarray, where: Path) -> None:
    f.seek(offset)
    view = memoryview(out).cast("B")
    got = f.readinto(view)
    if got != view.nbytes:
        raise InputFormatError(f"{where}: short read of a temporary file ({got} of {view.nbytes} bytes)")


class _CachedEdges:
    """Edges re-read from the binary cache that the scan pass wrote (text inputs)."""

    def __init__(self, path: Path, dtype: np.dtype, blocks: list[tuple[int, int]]):
        self.path, self.dtype, self.blocks = path, dtype, blocks
        self.num_edges = sum(c for _, c in blocks)

    def chunks(self, max_edges: int) -> Iterator[EdgeChunk]:
        with open(self.path, "rb") as f:
            for offset, count in self.blocks:
                src = np.empty(count, dtype=self.dtype)
                dst = np.empty(count, dtype=self.dtype)
                _read_into(f, offset, src, self.path)
                _read_into(f, offset + src.nbytes, dst, self.path)
                yield src.astype(np.int64), dst.astype(np.int64), None, count


# --- the format readers ------------------------------------------------------------------------------

def _read_npz(cfg: PrepareConfig) -> tuple[_Graph, Callable[[Path], None]]:
    path = _require(Path(cfg.input), "--format npz input", "give a .npz file or a directory of .npy files")
    arrays = _NpzArrays(path)
    if not arrays.has("edge_index"):
        raise InputNotFoundError(f"{arrays.where('edge_index')} is missing; --format npz needs edge_index (2 x E) "
                                 f"and feat (N x F), plus label, train_idx, val_idx, test_idx (or val_pos, test_pos "
                                 f"for link prediction)")
    if not arrays.has("feat"):
        raise InputNotFoundError(f"{arrays.where('feat')} is missing: diskgnn trains on node features and this "
                                 f"graph has none. Give feat (N x F, one row per node); for a featureless graph "
                                 f"make some, e.g. a one-hot of each node's degree bucket or a fixed random "
                                 f"embedding per node, and save them as feat")
    shape, dtype = arrays.header("feat")
    if len(shape) != 2:
        raise InputFormatError(f"{arrays.where('feat')} has shape {list(shape)}; features must be N x F")
    _check_feature_dtype(dtype, arrays.where("feat"))
    n = _check_num_nodes(cfg, int(shape[0]), arrays.where("feat"))
    eshape, edtype = arrays.header("edge_index")
    _check_edge_index(eshape, edtype, arrays.where("edge_index"))
    labels, num_classes = _clean_labels(arrays.small("label") if arrays.has("label") else None, n,
                                        arrays.where("label"),
                                        quiet=cfg.edge_split is not None or arrays.has("val_pos") or arrays.has("test_pos"))
    raw_splits, where = {}, {}
    for s in SPLITS:
        if arrays.has(f"{s}_idx"):
            raw_splits[s] = arrays.small(f"{s}_idx")
            where[s] = arrays.where(f"{s}_idx")
        else:
            link = cfg.edge_split is not None or arrays.has("val_pos") or arrays.has("test_pos")
            (log.info if link else log.warning)("%s is missing: the %s split is empty", arrays.where(f"{s}_idx"), s)
    splits = _clean_splits(raw_splits, labels, where)
    graph = _Graph(num_nodes=n, feat_dim=int(shape[1]), feat_dtype=dtype, labels=labels,
                   num_classes=num_classes, splits=splits, source={"format": "npz", "input": str(path.resolve())})
    link_keys = ("val_pos", "test_pos", "val_neg", "test_neg")
    if any(arrays.has(k) for k in link_keys):
        from diskgnn.link import check_given
        if cfg.edge_split is not None:
            raise ConfigError(f"{path} holds held-out edges ({', '.join(k for k in link_keys if arrays.has(k))}) "
                              f"and --edge-split asks to draw them; drop --edge-split to use the given ones, or "
                              f"remove those keys to split")
        raw = {k: arrays.small(k) for k in link_keys if arrays.has(k)}
        graph.held_out = check_given({p: raw.get(f"{p}_pos") for p in ("val", "test")},
                                     {p: raw.get(f"{p}_neg") for p in ("val", "test")}, n,
                                     {k: arrays.where(k) for k in link_keys})

    def materialize(scratch: Path | None) -> None:
        graph.edges = _array_edges(arrays.materialize("edge_index", scratch), arrays.where("edge_index"))
        graph.features = _memmap_features(arrays.materialize("feat", scratch), arrays.where("feat"))
    if not arrays.needs_scratch("edge_index", "feat"):
        materialize(None)  # plain memory maps: check them (truncation) before any output exists
        return graph, lambda scratch: None
    return graph, materialize


def _read_edgelist(cfg: PrepareConfig) -> tuple[_Graph, Callable[[Path], None]]:
    path = _require(Path(cfg.input), "--format edgelist input", "give the text edge list file")
    if path.is_dir():
        raise InputFormatError(f"{path} is a directory; --format edgelist reads one text file of 'src dst' lines")
    if cfg.features is None:
        raise ConfigError("--format edgelist needs --features FILE.npy (N x F node features, one row per node)")
    fpath = _require(Path(cfg.features), "--features", "give the node features as a .npy file")
    feat = _memmap_features(_memmap_npy(fpath, str(fpath)), str(fpath))
    n = _check_num_nodes(cfg, feat.num_rows, str(fpath))
    raw_labels = None
    if cfg.labels is not None:
        lpath = _require(Path(cfg.labels), "--labels", "give the labels as a .npy file")
        raw_labels = _memmap_npy(lpath, str(lpath))
    labels, num_classes = _clean_labels(raw_labels, n, str(cfg.labels))
    raw_splits, where = {}, {}
    if cfg.splits is not None:
        spath = _require(Path(cfg.splits), "--splits", "give a .npz with train_idx, val_idx, test_idx")
        splits_file = _NpzArrays(spath)
        for s in SPLITS:
            if splits_file.has(f"{s}_idx"):
                raw_splits[s] = splits_file.small(f"{s}_idx")
                where[s] = splits_file.where(f"{s}_idx")
        if not raw_splits:
            raise InputFormatError(f"{spath} holds none of train_idx, val_idx, test_idx")
    else:
        log.warning("no --splits given: train, val and test splits are empty")
    splits = _clean_splits(raw_splits, labels, where)
    source = {"format": "edgelist", "input": str(path.resolve()), "features": str(fpath.resolve()),
              "labels": None if cfg.labels is None else str(Path(cfg.labels).resolve()),
              "splits": None if cfg.splits is None else str(Path(cfg.splits).resolve())}
    graph = _Graph(num_nodes=n, feat_dim=feat.dim, feat_dtype=feat.dtype, labels=labels, num_classes=num_classes,
                   splits=splits, source=source, edges=_TextEdges(path), features=feat)
    return graph, lambda scratch: None


def _gz_blocks(path: Path, block_bytes: int = 16 << 20) -> Iterator[bytes]:
    edges = _TextEdges(path, allow_header=False)
    for block, _, _ in edges.blocks(block_bytes):
        yield block


def _parse_floats(block: bytes, where: str, first_line: int) -> np.ndarray:
    text = block.replace(b",", b" ")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            return np.fromstring(text, dtype=np.float64, sep=" ")
        except (ValueError, DeprecationWarning):
            pass
    for i, line in enumerate(block.split(b"\n")):
        for token in line.replace(b",", b" ").split():
            try:
                float(token)
            except ValueError:
                raise InputFormatError(f"{where}, line {first_line + i}: {token[:40]!r} is not a number; "
                                       f"the file must hold comma-separated numbers") from None
    raise InputFormatError(f"{where}: cannot parse the numbers near line {first_line}")


def _read_csv_column(path: Path) -> np.ndarray:
    """A one-column numeric csv(.gz) as float64 (NaN allowed)."""
    parts, line = [], 1
    for block in _gz_blocks(path):
        if line == 1:
            first = block.split(b"\n", 1)[0]
            if len(first.replace(b",", b" ").split()) > 1:
                raise InputFormatError(f"{path}: line 1 has several values; expected one value per line "
                                       f"(multi-column targets are not supported)")
        parts.append(_parse_floats(block, str(path), line))
        line += block.count(b"\n")
    return np.concatenate(parts) if parts else np.zeros(0)


def _csv_features(path: Path, num_rows_hint: int | None) -> _Features:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        first = f.readline()
    dim = len([t for t in first.replace(b",", b" ").split() if t])
    if dim < 1:
        raise InputFormatError(f"{path} is empty; node features need one comma-separated row per node")

    def chunks(rows: int, start: int = 0) -> Iterator[np.ndarray]:
        for block in _csv_rows(rows):
            if start >= block.shape[0]:  # text cannot be entered midway: parse and skip what is done
                start -= block.shape[0]
                continue
            yield block[start:]
            start = 0

    def _csv_rows(rows: int) -> Iterator[np.ndarray]:
        block_bytes = int(min(max(rows * dim * 12, 1 << 20), 64 << 20))
        line = 1
        pending = np.zeros((0, dim), dtype=np.float32)
        for block in _gz_blocks(path, block_bytes):
            values = _parse_floats(block, str(path), line)
            nrows = block.count(b"\n")
            if values.size % dim:
                for i, text in enumerate(block.split(b"\n")[:nrows]):
                    cols = len(text.replace(b",", b" ").split())
                    if cols != dim:
                        raise InputFormatError(f"{path}, line {line + i}: {cols} values, expected {dim} (as on "
                                               f"line 1); every row needs the same number of features")
                raise InputFormatError(f"{path} near line {line}: rows of unequal length")
            line += nrows
            rows_here = values.reshape(-1, dim).astype(np.float32)
            if pending.shape[0]:
                rows_here = np.concatenate([pending, rows_here])
            for lo in range(0, rows_here.shape[0] - rows + 1, rows):
                yield rows_here[lo:lo + rows]
            left = rows_here.shape[0] % rows
            pending = rows_here[rows_here.shape[0] - left:] if left else rows_here[:0]
        if pending.shape[0]:
            yield pending
    return _Features(str(path), num_rows_hint if num_rows_hint is not None else -1, dim, np.dtype(np.float32),
                     chunks)


def _read_ogb(cfg: PrepareConfig) -> tuple[_Graph, Callable[[Path], None]]:
    root = _require(Path(cfg.input), "--format ogb input", "give the dataset directory holding raw/ and split/")
    if not root.is_dir():
        raise InputFormatError(f"{root} is not a directory; --format ogb reads an OGB dataset directory "
                               f"(raw/edge.csv.gz, raw/node-feat.csv.gz, raw/node-label.csv.gz, split/NAME/)")
    raw = _require(root / "raw", "the OGB raw directory", "give the dataset directory that holds raw/ and split/")
    edge_file = _require(raw / "edge.csv.gz", "OGB edges", "download or unpack the dataset again")
    feat_file = _require(raw / "node-feat.csv.gz", "OGB node features",
                         "diskgnn needs node features; this OGB dataset has none")
    num_nodes = None
    if (raw / "num-node-list.csv.gz").exists():
        counts = _read_csv_column(raw / "num-node-list.csv.gz")
        if counts.size != 1:
            raise InputFormatError(f"{raw / 'num-node-list.csv.gz'} holds {counts.size} graphs; only one graph "
                                   f"(node property prediction) is supported")
        num_nodes = int(counts[0])
    raw_labels, label_where = None, str(raw / "node-label.csv.gz")
    if (raw / "node-label.csv.gz").exists():
        raw_labels = _read_csv_column(raw / "node-label.csv.gz")
    if num_nodes is None:
        if raw_labels is None:
            raise InputNotFoundError(f"{raw / 'num-node-list.csv.gz'} is missing and there are no labels to count "
                                     f"nodes from; unpack the dataset again")
        num_nodes = int(raw_labels.shape[0])
    n = _check_num_nodes(cfg, num_nodes, str(raw / "num-node-list.csv.gz"))
    feat = _csv_features(feat_file, n)
    labels, num_classes = _clean_labels(raw_labels, n, label_where)
    split_root = root / "split"
    raw_splits, where = {}, {}
    if split_root.is_dir():
        names = sorted(p.name for p in split_root.iterdir() if p.is_dir())
        name = cfg.split_name
        if name is None:
            if len(names) > 1:
                raise ConfigError(f"{split_root} holds several splits ({', '.join(names)}); choose one with "
                                  f"--dataset-name")
            name = names[0] if names else None
        if name is not None:
            sdir = _require(split_root / name, "the chosen split", f"choose one of {', '.join(names)}")
            for s, fname in zip(SPLITS, ("train", "valid", "test")):
                f = sdir / f"{fname}.csv.gz"
                if f.exists():
                    ids = _read_csv_column(f)
                    if ids.size and (np.isnan(ids).any() or (ids != np.round(ids)).any()):
                        raise InputFormatError(f"{f} holds non-integer node ids; split files list node ids")
                    raw_splits[s], where[s] = ids.astype(np.int64), str(f)
    else:
        log.warning("%s is missing: train, val and test splits are empty", split_root)
    splits = _clean_splits(raw_splits, labels, where)
    source = {"format": "ogb", "input": str(root.resolve()), "split": cfg.split_name}
    graph = _Graph(num_nodes=n, feat_dim=feat.dim, feat_dtype=feat.dtype, labels=labels, num_classes=num_classes,
                   splits=splits, source=source, edges=_TextEdges(edge_file, allow_header=False), features=feat)
    return graph, lambda scratch: None


def _read_dgl(cfg: PrepareConfig) -> tuple[_Graph, Callable[[Path], None]]:
    path = _require(Path(cfg.input), "--format dgl input", "give a file written by dgl.save_graphs")
    try:
        import dgl  # noqa: F401  (only the reference stack has DGL)
        from dgl.data.utils import load_graphs
    except ImportError:
        raise ConfigError("--format dgl needs DGL, which is not installed; install the dgl extra "
                          "(pip install 'diskgnn[dgl]': torch 2.2.1, dgl 2.1.0, numpy<2) or export the graph "
                          "with --format npz") from None
    try:
        graphs, graph_data = load_graphs(str(path))
    except Exception as exc:  # DGL raises its own error types for damaged files
        raise InputFormatError(f"{path} cannot be read by dgl.load_graphs ({exc}); write it with "
                               f"dgl.save_graphs") from None
    if len(graphs) != 1:
        raise InputFormatError(f"{path} holds {len(graphs)} graphs; save exactly one graph")
    g = graphs[0]
    if len(g.ntypes) != 1 or len(g.etypes) != 1:
        raise InputFormatError(f"{path} holds a heterogeneous graph ({g.ntypes}, {g.etypes}); convert it with "
                               f"dgl.to_homogeneous first")
    n = int(g.num_nodes())
    if "feat" not in g.ndata:
        raise InputFormatError(f"{path} has no ndata['feat']; store node features as g.ndata['feat'] (N x F)")
    feat_t = g.ndata["feat"]
    where = f"{path} (ndata['feat'])"
    import torch
    if feat_t.dtype == torch.bfloat16:
        feat_np = feat_t.contiguous().view(torch.int16).numpy().view(np.uint16)
        if feat_np.ndim != 2:
            raise InputFormatError(f"{where} has shape {list(feat_np.shape)}; features must be N x F")
        features = _Features(where, n, int(feat_np.shape[1]), "bf16",
                             lambda rows, start=0: (feat_np[lo:lo + rows] for lo in range(start, n, rows)))
    else:
        features = _memmap_features(feat_t.numpy(), where)
    if features.num_rows != n:
        raise MismatchError(f"{where} has {features.num_rows} rows but the graph has {n} nodes; give one "
                            f"feature row per node")
    _check_num_nodes(cfg, n, where)
    labels, num_classes = _clean_labels(g.ndata["label"].numpy() if "label" in g.ndata else None, n,
                                        f"{path} (ndata['label'])")
    raw_splits, split_where = {}, {}
    for s in SPLITS:
        if f"{s}_mask" in g.ndata:
            raw_splits[s] = g.ndata[f"{s}_mask"].numpy().astype(bool)
            split_where[s] = f"{path} (ndata['{s}_mask'])"
        elif f"{s}_idx" in graph_data:
            raw_splits[s] = graph_data[f"{s}_idx"].numpy()
            split_where[s] = f"{path} (graph data '{s}_idx')"
    splits = _clean_splits(raw_splits, labels, split_where)
    src, dst = g.edges()
    src, dst = src.numpy(), dst.numpy()
    edges = _ArrayEdges(_reader(src), _reader(dst), src.shape[0], f"{path} (g.edges())")
    graph = _Graph(num_nodes=n, feat_dim=features.dim, feat_dtype=features.dtype, labels=labels,
                   num_classes=num_classes, splits=splits, source={"format": "dgl", "input": str(path.resolve())},
                   edges=edges, features=features)
    return graph, lambda scratch: None


_READERS = {"npz": _read_npz, "edgelist": _read_edgelist, "ogb": _read_ogb, "dgl": _read_dgl}


# --- the memory plan -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Plan:
    """How the memory budget is spent."""
    budget: int
    chunk_edges: int
    """Edges handled per input chunk."""
    range_edges: int
    """In-edges per destination range built in memory."""
    feature_chunk_bytes: int
    journal_bytes: int
    """Output bytes between two journals of the CSR build or the feature copy (what a kill can cost)."""


def _plan(budget: int, num_nodes: int, id_bytes: int, max_range_edges: int | None) -> _Plan:
    fixed = 16 * num_nodes  # in-degree counts + labels
    work = budget - fixed
    if work < _MIN_WORK_BYTES:
        raise MemoryBudgetError(
            f"--memory-budget {format_bytes(budget)} is too small for {num_nodes} nodes: about "
            f"{format_bytes(fixed + _MIN_WORK_BYTES)} is needed; raise --memory-budget")
    per_edge_build = 2 * id_bytes + id_bytes  # run pairs + sorted sources
    range_edges = max(1, work // 2 // per_edge_build)
    if max_range_edges is not None:
        range_edges = min(range_edges, max(1, int(max_range_edges)))
    chunk_edges = int(min(max(work // 4 // 56, 4096), 4 << 20))
    # each journal fsyncs: often enough that a kill costs little, rarely enough that it costs nothing
    journal_bytes = int(min(max(work // 4, 1 << 20), 64 << 20))
    return _Plan(budget, chunk_edges, int(range_edges), int(min(max(work // 16, 1 << 20), 64 << 20)), journal_bytes)


# --- resuming ----------------------------------------------------------------------------------------

class _Journal:
    """How far one prepare run got, journaled in the output directory after every finished piece.

    ``phase`` is where a rerun of the same command continues:

    * ``scan``: nothing is kept; the edges are read from the input;
    * ``group``: the scan is done: the in-degrees (and, for text input, the binary edge cache)
      are in the scratch directory;
    * ``build``: the edges are grouped by destination range (a run file when there are several);
      the ranges before ``next_range`` are in ``indptr.bin`` / ``indices.bin`` (``base`` edges);
    * ``features``: the CSR is complete; the rows before ``copied`` are in ``features.bin``.

    Finished files are listed in ``kept`` (re-checked by size and crc32 before a rerun trusts them);
    the file being appended to is journaled with the length and checksum it had at the save.
    """

    def __init__(self, w: DatasetWriter):
        self.w = w
        if w.resumed is None:
            self.state: dict = {"phase": "scan", "stats": {}, "kept": []}
        else:
            self.state = dict(w.resumed)
        self._kept = {rel: w.resumed_file(rel) for rel in self.state["kept"]}
        self.resumed_from = None if w.resumed is None else self.describe()

    @property
    def phase(self) -> str:
        return self.state["phase"]

    @property
    def stats(self) -> dict:
        return self.state["stats"]

    def describe(self) -> str:
        phase = self.phase
        if phase == "group":
            return "the grouping of the edges (their scan is done)"
        if phase == "build":
            return f"destination range {self.state['next_range']} of the CSR build"
        if phase == "features":
            return f"feature row {self.state['copied']}"
        return "the start"

    @property
    def kept(self) -> list[str]:
        """The finished files recorded so far (paths relative to the output directory)."""
        return sorted(self._kept)

    def has(self, rel: str) -> bool:
        return rel in self._kept

    def keep(self, rel: str, info: dict) -> None:
        """Record a finished file (fsynced; path relative to the output directory)."""
        self._kept[rel] = {"bytes": int(info["bytes"]), "crc32": int(info["crc32"])}

    def drop(self, rel: str) -> None:
        self._kept.pop(rel, None)

    def save(self, writers=(), **changes) -> None:
        """Journal the state (with ``changes``), the kept files and the growing ``writers``."""
        self.state.update(changes)
        self.state["kept"] = self.kept
        self.w.save_progress(self.state, writers, files=self._kept)


def _scratch_rel(name: str) -> str:
    return f"{SCRATCH}/{name}"


def _save_scratch_array(journal: _Journal, scratch: Path, name: str, array: np.ndarray) -> None:
    f = _ScratchFile(scratch / name)
    f.write(array)
    journal.keep(_scratch_rel(name), f.close())


def _load_scratch_array(scratch: Path, name: str, dtype) -> np.ndarray:
    path = scratch / name
    out = np.empty(path.stat().st_size // np.dtype(dtype).itemsize, dtype=dtype)
    with open(path, "rb") as f:
        _read_into(f, 0, out, path)
    return out


def _input_identity(cfg: PrepareConfig) -> dict:
    """Size and modification time of every input file: a rerun resumes only on unchanged inputs."""
    out = {}
    for name in ("input", "features", "labels", "splits"):
        value = getattr(cfg, name)
        if value is None:
            continue
        path = Path(value)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        rows = []
        for f in files:
            st = f.stat()
            rows.append([str(f.relative_to(path)) if path.is_dir() else f.name, st.st_size, st.st_mtime_ns])
        out[name] = rows
    return out


def _resumable_plan(out: Path, key: dict, plan: _Plan) -> _Plan:
    """The plan of an interrupted run of the same command in ``out`` when it fits this run's budget, else ``plan``.

    Resuming needs the interrupted run's chunking; with the default budget (the memory
    available now) the new plan may differ, so the old one is kept unless it needs more.
    """
    try:
        old = json.loads((out / RESUME_JOURNAL).read_text())["key"]
        if {k: v for k, v in old.items() if k != "plan"} != key:
            return plan
        journaled = _Plan(**old["plan"])
    except (OSError, ValueError, KeyError, TypeError):
        return plan
    if journaled == plan:
        return plan
    if journaled.budget > plan.budget:
        log.info("%s holds an interrupted run planned for %s of memory, more than the %s budget now; starting "
                 "again", out, format_bytes(journaled.budget), format_bytes(plan.budget))
        return plan
    return journaled


# --- building ---------------------------------------------------------------------------------------

def _scan_edges(graph: _Graph, cfg: PrepareConfig, plan: _Plan, scratch: Path, id_dtype: np.dtype,
                progress: ProgressFn, journal: _Journal) -> tuple[object, np.ndarray]:
    """Check every edge id, count in-degrees; cache text input as binary pairs. Journals the result."""
    from diskgnn.kernels.csr import count_in_degrees
    n = graph.num_nodes
    counts = np.zeros(n, dtype=np.int64)
    edges = graph.edges
    cache = _ScratchFile(scratch / "edges.bin") if edges.cache_needed else None
    blocks: list[tuple[int, int]] = []
    read, loops = 0, 0
    task = "prepare: read edges"
    progress(task, 0, edges.progress_total)
    for src, dst, where, advance in edges.chunks(plan.chunk_edges):
        bad = count_in_degrees(src, dst, n, cfg.drop_self_loops, cfg.undirected, counts)
        if bad >= 0:
            s, d = int(src[bad]), int(dst[bad])
            v = s if not 0 <= s < n else d
            role = "source" if v == s and not 0 <= s < n else "destination"
            problem = "is negative" if v < 0 else f"is >= {n}, the number of nodes"
            raise InputFormatError(
                f"{where(bad)}: edge ({s}, {d}) has {role} node {v}, which {problem}; node ids must be "
                f"0..{n - 1} (one per feature row). Fix the edge list or give features for every node")
        loops += int(np.count_nonzero(src == dst))
        read += src.shape[0]
        if cache is not None:
            offset = cache.write(src.astype(id_dtype))
            cache.write(dst.astype(id_dtype))
            blocks.append((offset, int(src.shape[0])))
        progress(task, advance, edges.progress_total)
    journal.stats.update(input_edges=read, self_loops=loops)
    _save_scratch_array(journal, scratch, "in_degrees.bin", counts)
    if cache is not None:
        journal.keep(_scratch_rel("edges.bin"), cache.close())
        _save_scratch_array(journal, scratch, "edge_blocks.bin", np.asarray(blocks, dtype=np.int64).reshape(-1, 2))
        edges = _CachedEdges(cache.path, id_dtype, blocks)
    return edges, counts


def _scanned_edges(graph: _Graph, scratch: Path, id_dtype: np.dtype, journal: _Journal) -> tuple[object, np.ndarray]:
    """What the scan of an interrupted run left: the edges to read again and the in-degrees."""
    counts = _load_scratch_array(scratch, "in_degrees.bin", np.int64)
    if counts.shape[0] != graph.num_nodes:
        raise InputFormatError(f"{scratch}/in_degrees.bin holds {counts.shape[0]} counts for {graph.num_nodes} "
                               f"nodes; delete the output directory and run prepare again")
    edges = graph.edges
    if journal.has(_scratch_rel("edges.bin")):
        blocks = _load_scratch_array(scratch, "edge_blocks.bin", np.int64).reshape(-1, 2)
        edges = _CachedEdges(scratch / "edges.bin", id_dtype, [(int(o), int(c)) for o, c in blocks])
    return edges, counts


def _release_scratch(scratch: Path, journal: _Journal, names, writers=(), **changes) -> None:
    """Journal ``changes`` without the scratch files ``names``, then delete them (a kill in between
    leaves files that the journal no longer lists, which the rerun removes)."""
    for name in names:
        journal.drop(_scratch_rel(name))
    journal.save(writers, **changes)
    for name in names:
        (scratch / name).unlink(missing_ok=True)


def _build_topology(w: DatasetWriter, graph: _Graph, cfg: PrepareConfig, plan: _Plan, scratch: Path,
                    progress: ProgressFn, journal: _Journal, link=None) -> None:
    from diskgnn.kernels.csr import (choose_ranges, compact_segments_inplace, counting_sort_by_destination,
                                     group_by_range, sort_segments)
    n = graph.num_nodes
    id_dtype = node_id_dtype(n)
    stats = journal.stats
    t0 = time.perf_counter()
    if journal.phase == "scan":
        edges, counts = _scan_edges(graph, cfg, plan, scratch, id_dtype, progress, journal)
        stats["scan_seconds"] = round(time.perf_counter() - t0, 3)
        journal.save(phase="group")
    else:
        edges, counts = _scanned_edges(graph, scratch, id_dtype, journal)
    t_scan = time.perf_counter()
    bounds = choose_ranges(counts, plan.range_edges)
    range_sizes = np.add.reduceat(counts, bounds[:-1]) if n else np.zeros(0, dtype=np.int64)
    total = int(counts.sum())
    del counts
    num_ranges = bounds.shape[0] - 1
    if journal.phase == "group":
        log.info("%d edges read (%d self-loops); %d pairs to build in %d destination range(s) of <= %d edges",
                 stats["input_edges"], stats["self_loops"], total, num_ranges, plan.range_edges)
    local_dtype = np.dtype(np.int32) if n < 2**31 else np.dtype(np.int64)
    starts = np.zeros(num_ranges + 1, dtype=np.int64)
    grow = 2 if cfg.undirected else 1

    # External bucket sort: with several ranges, scatter the pairs to a run file grouped by range.
    runs: list[list[tuple[int, int]]] = [[] for _ in range(num_ranges)]
    run_path = scratch / "runs.bin"
    if num_ranges > 1 and journal.phase == "group":
        run_file = _ScratchFile(run_path)
        task = "prepare: group edges by destination"
        progress(task, 0, edges.num_edges)
        out_local = np.empty(grow * plan.chunk_edges, dtype=local_dtype)
        out_src = np.empty(grow * plan.chunk_edges, dtype=id_dtype)
        index = []
        for src, dst, _, _ in edges.chunks(plan.chunk_edges):
            if grow * src.shape[0] > out_local.shape[0]:
                out_local = np.empty(grow * src.shape[0], dtype=local_dtype)
                out_src = np.empty(grow * src.shape[0], dtype=id_dtype)
            group_by_range(src, dst, bounds, cfg.drop_self_loops, cfg.undirected, out_local, out_src, starts)
            for r in np.flatnonzero(np.diff(starts)):
                lo, hi = int(starts[r]), int(starts[r + 1])
                offset = run_file.write(out_local[lo:hi])
                run_file.write(out_src[lo:hi])
                index.append((int(r), offset, hi - lo))
            progress(task, int(src.shape[0]), edges.num_edges)
        del out_local, out_src
        journal.keep(_scratch_rel("runs.bin"), run_file.close())
        _save_scratch_array(journal, scratch, "run_index.bin", np.asarray(index, dtype=np.int64).reshape(-1, 3))
        stats["group_seconds"] = round(time.perf_counter() - t_scan, 3)
        cache = ("edges.bin", "edge_blocks.bin") if isinstance(edges, _CachedEdges) else ()
        _release_scratch(scratch, journal, cache, phase="build", next_range=0, base=0)  # the runs hold every pair
    elif journal.phase == "group":
        stats["group_seconds"] = 0.0
        journal.state.update(phase="build", next_range=0, base=0)
    if num_ranges > 1:
        for r, offset, count in _load_scratch_array(scratch, "run_index.bin", np.int64).reshape(-1, 3):
            runs[int(r)].append((int(offset), int(count)))
    t_group = time.perf_counter()

    first, base = int(journal.state["next_range"]), int(journal.state["base"])
    indptr_w = w.writer("indptr", np.int64, resume=True)
    indices_w = w.writer("indices", id_dtype, resume=True)
    if indptr_w.rows == 0:
        indptr_w.write(np.zeros(1, dtype=np.int64))
    if (indptr_w.rows, indices_w.rows) != (int(bounds[first]) + 1, base):
        raise InputFormatError(f"{w.out}/{RESUME_JOURNAL} does not agree with indptr.bin / indices.bin; delete "
                               f"{w.out} or pass --overwrite to prepare the dataset from the start")
    task = "prepare: build CSR"
    progress(task, int(bounds[first]), n)
    single = np.array([0, n], dtype=np.int64)
    unjournaled = 0
    for r in range(first, num_ranges):
        lo_node, hi_node = int(bounds[r]), int(bounds[r + 1])
        size = int(range_sizes[r])
        local = np.empty(size, dtype=local_dtype)
        src_ids = np.empty(size, dtype=id_dtype)
        if num_ranges == 1:
            pos = 0
            for src, dst, _, _ in edges.chunks(plan.chunk_edges):
                k = group_by_range(src, dst, single, cfg.drop_self_loops, cfg.undirected, local[pos:],
                                   src_ids[pos:], starts[:2])
                pos += int(k)
        else:
            pos = 0
            with open(run_path, "rb") as f:
                for offset, count in runs[r]:
                    _read_into(f, offset, local[pos:pos + count], run_path)
                    _read_into(f, offset + count * local_dtype.itemsize, src_ids[pos:pos + count], run_path)
                    pos += count
        if pos != size:
            raise InputFormatError(f"{graph.source.get('input')}: the input changed while it was read "
                                   f"({pos} edges now, {size} before); run prepare again on a stable copy")
        num_dst = hi_node - lo_node
        indptr = np.empty(num_dst + 1, dtype=np.int64)
        indices = np.empty(size, dtype=id_dtype)
        counting_sort_by_destination(local, src_ids, num_dst, indptr, indices)
        del local, src_ids
        kept = np.empty(num_dst, dtype=np.int64)
        sort_segments(indptr, indices, cfg.drop_duplicates, kept)
        stored = compact_segments_inplace(indptr, indices, kept)
        if link is not None:  # held-out edges (and reverses, undirected) leave the graph; training edges recorded
            indptr, indices = link.filter(lo_node, indptr, indices[:stored])
            stored = int(indices.shape[0])
        indices_w.write(indices[:stored])
        indptr_w.write(indptr[1:] + base)
        base += int(stored)
        unjournaled += int(stored) * id_dtype.itemsize + num_dst * 8
        del indices, indptr, kept
        if r + 1 < num_ranges and unjournaled >= plan.journal_bytes:
            link_state = {} if link is None else {"link_removed": int(link.removed)}
            journal.save((indptr_w, indices_w, *(link.writers() if link else ())), next_range=r + 1, base=base,
                         **link_state)
            unjournaled = 0
        progress(task, num_dst, n)
    removed = 0 if link is None else int(link.removed)  # held-out edges that left the graph
    stats.update(pairs=total, edges=base, duplicates_dropped=total - base - removed if cfg.drop_duplicates else 0,
                 destination_ranges=int(num_ranges), build_seconds=round(time.perf_counter() - t_group, 3))
    specs = {"indptr": indptr_w.close(), "indices": indices_w.close()}
    if link is not None:
        specs.update(link.close_edges())
        journal.state["link_removed"] = int(link.removed)
    for spec in specs.values():
        journal.keep(spec.path, {"bytes": spec.nbytes, "crc32": spec.crc32})
        w.add(spec, Path(spec.path).stem)
    scratch_files = [rel.split("/", 1)[1] for rel in journal.kept if rel.startswith(SCRATCH + "/")]
    _release_scratch(scratch, journal, scratch_files, phase="features", copied=0, nonfinite=0,
                     topology={name: spec.to_json() for name, spec in specs.items()})


def _copy_features(w: DatasetWriter, graph: _Graph, cfg: PrepareConfig, plan: _Plan, dtype: str,
                   progress: ProgressFn, journal: _Journal) -> None:
    feat = graph.features
    n = graph.num_nodes
    src_itemsize = 2 if isinstance(feat.dtype, str) else feat.dtype.itemsize
    rows = max(1, plan.feature_chunk_bytes // (feat.dim * max(src_itemsize, 4) * 3))
    copied, nonfinite = int(journal.state["copied"]), int(journal.state["nonfinite"])
    out = w.features_writer(resume=True)
    if out.rows != copied:
        raise InputFormatError(f"{w.out}/{RESUME_JOURNAL} does not agree with features.bin; delete {w.out} or "
                               f"pass --overwrite to prepare the dataset from the start")
    task = "prepare: copy features"
    progress(task, copied, n)
    t0 = time.perf_counter()
    unjournaled = 0
    for block in feat.chunks(rows, copied):
        if block.shape[1:] != (feat.dim,):
            raise InputFormatError(f"{feat.where}: a row has {block.shape[1:]} values, expected {feat.dim}")
        if copied + block.shape[0] > n:
            raise MismatchError(f"{feat.where} has more than {n} rows (the node count); give one row per node")
        if feat.dtype == "bf16":
            from diskgnn.dataset import bf16_bits_to_float32
            values = bf16_bits_to_float32(block)
        else:
            values = block
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            if not cfg.allow_nonfinite:
                row = copied + int(np.flatnonzero(~finite)[0])
                raise InputFormatError(f"{feat.where}: row {row} holds NaN or inf; clean the features, or pass "
                                       f"--allow-nonfinite to keep such values")
            nonfinite += int((~finite).sum())
        with np.errstate(over="ignore"):  # fp16 overflow is reported below
            stored = block if feat.dtype == "bf16" and dtype == "bf16" else convert_features(values, dtype)
        if dtype == "fp16" and finite.all():
            overflow = ~np.isfinite(stored).all(axis=1)
            if overflow.any():
                row = copied + int(np.flatnonzero(overflow)[0])
                raise InputFormatError(f"{feat.where}: row {row} has values beyond the fp16 range (65504); "
                                       f"store fp32 or bf16 (--dtype), or rescale the features")
        out.write(stored)
        copied += block.shape[0]
        unjournaled += stored.nbytes
        if copied < n and unjournaled >= plan.journal_bytes:
            journal.save((out,), copied=copied, nonfinite=nonfinite)
            unjournaled = 0
        progress(task, block.shape[0], n)
    if copied != n:
        raise InputFormatError(f"{feat.where} is truncated: it holds {copied} feature rows but the graph has "
                               f"{n} nodes; the file is incomplete, export it again")
    w.add(out.close(), "features")
    journal.stats.update(nonfinite_feature_rows=nonfinite, feature_seconds=round(time.perf_counter() - t0, 3))


def _default_dtype(dtype: np.dtype | str) -> str:
    if isinstance(dtype, str):
        return dtype
    return "fp16" if dtype == np.float16 else "fp32"


def _check_out_apart_from_inputs(cfg: PrepareConfig, out: Path) -> None:
    """Refuse an output directory that holds an input: preparing it would delete that input."""
    target = out.resolve()
    for name in ("input", "features", "labels", "splits"):
        value = getattr(cfg, name)
        if value is None:
            continue
        path = Path(value).resolve()
        if path == target or target in path.parents:
            raise ConfigError(f"--out {out} holds the input {value}; writing the dataset there would delete it. "
                              f"Choose an --out directory outside the input")


def _link_config(cfg: PrepareConfig, graph: _Graph):
    """How to make a link dataset of ``graph`` (None: node classification only)."""
    from diskgnn.link import DEFAULT_EVAL_NEGATIVES, LinkSplitConfig
    if cfg.edge_split is None and graph.held_out is None:
        if cfg.eval_negatives is not None:
            raise ConfigError("--eval-negatives applies to link-prediction datasets; add --edge-split (or give "
                              "val_pos/test_pos in the input)")
        return None
    return LinkSplitConfig(edge_split=cfg.edge_split,
                           eval_negatives=cfg.eval_negatives or DEFAULT_EVAL_NEGATIVES, seed=cfg.split_seed)


def prepare(cfg: PrepareConfig, out, *, overwrite: bool = False, progress: ProgressFn = no_progress,
            max_range_edges: int | None = None) -> Dataset:
    """Import the graph described by ``cfg`` into the dataset directory ``out``.

    ``max_range_edges`` caps the in-edges built in memory at once below what the
    memory budget allows (tests use it to exercise the external sort).

    Progress is journaled (see :class:`_Journal`): after a kill, the same call
    continues after the last finished phase, destination range or feature chunk.
    """
    t0 = time.perf_counter()
    _check_out_apart_from_inputs(cfg, Path(out))
    graph, materialize = _READERS[cfg.format](cfg)
    budget = cfg.budget_bytes()
    id_dtype = node_id_dtype(graph.num_nodes)
    dtype = cfg.dtype or _default_dtype(graph.feat_dtype)
    cfg_json = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in asdict(cfg).items()}
    cfg_json = json.loads(json.dumps(cfg_json))  # as a journal reads it back (tuples become lists)
    key = {"step": "prepare", "format": DATASET_FORMAT, "version": DATASET_VERSION, "config": cfg_json,
           "inputs": _input_identity(cfg), "dtype": dtype, "id_dtype": id_dtype.str,
           "max_range_edges": max_range_edges}
    plan = _resumable_plan(Path(out), key, _plan(budget, graph.num_nodes, id_dtype.itemsize, max_range_edges))
    key["plan"] = asdict(plan)
    config = {**cfg_json, "memory_budget_bytes": plan.budget}
    link_cfg = _link_config(cfg, graph)
    with DatasetWriter(out, num_nodes=graph.num_nodes, feat_dim=graph.feat_dim, feat_dtype=dtype,
                       num_classes=graph.num_classes, source=graph.source, config=config,
                       overwrite=overwrite, resume_key=key) as w:
        journal = _Journal(w)
        link = None
        if link_cfg is not None:
            from diskgnn.link import LinkEdgeWriter
            link = LinkEdgeWriter(w, link_cfg, num_nodes=graph.num_nodes, undirected=cfg.undirected,
                                  given=graph.held_out, open_files=journal.phase != "features")
            link.removed = int(journal.state.get("link_removed", 0))
        if journal.resumed_from is not None:
            log.info("resuming %s from %s", w.out, journal.resumed_from)
        scratch = w.out / SCRATCH
        try:
            scratch.mkdir(exist_ok=journal.resumed_from is not None)
        except OSError as exc:
            raise_if_disk_full(exc, w.out)
            raise
        try:
            materialize(scratch)
            feat = graph.features
            if feat.num_rows not in (-1, graph.num_nodes):
                raise MismatchError(f"{feat.where} has {feat.num_rows} rows but the graph has {graph.num_nodes} "
                                    f"nodes; give one feature row per node")
            if journal.phase != "features":
                _build_topology(w, graph, cfg, plan, scratch, progress, journal, link)
            else:  # the CSR was finished by the interrupted run
                for name, spec in journal.state["topology"].items():
                    w.add(ArraySpec.from_json(spec, str(w.out / RESUME_JOURNAL)), name)
            _copy_features(w, graph, cfg, plan, dtype, progress, journal)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        w.write_array("labels", graph.labels)
        for s in SPLITS:
            w.write_array(f"{s}_idx", graph.splits[s])
        stats = dict(journal.stats)
        extra = {}
        if link is not None:
            extra["link"], link_stats = link.finish(where=str(w.out))
            stats.update(link_stats)
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        if journal.resumed_from is not None:
            stats["resumed_from"] = journal.resumed_from
        w.stats = stats
        ds = w.finish(extra=extra)
    log.info("prepared %s in %.1f s (%d input edges -> %d stored)", ds, time.perf_counter() - t0,
             stats["input_edges"], stats["edges"])
    return ds
