"""Counter-based random numbers for kernels.

Each draw is a pure function of (key, counter), so results do not depend on
which thread handles which item: parallel kernels stay deterministic.
"""
import numba
import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


@numba.njit(cache=True, nogil=True, inline="always")
def splitmix64(x):
    """One step of splitmix64 over a uint64; returns a well-mixed uint64."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
    z = x
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True, inline="always")
def mix_key(a, b):
    """Combine two integers into one uint64 key."""
    return splitmix64(np.uint64(a) ^ (splitmix64(np.uint64(b)) * np.uint64(0x2545F4914F6CDD1D) & _MASK))


@numba.njit(cache=True, nogil=True, inline="always")
def uniform01(key, counter):
    """A float64 uniform in [0, 1) from (key, counter)."""
    z = splitmix64(key ^ (np.uint64(counter) * np.uint64(0xD1B54A32D192ED03) & _MASK))
    return (z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True, nogil=True, inline="always")
def randint_below(key, counter, n):
    """An integer uniform in [0, n) from (key, counter) (n > 0)."""
    z = splitmix64(key ^ (np.uint64(counter) * np.uint64(0xD1B54A32D192ED03) & _MASK))
    return np.int64(z % np.uint64(n))
