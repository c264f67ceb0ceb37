"""Partitioners for offline replay, so training can mirror the stream's card partitioning.

``murmur2_partition`` is the Java-client default partitioner for keyed records
(librdkafka's ``murmur2_random``). Use whichever partitioner produced the
``transactions`` topic.

>>> murmur2(b"21") - (1 << 32)
-973932308
>>> murmur2_partition("card-1", 1)
0
"""

from __future__ import annotations

import functools

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
