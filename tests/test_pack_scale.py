"""The packer's plan at scale: tiers without sort keys of the graph's size, maps in place, a bounded plan."""
import tracemalloc
import zlib
from dataclasses import replace

import numpy as np
import pytest

from diskgnn.errors import MemoryBudgetError
from diskgnn.packing import PackConfig, _hottest, pack, plan_memory_bytes, plan_pack
from diskgnn.sampling import SampleConfig, presample
from diskgnn.synth import SynthConfig, synthesize


def _hottest_by_keys(counts: np.ndarray, capacity: int) -> np.ndarray:
    """The former all-at-once choice (numpy twin): sort every node by count, then by ascending id."""
    n = counts.size
    accessed = int(np.count_nonzero(counts))
    want = min(capacity, accessed)
    key = counts * np.int64(n) + (np.int64(n - 1) - np.arange(n, dtype=np.int64))
    order = np.argpartition(-key, want - 1)[:want] if 0 < want < n else np.arange(n if want else 0)
    return order[np.argsort(-key[order], kind="stable")]


@pytest.mark.parametrize("capacity", [0, 1, 37, 500, 4000, 10_000])
@pytest.mark.parametrize("piece", [7, 1000, 1 << 20])
def test_hottest_is_the_sort_by_count_then_id(capacity, piece):
    rng = np.random.default_rng(capacity + piece)
    counts = rng.zipf(1.6, 5003).astype(np.int64) * (rng.random(5003) < 0.7)  # many ties, some never used

    def pieces():
        return [(lo, counts[lo:lo + piece].copy()) for lo in range(0, counts.size, piece)]

    got, accessed = _hottest(pieces, capacity)
    want = _hottest_by_keys(counts, capacity)
    assert accessed == np.count_nonzero(counts)
    assert np.array_equal(got, want), (got[:10], want[:10])


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("pscale")
    ds = synthesize(SynthConfig(nodes=30011, avg_degree=12, dim=16, classes=4, seed=2, train_fraction=0.4,
                                val_fraction=0.1, test_fraction=0.1), root / "ds")
    return presample(ds.path, root / "samples", SampleConfig(fanouts=(8, 6), batch_size=257, epochs=2, seed=3))


def _crcs(path):
    return {p.name: zlib.crc32(p.read_bytes()) for p in sorted(path.iterdir()) if p.suffix == ".bin"}


@pytest.mark.parametrize("mode", ["stream", "groups"])
def test_maps_in_place_pack_the_same_bytes(samples, tmp_path, mode):
    """With the Belady bound the maps have their own array; without, they overwrite the inputs: same files."""
    cfg = PackConfig(host_cache="15%", write_mode=mode, order_block="64K")
    a = pack(samples.path, tmp_path / "separate", cfg, memory_budget="2G")
    b = pack(samples.path, tmp_path / "in_place", replace(cfg, belady=False), memory_budget="2G")
    assert "belady_hit_rate" in a.manifest["stats"] and "belady_hit_rate" not in b.manifest["stats"]
    assert _crcs(a.path) == _crcs(b.path) and _crcs(a.path)["maps.bin"]
    plan = plan_pack(samples.path, cfg)
    assert not plan.maps_in_place and plan.inputs.dtype == np.int32 and plan.row_nodes.dtype == np.int32


def test_plan_holds_nothing_of_the_graphs_size_beyond_its_arrays(samples):
    """tracemalloc's peak while planning stays within the plan's bound (the former plan: int64 inputs beside their
    maps, int64 packed-row nodes and five int64 sort keys of every node, about twice as much)."""
    from diskgnn.dataset import Dataset
    from diskgnn.packing import _plan
    ds = Dataset.open(samples.dataset_path)
    cfg = PackConfig(host_cache="10%", belady=False)
    _plan(samples, ds, cfg, num_shards=1, shard=0, plan_budget=1 << 30)  # compile the kernels first
    total = sum(int(samples.input_offsets(p)[-1]) for p in samples.parts)
    tracemalloc.start()
    try:
        plan = _plan(samples, ds, cfg, num_shards=1, shard=0, plan_budget=1 << 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.maps_in_place and plan.inputs.size == 0 and plan.maps.size == total
    bound = plan_memory_bytes(total, ds.num_nodes, 4, maps_in_place=True)
    assert peak <= bound, f"peak {peak} for a plan bound of {bound} ({total} inputs)"


def test_a_plan_beyond_the_budget_is_refused_before_it_is_built(samples, tmp_path):
    total = sum(int(samples.input_offsets(p)[-1]) for p in samples.parts)
    need = plan_memory_bytes(total, 30011, 4, maps_in_place=True)
    with pytest.raises(MemoryBudgetError, match=r"planning this pack needs about .* --num-shards"):
        pack(samples.path, tmp_path / "p", PackConfig(host_cache="10%"), memory_budget=need // 2 * 2 // 2)
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_maps_take_the_inputs_place_when_separate_maps_would_not_fit(samples, tmp_path):
    """A budget between the in-place plan and the separate-maps plan packs (without the Belady bound) instead of
    refusing: at scale l the separate maps alone put the plan over the default share of a 4 GiB cgroup."""
    total = sum(int(samples.input_offsets(p)[-1]) for p in samples.parts)
    low = plan_memory_bytes(total, 30011, 4, maps_in_place=True)
    high = plan_memory_bytes(total, 30011, 4, maps_in_place=False)
    assert low < high
    from diskgnn.dataset import Dataset
    from diskgnn.packing import _plan
    ds = Dataset.open(samples.dataset_path)
    plan = _plan(samples, ds, PackConfig(host_cache="10%"), num_shards=1, shard=0, plan_budget=(low + high) // 2)
    assert plan.maps_in_place and plan.inputs.size == 0 and plan.maps.size == total
    full = _plan(samples, ds, PackConfig(host_cache="10%"), num_shards=1, shard=0, plan_budget=1 << 34)
    assert not full.maps_in_place
    assert np.array_equal(plan.maps, full.maps) and np.array_equal(plan.row_nodes, full.row_nodes)


@pytest.mark.parametrize("mode", ["stream", "groups"])
def test_the_writes_do_not_hold_the_maps(samples, tmp_path, monkeypatch, mode):
    """Once maps.bin is written the plan's maps (and, without the Belady bound, its input nodes) are released:
    at scale l a view of them kept 557 MB alive through the writes and put the pack over its budget."""
    import diskgnn.packing as packing
    seen = []
    for name in ("_stream_rows", "_write_rows"):
        real = getattr(packing, name)

        def spy(out, plan, *args, _real=real, **kw):
            seen.append((plan.maps, plan.inputs))
            return _real(out, plan, *args, **kw)
        monkeypatch.setattr(packing, name, spy)
    pack(samples.path, tmp_path / "p", PackConfig(host_cache="10%", write_mode=mode, order_block="64K",
                                                  belady=False), memory_budget="1G")
    assert seen
    for maps, inputs in seen:
        assert maps.size == 0 and maps.base is None and inputs.size == 0 and inputs.base is None
