"""Heterogeneous training out of core under a memory cap: diskgnn's whole pipeline against DGL with memmap features.

``python -m diskgnn.bench.hetero_speed --dataset DIR --cap 2G`` runs, each step in its own
memory cgroup with the page cache dropped before it (:func:`diskgnn.cgroup.run_capped`):

1. ``diskgnn sample`` of the heterogeneous dataset (per-relation fanouts, presampled batches);
2. ``diskgnn pack`` (per-type packed stores, tiers across types);
3. ``diskgnn train-hetero PACKED`` for ``--epochs`` epochs;
4. the DGL baseline (reference stack): ``HeteroGraphConv`` of ``SAGEConv`` with DGL's online
   ``NeighborSampler`` over the same relations (CSC only: the leanest graph DGL can hold; int64 ids,
   as DGL 2.1's int32 blocks crashed its CPU SpMM), every featured type's rows gathered from a
   *memory map* of ``features/<type>.bin`` with MADV_RANDOM, in id order (the page cache does the
   I/O), with the same fanouts, batch size, hidden width and learning rates.
   It runs ``--dgl-batches`` training batches; its epoch is their mean time times the epoch's batches.
   ``dgl-inmem`` runs the same with every feature file in RAM and no cap: DGL's compute speed.

Every step records its time, peak anonymous and file-backed memory, and bytes read and written
(:func:`diskgnn.bench.scale.step_command`); the disk is probed before the training steps and after
them. The result goes to ``bench/results/hetero-speed-<name>-<date>.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WORKER = "--worker"
RESULT_PREFIX = "RESULT "


# --- the DGL worker (runs inside the cgroup) ---------------------------------------------------------

def _peak_watcher(peaks: dict, stop: threading.Event) -> None:
    from diskgnn.bench.scale import _proc_fields
    while not stop.is_set():
        for k, v in _proc_fields("/proc/self/status", ("RssAnon", "RssFile")).items():
            peaks[k] = max(peaks.get(k, 0), v * 1024)
        stop.wait(0.05)


class MemmapRows:
    """A type's ``features/<type>.bin`` as a ``numpy.memmap`` with MADV_RANDOM (as the homogeneous memmap
    baselines: without it, this disk's 8 MiB readahead makes every row fault read megabytes), indexed like a
    tensor: rows in ascending id order (as a DGL user's gather would), returned as float32."""

    def __init__(self, ds, node_type: str, *, random_advice: bool = True):
        import mmap
        t = ds.node_types[node_type]
        self.array = np.memmap(ds.path / t.features.path, dtype=t.features.dtype, mode="r",
                               shape=tuple(t.features.shape))
        if random_advice and hasattr(mmap, "MADV_RANDOM"):
            self.array._mmap.madvise(mmap.MADV_RANDOM)
        self.dtype_name = t.feat_dtype
        self.shape = self.array.shape
        self.read_bytes = 0

    def __getitem__(self, ids):
        from diskgnn.bench.packed_systems import gather_memmap
        rows, read = gather_memmap(self.array, np.asarray(ids, dtype=np.int64), self.dtype_name)
        self.read_bytes += read
        return rows


def dgl_memmap_worker(args) -> dict:
    """Train ``--dgl-batches`` batches of DGL's heterogeneous baseline with memory-mapped features (or, for
    ``dgl-inmem``, features in RAM)."""
    import dgl
    import torch

    from diskgnn.bench.hetero_parity import dgl_heterograph, dgl_model
    from diskgnn.hetero import HeteroDataset
    from diskgnn.hetero_train import make_optimizers, optimizer_step
    peaks: dict = {}
    stop = threading.Event()
    threading.Thread(target=_peak_watcher, args=(peaks, stop), daemon=True).start()
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    dgl.seed(args.seed)
    ds = HeteroDataset.open(args.dataset)
    # int64: with int32 ids DGL 2.1 corrupted the heap in gspmm's backward within a few batches (at s and m, with
    # and without libxsmm, with and without explicit edge ids)
    g = dgl_heterograph(ds, idtype=torch.int64, csc_only=True)
    if args.worker == "dgl-inmem":  # the features in RAM (uncapped): DGL's compute speed
        feats = {t: torch.from_numpy(np.array(ds.features(t), dtype=np.float32)) for t, x in ds.node_types.items()
                 if x.features is not None}
    else:  # the features stay on disk: a memory map per type, gathered through the page cache
        feats = {t: MemmapRows(ds, t, random_advice=not args.default_readahead) for t, x in ds.node_types.items()
                 if x.features is not None}
    labels = torch.from_numpy(np.array(ds.labels, dtype=np.int64))
    net = dgl_model(ds, feats, hidden=args.hidden, num_layers=len(args.fanouts.split(",")))
    optimizers = make_optimizers([p for n, p in net.named_parameters() if not n.startswith("embed.")],
                                 [p for n, p in net.named_parameters() if n.startswith("embed.")], args.lr,
                                 args.embed_lr)
    fanouts = [int(f) for f in args.fanouts.split(",")]
    sampler = dgl.dataloading.NeighborSampler(fanouts)
    train = torch.from_numpy(np.asarray(ds.split("train"), dtype=np.int64))
    loader = dgl.dataloading.DataLoader(g, {ds.target: train}, sampler, batch_size=args.batch_size, shuffle=True,
                                        drop_last=False)
    setup_s = time.perf_counter() - t0
    times, inputs = [], []
    net.train()
    tb = time.perf_counter()
    for input_nodes, output_nodes, blocks in loader:
        input_nodes = {k: v.long() for k, v in input_nodes.items()}
        loss = torch.nn.functional.cross_entropy(net(blocks, input_nodes), labels[output_nodes[ds.target].long()])
        optimizer_step(loss, optimizers)
        now = time.perf_counter()
        times.append(now - tb)
        inputs.append(int(sum(v.numel() for v in input_nodes.values())))
        tb = now
        log.info("dgl batch %d: %.2f s, %d input nodes", len(times), times[-1], inputs[-1])
        if len(times) >= args.dgl_batches:
            break
    stop.set()
    num_batches = math.ceil(train.numel() / args.batch_size)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    from diskgnn.bench.scale import _proc_fields
    io = _proc_fields("/proc/self/io", ("read_bytes", "rchar"))
    return {"system": "dgl-inmem" if args.worker == "dgl-inmem" else "dgl-memmap", "setup_s": round(setup_s, 2),
            "batch_s": [round(t, 3) for t in times],
            "batches_measured": len(times), "epoch_batches": num_batches,
            "epoch_s_estimate": float(np.mean(times)) * num_batches if times else None,
            "mean_input_nodes": float(np.mean(inputs)) if inputs else None,
            "peak_rss_bytes": usage.ru_maxrss * 1024, "peak_anon_bytes": peaks.get("RssAnon"),
            "peak_file_bytes": peaks.get("RssFile"), "read_bytes": io.get("read_bytes"),
            "feature_read_bytes": sum(getattr(f, "read_bytes", 0) for f in feats.values()),
            "madvise": "default readahead" if args.default_readahead else "MADV_RANDOM"}


# --- the run -----------------------------------------------------------------------------------------

def _capped(cmd: list[str], cap: int | None, timeout: int):
    from diskgnn.cgroup import drop_page_cache, run_capped
    drop_page_cache()
    return run_capped(cmd, cap, timeout=timeout)


def _step(name: str, cli_args: list, cap: int | None, timeout: int) -> dict:
    from diskgnn.bench.scale import _parse_record, step_command
    log.info("step %s: diskgnn %s", name, " ".join(map(str, cli_args)))
    r = _capped(step_command(*cli_args), cap, timeout)
    row = {"step": name, "command": "diskgnn " + " ".join(map(str, cli_args)), "returncode": r.returncode,
           "wall_s": round(r.wall_s, 2), "cap_bytes": cap, "cgroup": r.cgroup, "oom_killed": r.oom_killed,
           "cgroup_peak_bytes": r.peak_bytes, **_parse_record(r.stderr)}
    if r.returncode != 0:
        row["stderr_tail"] = r.stderr[-3000:]
    log.info("step %s: rc %s, %.1f s, peak anon %s", name, r.returncode, r.wall_s, row.get("peak_anon_bytes"))
    return row


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.hetero_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, required=True, help="heterogeneous dataset (e.g. synth --hetero --scale m)")
    p.add_argument("--workdir", type=Path, default=Path("bench-hetero-speed"))
    p.add_argument("--cap", default="2G", help="memory cgroup limit of every step (default 2G)")
    p.add_argument("--fanouts", default="5,10")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--host-cache", default="10%")
    p.add_argument("--epochs", type=int, default=1, help="diskgnn training epochs (default 1)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--embed-lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dgl-batches", type=int, default=10, help="training batches the DGL baseline runs (default 10)")
    p.add_argument("--systems", default="diskgnn,dgl-memmap",
                   help="diskgnn, dgl-memmap (under --cap), dgl-inmem (features in RAM, no cap: DGL's compute speed)")
    p.add_argument("--default-readahead", action="store_true",
                   help="DGL baseline: keep the kernel's readahead on the memory maps (default: MADV_RANDOM)")
    p.add_argument("--from-packed", type=Path, default=None,
                   help="train from this packed directory instead of sampling and packing again")
    p.add_argument("--timeout", type=int, default=7200, help="seconds per step")
    p.add_argument("--disk-probe", default="1G", help="bytes of each O_DIRECT disk probe (default 1G)")
    p.add_argument("--name", default=None, help="result name (default: the dataset directory's name)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(WORKER, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(dgl_memmap_worker(args)), flush=True)
        return 0

    from diskgnn.bench.harness import git_commit, machine_facts
    from diskgnn.bench.io import disk_limits
    from diskgnn.cgroup import python_module_cmd
    from diskgnn.sizes import parse_size
    cap = parse_size(args.cap, name="--cap")
    probe = parse_size(args.disk_probe, name="--disk-probe")
    args.workdir.mkdir(parents=True, exist_ok=True)
    systems = args.systems.split(",")
    name = args.name or args.dataset.name
    out = args.out or Path("bench/results") / f"hetero-speed-{name}-{time.strftime('%Y-%m-%dT%H%M%S')}.json"
    result = {"kind": "hetero-speed", "commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine_facts(args.workdir), "dataset": str(args.dataset.resolve()),
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "worker"},
              "steps": [], "disk": []}

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str))

    packed = args.from_packed
    if "diskgnn" in systems and packed is None:
        samples, packed = args.workdir / "samples", args.workdir / "packed"
        result["steps"].append(_step("sample", ["sample", args.dataset, "--out", samples, "--fanouts", args.fanouts,
                                                "--batch-size", args.batch_size, "--epochs", 1, "--seed", args.seed,
                                                "--overwrite"], cap, args.timeout))
        save()
        result["steps"].append(_step("pack", ["pack", samples, "--out", packed, "--host-cache", args.host_cache,
                                              "--overwrite"], cap, args.timeout))
        save()
    result["disk"].append(disk_limits(args.workdir, size=probe))
    if "diskgnn" in systems:
        metrics = args.workdir / "train-metrics.jsonl"
        metrics.unlink(missing_ok=True)
        row = _step("train", ["train-hetero", packed, "--epochs", args.epochs, "--hidden", args.hidden, "--lr", args.lr,
                              "--embed-lr", args.embed_lr, "--train-seed", args.seed, "--metrics", metrics], cap,
                    args.timeout)
        if metrics.exists():
            row["epochs"] = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        result["steps"].append(row)
        save()
    for system in [s for s in systems if s in ("dgl-memmap", "dgl-inmem")]:
        cmd = python_module_cmd("diskgnn.bench.hetero_speed", WORKER, system, "--dataset", str(args.dataset),
                                "--fanouts", args.fanouts, "--batch-size", str(args.batch_size), "--hidden",
                                str(args.hidden), "--lr", str(args.lr), "--embed-lr", str(args.embed_lr), "--seed",
                                str(args.seed), "--dgl-batches", str(args.dgl_batches),
                                *(["--default-readahead"] if args.default_readahead else []))
        system_cap = cap if system == "dgl-memmap" else None  # in RAM: uncapped, the compute reference
        log.info("running %s under %s", system, args.cap if system_cap else "no cap")
        r = _capped(cmd, system_cap, args.timeout)
        row = {"step": system, "returncode": r.returncode, "wall_s": round(r.wall_s, 2), "cap_bytes": system_cap,
               "oom_killed": r.oom_killed, "cgroup_peak_bytes": r.peak_bytes}
        for line in r.stdout.splitlines():
            if line.startswith(RESULT_PREFIX):
                row.update(json.loads(line[len(RESULT_PREFIX):]))
        if r.returncode != 0:
            row["error"] = "out of memory (killed by the cgroup)" if r.oom_killed else r.stderr[-3000:]
        result["steps"].append(row)
        save()
    result["disk"].append(disk_limits(args.workdir, size=probe))
    train = next((s for s in result["steps"] if s["step"] == "train"), None)
    dglr = next((s for s in result["steps"] if s["step"] == "dgl-memmap"), None)
    summary = {}
    if train and train.get("epochs"):
        summary["diskgnn_epoch_s"] = [e["epoch_time_s"] for e in train["epochs"]]
        summary["diskgnn_test_acc"] = train["epochs"][-1]["test_acc"]
    inmem = next((s for s in result["steps"] if s["step"] == "dgl-inmem"), None)
    if inmem and inmem.get("epoch_s_estimate"):
        summary["dgl_inmem_epoch_s_estimate"] = inmem["epoch_s_estimate"]
    if dglr and dglr.get("epoch_s_estimate"):
        summary["dgl_memmap_epoch_s_estimate"] = dglr["epoch_s_estimate"]
        if summary.get("diskgnn_epoch_s"):
            summary["speedup"] = dglr["epoch_s_estimate"] / float(np.median(summary["diskgnn_epoch_s"]))
    result["summary"] = summary
    save()
    print(json.dumps(summary, indent=1))
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
