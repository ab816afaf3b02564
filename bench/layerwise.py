"""Full-neighbour (layer-wise) evaluation against sampled evaluation: accuracy and time, under a memory cap.

One command per scale. It trains a model once (``diskgnn train``, checkpoint),
then evaluates that checkpoint's validation and test accuracy in separate
processes, each in its own memory cgroup with the same cap after dropping the
page cache (:func:`diskgnn.cgroup.run_capped`):

* ``sampled``: the presampled val/test batches (the training fanouts) through
  the packed out-of-core store, as every epoch of training does;
* ``layerwise``: layer-wise inference over every node with all its neighbours
  (:mod:`diskgnn.inference`), streaming each layer's rows from disk;
* ``sampled-full`` (``--systems``, optional): the same presampled path with
  ``sample --eval-fanouts -1,...`` (full-neighbour minibatches; same training
  batches, so the same model), to check that layer-wise equals it.

The disk's own limits are measured in the same run. The result (BENCH.md
keys, ``kind`` ``eval``) goes to ``--out``. At scale m with the prepared data::

    python -m diskgnn.bench.layerwise --dataset /work/data/m --samples /work/data/m.samples \\
        --workdir /work/scratch/lw-m --memory-cap 2G --out bench/results/layerwise-m.json

(with ``--samples`` the samples are reused; without, they are made with
``--fanouts``; ``--packed`` reuses a packed directory too).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("diskgnn.bench.layerwise")

SYSTEMS = ("sampled", "layerwise", "sampled-full")


# --- the worker: one evaluation of one checkpoint, in its own (capped) process -------------------

def worker(argv=None) -> int:
    """``python -m diskgnn.bench.layerwise --worker``: evaluate ``--checkpoint`` one way, print ``RESULT {json}``."""
    import numpy as np
    import torch
    from diskgnn.cgroup import self_io_bytes
    from diskgnn.embed import model_from_checkpoint
    from diskgnn.store import FeatureStore
    from diskgnn.loader import open_packed
    from diskgnn.train import TrainConfig, Trainer, peak_rss_bytes
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--packed", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--mode", choices=["sampled", "layerwise"], required=True)
    p.add_argument("--scratch", default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    packed = open_packed(args.packed)
    model, fields = model_from_checkpoint(args.checkpoint, packed.dataset, packed.samples.config.num_layers)
    cfg = TrainConfig(model=fields["model"], hidden=fields["hidden"], heads=fields["heads"], init=fields["init"],
                      device="cpu", threads=args.threads, eval_mode=args.mode, eval_scratch=args.scratch)
    io_before = self_io_bytes().get("read_bytes", 0)
    with FeatureStore(packed, "cpu", training=None) as store:
        trainer = Trainer(packed.samples, packed.dataset, store, cfg, device=torch.device("cpu"), model=model)
        setup = time.perf_counter() - t_start
        t0 = time.perf_counter()
        out = trainer.evaluate()
        seconds = time.perf_counter() - t0
    out.pop("eval_stages", None)
    result = {"mode": args.mode, "eval_time_s": seconds, "setup_s": setup, "peak_rss_bytes": peak_rss_bytes(),
              "disk_read_bytes": self_io_bytes().get("read_bytes", 0) - io_before,
              **{k: v for k, v in out.items() if isinstance(v, (int, float, str, list)) or v is None}}
    print("RESULT " + json.dumps(result, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    return 0


# --- the orchestrator ------------------------------------------------------------------------------

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diskgnn.tools.cli", *args]


def _capped(cmd: list[str], cap: int | None, what: str, timeout: float | None) -> tuple[object, dict | None]:
    from diskgnn.cgroup import run_capped
    log.info("%s: %s", what, " ".join(cmd[2:]))
    run = run_capped(cmd, cap, timeout=timeout)
    result = None
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if run.returncode != 0:
        log.error("%s failed (exit %s%s): %s", what, run.returncode, ", OOM-killed" if run.oom_killed else "",
                  run.stderr[-2000:])
    else:
        log.info("%s: %.1f s, cgroup peak %s", what, run.wall_s,
                 "n/a" if run.peak_bytes is None else f"{run.peak_bytes / 2**30:.2f} GiB")
    return run, result


def _step(run) -> dict:
    return {"wall_s": round(run.wall_s, 2), "peak_bytes": run.peak_bytes, "oom_killed": run.oom_killed,
            "returncode": run.returncode, "cgroup": run.cgroup}


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--worker" in argv:
        return worker(argv)
    import psutil
    from diskgnn.dataset import Dataset
    from diskgnn.io import measure_disk
    from diskgnn.sizes import parse_size
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.layerwise", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="dataset directory")
    p.add_argument("--samples", default=None, help="reuse these samples (default: sample with --fanouts)")
    p.add_argument("--packed", default=None, help="reuse this packed directory (of --samples)")
    p.add_argument("--workdir", required=True, help="samples, packed data, checkpoint, layer files (deleted unless --keep)")
    p.add_argument("--memory-cap", default="2G", help="cgroup limit of every step (default 2G; 0 = none)")
    p.add_argument("--model", default="sage", choices=["sage", "gcn", "gat"])
    p.add_argument("--epochs", type=int, default=1, help="training epochs before the evaluations (default 1)")
    p.add_argument("--fanouts", default="10,15")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--host-cache", default="10%")
    p.add_argument("--systems", default="sampled,layerwise", help=f"comma-separated of {', '.join(SYSTEMS)}")
    p.add_argument("--repeats", type=int, default=1, help="evaluations per system (the median time is reported)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--disk-probe", default="1G", help="bytes of the disk probe (0 = skip)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per step")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/layerwise-<dataset name>.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in SYSTEMS:
            raise SystemExit(f"unknown system {s!r}; choose from {', '.join(SYSTEMS)}")
    cap = parse_size(args.memory_cap, name="--memory-cap") if args.memory_cap not in ("0", "none") else None
    ds = Dataset.open(args.dataset)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or f"bench/results/layerwise-{ds.path.name}.json")
    threads = ["--threads", str(args.threads)] if args.threads else []
    steps: dict[str, dict] = {}
    result = {"bench": "layerwise", "scale": ds.path.name, "dataset": str(ds.path), "fingerprint": ds.fingerprint,
              "nodes": ds.num_nodes, "edges": ds.num_edges, "commit": _commit(), "memory_cap_bytes": cap,
              "cgroup": None, "config": {k: getattr(args, k) for k in ("model", "epochs", "fanouts", "batch_size",
                                                                        "host_cache", "repeats", "threads")},
              "machine": {"cpus": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total,
                          "python": platform.python_version()},
              "steps": steps, "systems": []}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        tmp.write_text(json.dumps(result, indent=2, default=str))
        os.replace(tmp, out)

    probe = parse_size(args.disk_probe, name="--disk-probe") if args.disk_probe not in ("0", "none") else 0
    if probe:
        result["disk"] = measure_disk(work, probe, read_file=ds.features_path).to_json()
        log.info("disk: %s", result["disk"])
    try:
        samples = args.samples or str(work / "samples")
        if not args.samples:
            run, _ = _capped(_cli("sample", str(ds.path), "--out", samples, "--fanouts", args.fanouts,
                                  "--batch-size", str(args.batch_size), "--overwrite", "-q", *threads),
                             cap, "sample", args.timeout)
            steps["sample"] = _step(run)
        packed = args.packed or str(work / "packed")
        if not args.packed:
            run, _ = _capped(_cli("pack", samples, "--out", packed, "--host-cache", args.host_cache, "--overwrite",
                                  "-q"), cap, "pack", args.timeout)
            steps["pack"] = _step(run)
        ck = work / "checkpoint"
        shutil.rmtree(ck, ignore_errors=True)
        run, _ = _capped(_cli("train", packed, "--model", args.model, "--epochs", str(args.epochs),
                              "--eval-every", str(args.epochs), "--checkpoint", str(ck), "--metrics",
                              str(work / "train.jsonl"), "--device", "cpu", "-q", *threads),
                         cap, "train", args.timeout)
        steps["train"] = _step(run)
        result["cgroup"] = run.cgroup
        if run.returncode != 0:
            raise SystemExit("training failed; see the log above")
        save()
        targets = {"sampled": packed, "layerwise": packed}
        if "sampled-full" in systems:
            full = work / "samples-full"
            run, _ = _capped(_cli("sample", str(ds.path), "--out", str(full), "--fanouts", args.fanouts,
                                  "--eval-fanouts", ",".join(["-1"] * len(args.fanouts.split(","))),
                                  "--batch-size", str(args.batch_size), "--overwrite", "-q", *threads),
                             cap, "sample (full-neighbour val/test)", args.timeout)
            steps["sample-full"] = _step(run)
            run, _ = _capped(_cli("pack", str(full), "--out", str(work / "packed-full"), "--host-cache",
                                  args.host_cache, "--overwrite", "-q"), cap, "pack (full)", args.timeout)
            steps["pack-full"] = _step(run)
            targets["sampled-full"] = str(work / "packed-full")
        for name in systems:
            runs = []
            for _ in range(max(1, args.repeats)):
                cmd = [sys.executable, "-m", "diskgnn.bench.layerwise", "--worker", "--packed", targets[name],
                       "--checkpoint", str(ck), "--mode", "layerwise" if name == "layerwise" else "sampled",
                       "--scratch", str(work / "scratch"), *threads]
                run, res = _capped(cmd, cap, f"eval {name}", args.timeout)
                if res is None:
                    runs.append({"error": run.stderr[-1500:], **_step(run)})
                    break
                runs.append({**res, **_step(run)})
            ok = [r for r in runs if "error" not in r]
            times = sorted(r["eval_time_s"] for r in ok)
            system = {"name": name, "kind": "eval", "runs": runs,
                      "eval_time_s": times[len(times) // 2] if times else None,
                      "epoch_time_s": None, "test_acc": ok[0].get("test_acc") if ok else None,
                      "val_acc": ok[0].get("val_acc") if ok else None,
                      "bytes_read": ok[0].get("disk_read_bytes") if ok else None,
                      "peak_rss_bytes": max((r.get("peak_rss_bytes") or 0) for r in ok) if ok else None,
                      "cgroup_peak_bytes": max((r.get("peak_bytes") or 0) for r in ok) if ok else None}
            result["systems"].append(system)
            save()
        by = {s["name"]: s for s in result["systems"]}
        if "sampled" in by and "layerwise" in by and by["sampled"]["test_acc"] is not None \
                and by["layerwise"]["test_acc"] is not None:
            result["layerwise_minus_sampled_points"] = {
                p: round(100 * (by["layerwise"][f"{p}_acc"] - by["sampled"][f"{p}_acc"]), 3) for p in ("val", "test")}
            result["layerwise_over_sampled_time"] = round(by["layerwise"]["eval_time_s"] /
                                                          by["sampled"]["eval_time_s"], 3)
        save()
    finally:
        if not args.keep:
            for name in ("samples", "packed", "samples-full", "packed-full", "checkpoint", "scratch"):
                if not ((name == "samples" and args.samples) or (name == "packed" and args.packed)):
                    shutil.rmtree(work / name, ignore_errors=True)
    print(json.dumps({s["name"]: {k: s[k] for k in ("eval_time_s", "val_acc", "test_acc", "peak_rss_bytes",
                                                      "cgroup_peak_bytes")} for s in result["systems"]}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
