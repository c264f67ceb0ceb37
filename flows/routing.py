"""Bytewax routing keys for card and merchant shards that spread evenly over the workers.

Bytewax sends a keyed item to worker ``hash(key) % workers`` (Rust's ``DefaultHasher``,
SipHash-1-3, over the key string; bytewax ``src/timely.rs`` ``PartitionFn``). The plain
keys ``"0"`` ... ``"7"`` land unevenly: with 2 workers one worker owned 6 of 8 shards,
with 8 workers one owned 4 and three owned none. :data:`ROUTE_KEYS` gives shard ``s`` a key
``"<s>.<n>"`` whose hash is ``s`` modulo 64, so shard ``s`` runs on worker
``s % workers`` for every worker count that divides 64 (1, 2, 4, 8, 16, 32, 64): 8 shards
on 2, 4 or 8 processes are spread exactly evenly. The keys were found by routing
candidates through Bytewax itself; ``tests/deploy/test_scaling.py`` routes them again
on every run, so a Bytewax upgrade that changes its hash fails the suite instead of
skewing the cluster.

A shard number of 64 or more falls back to ``"<s>"`` (routed by hash, unevenly).
A key is also the Bytewax state key of its shard's step: never change one for an
existing recovery directory.
"""

from __future__ import annotations

#: ``ROUTE_KEYS[s]``: the routing key of shard ``s`` (``hash % 64 == s``).
ROUTE_KEYS: tuple[str, ...] = (
    "0.38", "1.16", "2.2", "3.44", "4.30", "5.12", "6.20", "7.10", "8.52", "9.18", "10.32",
    "11.40", "12.84", "13.94", "14.75", "15.45", "16.96", "17.41", "18.131", "19.12", "20.49",
    "21.5", "22.45", "23.33", "24.70", "25.74", "26.65", "27.27", "28.72", "29.13", "30.2",
    "31.101", "32.208", "33.15", "34.6", "35.0", "36.35", "37.8", "38.38", "39.13", "40.6",
    "41.62", "42.42", "43.142", "44.7", "45.136", "46.121", "47.151", "48.66", "49.68", "50.9",
    "51.49", "52.16", "53.25", "54.70", "55.16", "56.134", "57.14", "58.49", "59.69", "60.128",
    "61.52", "62.60", "63.129",
)


def shard_key(shard: int) -> str:
    """The Bytewax key of card or merchant shard ``shard`` (>= 0); see :data:`ROUTE_KEYS`."""
    return ROUTE_KEYS[shard] if shard < len(ROUTE_KEYS) else str(shard)
