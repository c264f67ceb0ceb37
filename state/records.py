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
from collections.abc import Sequence
from typing import NamedTuple

import msgspec
import numpy as np

from topics.contracts import Label, Transaction

_SEEN = struct.Struct("<QQiqQ")
_VERDICT = struct.Struct("<QQiqQq?H")
_LABEL = struct.Struct("<qQ?qb?")
_TARGET = struct.Struct("<qQ?H")
_encode = msgspec.json.Encoder().encode


def body_digest(txn: Transaction) -> int:
    """64-bit digest of ``txn``'s canonical JSON (field order and formatting normalised)."""
    return int.from_bytes(hashlib.blake2b(_encode(txn), digest_size=8).digest(), "little")


def body_digests(txns: Sequence[Transaction]) -> np.ndarray:
    """uint64 ``[n]``: :func:`body_digest` of each of ``txns`` (one array, no int per row).

    >>> from topics.contracts import Transaction
    >>> t = Transaction(transaction_id="t", card_id="c", merchant_id="m", amount=1.0,
    ...                 currency="EUR", event_time=1_700_000_000_000)
    >>> int(body_digests([t])[0]) == body_digest(t)
    True
    """
    blake2b = hashlib.blake2b
    return np.frombuffer(
        b"".join([blake2b(raw, digest_size=8).digest() for raw in map(_encode, txns)]),
        dtype="<u8").astype(np.uint64, copy=False)


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


#: The fixed head of :meth:`Verdict.encode` (``_VERDICT``) and :meth:`LabelTarget.encode`
#: (``_TARGET``) as packed numpy records: a batch's heads are written in one call.
_VERDICT_HEAD = np.dtype([("body", "<u8"), ("seq", "<u8"), ("partition", "<i4"),
                          ("offset", "<i8"), ("rows", "<u8"), ("event_time", "<i8"),
                          ("familiar", "?"), ("merchant_len", "<u2")])
_TARGET_HEAD = np.dtype([("event_time", "<i8"), ("seq", "<u8"), ("familiar", "?"),
                         ("merchant_len", "<u2")])
assert _VERDICT_HEAD.itemsize == _VERDICT.size and _TARGET_HEAD.itemsize == _TARGET.size


def _joined(heads: np.ndarray, merchants: Sequence[bytes], tails: Sequence[bytes]
            ) -> list[bytes]:
    blob, size = heads.tobytes(), heads.dtype.itemsize
    return [blob[k * size:(k + 1) * size] + m + t
            for k, (m, t) in enumerate(zip(merchants, tails, strict=True))]


def encode_verdicts(body: np.ndarray, first_seq: int, partition: np.ndarray,
                    offset: np.ndarray, event_time: np.ndarray, familiar: np.ndarray,
                    merchants: Sequence[bytes], outputs: Sequence[bytes]) -> list[bytes]:
    """:meth:`Verdict.encode` of a batch's ``n`` new verdicts, byte for byte, in one pass.

    Row ``k`` has sequence number ``first_seq + k`` and its rows blob at ``first_seq``;
    ``body`` uint64, ``partition``, ``offset``, ``event_time`` (ms) int arrays and
    ``familiar`` bool, each ``[n]``; ``merchants`` the UTF-8 merchant ids.

    >>> v = Verdict(9, 5, 1, 70, 5, 1_700_000_000_000, True, "m-1", b"{}")
    >>> encode_verdicts(np.array([9]), 5, np.array([1]), np.array([70]),
    ...                 np.array([v.event_time]), np.array([True]), [b"m-1"], [b"{}"]
    ...                 ) == [v.encode()]
    True
    """
    n = len(outputs)
    heads = np.empty(n, _VERDICT_HEAD)
    heads["body"], heads["partition"], heads["offset"] = body, partition, offset
    heads["seq"] = np.arange(first_seq, first_seq + n, dtype=np.uint64)
    heads["rows"], heads["event_time"], heads["familiar"] = first_seq, event_time, familiar
    heads["merchant_len"] = np.fromiter(map(len, merchants), np.int64, n)
    return _joined(heads, merchants, outputs)


def encode_targets(first_seq: int, event_time: np.ndarray, familiar: np.ndarray,
                   merchants: Sequence[bytes], gists: Sequence[bytes]) -> list[bytes]:
    """:meth:`LabelTarget.encode` of a batch's new verdicts (see :func:`encode_verdicts`)."""
    n = len(gists)
    heads = np.empty(n, _TARGET_HEAD)
    heads["event_time"], heads["familiar"] = event_time, familiar
    heads["seq"] = np.arange(first_seq, first_seq + n, dtype=np.uint64)
    heads["merchant_len"] = np.fromiter(map(len, merchants), np.int64, n)
    return _joined(heads, merchants, gists)


