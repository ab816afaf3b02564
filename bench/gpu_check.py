"""One-command GPU check: every CUDA path of diskgnn against its CPU reference, then a scale-m-like run.

    python -m diskgnn.bench.gpu_check                 # a machine with an NVIDIA GPU and a current torch
    python -m diskgnn.bench.gpu_check --dry-run       # no GPU: the same code on CPU at tiny size (CI runs it)

Needs torch with CUDA, numpy, numba and psutil (no DGL, no PyG). Checks, each
printing what it compared and OK or FAILED:

1. ``tiers``: :class:`diskgnn.store.FeatureStore` on the GPU (device tier in
   GPU memory, pinned tier page-locked, host tier, packed extents) assembles
   every batch of an fp32 and an fp16 store bit for bit equal to
   ``features[input_nodes]`` (after the storage dtype) and to the CPU store.
2. ``pipeline``: the trainer's :class:`diskgnn.loader.BatchStages` (assembly and
   H2D copies on a side CUDA stream) deliver features, labels and blocks equal
   to the reference, through the threaded pipeline.
3. ``h2d-overlap``: a pinned host-to-device copy on that side stream overlaps
   matmuls on the compute stream (timed alone and together).
4. ``ops``: the message-passing operators of :mod:`diskgnn.ops` and the sage,
   gcn and gat models, forward and backward in float64, on CUDA against the
   CPU's fused kernels.
5. ``data-parallel``: :func:`diskgnn.distributed.launch_local` trains with 1
   rank over NCCL (2 if two GPUs are visible); with 1 rank its weights are
   compared with a single-process run.
6. ``scale-run``: a graph generated here with scale m's degree, width, classes
   and splits (``--nodes``, default scale m's 8M), sampled (fanouts 10,15, batch
   1024) and packed with device, pinned and host tiers, trains GraphSAGE on the
   GPU for ``--epochs`` after a warm-up epoch; the same batches with every
   feature in GPU memory give the ceiling. Reports the epoch time, each
   stage's busy time, the hit rate per tier and the ratio to the ceiling.

Writes ``bench/results/gpu-<date>.json`` (``--out``) after every check, so a
crash keeps what was measured; exits 0 when every check passed, 1 otherwise.
``--dry-run`` runs all of it on CPU at tiny size (no stream overlap to time,
gloo instead of NCCL): the code paths stay exercised without a GPU.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

M_NODES = 8_000_000
"""Scale m's node count: the default size of the scale run (about 3-4 minutes of the check's 8 on 16 cores)."""


@dataclass
class Context:
    """What the checks share: the device, sizes and the small check dataset."""
    device: torch.device
    dry_run: bool
    workdir: Path
    threads: int | None
    dataset: object = None
    samples: object = None
    packs: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# --- the small dataset of the exactness checks -------------------------------------------------------

def make_check_data(ctx: Context) -> None:
    """A 3,001-node graph with 37-d features, presampled, packed twice (fp32, fp16) with every tier used."""
    from diskgnn.packing import PackConfig, pack
    from diskgnn.sampling import SampleConfig, presample
    from diskgnn.synth import SynthConfig, synthesize
    root = ctx.workdir / "check"
    ctx.dataset = synthesize(SynthConfig(nodes=3001, avg_degree=7, dim=37, classes=5, seed=11,
                                         train_fraction=0.3, val_fraction=0.1, test_fraction=0.1),
                             root / "dataset", overwrite=True)
    ctx.samples = presample(ctx.dataset.path, root / "samples",
                            SampleConfig(fanouts=(5, 4), batch_size=113, epochs=1, seed=1), overwrite=True)
    for dtype in ("fp32", "fp16"):
        cfg = PackConfig(device_cache="10%", pinned_cache="10%", host_cache="10%", store_dtype=dtype)
        ctx.packs[dtype] = pack(ctx.samples.path, root / f"packed-{dtype}", cfg, overwrite=True)


def reference_rows(ctx: Context, ids: np.ndarray, store_dtype: str) -> np.ndarray:
    """``features[ids]`` as float32 after the storage dtype conversion: what the store must return."""
    from diskgnn.packing import convert_rows
    from diskgnn.store import to_float32
    rows = np.asarray(ctx.dataset.features[np.asarray(ids, dtype=np.int64)])
    return to_float32(convert_rows(rows, ctx.dataset.feat_dtype, store_dtype), store_dtype)


def all_keys(samples) -> list[tuple[str, int]]:
    return [(p, i) for p in samples.parts for i in range(samples.num_batches(p))]


def bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape and the same float32 bit patterns (so -0.0 and NaN payloads count too)."""
    return a.shape == b.shape and np.array_equal(np.ascontiguousarray(a, dtype=np.float32).view(np.uint32),
                                                 np.ascontiguousarray(b, dtype=np.float32).view(np.uint32))


