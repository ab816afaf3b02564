"""``--memory-budget``: one resolver for every step (prepare, sample, pack, train), and what each step plans with it."""
import pytest

from diskgnn.distributed import rank_memory_budget
from diskgnn.errors import ConfigError, MemoryBudgetError
from diskgnn.ingest import PrepareConfig
from diskgnn.memory import MIN_BUDGET, resolve_memory_budget
from diskgnn.packing import PackConfig, pack
from diskgnn.sampling import SampleConfig, presample, resolve_mmap_topology, topology_bytes
from diskgnn.store import FeatureStore

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
    out = pack(samples.path, tmp_path / "p", PackConfig(host_cache="5%"))
    assert out.stats["memory_budget_bytes"] == int(fake_available * 0.7)
