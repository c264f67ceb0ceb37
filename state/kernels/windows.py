"""Numba building blocks of the batch kernels: bucket windows and bounded maps as flat arrays.

Each function is the array form of one method of the per-transaction reference
(:mod:`state.reference.windows`), with the same arithmetic in the same order, so
the kernels give bit-identical floats (the tests hold them to it):

* a **window** is ``meta`` (int64 ``[2]``: end bucket, record count), ``rec``
  (float64 records of ``stride`` values, ``[bucket, count, ...]``, in insertion
  order) and ``sums`` (float64 ``[stride - 1]``, the window totals kept
  incrementally and re-folded left to right whenever buckets expire);
* a **map** is ``keys`` and ``vals`` (int64) in insertion order with its size in a
  one-element int64 array.

No clock, no IO: times are epoch milliseconds passed in.
"""

from __future__ import annotations

import numpy as np
from numba import njit

NO_TIME = -(1 << 62)
"""Sentinel for "nothing seen yet" (bucket indices and epoch-ms times)."""


@njit(cache=True, inline="always")
def advance(meta: np.ndarray, rec: np.ndarray, sums: np.ndarray, stride: int,
            bucket_ms: int, n_buckets: int, t_ms: int) -> None:  # pragma: no cover - numba
    """Move the window end to ``t_ms``'s bucket if later; drop expired buckets, re-fold."""
    b = t_ms // bucket_ms
    if b <= meta[0]:
        return
    cutoff = b - n_buckets
    everything = meta[0] <= cutoff
    meta[0] = b
    n = meta[1]
    if n == 0:
        return
    if everything:
        meta[1] = 0
        for f in range(stride - 1):
            sums[f] = 0.0
        return
    lowest = rec[0]
    for i in range(1, n):
        if rec[i * stride] < lowest:
            lowest = rec[i * stride]
    if lowest > cutoff:
        return
    j = 0
    for i in range(n):
        if rec[i * stride] > cutoff:
            if j != i:
                for f in range(stride):
                    rec[j * stride + f] = rec[i * stride + f]
            j += 1
    meta[1] = j
    for f in range(1, stride):
        acc = 0.0
        for i in range(j):
            acc += rec[i * stride + f]
        sums[f - 1] = acc


@njit(cache=True, inline="always")
def record(meta: np.ndarray, rec: np.ndarray, sums: np.ndarray, stride: int, bucket_ms: int,
           n_buckets: int, t_ms: int) -> int:  # pragma: no cover - numba
    """Index of ``t_ms``'s bucket record (appended as zeros if new); -1 if older than the window."""
    b = t_ms // bucket_ms
    if b > meta[0]:
        advance(meta, rec, sums, stride, bucket_ms, n_buckets, t_ms)
    elif b <= meta[0] - n_buckets:
        return -1
    n = meta[1]
    fb = float(b)
    if n > 0 and rec[(n - 1) * stride] == fb:
        return n - 1
    for i in range(n):
        if rec[i * stride] == fb:
            return i
    base = n * stride
    rec[base] = fb
    for f in range(1, stride):
        rec[base + f] = 0.0
    meta[1] = n + 1
    return n


@njit(cache=True, inline="always")
def add_amount(meta: np.ndarray, rec: np.ndarray, sums: np.ndarray, bucket_ms: int,
               n_buckets: int, t_ms: int, amount: float,
               small: float) -> None:  # pragma: no cover - numba
    """Add one event to a window of records ``[bucket, count, total, total_sq, small, rated]``.

    ``count`` counts every event, ``rated`` those with an amount (:func:`add_unrated`).
    """
    i = record(meta, rec, sums, 6, bucket_ms, n_buckets, t_ms)
    if i < 0:
        return
    sq = amount * amount
    base = i * 6
    rec[base + 1] += 1.0
    rec[base + 2] += amount
    rec[base + 3] += sq
    rec[base + 4] += small
    rec[base + 5] += 1.0
    sums[0] += 1.0
    sums[1] += amount
    sums[2] += sq
    sums[3] += small
    sums[4] += 1.0


@njit(cache=True, inline="always")
def add_unrated(meta: np.ndarray, rec: np.ndarray, sums: np.ndarray, bucket_ms: int,
                n_buckets: int, t_ms: int) -> None:  # pragma: no cover - numba
    """Count one event without an amount in an :func:`add_amount` window (sums unchanged)."""
    i = record(meta, rec, sums, 6, bucket_ms, n_buckets, t_ms)
    if i >= 0:
        rec[i * 6 + 1] += 1.0
        sums[0] += 1.0


