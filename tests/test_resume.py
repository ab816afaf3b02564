"""Resuming a killed ``synth`` or ``prepare`` after its last journaled chunk.

Each kill is real: the step runs in a subprocess whose journal writer SIGKILLs
the process right after the k-th journal (the test patches the function in that
subprocess only; the library has no test hook). The rerun happens in this
process and must (a) end in the files and manifest of an uninterrupted run,
(b) really resume (it logs where it resumes, records it in the stats and
repeats less work), and (c) start from zero, still ending identical, when the
journal belongs to another command or a file it lists was damaged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import diskgnn.dataset as dataset_mod
import diskgnn.ingest as ingest
from diskgnn.bench.reliability import snapshot_dir
from diskgnn.dataset import Dataset
from diskgnn.ingest import PrepareConfig, prepare
from diskgnn.manifest import (RESUME_JOURNAL, Crc32Writer, file_crc32, prepare_resumable_output_dir,
                              read_resume_journal, write_resume_journal)
from diskgnn.synth import SynthConfig, synthesize

from conftest import run_killed


@pytest.fixture
def count_journals(monkeypatch):
    """Counts the journals written in this process."""
    calls = []
    real = dataset_mod.write_resume_journal

    def counting(*args, **kwargs):
        calls.append(json.loads(json.dumps(args[3])))  # the state as journaled (the step keeps changing it)
        real(*args, **kwargs)
    monkeypatch.setattr(dataset_mod, "write_resume_journal", counting)
    return calls


def journal_state(out: Path) -> dict:
    return json.loads((out / RESUME_JOURNAL).read_text())["state"]


def flip_byte(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x5A]))


# --- the journal -----------------------------------------------------------------------------------

def test_crc_writer_resumes_a_file_as_one_write(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 10_007, dtype=np.uint8)
    with Crc32Writer(tmp_path / "whole") as w:
        w.write(data)
        whole = w.close()
    with Crc32Writer(tmp_path / "part") as w:
        w.write(data[:3001])
        state = w.sync()
        w.write(b"written after the journal, then killed")
    assert state == {"bytes": 3001, "crc32": file_crc32(tmp_path / "part", limit=3001)}
    with Crc32Writer(tmp_path / "part", resume=state) as w:
        w.write(data[3001:])
        assert w.close() == whole
    assert (tmp_path / "part").read_bytes() == (tmp_path / "whole").read_bytes()


def test_journal_is_trusted_only_for_the_same_key_and_intact_files(tmp_path):
    key = {"step": "x", "n": 1}
    out, journal = prepare_resumable_output_dir(tmp_path / "o", key, overwrite=False)
    assert journal is None
    (out / "a.bin").write_bytes(b"0123456789")
    (out / "stray.bin").write_bytes(b"not journaled")
    write_resume_journal(out, key, {"a.bin": {"bytes": 6, "crc32": file_crc32(out / "a.bin", limit=6)}}, {"at": 6})
    assert read_resume_journal(out, {"step": "x", "n": 2}) is None  # another command
    assert read_resume_journal(out, key)["state"] == {"at": 6}
    flip_byte(out / "a.bin", 7)  # after the journaled prefix: what the killed run wrote later, ignored
    assert read_resume_journal(out, key) is not None
    flip_byte(out / "a.bin", 2)
    assert read_resume_journal(out, key) is None
    flip_byte(out / "a.bin", 2)
    _, journal = prepare_resumable_output_dir(out, key, overwrite=False)
    assert journal is not None and sorted(p.name for p in out.iterdir()) == [".diskgnn-partial", "a.bin", RESUME_JOURNAL]
    _, journal = prepare_resumable_output_dir(out, key, overwrite=True)
    assert journal is None and [p.name for p in out.iterdir()] == [".diskgnn-partial"]


# --- synth ---------------------------------------------------------------------------------------------

SYNTH = SynthConfig(nodes=2309, avg_degree=5, dim=6, classes=3, seed=4, train_fraction=0.3)
CHUNK = 300  # 8 chunks


@pytest.fixture(scope="module")
def synth_runs(tmp_path_factory):
    """An uninterrupted synth and one killed after its third chunk's journal."""
    root = tmp_path_factory.mktemp("synth")
    ref = synthesize(SYNTH, root / "ref", chunk_nodes=CHUNK)
    run_killed(f"""
        from diskgnn.synth import SynthConfig, synthesize
        synthesize(SynthConfig(**{dataclasses.asdict(SYNTH)!r}), {str(root / 'killed')!r}, chunk_nodes={CHUNK})
        """, 3)
    return ref.path, root / "killed"


