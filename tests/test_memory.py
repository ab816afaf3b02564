"""``--memory-budget``: one resolver for every step (prepare, sample, pack, train), and what each step plans with it."""
import numpy as np
import pytest

from diskgnn.distributed import rank_memory_budget
from diskgnn.errors import ConfigError, MemoryBudgetError
from diskgnn.ingest import PrepareConfig
from diskgnn.memory import MIN_BUDGET, resolve_memory_budget
from diskgnn.packing import PackConfig, pack
from diskgnn.sampling import SampleConfig, presample, resolve_mmap_topology, topology_bytes
from diskgnn.store import SPARE_OUTPUTS, FeatureStore

SCFG = SampleConfig(fanouts=(4, 3), batch_size=97, epochs=1, seed=5)
FAKE_AVAILABLE = 3 << 30


@pytest.fixture(scope="module")
def samples(tiny_dataset, tmp_path_factory):
    return presample(tiny_dataset.path, tmp_path_factory.mktemp("ms") / "samples", SCFG)


@pytest.fixture(scope="module")
def packed(samples, tmp_path_factory):
    return pack(samples.path, tmp_path_factory.mktemp("mp") / "packed", PackConfig(host_cache="20%"),
                memory_budget="200M")


@pytest.fixture
def fake_available(monkeypatch):
    """The memory the machine has available, as every step sees it (psutil capped by the cgroup)."""
    import diskgnn.capabilities
    monkeypatch.setattr(diskgnn.capabilities, "available_memory", lambda: FAKE_AVAILABLE)
    return FAKE_AVAILABLE


def test_text_and_bytes():
    assert resolve_memory_budget("2G") == 2 << 30
    assert resolve_memory_budget(" 512M ") == 512 << 20
    assert resolve_memory_budget(4096) == 4096, "bytes from code are exact (tests, a rank's share)"
    for bad, match in (("1M", "below the minimum of 16M"), ("2", "below the minimum"), ("-1G", "positive"),
                       (0, "positive"), (-5, "positive"), (True, "bytes"), ("10%", "percentage"), ("lots", "parse")):
        with pytest.raises(ConfigError, match=match) as info:
            resolve_memory_budget(bad)
        assert "--memory-budget" in str(info.value)


def test_default_is_the_available_memory(fake_available):
    assert resolve_memory_budget(None) == fake_available
    assert resolve_memory_budget(None, fraction=0.7) == int(fake_available * 0.7)


def test_default_never_below_the_minimum(monkeypatch):
    import diskgnn.capabilities
    monkeypatch.setattr(diskgnn.capabilities, "available_memory", lambda: 1 << 20)
    assert resolve_memory_budget(None) == MIN_BUDGET


def test_every_step_refuses_the_same_bad_budget(tiny_dataset, samples, packed, tmp_path):
    """A typo (``1M`` for ``1G``) gets the same message from every step, before any output exists."""
    calls = {
        "prepare": lambda b: PrepareConfig(format="npz", input="x.npz", memory_budget=b),
        "sample": lambda b: presample(tiny_dataset.path, tmp_path / "s", SCFG, memory_budget=b, mmap_topology="yes"),
        "pack": lambda b: pack(samples.path, tmp_path / "p", PackConfig(), memory_budget=b),
        "train": lambda b: FeatureStore(packed, "cpu", memory_budget=b),
        "ranks": lambda b: rank_memory_budget(b, 2),
    }
    for step, call in calls.items():
        with pytest.raises(ConfigError, match=r"--memory-budget '1M' is below the minimum of 16M"):
            call("1M")
    assert not (tmp_path / "s").exists() and not (tmp_path / "p").exists()


