"""Crash safety, disk-full behaviour and the int64 paths.

* kill and resume: each step runs in a subprocess, is SIGKILLed at a random
  moment of its work and run again; the output must equal an uninterrupted
  run's byte for byte (training: the checkpoint's weights and losses);
* disk full: each step writes into a 4 MiB tmpfs and must fail with
  DiskFullError naming the directory and the space needed, leaving no manifest;
* int64: ids and offsets forced to int64 give the same samples as int32, and
  sampling works on a (sparse) graph with more than 2**31 edges.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from diskgnn.bench.reliability import (build_fixtures, kill_trial, make_steps, reference_run, snapshot_dir,
                                       write_raw_input)

from conftest import run_cli


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return build_fixtures(tmp_path_factory.mktemp("rel") / "fx", nodes=1733, dim=12)


# --- kill and resume ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["synth", "prepare", "sample", "pack", "train"])
def test_kill_and_rerun_gives_the_uninterrupted_output(fx, tmp_path, name):
    steps = {s.name: s for s in make_steps(fx, tmp_path)}
    if name not in steps:
        pytest.skip(f"{name} is not available in this checkout")
    step = steps[name]
    ref = reference_run(step)
    assert ref.snapshot["files"] if name != "train" else ref.snapshot["epoch"] == 3
    rng = random.Random(f"kill-{name}")
    results = []
    wanted = 1 if name == "train" else 2  # ~9 kill points in all; train is the slowest to start
    while sum(r.killed for r in results) < wanted and len(results) < 4:  # a trial can end before its kill lands
        results.append(kill_trial(step, ref, rng))
    for r in results:
        assert r.outcome in ("identical", "already_complete"), (r.state_after_kill, r.detail)
    assert any(r.killed for r in results)  # at least one kill landed while the step was working


def test_killed_sampling_resumes_after_its_finished_parts(fx, tmp_path):
    from diskgnn.bench.reliability import _run_watching
    step = {s.name: s for s in make_steps(fx, tmp_path)}["sample"]
    ref = reference_run(step)
    step.clean()
    journal = step.out / "resume.json"
    _, _, _, _, killed = _run_watching(step.argv, journal, 0.0)  # killed once the first part is finished
    assert killed and journal.exists() and not (step.out / "manifest.json").exists()
    done = json.loads(journal.read_text())["parts"]
    kept = {f["path"]: (step.out / f["path"]).stat().st_mtime_ns for rec in done.values() for f in rec["files"].values()}
    assert kept
    rc, err = run_cli(*step.argv[3:-1])  # the same command, in this process
    assert rc == 0, err
    assert {p: (step.out / p).stat().st_mtime_ns for p in kept} == kept  # finished parts were not redone
    assert snapshot_dir(step.out) == ref.snapshot and not journal.exists()


def test_resume_journal_of_another_config_is_ignored(fx, tmp_path):
    from diskgnn.bench.reliability import _run_watching
    step = {s.name: s for s in make_steps(fx, tmp_path)}["sample"]
    step.clean()
    _run_watching(step.argv, step.out / "resume.json", 0.0)
    argv = list(step.argv[3:-1])
    argv[argv.index("--seed") + 1] = "10"  # another seed: the finished parts are not this run's
    rc, err = run_cli(*argv)
    assert rc == 0, err
    from diskgnn.sampling import SampleConfig, presample
    fresh = presample(fx.dataset, tmp_path / "fresh", SampleConfig(fanouts=(5, 4), batch_size=37, epochs=3, seed=10))
    assert snapshot_dir(step.out)["files"] == snapshot_dir(fresh.path)["files"]


def test_killed_step_leaves_nothing_that_looks_complete(fx, tmp_path):
    steps = {s.name: s for s in make_steps(fx, tmp_path)}
    step = steps["sample"]
    step.clean()
    from diskgnn.bench.reliability import _run_watching
    _, _, _, _, killed = _run_watching(step.argv, step.trigger, 0.0)
    assert killed and not (step.out / "manifest.json").exists()
    for cmd in ("info", "verify"):
        rc, err = run_cli(cmd, step.out)
        assert rc == 2 and "manifest.json is missing" in err
    rc, err = run_cli("pack", step.out, "--out", tmp_path / "p")
    assert rc == 2 and "manifest.json" in err


def test_snapshot_notices_a_changed_byte(fx, tmp_path):
    import shutil
    d = tmp_path / "ds"
    shutil.copytree(fx.dataset, d)
    before = snapshot_dir(d)
    with open(d / "labels.bin", "r+b") as f:
        f.seek(3)
        f.write(b"\x07")
    assert snapshot_dir(d) != before  # the resume comparison looks at the bytes, not at the manifest


# --- disk full ----------------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs (needs root); always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small_fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path, leave: int) -> None:
    """Leave only ``leave`` bytes free on the filesystem of ``mnt``."""
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    with open(mnt / "ballast", "wb") as f:
        f.write(bytes(max(free - leave, 0)))


def assert_disk_full(rc: int, err: str, out: Path) -> None:
    assert rc == 2, err
    assert str(out) in err, err  # names the directory
    assert ("is full" in err or "not enough space" in err) and "needs about" in err, err  # and the space needed
    assert not (out / "manifest.json").exists()
    assert not (out / "checkpoint.pt").exists()


def test_disk_full_synth(small_fs):
    out = small_fs / "ds"
    rc, err = run_cli("synth", "--scale", "tiny", "--nodes", "40000", "--dim", "32", "--out", out)
    assert_disk_full(rc, err, out)
    assert "MiB" in err


def test_disk_full_prepare(small_fs, tmp_path):
    from diskgnn.synth import SynthConfig, synthesize
    ds = synthesize(SynthConfig(nodes=30011, avg_degree=3, dim=40, classes=3, seed=2), tmp_path / "big")
    raw = write_raw_input(ds, tmp_path / "raw")
    out = small_fs / "prepared"
    rc, err = run_cli("prepare", "--format", "npz", raw, "--out", out, "--memory-budget", "64M")
    assert_disk_full(rc, err, out)


def test_disk_full_sample_midway(small_fs, fx):
    fill(small_fs, 96 << 10)  # passes the up-front check, runs out while writing batches
    out = small_fs / "samples"
    rc, err = run_cli("sample", fx.dataset, "--out", out, "--fanouts", "5,5", "--batch-size", "50",
                      "--epochs", "6")
    assert_disk_full(rc, err, out)


@pytest.mark.parametrize("layout", [[], ["--disk-budget", "2x"]], ids=["plain", "segments"])
def test_disk_full_pack(small_fs, fx, layout):
    if fx.packed is None:
        pytest.skip("the packer is not available in this checkout")
    fill(small_fs, 48 << 10)
    out = small_fs / "packed"
    rc, err = run_cli("pack", fx.samples, "--out", out, "--host-cache", "10%", *layout)
    assert_disk_full(rc, err, out)


def test_disk_full_train_checkpoint(small_fs, fx):
    if fx.checkpoint is None:
        pytest.skip("the trainer is not available in this checkout")
    fill(small_fs, 24 << 10)
    out = small_fs / "ck"
    rc, err = run_cli("train", fx.packed, "--model", "sage", "--hidden", "256", "--threads", "1", "--device", "cpu",
                      "--epochs", "1", "--checkpoint", out)
    assert_disk_full(rc, err, out)
    assert not list(out.glob("*.partial"))


# --- int64 ids and offsets ----------------------------------------------------------------------

def _file_crcs(directory: Path) -> dict:
    return {p.name: zlib.crc32(p.read_bytes()) for p in sorted(directory.iterdir())
            if p.is_file() and p.name != "manifest.json"}


def test_forced_int64_ids_give_identical_samples_and_packs(tmp_path, monkeypatch):
    import diskgnn.synth as synth_mod
    from diskgnn.sampling import SampleConfig, presample
    from diskgnn.synth import SynthConfig, synthesize
    cfg = SynthConfig(nodes=2003, avg_degree=9, dim=7, classes=3, seed=8, train_fraction=0.4)
    narrow = synthesize(cfg, tmp_path / "i32")
    monkeypatch.setattr(synth_mod, "node_id_dtype", lambda n: np.dtype("<i8"))
    wide = synthesize(cfg, tmp_path / "i64")
    assert narrow.indices.dtype == np.int32 and wide.indices.dtype == np.int64
    assert np.array_equal(narrow.indices, wide.indices) and np.array_equal(narrow.indptr, wide.indptr)
    assert run_cli("verify", wide.path)[0] == 0
    scfg = SampleConfig(fanouts=(6, -1, 3), batch_size=77, epochs=2, seed=4)
    a = presample(narrow.path, tmp_path / "s32", scfg)
    b = presample(wide.path, tmp_path / "s64", scfg)
    assert _file_crcs(a.path) == _file_crcs(b.path)
    try:
        from diskgnn.packing import PackConfig, pack
    except ImportError:
        return
    pa = pack(a.path, tmp_path / "p32", PackConfig(host_cache="15%"))
    pb = pack(b.path, tmp_path / "p64", PackConfig(host_cache="15%"))
    assert _file_crcs(pa.path) == _file_crcs(pb.path)


def _sparse_dataset(out: Path, hub_degree: int) -> tuple[Path, dict]:
    """A 41-node dataset whose node 0 has ``hub_degree`` in-edges (a hole of zeros: source 0).

    The other nodes' in-edges sit after the hole, at offsets beyond ``hub_degree``,
    so sampling them exercises int64 offsets; they are returned as {node: sources}.
    """
    from diskgnn.manifest import write_manifest
    out.mkdir()
    n, f = 41, 4
    rng = np.random.default_rng(1)
    nbrs = {v: np.sort(rng.choice(np.delete(np.arange(n), v), size=int(rng.integers(1, 9)), replace=False))
            for v in range(1, n)}
    deg = np.array([hub_degree] + [len(nbrs[v]) for v in range(1, n)], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(deg)]).astype("<i8")
    tail = np.concatenate([nbrs[v] for v in range(1, n)]).astype("<i4")
    with open(out / "indices.bin", "wb") as fh:
        fh.truncate(hub_degree * 4)  # a hole: reads as zeros, takes no disk space
        fh.seek(hub_degree * 4)
        fh.write(tail.tobytes())
    arrays = {"indptr": indptr, "features": rng.standard_normal((n, f)).astype("<f4"),
              "labels": (np.arange(n) % 3).astype("<i8"), "train_idx": np.arange(1, 31, dtype="<i8"),
              "val_idx": np.arange(31, 36, dtype="<i8"), "test_idx": np.arange(36, 41, dtype="<i8")}
    files = {"indices": {"path": "indices.bin", "dtype": "<i4", "shape": [int(indptr[-1])], "offset": 0,
                         "bytes": int(indptr[-1]) * 4, "crc32": None}}
    for name, arr in arrays.items():
        (out / f"{name}.bin").write_bytes(arr.tobytes())
        files[name] = {"path": f"{name}.bin", "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": 0,
                       "bytes": arr.nbytes, "crc32": zlib.crc32(arr.tobytes())}
    write_manifest(out, "diskgnn.dataset", 1, {"num_nodes": n, "num_edges": int(indptr[-1]), "feat_dim": f,
                                               "feat_dtype": "fp32", "num_classes": 3, "files": files,
                                               "source": {"kind": "test"}, "config": {}, "stats": {}})
    return out, nbrs


@pytest.mark.slow
def test_sampling_past_two_billion_edges(tmp_path):
    from diskgnn.dataset import Dataset
    from diskgnn.sampling import SampleConfig, presample
    hub = 2**31 + 12345  # the hub's in-edges alone overflow int32 offsets
    path, nbrs = _sparse_dataset(tmp_path / "huge", hub)
    if os.statvfs(path).f_bsize and (path / "indices.bin").stat().st_blocks * 512 > 64 << 20:
        pytest.skip("this filesystem does not keep sparse files sparse")
    ds = Dataset.open(path)
    assert ds.num_edges > 2**31 and ds.indptr[-1] > 2**31
    samples = presample(path, tmp_path / "s", SampleConfig(fanouts=(5, 3), batch_size=7, seed=2),
                        mmap_topology="yes", memory_budget="256M")
    seen_deep = 0
    for part in samples.parts:
        for i in range(samples.num_batches(part)):
            mb = samples.batch(part, i)
            for b, fanout in zip(mb.blocks, (5, 3)):
                for j in range(b.num_dst):
                    v = int(mb.input_nodes[j])
                    got = mb.input_nodes[b.indices[b.indptr[j]:b.indptr[j + 1]]]
                    if v == 0:
                        assert np.all(got == 0) and got.size == fanout  # sampled from the 2**31-edge hole
                        continue
                    seen_deep += 1
                    assert got.size == min(len(nbrs[v]), fanout)
                    assert np.isin(got, nbrs[v]).all() and np.unique(got).size == got.size
    assert seen_deep > 40  # many nodes whose edges lie past offset 2**31 were sampled correctly
    counts = np.asarray(samples.access_counts)
    assert counts.sum() == sum(samples.input_nodes(p, i).size for p in samples.parts
                               for i in range(samples.num_batches(p)))
    reads = samples.manifest["stats"]["topology_reads"]  # sampled from disk in groups: the hub read where drawn
    assert reads["long_lists"] >= 1 and reads["bytes_read"] < 64 << 20
    # the rest of the pipeline past 2**31 edges: every sampled edge checked against the graph on disk, then
    # pack, verify and one epoch of training
    from diskgnn.inspect import verify
    assert verify(samples.path) == "samples"
    from diskgnn.packing import PackConfig, pack
    packed = pack(samples.path, tmp_path / "p", PackConfig(host_cache="20%"))
    assert verify(packed.path) == "packed"
    rc, err = run_cli("train", packed.path, "--model", "sage", "--hidden", "8", "--epochs", "1", "--threads", "1",
                      "--device", "cpu")
    assert rc == 0, err


@pytest.mark.slow
def test_checks_past_two_billion_edges_read_files_not_maps(tmp_path):
    """verify and the sampler's check read the 8 GiB CSR in pieces: no mapped pages pile up in the process."""
    from diskgnn.bench.reliability import rss_wrapped
    from diskgnn.cgroup import MemoryCgroup, CgroupError, run_capped
    try:
        MemoryCgroup(256 << 20).create().remove()
    except CgroupError:
        pytest.skip("no memory cgroup here (needs root): the bound would not be enforced")
    path, _ = _sparse_dataset(tmp_path / "huge", 2**31 + 999)
    if (path / "indices.bin").stat().st_blocks * 512 > 64 << 20:
        pytest.skip("this filesystem does not keep sparse files sparse")
    for argv in (("verify", path), ("sample", path, "--out", tmp_path / "s", "--mmap-topology", "yes",
                                    "--fanouts", "3,2", "--batch-size", "5", "--threads", "1")):
        r = run_capped(rss_wrapped(*argv, "-q"), 768 << 20, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        rec = json.loads([line for line in r.stderr.splitlines() if line.startswith('{"peak_rss_bytes"')][-1])
        # through a map, the pages of the hole read would stay resident up to the cap (file-mapped RSS)
        assert rec["peak_file_bytes"] < 200 << 20, rec
        assert rec["peak_anon_bytes"] < 400 << 20, rec


# --- memory budget ----------------------------------------------------------------------------------

def test_memory_budget_resolution():
    from diskgnn.errors import ConfigError
    from diskgnn.memory import resolve_memory_budget
    assert resolve_memory_budget("2G") == 2 << 30
    assert resolve_memory_budget(123456789) == 123456789
    default = resolve_memory_budget(None)
    import psutil
    assert 0 < default <= psutil.virtual_memory().total
    for bad in ("-1G", "0", "lots", "10%"):
        with pytest.raises(ConfigError, match="--memory-budget"):
            resolve_memory_budget(bad)