def test_killed_synth_resumes_after_its_last_chunk(synth_runs, tmp_path, caplog, monkeypatch, count_journals):
    ref, killed = synth_runs
    out = tmp_path / "out"
    shutil.copytree(killed, out)
    assert not (out / "manifest.json").exists()
    assert journal_state(out) == {"next_node": 3 * CHUNK, "edges": int(Dataset.open(ref).indptr[3 * CHUNK])}
    with open(out / "features.bin", "ab") as f:  # the killed run went on writing after its journal
        f.write(b"half a chunk")
    import diskgnn.kernels.synth as kernels
    chunks = []
    real = kernels.generate_in_edges
    monkeypatch.setattr(kernels, "generate_in_edges", lambda lo, *a: chunks.append(lo) or real(lo, *a))
    with caplog.at_level(logging.INFO, logger="diskgnn.synth"):
        ds = synthesize(SYNTH, out, chunk_nodes=CHUNK)
    assert f"resuming {out} from node {3 * CHUNK} of {SYNTH.nodes}" in caplog.text
    assert chunks == list(range(3 * CHUNK, SYNTH.nodes, CHUNK))  # only the unfinished chunks were generated
    assert len(count_journals) == 5 and ds.manifest["stats"]["resumed_from_node"] == 3 * CHUNK
    assert snapshot_dir(out) == snapshot_dir(ref)
    assert not (out / RESUME_JOURNAL).exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "other_seed", "other_chunking", "overwrite"])
def test_synth_starts_again_when_the_journal_does_not_fit(synth_runs, tmp_path, caplog, damage):
    ref, killed = synth_runs
    out = tmp_path / "out"
    shutil.copytree(killed, out)
    cfg, chunk = SYNTH, CHUNK
    if damage == "flip":
        flip_byte(out / "indices.bin", 5)
    elif damage == "truncate":
        with open(out / "features.bin", "r+b") as f:
            f.truncate(f.seek(0, 2) - 1)
    elif damage == "delete":
        (out / "indptr.bin").unlink()
    elif damage == "other_seed":
        cfg = dataclasses.replace(SYNTH, seed=5)
    elif damage == "other_chunking":
        chunk = CHUNK + 1
    with caplog.at_level(logging.INFO, logger="diskgnn.synth"):
        ds = synthesize(cfg, out, chunk_nodes=chunk, overwrite=damage == "overwrite")
    assert "resuming" not in caplog.text and "resumed_from_node" not in ds.manifest["stats"]
    expected = ref if (cfg, chunk) == (SYNTH, CHUNK) else synthesize(cfg, tmp_path / "fresh", chunk_nodes=chunk).path
    assert snapshot_dir(out) == snapshot_dir(expected)


def test_synth_rejects_a_bad_chunk_size(tmp_path):
    from diskgnn.errors import ConfigError
    with pytest.raises(ConfigError, match="--chunk-nodes"):
        synthesize(SYNTH, tmp_path / "o", chunk_nodes=0)


# --- prepare ---------------------------------------------------------------------------------------------

N, E, F = 613, 2903, 7
SMALL_PLAN = dict(chunk_edges=97, feature_chunk_bytes=4096, journal_bytes=1)  # journal after every piece
MAX_RANGE_EDGES = 1000  # 6 destination ranges (undirected)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(7)
    src, dst = rng.integers(0, N, E), rng.integers(0, N, E)
    src[:40], dst[:40] = src[40:80], dst[40:80]
    np.save(root / "feat.npy", rng.standard_normal((N, F)).astype(np.float32))
    np.save(root / "label.npy", rng.integers(0, 3, N))
    ids = rng.permutation(N)
    np.savez(root / "splits.npz", train_idx=ids[:100], val_idx=ids[100:150], test_idx=ids[150:200])
    (root / "edges.txt").write_text("".join(f"{a} {b}\n" for a, b in zip(src, dst)))
    np.savez(root / "g.npz", edge_index=np.stack([src, dst]), feat=np.load(root / "feat.npy"),
             label=np.load(root / "label.npy"), train_idx=ids[:100], val_idx=ids[100:150], test_idx=ids[150:200])
    return root


