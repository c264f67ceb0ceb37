"""Partitioners for offline replay, so training can mirror the stream's card partitioning.

``murmur2_partition`` is the Java-client default partitioner for keyed records
(librdkafka's ``murmur2_random``). Use whichever partitioner produced the
``transactions`` topic.

>>> murmur2(b"21") - (1 << 32)
-973932308
>>> murmur2_partition("card-1", 1)
0
>>> murmur2_partitions(["card-1", "21", "merchant-42"], 8).tolist() == [
...     murmur2_partition(k, 8) for k in ["card-1", "21", "merchant-42"]]
True
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from numba import njit

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` as an unsigned 32-bit int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    for i in range(0, length - length % 4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra, index = length % 4, length & ~3
    if extra >= 3:
        h ^= data[index + 2] << 16
    if extra >= 2:
        h ^= data[index + 1] << 8
    if extra >= 1:
        h ^= data[index]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@functools.lru_cache(maxsize=1 << 17)
def murmur2_partition(key: str, n_partitions: int) -> int:
    """Partition of a UTF-8 record key under the Java-compatible murmur2 partitioner.

    Cached: the flow asks for the same cards and merchants again and again.
    """
    return (murmur2(key.encode()) & 0x7FFFFFFF) % n_partitions


@njit(cache=True)
def _murmur2_batch(data: np.ndarray, offsets: np.ndarray, n_partitions: int,
                   out: np.ndarray) -> None:  # pragma: no cover - numba
    m = 0x5BD1E995
    mask = 0xFFFFFFFF
    for j in range(len(offsets) - 1):
        a, b = offsets[j], offsets[j + 1]
        length = b - a
        h = (0x9747B28C ^ length) & mask
        end = a + length - length % 4
        for i in range(a, end, 4):
            k = (np.int64(data[i]) | (np.int64(data[i + 1]) << 8)
                 | (np.int64(data[i + 2]) << 16) | (np.int64(data[i + 3]) << 24))
            k = (k * m) & mask
            k ^= k >> 24
            k = (k * m) & mask
            h = ((h * m) & mask) ^ k
        extra = length % 4
        if extra >= 3:
            h ^= np.int64(data[end + 2]) << 16
        if extra >= 2:
            h ^= np.int64(data[end + 1]) << 8
        if extra >= 1:
            h ^= np.int64(data[end])
            h = (h * m) & mask
        h ^= h >> 13
        h = (h * m) & mask
        h ^= h >> 15
        out[j] = (h & 0x7FFFFFFF) % n_partitions


def murmur2_partitions(key_list: Sequence[str], n_partitions: int) -> np.ndarray:
    """:func:`murmur2_partition` of every key (int64 array), in one compiled pass.

    One partition (the flow's default single card or merchant shard): zeros, no hashing.
    """
    if n_partitions == 1:
        return np.zeros(len(key_list), dtype=np.int64)
    raw = [k.encode() for k in key_list]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, raw), np.int64, len(raw)), out=offsets[1:])
    out = np.empty(len(raw), dtype=np.int64)
    _murmur2_batch(np.frombuffer(b"".join(raw), dtype=np.uint8), offsets, n_partitions, out)
    return out
