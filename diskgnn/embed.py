"""``diskgnn embed``: every node's embeddings from a training checkpoint, by layer-wise inference.

The model is rebuilt from the checkpoint (:func:`model_from_checkpoint`), run over
the whole graph by :func:`diskgnn.inference.layerwise_inference`, and its layer
files are written into a new directory whose manifest is written last
(:class:`Embeddings` reads them back).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from diskgnn.errors import ConfigError, MismatchError
from diskgnn.inference import FORMAT, KEEP, VERSION, LayerwiseConfig, layer_ops, layerwise_inference
from diskgnn.progress import ProgressFn, no_progress

log = logging.getLogger(__name__)


def model_from_checkpoint(checkpoint_dir, dataset, num_layers: int):
    """The model a ``train --checkpoint`` directory holds, checked against ``dataset``; also its recipe fields.

    MismatchError when the checkpoint was trained on other data; ConfigError for a pyg:/dgl: model
    (layer-wise inference runs diskgnn's own).
    """
    import json
    from diskgnn.errors import CheckpointError
    from diskgnn.models import build_model, model_spec
    from diskgnn.train import CHECKPOINT_NAME, checkpoint_model_fields, load_checkpoint
    state = load_checkpoint(checkpoint_dir)
    where = Path(checkpoint_dir) / CHECKPOINT_NAME
    fields = checkpoint_model_fields(state)
    try:
        data = json.loads(state["data"])
        shape = json.loads(state["shape"]) if "shape" in state else {}
    except (TypeError, ValueError):
        raise CheckpointError(f"{where} holds unreadable metadata; it is corrupt: train again") from None
    if data.get("dataset_fingerprint") != dataset.fingerprint:
        raise MismatchError(f"{where} was trained on dataset {data.get('dataset_fingerprint')}, but the packed "
                            f"directory's dataset {dataset.path} is {dataset.fingerprint}; pass the packed directory "
                            f"the model was trained on")
    if model_spec(fields["model"]).library is not None:
        raise ConfigError(f"{where} holds a {fields['model']} model; layer-wise inference and diskgnn embed run "
                          f"diskgnn's own models (sage, gcn, gat)")
    layers = int(shape.get("num_layers", num_layers))
    model = build_model(fields["model"], in_dim=int(dataset.feat_dim), num_classes=int(dataset.num_classes),
                        num_layers=layers, hidden=fields["hidden"], heads=fields["heads"],
                        dropout=fields["dropout"], init=fields["init"])
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where} does not fit a {fields['model']} model of {layers} layers for this "
                              f"dataset ({str(exc)[:200]})") from None
    model.eval()
    return model, {**fields, "epoch": int(state["epoch"]), "num_layers": layers}


def _refuse_inside(out: Path, others: dict[str, Path]) -> None:
    target = out.resolve()
    for what, path in others.items():
        p = Path(path).resolve()
        if target == p or p in target.parents:
            raise ConfigError(f"--out {out} lies inside the {what} directory {path}; choose a directory of its own")


def embed(packed, checkpoint, out, *, cfg: LayerwiseConfig = LayerwiseConfig(), keep: str = "last",
          overwrite: bool = False, progress: ProgressFn = no_progress) -> "Embeddings":
    """``diskgnn embed``: every node's embeddings from a trained checkpoint, in a new directory ``out``.

    Keeps the model's output (``keep="last"``, the logits) or every layer's (``"all"``): float32 [N, width]
    row-major files ``layer-<l>.bin`` (row v = node v), then ``manifest.json`` (written last, atomically).
    A directory that holds anything else is refused (:class:`~diskgnn.errors.OutputExistsError`) unless
    ``overwrite``; a failed run leaves no manifest.
    """
    from diskgnn.manifest import (abort_output_dir, check_free_space, expect_output_bytes, finish_output_dir,
                                  prepare_output_dir, write_manifest)
    from diskgnn.loader import open_packed
    from diskgnn.train import peak_rss_bytes
    if keep not in KEEP:
        raise ConfigError(f"--layers must be one of {', '.join(KEEP)}, got {keep!r}")
    if isinstance(packed, (str, os.PathLike)):
        packed = open_packed(packed)
    ds = packed.dataset
    out = Path(out)
    _refuse_inside(out, {"dataset": ds.path, "packed": packed.path, "checkpoint": Path(checkpoint)})
    model, fields = model_from_checkpoint(checkpoint, ds, packed.samples.config.num_layers)
    ops = layer_ops(model)
    widths = [op.out_width for op in ops]
    kept = widths if keep == "all" else widths[-1:]
    # on disk at once: the kept files, plus the two largest hidden layers while one is read and the next written
    needed = 4 * ds.num_nodes * (sum(kept) + sum(sorted(widths[:-1])[-2:]))
    out = prepare_output_dir(out, overwrite=overwrite)
    try:
        expect_output_bytes(out, needed)
        check_free_space(out, needed, "the embeddings")
        t0 = time.perf_counter()
        result = layerwise_inference(model, ds, out, cfg, keep=keep, progress=progress)
        activation = {"sage": "relu", "gcn": "relu", "gat": "elu"}[fields["model"]]
        layers = [{"layer": k, "width": widths[k - 1],
                   "content": "the model's output (logits)" if k == len(widths) else f"after {activation}",
                   "file": result.files[k]} for k in sorted(result.files)]
        body = {
            "num_nodes": int(ds.num_nodes), "output_layer": len(widths), "layers": layers,
            "model": {k: fields[k] for k in ("model", "hidden", "heads", "init", "num_layers", "epoch")},
            "checkpoint": str(Path(checkpoint).resolve()),
            "dataset": {"path": str(ds.path.resolve()), "fingerprint": ds.fingerprint},
            "packed": str(Path(packed.path).resolve()),
            "stats": {"seconds": round(time.perf_counter() - t0, 3), "bytes_read": result.bytes_read,
                      "peak_rss_bytes": peak_rss_bytes(),
                      "layers": [{"layer": s.layer, "width": s.width, "ranges": s.ranges,
                                  "seconds": round(s.seconds, 3), "bytes_read": s.bytes_read,
                                  "bytes_written": s.bytes_written, "range_nodes_max": s.range_nodes_max}
                                 for s in result.stats]},
        }
        write_manifest(out, FORMAT, VERSION, body)
        finish_output_dir(out)
    except BaseException:
        abort_output_dir(out)
        raise
    return Embeddings.open(out)


class Embeddings:
    """A read-only view of an embeddings directory (manifest checked, file sizes checked)."""

    def __init__(self, path, manifest: dict):
        from diskgnn.dataset import ArraySpec
        from diskgnn.errors import IntegrityError
        self.path = Path(path)
        self.manifest = manifest
        where = self.path / "manifest.json"
        try:
            self.num_nodes = int(manifest["num_nodes"])
            self.output_layer = int(manifest["output_layer"])
            self.specs = {int(rec["layer"]): ArraySpec.from_json(rec["file"], str(where))
                          for rec in manifest["layers"]}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(f"{where} lacks a valid field ({exc}); run diskgnn embed again") from None
        for k, spec in self.specs.items():
            if spec.dtype != "<f4" or len(spec.shape) != 2 or spec.shape[0] != self.num_nodes:
                raise IntegrityError(f"{where}: layer {k} is described as {spec.dtype} {list(spec.shape)}, expected "
                                     f"<f4 [{self.num_nodes}, width]; run diskgnn embed again")

    @classmethod
    def open(cls, path) -> "Embeddings":
        from diskgnn.manifest import read_manifest
        return cls(path, read_manifest(path, FORMAT, VERSION))

    @property
    def layers(self) -> list[int]:
        return sorted(self.specs)

    def layer(self, k: int | None = None) -> np.ndarray:
        """Layer ``k``'s rows (default: the model's output) as a read-only float32 [N, width] memory map."""
        from diskgnn.dataset import open_array
        k = self.output_layer if k is None else int(k)
        if k not in self.specs:
            raise ConfigError(f"{self.path} holds layers {self.layers}, not {k}; run diskgnn embed --layers all "
                              f"to keep every layer")
        return open_array(self.path, self.specs[k])

    def summary(self) -> dict:
        return {"path": str(self.path), "format_version": self.manifest.get("version"), "nodes": self.num_nodes,
                "layers": {k: {"width": s.shape[1], "bytes": s.nbytes} for k, s in sorted(self.specs.items())},
                "output_layer": self.output_layer, "model": self.manifest.get("model"),
                "checkpoint": self.manifest.get("checkpoint"), "dataset": self.manifest.get("dataset"),
                "stats": {k: v for k, v in (self.manifest.get("stats") or {}).items() if k != "layers"}}

    def verify(self, check_crc: bool = True) -> None:
        """Check every file's size and (with ``check_crc``) its crc32; IntegrityError naming the first problem."""
        from diskgnn.dataset import open_array
        from diskgnn.errors import IntegrityError
        from diskgnn.manifest import file_crc32
        for k, spec in sorted(self.specs.items()):
            open_array(self.path, spec)
            if check_crc and spec.crc32 is not None and file_crc32(self.path / spec.path) != spec.crc32:
                raise IntegrityError(f"{self.path / spec.path}: checksum mismatch (the manifest says crc32 "
                                     f"{spec.crc32:08x}); the file is corrupt, run diskgnn embed again")

    def __repr__(self) -> str:
        return f"Embeddings({str(self.path)!r}, nodes={self.num_nodes}, layers={self.layers})"
