r"""RocksDB key encoding of the state stores: the only place that knows key layout.

Keys are a one-byte prefix followed by a UTF-8 id or big-endian unsigned
integers (so days and sequence numbers sort numerically).

Card store (:mod:`state.card_store`), one per card shard:

* ``t<16 bytes>`` -> the stored card state (:mod:`state.kernels.card`) of a card whose id
  is a PAN token (``tok_`` and 32 lowercase hex digits, :data:`topics.pan.TOKEN_PREFIX`):
  the token's 128 bits, 17 bytes instead of 37 (:func:`card_key`)
* ``c<card_id>`` -> the stored card state of any other card id
* ``s<transaction_id>`` -> :class:`~state.records.Seen` (the transaction was applied)
* ``r<seq:u64>`` -> the card rows (float32) of the batch whose first change was ``seq``

Merchant store (:mod:`state.merchant_store`), one per merchant shard:

* ``m<merchant_id>`` -> encoded :class:`~state.merchant.MerchantState`
* ``j<transaction_id>`` -> :class:`~state.records.LabelTarget` (the transaction was
  scored: what a label needs of it, where its verdict is; kept for the label horizon)
* ``o<seq:u64>`` -> the verdicts of the batch whose first verdict was ``seq``
  (:func:`~state.records.encode_verdicts`: body digests, source offsets, verdict bytes;
  kept for the transaction horizon)
* ``r<seq:u64>`` -> the feature rows (float32) of the batch whose first verdict was ``seq``
  (for recounting drift after a crash)
* ``l<transaction_id>`` -> :class:`~state.records.LabelMark` (the label in force of a
  scored transaction; kept as long as its ``j`` record)
* ``p<transaction_id>`` -> :class:`~state.records.PendingLabel` (the label of a transaction
  not known (yet), waiting for it)
* ``e<seq:u64>`` -> the pending labels that expired in the batch whose first change was
  ``seq`` (each ``u16`` length, then the record), kept until the next recovery snapshot
  so their dead letters are sent again after a crash

Both:

* ``x<expiry day:u32><seq:u64>`` -> the keys (each ``u16`` length, then the key) a
  batch wrote that expire on that UTC day: deleted once the store's event time
  reaches it (one index record per batch and day)
* ``~meta/<name>`` -> store metadata (format, identity, sequence number)

>>> seq_key(258)
b'r\x00\x00\x00\x00\x00\x00\x01\x02'
>>> expiry_key(20_000, 3)
b'x\x00\x00N \x00\x00\x00\x00\x00\x00\x00\x03'
>>> unpack_keys(pack_keys([b"st1", b"st22"]))
[b'st1', b'st22']
>>> card_key("tok_000102030405060708090a0b0c0d0e0f")
b't\x00\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b\x0c\r\x0e\x0f'
>>> card_key("tok_000102030405060708090A0B0C0D0E0F"), card_key("4111-x")
(b'ctok_000102030405060708090A0B0C0D0E0F', b'c4111-x')
>>> card_id(card_key("tok_000102030405060708090a0b0c0d0e0f"))
'tok_000102030405060708090a0b0c0d0e0f'
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable

import numpy as np

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
DAY_MS = 86_400_000

CARD = b"c"
CARD_TOKEN = b"t"
_TOKEN = "tok_"  # topics.pan.TOKEN_PREFIX (not imported: keys stay free of topic code)
_TOKEN_RE = re.compile(_TOKEN + "([0-9a-f]{32})")
SEEN = b"s"
MERCHANT = b"m"
VERDICTS = b"o"
RECENT = b"r"
LABEL = b"l"
TARGET = b"j"
PENDING = b"p"
EXPIRED_LABELS = b"e"
EXPIRY = b"x"
META = b"~meta/"

FORMAT_KEY = META + b"format"
IDENTITY_KEY = META + b"identity"
SEQ_KEY = META + b"seq"
EXPIRED_KEY = META + b"expired_day"


def card_key(card_id: str) -> bytes:
    """Key of a card's state: ``t`` and the 16 bytes of a PAN token, else ``c`` and the id.

    Only the canonical token form (lowercase hex, as :meth:`topics.pan.PanKey.token`
    writes it) is packed, so every id has one key and no two ids share one.
    """
    token = _TOKEN_RE.fullmatch(card_id)
    if token is not None:
        return CARD_TOKEN + bytes.fromhex(token.group(1))
    return CARD + card_id.encode()


def card_keys(card_ids: Iterable[str]) -> list[bytes]:
    """:func:`card_key` of each id."""
    return [card_key(c) for c in card_ids]


def card_id(key: bytes) -> str:
    """Inverse of :func:`card_key`."""
    if key[:1] == CARD_TOKEN:
        return _TOKEN + key[1:].hex()
    return key[1:].decode()


def merchant_key(merchant_id: str) -> bytes:
    """Key of a merchant's state."""
    return MERCHANT + merchant_id.encode()


