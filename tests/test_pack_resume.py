"""Resuming a killed streamed ``pack`` after its last journaled block.

The kill is real: the pack runs in a subprocess whose journal writer SIGKILLs the process right
after its k-th journal (patched in that subprocess only). The rerun, in this process, must end in
the files of an uninterrupted pack, really resume (it logs the block, records it in the stats and
reads less of features.bin), and start from zero, still ending identical, when the journal belongs
to another command or a file it vouches for was damaged.
"""
from __future__ import annotations

import json
import logging
import shutil

import pytest

from diskgnn.bench.reliability import snapshot_dir
from diskgnn.manifest import RESUME_JOURNAL
from diskgnn.packing import RESUME_CARRY, PackConfig, pack
from diskgnn.sampling import SampleConfig, presample
from diskgnn.synth import SynthConfig, synthesize

from conftest import run_killed

CFG = dict(host_cache="4%", order_block="8K", write_mode="stream", belady=False)
JOURNAL = 64 << 10  # a journal every 8 blocks of 8 KiB
BUDGET = "256M"

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(samples, uninterrupted pack, pack killed after its 3rd journal)."""
    root = tmp_path_factory.mktemp("packresume")
    ds = synthesize(SynthConfig(nodes=3001, avg_degree=5, dim=64, classes=3, seed=4, train_fraction=0.3,
                                val_fraction=0.1, test_fraction=0.1), root / "ds")
    samples = presample(ds.path, root / "samples", SampleConfig(fanouts=(3, 4), batch_size=83, epochs=1, seed=2))
    ref = pack(samples.path, root / "ref", PackConfig(**CFG), memory_budget=BUDGET, journal_every=JOURNAL)
    assert ref.stats["write_mode"] == "stream" and ref.stats["resumed_from_block"] == 0
    killed = root / "killed"
    run_killed(f"""
        from diskgnn.packing import PackConfig, pack
        pack({str(samples.path)!r}, {str(killed)!r}, PackConfig(**{CFG!r}), memory_budget={BUDGET!r},
             journal_every={JOURNAL})
        """, 3, module="diskgnn.packing")
    return samples, ref.path, killed


def snapshot(directory) -> dict:
    """Files and manifest, without the relative paths to the inputs (the outputs live in different folders)."""
    snap = snapshot_dir(directory)
    for key in ("samples", "dataset"):
        snap["manifest"][key].pop("relpath")
    return snap


def _rerun(samples, out, caplog, overwrite=False, **overrides):
    with caplog.at_level(logging.INFO, logger="diskgnn.packing"):
        return pack(samples.path, out, PackConfig(**{**CFG, **overrides}), memory_budget=BUDGET, overwrite=overwrite,
                    journal_every=JOURNAL)


def test_killed_pack_resumes_after_its_last_journal(runs, tmp_path, caplog):
    samples, ref, killed = runs
    out = tmp_path / "out"
    shutil.copytree(killed, out)
    assert not (out / "manifest.json").exists() and (out / RESUME_CARRY).exists()
    state = json.loads((out / RESUME_JOURNAL).read_text())["state"]
    assert state["next_block"] == 3 * 8
    packed = _rerun(samples, out, caplog)
    assert f"resuming {out} from block 24 of" in caplog.text
    st = packed.stats
    assert st["resumed_from_block"] == 24 and st["bytes_read"] < packed.dataset.feature_bytes - 24 * 8192 + 8192
    assert snapshot(out) == snapshot(ref)  # byte for byte, and no journal or carry left behind
    assert not (out / RESUME_JOURNAL).exists() and not (out / RESUME_CARRY).exists()


@pytest.mark.parametrize("damage", ["flip_packed", "flip_carry", "truncate_carry", "other_config", "overwrite"])
def test_pack_starts_again_when_the_journal_does_not_fit(runs, tmp_path, caplog, damage):
    samples, ref, killed = runs
    out = tmp_path / "out"
    shutil.copytree(killed, out)
    overrides = {}
    if damage == "flip_packed":  # a byte that the journal vouches for (the first extent's first page)
        with open(out / "packed.bin", "r+b") as f:
            b = f.read(1)
            f.seek(0)
            f.write(bytes([b[0] ^ 0x5A]))
    elif damage == "flip_carry":  # its last bytes are the tier rows not yet written to tier_host.bin
        with open(out / RESUME_CARRY, "r+b") as f:
            at = f.seek(0, 2) - 3
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 0x5A]))
    elif damage == "truncate_carry":
        with open(out / RESUME_CARRY, "r+b") as f:
            f.truncate(100)
    elif damage == "other_config":
        overrides = {"host_cache": "5%"}
    packed = _rerun(samples, out, caplog, overwrite=damage == "overwrite", **overrides)
    assert "resuming" not in caplog.text and packed.stats["resumed_from_block"] == 0
    if overrides:
        fresh = pack(samples.path, tmp_path / "fresh", PackConfig(**{**CFG, **overrides}), memory_budget=BUDGET)
        assert snapshot(out) == snapshot(fresh.path)
    else:
        assert snapshot(out) == snapshot(ref)


def test_groups_mode_never_resumes_but_redoes(runs, tmp_path, caplog):
    """The group mode has no journal: a killed stream pack rerun in group mode starts afresh, same bytes."""
    samples, ref, killed = runs
    out = tmp_path / "out"
    shutil.copytree(killed, out)
    packed = _rerun(samples, out, caplog, write_mode="groups")
    assert packed.stats["write_mode"] == "groups" and "resuming" not in caplog.text
    assert snapshot_dir(out)["files"] == snapshot_dir(ref)["files"]


def test_killed_segment_pack_resumes_to_the_same_files(runs, tmp_path, caplog):
    """The disk-budget layout streams like the plain one (each segment's rows by node id): a pack killed
    after a journal resumes and ends byte for byte like an uninterrupted one."""
    samples, _, _ = runs
    cfg = {**CFG, "disk_budget": "1.6x"}
    ref = pack(samples.path, tmp_path / "ref", PackConfig(**cfg), memory_budget=BUDGET, journal_every=JOURNAL)
    assert ref.layout == "segments" and ref.stats["write_mode"] == "stream"
    killed = tmp_path / "killed"
    run_killed(f"""
        from diskgnn.packing import PackConfig, pack
        pack({str(samples.path)!r}, {str(killed)!r}, PackConfig(**{cfg!r}), memory_budget={BUDGET!r},
             journal_every={JOURNAL})
        """, 2, module="diskgnn.packing")
    assert not (killed / "manifest.json").exists()
    packed = _rerun(samples, killed, caplog, disk_budget="1.6x")
    assert packed.stats["resumed_from_block"] == 16
    assert snapshot(killed) == snapshot(ref.path)