# --- 1. tiers -------------------------------------------------------------------------------------------

def check_tiers(ctx: Context) -> tuple[bool, str, dict]:
    from diskgnn.store import FeatureStore
    details: dict = {}
    ok = True
    batches = rows = 0
    for dtype, packed in ctx.packs.items():
        with FeatureStore(packed, ctx.device) as store, FeatureStore(packed, "cpu") as cpu_store:
            placement = tier_placement(store)
            wrong_device = wrong_ref = wrong_cpu = 0
            for part, i in all_keys(ctx.samples):
                got = store.assemble(part, i, store.read(part, i))
                wrong_device += got.device != ctx.device or got.dtype != torch.float32
                got = got.cpu().numpy()
                wrong_ref += not bit_equal(got, reference_rows(ctx, ctx.samples.input_nodes(part, i), dtype))
                wrong_cpu += not bit_equal(got, cpu_store.assemble(part, i).numpy())
                batches += 1
                rows += got.shape[0]
            hits = store.stats()["hits"]
        used = all(hits.get(t, 0) > 0 for t in ("device", "pinned", "host", "disk"))
        placed = (placement["device_tier"] == str(ctx.device) and placement["pinned_tier_pinned"]) if ctx.cuda \
            else True
        ok_dtype = wrong_device == wrong_ref == wrong_cpu == 0 and used and placed
        ok &= ok_dtype
        details[dtype] = {"ok": ok_dtype, "rows_from": hits, "placement": placement,
                          "batches_not_equal_to_features": wrong_ref, "batches_not_equal_to_cpu_store": wrong_cpu,
                          "batches_on_another_device_or_dtype": wrong_device, "every_tier_used": used}
        print(f"    {dtype} store: rows from {hits}; device tier on {placement['device_tier']}, pinned tier "
              f"page-locked: {placement['pinned_tier_pinned']}; batches differing from features[input_nodes]: "
              f"{wrong_ref}, from the CPU store: {wrong_cpu}")
    compared = (f"{batches} batches ({rows} rows) of an fp32 and an fp16 store assembled on {ctx.device} vs "
                f"features[input_nodes] (bit for bit, after the storage dtype) and vs the same store on the CPU")
    return ok, compared, details


def tier_placement(store) -> dict:
    """Where the store's device tier lives and whether its pinned tier is page-locked."""
    tensor = getattr(store.tiers[0], "tensor", None)
    pinned = getattr(store.tiers[1], "pinned", None)
    return {"device_tier": str(tensor.device) if tensor is not None else "host",
            "device_tier_bytes": int(store.tiers[0].nbytes),
            "pinned_tier_pinned": bool(pinned is not None and pinned.is_pinned()),
            "pinned_tier_bytes": int(store.tiers[1].nbytes)}


# --- 2. pipeline ----------------------------------------------------------------------------------------

