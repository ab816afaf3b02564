"""Kernels that parse text edge lists (bytes in, integer arrays out)."""
import numba
import numpy as np

PARSE_OK = 0
PARSE_NOT_INTEGER = 1
PARSE_NEGATIVE = 2
PARSE_ONE_COLUMN = 3
PARSE_TOO_LARGE = 4

_LIMIT = 1 << 62


@numba.njit(cache=True, nogil=True, inline="always")
def _is_blank(c):
    return c == 32 or c == 9 or c == 13


@numba.njit(cache=True, nogil=True, inline="always")
def _is_digit(c):
    return 48 <= c <= 57


@numba.njit(cache=True, nogil=True)
def _parse_id(buf, i):
    """Parse a non-negative decimal integer at ``buf[i]``; returns (value, next index, error)."""
    n = buf.shape[0]
    if i >= n or buf[i] == 10:
        return 0, i, PARSE_ONE_COLUMN
    c = buf[i]
    if c == 45:  # '-'
        return 0, i, PARSE_NEGATIVE
    if not _is_digit(c):
        return 0, i, PARSE_NOT_INTEGER
    value = 0
    start = i
    while i < n and _is_digit(buf[i]):
        value = value * 10 + (buf[i] - 48)
        if value >= _LIMIT:
            return 0, start, PARSE_TOO_LARGE
        i += 1
    if i < n and not (_is_blank(buf[i]) or buf[i] == 10 or buf[i] == 44):
        return 0, start, PARSE_NOT_INTEGER  # "1.5", "2e3", "12abc"
    return value, i, PARSE_OK


@numba.njit(cache=True, nogil=True)
def parse_edge_lines(buf, out_src, out_dst):
    """Parse lines ``src dst [ignored columns]`` from a byte buffer.

    buf: uint8[n], whole lines (the last may lack its newline). Columns are
    separated by spaces, tabs or one comma (with optional blanks around it);
    ``\\r`` counts as a blank. Blank lines and lines whose first non-blank byte
    is ``#`` or ``%`` are skipped. out_src, out_dst: int64[>= number of lines].
    Returns ``(count, error, error_pos)``: ``count`` edges written, ``error``
    one of the PARSE_* codes (0 = none) and ``error_pos`` the byte offset of
    the offending token (parsing stops at the first error).
    """
    n = buf.shape[0]
    i = 0
    k = 0
    while i < n:
        while i < n and _is_blank(buf[i]):
            i += 1
        if i >= n:
            break
        c = buf[i]
        if c == 10:
            i += 1
            continue
        if c == 35 or c == 37:  # '#' or '%': a comment line
            while i < n and buf[i] != 10:
                i += 1
            continue
        line_start = i
        s, i, err = _parse_id(buf, i)
        if err != PARSE_OK:
            return k, err, i
        while i < n and _is_blank(buf[i]):
            i += 1
        if i < n and buf[i] == 44:  # ','
            i += 1
            while i < n and _is_blank(buf[i]):
                i += 1
        d, i, err = _parse_id(buf, i)
        if err != PARSE_OK:
            return k, err, (line_start if err == PARSE_ONE_COLUMN else i)
        out_src[k] = s
        out_dst[k] = d
        k += 1
        while i < n and buf[i] != 10:  # further columns (weights, timestamps) are ignored
            i += 1
    return k, PARSE_OK, -1


@numba.njit(cache=True, nogil=True)
def _write_int(out, pos, value):
    if value == 0:
        out[pos] = 48
        return pos + 1
    digits = 0
    v = value
    while v > 0:
        digits += 1
        v //= 10
    end = pos + digits
    v = value
    for j in range(end - 1, pos - 1, -1):
        out[j] = 48 + v % 10
        v //= 10
    return end


@numba.njit(cache=True, nogil=True)
def format_edge_lines(src, dst, out):
    """Write one ``"src dst\\n"`` line per edge into ``out`` (the inverse of :func:`parse_edge_lines`).

    src, dst: non-negative int[E]; out: uint8[>= 40 * E]. Returns the bytes written.
    """
    pos = 0
    for e in range(src.shape[0]):
        pos = _write_int(out, pos, src[e])
        out[pos] = 32
        pos = _write_int(out, pos + 1, dst[e])
        out[pos] = 10
        pos += 1
    return pos
