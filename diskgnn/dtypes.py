"""Conversions between the feature storage dtypes (fp32, fp16, bf16) shared by the packer and the store.

Rows are stored as float32, or as uint16 bit patterns for fp16 and bf16 (numpy
has no bf16). Widening to float32 is exact for both 16-bit formats; narrowing
rounds to nearest even (see :func:`diskgnn.dataset.convert_features`).
"""
from __future__ import annotations

import numpy as np

from diskgnn.dataset import bf16_bits_to_float32, convert_features


def convert_rows(rows: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Feature rows stored as ``src`` converted to the storage representation of ``dst``."""
    if src == dst:
        return rows
    if src == "fp32":
        wide = rows.view(np.float32) if rows.dtype != np.float32 else rows
    elif src == "fp16":
        wide = rows.astype(np.float32)
    else:
        wide = bf16_bits_to_float32(rows)
    return np.ascontiguousarray(convert_features(wide, dst))


def upcast_table(store_dtype: str) -> np.ndarray | None:
    """float32 value of every 16-bit pattern of ``store_dtype`` (None for fp32)."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    if store_dtype == "fp16":
        return bits.view(np.float16).astype(np.float32)
    if store_dtype == "bf16":
        return bf16_bits_to_float32(bits)
    return None


def to_float32(rows: np.ndarray, store_dtype: str) -> np.ndarray:
    """Stored rows widened to float32 exactly (the numpy reference of the kernels)."""
    if store_dtype == "bf16":
        return bf16_bits_to_float32(rows)
    return np.asarray(rows).astype(np.float32)