def check_pipeline(ctx: Context) -> tuple[bool, str, dict]:
    from diskgnn.models import TorchBlock
    from diskgnn.store import FeatureStore
    from diskgnn.loader import BatchStages
    packed = ctx.packs["fp32"]
    labels = np.asarray(ctx.dataset.labels)
    keys = all_keys(ctx.samples)
    bad_x = bad_labels = bad_blocks = not_side_stream = 0
    with FeatureStore(packed, ctx.device) as store:
        stages = BatchStages(ctx.samples, ctx.dataset.labels, store, ctx.device, assemble_threads=ctx.threads)
        pipe = stages.pipeline(keys, 2, name="gpu-check")
        with pipe:
            for batch in pipe:
                batch.wait()
                mb = ctx.samples.batch(batch.part, batch.index)
                if ctx.cuda:
                    not_side_stream += batch.ready is None or stages.side_stream == torch.cuda.current_stream(
                        ctx.device)
                bad_x += batch.x.device != ctx.device or not bit_equal(
                    batch.x.cpu().numpy(), reference_rows(ctx, mb.input_nodes, "fp32"))
                bad_labels += not np.array_equal(batch.y.cpu().numpy(), labels[mb.seeds])
                want = [TorchBlock.from_block(b) for b in mb.blocks]
                bad_blocks += any(not (torch.equal(g.src.cpu(), w.src) and torch.equal(g.dst.cpu(), w.dst)
                                       and torch.equal(g.indptr.cpu(), w.indptr)
                                       and torch.equal(g.in_degree.cpu(), w.in_degree))
                                  for g, w in zip(batch.blocks, want))
        stats = pipe.stats()
    ok = bad_x == bad_labels == bad_blocks == not_side_stream == 0 and stats["compute"]["items"] == len(keys)
    print(f"    {len(keys)} batches through load > read > assemble"
          f"{' (+ H2D on the side stream)' if ctx.cuda else ''} > consumer; wrong features {bad_x}, labels "
          f"{bad_labels}, blocks {bad_blocks}, copies not on the side stream {not_side_stream}")
    compared = (f"the trainer's pipeline on {ctx.device}: each batch's features (bit for bit), labels and block "
                f"tensors vs features[input_nodes], labels[seeds] and the sampler's blocks")
    return ok, compared, {"batches": len(keys), "wrong_features": bad_x, "wrong_labels": bad_labels,
                          "wrong_blocks": bad_blocks, "not_on_side_stream": not_side_stream,
                          "stages": {k: {"busy_s": v["busy_s"], "wait_s": v["wait_s"]} for k, v in stats.items()}}


# --- 3. H2D overlap -------------------------------------------------------------------------------------

