"""``diskgnn run``: synth (or an existing dataset) > sample > pack > train in one work directory.

Layout of ``--workdir``: ``dataset/`` (synthetic scales only), ``samples/``,
``packed/``, ``metrics.jsonl`` (unless ``--metrics`` says otherwise). A step's
output is reused when its manifest says it was made from the same inputs
(fingerprints) with the same config; otherwise it is made again, replacing the
old output.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

from diskgnn.errors import ConfigError, DiskGNNError
from diskgnn.progress import ProgressFn, no_progress

log = logging.getLogger(__name__)


def _reusable(what: str, directory: Path, check) -> bool:
    """Whether ``directory`` holds a complete output that ``check(directory)`` accepts."""
    if not (directory / "manifest.json").exists():
        return False
    try:
        ok, why = check(directory)
    except DiskGNNError as exc:
        ok, why = False, str(exc)
    if ok:
        log.info("%s: reusing %s", what, directory)
    else:
        log.info("%s: %s is out of date (%s); making it again", what, directory, why)
    return ok


def _dataset_step(args, workdir: Path, progress: ProgressFn):
    from diskgnn.dataset import Dataset
    if args.dataset:
        if getattr(args, "edge_split", None) is not None:
            raise ConfigError("--edge-split applies to a generated --scale; make a link dataset of your graph with "
                              "`diskgnn prepare ... --edge-split 0.90,0.05,0.05` and pass it as --dataset")
        return Dataset.open(args.dataset), "given"
    from diskgnn.synth import scale_config, synthesize
    cfg = scale_config(args.scale, task=getattr(args, "task", None) or "node",
                       edge_split=getattr(args, "edge_split", None))
    out = workdir / "dataset"
    want = _as_stored(cfg)

    def check(d):
        got = Dataset.open(d).manifest.get("source", {}).get("config")
        return got == want, "another synthetic config"

    if _reusable("dataset", out, check):
        return Dataset.open(out), "reused"
    return synthesize(cfg, out, overwrite=True, progress=progress), "made"


def _samples_step(args, ds, workdir: Path, progress: ProgressFn):
    from diskgnn.sampling import SampleConfig, Samples, presample
    cfg = SampleConfig.from_cli(args)
    out = workdir / "samples"

    def check(d):
        s = Samples.open(d)
        if s.dataset_fingerprint != ds.fingerprint:
            return False, f"sampled from dataset {s.dataset_fingerprint}, the dataset is {ds.fingerprint}"
        if s.config != cfg:
            return False, f"sampled with {s.config.to_json()}, asked for {cfg.to_json()}"
        if s.num_shards != 1:
            return False, "holds one shard only"
        return True, ""

    if _reusable("samples", out, check):
        return Samples.open(out), "reused"
    return presample(ds.path, out, cfg, overwrite=True, progress=progress, threads=getattr(args, "threads", None)), \
        "made"


def _as_stored(obj) -> dict:
    """``obj`` as it reads back from a manifest (JSON round trip: tuples become lists)."""
    to_json = getattr(obj, "to_json", None)
    return json.loads(json.dumps(to_json() if callable(to_json) else asdict(obj)))


def _without_chunk(config: dict) -> dict:
    """A pack config less ``chunk_size``: the chunk changes how features.bin is streamed, not what is written."""
    return {k: v for k, v in config.items() if k != "chunk_size"}


def _packed_step(args, samples, ds, workdir: Path, progress: ProgressFn):
    from diskgnn.packing import PackConfig, pack
    from diskgnn.store import Packed, samples_fingerprint
    cfg = PackConfig.from_cli(args)
    out = workdir / "packed"
    want = _as_stored(cfg)

    def check(d):
        p = Packed.open(d, samples=samples, dataset=ds)  # raises MismatchError on other samples/dataset
        recorded = p.manifest.get("samples", {}).get("fingerprint")
        if recorded != samples_fingerprint(samples):
            return False, "packed from other samples"
        got = p.manifest.get("config")
        if not isinstance(got, dict) or _without_chunk(got) != _without_chunk(want):
            return False, f"packed with {got}, asked for {want}"
        return True, ""

    if _reusable("packed", out, check):
        return Packed.open(out, samples=samples, dataset=ds), "reused"
    return pack(samples.path, out, cfg, dataset=ds.path, overwrite=True, progress=progress), "made"


def run_cli(args, progress: ProgressFn = no_progress) -> dict:
    """Run every step for ``args`` (see tools/cli.py ``run``); returns the training report."""
    from diskgnn.launch import train
    from diskgnn.train import TrainConfig
    workdir = Path(args.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} exists and is not a directory; choose a directory")
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig.from_cli(args)  # checks the training flags before any long step
    if cfg.metrics is None:
        cfg = replace(cfg, metrics=str(workdir / "metrics.jsonl"))
    steps, seconds = {}, {}

    t0 = time.perf_counter()
    ds, steps["dataset"] = _dataset_step(args, workdir, progress)
    seconds["dataset"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples, steps["samples"] = _samples_step(args, ds, workdir, progress)
    seconds["samples"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    packed, steps["packed"] = _packed_step(args, samples, ds, workdir, progress)
    seconds["packed"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = train(packed, cfg, progress=progress)
    seconds["train"] = time.perf_counter() - t0
    report["steps"] = {k: {"status": v, "seconds": round(seconds[k], 2)} for k, v in steps.items()}
    report["steps"]["train"] = {"status": "made", "seconds": round(seconds["train"], 2)}
    report["workdir"] = str(workdir)
    report["metrics"] = cfg.metrics
    return report
