"""Numba readers and writers of the state byte layout (see :mod:`state.reference.codec`).

An encoded state is a packed little-endian record: a head of fixed fields, then
the bodies. Fields are not aligned, so each is read and written through a small
byte view.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def rd_i64(buf: np.ndarray, pos: int) -> int:  # pragma: no cover - numba
    """int64 at byte ``pos``."""
    return buf[pos:pos + 8].view(np.int64)[0]


@njit(cache=True, inline="always")
def rd_f64(buf: np.ndarray, pos: int) -> float:  # pragma: no cover - numba
    """float64 at byte ``pos``."""
    return buf[pos:pos + 8].view(np.float64)[0]


@njit(cache=True, inline="always")
def rd_u16(buf: np.ndarray, pos: int) -> int:  # pragma: no cover - numba
    """uint16 at byte ``pos``."""
    return int(buf[pos:pos + 2].view(np.uint16)[0])


@njit(cache=True, inline="always")
def wr_i64(buf: np.ndarray, pos: int, value: int) -> None:  # pragma: no cover - numba
    """Write int64 ``value`` at byte ``pos``."""
    buf[pos:pos + 8].view(np.int64)[0] = value


@njit(cache=True, inline="always")
def wr_f64(buf: np.ndarray, pos: int, value: float) -> None:  # pragma: no cover - numba
    """Write float64 ``value`` at byte ``pos``."""
    buf[pos:pos + 8].view(np.float64)[0] = value


@njit(cache=True, inline="always")
def wr_u16(buf: np.ndarray, pos: int, value: int) -> None:  # pragma: no cover - numba
    """Write uint16 ``value`` at byte ``pos``."""
    buf[pos:pos + 2].view(np.uint16)[0] = value


@njit(cache=True, inline="always")
def rd_f64s(buf: np.ndarray, pos: int, out: np.ndarray, count: int) -> int:  # pragma: no cover
    """``count`` float64 values from byte ``pos`` into ``out``; the next position."""
    src = buf[pos:pos + 8 * count].view(np.float64)
    for i in range(count):
        out[i] = src[i]
    return pos + 8 * count


@njit(cache=True, inline="always")
def wr_f64s(buf: np.ndarray, pos: int, src: np.ndarray, count: int) -> int:  # pragma: no cover
    """``count`` float64 values of ``src`` at byte ``pos``; the next position."""
    dst = buf[pos:pos + 8 * count].view(np.float64)
    for i in range(count):
        dst[i] = src[i]
    return pos + 8 * count


@njit(cache=True, inline="always")
def rd_pairs(buf: np.ndarray, pos: int, keys: np.ndarray, vals: np.ndarray,
             count: int) -> int:  # pragma: no cover - numba
    """A map stored as its keys then its values (int64); the next position."""
    src = buf[pos:pos + 16 * count].view(np.int64)
    for i in range(count):
        keys[i] = src[i]
        vals[i] = src[count + i]
    return pos + 16 * count


@njit(cache=True, inline="always")
def wr_pairs(buf: np.ndarray, pos: int, keys: np.ndarray, vals: np.ndarray,
             count: int) -> int:  # pragma: no cover - numba
    """Write a map as its keys then its values (int64); the next position."""
    dst = buf[pos:pos + 16 * count].view(np.int64)
    for i in range(count):
        dst[i] = keys[i]
        dst[count + i] = vals[i]
    return pos + 16 * count