def check_h2d_overlap(ctx: Context, copy_bytes: int = 1 << 30, repeats: int = 5) -> tuple[bool, str, dict]:
    """A pinned 1 GiB copy on the trainer's side stream while the compute stream multiplies matrices."""
    if not ctx.cuda:
        return True, "skipped on CPU: CUDA streams are needed (the pipeline check ran the same stages)", \
            {"skipped": True}
    from diskgnn.loader import BatchStages
    stages = BatchStages(ctx.samples, ctx.dataset.labels, None, ctx.device)
    side, dev = stages.side_stream, ctx.device
    host = torch.empty(copy_bytes // 4, dtype=torch.float32).pin_memory()
    host[:1024] = torch.arange(1024, dtype=torch.float32)  # what the check reads back
    target = torch.empty_like(host, device=dev)
    a = torch.randn(8192, 8192, device=dev)

    def timed(fn) -> float:
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    def copy_on_side():
        with torch.cuda.stream(side):
            target.copy_(host, non_blocking=True)

    def matmuls(k):
        for _ in range(k):
            torch.mm(a, a)

    timed(copy_on_side), timed(lambda: matmuls(2))  # warm up
    t_copy = statistics.median(timed(copy_on_side) for _ in range(repeats))
    t_mm = statistics.median(timed(lambda: matmuls(1)) for _ in range(repeats))
    k = max(1, round(t_copy / t_mm))
    t_compute = statistics.median(timed(lambda: matmuls(k)) for _ in range(repeats))
    t_both = statistics.median(timed(lambda: (copy_on_side(), matmuls(k))) for _ in range(repeats))
    hidden = (t_copy + t_compute - t_both) / min(t_copy, t_compute)
    ok = hidden >= 0.5 and torch.equal(target[:1024].cpu(), host[:1024])
    print(f"    copy {copy_bytes / 2**30:.1f} GiB pinned -> {dev} alone {1000 * t_copy:.1f} ms "
          f"({copy_bytes / t_copy / 1e9:.1f} GB/s), {k} matmuls 8192^2 alone {1000 * t_compute:.1f} ms, both "
          f"{1000 * t_both:.1f} ms: {100 * hidden:.0f} % of the shorter one hidden (pass: >= 50 %)")
    compared = ("wall time of a pinned H2D copy on the trainer's side stream and of matmuls on the compute "
                "stream, alone and issued together (median of 5)")
    return ok, compared, {"copy_s": t_copy, "compute_s": t_compute, "both_s": t_both, "matmuls": k,
                          "h2d_GBps": copy_bytes / t_copy / 1e9, "fraction_hidden": hidden}


# --- 4. ops ---------------------------------------------------------------------------------------------

def random_blocks(rng: np.random.Generator, sizes=(2011, 733, 211)):
    """Nested blocks (outermost first) with power-law-ish degrees and some destinations without in-edges."""
    from diskgnn.models import TorchBlock
    blocks = []
    for num_src, num_dst in zip(sizes[:-1], sizes[1:]):
        degree = np.minimum(rng.zipf(1.8, num_dst), 40)
        degree[rng.random(num_dst) < 0.05] = 0
        indices = np.concatenate([rng.choice(num_src, size=d, replace=False) for d in degree]).astype(np.int32)
        indptr = np.concatenate([[0], np.cumsum(degree)])
        blocks.append(TorchBlock.from_csr(indptr, indices, num_src, num_dst))
    return blocks


def check_ops(ctx: Context) -> tuple[bool, str, dict]:
    from diskgnn import ops
    from diskgnn.models import build_model
    rng = np.random.default_rng(5)
    blocks = random_blocks(rng)
    b0 = blocks[0]
    gen = torch.Generator().manual_seed(5)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    h, heads, width = rand(b0.num_src, 48), 3, 16
    cases = {
        "aggregate sum": (lambda b, x: ops.aggregate(b, x, "sum"), [h]),
        "aggregate mean": (lambda b, x: ops.aggregate(b, x, "mean"), [h]),
        "aggregate gcn": (lambda b, x: ops.aggregate(b, x, "gcn"), [h]),
        "aggregate mean + self": (lambda b, x: ops.aggregate(b, x, "mean", concat_self=True), [h]),
        "gat_aggregate": (lambda b, f, el, er: ops.gat_aggregate(b, f, el, er, 0.2),
                          [rand(b0.num_src, heads, width), rand(b0.num_src, heads), rand(b0.num_dst, heads)]),
        "edge_softmax": (lambda b, s: ops.edge_softmax(b, s), [rand(b0.num_edges, heads)]),
        "linear": (lambda b, x, w, bias: ops.linear(x, w, bias), [rand(b0.num_src, 300), rand(257, 300), rand(257)]),
    }
    details, ok = {}, True
    for name, (fn, inputs) in cases.items():
        ref_out, ref_grads = _run_op(fn, b0, inputs, "cpu", fused=True)
        out, grads = _run_op(fn, b0.to(ctx.device), inputs, ctx.device, fused=False)
        diff = max([_maxdiff(out, ref_out)] + [_maxdiff(g, r) for g, r in zip(grads, ref_grads)])
        good = diff <= 1e-9 and out.shape == ref_out.shape
        ok &= good
        details[name] = {"max_abs_diff": diff, "ok": good}
    for kind in ("sage", "gcn", "gat"):
        torch.manual_seed(3)
        ref_model = build_model(kind, in_dim=48, num_classes=7, num_layers=2, hidden=24, heads=2).double()
        model = copy.deepcopy(ref_model).to(ctx.device)
        x = rand(blocks[0].num_src, 48)
        ref_out, ref_grads = _run_model(ref_model, blocks, x, fused=True)
        out, grads = _run_model(model, [b.to(ctx.device) for b in blocks], x.to(ctx.device), fused=False)
        diff = max([_maxdiff(out, ref_out)] + [_maxdiff(g, r) for g, r in zip(grads, ref_grads)])
        good = diff <= 1e-9
        ok &= good
        details[f"model {kind}"] = {"max_abs_diff": diff, "ok": good}
    other = f"{ctx.device} (plain torch ops)" if ctx.cuda else "CPU with the plain-torch backend"
    for name, d in details.items():
        print(f"    {name:24s} max |difference| {d['max_abs_diff']:.2e} {'ok' if d['ok'] else 'TOO LARGE'}")
    compared = (f"float64 outputs and gradients (inputs, weights) on {other} vs the CPU's fused numba kernels, "
                f"on blocks of {b0.num_src} > {b0.num_dst} > {blocks[1].num_dst} nodes; pass: max |difference| <= 1e-9")
    return ok, compared, details


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().cpu() - b.detach().cpu()).abs().max()) if a.numel() else 0.0


def _run_op(fn, block, inputs, device, fused: bool):
    from diskgnn import ops
    xs = [t.detach().clone().to(device).requires_grad_(True) for t in inputs]
    with ops.backend("auto" if fused else "torch"):
        out = fn(block, *xs)
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
        grads = torch.autograd.grad((out * weight).sum(), xs)
    return out, grads


