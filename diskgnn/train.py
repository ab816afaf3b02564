"""The pipelined out-of-core trainer (stage 4).

Each pass over a part runs a :class:`~diskgnn.pipeline.Pipeline`:

``load`` (batch structure from the samples, labels) > ``read`` (the feature
store's I/O: the batch's packed extent) > ``assemble`` (the feature matrix from
the cache tiers + the read rows, copied to the GPU on a side CUDA stream) >
``compute`` (forward/backward/step, in the caller's thread).

Training epoch ``e`` uses presampled part ``train/(e % K)`` with its batch
order reshuffled (seeded by ``(seed, e)``, so a resumed run sees the same
order). Validation and test run every ``eval_every`` epochs on the presampled
``val``/``test`` batches through the same out-of-core path; the reported test
accuracy is the one of the best-validation epoch.

Link prediction (samples made with ``--task link``): the model is an encoder
and an edge decoder (:mod:`diskgnn.decoders`), trained with binary
cross-entropy over each batch's positive and negative pairs; evaluation ranks
every held-out edge among its candidates (MRR, Hits@1/10/50), and the reported
test figures are those of the best-validation-MRR epoch.

Checkpoints (model, optimizer, epoch, RNG state, best metrics, history) are
written atomically after every epoch; ``resume`` continues from the last one
and, on CPU with a fixed seed, ends with the same weights as an uninterrupted
run.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import resource
import shutil
import statistics
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from diskgnn.decoders import HITS_AT, RankingMetrics, build_link_model, link_loss
from diskgnn.errors import CheckpointError, ConfigError, MismatchError, TrainingDivergedError
from diskgnn.memory import TrainingMemory
from diskgnn.models import LIBRARY_INIT, TorchBlock, build_model, model_spec, resolve_init
from diskgnn.loader import (BatchStages, FeatureSource, Loader, ThreadBudget, epoch_permutation, open_packed,
                            resolve_device)
from diskgnn.progress import ProgressFn, no_progress
from diskgnn.recipe_defaults import (DEFAULT_DROPOUT, DEFAULT_LR, DEFAULT_LR_SCHEDULE,  # noqa: F401 (re-exported)
                                     DEFAULT_WARMUP_EPOCHS, LR_SCHEDULES)
from diskgnn.sizes import parse_size

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "diskgnn.checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
DEFAULT_EPOCHS = 10
EVAL_MODES = ("sampled", "layerwise")
"""``--eval-mode``: the presampled val/test batches (their fanouts: ``sample --eval-fanouts``), or layer-wise
inference over every node with all its neighbours (:mod:`diskgnn.inference`)."""
LEGACY_RECIPE = {"lr_schedule": "constant", "warmup_epochs": 0.0}
"""What a checkpoint written before the recipe flags existed was trained with (its init: :func:`legacy_init`)."""


# --- configuration -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """How to train; the model-defining fields are saved in checkpoints."""
    model: str = "sage"
    """Architecture: sage (GraphSAGE mean), gat or gcn, or a stack of another library's convolution,
    ``pyg:<Conv>`` / ``dgl:<Conv>`` (checked here, so a bad name fails before any long step)."""
    epochs: int = DEFAULT_EPOCHS
    """Training epochs in total (a resumed run continues up to this number)."""
    hidden: int | None = None
    """Hidden width (multi-head models: per head); None = 128 (multi-head: 32)."""
    heads: int = 4
    """Attention heads of GAT and of multi-head foreign convolutions."""
    dropout: float = DEFAULT_DROPOUT
    """Dropout between layers."""
    lr: float = DEFAULT_LR
    """Adam learning rate (the peak, with a warm-up or a schedule)."""
    init: str | None = None
    """Weight initialisation of diskgnn's own models: torch, xavier or xavier-relu (see
    :data:`diskgnn.models.INITS`); None = :data:`diskgnn.models.DEFAULT_INIT` (``library`` for pyg:/dgl:)."""
    lr_schedule: str = DEFAULT_LR_SCHEDULE
    """constant, or cosine: decay to 0 over the epochs after the warm-up (see :func:`lr_factor`)."""
    warmup_epochs: float = DEFAULT_WARMUP_EPOCHS
    """Epochs (may be fractional) over which the learning rate rises linearly from ~0 to ``lr``, step by step."""
    seed: int = 0
    """Seed of the weights, dropout and batch order."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (CUDA when available)."""
    threads: int | None = None
    """Compute threads: torch intra-op threads and the fused kernels' numba threads (None: the cores this
    process may run on); see :class:`ThreadBudget`."""
    assemble_threads: int | None = None
    """numba threads of the assembly stage's gathers (None: the same as ``threads``)."""
    eval_every: int = 1
    """Evaluate on val/test every this many epochs (and after the last)."""
    eval_mode: str = "sampled"
    """sampled: the presampled val/test batches; layerwise: every node with all its neighbours, layer by
    layer out of core (:mod:`diskgnn.inference`; diskgnn's own models, one process)."""
    eval_scratch: str | None = None
    """Directory for layer-wise evaluation's layer files (None: ``<checkpoint>/layerwise``, else a new
    directory beside the samples directory; removed after training)."""
    nproc: int = 1
    """Data-parallel processes on this machine (see :mod:`diskgnn.distributed`)."""
    metrics: str | None = None
    """JSON-lines file that per-epoch metrics and the final report are appended to."""
    checkpoint: str | None = None
    """Directory for the per-epoch checkpoint."""
    resume: bool = False
    """Continue from the checkpoint in ``checkpoint``."""
    queue_depth: int = 2
    """Items buffered between pipeline stages."""
    io_depth: int = 8
    """Read requests in flight (a disk with a long latency wants more)."""
    io_request: int = 1 << 20
    """Bytes per read request (a multiple of 4096)."""
    recheck_reads: bool = False
    """Check the crc32 of every packed read, not only each run's first read (``FeatureStore``)."""
    task: str | None = None
    """``node`` or ``link``; None: the task the samples were made for (a mismatch is an error)."""
    decoder: str | None = None
    """Link prediction's edge decoder: dot, mlp or distmult (None: dot)."""

    def __post_init__(self):
        if self.task not in (None, "node", "link"):
            raise ConfigError(f"--task must be node or link, got {self.task!r}")
        if self.decoder is not None:
            from diskgnn.decoders import DECODERS
            if self.decoder not in DECODERS:
                raise ConfigError(f"--decoder {self.decoder!r} does not exist; choose one of {', '.join(DECODERS)}")
            if self.task == "node":
                raise ConfigError("--decoder applies to link prediction only; use it with --task link")
        spec = model_spec(self.model)
        if self.hidden is None:
            object.__setattr__(self, "hidden", spec.default_hidden)
        object.__setattr__(self, "init", resolve_init(spec, self.init))
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, (int, float, np.number)) \
                or not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise ConfigError(f"--warmup-epochs must be a number of epochs >= 0 (e.g. 0.5 or 1), got "
                              f"{self.warmup_epochs!r}")
        object.__setattr__(self, "warmup_epochs", float(self.warmup_epochs))
        if self.eval_mode not in EVAL_MODES:
            raise ConfigError(f"--eval-mode {self.eval_mode!r} is not one of {', '.join(EVAL_MODES)}")
        if self.eval_mode == "layerwise" and spec.library is not None:
            raise ConfigError(f"--eval-mode layerwise runs diskgnn's own models (sage, gcn, gat), not --model "
                              f"{self.model}; evaluate it on presampled batches (sample --eval-fanouts -1,... for "
                              f"all neighbours)")
        if self.eval_mode == "layerwise" and self.nproc > 1:
            raise ConfigError("--eval-mode layerwise runs in one process; use --nproc 1, or evaluate data-parallel "
                              "runs on presampled batches (sample --eval-fanouts -1,... for all neighbours)")
        checks = [("epochs", self.epochs, 1), ("hidden", self.hidden, 1), ("heads", self.heads, 1),
                  ("eval_every", self.eval_every, 1), ("nproc", self.nproc, 1), ("queue_depth", self.queue_depth, 1),
                  ("io_depth", self.io_depth, 1), ("io_request", self.io_request, 4096),
                  ("seed", self.seed, 0)]
        if self.threads is not None:
            checks.append(("threads", self.threads, 1))
        if self.assemble_threads is not None:
            checks.append(("assemble_threads", self.assemble_threads, 1))
        for name, value, low in checks:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if self.io_request % 4096:
            raise ConfigError(f"--io-request must be a multiple of 4096 bytes (4K, 1M, ...), got {self.io_request}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must lie in [0, 1), got {self.dropout}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if self.resume and not self.checkpoint:
            raise ConfigError("--resume needs --checkpoint DIR (the directory the interrupted run wrote)")
        if not (self.device in ("auto", "cpu") or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"--device {self.device!r} is not understood; use cpu, cuda, cuda:N or auto")

    @classmethod
    def from_cli(cls, args) -> "TrainConfig":
        """Build from parsed CLI args (see tools/cli.py ``_train_args``)."""
        epochs = getattr(args, "train_epochs", None)
        recipe = {name: getattr(args, name) for name in ("dropout", "lr", "init", "lr_schedule", "warmup_epochs")
                  if getattr(args, name, None) is not None}  # flags left out take the measured defaults
        return cls(model=args.model, epochs=DEFAULT_EPOCHS if epochs is None else epochs,
                   hidden=getattr(args, "hidden", None), heads=getattr(args, "heads", 4), **recipe,
                   seed=getattr(args, "train_seed", 0) or 0, device=getattr(args, "device", "auto") or "auto",
                   threads=getattr(args, "threads", None),
                   assemble_threads=getattr(args, "assemble_threads", None), eval_every=getattr(args, "eval_every", 1),
                   eval_mode=getattr(args, "eval_mode", None) or "sampled",
                   eval_scratch=getattr(args, "eval_scratch", None),
                   nproc=getattr(args, "nproc", 1), metrics=getattr(args, "metrics", None),
                   checkpoint=getattr(args, "checkpoint", None), resume=bool(getattr(args, "resume", False)),
                   io_depth=getattr(args, "io_depth", None) or 8,
                   io_request=parse_size(getattr(args, "io_request", None) or "1M", name="--io-request"),
                   recheck_reads=bool(getattr(args, "recheck_reads", False)),
                   task=getattr(args, "task", None), decoder=getattr(args, "decoder", None))

    def model_fields(self) -> dict:
        """The fields that define the model and optimizer (must match to resume)."""
        return {"model": self.model, "hidden": self.hidden, "heads": self.heads, "dropout": self.dropout,
                "lr": self.lr, "seed": self.seed, "init": self.init, "lr_schedule": self.lr_schedule,
                "warmup_epochs": self.warmup_epochs}

    def recipe(self) -> dict:
        """How the model is trained, as recorded in the metrics and the checkpoint (docs/RECIPE.md)."""
        return {"model": self.model, "init": self.init, "dropout": self.dropout, "optimizer": "adam",
                "lr": self.lr, "lr_schedule": self.lr_schedule, "warmup_epochs": self.warmup_epochs,
                "epochs": self.epochs, "hidden": self.hidden, "heads": self.heads, "seed": self.seed}

    def to_json(self) -> dict:
        return asdict(self)


def check_task(cfg: TrainConfig, samples) -> bool:
    """Whether training is link prediction; an error when ``--task`` asks for the other task than the samples'."""
    link = samples.config.is_link
    if cfg.task == "link" and not link:
        raise MismatchError(f"--task link: {samples.path} was sampled for node classification; sample the dataset "
                            f"with `diskgnn sample DATASET --task link ...` (it needs held-out edges: prepare or "
                            f"synth it with --edge-split), pack those samples and train that packed directory")
    if cfg.task == "node" and link:
        raise MismatchError(f"--task node: {samples.path} was sampled for link prediction (--task link); train it "
                            f"with --task link, or sample the dataset again without --task link for node "
                            f"classification")
    if not link and cfg.decoder is not None:
        raise ConfigError(f"--decoder applies to link prediction only, but {samples.path} was sampled for node "
                          f"classification")
    if link and cfg.eval_mode == "layerwise":
        raise ConfigError(f"--eval-mode layerwise evaluates node classification; {samples.path} was sampled for "
                          f"link prediction, whose validation and test edges are evaluated on presampled batches")
    return link


def legacy_init(model: str) -> str:
    """The init diskgnn gave ``model`` before ``--init`` existed (for checkpoints of that time)."""
    if model_spec(model).library is not None:
        return LIBRARY_INIT
    return "torch" if model == "gcn" else "xavier-relu"


def lr_factor(schedule: str, warmup_epochs: float, epochs: int, progress: float, step: float) -> float:
    """The share of the peak learning rate for a step that starts ``progress`` epochs into training and lasts
    ``step`` epochs (1 / batches per epoch).

    Warm-up: linear, reaching 1 at the end of the step that ends at ``warmup_epochs``. ``cosine`` then decays
    as ``(1 + cos(pi x)) / 2`` with ``x`` the share of the post-warm-up epochs done (0 at the last step's
    end). A function of the step alone, so a resumed run gets the same rates.
    """
    factor = 1.0
    if warmup_epochs > 0:
        factor = min(1.0, (progress + step) / warmup_epochs)
    if schedule == "cosine" and epochs > warmup_epochs:
        x = min(max((progress - warmup_epochs) / (epochs - warmup_epochs), 0.0), 1.0)
        factor *= 0.5 * (1.0 + math.cos(math.pi * x))
    return factor


# --- feature sources -----------------------------------------------------------------------------

class DatasetFeatures:
    """Feature rows gathered from the dataset's ``features.bin`` (memmap, or all in RAM).

    Not out-of-core: the in-memory ceiling (``in_memory=True``) and a
    page-cache baseline, and a stand-in where no packed directory exists.
    """

    def __init__(self, samples, dataset, device: torch.device | str = "cpu", *, in_memory: bool = False):
        from diskgnn.dataset import bf16_bits_to_float32
        self.samples, self.dataset = samples, dataset
        self.device = torch.device(device)
        self._widen = bf16_bits_to_float32 if dataset.feat_dtype == "bf16" else (
            lambda a: np.asarray(a, dtype=np.float32))
        self.features = np.asarray(dataset.features) if not in_memory else np.array(dataset.features)
        self._bytes_useful = 0

    def read(self, part: str, i: int) -> np.ndarray:
        ids = self.samples.input_nodes(part, i)
        order = np.argsort(ids, kind="stable")  # sorted ids read the file front to back
        rows = np.empty((ids.shape[0], self.dataset.feat_dim), dtype=self.features.dtype)
        rows[order] = self.features[ids[order]]
        self._bytes_useful += rows.nbytes
        return rows

    def assemble(self, part: str, i: int, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self._widen(rows)).to(self.device)

    def stats(self) -> dict:
        return {"bytes_read": self._bytes_useful, "bytes_useful": self._bytes_useful}


# --- metrics helpers -----------------------------------------------------------------------------

def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _numeric_delta(after: Any, before: Any) -> Any:
    """``after - before`` for every numeric leaf of two nested stats dicts (other leaves: ``after``)."""
    if isinstance(after, dict):
        before = before if isinstance(before, dict) else {}
        return {k: _numeric_delta(v, before.get(k)) for k, v in after.items()}
    if isinstance(after, (int, float)) and not isinstance(after, bool) and isinstance(before, (int, float)):
        return after - before
    return after


def store_epoch_metrics(before: dict, after: dict) -> dict:
    """Bytes read, bytes useful, read amplification and per-tier hit rate of one pass."""
    delta = _numeric_delta(after, before)
    out: dict[str, Any] = {}
    bytes_read = delta.get("bytes_read")
    bytes_useful = delta.get("bytes_useful")
    if isinstance(bytes_read, (int, float)):
        out["bytes_read"] = int(bytes_read)
    if isinstance(bytes_useful, (int, float)):
        out["bytes_useful"] = int(bytes_useful)
    if out.get("bytes_useful"):
        out["read_amplification"] = round(out.get("bytes_read", 0) / out["bytes_useful"], 4)
    else:
        out["read_amplification"] = None
    hits = delta.get("hits") or delta.get("rows")
    if isinstance(hits, dict):
        rows = {k: v for k, v in hits.items() if isinstance(v, (int, float))}
        total = sum(rows.values())
        out["hit_rate"] = {k: round(v / total, 6) if total else 0.0 for k, v in rows.items()}
    elif isinstance(after.get("hit_rate"), dict):
        out["hit_rate"] = after["hit_rate"]
    return out


class _MetricsLog:
    """Appends JSON lines to ``path`` (flushed per line); a no-op without a path."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a"):
                    pass
            except OSError as exc:
                raise ConfigError(f"--metrics {self.path}: cannot open for appending ({exc.strerror}); "
                                  f"choose a writable path") from None

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(self._line(record))
            f.flush()

    @staticmethod
    def _line(record: dict) -> str:
        return json.dumps(record, sort_keys=True, default=_json_default) + "\n"

    def resume(self, history: list[dict], training_left: bool) -> None:
        """Make the file end with the epoch records of a checkpoint's ``history``, as an uninterrupted run's would.

        A killed run may have written records of epochs after its last checkpoint
        (they are trained again) or, killed between saving the checkpoint and
        writing the record, lack the checkpoint's last epochs. When the
        checkpoint's run had finished, its final report stays if this run trains
        further (``training_left``) and is replaced by this run's otherwise.
        Records before the interrupted run's are kept; the file is replaced atomically.
        """
        if self.path is None:
            return
        from diskgnn.manifest import write_text_atomic
        epochs = len(history)
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--metrics {self.path}: cannot read it to resume ({exc}); move it away or choose "
                              f"another --metrics file") from None
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # a record cut short by the kill

        def record(line: str):
            try:
                rec = json.loads(line)
            except ValueError:
                return None
            return rec if isinstance(rec, dict) else None

        def epoch_of(line: str) -> int | None:
            rec = record(line)
            ok = rec is not None and rec.get("event") == "epoch" and isinstance(rec.get("epoch"), int)
            return rec["epoch"] if ok else None

        while lines and (epoch_of(lines[-1]) or 0) > epochs:
            lines.pop()  # trained after the checkpoint: this run trains it again
        last = record(lines[-1]) if lines else None
        finished = last is not None and last.get("event") == "final" and last.get("epochs") == epochs
        if finished and not training_left:
            lines.pop()  # this run only reports again: its final record replaces the finished run's
            finished = False
        if finished:
            have = epochs  # the run that wrote the checkpoint finished; this one trains further
        elif lines and epoch_of(lines[-1]) is not None:
            have = epoch_of(lines[-1])
        else:
            have = 0
        lines += [self._line(h) for h in history[have:]]
        if "".join(lines) != text:
            write_text_atomic(self.path, "".join(lines))


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# --- checkpoints ---------------------------------------------------------------------------------

def save_checkpoint(directory: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``directory/checkpoint.pt`` atomically (write .partial, fsync, rename)."""
    from diskgnn.manifest import _fsync_dir, raise_if_disk_full
    directory = Path(directory)
    path = directory / CHECKPOINT_NAME
    tmp = path.with_name(path.name + ".partial")
    buf = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(_seal(state), buf)
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise_if_disk_full(exc, directory, needed=buf.getbuffer().nbytes if buf is not None else None)
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}; check --checkpoint") from None
    return path


