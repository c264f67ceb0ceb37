r"""RocksDB key encoding for one partition store: the only place that knows key layout.

Keys are a one-byte prefix followed by a UTF-8 id or a big-endian unsigned
integer (so offsets and times sort numerically):

* ``c<card_id>`` -> encoded :class:`~state.card.CardState`
* ``m<merchant_id>`` -> encoded :class:`~state.merchant.MerchantState`
* ``o<offset:u64>`` -> float32 feature vector emitted for that input offset
* ``l<transaction_id>`` -> label_time (u64) of the first label applied for it
* ``v<event day:u32><transaction_id>`` -> :class:`~state.verdicts.VerdictRecord`
  (day-bucketed so expiry is one ``delete_range`` per day)
* ``~meta/<name>`` -> store metadata (last applied offset, versions)

>>> offset_key(258)
b'o\x00\x00\x00\x00\x00\x00\x01\x02'
"""

from __future__ import annotations

import struct

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
DAY_MS = 86_400_000

CARD = b"c"
MERCHANT = b"m"
OUTPUT = b"o"
LABEL = b"l"
VERDICT = b"v"
META = b"~meta/"

LAST_OFFSET_KEY = META + b"last_offset"
FORMAT_KEY = META + b"format"


def card_key(card_id: str) -> bytes:
    """Key of a card's state."""
    return CARD + card_id.encode()


def merchant_key(merchant_id: str) -> bytes:
    """Key of a merchant's state."""
    return MERCHANT + merchant_id.encode()


def offset_key(offset: int) -> bytes:
    """Key of the output stored for an input offset."""
    return OUTPUT + _U64.pack(offset)


def label_key(transaction_id: str) -> bytes:
    """Key marking a label as applied."""
    return LABEL + transaction_id.encode()


def verdict_key(event_day: int, transaction_id: str) -> bytes:
    """Key of the verdict given to a transaction whose event time falls on ``event_day``."""
    return VERDICT + _U32.pack(event_day) + transaction_id.encode()


def verdict_day_key(event_day: int) -> bytes:
    """First verdict key of ``event_day`` (for range deletes)."""
    return VERDICT + _U32.pack(event_day)


def prefix_end(prefix: bytes) -> bytes:
    """Smallest key after every key starting with the one-byte ``prefix``."""
    return bytes([prefix[0] + 1])


def pack_u64(value: int) -> bytes:
    """Big-endian unsigned 64-bit value."""
    return _U64.pack(value)


def unpack_u64(buf: bytes) -> int:
    """Inverse of :func:`pack_u64`."""
    return int(_U64.unpack(buf)[0])
