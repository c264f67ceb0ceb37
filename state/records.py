"""Per-transaction records of the stores: what was applied, when, and what it produced.

Each record carries the store's sequence number at the time it was written
(``seq``): the store counts every change it applies, and Bytewax's recovery
snapshot keeps the count. After a crash, a record written after the snapshot the
flow resumed from (``resumed < seq <= opened``) is a **replay** of lost work (its
in-memory effects, e.g. drift counts, must be redone); any other repeat is a
**re-delivery** by the producer (nothing to redo). See :class:`Incarnation`.

``body`` is a 64-bit BLAKE2b digest of the transaction's canonical JSON, so a
repeated transaction id with another body is told apart from a re-delivery.

>>> s = Seen(body=7, seq=3, partition=2, offset=40, rows=1)
>>> Seen.decode(s.encode()) == s
True
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

import msgspec

from topics.contracts import Transaction

_SEEN = struct.Struct("<QQiqQ")
_VERDICT = struct.Struct("<QQiqQq?H")
_LABEL = struct.Struct("<qQ?")
_encode = msgspec.json.Encoder().encode


def body_digest(txn: Transaction) -> int:
    """64-bit digest of ``txn``'s canonical JSON (field order and formatting normalised)."""
    return int.from_bytes(hashlib.blake2b(_encode(txn), digest_size=8).digest(), "little")


class Seen(NamedTuple):
    """The card stage applied this transaction (key ``s<transaction_id>``)."""

    body: int
    seq: int
    partition: int
    offset: int
    rows: int
    """Sequence number of the batch whose rows blob (``r<rows>``) holds this row."""

    def encode(self) -> bytes:
        """36 bytes."""
        return _SEEN.pack(*self)

    @classmethod
    def decode(cls, raw: bytes) -> Seen:
        """Inverse of :meth:`encode`."""
        return cls(*_SEEN.unpack(raw))


class Verdict(NamedTuple):
    """The merchant stage scored this transaction (key ``v<transaction_id>``)."""

    body: int
    seq: int
    partition: int
    offset: int
    rows: int
    """Sequence number of the batch whose rows blob (``r<rows>``) holds this row."""
    event_time: int
    familiar: bool
    """The card had used this merchant in the 30 days before (a regular customer)."""
    merchant_id: str
    output: bytes
    """The published verdict, byte for byte (re-emitted on every repeat)."""

    def encode(self) -> bytes:
        """47 bytes plus the merchant id and the verdict."""
        merchant = self.merchant_id.encode()
        return _VERDICT.pack(*self[:7], len(merchant)) + merchant + self.output

    @classmethod
    def decode(cls, raw: bytes) -> Verdict:
        """Inverse of :meth:`encode`."""
        body, seq, partition, offset, rows, event_time, familiar, n = _VERDICT.unpack_from(raw)
        start = _VERDICT.size + n
        return cls(body, seq, partition, offset, rows, event_time, familiar,
                   raw[_VERDICT.size:start].decode(), raw[start:])


class LabelMark(NamedTuple):
    """The first label applied for a transaction id (key ``l<transaction_id>``)."""

    label_time: int
    seq: int
    is_fraud: bool

    def encode(self) -> bytes:
        """17 bytes."""
        return _LABEL.pack(*self)

    @classmethod
    def decode(cls, raw: bytes) -> LabelMark:
        """Inverse of :meth:`encode`."""
        return cls(*_LABEL.unpack(raw))


class Incarnation(NamedTuple):
    """Where this process started: the snapshot it resumed from and the store it opened.

    ``resumed``: the store's sequence number in Bytewax's snapshot (0: fresh start);
    ``opened``: the store's sequence number when this process opened it.
    """

    resumed: int
    opened: int

    def is_replay(self, seq: int) -> bool:
        """Whether a record written at ``seq`` is lost work being replayed after a crash."""
        return self.resumed < seq <= self.opened
