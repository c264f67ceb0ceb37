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
_LABEL = struct.Struct("<qQ?qb?")
_TARGET = struct.Struct("<qQQ?H")
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
    """The merchant stage scored this transaction.

    Its :class:`LabelTarget` (key ``j<transaction_id>``) and its entry in the batch's
    verdicts blob (key ``o<rows>``, :func:`encode_verdicts`), read together by
    :func:`scored`.
    """

    body: int
    seq: int
    partition: int
    offset: int
    rows: int
    """Sequence number of the batch's first verdict: its rows blob (``r<rows>``) and its
    verdicts blob (``o<rows>``) hold this row at ``seq - rows``."""
    event_time: int
    familiar: bool
    """The card had used this merchant in the 30 days before (a regular customer)."""
    merchant_id: str
    output: bytes
    """The published verdict, byte for byte (re-emitted on every repeat)."""


#: One row of a verdicts blob: body digest, source partition and offset, and where its
#: verdict bytes end (from the start of the blob's verdict bytes).
_BLOB_ROW = struct.Struct("<QiqI")
_BLOB_DTYPE = np.dtype([("body", "<u8"), ("partition", "<i4"), ("offset", "<i8"),
                        ("end", "<u4")])
_BLOB_COUNT = struct.Struct("<I")
#: The fixed head of :meth:`LabelTarget.encode` as packed numpy records.
_TARGET_HEAD = np.dtype([("event_time", "<i8"), ("seq", "<u8"), ("rows", "<u8"),
                         ("familiar", "?"), ("merchant_len", "<u2")])
assert _BLOB_DTYPE.itemsize == _BLOB_ROW.size and _TARGET_HEAD.itemsize == _TARGET.size


def encode_verdicts(body: np.ndarray, partition: np.ndarray, offset: np.ndarray,
                    outputs: Sequence[bytes]) -> bytes:
    """The verdicts blob of a batch's ``n`` new verdicts (key ``o<first seq>``), in one pass.

    ``body`` uint64, ``partition`` and ``offset`` int arrays ``[n]``; ``outputs`` the
    verdict bytes. Layout: ``n`` (u32), ``n`` rows of :data:`_BLOB_ROW` (little-endian),
    then the verdict bytes one after another. One record per batch instead of one per
    transaction: the blob expires with the batch's last transaction horizon.

    >>> blob = encode_verdicts(np.array([9]), np.array([1]), np.array([70]), [b"{}"])
    >>> verdict_entry(blob, 0), verdict_entry(blob, 1)
    ((9, 1, 70, b'{}'), None)
    """
    n = len(outputs)
    rows = np.empty(n, _BLOB_DTYPE)
    rows["body"], rows["partition"], rows["offset"] = body, partition, offset
    rows["end"] = np.cumsum(np.fromiter(map(len, outputs), np.int64, n))
    return _BLOB_COUNT.pack(n) + rows.tobytes() + b"".join(outputs)


def verdict_entry(blob: bytes, index: int) -> tuple[int, int, int, bytes] | None:
    """``(body, partition, offset, verdict bytes)`` of row ``index`` of a verdicts blob.

    None past its end.
    """
    (n,) = _BLOB_COUNT.unpack_from(blob)
    if not 0 <= index < n:
        return None
    at = _BLOB_COUNT.size + index * _BLOB_ROW.size
    body, partition, offset, end = _BLOB_ROW.unpack_from(blob, at)
    start = _BLOB_ROW.unpack_from(blob, at - _BLOB_ROW.size)[3] if index else 0
    base = _BLOB_COUNT.size + n * _BLOB_ROW.size
    return body, partition, offset, blob[base + start:base + end]


def encode_targets(first_seq: int, event_time: np.ndarray, familiar: np.ndarray,
                   merchants: Sequence[bytes], gists: Sequence[bytes]) -> list[bytes]:
    """:meth:`LabelTarget.encode` of a batch's ``n`` new verdicts, byte for byte, in one pass.

    Row ``k`` has sequence number ``first_seq + k`` and its batch's blobs at ``first_seq``;
    ``event_time`` (ms) int and ``familiar`` bool arrays ``[n]``; ``merchants`` the UTF-8
    merchant ids; ``gists`` each verdict's :func:`verdict_gist`.

    >>> t = LabelTarget(1_700_000_000_000, 5, True, "m-1", b"{}", 5)
    >>> encode_targets(5, np.array([t.event_time]), np.array([True]), [b"m-1"], [b"{}"]
    ...                ) == [t.encode()]
    True
    """
    n = len(gists)
    heads = np.empty(n, _TARGET_HEAD)
    heads["event_time"], heads["familiar"] = event_time, familiar
    heads["seq"] = np.arange(first_seq, first_seq + n, dtype=np.uint64)
    heads["rows"] = first_seq
    heads["merchant_len"] = np.fromiter(map(len, merchants), np.int64, n)
    blob, size = heads.tobytes(), _TARGET_HEAD.itemsize
    return [blob[k * size:(k + 1) * size] + m + g
            for k, (m, g) in enumerate(zip(merchants, gists, strict=True))]


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
    """A scored transaction (key ``j<transaction_id>``): what a label needs, where its verdict is.

    Kept for the label horizon (``FRAUD_LABEL_HORIZON_DAYS``), well past its verdict, so a
    chargeback months late still joins: 27 bytes plus the merchant id and the verdict's
    gist (:class:`VerdictGist`, about 80 bytes of JSON). While its batch's verdicts blob
    (``o<rows>``) is kept (the transaction horizon) the two make its :class:`Verdict`
    (:func:`scored`): the store's record that the transaction id was scored.
    """

    event_time: int
    seq: int
    """Store sequence number of its verdict."""
    familiar: bool
    """The card had used this merchant in the 30 days before (a regular customer)."""
    merchant_id: str
    gist: bytes
    """:func:`verdict_gist` of the published verdict (decision and model, for feedback)."""
    rows: int = 0
    """Sequence number of its batch's first verdict (its blobs' key, see :class:`Verdict`)."""

    def encode(self) -> bytes:
        """27 bytes plus the merchant id and the gist."""
        merchant = self.merchant_id.encode()
        return _TARGET.pack(self.event_time, self.seq, self.rows, self.familiar,
                            len(merchant)) + merchant + self.gist

    @classmethod
    def decode(cls, raw: bytes) -> LabelTarget:
        """Inverse of :meth:`encode`."""
        event_time, seq, rows, familiar, n = _TARGET.unpack_from(raw)
        start = _TARGET.size + n
        return cls(event_time, seq, familiar, raw[_TARGET.size:start].decode(), raw[start:],
                   rows)

    def verdict(self) -> Verdict:
        """A :class:`Verdict` with what label feedback reads (``output`` is the gist)."""
        return Verdict(0, self.seq, -1, -1, self.rows, self.event_time, self.familiar,
                       self.merchant_id, self.gist)


def scored(target: LabelTarget, blob: bytes | None) -> Verdict | None:
    """The :class:`Verdict` of ``target`` with its entry of its batch's verdicts ``blob``.

    None when the blob is gone (past the transaction horizon: the id counts as new).
    """
    entry = verdict_entry(blob, target.seq - target.rows) if blob is not None else None
    if entry is None:
        return None
    body, partition, offset, output = entry
    return Verdict(body, target.seq, partition, offset, target.rows, target.event_time,
                   target.familiar, target.merchant_id, output)


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
