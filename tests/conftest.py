"""Shared fixtures: tiny odd-sized datasets made by the project's own generator."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
import textwrap

import pytest

HAS_DGL = importlib.util.find_spec("dgl") is not None
requires_dgl = pytest.mark.skipif(not HAS_DGL, reason="DGL is not installed (reference stack only)")
HAS_PYG = importlib.util.find_spec("torch_geometric") is not None
requires_pyg = pytest.mark.skipif(not HAS_PYG, reason="PyTorch Geometric is not installed (pip install "
                                                      "'diskgnn[pyg]'; the core CI venv has it)")


def run_cli(*argv) -> tuple[int, str]:
    """Run ``diskgnn ARGV -q`` in this process: (exit code, what it wrote to stderr)."""
    from diskgnn.tools.cli import main as cli_main
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = cli_main([str(a) for a in argv] + ["-q"])
    return rc, err.getvalue()


_KILL_AFTER_JOURNALS = """
import os, signal, sys
import {module} as journaling
real_journal, left = journaling.write_resume_journal, int(sys.argv[1])

def journal_then_die(*args, **kwargs):
    global left
    real_journal(*args, **kwargs)
    left -= 1
    if left == 0:
        os.kill(os.getpid(), signal.SIGKILL)
journaling.write_resume_journal = journal_then_die
"""


def run_killed(code: str, journals: int, module: str = "diskgnn.dataset") -> None:
    """Run ``code`` in a fresh interpreter that is SIGKILLed right after its ``journals``-th journal.

    ``module`` is where the step looks up ``write_resume_journal``; it is patched in that subprocess
    only (the library has no test hook).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    script = _KILL_AFTER_JOURNALS.format(module=module) + textwrap.dedent(code)
    r = subprocess.run([sys.executable, "-c", script, str(journals)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]


def pytest_configure(config):
    config.addinivalue_line("markers", "dgl: needs the DGL reference stack")
    config.addinivalue_line("markers", "pyg: needs PyTorch Geometric")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 1,237-node synthetic dataset with 13-d fp32 features and 5 classes."""
    from diskgnn.synth import SynthConfig, synthesize
    cfg = SynthConfig(nodes=1237, avg_degree=6, dim=13, classes=5, seed=3,
                      train_fraction=0.3, val_fraction=0.1, test_fraction=0.1)
    return synthesize(cfg, tmp_path_factory.mktemp("tiny") / "ds")
