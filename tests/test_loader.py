"""The public loader: diskgnn.open(...).loader(...) yields exact batches through the out-of-core pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import diskgnn
from diskgnn.errors import ConfigError
from diskgnn.packing import PackConfig, pack
from diskgnn.sampling import SampleConfig, presample


@pytest.fixture(scope="module")
def packed_dir(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    s = presample(tiny_dataset.path, root / "samples", SampleConfig(fanouts=(3, 4), batch_size=71, epochs=2, seed=3))
    pack(s.path, root / "packed", PackConfig(host_cache="7%"))
    return root / "packed"


def test_open_and_iterate_exact_batches(packed_dir, tiny_dataset):
    with diskgnn.open(packed_dir, device="cpu", threads=1) as data:
        assert (data.feat_dim, data.num_classes, data.num_layers) == (13, 5, 2)
        assert data.train_parts == ["train/0", "train/1"] and "PackedData(" in repr(data)
        loader = data.loader("train", epoch=1)
        assert len(loader) == data.num_batches("train") and "train/1" in repr(loader)
        seen = []
        for batch in loader:
            assert batch.part == "train/1"
            assert batch._input_nodes is None, "the loader reads only the seeds; the input nodes on first use"
            want = np.asarray(tiny_dataset.features[batch.input_nodes])
            assert torch.equal(batch.x, torch.from_numpy(want)), "bit for bit features[input_nodes]"
            assert torch.equal(batch.y, torch.from_numpy(np.asarray(tiny_dataset.labels[batch.seeds]).astype(np.int64)))
            assert batch.blocks[0].num_src == len(batch.input_nodes) and batch.blocks[-1].num_dst == len(batch.seeds)
            seen.append(batch.index)
        assert sorted(seen) == list(range(len(loader))) and seen != sorted(seen), "every batch once, shuffled"
        assert loader.stats()["compute"]["items"] == len(loader)
        # the trainer's order for (seed, epoch), evaluation in order
        from diskgnn.loader import epoch_permutation
        assert [i for _, i in data.order("train", epoch=1, seed=5)] == \
            epoch_permutation(5, 1, data.num_batches("train")).tolist()
        assert [b.index for b in data.loader("val")] == list(range(data.num_batches("val")))


def test_leaving_a_loop_early_stops_the_pipeline(packed_dir):
    import threading
    with diskgnn.open(packed_dir, device="cpu", threads=1) as data:
        before = threading.active_count()
        for batch in data.loader("test"):
            break
        del batch
        import gc
        gc.collect()
        assert threading.active_count() <= before + 1  # the store's reader pool may have started one
        assert len(list(data.loader("test"))) == data.num_batches("test"), "a new pass starts from scratch"


def test_bad_part_and_names(packed_dir):
    with diskgnn.open(packed_dir, device="cpu") as data:
        with pytest.raises(ConfigError, match="no part 'train/9'"):
            data.loader("train/9")
    with pytest.raises(AttributeError):
        diskgnn.no_such_name  # noqa: B018


def _readme_block(heading: str) -> str:
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index(heading)
    code = text.index("```python\n", start) + len("```python\n")
    return text[code:text.index("```", code)]


def test_readme_custom_loop_runs_as_written(packed_dir, tmp_path, monkeypatch):
    """The README's plain-torch loop, copied verbatim, trains on a packed directory."""
    code = _readme_block("### A training loop of your own")
    assert "diskgnn.open(" in code and "data.loader(" in code
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "packed").symlink_to(packed_dir)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documented example itself
    assert scope["accuracy"] > 0.3, "it learned something"


def test_readme_pyg_loop_runs_as_written(packed_dir):
    pytest.importorskip("torch_geometric", reason="torch-geometric is not installed (pip install '.[pyg]')")
    code = _readme_block("With PyG, each block becomes")
    with diskgnn.open(packed_dir, device="cpu", threads=1) as data:
        scope = {"data": data, "torch": torch, "F": torch.nn.functional}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documented example itself
        assert torch.isfinite(scope["loss"])


def test_recheck_reads_reaches_the_store_from_the_loader_and_the_command_line(packed_dir):
    with diskgnn.open(packed_dir, device="cpu", threads=1) as data:
        assert data.store.recheck_reads is False, "by default each packed run is checked on its first read"
    with diskgnn.open(packed_dir, device="cpu", threads=1, recheck_reads=True) as data:
        assert data.store.recheck_reads is True
        assert sum(1 for _ in data.loader("val")) == data.num_batches("val")
    from diskgnn.tools.cli import build_parser
    from diskgnn.train import TrainConfig
    args = build_parser().parse_args(["train", str(packed_dir), "--recheck-reads"])
    assert TrainConfig.from_cli(args).recheck_reads is True
    assert TrainConfig.from_cli(build_parser().parse_args(["train", str(packed_dir)])).recheck_reads is False
