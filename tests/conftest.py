"""Shared fixtures: tiny odd-sized datasets made by the project's own generator."""
from __future__ import annotations

import importlib.util

import pytest

HAS_DGL = importlib.util.find_spec("dgl") is not None
requires_dgl = pytest.mark.skipif(not HAS_DGL, reason="DGL is not installed (reference stack only)")


def pytest_configure(config):
    config.addinivalue_line("markers", "dgl: needs the DGL reference stack")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 1,237-node synthetic dataset with 13-d fp32 features and 5 classes."""
    from diskgnn.synth import SynthConfig, synthesize
    cfg = SynthConfig(nodes=1237, avg_degree=6, dim=13, classes=5, seed=3,
                      train_fraction=0.3, val_fraction=0.1, test_fraction=0.1)
    return synthesize(cfg, tmp_path_factory.mktemp("tiny") / "ds")