def _run_model(model, blocks, x, fused: bool):
    from diskgnn import ops
    x = x.detach().clone().requires_grad_(True)
    with ops.backend("auto" if fused else "torch"):
        out = model(blocks, x)
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
        grads = torch.autograd.grad((out * weight).sum(), [x, *model.parameters()])
    return out, grads


# --- 5. data parallel -----------------------------------------------------------------------------------

def check_data_parallel(ctx: Context) -> tuple[bool, str, dict]:
    from diskgnn.distributed import launch_local
    from diskgnn.store import FeatureStore
    from diskgnn.train import TrainConfig, Trainer, load_checkpoint, packed_data_id
    nproc = min(2, torch.cuda.device_count()) if ctx.cuda else 1
    backend = "nccl" if ctx.cuda else "gloo"
    packed = ctx.packs["fp32"]
    ck = ctx.workdir / "check" / "ddp-checkpoint"
    shutil.rmtree(ck, ignore_errors=True)
    cfg = TrainConfig(model="sage", epochs=2, hidden=16, lr=1e-2, seed=4, device="cuda" if ctx.cuda else "cpu",
                      nproc=nproc, threads=ctx.threads or 2, checkpoint=str(ck))
    report = launch_local(packed.path, cfg)
    chance = 1.0 / ctx.dataset.num_classes
    ok = (report.get("nproc") == nproc and str(report.get("device", "")).startswith(ctx.device.type)
          and math.isfinite(report.get("final_loss") or math.nan) and (report.get("best_val_acc") or 0) > chance)
    details = {"nproc": nproc, "backend": backend, "device": report.get("device"),
               "final_loss": report.get("final_loss"), "best_val_acc": report.get("best_val_acc")}
    line = (f"    {nproc} rank(s) over {backend} on {report.get('device')}: final loss "
            f"{report.get('final_loss'):.4f}, best val acc {report.get('best_val_acc'):.4f} (chance {chance:.2f})")
    compared = f"a {nproc}-rank data-parallel run over {backend} (loss finite, accuracy above chance)"
    if nproc == 1:
        ddp = load_checkpoint(ck)["model"]
        single_cfg = replace(cfg, nproc=1, checkpoint=None)
        with FeatureStore(packed, ctx.device) as store:
            trainer = Trainer(packed.samples, packed.dataset, store, single_cfg, device=ctx.device,
                              data_id=packed_data_id(packed))
            alone = trainer.fit()
        single = trainer.model.state_dict()
        diff = max(float((ddp[k].float().cpu() - single[k].float().cpu()).abs().max()) for k in single)
        # exact on CPU; on a GPU atomic adds reorder sums, and Adam can turn a gradient at noise level into a
        # full step, so the check is on what the model computes: the loss and the accuracy
        loss_gap = abs(report["final_loss"] - alone["final_loss"]) / max(abs(alone["final_loss"]), 1e-12)
        acc_gap = abs(report["best_val_acc"] - alone["best_val_acc"])
        details.update(max_weight_diff_vs_single_process=diff, final_loss_relative_gap=loss_gap, val_acc_gap=acc_gap)
        ok &= loss_gap <= 1e-3 and acc_gap <= 0.01
        line += (f"; vs a single-process run: final loss {alone['final_loss']:.4f} (relative gap {loss_gap:.1e}, "
                 f"pass <= 1e-3), val acc gap {acc_gap:.4f} (pass <= 0.01), max |weight difference| {diff:.1e}")
        compared += " and vs a single-process run of the same batches (loss, accuracy, weights)"
    print(line)
    return ok, compared, details


# --- 6. the scale-m-like run ----------------------------------------------------------------------------

