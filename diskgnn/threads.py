"""numba's thread pool, started so that its idle threads sleep instead of spinning.

numba's parallel kernels (the store's gathers, the packer's scatters, the sampler)
run on its OpenMP threading layer where GNU OpenMP is installed. By default a GNU
OpenMP worker spins for a while after every parallel region before it sleeps. The
loader calls a gather per batch from its assembly thread while the read, load and
compute threads want the same cores; the spinning then takes their CPU. On 2 cores,
3-layer batches at scale m, the assembly's threads used 8 s of CPU per epoch with
spinning and 6 s with sleeping workers, for the same gathers.

:func:`start_numba_threads` starts the pool with ``OMP_WAIT_POLICY=PASSIVE`` in the
environment for just that moment: numba's OpenMP runtime (``libgomp.so.1``) reads it
when it is loaded, and torch, which loads its own copy of the runtime, is not
affected. A user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` wins, and a pool
that is already running is left as it is.
"""
from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()
_started = False


def start_numba_threads() -> None:
    """Start numba's thread pool once, with sleeping idle threads (see the module's doc)."""
    global _started
    if _started:
        return
    with _lock:
        if _started:
            return
        try:
            from numba.np.ufunc import parallel
            launch = parallel._launch_threads
            running = bool(parallel._is_initialized)
        except (ImportError, AttributeError):  # another numba: it starts its pool on first use, as it likes
            _started = True
            return
        if running or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
            launch()
            _started = True
            return
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        try:
            launch()
        finally:
            os.environ.pop("OMP_WAIT_POLICY", None)
        _started = True
        log.debug("numba's thread pool started (%s layer), idle threads sleep", _layer())


def _layer() -> str:
    import numba
    try:
        return numba.threading_layer()
    except ValueError:
        return "unknown"
