"""numba's thread pool, started so that its idle threads sleep instead of spinning.

numba's parallel kernels (the store's gathers, the packer's scatters, the sampler)
run on its OpenMP threading layer where GNU OpenMP is installed. By default a GNU
OpenMP worker spins for about 2 ms after every parallel region before it sleeps, on
a core that the reader, the loader or torch's compute may want. Measured here: 300
parallel regions with 2 ms gaps between them took 0.70 s of CPU with spinning
workers and 0.04 s with sleeping ones. The loader's assembly calls its gathers back
to back, leaving no gaps, and its epochs measured the same either way; the saving is
for kernels with gaps between them (a trainer waiting on compute, the packer).

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
