"""Find Bytewax routing keys whose hash is the shard number modulo M (``flows.routing``).

    python -m devkit.route_keys [--shards 1024] [--modulus 720720]

Prints ``n`` of each shard's key ``"<s>.<n>"``: the first ``n`` for which Bytewax's
hash of the key (:func:`bytewax_hash`) is ``s`` modulo ``--modulus``, as the tuple
``flows/routing.py`` keeps. Expect ``modulus`` tries per shard (720,720 for 1,024
shards: about 40 s on one core, in a numba kernel).

:func:`bytewax_hash` is what Bytewax computes for a ``str`` state key: Rust's
``DefaultHasher`` (SipHash-1-3, keys 0 and 0; Aumasson and Bernstein, "SipHash: a fast
short-input PRF", 2012, with 1 compression and 3 finalisation rounds) over the key's
UTF-8 bytes followed by ``0xff`` (Rust's ``Hash for str``). It reproduces every key of
routing v1, which was found by routing candidates through Bytewax itself, and
``tests/deploy/test_scaling.py`` routes the tables through Bytewax again.
"""

from __future__ import annotations

import argparse

import numpy as np
from numba import njit, uint64

_MASK = (1 << 64) - 1
_INIT = (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573)


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def _round(v: list[int]) -> None:
    v[0] = (v[0] + v[1]) & _MASK
    v[1] = _rotl(v[1], 13) ^ v[0]
    v[0] = _rotl(v[0], 32)
    v[2] = (v[2] + v[3]) & _MASK
    v[3] = _rotl(v[3], 16) ^ v[2]
    v[0] = (v[0] + v[3]) & _MASK
    v[3] = _rotl(v[3], 21) ^ v[0]
    v[2] = (v[2] + v[1]) & _MASK
    v[1] = _rotl(v[1], 17) ^ v[2]
    v[2] = _rotl(v[2], 32)


def siphash13(data: bytes) -> int:
    """SipHash-1-3 of ``data`` with zero keys (Rust's ``DefaultHasher``), unsigned 64-bit."""
    v = list(_INIT)
    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v[3] ^= m
        _round(v)
        v[0] ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v[3] ^= b
    _round(v)
    v[0] ^= b
    v[2] ^= 0xFF
    for _ in range(3):
        _round(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def bytewax_hash(key: str) -> int:
    """The hash Bytewax routes a ``str`` state key by (worker = hash % workers).

    >>> bytewax_hash("0.38") % 64, bytewax_hash("7.10") % 64
    (0, 7)
    """
    return siphash13(key.encode() + b"\xff")


@njit(cache=True)
def _rotl_u(x: np.uint64, b: int) -> np.uint64:  # pragma: no cover - numba
    return (x << uint64(b)) | (x >> uint64(64 - b))


@njit(cache=True, inline="always")
def _sipround(v0: np.uint64, v1: np.uint64, v2: np.uint64, v3: np.uint64
              ) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:  # pragma: no cover
    v0 += v1
    v1 = _rotl_u(v1, 13) ^ v0
    v0 = _rotl_u(v0, 32)
    v2 += v3
    v3 = _rotl_u(v3, 16) ^ v2
    v0 += v3
    v3 = _rotl_u(v3, 21) ^ v0
    v2 += v1
    v1 = _rotl_u(v1, 17) ^ v2
    v2 = _rotl_u(v2, 32)
    return v0, v1, v2, v3


@njit(cache=True)
def _sip13(buf: np.ndarray, n: int) -> np.uint64:  # pragma: no cover - numba
    """:func:`siphash13` of ``buf[:n]``, compiled."""
    v0, v1 = uint64(_INIT[0]), uint64(_INIT[1])
    v2, v3 = uint64(_INIT[2]), uint64(_INIT[3])
    end = n - n % 8
    b = uint64(n & 0xFF) << uint64(56)
    for j in range(n - end):
        b |= uint64(buf[end + j]) << uint64(8 * j)
    for block in range(end // 8 + 1):
        if block < end // 8:
            m = uint64(0)
            for j in range(8):
                m |= uint64(buf[block * 8 + j]) << uint64(8 * j)
        else:
            m = b
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    v2 ^= uint64(0xFF)
    for _ in range(3):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


@njit(cache=True)
def _digits(buf: np.ndarray, at: int, x: int) -> int:  # pragma: no cover - numba
    """Write ``x`` in decimal at ``buf[at:]``; return the position after it."""
    width = 1
    while x >= 10 ** width:
        width += 1
    for j in range(width - 1, -1, -1):
        buf[at + j] = 48 + x % 10
        x //= 10
    return at + width


@njit(cache=True)
def find_suffix(shard: int, modulus: int) -> int:  # pragma: no cover - numba
    """The first ``n`` whose key ``"<shard>.<n>"`` hashes to ``shard`` modulo ``modulus``."""
    buf = np.zeros(48, np.uint8)
    p = _digits(buf, 0, shard)
    buf[p] = 46  # "."
    n = 0
    while True:
        q = _digits(buf, p + 1, n)
        buf[q] = 255  # Rust's Hash for str ends with 0xff
        if _sip13(buf, q + 1) % uint64(modulus) == uint64(shard):
            return n
        n += 1


def main(argv: list[str] | None = None) -> int:
    """Print the key suffixes of ``--shards`` shards, checked with :func:`bytewax_hash`."""
    parser = argparse.ArgumentParser(prog="python -m devkit.route_keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=1024)
    parser.add_argument("--modulus", type=int, default=720_720,
                        help="lcm of the worker counts to spread evenly over (default: 1-16)")
    args = parser.parse_args(argv)
    out = []
    for s in range(args.shards):
        n = find_suffix(s, args.modulus)
        assert bytewax_hash(f"{s}.{n}") % args.modulus == s
        out.append(n)
    print(", ".join(map(str, out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
