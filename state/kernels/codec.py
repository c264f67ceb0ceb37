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