def txn_key(prefix: bytes, transaction_id: str) -> bytes:
    """Key of a per-transaction record (``SEEN``, ``TARGET``, ``LABEL`` or ``PENDING``)."""
    return prefix + transaction_id.encode()


def seq_key(seq: int) -> bytes:
    """Key of the rows blob of the batch whose first change was sequence number ``seq``."""
    return RECENT + _U64.pack(seq)


def verdicts_key(seq: int) -> bytes:
    """Key of the verdicts blob of the batch whose first verdict was ``seq``."""
    return VERDICTS + _U64.pack(seq)


def expired_labels_key(seq: int) -> bytes:
    """Key of the pending labels that expired in the batch whose first change was ``seq``."""
    return EXPIRED_LABELS + _U64.pack(seq)


def expiry_key(day: int, seq: int) -> bytes:
    """Index record of the keys a batch (first change ``seq``) wrote that expire on ``day``."""
    return EXPIRY + _U32.pack(day) + _U64.pack(seq)


def pack_keys(key_list: list[bytes]) -> bytes:
    """Keys as one value: each as a big-endian ``u16`` length and its bytes.

    Keys of one length (a batch's transaction ids usually are) are packed with numpy
    in one pass. Raises ``struct.error`` for a key of 65,536 bytes or more.

    >>> unpack_keys(pack_keys([b"ab", b"", b"c"]))
    [b'ab', b'', b'c']
    >>> pack_keys([b"ab"] * 8) == bytes([0, 2]) + b"ab" + pack_keys([b"ab"] * 7)
    True
    """
    n = len(key_list)
    size = len(key_list[0]) if n else 0
    if n < 8 or size > 0xFFFF or any(len(k) != size for k in key_list):
        return b"".join(_U16.pack(len(k)) + k for k in key_list)
    joined = b"".join(key_list)
    out = np.empty((n, size + 2), np.uint8)
    out[:, :2] = np.frombuffer(_U16.pack(size), np.uint8)
    out[:, 2:] = np.frombuffer(joined, np.uint8).reshape(n, size)
    return out.tobytes()


def unpack_keys(value: bytes) -> list[bytes]:
    """Inverse of :func:`pack_keys`."""
    out, pos = [], 0
    while pos < len(value):
        (n,) = _U16.unpack_from(value, pos)
        out.append(value[pos + 2:pos + 2 + n])
        pos += 2 + n
    return out


def expiry_day_key(day: int) -> bytes:
    """First index key of UTC ``day`` (for scans and range deletes)."""
    return EXPIRY + _U32.pack(day)


def expiry_day(index_key: bytes) -> int:
    """The UTC day of an expiry index record."""
    return int(_U32.unpack_from(index_key, 1)[0])


def pack_u64(value: int) -> bytes:
    """Big-endian unsigned 64-bit value."""
    return _U64.pack(value)


def unpack_u64(buf: bytes) -> int:
    """Inverse of :func:`pack_u64`."""
    return int(_U64.unpack(buf)[0])