def _seal(state: dict) -> dict:
    """Wrap the serialized ``state`` with its crc32, so a damaged checkpoint is refused rather than resumed."""
    inner = io.BytesIO()
    torch.save(state, inner)
    payload = inner.getvalue()
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "sealed": True,
            "crc32": zlib.crc32(payload), "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}


def _unseal(state, path: Path):
    """The state inside a sealed checkpoint after checking its crc32 (unsealed ones pass through)."""
    if not isinstance(state, dict) or not state.get("sealed"):
        return state
    payload = state.get("payload")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or not isinstance(state.get("crc32"), int):
        raise CheckpointError(f"{path} is damaged (its payload or checksum is missing); delete it and start again "
                              f"without --resume")
    data = payload.numpy().tobytes()
    if zlib.crc32(data) != state["crc32"]:
        raise CheckpointError(f"{path}: checksum mismatch, the checkpoint is corrupt; delete it and start again "
                              f"without --resume (or restore a good copy)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign payload
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); the checkpoint is "
                              f"corrupt: delete it and start again without --resume") from None


def checkpoint_model_fields(state: dict) -> dict:
    """The model fields (:meth:`TrainConfig.model_fields`) a checkpoint was written with; one written before
    the recipe flags existed gets the recipe it was trained with (:data:`LEGACY_RECIPE`, :func:`legacy_init`)."""
    try:
        fields = json.loads(state["config"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError("the checkpoint's config is not readable JSON; it is corrupt: start again without "
                              "--resume") from None
    if not isinstance(fields, dict) or not isinstance(fields.get("model"), str):
        raise CheckpointError("the checkpoint's config names no model; it is corrupt: start again without --resume")
    if "init" not in fields:
        fields = {**fields, **LEGACY_RECIPE, "init": legacy_init(fields["model"])}
    return fields


def load_checkpoint(directory: str | os.PathLike) -> dict:
    """Read and check ``directory/checkpoint.pt``; :class:`CheckpointError` when missing or corrupt."""
    directory = Path(directory)
    path = directory / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"--resume: {path} does not exist, so there is nothing to resume; run without "
                              f"--resume to start from epoch 0, or pass the --checkpoint directory of the "
                              f"interrupted run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); the checkpoint is "
                              f"corrupt: delete it and start again without --resume") from None
    state = _unseal(state, path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a diskgnn checkpoint; pass the --checkpoint directory that "
                              f"diskgnn train wrote")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')!r}, this diskgnn reads "
                              f"{CHECKPOINT_VERSION}; start again without --resume")
    for key in ("epoch", "model", "optimizer", "torch_rng", "config", "data", "history", "best"):
        if key not in state:
            raise CheckpointError(f"{path} lacks {key!r}; the checkpoint is corrupt: start again without --resume")
    return state