def prepare_config(raw: Path, fmt: str = "edgelist") -> dict:
    if fmt == "npz":
        return dict(format="npz", input=str(raw / "g.npz"), memory_budget="64M")
    return dict(format="edgelist", input=str(raw / "edges.txt"), features=str(raw / "feat.npy"),
                labels=str(raw / "label.npy"), splits=str(raw / "splits.npz"), undirected=True,
                memory_budget="64M")


@pytest.fixture
def small_plan(monkeypatch):
    real = ingest._plan
    monkeypatch.setattr(ingest, "_plan", lambda *a: dataclasses.replace(real(*a), **SMALL_PLAN))


def prepare_killed(raw: Path, out: Path, journals: int, fmt: str = "edgelist") -> None:
    run_killed(f"""
        import dataclasses
        import diskgnn.ingest as ingest
        real_plan = ingest._plan
        ingest._plan = lambda *a: dataclasses.replace(real_plan(*a), **{SMALL_PLAN!r})
        ingest.prepare(ingest.PrepareConfig(**{prepare_config(raw, fmt)!r}), {str(out)!r},
                       max_range_edges={MAX_RANGE_EDGES})
        """, journals)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    """Uninterrupted runs (with the small plan) and how many journals each writes."""
    out = {}
    mp = pytest.MonkeyPatch()
    real = ingest._plan
    mp.setattr(ingest, "_plan", lambda *a: dataclasses.replace(real(*a), **SMALL_PLAN))
    calls = []
    real_journal = dataset_mod.write_resume_journal
    mp.setattr(dataset_mod, "write_resume_journal", lambda *a: calls.append(1) or real_journal(*a))
    try:
        for fmt in ("edgelist", "npz"):
            calls.clear()
            ds = prepare(PrepareConfig(**prepare_config(raw, fmt)), tmp_path_factory.mktemp("ref") / fmt,
                         max_range_edges=MAX_RANGE_EDGES)
            assert ds.manifest["stats"]["destination_ranges"] >= 3
            out[fmt] = (ds.path, len(calls))
    finally:
        mp.undo()
    return out


# journal 1: after the scan; 2: edges grouped by range; 4: two ranges built; 10: after some feature chunks
@pytest.mark.parametrize("fmt,journals,resumed_from", [
    ("edgelist", 1, "the grouping of the edges (their scan is done)"),
    ("edgelist", 4, "destination range 2 of the CSR build"),
    ("edgelist", 10, "feature row 96"),
    ("npz", 3, "destination range 1 of the CSR build"),
])
def test_killed_prepare_resumes_from_its_last_piece(raw, prepared, tmp_path, caplog, small_plan, count_journals,
                                                    fmt, journals, resumed_from):
    ref, total_journals = prepared[fmt]
    out = tmp_path / "out"
    prepare_killed(raw, out, journals, fmt)
    assert (out / RESUME_JOURNAL).exists() and not (out / "manifest.json").exists()
    growing = out / ("features.bin" if journals == 10 else "indices.bin")
    if growing.exists():
        with open(growing, "ab") as f:  # what the killed run wrote after its journal
            f.write(b"\x01" * 13)
    with caplog.at_level(logging.INFO, logger="diskgnn.ingest"):
        ds = prepare(PrepareConfig(**prepare_config(raw, fmt)), out, max_range_edges=MAX_RANGE_EDGES)
    assert f"resuming {out} from {resumed_from}" in caplog.text
    assert ds.manifest["stats"]["resumed_from"] == resumed_from
    assert len(count_journals) == total_journals - journals  # the rerun did only what was left
    assert snapshot_dir(out) == snapshot_dir(ref)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())  # no scratch, no journal