class VerdictGist(msgspec.Struct, omit_defaults=True, gc=False):
    """What label feedback needs of a published verdict (fields of ``Prediction``)."""

    score: float
    decision: str
    model_version: str
    shadow_score: float | None = None
    shadow_decision: str | None = None
    shadow_model_version: str | None = None


_gist_decode = msgspec.json.Decoder(VerdictGist).decode


def verdict_gist(output: bytes) -> bytes:
    """The compact JSON of a verdict's :class:`VerdictGist` (the bytes unchanged if not one)."""
    try:
        return _encode(_gist_decode(output))
    except msgspec.DecodeError:
        return output


class LabelTarget(NamedTuple):
    """What a label needs of a scored transaction (key ``j<transaction_id>``).

    Kept for the label horizon (``FRAUD_LABEL_HORIZON_DAYS``), well past the stored
    verdict, so a chargeback months late still joins: about 20 bytes plus the merchant
    id and the verdict's gist (:class:`VerdictGist`, about 80 bytes of JSON).
    """

    event_time: int
    seq: int
    """Store sequence number of its verdict."""
    familiar: bool
    """The card had used this merchant in the 30 days before (a regular customer)."""
    merchant_id: str
    gist: bytes
    """:func:`verdict_gist` of the published verdict (decision and model, for feedback)."""

    def encode(self) -> bytes:
        """19 bytes plus the merchant id and the gist."""
        merchant = self.merchant_id.encode()
        return _TARGET.pack(self.event_time, self.seq, self.familiar, len(merchant)) + (
            merchant + self.gist)

    @classmethod
    def decode(cls, raw: bytes) -> LabelTarget:
        """Inverse of :meth:`encode`."""
        event_time, seq, familiar, n = _TARGET.unpack_from(raw)
        start = _TARGET.size + n
        return cls(event_time, seq, familiar, raw[_TARGET.size:start].decode(), raw[start:])

    def verdict(self) -> Verdict:
        """A :class:`Verdict` with what label feedback reads (``output`` is the gist)."""
        return Verdict(0, self.seq, -1, -1, 0, self.event_time, self.familiar,
                       self.merchant_id, self.gist)


NO_LABEL = -1
"""``LabelMark.base`` of a transaction that had no label at the last recovery snapshot."""


class LabelMark(NamedTuple):
    """The label in force for a scored transaction (key ``l<transaction_id>``).

    See :mod:`state.labels` for which label is in force.
    """

    label_time: int
    """ms, of the label in force."""
    seq: int
    """Store sequence number of the change that wrote this mark."""
    is_fraud: bool
    since: int
    """ms: when its truth took effect for the merchant (:attr:`state.labels.Current.since`)."""
    base: int
    """The truth in force at the last recovery snapshot before this mark was written
    (1 fraud, 0 not fraud, :data:`NO_LABEL`): what label feedback replaces when a
    crash makes this label's feedback be counted again."""
    at_scoring: bool
    """The label waited for its transaction and joined when the transaction was scored."""

    def encode(self) -> bytes:
        """27 bytes."""
        return _LABEL.pack(*self)

    @classmethod
    def decode(cls, raw: bytes) -> LabelMark:
        """Inverse of :meth:`encode`."""
        return cls(*_LABEL.unpack(raw))


class PendingLabel(msgspec.Struct, array_like=True, gc=False):
    """A label waiting for its transaction (key ``p<transaction_id>``): the one that wins so far.

    ``partition``, ``offset`` and ``record_ms`` (its Kafka timestamp) say where it is on
    ``labels``, for the dead letter when it expires.
    """

    label: Label
    partition: int
    offset: int
    record_ms: int
    first_ms: int
    """``label_time`` of the first label of this id that waited (the wait starts then)."""
    seq: int
    """Store sequence number of the change that wrote it."""

    def encode(self) -> bytes:
        """Compact JSON (an array)."""
        return _encode(self)

    @classmethod
    def decode(cls, raw: bytes) -> PendingLabel:
        """Inverse of :meth:`encode`."""
        return _pending_decode(raw)


_pending_decode = msgspec.json.Decoder(PendingLabel).decode


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
