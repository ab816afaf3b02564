"""The scaling model: each term moves the way its measured rate says, and the layout follows the disk."""
from dataclasses import replace

import pytest

from diskgnn.bench.scaling_model import GRAPHS, Graph, Machine, Rates, project, table

RATES = Rates(source="test", seeds=896_000, train_seeds=640_000, sampled_edges_per_seed=170.0,
              input_rows_per_seed=155.0, sample_cpu_edges_per_s=6e6, sample_disk_edges_per_s=3e6,
              topology_passes=5.75, sample_memory_budget=4 << 30, samples_bytes_per_edge=15.0,
              host_hit_rate=0.3, host_tier_fraction=0.1, seq_read_bps=1.1e9, seq_write_bps=0.8e9,
              pack_floor_ratio=1.4, train_read_bps=0.9e9, rows_assembled_per_s=2e7, step_s_per_row_dim=3e-10,
              batch_size=1024, feat_dim=64)
G = Graph("g", 50_000_000, 1_500_000_000, 128, 4, 0.014, 0.01)


def test_sampling_grows_with_the_seeds_and_splits_over_machines():
    one = project(G, RATES)
    double = project(replace(G, seed_fraction=0.028, train_fraction=0.02), RATES)
    assert double["sample"]["cpu_s"] == pytest.approx(2 * one["sample"]["cpu_s"])
    four = project(G, RATES, machines=4)
    assert four["sample"]["cpu_s"] == pytest.approx(one["sample"]["cpu_s"] / 4)
    # with the topology on disk every pass still reads all of it: the I/O term shrinks only by its passes
    small = Machine(memory_bytes=4 << 30)
    a, b = project(G, RATES, small), project(G, RATES, small, machines=4)
    assert 1 <= b["sample"]["passes"] < a["sample"]["passes"]
    assert b["sample"]["topology_io_s"] >= G.topology_bytes / RATES.seq_read_bps - 1e-9


def test_topology_in_ram_has_no_read_term():
    big = Machine(memory_bytes=1 << 40)
    p = project(G, RATES, big)
    assert p["sample"]["topology_in_ram"] and p["sample"]["topology_io_s"] == 0 and p["sample"]["bound"] == "cpu"
    small = project(G, RATES, Machine(memory_bytes=4 << 30))
    assert not small["sample"]["topology_in_ram"] and small["sample"]["topology_io_s"] > 0


def test_pack_reads_the_features_once_per_machine_and_writes_its_share():
    one, four = project(G, RATES), project(G, RATES, machines=4)
    assert one["pack"]["read_s"] == pytest.approx(G.feature_bytes / RATES.seq_read_bps)
    assert four["pack"]["read_s"] == one["pack"]["read_s"]
    assert four["pack"]["write_s"] == pytest.approx(one["pack"]["write_s"] / 4)
    rows = G.nodes * G.seed_fraction * RATES.input_rows_per_seed
    assert one["pack"]["plain_bytes"] == pytest.approx(rows * (1 - RATES.host_hit_rate) * G.feat_dim * 4)


def test_a_disk_too_small_for_the_plain_layout_packs_segments():
    p = project(G, RATES, Machine(disk_bytes=4 << 40))
    assert p["pack"]["layout"] == "plain" and p["disk_fits"]
    tight = G.feature_bytes + G.topology_bytes + p["sample"]["disk_bytes"] + p["pack"]["plain_bytes"] // 3
    q = project(G, RATES, Machine(disk_bytes=int(tight)))
    assert q["pack"]["layout"] == "segments" and q["pack"]["packed_bytes"] < p["pack"]["plain_bytes"]
    assert q["train"]["read_bytes"] == q["pack"]["packed_bytes"]  # each segment read once per epoch


def test_training_is_bound_by_its_slowest_stage():
    p = project(G, RATES)
    assert p["train"]["epoch_s"] == max(p["train"]["stages_s"].values())
    slow_disk = project(G, replace(RATES, train_read_bps=1e6))
    assert slow_disk["train"]["bound"] == "read"
    wide = project(replace(G, feat_dim=1024), RATES)
    assert wide["train"]["stages_s"]["compute"] == pytest.approx(8 * p["train"]["stages_s"]["compute"])


def test_the_named_graphs_project_and_tabulate():
    rows = [project(GRAPHS[name], RATES, machines=n) for name in sorted(GRAPHS) for n in (1, 4)]
    text = table(rows)
    assert text.count("\n") == len(rows) + 1 and "IGB-full" in text and "ogbn-papers100M" in text
    igb = project(GRAPHS["igb-full"], RATES)  # a 10 % host tier would be 110 GB: capped at half of 64 GiB
    assert igb["feature_bytes"] > 1e12 and igb["train"]["host_tier_capped"]
    assert igb["pack"]["host_tier_bytes"] == 32 * 2**30 and igb["pack"]["host_hit_rate"] < RATES.host_hit_rate


def test_machines_must_be_positive():
    with pytest.raises(ValueError, match="machines"):
        project(G, RATES, machines=0)
