"""Data-parallel training: batch shares, rank environment, exactness against a single-process reference,
resume, shard sets, and failure handling (2 gloo processes on loopback)."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diskgnn.distributed import (BatchShare, RankInfo, ShardLayout, global_num_batches, launch_local,
                                 rank_info_from_env, rank_memory_budget, rank_threads, resolve_rank_dir,
                                 shard_layout, timeout_s)
from diskgnn.errors import ConfigError, DistributedError, InputNotFoundError
from diskgnn.models import TorchBlock
from diskgnn.train import CHECKPOINT_NAME, DatasetFeatures, TrainConfig, Trainer, load_checkpoint

SAMPLE = dict(fanouts=(4, 3), batch_size=59, epochs=2, seed=1)   # 400 train seeds -> 7 batches: rank 1 pads
TRAIN = dict(model="sage", hidden=8, lr=1e-2, seed=5, device="cpu", threads=1)


@pytest.fixture(scope="module")
def samples(tiny_dataset, tmp_path_factory):
    from diskgnn.sampling import SampleConfig, presample
    return presample(tiny_dataset.path, tmp_path_factory.mktemp("dist") / "samples", SampleConfig(**SAMPLE))


@pytest.fixture(scope="module")
def shard_set(tiny_dataset, tmp_path_factory):
    """``diskgnn sample --num-shards 2 --shard r`` into ``<set>/shard-r``."""
    from diskgnn.sampling import SampleConfig, presample
    root = tmp_path_factory.mktemp("dist") / "samples-sharded"
    for r in range(2):
        presample(tiny_dataset.path, root / f"shard-{r}", SampleConfig(**SAMPLE), num_shards=2, shard=r)
    return root


@pytest.fixture(scope="module")
def two_rank_run(samples, tmp_path_factory):
    """One epoch on 2 ranks (shared samples directory, memmap features), checkpoint and metrics by rank 0."""
    out = tmp_path_factory.mktemp("dist-run")
    cfg = TrainConfig(nproc=2, epochs=1, checkpoint=str(out / "ck"), metrics=str(out / "m.jsonl"), **TRAIN)
    report = launch_local(samples.path, cfg, features="memmap")
    return report, out


# --- the single-process reference ----------------------------------------------------------------------

def _batch(samples, ds, part, i):
    mb = samples.batch(part, i)
    x = torch.from_numpy(np.asarray(ds.features[mb.input_nodes], dtype=np.float32))
    labels = torch.from_numpy(np.asarray(ds.labels[mb.seeds], dtype=np.int64))
    return [TorchBlock.from_block(b) for b in mb.blocks], x, labels


def reference(samples, ds, epochs: int, world: int = 2) -> Trainer:
    """Single process, the same global order, each step the mean of the ranks' batch losses."""
    tr = Trainer(samples, ds, DatasetFeatures(samples, ds), TrainConfig(epochs=epochs, **TRAIN))
    for epoch in range(epochs):
        part, perm = tr.epoch_order(epoch)
        per_rank = [[int(g) for g in perm if g % world == r] for r in range(world)]
        steps = math.ceil(len(perm) / world)
        per_rank = [(mine * steps)[:steps] for mine in per_rank]  # pad by repeating the rank's own batches
        tr.model.train()
        for k in range(steps):
            tr.optimizer.zero_grad(set_to_none=True)
            losses = []
            for r in range(world):
                blocks, x, labels = _batch(samples, ds, part, per_rank[r][k])
                losses.append(F.cross_entropy(tr.model(blocks, x), labels))
            (sum(losses) / world).backward()
            tr.optimizer.step()
    return tr


def assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


# --- shares and environment (no processes) ---------------------------------------------------------------

def test_batch_shares_are_equal_cover_every_batch_and_pad_deterministically():
    perm = np.random.default_rng(0).permutation(7)
    shares = [BatchShare(r, 3, ShardLayout(1, 0, False)) for r in range(3)]
    orders = [s.train_order(perm) for s in shares]
    assert [len(o) for o in orders] == [3, 3, 3]
    assert sorted(set(np.concatenate(orders).tolist())) == list(range(7))
    for r, o in enumerate(orders):
        mine = [int(g) for g in perm if g % 3 == r]
        assert o.tolist()[:len(mine)] == mine          # the global order, filtered
        assert o.tolist()[len(mine):] == mine[:3 - len(mine)]  # padded with its own first batches
    assert np.array_equal(shares[1].train_order(perm), orders[1])