# --- the trainer ---------------------------------------------------------------------------------

class Trainer:
    """Trains one model on presampled batches with features from ``features``.

    ``samples`` (:class:`~diskgnn.sampling.Samples`) gives the batch structure,
    ``dataset`` the labels (read as ``labels[seeds]``, never the feature
    matrix), ``features`` the rows of each batch (a
    :class:`~diskgnn.store.FeatureStore` for out-of-core training).
    """

    def __init__(self, samples, dataset, features: FeatureSource, cfg: TrainConfig, *,
                 device: torch.device | None = None, progress: ProgressFn = no_progress,
                 data_id: dict | None = None, model: torch.nn.Module | None = None, memory_budget=None):
        self.samples, self.dataset, self.features, self.cfg = samples, dataset, features, cfg
        self.memory_budget = memory_budget
        """The process's memory budget (None: the available memory); layer-wise evaluation plans within it."""
        self._made_scratch: Path | None = None
        self.device = device if device is not None else resolve_device(cfg.device)
        self.progress = progress
        self.data_id = data_id or {"dataset_fingerprint": dataset.fingerprint,
                                   "samples": samples.config.to_json()}
        self.link = check_task(cfg, samples)
        """Whether this is link prediction (the samples' task)."""
        self.decoder = (cfg.decoder or "dot") if self.link else None
        self.threads = ThreadBudget.of(cfg.threads, cfg.assemble_threads)
        self.threads.apply_to_compute_thread()
        self.train_parts = list(samples.train_parts)
        for part in ("val", "test"):
            if samples.num_batches(part) == 0:
                log.warning("%s has no %s batches; %s %s will be reported as null", samples.path, part, part,
                            "MRR" if self.link else "accuracy")
        torch.manual_seed(cfg.seed)
        if model is None:
            model = build_task_model(cfg, dataset, samples.config.num_layers, link=self.link)
        self.model = model
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.train_module: torch.nn.Module = self.model
        """What training batches run through (a DistributedDataParallel wrapper of ``model`` when data-parallel)."""
        self.stages = BatchStages(samples, dataset.labels, features, self.device,
                                  assemble_threads=self.threads.assemble)
        self.metrics = _MetricsLog(cfg.metrics)
        self.epoch = 0
        self.history: list[dict] = []
        self.best: dict = ({"best_val_mrr": None, "test_mrr": None, **{f"test_hits@{k}": None for k in HITS_AT},
                            "best_epoch": None} if self.link else
                           {"best_val_acc": None, "test_acc": None, "best_epoch": None})

    # --- passes ----------------------------------------------------------------------------------

    def epoch_order(self, epoch: int) -> tuple[str, np.ndarray]:
        """The part and batch order of training epoch ``epoch`` (0-based)."""
        part = self.train_parts[epoch % len(self.train_parts)]
        segments = self.features.segments(part) if hasattr(self.features, "segments") else None
        return part, epoch_permutation(self.cfg.seed, epoch, self.samples.num_batches(part), segments)

    def eval_keys(self, parts) -> list[tuple[str, int]]:
        """The ``(part, batch)`` keys an evaluation pass over ``parts`` reads."""
        return [(p, i) for p in parts for i in range(self.samples.num_batches(p))]

    def train_epoch(self, epoch: int) -> dict:
        part, order = self.epoch_order(epoch)
        keys = [(part, int(i)) for i in order]
        task = f"epoch {epoch + 1}/{self.cfg.epochs} train"
        self.model.train()
        store_before = self.features.stats()
        loader = Loader(self.stages, keys, depth=self.cfg.queue_depth, name="train")
        loss_sum, correct, seen = 0.0, 0, 0
        scheduled = self.cfg.lr_schedule != "constant" or self.cfg.warmup_epochs > 0
        lr = self.cfg.lr
        t0 = time.perf_counter()
        self.progress(task, 0, len(keys))
        for k, batch in enumerate(loader):
            if scheduled:
                lr = self.cfg.lr * lr_factor(self.cfg.lr_schedule, self.cfg.warmup_epochs, self.cfg.epochs,
                                             epoch + k / len(keys), 1.0 / len(keys))
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            if self.link:
                # scores [P, 1 + k]: column 0 the positive edge, the others its negatives
                scores = self.train_module(batch.blocks, batch.x, batch.pairs)
                loss = link_loss(scores)
            else:
                logits = self.train_module(batch.blocks, batch.x)
                loss = F.cross_entropy(logits, batch.y)
            value = loss.item()
            if not math.isfinite(value):
                raise self._diverged(epoch, k, batch, value)
            loss.backward()
            self.optimizer.step()
            if self.link:  # accuracy of the binary decision score > 0 over positives and negatives
                n = batch.pairs.shape[0]
                with torch.no_grad():
                    right = int((scores[:, 0] > 0).sum()) + int((scores[:, 1:] <= 0).sum())
                correct += right / scores.shape[1]
            else:
                n = batch.y.shape[0]
                correct += int((logits.argmax(1) == batch.y).sum())
            loss_sum += value * n
            seen += n
            self.progress(task, 1, len(keys))
        seconds = time.perf_counter() - t0
        return {"part": part, "batches": len(keys), "epoch_time_s": seconds,
                "batches_per_s": len(keys) / seconds if seconds > 0 else None,
                "loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "seeds": seen, "lr": lr,
                "stages": loader.stats(), **store_epoch_metrics(store_before, self.features.stats())}

    def _diverged(self, epoch: int, k: int, batch, value: float) -> TrainingDivergedError:
        kept = (f"the checkpoint of epoch {self.epoch} in {self.cfg.checkpoint} is kept (the last good one)"
                if self.cfg.checkpoint and self.epoch > 0 else
                "no checkpoint was written yet" if self.cfg.checkpoint else "no --checkpoint was asked for")
        return TrainingDivergedError(
            f"training diverged: the loss is {value} at epoch {epoch + 1}, batch {k + 1} of the epoch "
            f"(presampled batch {batch.part} #{batch.index}); {kept}. Lower --lr (now {self.cfg.lr}), add "
            f"--dropout, or check the input features for NaN/inf values (diskgnn verify DATASET)")

    def check_model(self) -> None:
        """Run the model once on a one-edge batch of the packed features' width before training.

        A model built for other data (feature width, classes, layers) then fails
        here, naming both numbers, instead of in the first batch's matmul.
        """
        from diskgnn.sampling import Block
        width, classes = int(self.dataset.feat_dim), int(self.dataset.num_classes)
        layers = int(self.samples.config.num_layers)
        one = Block(indptr=np.array([0, 1], dtype=np.int64), indices=np.array([0], dtype=np.int32),
                    num_src=1, num_dst=1)
        blocks = [TorchBlock.from_block(one).to(self.device) for _ in range(layers)]
        x = torch.zeros((1, width), dtype=torch.float32, device=self.device)
        was_training = self.model.training
        self.model.eval()
        if self.link:
            classes = 2  # one pair of one positive and one negative: two scores
        try:
            with torch.inference_mode():
                if self.link:
                    out = self.model(blocks, x, torch.zeros((1, 3), dtype=torch.int64, device=self.device))
                else:
                    out = self.model(blocks, x)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ConfigError(f"the model does not fit the packed data: it was given {width}-wide feature rows "
                              f"and {layers} blocks (--fanouts has {layers} layers) and failed with "
                              f"{type(exc).__name__}: {str(exc)[:300]}; build it with in_dim={width}, "
                              f"num_classes={classes} and {layers} layers") from None
        finally:
            self.model.train(was_training)
        if self.link and (not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, 2)):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"the link model does not fit the packed data: it returns {shape} for one positive "
                              f"pair with one negative, expected scores of shape (1, 2); build it with "
                              f"diskgnn.decoders.build_link_model")
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != classes:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"the model does not fit the packed data: it returns {shape} for one seed, but the "
                              f"dataset has {classes} classes (expected shape (1, {classes})); build it with "
                              f"num_classes={classes}")

    def eval_scratch(self) -> Path:
        """Where layer-wise evaluation writes its layer files (see :attr:`TrainConfig.eval_scratch`)."""
        if self.cfg.eval_scratch:
            return Path(self.cfg.eval_scratch)
        if self.cfg.checkpoint:
            return Path(self.cfg.checkpoint) / "layerwise"
        if self._made_scratch is None:
            import tempfile
            try:
                self._made_scratch = Path(tempfile.mkdtemp(prefix=".diskgnn-layerwise-",
                                                           dir=Path(self.samples.path).parent))
            except OSError as exc:
                raise ConfigError(f"--eval-mode layerwise needs a directory for its layer files and cannot make one "
                                  f"beside {self.samples.path} ({exc.strerror}); pass --eval-scratch DIR") from None
        return self._made_scratch

    def evaluate_layerwise(self, parts=("val", "test"), task: str = "eval") -> dict:
        """Accuracy and loss of every node of ``parts`` with all its neighbours, by out-of-core layer-wise
        inference over the whole graph (:func:`diskgnn.inference.layerwise_inference`)."""
        from diskgnn.inference import LayerwiseConfig, layerwise_inference
        ids = {p: np.unique(np.asarray(self.dataset.split(p), dtype=np.int64)) for p in parts}
        collect = np.unique(np.concatenate([ids[p] for p in parts])) if parts else np.zeros(0, dtype=np.int64)
        scratch = self.eval_scratch()
        try:
            scratch.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--eval-scratch {scratch}: cannot create it ({exc.strerror}); choose a writable "
                              f"directory") from None
        t0 = time.perf_counter()
        result = layerwise_inference(
            self.model, self.dataset, scratch,
            LayerwiseConfig(memory_budget=self.memory_budget, threads=self.threads.compute, io_depth=self.cfg.io_depth),
            keep="none", collect=collect, progress=lambda t, k, n: self.progress(f"{task} {t}", k, n))
        self.threads.apply_to_compute_thread()
        logits = torch.from_numpy(result.collected)
        out = {"eval_mode": "layerwise", "eval_time_s": time.perf_counter() - t0,
               "eval_bytes_read": result.bytes_read,
               "eval_layers": [{"layer": s.layer, "ranges": s.ranges, "seconds": round(s.seconds, 4),
                                "bytes_read": s.bytes_read} for s in result.stats]}
        for p in parts:
            rows = torch.from_numpy(np.searchsorted(collect, ids[p]))
            labels = torch.from_numpy(np.asarray(self.dataset.labels[ids[p]], dtype=np.int64))
            part_logits = logits.index_select(0, rows)
            n = int(labels.shape[0])
            out[f"{p}_acc"] = int((part_logits.argmax(1) == labels).sum()) / n if n else None
            out[f"{p}_loss"] = float(F.cross_entropy(part_logits, labels)) if n else None
            out[f"{p}_seeds"] = n
        return out

    @torch.inference_mode()
    def evaluate(self, parts=("val", "test"), task: str = "eval") -> dict:
        """Accuracy and loss on presampled parts, through the same out-of-core pipeline (or, with
        ``--eval-mode layerwise``, of every node with all its neighbours: :meth:`evaluate_layerwise`)."""
        if self.link:
            return self._evaluate_link(parts, task)
        if self.cfg.eval_mode == "layerwise":
            return self.evaluate_layerwise(parts, task)
        self.model.eval()
        keys = self.eval_keys(parts)
        correct = {p: 0 for p in parts}
        total = {p: 0 for p in parts}
        loss_sum = {p: 0.0 for p in parts}
        store_before = self.features.stats()
        t0 = time.perf_counter()
        self.progress(task, 0, len(keys))
        loader = Loader(self.stages, keys, depth=self.cfg.queue_depth, name="eval")
        for batch in loader:
            logits = self.model(batch.blocks, batch.x)
            loss_sum[batch.part] += float(F.cross_entropy(logits, batch.y, reduction="sum"))
            correct[batch.part] += int((logits.argmax(1) == batch.y).sum())
            total[batch.part] += int(batch.y.shape[0])
            self.progress(task, 1, len(keys))
        out = {"eval_time_s": time.perf_counter() - t0, "eval_stages": loader.stats()}
        for p in parts:
            out[f"{p}_acc"] = correct[p] / total[p] if total[p] else None
            out[f"{p}_loss"] = loss_sum[p] / total[p] if total[p] else None
            out[f"{p}_seeds"] = total[p]
        eval_store = store_epoch_metrics(store_before, self.features.stats())
        out["eval_bytes_read"] = eval_store.get("bytes_read")
        return out

    def _evaluate_link(self, parts, task: str) -> dict:
        """MRR, Hits@K and loss of every held-out edge against its candidates, through the same pipeline."""
        self.model.eval()
        keys = self.eval_keys(parts)
        metrics = {p: RankingMetrics() for p in parts}
        store_before = self.features.stats()
        t0 = time.perf_counter()
        self.progress(task, 0, len(keys))
        loader = Loader(self.stages, keys, depth=self.cfg.queue_depth, name="eval")
        for batch in loader:
            metrics[batch.part].add(self.model(batch.blocks, batch.x, batch.pairs))
            self.progress(task, 1, len(keys))
        out = {"eval_time_s": time.perf_counter() - t0, "eval_stages": loader.stats()}
        for p in parts:
            out.update(metrics[p].result(p))
        out["eval_bytes_read"] = store_epoch_metrics(store_before, self.features.stats()).get("bytes_read")
        return out

    def _model_fields(self) -> dict:
        """What defines the model and optimizer in a checkpoint (link prediction adds the task and decoder)."""
        fields = self.cfg.model_fields()
        if self.link:
            fields.update(task="link", decoder=self.decoder)
        return fields

    # --- checkpoint ------------------------------------------------------------------------------

    def state(self) -> dict:
        state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": self.epoch,
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "torch_rng": torch.get_rng_state(), "config": json.dumps(self._model_fields(), sort_keys=True),
                 "data": json.dumps(self.data_id, sort_keys=True), "history": json.dumps(self.history),
                 "best": json.dumps(self.best), "recipe": json.dumps(self.cfg.recipe(), sort_keys=True),
                 "shape": json.dumps(self.model_shape(), sort_keys=True)}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def model_shape(self) -> dict:
        """What :func:`build_model` needs besides the config to rebuild this model (``diskgnn embed`` reads it)."""
        return {"in_dim": int(self.dataset.feat_dim), "num_classes": int(self.dataset.num_classes),
                "num_layers": int(self.samples.config.num_layers)}

    def restore(self, state: dict, where: str) -> None:
        mine = self._model_fields()
        if checkpoint_model_fields(state) != mine:  # an older checkpoint counts with the recipe it was trained with
            raise CheckpointError(f"{where} was written with {state['config']}, this run asks for "
                                  f"{json.dumps(mine, sort_keys=True)}; resume with the same model flags, or start "
                                  f"again without --resume")
        data = json.dumps(self.data_id, sort_keys=True)
        if state["data"] != data:
            raise MismatchError(f"{where} belongs to training data {state['data']}, but the packed directory "
                                f"given now is {data}; pass the packed directory of the interrupted run")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            self.history = json.loads(state["history"])
            self.best = json.loads(state["best"])
            self.epoch = int(state["epoch"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{where} does not fit this model ({str(exc)[:200]}); start again without "
                                  f"--resume") from None

    # --- the loop --------------------------------------------------------------------------------

    def fit(self) -> dict:
        cfg = self.cfg
        if cfg.resume:
            where = str(Path(cfg.checkpoint) / CHECKPOINT_NAME)
            self.restore(load_checkpoint(cfg.checkpoint), where)
            log.info("resuming from %s after epoch %d", where, self.epoch)
            self.metrics.resume(self.history, training_left=self.epoch < cfg.epochs)
            if self.epoch >= cfg.epochs:
                log.warning("the checkpoint already holds %d epochs (>= --epochs %d); nothing to train",
                            self.epoch, cfg.epochs)
        elif cfg.checkpoint and (Path(cfg.checkpoint) / CHECKPOINT_NAME).exists():
            log.warning("%s holds a checkpoint; it will be replaced (pass --resume to continue it)", cfg.checkpoint)
        self.check_model()
        while self.epoch < cfg.epochs:
            e = self.epoch
            record: dict[str, Any] = {"event": "epoch", "epoch": e + 1}
            record.update(self.train_epoch(e))
            last = e + 1 == cfg.epochs
            if (e + 1) % cfg.eval_every == 0 or last:
                record.update(self.evaluate(task=f"epoch {e + 1}/{cfg.epochs} eval"))
                self._update_best(record, e + 1)
            record["peak_rss_bytes"] = peak_rss_bytes()
            self.history.append(record)
            self.epoch = e + 1
            if cfg.checkpoint:
                save_checkpoint(cfg.checkpoint, self.state())
            self.metrics.write(record)
            what = "mrr" if self.link else "acc"
            log.info("epoch %d/%d: %.2f s (%.1f batches/s), loss %.4f, train %.4f, val %s %s, test %s %s",
                     e + 1, cfg.epochs, record["epoch_time_s"], record["batches_per_s"] or 0.0, record["loss"],
                     record["train_acc"], what, _fmt(record.get(f"val_{what}")), what,
                     _fmt(record.get(f"test_{what}")))
        if self._made_scratch is not None:
            shutil.rmtree(self._made_scratch, ignore_errors=True)
            self._made_scratch = None
        report = self.report()
        self.metrics.write(report)
        return report

    def _update_best(self, record: dict, epoch: int) -> None:
        """Keep the test figures of the epoch with the best validation accuracy (link prediction: MRR)."""
        if self.link:
            val = record.get("val_mrr")
            if val is not None and (self.best["best_val_mrr"] is None or val > self.best["best_val_mrr"]):
                self.best = {"best_val_mrr": val, "test_mrr": record.get("test_mrr"),
                             **{f"test_hits@{k}": record.get(f"test_hits@{k}") for k in HITS_AT},
                             "best_epoch": epoch}
            return
        val = record.get("val_acc")
        if val is not None and (self.best["best_val_acc"] is None or val > self.best["best_val_acc"]):
            self.best = {"best_val_acc": val, "test_acc": record.get("test_acc"), "best_epoch": epoch}

    def report(self) -> dict:
        times = [h["epoch_time_s"] for h in self.history]
        last = self.history[-1] if self.history else {}
        stages: dict[str, dict] = {}
        for h in self.history:
            for name, s in h.get("stages", {}).items():
                acc = stages.setdefault(name, {"busy_s": 0.0, "wait_s": 0.0})
                acc["busy_s"] += s["busy_s"] / len(self.history)
                acc["wait_s"] += s["wait_s"] / len(self.history)
        if self.link:
            best = {"task": "link", "decoder": self.decoder, **self.best}
        else:
            best = {"best_val_acc": self.best["best_val_acc"], "test_acc": self.best["test_acc"],
                    "best_epoch": self.best["best_epoch"]}
        return {"event": "final", "model": self.cfg.model, "epochs": self.epoch, "recipe": self.cfg.recipe(), **best,
                "epoch_time_s": statistics.median(times) if times else None,
                "epoch_times_s": [round(t, 4) for t in times],
                "final_loss": last.get("loss"), "final_train_acc": last.get("train_acc"),
                "stages_mean": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in stages.items()},
                "bytes_read_per_epoch": last.get("bytes_read"), "read_amplification": last.get("read_amplification"),
                "hit_rate": last.get("hit_rate"), "peak_rss_bytes": peak_rss_bytes(),
                "device": str(self.device), "eval_mode": self.cfg.eval_mode,
                "eval_fanouts": list(self.samples.config.part_fanouts("val"))}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


