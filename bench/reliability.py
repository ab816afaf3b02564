"""Fault injection for diskgnn: kill-and-resume trials and corrupted-input fuzzing.

Two experiments, both driven through the real command line:

* **kill and resume** — run a step (``synth``, ``prepare``, ``sample``,
  ``pack``, ``train --checkpoint``) in a subprocess, SIGKILL it at a random
  moment after it started writing, run the same command again (``train``: with
  ``--resume`` once a checkpoint exists) and compare the result with an
  uninterrupted run: every file's bytes (crc32 of the file, not of the
  manifest's claim), the manifest minus its timestamps and timings, and for
  training the checkpoint's weights, optimizer state and per-epoch losses and
  the ``--metrics`` file's records (minus timings). For ``synth``,
  ``prepare`` and ``pack`` it also counts the reruns that resumed from the killed run's
  journal (their manifest's stats say where from) rather than from zero.
* **fuzz** — copy a good dataset / samples / packed / checkpoint / raw input
  directory, corrupt it (truncate, extend, flip or zero bytes, delete a file;
  junk, truncated or mutated manifest: missing keys, wrong types, wrong dtype,
  shape or version) and run ``info``, ``verify``, ``sample``, ``pack``,
  ``train`` or ``prepare`` on it. Every outcome must be a success or
  diskgnn's own error (exit code 2), within a time limit; ``verify`` must
  reject every corrupted data file. Cases run in a worker process (so a
  segfault or a hang is caught and attributed to its case) that the parent
  restarts after a crash.

``python -m diskgnn.bench.reliability --workdir W --kills 50 --fuzz 1000``
prints one JSON object with the counts (and ``--out FILE`` saves it).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CLI = ("-m", "diskgnn.tools.cli")
# Manifest keys that legitimately differ between two runs of the same command.
VOLATILE_KEYS = ("created", "stats")


def cli_argv(*args: str) -> list[str]:
    """The command that runs ``diskgnn ARGS -q`` with this interpreter."""
    return [sys.executable, *CLI, *map(str, args), "-q"]


def _quiet_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("NUMBA_NUM_THREADS", "2")
    return env


# --- fixtures ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fixtures:
    """Good inputs of every kind, made once; trials copy them, never change them."""
    root: Path
    raw: Path
    """A directory of .npy files (``--format npz`` input)."""
    dataset: Path
    samples: Path
    packed: Path | None
    """None when the packer is not available."""
    checkpoint: Path | None
    """A checkpoint directory after one epoch of training on ``packed``."""
    sample_args: tuple[str, ...]
    train_args: tuple[str, ...]


def have_packer() -> bool:
    try:
        import diskgnn.packing  # noqa: F401
        return True
    except ImportError:
        return False


def write_raw_input(ds, out: Path) -> Path:
    """Write dataset ``ds`` as a directory of .npy files that ``prepare --format npz`` reads."""
    out.mkdir(parents=True, exist_ok=True)
    indptr = np.asarray(ds.indptr)
    dst = np.repeat(np.arange(ds.num_nodes, dtype=np.int64), np.diff(indptr))
    src = np.asarray(ds.indices, dtype=np.int64)
    np.save(out / "edge_index.npy", np.stack([src, dst]))
    feats = np.asarray(ds.features)
    np.save(out / "feat.npy", feats if ds.feat_dtype != "bf16" else feats.view(np.uint16))
    np.save(out / "label.npy", np.asarray(ds.labels))
    for s in ("train", "val", "test"):
        np.save(out / f"{s}_idx.npy", np.asarray(ds.split(s)))
    return out


def build_fixtures(root: Path, *, nodes: int = 2311, dim: int = 13, with_train: bool = True) -> Fixtures:
    """Make a small dataset, its raw input, samples, packed directory and a one-epoch checkpoint under ``root``."""
    from diskgnn.sampling import SampleConfig, presample
    from diskgnn.synth import SynthConfig, synthesize
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ds = synthesize(SynthConfig(nodes=nodes, avg_degree=7, dim=dim, classes=5, seed=11, train_fraction=0.3,
                                val_fraction=0.1, test_fraction=0.1), root / "dataset", overwrite=True)
    raw = write_raw_input(ds, root / "raw")
    sample_args = ("--fanouts", "4,3", "--batch-size", "61", "--epochs", "2", "--seed", "5")
    presample(ds.path, root / "samples", SampleConfig(fanouts=(4, 3), batch_size=61, epochs=2, seed=5),
              overwrite=True)
    train_args = ("--model", "sage", "--hidden", "16", "--threads", "1", "--device", "cpu", "--lr", "0.01")
    packed = checkpoint = None
    if have_packer():
        from diskgnn.packing import PackConfig, pack
        packed = root / "packed"
        # the stream write mode (the default on real data; here forced, in small blocks): packed.bin has no
        # whole-file crc32, so damage must be caught by the per-run checksums
        pack(root / "samples", packed, PackConfig(host_cache="20%", write_mode="stream", order_block="8K"),
             overwrite=True)
        if with_train:
            from diskgnn.tools.cli import main
            checkpoint = root / "checkpoint"
            shutil.rmtree(checkpoint, ignore_errors=True)
            try:
                rc = main(["train", str(packed), *train_args, "--epochs", "1", "--checkpoint", str(checkpoint),
                           "-q"])
            except ImportError as exc:  # the trainer is mid-change in this checkout
                log.warning("training is not available (%s); skipping train and resume trials", exc)
                rc, checkpoint = 0, None
            if rc != 0:
                raise RuntimeError(f"training the fixture failed with exit code {rc}")
    return Fixtures(root=root, raw=raw, dataset=root / "dataset", samples=root / "samples", packed=packed,
                    checkpoint=checkpoint, sample_args=sample_args, train_args=train_args)


# --- snapshots: what "identical output" means ------------------------------------------------------

def _normalized_manifest(path: Path) -> dict:
    manifest = json.loads(path.read_text())
    return {k: v for k, v in manifest.items() if k not in VOLATILE_KEYS}


def snapshot_dir(directory: Path) -> dict:
    """Every file under ``directory`` (hidden ones too) with its size and crc32, plus the normalized manifest."""
    from diskgnn.manifest import file_crc32
    directory = Path(directory)
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(directory))
            files[rel] = (path.stat().st_size, file_crc32(path))
    manifest = directory / "manifest.json"
    files.pop("manifest.json", None)
    return {"files": files, "manifest": _normalized_manifest(manifest) if manifest.exists() else None}


# What a --metrics record says about learning (the rest are timings, RSS and cache counters of this process).
METRIC_KEYS = ("event", "epoch", "part", "batches", "seeds", "loss", "train_acc", "val_acc", "test_acc", "val_loss",
               "test_loss", "epochs", "best_val_acc", "best_epoch", "final_loss", "final_train_acc")


def snapshot_metrics(path: Path) -> list[dict]:
    """The records of a ``--metrics`` file, each reduced to :data:`METRIC_KEYS`."""
    return [{k: rec[k] for k in METRIC_KEYS if k in rec}
            for rec in map(json.loads, Path(path).read_text().splitlines())]


def snapshot_checkpoint(directory: Path) -> dict:
    """The checkpoint's epoch, tensors (by crc32 of their bytes) and per-epoch losses and accuracies."""
    import torch
    from diskgnn.train import load_checkpoint
    state = load_checkpoint(directory)

    def digest(obj):
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().reshape(-1).contiguous()
            return ("tensor", str(t.dtype), list(obj.shape), zlib.crc32(t.view(torch.uint8).numpy().tobytes())
                    if t.numel() else 0)
        if isinstance(obj, dict):
            return {str(k): digest(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [digest(v) for v in obj]
        return obj

    keep = ("epoch", "part", "batches", "loss", "train_acc", "val_acc", "test_acc", "val_loss", "test_loss")
    history = [{k: h.get(k) for k in keep} for h in json.loads(state["history"])]
    return {"epoch": state["epoch"], "model": digest(state["model"]), "optimizer": digest(state["optimizer"]),
            "rng": digest(state["torch_rng"]), "history": history, "best": json.loads(state["best"]),
            "files": sorted(p.name for p in Path(directory).iterdir())}


def diff_snapshots(a, b, where: str = "") -> str | None:
    """The first difference between two snapshots, as a path and both values (None when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{where}/{k}: only in {'second' if k not in a else 'first'}"
            d = diff_snapshots(a[k], b[k], f"{where}/{k}")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = diff_snapshots(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{where}: {a!r} != {b!r}"


# --- kill and resume ----------------------------------------------------------------------------

@dataclass
class Step:
    """One command whose output must survive being killed."""
    name: str
    argv: list[str]
    out: Path
    """The output directory (a checkpoint directory for train)."""
    trigger: Path
    """A path that appears once the step started real work; kills land after it."""
    resume_argv: list[str] | None = None
    """train: the command to continue with once a checkpoint exists."""
    extra_cleanup: tuple[Path, ...] = ()
    metrics: Path | None = None
    """train: the --metrics file, compared too."""

    def snapshot(self) -> dict:
        if self.name != "train":
            return snapshot_dir(self.out)
        snap = snapshot_checkpoint(self.out)
        if self.metrics is not None:
            snap["metrics"] = snapshot_metrics(self.metrics)
        return snap

    def resumed_from(self) -> str | None:
        """synth / prepare / pack: where the run that published the output resumed (its stats say), None if from zero."""
        try:
            stats = json.loads((self.out / "manifest.json").read_text()).get("stats") or {}
        except (OSError, ValueError):
            return None
        where = stats.get("resumed_from_node", stats.get("resumed_from"))
        if where is None and stats.get("resumed_from_block"):  # pack: 0 = from the start
            where = f"block {stats['resumed_from_block']}"
        return None if where is None else str(where)

    def clean(self) -> None:
        for p in (self.out, *self.extra_cleanup):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def kill_prepare_input(fx: Fixtures, *, big: bool = False) -> Path:
    """A raw input for the prepare kill trials (60k / 200k nodes), made once under the fixtures' root."""
    from diskgnn.synth import SynthConfig, synthesize
    nodes = 200_003 if big else 60_001
    raw = fx.root / f"kill_raw_{nodes}"
    if not (raw / "test_idx.npy").exists():  # written last
        src = fx.root / f"kill_raw_{nodes}_dataset"
        ds = synthesize(SynthConfig(nodes=nodes, avg_degree=8, dim=32, classes=5, seed=12, train_fraction=0.3),
                        src, overwrite=True)
        shutil.rmtree(raw, ignore_errors=True)
        write_raw_input(ds, raw)
        shutil.rmtree(src)
    return raw


def kill_pack_input(fx: Fixtures, *, big: bool = False) -> Path:
    """Samples for the pack kill trials (60k / 200k nodes x 32 dims), made once under the fixtures' root."""
    from diskgnn.sampling import SampleConfig, presample
    from diskgnn.synth import SynthConfig, synthesize
    nodes = 200_003 if big else 60_001
    samples = fx.root / f"kill_pack_{nodes}_samples"
    if not (samples / "manifest.json").exists():
        ds = synthesize(SynthConfig(nodes=nodes, avg_degree=8, dim=32, classes=5, seed=13, train_fraction=0.3),
                        fx.root / f"kill_pack_{nodes}_dataset", overwrite=True)
        presample(ds.path, samples, SampleConfig(fanouts=(5, 4), batch_size=509, epochs=2, seed=3), overwrite=True)
    return samples


def make_steps(fx: Fixtures, work: Path, *, big: bool = False) -> list[Step]:
    """The steps to kill: synth, prepare, sample, and (when the packer exists) pack and train."""
    work = Path(work)
    # 20 / 40 chunks, each journaled: most kills land after the first (loading the kernels takes longest)
    nodes, chunk = ("200000", "5000") if big else ("40000", "2000")
    steps = [
        Step("synth", cli_argv("synth", "--scale", "tiny", "--nodes", nodes, "--dim", "32", "--seed", "4",
                               "--chunk-nodes", chunk, "--out", work / "synth"),
             work / "synth", work / "synth" / ".diskgnn-partial"),
        # a larger input and the smallest budget: several destination ranges and feature chunks to resume from
        Step("prepare", cli_argv("prepare", "--format", "npz", kill_prepare_input(fx, big=big), "--out",
                                 work / "prepare", "--memory-budget", "16M", "--undirected"),
             work / "prepare", work / "prepare" / ".diskgnn-partial"),
        Step("sample", cli_argv("sample", fx.dataset, "--out", work / "sample", "--fanouts", "5,4",
                                "--batch-size", "37", "--epochs", "6" if big else "3", "--seed", "9",
                                "--threads", "1", "--memory-budget", "256M"),
             work / "sample", work / "sample" / ".diskgnn-partial"),
    ]
    if fx.packed is not None:
        # the stream write mode in small blocks, journaled often: kills land between journals to resume from
        steps.append(Step("pack", cli_argv("pack", kill_pack_input(fx, big=big), "--out", work / "pack",
                                           "--host-cache", "10%", "--memory-budget", "256M", "--write-mode",
                                           "stream", "--order-block", "16K", "--journal-every", "64K"),
                          work / "pack", work / "pack" / ".diskgnn-partial"))
    if fx.checkpoint is not None:
        ck, metrics = work / "train", work / "train.metrics.jsonl"
        base = ["train", fx.packed, *fx.train_args, "--epochs", "6" if big else "3", "--checkpoint", ck,
                "--metrics", metrics]
        steps.append(Step("train", cli_argv(*base), ck, metrics, resume_argv=cli_argv(*base, "--resume"),
                          extra_cleanup=(metrics,), metrics=metrics))
    return steps


@dataclass
class Reference:
    snapshot: dict
    work_s: float
    """Seconds from the trigger appearing to the manifest appearing (train: to the process exiting)."""
    total_s: float


def _run_watching(argv: list[str], trigger: Path, kill_after: float | None, timeout: float = 600.0,
                  done_marker: Path | None = None):
    """Run ``argv``; when ``kill_after`` is set, SIGKILL it that many seconds after ``trigger`` appears.

    Returns (returncode, stderr, seconds to trigger or None, total seconds, killed); with
    ``done_marker`` the total is the time until that path appeared (the output was published).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_quiet_env())
    seen = None
    done_at = None
    killed = False
    stderr_chunks: list[bytes] = []
    os.set_blocking(proc.stderr.fileno(), False)
    while proc.poll() is None:
        now = time.perf_counter()
        if seen is None and trigger.exists():
            seen = now
        if done_marker is not None and done_at is None and done_marker.exists():
            done_at = now
        if kill_after is not None and seen is not None and now - seen >= kill_after:
            proc.send_signal(signal.SIGKILL)
            killed = True
            proc.wait()
            break
        if now - t0 > timeout:
            proc.kill()
            proc.wait()
            raise TimeoutError(f"{argv} ran longer than {timeout} s")
        with contextlib.suppress(BlockingIOError, TypeError):
            data = proc.stderr.read()
            if data:
                stderr_chunks.append(data)
        time.sleep(0.002)
    with contextlib.suppress(BlockingIOError, TypeError, ValueError):
        data = proc.stderr.read()
        if data:
            stderr_chunks.append(data)
    proc.stderr.close()
    if seen is None and trigger.exists():
        seen = time.perf_counter()
    total = (done_at if done_at is not None else time.perf_counter()) - t0
    return proc.returncode, b"".join(stderr_chunks).decode(errors="replace"), \
        (None if seen is None else seen - t0), total, killed


def reference_run(step: Step) -> Reference:
    step.clean()
    done = None if step.name == "train" else step.out / "manifest.json"
    rc, err, to_trigger, total, _ = _run_watching(step.argv, step.trigger, None, done_marker=done)
    if rc != 0:
        raise RuntimeError(f"uninterrupted {step.name} failed ({rc}): {err[-2000:]}")
    work = total - (to_trigger if to_trigger is not None else 0.0)
    return Reference(snapshot=step.snapshot(), work_s=max(work, 0.01), total_s=total)


@dataclass
class KillResult:
    step: str
    delay_s: float
    killed: bool
    """False when the step finished before the kill landed (not a kill point)."""
    reruns: int
    outcome: str
    """identical | already_complete (rerun refused: the manifest was published before the kill) | wrong | failed"""
    detail: str = ""
    state_after_kill: str = ""
    resumed_from: str | None = None
    """synth / prepare / pack: where the rerun resumed from (None: it redid the step from zero)."""


def _state_after_kill(step: Step) -> str:
    if step.name == "train":
        return "checkpoint" if (step.out / "checkpoint.pt").exists() else "no checkpoint"
    if not step.out.exists():
        return "no dir"
    if (step.out / "manifest.json").exists():
        return "manifest" + (" + partial marker" if (step.out / ".diskgnn-partial").exists() else "")
    journal = ", journal" if (step.out / "resume.json").exists() else ""
    return f"partial ({sum(1 for _ in step.out.iterdir())} entries{journal})"


def kill_trial(step: Step, ref: Reference, rng: random.Random, *, max_reruns: int = 3) -> KillResult:
    """Kill ``step`` at a random moment of its work, re-run it, and compare with ``ref``."""
    step.clean()
    delay = rng.uniform(0.0, ref.work_s * 1.05)
    rc, err, _, _, killed = _run_watching(step.argv, step.trigger, delay)
    state = _state_after_kill(step)
    if not killed:
        if rc != 0:
            return KillResult(step.name, delay, False, 0, "failed", f"exit {rc}: {err[-500:]}", state)
    reruns = 0
    outcome = "identical"
    while killed or reruns == 0:
        argv = step.argv
        if step.resume_argv is not None and (step.out / "checkpoint.pt").exists():
            argv = step.resume_argv
        rc, err, _, _, _ = _run_watching(argv, step.trigger, None)
        reruns += 1
        if rc == 0:
            break
        if rc == 2 and "already holds a finished diskgnn output" in err and (step.out / "manifest.json").exists():
            outcome = "already_complete"
            break
        if reruns >= max_reruns:
            return KillResult(step.name, delay, killed, reruns, "failed", f"exit {rc}: {err[-800:]}", state)
        if not killed:
            break
    try:
        got = step.snapshot()
    except Exception as exc:  # an unreadable output is a wrong output
        return KillResult(step.name, delay, killed, reruns, "wrong", f"cannot snapshot: {exc!r}", state)
    d = diff_snapshots(ref.snapshot, got)
    if d:
        return KillResult(step.name, delay, killed, reruns, "wrong", d, state)
    if step.name != "train":
        from diskgnn.tools.cli import main as cli_main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err_buf:
            vrc = cli_main(["verify", str(step.out), "-q"])
        if vrc != 0:
            return KillResult(step.name, delay, killed, reruns, "wrong", f"verify: {err_buf.getvalue()[-500:]}",
                              state)
    resumed = step.resumed_from() if step.name in RESUMING_STEPS and outcome == "identical" else None
    return KillResult(step.name, delay, killed, reruns, outcome, "", state, resumed)


# Steps whose manifest records where a rerun resumed from (a resumed sample run only logs it).
RESUMING_STEPS = ("synth", "prepare", "pack")


def run_kill_trials(steps: list[Step], kills: int, *, seed: int = 0, max_attempts_factor: int = 3,
                    progress=None) -> dict:
    """Run kill trials round-robin over ``steps`` until ``kills`` kills landed; returns counts and failures."""
    rng = random.Random(seed)
    refs = {}
    for step in steps:
        # Two uninterrupted runs: they must agree (determinism), and the faster one times the kill window.
        first, second = reference_run(step), reference_run(step)
        d = diff_snapshots(first.snapshot, second.snapshot)
        if d:
            raise RuntimeError(f"two uninterrupted {step.name} runs differ ({d}); the step is not deterministic")
        refs[step.name] = Reference(first.snapshot, min(first.work_s, second.work_s),
                                    min(first.total_s, second.total_s))
        log.info("reference %s: %.2f s work, %.2f s total", step.name, refs[step.name].work_s,
                 refs[step.name].total_s)
    results: list[KillResult] = []
    landed = 0
    attempts = 0
    while landed < kills and attempts < kills * max_attempts_factor:
        step = steps[attempts % len(steps)]
        attempts += 1
        r = kill_trial(step, refs[step.name], rng)
        results.append(r)
        landed += r.killed
        if progress:
            progress(r)
    for step in steps:
        step.clean()
    by_step: dict[str, dict] = {}
    for r in results:
        s = by_step.setdefault(r.step, {"trials": 0, "kills": 0, "identical": 0, "already_complete": 0,
                                        "wrong": 0, "failed": 0,
                                        **({"reruns_resumed": 0, "reruns_from_zero": 0}
                                           if r.step in RESUMING_STEPS else {})})
        s["trials"] += 1
        s["kills"] += r.killed
        s[r.outcome] += 1
        if r.step in RESUMING_STEPS and r.killed and r.outcome == "identical":
            # a rerun that ended identical either resumed from the killed run's journal or redid the step
            s["reruns_resumed" if r.resumed_from is not None else "reruns_from_zero"] += 1
    bad = [asdict(r) for r in results if r.outcome in ("wrong", "failed")]
    return {"kill_points": landed, "trials": len(results),
            "wrong_outputs": sum(r.outcome == "wrong" for r in results),
            "failed_reruns": sum(r.outcome == "failed" for r in results),
            "by_step": by_step, "reference_work_s": {k: round(v.work_s, 3) for k, v in refs.items()},
            "states_after_kill": _count([r.state_after_kill for r in results if r.killed]),
            "failures": bad[:20]}


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


# --- fuzz: corruptions ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FuzzCase:
    """One corrupted input and the command run on it."""
    id: int
    kind: str
    """dataset | samples | packed | checkpoint | raw"""
    mutation: str
    target: str
    """The file corrupted (relative to the directory)."""
    command: str
    """info | verify | sample | pack | train | resume | prepare"""
    seed: int
    data_file: bool
    """True when a data file (not the manifest) was corrupted: verify must then fail."""


DATA_MUTATIONS = ("truncate", "extend", "flip", "flip1", "zero", "delete", "empty")
MANIFEST_MUTATIONS = ("junk", "truncate_text", "flip_text", "not_object", "wrong_version", "wrong_format",
                      "drop_key", "bad_value", "bad_dtype", "bad_shape", "bad_crc")
RAW_MUTATIONS = ("truncate", "flip", "flip1", "zero", "delete", "empty", "bad_npy_dtype", "bad_npy_shape")
COMMANDS = {"dataset": ("info", "verify", "sample", "pack"), "samples": ("info", "verify", "pack"),
            "packed": ("info", "verify", "train"), "checkpoint": ("resume",), "raw": ("prepare",)}


def _kind_dir(fx: Fixtures, kind: str) -> Path | None:
    return {"dataset": fx.dataset, "samples": fx.samples, "packed": fx.packed, "checkpoint": fx.checkpoint,
            "raw": fx.raw}[kind]


def _usable_commands(fx: Fixtures, kind: str) -> tuple[str, ...]:
    cmds = COMMANDS[kind]
    if fx.checkpoint is None:  # no working trainer
        cmds = tuple(c for c in cmds if c not in ("train", "resume"))
    return cmds


def make_cases(fx: Fixtures, n: int, seed: int = 0) -> list[FuzzCase]:
    """``n`` random corruption cases over the kinds of input that exist."""
    rng = random.Random(seed)
    kinds = [k for k in COMMANDS if _kind_dir(fx, k) is not None and _usable_commands(fx, k)]
    weights = {"dataset": 3, "samples": 3, "packed": 3, "checkpoint": 1, "raw": 2}
    pool = [k for k in kinds for _ in range(weights[k])]
    cases = []
    for i in range(n):
        kind = rng.choice(pool)
        d = _kind_dir(fx, kind)
        files = sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
        if kind == "raw":
            target, mutation, data = rng.choice(files), rng.choice(RAW_MUTATIONS), True
        elif kind == "checkpoint":
            target, mutation, data = "checkpoint.pt", rng.choice(DATA_MUTATIONS), True
        elif rng.random() < 0.45:
            target, mutation, data = "manifest.json", rng.choice(MANIFEST_MUTATIONS), False
        else:
            target = rng.choice([f for f in files if f != "manifest.json"])
            mutation, data = rng.choice(DATA_MUTATIONS), True
        cases.append(FuzzCase(id=i, kind=kind, mutation=mutation, target=target,
                              command=rng.choice(_usable_commands(fx, kind)), seed=rng.randrange(2**31), data_file=data))
    return cases


def _flip(buf: bytearray, rng: random.Random, count: int) -> None:
    for _ in range(count):
        if buf:
            buf[rng.randrange(len(buf))] ^= rng.randrange(1, 256)


def _weird_value(rng: random.Random):
    return rng.choice([-1, 0, 2**63, 2**70, -(2**40), "abc", None, [], {}, 1.5, True, "1", [1, 2, 3]])


def _leaf_paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _leaf_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _leaf_paths(v, prefix + (i,))


def _get_parent(obj, path):
    for k in path[:-1]:
        obj = obj[k]
    return obj


def _mutate_manifest(path: Path, mutation: str, rng: random.Random) -> None:
    text = path.read_text()
    obj = json.loads(text)
    file_entries = [("files", k) for k in (obj.get("files") or {})]
    for pname, part in (obj.get("parts") or {}).items() if isinstance(obj.get("parts"), dict) else []:
        file_entries += [("parts", pname, "files", k) for k in part.get("files", {})]
    if mutation == "junk":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))))
        return
    if mutation == "truncate_text":
        path.write_text(text[:rng.randrange(len(text))])
        return
    if mutation == "flip_text":
        buf = bytearray(text.encode())
        _flip(buf, rng, rng.randrange(1, 4))
        path.write_bytes(bytes(buf))
        return
    if mutation == "not_object":
        obj = rng.choice([[], "manifest", None, 42, [obj]])
    elif mutation == "wrong_version":
        obj["version"] = rng.choice([0, 2, 99, "1", None, 1.0001])
    elif mutation == "wrong_format":
        obj["format"] = rng.choice(["diskgnn.dataset", "diskgnn.samples", "diskgnn.packed", "zarr", None, 7])
    elif mutation == "drop_key":
        paths = list(_leaf_paths(obj))
        p = rng.choice(paths)
        parent = _get_parent(obj, p)
        parent.pop(p[-1]) if isinstance(parent, dict) else parent.pop(p[-1])
    elif mutation == "bad_value":
        paths = [p for p in _leaf_paths(obj) if p[0] not in VOLATILE_KEYS]
        p = rng.choice(paths)
        _get_parent(obj, p)[p[-1]] = _weird_value(rng)
    elif mutation in ("bad_dtype", "bad_shape", "bad_crc") and file_entries:
        entry = obj
        for k in rng.choice(file_entries):
            entry = entry[k]
        if mutation == "bad_dtype":
            entry["dtype"] = rng.choice(["<f8", "<i4", "<i8", "<f4", ">i8", "|u1", "bogus", "<U3", "O", "<c16"])
        elif mutation == "bad_shape":
            shape = list(entry.get("shape", [1]))
            j = rng.randrange(len(shape)) if shape else 0
            choice = rng.choice(["double", "zero", "negative", "plus1", "drop", "add"])
            if not shape or choice == "add":
                shape.append(rng.choice([1, 2, 3]))
            elif choice == "double":
                shape[j] *= 2
            elif choice == "zero":
                shape[j] = 0
            elif choice == "negative":
                shape[j] = -shape[j] - 1
            elif choice == "plus1":
                shape[j] += 1
            else:
                shape.pop(j)
            entry["shape"] = shape
        else:
            entry["crc32"] = (int(entry.get("crc32") or 0) ^ (1 << rng.randrange(32)))
    path.write_text(json.dumps(obj, indent=2))


def _mutate_npy(path: Path, mutation: str, rng: random.Random) -> None:
    arr = np.array(np.load(path))
    if mutation == "bad_npy_dtype":
        new = rng.choice([np.float64, np.int8, np.complex64, np.bool_, np.uint16, np.float16])
        data = np.asarray(arr).view(np.uint8).reshape(-1)
        itemsize = np.dtype(new).itemsize
        usable = data[: data.size - data.size % itemsize].view(new)
        np.save(path, usable)
    else:  # bad_npy_shape
        flat = np.asarray(arr).reshape(-1)
        cut = flat[: max(flat.size - rng.randrange(1, 4), 0)]
        np.save(path, cut if rng.random() < 0.5 else flat.reshape(1, -1) if flat.ndim else flat)


def apply_mutation(directory: Path, case: FuzzCase) -> None:
    """Corrupt ``directory/case.target`` as ``case`` says (the directory is a private copy)."""
    rng = random.Random(case.seed)
    path = directory / case.target
    m = case.mutation
    if case.target == "manifest.json" and m in MANIFEST_MUTATIONS:
        _mutate_manifest(path, m, rng)
        return
    if m in ("bad_npy_dtype", "bad_npy_shape"):
        _mutate_npy(path, m, rng)
        return
    if m == "delete":
        path.unlink()
        return
    if m == "empty":
        path.write_bytes(b"")
        return
    data = bytearray(path.read_bytes())
    if m == "truncate":
        data = data[:rng.randrange(len(data))] if data else data
    elif m == "extend":
        data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4097)))
    elif m == "flip":
        _flip(data, rng, rng.randrange(1, 17))
    elif m == "flip1":
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif m == "zero":
        if data:
            lo = rng.randrange(len(data))
            hi = min(len(data), lo + rng.randrange(1, 8193))
            data[lo:hi] = bytes(hi - lo)
    path.write_bytes(bytes(data))


def _changed(directory: Path, original: Path, target: str) -> bool:
    a, b = directory / target, original / target
    if not a.exists() or not b.exists():
        return a.exists() != b.exists()
    return a.read_bytes() != b.read_bytes()


def case_argv(fx: Fixtures, case: FuzzCase, corrupt: Path, scratch: Path) -> list[str]:
    out = scratch / "out"
    c = case.command
    if c == "info":
        return ["info", str(corrupt), "--json"]
    if c == "verify":
        return ["verify", str(corrupt)]
    if c == "sample":
        return ["sample", str(corrupt), "--out", str(out), "--fanouts", "3,2", "--batch-size", "97",
                "--threads", "1"]
    if c == "pack":
        if case.kind == "dataset":
            return ["pack", str(fx.samples), "--out", str(out), "--dataset", str(corrupt), "--host-cache", "10%"]
        return ["pack", str(corrupt), "--out", str(out), "--host-cache", "10%"]
    if c == "train":
        return ["train", str(corrupt), *fx.train_args, "--epochs", "1"]
    if c == "resume":
        return ["train", str(fx.packed), *fx.train_args, "--epochs", "2", "--checkpoint", str(corrupt), "--resume"]
    if c == "prepare":
        return ["prepare", "--format", "npz", str(corrupt), "--out", str(out), "--memory-budget", "64M"]
    raise ValueError(c)


def run_case(fx: Fixtures, case: FuzzCase, scratch: Path) -> dict:
    """Corrupt a copy, run the command in this process, classify what happened."""
    from diskgnn.errors import DiskGNNError
    from diskgnn.tools.cli import main as cli_main
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    original = _kind_dir(fx, case.kind)
    corrupt = scratch / case.kind
    shutil.copytree(original, corrupt)
    apply_mutation(corrupt, case)
    changed = _changed(corrupt, original, case.target)
    argv = case_argv(fx, case, corrupt, scratch)
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    result = {"id": case.id, "changed": changed}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_main(argv + ["-q"])
        result.update(outcome="ok" if rc == 0 else ("own_error" if rc == 2 else f"exit_{rc}"), rc=rc)
    except DiskGNNError as exc:  # escaped the CLI's handler: still ours, but report it
        result.update(outcome="own_error", rc=2, note=f"raised past main: {type(exc).__name__}")
    except SystemExit as exc:
        result.update(outcome="own_error" if exc.code == 2 else f"exit_{exc.code}", rc=exc.code)
    except BaseException as exc:  # noqa: BLE001 -- classifying foreign errors is the point
        tb = traceback.extract_tb(exc.__traceback__)
        result.update(outcome="foreign", rc=None, error=f"{type(exc).__name__}: {str(exc)[:300]}",
                      where=[f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in tb[-4:]])
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result["message"] = err.getvalue().strip().splitlines()[-1][:300] if err.getvalue().strip() else ""
    # verify must reject any corrupted data file; a manifest edit may be harmless (e.g. whitespace)
    if case.command == "verify" and case.data_file and changed and result["outcome"] == "ok":
        result["outcome"] = "verify_missed"
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def _fixtures_to_json(fx: Fixtures) -> dict:
    return {k: (str(v) if isinstance(v, Path) else (list(v) if isinstance(v, tuple) else v))
            for k, v in asdict(fx).items()}


def _fixtures_from_json(obj: dict) -> Fixtures:
    kw = {}
    for k, v in obj.items():
        if k in ("sample_args", "train_args"):
            kw[k] = tuple(v)
        else:
            kw[k] = Path(v) if v is not None else None
    return Fixtures(**kw)


def fuzz_worker(spec_path: Path, results_path: Path, start: int) -> None:
    """Run the cases of ``spec_path`` from index ``start``, appending one JSON line per event."""
    logging.disable(logging.CRITICAL)
    import warnings
    warnings.simplefilter("ignore")
    spec = json.loads(Path(spec_path).read_text())
    fx = _fixtures_from_json(spec["fixtures"])
    cases = [FuzzCase(**c) for c in spec["cases"]]
    scratch = Path(spec["scratch"])
    with open(results_path, "a") as log_file:
        for case in cases[start:]:
            log_file.write(json.dumps({"event": "start", "id": case.id}) + "\n")
            log_file.flush()
            result = run_case(fx, case, scratch)
            log_file.write(json.dumps({"event": "done", **result}) + "\n")
            log_file.flush()


def run_fuzz(fx: Fixtures, n: int, work: Path, *, seed: int = 0, case_timeout: float = 60.0,
             progress=None) -> dict:
    """Run ``n`` corrupted-input cases in a restartable worker process; returns counts and failures."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    cases = make_cases(fx, n, seed)
    spec_path, results_path = work / "fuzz_cases.json", work / "fuzz_results.jsonl"
    spec_path.write_text(json.dumps({"fixtures": _fixtures_to_json(fx), "cases": [asdict(c) for c in cases],
                                     "scratch": str(work / "scratch")}))
    results_path.write_text("")
    done: dict[int, dict] = {}
    start = 0
    read_pos = 0
    while start < len(cases):
        proc = subprocess.Popen([sys.executable, "-m", "diskgnn.bench.reliability", "--fuzz-worker",
                                 str(spec_path), str(results_path), str(start)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_quiet_env())
        current, started_at = None, time.perf_counter()
        while True:
            with open(results_path) as f:
                f.seek(read_pos)
                chunk = f.read()
            lines = chunk.split("\n")
            read_pos += len(chunk) - len(lines[-1])
            for line in lines[:-1]:
                ev = json.loads(line)
                if ev["event"] == "start":
                    current, started_at = ev["id"], time.perf_counter()
                else:
                    done[ev["id"]] = ev
                    current = None
                    if progress:
                        progress(ev)
            if proc.poll() is not None and not lines[-1]:
                # drain once more after exit, then decide
                with open(results_path) as f:
                    f.seek(read_pos)
                    if f.read():
                        continue
                break
            if current is not None and time.perf_counter() - started_at > case_timeout:
                proc.kill()
                proc.wait()
                done[current] = {"event": "done", "id": current, "outcome": "hang",
                                 "seconds": round(time.perf_counter() - started_at, 1)}
                break
            time.sleep(0.01)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        if current is not None and current not in done:
            done[current] = {"event": "done", "id": current, "outcome": "crash", "rc": proc.returncode,
                             "error": err[-1500:]}
        elif max(done, default=-1) + 1 == start:
            raise RuntimeError(f"the fuzz worker (exit {proc.returncode}) ran no case: {err[-2000:]}")
        start = max(done, default=-1) + 1
    outcomes = _count(done[c.id]["outcome"] for c in cases)
    bad = [{**asdict(c), **done[c.id]} for c in cases
           if done[c.id]["outcome"] not in ("ok", "own_error")]
    by_command: dict[str, dict] = {}
    for c in cases:
        s = by_command.setdefault(f"{c.kind}/{c.command}", {})
        o = done[c.id]["outcome"]
        s[o] = s.get(o, 0) + 1
    seconds = [done[c.id].get("seconds", 0) for c in cases]
    return {"cases": len(cases), "outcomes": outcomes,
            "foreign_errors": outcomes.get("foreign", 0), "crashes": outcomes.get("crash", 0),
            "hangs": outcomes.get("hang", 0), "verify_missed": outcomes.get("verify_missed", 0),
            "other_exit": sum(v for k, v in outcomes.items() if k.startswith("exit_")),
            "unchanged_inputs": sum(not done[c.id].get("changed", True) for c in cases),
            "max_case_seconds": max(seconds, default=0), "by_command": by_command, "failures": bad[:40]}


# --- bounded memory at scale -----------------------------------------------------------------------

def write_raw_input_streaming(ds, out: Path, chunk_rows: int = 1 << 20) -> Path:
    """Like :func:`write_raw_input` but for datasets larger than memory: .npy files written in chunks."""
    from numpy.lib.format import open_memmap
    out.mkdir(parents=True, exist_ok=True)
    n, e = ds.num_nodes, ds.num_edges
    edges = open_memmap(out / "edge_index.npy", mode="w+", dtype=np.int64, shape=(2, e))
    indptr = np.asarray(ds.indptr)
    for lo in range(0, n, chunk_rows):
        hi = min(n, lo + chunk_rows)
        a, b = int(indptr[lo]), int(indptr[hi])
        edges[0, a:b] = ds.indices[a:b]
        edges[1, a:b] = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(indptr[lo:hi + 1]))
    edges.flush()
    del edges
    feats = open_memmap(out / "feat.npy", mode="w+", dtype=ds.features.dtype, shape=ds.features.shape)
    for lo in range(0, n, chunk_rows):
        feats[lo:lo + chunk_rows] = ds.features[lo:lo + chunk_rows]
    feats.flush()
    del feats
    np.save(out / "label.npy", np.asarray(ds.labels))
    for s in ("train", "val", "test"):
        np.save(out / f"{s}_idx.npy", np.asarray(ds.split(s)))
    return out


def rss_wrapped(*cli_args: str) -> list[str]:
    """A command that runs ``diskgnn CLI_ARGS`` and prints its own peak RSS as a JSON line on stderr."""
    return [sys.executable, "-m", "diskgnn.bench.reliability", "--rss-wrap", *map(str, cli_args)]


def _rss_parts() -> dict:
    """This process's resident bytes by kind (anonymous = its own allocations; file = mapped file pages)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _rss_wrap(argv: list[str]) -> int:
    import resource
    import threading
    from diskgnn.tools.cli import main as cli_main
    peaks: dict = {}
    stop = threading.Event()

    def sample() -> None:  # ru_maxrss has no breakdown: sample the kinds every 20 ms
        while not stop.is_set():
            for k, v in _rss_parts().items():
                peaks[k] = max(peaks.get(k, 0), v)
            stop.wait(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        rc = cli_main(argv)
    finally:
        stop.set()
        watcher.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss_bytes": peak, "peak_anon_bytes": peaks.get("RssAnon"),
                      "peak_file_bytes": peaks.get("RssFile"), "rc": rc}), file=sys.stderr)
    return rc


def measure_memory(dataset: Path, work: Path, *, cap: int = 2 << 30, samples: Path | None = None,
                   packed: Path | None = None, budgets=(None, "1G"), epochs: int = 1,
                   steps=("prepare", "sample", "pack", "train"), timeout: float = 3600,
                   pack_chunk: str | None = None) -> dict:
    """Peak RSS of each step on ``dataset`` under a ``cap``-byte memory cgroup, per memory budget.

    ``budgets``: None runs without ``--memory-budget`` (the default from the memory the cgroup
    leaves), a size passes it. ``pack_chunk`` forces pack's ``--chunk-size``; by default pack picks
    it from the budget (fewest passes over features.bin). Existing ``samples``/``packed`` directories are reused as inputs of
    the later steps when given; outputs go to ``work`` and are deleted after each step.
    """
    from diskgnn.cgroup import run_capped
    from diskgnn.dataset import Dataset
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    ds = Dataset.open(dataset)
    out: dict = {"dataset": str(dataset), "nodes": ds.num_nodes, "edges": ds.num_edges,
                 "feature_bytes": ds.feature_bytes, "cap_bytes": cap, "runs": []}
    raw = None
    if "prepare" in steps:
        t0 = time.perf_counter()
        raw = write_raw_input_streaming(ds, work / "raw")
        out["raw_input_seconds"] = round(time.perf_counter() - t0, 1)
    if samples is None and ("pack" in steps or "train" in steps):
        samples = work / "samples_input"
        r = run_capped(cli_argv("sample", dataset, "--out", samples, "--fanouts", "10,15", "--batch-size", "1024"),
                       None, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"sampling the input failed: {r.stderr[-2000:]}")
    if packed is None and "train" in steps:
        packed = work / "packed_input"
        r = run_capped(cli_argv("pack", samples, "--out", packed, "--host-cache", "10%"), None, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"packing the input failed: {r.stderr[-2000:]}")
    for step in steps:
        for budget in budgets:
            target = work / f"{step}_out"
            flag = [] if budget is None else ["--memory-budget", str(budget)]
            if step == "prepare":
                args = ["prepare", "--format", "npz", raw, "--out", target, *flag]
            elif step == "sample":
                args = ["sample", dataset, "--out", target, "--fanouts", "10,15", "--batch-size", "1024", *flag]
            elif step == "pack":
                chunk = ["--chunk-size", pack_chunk] if pack_chunk else []
                args = ["pack", samples, "--out", target, "--host-cache", "10%", *chunk, *flag]
            else:
                args = ["train", packed, "--model", "sage", "--epochs", str(epochs), "--device", "cpu",
                        "--checkpoint", target, *flag]
            r = run_capped(rss_wrapped(*args, "-q"), cap, timeout=timeout)
            rss = anon = file_pages = None
            for line in r.stderr.splitlines():
                if line.startswith("{") and "peak_rss_bytes" in line:
                    rec = json.loads(line)
                    rss, anon, file_pages = rec["peak_rss_bytes"], rec.get("peak_anon_bytes"), rec.get("peak_file_bytes")
            limit = parse_budget(budget, cap)
            row = {"step": step, "memory_budget": budget or "default", "budget_bytes": limit,
                   "returncode": r.returncode, "oom_killed": r.oom_killed, "cgroup": r.cgroup,
                   "peak_rss_bytes": rss, "peak_anon_rss_bytes": anon, "peak_file_rss_bytes": file_pages,
                   "cgroup_peak_bytes": r.peak_bytes, "wall_s": round(r.wall_s, 1),
                   "within_budget_plus_10pct": rss is not None and r.returncode == 0 and rss <= 1.1 * limit,
                   "stderr_tail": r.stderr[-600:] if r.returncode != 0 else ""}
            log.info("memory %s", {k: v for k, v in row.items() if k != "stderr_tail"})
            out["runs"].append(row)
            shutil.rmtree(target, ignore_errors=True)
    return out


def parse_budget(budget, cap: int) -> int:
    """The bytes a run may use: the explicit budget, else the cgroup cap (what the default resolves to)."""
    from diskgnn.sizes import parse_size
    return cap if budget is None else min(parse_size(budget), cap)


# --- command line -----------------------------------------------------------------------------------

def _emit(result: dict, out) -> None:
    """Print the result as JSON and, with ``--out``, also write it there."""
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.reliability", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="bench/work/reliability")
    p.add_argument("--kills", type=int, default=50, help="kill points to land (default 50)")
    p.add_argument("--fuzz", type=int, default=1000, help="corrupted inputs to try (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case-timeout", type=float, default=60.0, help="seconds before a fuzz case counts as a hang")
    p.add_argument("--big", action="store_true", help="larger kill-trial inputs (longer steps)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    p.add_argument("--memory", default=None, metavar="DATASET",
                   help="instead: measure peak RSS of prepare/sample/pack/train on DATASET under --cap")
    p.add_argument("--cap", default="2G", help="memory cgroup limit for --memory (default 2G)")
    p.add_argument("--samples", default=None, help="--memory: an existing samples dir of DATASET to pack from")
    p.add_argument("--packed", default=None, help="--memory: an existing packed dir to train from")
    p.add_argument("--steps", default="prepare,sample,pack,train", help="--memory: steps to measure")
    p.add_argument("--fuzz-worker", nargs=3, metavar=("SPEC", "RESULTS", "START"), help=argparse.SUPPRESS)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--rss-wrap"]:
        return _rss_wrap(list(argv[1:]))
    args = p.parse_args(argv)
    if args.memory:
        from diskgnn.sizes import parse_size
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        work = Path(args.workdir)
        try:
            result = measure_memory(Path(args.memory), work, cap=parse_size(args.cap),
                                    samples=Path(args.samples) if args.samples else None,
                                    packed=Path(args.packed) if args.packed else None,
                                    steps=tuple(args.steps.split(",")))
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        _emit(result, args.out)
        return 0 if all(r["within_budget_plus_10pct"] for r in result["runs"]) else 1
    if args.fuzz_worker:
        fuzz_worker(Path(args.fuzz_worker[0]), Path(args.fuzz_worker[1]), int(args.fuzz_worker[2]))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        fx = build_fixtures(work / "fixtures")
        result: dict = {"packer": fx.packed is not None}
        if args.kills:
            def show_kill(r):
                log.info("kill %s after %.3f s: killed=%s state=%s -> %s%s %s", r.step, r.delay_s, r.killed,
                         r.state_after_kill, r.outcome, f" (resumed from {r.resumed_from})" if r.resumed_from else "",
                         r.detail[:200])
            result["kill_resume"] = run_kill_trials(make_steps(fx, work / "kill", big=args.big), args.kills,
                                                    seed=args.seed, progress=show_kill)
        if args.fuzz:
            def show_case(ev):
                if ev["outcome"] not in ("ok", "own_error"):
                    log.warning("fuzz case %s: %s %s", ev["id"], ev["outcome"], ev.get("error", "")[:300])
            result["fuzz"] = run_fuzz(fx, args.fuzz, work / "fuzz", seed=args.seed,
                                      case_timeout=args.case_timeout, progress=show_case)
        result["seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    _emit(result, args.out)
    ok = True
    if "kill_resume" in result:
        ok &= result["kill_resume"]["wrong_outputs"] == 0 and result["kill_resume"]["failed_reruns"] == 0
    if "fuzz" in result:
        f = result["fuzz"]
        ok &= f["foreign_errors"] == f["crashes"] == f["hangs"] == f["verify_missed"] == f["other_exit"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