class DeviceResidentFeatures:
    """Every feature row in the training device's memory as float32, gathered with ``index_select``.

    The all-in-GPU-memory ceiling of the scale run: no disk, no host tiers, no
    H2D copy of features (only each batch's ids travel).
    """

    def __init__(self, samples, dataset, device: torch.device, chunk_rows: int = 1 << 20):
        from diskgnn.store import to_float32
        self.samples, self.device = samples, device
        n, f = dataset.num_nodes, dataset.feat_dim
        self.features = torch.empty((n, f), dtype=torch.float32, device=device)
        for lo in range(0, n, chunk_rows):
            rows = to_float32(np.asarray(dataset.features[lo:lo + chunk_rows]), dataset.feat_dtype)
            self.features[lo:lo + rows.shape[0]] = torch.from_numpy(rows).to(device)
        self._rows = 0
        self.row_bytes = f * 4

    def read(self, part: str, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.samples.input_nodes(part, i), dtype=np.int64))

    def assemble(self, part: str, i: int, ids: torch.Tensor) -> torch.Tensor:
        self._rows += int(ids.shape[0])
        return self.features.index_select(0, ids.to(self.device))

    def stats(self) -> dict:
        return {"bytes_read": 0, "bytes_useful": self._rows * self.row_bytes, "hits": {"device": self._rows}}