# --- entry points --------------------------------------------------------------------------------

def packed_data_id(packed) -> dict:
    """What identifies the training data of a packed directory (checked on resume)."""
    return {"dataset_fingerprint": packed.dataset.fingerprint, "samples": packed.samples.config.to_json(),
            "num_nodes": int(packed.dataset.num_nodes)}


def build_task_model(cfg: TrainConfig, dataset, num_layers: int, *, link: bool) -> torch.nn.Module:
    """The model ``cfg`` asks for: a classifier over the dataset's classes, or (``link``) an encoder and decoder."""
    if link:
        return build_link_model(cfg.model, in_dim=dataset.feat_dim, num_layers=num_layers, hidden=cfg.hidden,
                                heads=cfg.heads, dropout=cfg.dropout, decoder=cfg.decoder or "dot",
                                init=cfg.init)
    return build_model(cfg.model, in_dim=dataset.feat_dim, num_classes=dataset.num_classes,
                       num_layers=num_layers, hidden=cfg.hidden, heads=cfg.heads, dropout=cfg.dropout, init=cfg.init)


def training_memory(cfg: TrainConfig, dataset, num_layers: int, device: torch.device, *,
                    link: bool = False) -> TrainingMemory:
    """What a trainer with ``cfg`` holds in host memory beside its feature store (checked by the store).

    The model is built once (without touching the global RNG) to count its parameters: weights,
    gradients and Adam's two moments are 4 x their bytes, on the host unless training runs on CUDA.
    """
    model_bytes = 0
    if device.type != "cuda":
        with torch.random.fork_rng(devices=[]):
            model = build_task_model(cfg, dataset, num_layers, link=link)
        model_bytes = 4 * sum(p.numel() * p.element_size() for p in model.parameters())
    return TrainingMemory(queue_depth=cfg.queue_depth, model_bytes=int(model_bytes))


def train_single(packed, cfg: TrainConfig, *, progress: ProgressFn = no_progress, memory_budget=None) -> dict:
    """Train in this process on a packed directory (path or :class:`~diskgnn.store.Packed`); the final report.

    Data-parallel training (``--nproc``, torchrun) goes through :func:`diskgnn.launch.train`.
    """
    from diskgnn.store import FeatureStore
    if isinstance(packed, (str, os.PathLike)):
        packed = open_packed(packed)
    link = check_task(cfg, packed.samples)  # before the store loads its tiers
    device = resolve_device(cfg.device)
    training = training_memory(cfg, packed.dataset, packed.samples.config.num_layers, device, link=link)
    store = FeatureStore(packed, device, memory_budget=memory_budget, training=training, io_depth=cfg.io_depth,
                         request_size=cfg.io_request, recheck_reads=cfg.recheck_reads)
    try:
        trainer = Trainer(packed.samples, packed.dataset, store, cfg, device=device, progress=progress,
                          data_id=packed_data_id(packed), memory_budget=memory_budget)
        report = trainer.fit()
    finally:
        store.close()
    report["packed"] = str(packed.path) if hasattr(packed, "path") else None
    return report