@njit(cache=True, inline="always")
def add_count(meta: np.ndarray, rec: np.ndarray, sums: np.ndarray, bucket_ms: int,
              n_buckets: int, t_ms: int) -> None:  # pragma: no cover - numba
    """Count one event in a count window of records ``[bucket, count]``."""
    i = record(meta, rec, sums, 2, bucket_ms, n_buckets, t_ms)
    if i >= 0:
        rec[i * 2 + 1] += 1.0
        sums[0] += 1.0


@njit(cache=True, inline="always")
def count_between(meta: np.ndarray, rec: np.ndarray, stride: int, after: int,
                  upto: int) -> float:  # pragma: no cover - numba
    """Events in buckets ``after < bucket <= upto`` (summed in record order)."""
    out = 0.0
    for i in range(meta[1]):
        b = rec[i * stride]
        if b <= upto and b > after:
            out += rec[i * stride + 1]
    return out


@njit(cache=True, inline="always")
def find(keys: np.ndarray, size: int, key: int) -> int:  # pragma: no cover - numba
    """Position of ``key`` among the first ``size`` keys, or -1."""
    for i in range(size):
        if keys[i] == key:
            return i
    return -1


@njit(cache=True, inline="always")
def remove_at(keys: np.ndarray, vals: np.ndarray, size: int,
              i: int) -> None:  # pragma: no cover - numba
    """Delete entry ``i``, keeping the order of the others."""
    for j in range(i, size - 1):
        keys[j] = keys[j + 1]
        vals[j] = vals[j + 1]


@njit(cache=True, inline="always")
def last_seen_add(keys: np.ndarray, vals: np.ndarray, size: np.ndarray, cap: int,
                  horizon_ms: int, value: int, t_ms: int,
                  ref_ms: int) -> None:  # pragma: no cover - numba
    """Record ``value`` at ``t_ms`` in a latest-time map of at most ``cap`` values.

    When over ``cap``: values older than ``horizon_ms`` before ``ref_ms`` go first, then
    the least recently seen (ties: the smallest value).
    """
    n = size[0]
    i = find(keys, n, value)
    if i >= 0:
        if vals[i] < t_ms:
            vals[i] = t_ms
        return  # the size did not change
    keys[n] = value
    vals[n] = t_ms
    n += 1
    if n > cap:
        cutoff = ref_ms - horizon_ms
        j = 0
        for k in range(n):
            if vals[k] > cutoff:
                keys[j] = keys[k]
                vals[j] = vals[k]
                j += 1
        n = j
        while n > cap:
            worst = 0
            for k in range(1, n):
                if vals[k] < vals[worst] or (vals[k] == vals[worst] and keys[k] < keys[worst]):
                    worst = k
            remove_at(keys, vals, n, worst)
            n -= 1
    size[0] = n


@njit(cache=True, inline="always")
def count_after(vals: np.ndarray, size: int, since_ms: int) -> int:  # pragma: no cover - numba
    """How many of the first ``size`` values are after ``since_ms``."""
    c = 0
    for i in range(size):
        if vals[i] > since_ms:
            c += 1
    return c


@njit(cache=True, inline="always")
def bump(keys: np.ndarray, vals: np.ndarray, size: np.ndarray,
         key: int) -> None:  # pragma: no cover - numba
    """Count one more under ``key`` (appended when new)."""
    n = size[0]
    i = find(keys, n, key)
    if i >= 0:
        vals[i] += 1
    else:
        keys[n] = key
        vals[n] = 1
        size[0] = n + 1


@njit(cache=True, inline="always")
def drop_below(keys: np.ndarray, vals: np.ndarray, size: np.ndarray,
               cutoff: int) -> None:  # pragma: no cover - numba
    """Forget the keys at or below ``cutoff`` (the others keep their order)."""
    j = 0
    n = size[0]
    for i in range(n):
        if keys[i] > cutoff:
            keys[j] = keys[i]
            vals[j] = vals[i]
            j += 1
    size[0] = j


@njit(cache=True)
def group(keys: np.ndarray, order: np.ndarray,
          offsets: np.ndarray) -> None:  # pragma: no cover - numba
    """Counting sort: row indices by key (0..len(offsets)-2) into ``order``, stable."""
    for k in keys:
        offsets[k + 1] += 1
    for g in range(1, len(offsets)):
        offsets[g] += offsets[g - 1]
    fill = offsets[:-1].copy()
    for i in range(len(keys)):
        k = keys[i]
        order[fill[k]] = i
        fill[k] += 1
