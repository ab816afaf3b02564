"""numba's thread pool starts with sleeping idle threads, and the process environment is left as it was."""
import os
import subprocess
import sys

import pytest

SCRIPT = """
import os
from diskgnn.threads import start_numba_threads
start_numba_threads()
start_numba_threads()  # a second call is a no-op
from numba.np.ufunc import parallel
print(parallel._is_initialized, os.environ.get("OMP_WAIT_POLICY"))
"""


def _run(extra_env: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(extra_env)
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def test_the_pool_starts_and_the_environment_is_restored():
    assert _run({}) == "True None"


@pytest.mark.parametrize("name,value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "1000")])
def test_a_users_own_setting_is_kept(name, value):
    out = _run({name: value})
    assert out.startswith("True ")
    assert out.split()[1] == (value if name == "OMP_WAIT_POLICY" else "None")