def test_every_step_defaults_to_the_available_memory(tiny_dataset, packed, fake_available, monkeypatch):
    assert PrepareConfig(format="npz", input="x.npz").budget_bytes() == int(fake_available * 0.7)
    assert rank_memory_budget(None, 3) == fake_available // 3
    # sampling maps the topology when it needs more than half the budget
    import diskgnn.sampling
    monkeypatch.setattr(diskgnn.sampling, "topology_bytes", lambda ds: fake_available // 2 + 1)
    assert resolve_mmap_topology(tiny_dataset, "auto", None) is True
    monkeypatch.setattr(diskgnn.sampling, "topology_bytes", lambda ds: fake_available // 2)
    assert resolve_mmap_topology(tiny_dataset, "auto", None) is False
    monkeypatch.setattr(diskgnn.sampling, "topology_bytes", topology_bytes)
    # the feature store names the available memory when no budget was given
    import diskgnn.capabilities
    monkeypatch.setattr(diskgnn.capabilities, "available_memory", lambda: 1)
    with pytest.raises(MemoryBudgetError, match=r"more than the available memory \(16\.00 MiB\)"):
        FeatureStore(packed, "cpu", memory_budget=None, pool_size=10 ** 6)


def test_pack_default_plans_with_a_share_of_the_available_memory(samples, fake_available, tmp_path):
    from diskgnn.packing import MEMORY_SHARE
    out = pack(samples.path, tmp_path / "p", PackConfig(host_cache="5%"))
    assert out.stats["memory_budget_bytes"] == int(fake_available * MEMORY_SHARE) < fake_available


# --- training: tiers + read buffers + in-flight batches + model ------------------------------------

def _largest_batch_inputs(samples) -> int:
    return max(samples.input_nodes(p, i).size for p in samples.parts for i in range(samples.num_batches(p)))


def test_training_memory_counts_the_model_and_optimizer(tiny_dataset, samples):
    import torch

    from diskgnn.models import build_model
    from diskgnn.train import TrainConfig, training_memory
    cfg = TrainConfig(model="sage", hidden=24, queue_depth=3, device="cpu")
    rng = torch.random.get_rng_state()
    got = training_memory(cfg, tiny_dataset, samples.config.num_layers, torch.device("cpu"))
    assert torch.equal(torch.random.get_rng_state(), rng), "counting the model must not move the weights' seed"
    model = build_model("sage", in_dim=tiny_dataset.feat_dim, num_classes=tiny_dataset.num_classes,
                        num_layers=samples.config.num_layers, hidden=24)
    params = sum(p.numel() for p in model.parameters())
    assert got.model_bytes == 16 * params > 0  # fp32 weights, gradients, Adam's two moments
    assert got.queue_depth == 3 and got.in_flight_batches == 5
    on_gpu = training_memory(cfg, tiny_dataset, samples.config.num_layers, torch.device("cuda"))
    assert on_gpu.model_bytes == 0, "on CUDA the model and optimizer live in GPU memory"


def test_store_plan_adds_the_in_flight_batches(packed, samples):
    from diskgnn.memory import TrainingMemory
    with FeatureStore(packed, "cpu", memory_budget="1G") as store:
        alone = store.memory_plan()
        training = store.memory_plan(training=TrainingMemory(queue_depth=4, model_bytes=12345))
    batch = _largest_batch_inputs(samples) * packed.feat_dim * 4
    spare = SPARE_OUTPUTS * batch  # assembled matrices kept for reuse on a CPU store
    assert alone.in_flight == spare and alone.model == 0 and alone.tiers > 0 and alone.read_buffers > 0
    # the kept matrices are drawn from the in-flight ones (see the next test), the temporaries count 6
    assert training.batch_bytes == batch and training.in_flight == (6 + 6) * batch
    from diskgnn.store import READ_AHEAD  # one more read is queued ahead of the read stage
    assert training.tiers == alone.tiers
    assert training.read_buffers == (6 + READ_AHEAD) * alone.read_buffers // (4 + READ_AHEAD)
    assert 0 < training.process < 4 << 30 and alone.process == 0  # the trainer's runtimes count in its budget
    # the blocks (as the loader holds them) and map of the largest batch, for the 6 in flight and the 2
    # between loading and assembly; the runtimes' code pages
    from diskgnn.store import INDEX_BYTES_PER_EDGE, INDEX_BYTES_PER_OFFSET, RUNTIME_FILE_PAGES
    itemsize = np.dtype(packed.specs["maps"].dtype).itemsize
    index = max(sum(INDEX_BYTES_PER_OFFSET * b.indptr.size + INDEX_BYTES_PER_EDGE * b.indices.size
                    for b in samples.batch(p, i).blocks) + itemsize * samples.input_nodes(p, i).size
                for p in samples.parts for i in range(samples.num_batches(p)))
    assert training.batch_index_bytes == index > 0 and alone.indexes == 0
    assert training.runtime_files == RUNTIME_FILE_PAGES and alone.runtime_files == 0
    assert training.total == (alone.tiers + training.read_buffers + (6 + 6) * batch + 12345
                              + training.process + (6 + 2) * index + RUNTIME_FILE_PAGES)


def test_assembled_matrices_are_reused_once_released(packed, samples):
    """A CPU store hands out a kept matrix again once the last tensor on it is gone, never one still in use."""
    import gc
    part = samples.train_parts[0]
    with FeatureStore(packed, "cpu", memory_budget="1G") as store:
        first = store.assemble(part, 0)
        held = first.numpy().__array_interface__["data"][0]
        second = store.assemble(part, 1)  # the first is still alive: a different matrix
        assert second.numpy().__array_interface__["data"][0] != held
        want = store.lookup_nodes(part, 0).copy()
        del first
        gc.collect()
        third = store.assemble(part, 0)  # reuses the released matrix, content exact
        assert third.numpy().__array_interface__["data"][0] == held
        assert np.array_equal(third.numpy(), want)
        assert len(store._spare_outputs) <= SPARE_OUTPUTS


def test_kept_matrices_never_outnumber_the_most_in_use(packed, samples):
    """What the plan relies on: matrices alive (in use or kept) <= the most in use at once."""
    import gc
    part = samples.train_parts[0]
    with FeatureStore(packed, "cpu", memory_budget="1G") as store:
        most = 0
        for in_use in (1, 3, 1, 2, 4, 2):
            most = max(most, in_use)
            live = [store.assemble(part, i % 2) for i in range(in_use)]
            assert len(store._spare_outputs) + in_use <= most, "a matrix is made only when none is kept"
            del live
            gc.collect()
            assert len(store._spare_outputs) == min(most, SPARE_OUTPUTS)


def test_train_refuses_when_in_flight_batches_exceed_the_budget(packed, samples, tmp_path):
    import torch

    from diskgnn.launch import train
    from diskgnn.train import TrainConfig, training_memory
    cfg = TrainConfig(model="sage", epochs=1, hidden=16, device="cpu", threads=1,
                      checkpoint=str(tmp_path / "ck"), queue_depth=2)
    with FeatureStore(packed, "cpu", memory_budget="1G") as store:
        need = store.memory_plan(training=training_memory(cfg, packed.dataset, samples.config.num_layers,
                                                          torch.device("cpu")))
        alone = store.memory_plan()
    assert alone.total < need.total - 1
    # the tiers and read buffers fit, the batches in flight and the model do not
    FeatureStore(packed, "cpu", memory_budget=alone.total).close()
    with pytest.raises(MemoryBudgetError) as info:
        train(packed, cfg, memory_budget=need.total - 1)
    msg = str(info.value)
    for part in (str(packed.path), "4 batches in flight (queue depth 2 + 2;", "model and optimizer state",
                 "--host-cache", "--batch-size", "raise --memory-budget"):
        assert part in msg, part
    assert not (tmp_path / "ck").exists(), "refused before training started"
    # a deeper queue holds more batches: the budget that fits depth 2 refuses depth 6
    report = train(packed, cfg, memory_budget=need.total)
    assert report["epochs"] == 1 and (tmp_path / "ck").exists()
    deeper = TrainConfig(model="sage", epochs=1, hidden=16, device="cpu", threads=1, queue_depth=6)
    with pytest.raises(MemoryBudgetError, match=r"8 batches in flight \(queue depth 6 \+ 2;"):
        train(packed, deeper, memory_budget=need.total)


@pytest.mark.parametrize("v1", [False, True])
def test_cgroup_page_cache_counts_as_available(tmp_path, monkeypatch, v1):
    """Page cache charged to the cgroup is reclaimable: the default budget must not shrink to nothing when
    a previous step's files fill the cgroup's usage (it refused a 1 GiB-capped run with 16 MiB 'available')."""
    import diskgnn.capabilities as caps
    mib = 1 << 20
    if v1:
        (tmp_path / "memory.limit_in_bytes").write_text(str(1024 * mib))
        (tmp_path / "memory.usage_in_bytes").write_text(str(1000 * mib))
        (tmp_path / "memory.stat").write_text(f"cache 1\ntotal_inactive_file {600 * mib}\n"
                                              f"total_active_file {150 * mib}\ninactive_file 5\nactive_file 5\n")
    else:
        (tmp_path / "memory.max").write_text(str(1024 * mib))
        (tmp_path / "memory.current").write_text(str(1000 * mib))
        (tmp_path / "memory.stat").write_text(f"anon {250 * mib}\nfile {750 * mib}\ninactive_file {600 * mib}\n"
                                              f"active_file {150 * mib}\n")
    monkeypatch.setattr(caps, "_own_cgroup_paths", lambda: [str(tmp_path)])
    assert caps.cgroup_file_cache() == 750 * mib
    assert caps.available_memory() == min(774 * mib, __import__("psutil").virtual_memory().available)
    (tmp_path / "memory.stat").write_text("garbage\n")  # unreadable stats: the usage counts whole
    assert caps.available_memory() == min(24 * mib, __import__("psutil").virtual_memory().available)
