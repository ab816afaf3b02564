"""Parsing of human byte sizes ("512M", "2G", "10%", "3x")."""
from __future__ import annotations

import re

from diskgnn.errors import ConfigError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
          "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
          "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z%]*)\s*$")


def parse_size(text: str | int | float, *, total: int | None = None, name: str = "size") -> int:
    """Parse ``text`` into bytes.

    Accepts plain bytes (``4096``), binary suffixes (``512M``, ``2G``, ``1.5GiB``)
    and, when ``total`` is given, a percentage of it (``10%``).
    """
    if isinstance(text, (int, float)):
        if text < 0:
            raise ConfigError(f"{name} must not be negative, got {text}")
        return int(text)
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"{name}: cannot parse {text!r}; use bytes with an optional suffix "
                          f"(512M, 2G) or a percentage of the feature bytes (10%)")
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit == "%":
        if total is None:
            raise ConfigError(f"{name}: a percentage ({text!r}) is not allowed here; give bytes (512M, 2G)")
        if value > 100:
            raise ConfigError(f"{name}: {text!r} is more than 100%")
        return int(total * value / 100.0)
    if unit not in _UNITS:
        raise ConfigError(f"{name}: unknown unit {m.group(2)!r} in {text!r}; use K, M, G or T (powers of 1024)")
    return int(value * _UNITS[unit])


def parse_factor(text: str | float, *, name: str = "factor") -> float:
    """Parse a multiple such as ``3x`` or ``2.5`` into a float."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip().lower()
        if s.endswith("x"):
            s = s[:-1]
        try:
            value = float(s)
        except ValueError:
            raise ConfigError(f"{name}: cannot parse {text!r}; use a multiple such as 3x or 2.5") from None
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {text!r}")
    return value


def format_bytes(n: float) -> str:
    """Format a byte count with a binary suffix, e.g. ``1.50 GiB``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"
