"""Numba copies between the state word layout and the kernels' working arrays.

An encoded state (see :mod:`state.reference.codec`) is a run of little-endian 8-byte
words: a head (version, scalars, each aggregate's fixed fields) then the bodies. A
batch of states travels as one int64 array and a float64 view of the same memory,
so each field is one indexed load or store.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def load_floats(fwords: np.ndarray, pos: int, out: np.ndarray,
                count: int) -> int:  # pragma: no cover - numba
    """``count`` float64 words from ``pos`` into ``out``; the next position."""
    for i in range(count):
        out[i] = fwords[pos + i]
    return pos + count


@njit(cache=True, inline="always")
def store_floats(fwords: np.ndarray, pos: int, src: np.ndarray,
                 count: int) -> int:  # pragma: no cover - numba
    """``count`` float64 values of ``src`` at word ``pos``; the next position."""
    for i in range(count):
        fwords[pos + i] = src[i]
    return pos + count


@njit(cache=True, inline="always")
def load_pairs(words: np.ndarray, pos: int, keys: np.ndarray, vals: np.ndarray,
               count: int) -> int:  # pragma: no cover - numba
    """A map stored as its keys then its values (int64 words); the next position."""
    for i in range(count):
        keys[i] = words[pos + i]
        vals[i] = words[pos + count + i]
    return pos + 2 * count


@njit(cache=True, inline="always")
def store_pairs(words: np.ndarray, pos: int, keys: np.ndarray, vals: np.ndarray,
                count: int) -> int:  # pragma: no cover - numba
    """Write a map as its keys then its values (int64 words); the next position."""
    for i in range(count):
        words[pos + i] = keys[i]
        words[pos + count + i] = vals[i]
    return pos + 2 * count


# --- byte streams (the compact card record, :mod:`state.kernels.card`) -------------------
# ``buf`` is a uint8 view of the state words; ``bits`` a one-element float64 scratch array
# and ``ibits``/``bbits`` its int64 and uint8 views (a float's bit pattern without copies).


@njit(cache=True, inline="always")
def zigzag(value: int) -> np.uint64:  # pragma: no cover - numba
    """A signed int64 as an unsigned one with small magnitudes small (0, -1, 1 -> 0, 1, 2)."""
    v = np.int64(value)
    return np.uint64((v << np.int64(1)) ^ (v >> np.int64(63)))


@njit(cache=True, inline="always")
def unzigzag(value: np.uint64) -> np.int64:  # pragma: no cover - numba
    """Inverse of :func:`zigzag`."""
    return np.int64(value >> np.uint64(1)) ^ -np.int64(value & np.uint64(1))


@njit(cache=True, inline="always")
def put_varint(buf: np.ndarray, pos: int, value: np.uint64) -> int:  # pragma: no cover
    """LEB128: seven bits a byte, low first; the next position."""
    v = np.uint64(value)
    while v >= np.uint64(0x80):
        buf[pos] = np.uint8((v & np.uint64(0x7F)) | np.uint64(0x80))
        v >>= np.uint64(7)
        pos += 1
    buf[pos] = np.uint8(v)
    return pos + 1


@njit(cache=True, inline="always")
def get_varint(buf: np.ndarray, pos: int, limit: int) -> tuple[np.uint64, int]:  # pragma: no cover
    """A :func:`put_varint` value at ``pos`` (not past ``limit``) and the next position."""
    out = np.uint64(0)
    shift = np.uint64(0)
    while True:
        if pos >= limit or shift > np.uint64(63):
            raise ValueError("card state is corrupt (a number runs past its end)")
        b = np.uint64(buf[pos])
        pos += 1
        out |= (b & np.uint64(0x7F)) << shift
        if b < np.uint64(0x80):
            return out, pos
        shift += np.uint64(7)


@njit(cache=True, inline="always")
def put_f64(buf: np.ndarray, pos: int, value: float, bits: np.ndarray,
            bbits: np.ndarray) -> int:  # pragma: no cover - numba
    """The 8 bytes of a float64 (little-endian); the next position."""
    bits[0] = value
    for i in range(8):
        buf[pos + i] = bbits[i]
    return pos + 8


@njit(cache=True, inline="always")
def get_f64(buf: np.ndarray, pos: int, limit: int, bits: np.ndarray,
            bbits: np.ndarray) -> float:  # pragma: no cover - numba
    """The float64 at ``pos`` (not past ``limit``)."""
    if pos + 8 > limit:
        raise ValueError("card state is corrupt (a number runs past its end)")
    for i in range(8):
        bbits[i] = buf[pos + i]
    return bits[0]


@njit(cache=True, inline="always")
def same_bits(a: float, b: float, bits: np.ndarray, ibits: np.ndarray) -> bool:  # pragma: no cover
    """Whether two float64 values have the same bit pattern (tells -0.0 from 0.0)."""
    bits[0] = a
    x = ibits[0]
    bits[0] = b
    return bool(x == ibits[0])
