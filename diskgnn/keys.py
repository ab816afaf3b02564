"""The random keys of presampling: every draw depends only on (seed, part, batch, ...), never on threads.

Shared by the node-classification sampler (:mod:`diskgnn.sampling`) and the link
sampler (:mod:`diskgnn.link`), so both draw the same way from the same keys.
"""
from __future__ import annotations

import numpy as np

EVAL_PARTS = ("val", "test")


def part_code(part: str) -> int:
    """The integer that keys a part's random draws (train epoch e -> e; val, test -> 2**32, 2**32+1)."""
    if part.startswith("train/"):
        return int(part.split("/", 1)[1])
    return (1 << 32) + EVAL_PARTS.index(part)


def batch_key(seed: int, part: str, index: int) -> np.uint64:
    """The random key of batch ``index`` (global number) of ``part``."""
    from diskgnn.kernels.rng import mix_key
    return np.uint64(mix_key(np.uint64(mix_key(np.uint64(seed), np.uint64(part_code(part)))), np.uint64(index)))