@pytest.mark.parametrize("damage", ["scratch_flip", "output_truncated", "input_changed", "other_option"])
def test_prepare_starts_again_when_the_journal_does_not_fit(raw, prepared, tmp_path, caplog, small_plan, damage):
    ref, _ = prepared["edgelist"]
    inputs = tmp_path / "raw"
    shutil.copytree(raw, inputs)
    out = tmp_path / "out"
    prepare_killed(inputs, out, 4)
    cfg = prepare_config(inputs)
    if damage == "scratch_flip":
        flip_byte(out / ingest.SCRATCH / "runs.bin", 11)
    elif damage == "output_truncated":
        with open(out / "indices.bin", "r+b") as f:
            f.truncate(4)
    elif damage == "input_changed":
        os.utime(inputs / "edges.txt", ns=(1, 1))
    elif damage == "other_option":
        cfg["drop_duplicates"] = False
    with caplog.at_level(logging.INFO, logger="diskgnn.ingest"):
        ds = prepare(PrepareConfig(**cfg), out, max_range_edges=MAX_RANGE_EDGES)
    assert "resuming" not in caplog.text and "resumed_from" not in ds.manifest["stats"]
    if damage == "other_option":
        ref = prepare(PrepareConfig(**cfg), tmp_path / "fresh", max_range_edges=MAX_RANGE_EDGES).path
        assert ds.num_edges > Dataset.open(prepared["edgelist"][0]).num_edges  # duplicates kept: another graph
    got, want = snapshot_dir(out), snapshot_dir(ref)
    for snap in (got, want):  # the inputs live in another directory here
        snap["manifest"]["source"] = snap["manifest"]["config"] = None
    assert got == want


def test_resumed_plan_survives_a_changed_default_budget(raw, tmp_path, small_plan, monkeypatch):
    """Without --memory-budget the plan follows the memory available now; a rerun keeps the killed run's plan
    when it fits (otherwise the journal would never match), and starts again when it needs more."""
    cfg = {**prepare_config(raw), "memory_budget": None}
    out = tmp_path / "out"
    monkeypatch.setattr(PrepareConfig, "budget_bytes", lambda self: 512 << 20)
    run_killed(f"""
        import dataclasses
        import diskgnn.ingest as ingest
        real_plan = ingest._plan
        ingest._plan = lambda *a: dataclasses.replace(real_plan(*a), **{SMALL_PLAN!r})
        ingest.PrepareConfig.budget_bytes = lambda self: 256 << 20
        ingest.prepare(ingest.PrepareConfig(**{cfg!r}), {str(out)!r}, max_range_edges={MAX_RANGE_EDGES})
        """, 4)
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    ds = prepare(PrepareConfig(**cfg), out, max_range_edges=MAX_RANGE_EDGES)
    assert ds.manifest["stats"]["resumed_from"] == "destination range 2 of the CSR build"
    assert ds.manifest["config"]["memory_budget_bytes"] == 256 << 20
    monkeypatch.setattr(PrepareConfig, "budget_bytes", lambda self: 128 << 20)
    ds = prepare(PrepareConfig(**cfg), killed, max_range_edges=MAX_RANGE_EDGES)
    assert "resumed_from" not in ds.manifest["stats"] and ds.manifest["config"]["memory_budget_bytes"] == 128 << 20


def test_prepare_journals_pieces_only_every_journal_bytes(raw, tmp_path, monkeypatch, count_journals):
    """Each journal fsyncs, so small pieces are journaled together: with 1 MiB between journals this small
    graph gets only the phase ends (scan, grouping, CSR done), however many ranges and chunks it has."""
    real = ingest._plan
    monkeypatch.setattr(ingest, "_plan", lambda *a: dataclasses.replace(
        real(*a), **{**SMALL_PLAN, "journal_bytes": 1 << 20}))
    ds = prepare(PrepareConfig(**prepare_config(raw)), tmp_path / "out", max_range_edges=MAX_RANGE_EDGES)
    assert ds.manifest["stats"]["destination_ranges"] > 3
    assert [state["phase"] for state in count_journals] == ["group", "build", "features"]