def test_sharded_layout_maps_global_batches_to_local_numbers():
    share = BatchShare(1, 2, ShardLayout(2, 1, True))
    assert share.train_order(np.array([4, 3, 0, 5, 1, 2])).tolist() == [1, 2, 0]  # globals 3, 5, 1
    assert share.eval_batches(5) == [0, 1]                                       # globals 1, 3
    global_numbered = BatchShare(1, 2, ShardLayout(2, 1, False))                 # a packed shard
    assert global_numbered.eval_batches(5) == [1, 3]
    with pytest.raises(ConfigError, match="one shard per rank"):
        BatchShare(0, 2, ShardLayout(2, 1, True))
    with pytest.raises(ConfigError, match="run with 3 processes"):
        BatchShare(0, 2, ShardLayout(3, 0, True))
    with pytest.raises(ConfigError, match="fewer than the 4 processes"):
        BatchShare(3, 4, ShardLayout(1, 0, False)).train_order(np.arange(3))


def test_rank_environment_budget_threads_and_timeout(monkeypatch):
    assert rank_info_from_env({}) is None
    info = rank_info_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert info == RankInfo(rank=3, world_size=4, local_rank=1, local_world_size=2) and not info.is_main
    with pytest.raises(ConfigError, match="inconsistent"):
        rank_info_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="not numeric"):
        rank_info_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    assert rank_memory_budget("3G", 3) == 1 << 30
    assert rank_threads(None, 64) == 1 and rank_threads(5, 2) == 5
    monkeypatch.setenv("DISKGNN_DIST_TIMEOUT_S", "7.5")
    assert timeout_s() == 7.5
    monkeypatch.setenv("DISKGNN_DIST_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError, match="DISKGNN_DIST_TIMEOUT_S"):
        timeout_s()


def test_shard_set_resolution(samples, shard_set, tmp_path):
    from diskgnn.sampling import Samples
    assert resolve_rank_dir(samples.path, 1) == samples.path
    assert resolve_rank_dir(shard_set, 1) == shard_set / "shard-1"
    s1 = Samples.open(shard_set / "shard-1")
    assert shard_layout(s1) == ShardLayout(2, 1, True) and shard_layout(samples) == ShardLayout(1, 0, False)
    for part in samples.parts:
        assert global_num_batches(s1, part) == samples.num_batches(part)
    (tmp_path / "shard-0").mkdir()
    with pytest.raises(InputNotFoundError, match="shard for rank 1"):
        resolve_rank_dir(tmp_path, 1)


# --- two gloo processes -------------------------------------------------------------------------------

def test_two_ranks_equal_single_process_gradient_averaging(two_rank_run, samples, tiny_dataset):
    report, out = two_rank_run
    state = load_checkpoint(out / "ck")
    ref = reference(samples, tiny_dataset, epochs=1)
    assert_same_weights(state["model"], ref.model.state_dict())
    assert state["world_size"] == 2 and len(state["torch_rng_ranks"]) == 2
    # metrics by rank 0 only: one epoch line and the final line, with every rank's stage times
    lines = [json.loads(x) for x in (out / "m.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["epoch", "final"]
    epoch = lines[0]
    assert epoch["world_size"] == 2 and epoch["steps"] == 4 and epoch["batches"] == 8
    assert len(epoch["rank_stages"]) == 2 and all("compute" in s and "read" in s for s in epoch["rank_stages"])
    assert len(lines[1]["rank_stages_mean"]) == 2 and lines[1]["nproc"] == 2
    # evaluation splits val/test over the ranks and sums the counts: same accuracy as one process
    ev = ref.evaluate()
    assert epoch["val_seeds"] == ev["val_seeds"] == 127
    assert abs(epoch["val_acc"] - ev["val_acc"]) <= 1 / 127 and abs(epoch["test_acc"] - ev["test_acc"]) <= 1 / 103
    assert report["best_val_acc"] == epoch["val_acc"]


def test_shard_set_trains_like_the_shared_directory(two_rank_run, shard_set, tmp_path):
    """The README's workflow: sample shard r of 2, pack each shard, train on the set of packed shards."""
    from diskgnn.packing import PackConfig, pack
    _, out = two_rank_run
    for r in range(2):
        pack(shard_set / f"shard-{r}", tmp_path / "packed" / f"shard-{r}", PackConfig(host_cache="20%"))
    cfg = TrainConfig(nproc=2, epochs=1, checkpoint=str(tmp_path / "ck"), **TRAIN)
    launch_local(tmp_path / "packed", cfg)
    assert_same_weights(load_checkpoint(tmp_path / "ck")["model"], load_checkpoint(out / "ck")["model"])


def test_sharded_packs_of_shared_samples_train_like_the_shared_directory(two_rank_run, samples, tmp_path):
    """``diskgnn pack --num-shards 2 --shard r`` of one samples directory: rank r reads only its packed shard."""
    from diskgnn.packing import PackConfig, pack
    _, out = two_rank_run
    for r in range(2):
        pack(samples.path, tmp_path / "packed" / f"shard-{r}", PackConfig(host_cache="5%"), num_shards=2, shard=r)
    cfg = TrainConfig(nproc=2, epochs=1, checkpoint=str(tmp_path / "ck"), **TRAIN)
    launch_local(tmp_path / "packed", cfg)
    assert_same_weights(load_checkpoint(tmp_path / "ck")["model"], load_checkpoint(out / "ck")["model"])


def test_a_rank_that_fails_stops_the_job_with_its_own_message(shard_set, tmp_path):
    import shutil
    partial = tmp_path / "set"
    shutil.copytree(shard_set / "shard-0", partial / "shard-0")  # rank 1's shard is missing
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank 1 of 2 .*exited with code 2: .*shard for rank 1"):
        launch_local(partial, TrainConfig(nproc=2, epochs=1, **TRAIN), features="memmap", grace_s=1.0)
    assert time.monotonic() - t0 < 60


_LAUNCH = textwrap.dedent("""\
    import logging, sys
    from diskgnn.distributed import launch_local
    from diskgnn.errors import DiskGNNError
    from diskgnn.train import TrainConfig
    if __name__ == "__main__":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        cfg = TrainConfig(nproc=2, epochs=100000, eval_every=100000, hidden=8, device="cpu", threads=1,
                          metrics=sys.argv[2])
        try:
            launch_local(sys.argv[1], cfg, features="memmap", grace_s=1.0)
        except DiskGNNError as exc:
            print("error:", exc, file=sys.stderr)
            sys.exit(2)
    """)


def test_killing_a_rank_makes_the_launcher_fail_fast_and_clearly(samples, tmp_path):
    script = tmp_path / "launch.py"
    script.write_text(_LAUNCH)
    metrics = tmp_path / "m.jsonl"
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(script), str(samples.path), str(metrics)],
                                stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 60
            while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # training is under way
                assert proc.poll() is None, err.read_text()
                assert time.monotonic() < deadline, "training did not start"
                time.sleep(0.1)
            pid = int(re.search(r"started rank 1 of 2 \(pid (\d+)\)", err.read_text()).group(1))
            os.kill(pid, signal.SIGKILL)
            t0 = time.monotonic()
            rc = proc.wait(timeout=30)
            waited = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = err.read_text()
    assert rc == 2, text
    assert waited < 30
    assert re.search(r"error: data-parallel training failed: rank 1 of 2 \(pid \d+\) was killed by SIGKILL", text)


def test_cli_resumes_on_two_ranks_from_a_packed_directory(two_rank_run, samples, tiny_dataset, tmp_path):
    """``diskgnn train PACKED --nproc 2 --resume`` continues the 1-epoch run exactly (packed fp32 rows are the
    dataset's rows, so the memmap run's checkpoint fits)."""
    import shutil
    from diskgnn.packing import PackConfig, pack
    from diskgnn.tools.cli import main
    _, out = two_rank_run
    shutil.copytree(out / "ck", tmp_path / "ck")
    packed = pack(samples.path, tmp_path / "packed", PackConfig(host_cache="20%"))
    rc = main(["train", str(packed.path), "--nproc", "2", "--epochs", "2", "--hidden", "8", "--lr", "1e-2",
               "--train-seed", "5", "--device", "cpu", "--threads", "1", "--checkpoint", str(tmp_path / "ck"),
               "--resume", "--metrics", str(tmp_path / "m.jsonl"), "--memory-budget", "1G", "-q"])
    assert rc == 0
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    # the file reads like an uninterrupted run's: epoch 1 is the checkpoint's record (timings included, so it
    # was copied, not trained again), then the missing epoch
    assert [x.get("epoch") for x in lines if x["event"] == "epoch"] == [1, 2]
    assert lines[0] == json.loads(load_checkpoint(out / "ck")["history"])[0]
    assert lines[-1]["epochs"] == 2 and lines[-1]["nproc"] == 2
    ref = reference(samples, tiny_dataset, epochs=2)
    assert_same_weights(load_checkpoint(tmp_path / "ck")["model"], ref.model.state_dict())


def test_tools_train_parses_the_flags_of_diskgnn_train():
    from diskgnn.tools.cli import build_parser
    from diskgnn.tools.train import build_parser as rank_parser
    argv = ["P", "--model", "gcn", "--epochs", "3", "--nproc", "2", "--memory-budget", "2G", "--resume",
            "--checkpoint", "ck", "--threads", "1", "-q"]
    ours = vars(rank_parser().parse_args(argv))
    theirs = vars(build_parser().parse_args(["train", *argv]))
    assert ours == theirs


# --- the launcher's bookkeeping (fake processes, no spawning) ----------------------------------------------

class _FakeProc:
    def __init__(self, pid, exitcode=None):
        self.pid, self.exitcode = pid, exitcode

    def terminate(self):
        self.exitcode = -signal.SIGTERM

    def kill(self):
        self.exitcode = -signal.SIGKILL

    def join(self, timeout=None):
        pass


class _FakeQueue:
    def __init__(self, items):
        self.items = list(items)

    def get_nowait(self):
        import queue
        if not self.items:
            raise queue.Empty
        return self.items.pop(0)


def test_monitor_names_the_root_cause_not_the_ranks_that_noticed_it():
    from diskgnn.distributed import _failure_message, _monitor
    # rank 1 was SIGKILLed (no message); rank 0 hangs on and is stopped after the grace period
    procs = [_FakeProc(10), _FakeProc(11, -signal.SIGKILL)]
    report, errors, failed, released = _monitor(procs, _FakeQueue([]), grace_s=0.1, stuck_s=60)
    assert report is None and failed == [1, 0] and not released
    msg = _failure_message(procs, [p.exitcode for p in procs], errors, failed, TrainConfig(nproc=2))
    assert msg.startswith("data-parallel training failed: rank 1 of 2 (pid 11) was killed by SIGKILL")
    assert "rank 0 was killed by SIGTERM" in msg and "--checkpoint" in msg
    # rank 0 noticed first (a peer error), rank 1 had the real problem
    procs = [_FakeProc(10, 2), _FakeProc(11, 2)]
    q = _FakeQueue([("error", 0, "peer", "rank 0 lost contact"), ("error", 1, "user", "bad shard")])
    _, errors, failed, _ = _monitor(procs, q, grace_s=0.1, stuck_s=60)
    msg = _failure_message(procs, [2, 2], errors, failed, TrainConfig(nproc=2, checkpoint="ck"))
    assert "rank 1 of 2 (pid 11) exited with code 2: bad shard" in msg and "--resume" not in msg
    q = _FakeQueue([("error", 1, "crash", "MemoryError")])
    procs = [_FakeProc(10, 2), _FakeProc(11, 1)]
    _, errors, failed, _ = _monitor(procs, q, grace_s=0.1, stuck_s=60)
    msg = _failure_message(procs, [2, 1], errors, failed, TrainConfig(nproc=2, checkpoint="ck"))
    assert "rank 1 of 2 (pid 11) exited with code 1: MemoryError" in msg and "--resume" in msg


def test_monitor_releases_ranks_stuck_after_the_job_finished():
    from diskgnn.distributed import _monitor
    procs = [_FakeProc(10, 0), _FakeProc(11)]
    report, _, failed, released = _monitor(procs, _FakeQueue([("report", 0, {"epochs": 1})]), grace_s=0.1,
                                           stuck_s=60, linger_s=0.2)
    assert report == {"epochs": 1} and failed == [] and released == {1}