def scale_run(ctx: Context, args) -> tuple[bool, str, dict]:
    from diskgnn.bench.io import disk_limits
    from diskgnn.packing import PackConfig, pack
    from diskgnn.sampling import SampleConfig, presample
    from diskgnn.synth import scale_config, synthesize
    root = ctx.workdir / "scale"
    steps: dict = {}
    t0 = time.perf_counter()
    overrides = {"nodes": args.nodes}
    if ctx.dry_run:
        overrides.update(dim=32, train_fraction=0.05)
    ds = synthesize(scale_config("m", **overrides), root / "dataset", overwrite=True)
    steps["synth_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch_size = 256 if ctx.dry_run else 1024
    samples = presample(ds.path, root / "samples", SampleConfig(fanouts=(10, 15), batch_size=batch_size, seed=0),
                        overwrite=True, threads=ctx.threads)
    steps["sample_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pack_cfg = PackConfig(device_cache=args.device_cache, pinned_cache=args.pinned_cache, host_cache=args.host_cache)
    packed = pack(samples.path, root / "packed", pack_cfg, overwrite=True)
    steps["pack_s"] = time.perf_counter() - t0
    print(f"    generated {ds.num_nodes} nodes, {ds.num_edges} edges, {ds.feat_dim}-d {ds.feat_dtype} "
          f"({ds.feature_bytes / 2**30:.2f} GiB) in {steps['synth_s']:.1f} s; sampled in {steps['sample_s']:.1f} s; "
          f"packed (device {args.device_cache}, pinned {args.pinned_cache}, host {args.host_cache}) in "
          f"{steps['pack_s']:.1f} s")
    disk = disk_limits(root / "io", size=(16 << 20) if ctx.dry_run else (1 << 30), random_seconds=0.5)
    systems = [train_system(ctx, "diskgnn-gpu-tiers" if ctx.cuda else "diskgnn-tiers", packed, samples, ds,
                            args.warmup, args.epochs),
               train_system(ctx, "all-in-gpu-memory" if ctx.cuda else "all-in-memory", None, samples, ds,
                            args.warmup, args.epochs)]
    ours, ceiling = systems
    ratio = ours["epoch_time_s"] / ceiling["epoch_time_s"]
    hits = ours["hit_rate"] or {}
    for s in systems:
        busy = ", ".join(f"{k} {v['busy_s']:.2f}" for k, v in s["stages"].items())
        print(f"    {s['name']}: epoch {s['epoch_time_s']:.2f} s (median of {len(s['epoch_times_s'])}), busy s: "
              f"{busy}; test acc {s['test_acc']:.4f}")
    print(f"    rows by tier: {hits}; epoch time / ceiling = {ratio:.2f}x")
    # the same batches and initial weights: both systems train the same model (exactly on CPU; on a GPU up to
    # the order of its atomic adds), so their losses and accuracies must agree
    loss_gap = abs(ours["final_loss"] - ceiling["final_loss"]) / max(abs(ceiling["final_loss"]), 1e-12)
    acc_gap = abs(ours["test_acc"] - ceiling["test_acc"])
    chance = 1.0 / ds.num_classes
    learned = ctx.dry_run or ours["test_acc"] > chance + 0.1  # a dry run's one epoch of a few batches learns little
    ok = (all(math.isfinite(s["final_loss"]) for s in systems) and loss_gap <= 0.02 and acc_gap <= 0.01
          and learned and hits.get("device", 0) > 0)
    print(f"    final loss {ours['final_loss']:.4f} vs {ceiling['final_loss']:.4f} (relative gap {loss_gap:.1e}, "
          f"pass <= 2e-2), test acc gap {acc_gap:.4f} (pass <= 0.01)"
          f"{'' if ctx.dry_run else f', above chance + 0.1 ({chance + 0.1:.3f})'}")
    details = {"scale": "m" if args.nodes == M_NODES and not ctx.dry_run else f"m-like ({args.nodes} nodes)",
               "dataset": {"nodes": ds.num_nodes, "edges": ds.num_edges, "feat_dim": ds.feat_dim,
                           "feature_bytes": ds.feature_bytes, "classes": ds.num_classes},
               "config": {"fanouts": [10, 15], "batch_size": batch_size, "model": "sage", "hidden": 128,
                          "device_cache": args.device_cache, "pinned_cache": args.pinned_cache,
                          "host_cache": args.host_cache, "warmup": args.warmup, "epochs": args.epochs},
               "preprocessing": {**steps, "packed_bytes": packed.summary().get("packed_bytes")},
               "memory_cap_bytes": None, "cgroup": False, "disk": disk, "systems": systems,
               "ratio_to_ceiling": ratio, "gpu_tier_hit_rate": hits.get("device"),
               "final_loss_relative_gap": loss_gap, "test_acc_gap": acc_gap}
    compared = (f"GraphSAGE epochs on {ctx.device} from device/pinned/host tiers + disk vs the same batches "
                f"with every feature in {'GPU' if ctx.cuda else 'device'} memory: epoch time, stage busy times and "
                f"hit rates measured; final loss and test accuracy must agree")
    return ok, compared, details


def train_system(ctx: Context, name: str, packed, samples, ds, warmup: int, epochs: int) -> dict:
    """``warmup + epochs`` training epochs of GraphSAGE (128 hidden), then one evaluation; the measured epochs'
    median, per-stage busy/wait, bytes and hit rates (BENCH.md's system keys)."""
    from diskgnn.store import FeatureStore
    from diskgnn.train import TrainConfig, Trainer, peak_rss_bytes, training_memory
    cfg = TrainConfig(model="sage", epochs=warmup + epochs, hidden=128, lr=1e-3, seed=0, device=str(ctx.device),
                      threads=ctx.threads)
    if packed is not None:
        source = FeatureStore(packed, ctx.device, training=training_memory(cfg, ds, samples.config.num_layers,
                                                                           ctx.device))
    else:
        source = DeviceResidentFeatures(samples, ds, ctx.device)
    try:
        trainer = Trainer(samples, ds, source, cfg, device=ctx.device)
        records = [trainer.train_epoch(e) for e in range(warmup + epochs)]
        evaluation = trainer.evaluate(("test",))
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    measured = records[warmup:]
    stages: dict = {}
    for r in measured:
        for stage, st in r["stages"].items():
            acc = stages.setdefault(stage, {"busy_s": 0.0, "wait_s": 0.0})
            acc["busy_s"] += st["busy_s"] / len(measured)
            acc["wait_s"] += st["wait_s"] / len(measured)
    mean = lambda key: (statistics.fmean(r[key] for r in measured) if all(r.get(key) is not None  # noqa: E731
                                                                          for r in measured) else None)
    return {"name": name, "kind": "train", "epoch_time_s": statistics.median(r["epoch_time_s"] for r in measured),
            "epoch_times_s": [r["epoch_time_s"] for r in measured], "warmup_epoch_s": records[0]["epoch_time_s"],
            "batches_per_epoch": measured[0]["batches"], "bytes_read": mean("bytes_read"),
            "bytes_useful": mean("bytes_useful"), "read_amplification": measured[-1].get("read_amplification"),
            "peak_rss_bytes": peak_rss_bytes(), "stages": stages, "hit_rate": measured[-1].get("hit_rate"),
            "final_loss": measured[-1]["loss"], "test_acc": evaluation["test_acc"],
            "gpu_peak_bytes": torch.cuda.max_memory_allocated(ctx.device) if ctx.cuda else None}


# --- driver ---------------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict:
    import numba
    env = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "numpy": np.__version__,
           "numba": numba.__version__, "python": sys.version.split()[0], "cpus": os.cpu_count(),
           "device": str(device), "cuda_devices": []}
    if device.type == "cuda":
        try:
            version = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        except Exception as exc:  # noqa: BLE001 - a torch without NCCL: the data-parallel check will say more
            env["nccl"] = f"unavailable ({type(exc).__name__})"
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            env["cuda_devices"].append({"name": p.name, "memory_bytes": p.total_memory,
                                        "capability": f"{p.major}.{p.minor}"})
    return env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU needed: run every check on CPU at tiny size (the CUDA-only timing is skipped)")
    p.add_argument("--device", default="cuda", help="the GPU to check (default cuda, i.e. cuda:0)")
    p.add_argument("--nodes", type=int, default=None,
                   help=f"nodes of the scale run's graph (default {M_NODES:,} as scale m; --dry-run 30,000)")
    p.add_argument("--epochs", type=int, default=None, help="measured epochs per system (default 3; --dry-run 1)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up epochs per system before measuring (default 1)")
    p.add_argument("--device-cache", default="10%", help="device tier of the scale run (default 10%%)")
    p.add_argument("--pinned-cache", default="10%", help="pinned tier of the scale run (default 10%%)")
    p.add_argument("--host-cache", default="10%", help="host tier of the scale run (default 10%%)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core)")
    p.add_argument("--skip-scale-run", action="store_true", help="only the exactness checks")
    p.add_argument("--workdir", default="bench/work/gpu_check", help="scratch space (deleted unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the generated data")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/gpu-<date>.json)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print(f"gpu_check: no CUDA device is visible (torch {torch.__version__}, CUDA build "
                  f"{torch.version.cuda}); run it on a machine with an NVIDIA GPU and a CUDA build of torch, or "
                  f"pass --dry-run to run the same code on CPU", file=sys.stderr)
            return 2
        device = torch.device(args.device)
        if device.index is None:
            device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    args.nodes = args.nodes or (30_000 if args.dry_run else M_NODES)
    args.epochs = args.epochs or (1 if args.dry_run else 3)
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    out = Path(args.out) if args.out else Path("bench/results") / f"gpu-{'dryrun-' if args.dry_run else ''}{stamp}.json"
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(device=device, dry_run=args.dry_run, workdir=workdir, threads=args.threads)
    from diskgnn.bench.harness import git_commit
    result = {"bench": "gpu-check", "dry_run": args.dry_run, "commit": git_commit(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment(device), "checks": [],
              "ok": None}
    t_start = time.perf_counter()
    print(f"diskgnn GPU check on {device} (torch {torch.__version__}, CUDA {torch.version.cuda})"
          f"{' -- dry run on CPU' if args.dry_run else ''}")

    def save() -> None:
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        tmp.write_text(json.dumps(result, indent=2, default=str))
        os.replace(tmp, out)

    checks = [("tiers", check_tiers), ("pipeline", check_pipeline), ("h2d-overlap", check_h2d_overlap),
              ("ops", check_ops), ("data-parallel", check_data_parallel)]
    if not args.skip_scale_run:
        checks.append(("scale-run", lambda c: scale_run(c, args)))
    try:
        t0 = time.perf_counter()
        make_check_data(ctx)
        print(f"check data: {ctx.dataset.num_nodes} nodes, {ctx.dataset.feat_dim}-d, "
              f"{sum(ctx.samples.num_batches(p) for p in ctx.samples.parts)} batches, packed fp32 and fp16 "
              f"({time.perf_counter() - t0:.1f} s)")
        for name, fn in checks:
            t0 = time.perf_counter()
            print(f"[{name}]")
            try:
                ok, compared, details = fn(ctx)
            except Exception as exc:  # noqa: BLE001 - a failed check is reported and the others still run
                ok, compared = False, f"raised {type(exc).__name__}: {exc}"
                details = {"traceback": traceback.format_exc(limit=8)}
                print(details["traceback"], file=sys.stderr)
            seconds = time.perf_counter() - t0
            result["checks"].append({"name": name, "ok": bool(ok), "compared": compared,
                                     "seconds": round(seconds, 2), "details": details})
            print(f"  {'OK' if ok else 'FAILED'} {name} ({seconds:.1f} s): {compared}")
            save()
    finally:
        result["ok"] = bool(result["checks"]) and len(result["checks"]) == len(checks) and \
            all(c["ok"] for c in result["checks"])
        save()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'ALL OK' if result['ok'] else 'SOME CHECKS FAILED'} in {result['seconds']:.0f} s; wrote {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
