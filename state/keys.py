r"""RocksDB key encoding of the state stores: the only place that knows key layout.

Keys are a one-byte prefix followed by a UTF-8 id or big-endian unsigned
integers (so days and sequence numbers sort numerically).

Card store (:mod:`state.card_store`), one per card shard:

* ``c<card_id>`` -> encoded :class:`~state.card.CardState`
* ``s<transaction_id>`` -> :class:`~state.records.Seen` (the transaction was applied)

Merchant store (:mod:`state.merchant_store`), one per merchant shard:

* ``m<merchant_id>`` -> encoded :class:`~state.merchant.MerchantState`
* ``v<transaction_id>`` -> :class:`~state.records.Verdict` (its verdict bytes and more)
* ``r<seq:u64>`` -> :class:`~state.records.Recent` (features of a recent verdict, for
  recounting drift after a crash)
* ``l<transaction_id>`` -> :class:`~state.records.LabelMark` (the first label applied)
* ``p<transaction_id>`` -> a label waiting for its transaction (JSON of the contract)

Both:

* ``x<expiry day:u32><prefix><id>`` -> empty: delete ``<prefix><id>`` once the
  store's event time reaches that UTC day (one range per day)
* ``~meta/<name>`` -> store metadata (format, identity, sequence number)

>>> seq_key(258)
b'r\x00\x00\x00\x00\x00\x00\x01\x02'
>>> expiry_key(20_000, SEEN, "t1")
b'x\x00\x00N st1'
"""

from __future__ import annotations

import struct

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
DAY_MS = 86_400_000

CARD = b"c"
SEEN = b"s"
MERCHANT = b"m"
VERDICT = b"v"
RECENT = b"r"
LABEL = b"l"
PENDING = b"p"
EXPIRY = b"x"
META = b"~meta/"

FORMAT_KEY = META + b"format"
IDENTITY_KEY = META + b"identity"
SEQ_KEY = META + b"seq"
EXPIRED_KEY = META + b"expired_day"


def card_key(card_id: str) -> bytes:
    """Key of a card's state."""
    return CARD + card_id.encode()


def merchant_key(merchant_id: str) -> bytes:
    """Key of a merchant's state."""
    return MERCHANT + merchant_id.encode()


def txn_key(prefix: bytes, transaction_id: str) -> bytes:
    """Key of a per-transaction record (``SEEN``, ``VERDICT``, ``LABEL`` or ``PENDING``)."""
    return prefix + transaction_id.encode()


def seq_key(seq: int) -> bytes:
    """Key of the recent record written at sequence number ``seq``."""
    return RECENT + _U64.pack(seq)


def expiry_key(day: int, prefix: bytes, transaction_id: str) -> bytes:
    """Index entry that deletes ``txn_key(prefix, transaction_id)`` on UTC ``day``."""
    return EXPIRY + _U32.pack(day) + prefix + transaction_id.encode()


def expiry_day_key(day: int) -> bytes:
    """First index key of UTC ``day`` (for scans and range deletes)."""
    return EXPIRY + _U32.pack(day)


def expired_target(index_key: bytes) -> bytes:
    """The key an expiry index entry deletes."""
    return index_key[1 + _U32.size:]


def pack_u64(value: int) -> bytes:
    """Big-endian unsigned 64-bit value."""
    return _U64.pack(value)


def unpack_u64(buf: bytes) -> int:
    """Inverse of :func:`pack_u64`."""
    return int(_U64.unpack(buf)[0])
