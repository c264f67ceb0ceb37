"""One batch's changes to a store: the transaction layer both stores write through.

A :class:`StoreTransaction` collects everything a batch changes (sequence numbers,
puts, deletes, expiry index records, a bounded sweep of due records, pruning of old
rows blobs) and commits it in one RocksDB ``WriteBatch`` together with the new
sequence number, or not at all; a store with a changelog (:mod:`state.changelog`)
then hands the same changes to it, key by key, the sequence number last. Nothing in
the store's memory moves before :meth:`StoreTransaction.commit` succeeds, so a batch
that fails leaves neither disk nor memory half-applied (the flow then stops and
resumes from its snapshot).

**Expiry.** Records that live for a horizon (transaction ids, stored verdicts,
pending labels) are listed under the UTC day they expire, one index record per
batch and day (``x<day><seq>``, :func:`state.keys.expiry_key`); :meth:`sweep`
deletes what is due, a bounded number of keys per batch, so a day's expiry is
spread over many batches. The sweep's clock is the day of the last recovery
snapshot, so a replay from it never finds a record gone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from state import keys
from state.changelog import Change
from state.db import StateDB


class StoreTransaction:
    """The changes of one batch to ``db``; :meth:`commit` writes them atomically."""

    __slots__ = ("db", "_batch", "seq", "_expiry", "_sweep", "_pruned_to", "_today", "_log")

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._batch = db.batch()
        self._log: list[Change] | None = [] if db.changelog is not None else None
        """What the batch changes, for the store's changelog (None: no changelog)."""
        self.seq = db.seq
        """The last sequence number handed out so far (committed with the batch)."""
        self._expiry: dict[int, list[bytes]] = {}
        self._sweep: tuple[int, bytes | None] | None = None
        self._pruned_to = db.pruned_to
        self._today = db.today

    def next_seqs(self, count: int) -> int:
        """Hand out ``count`` sequence numbers; returns the first."""
        first = self.seq + 1
        self.seq += count
        return first

    def put(self, key: bytes, value: bytes) -> None:
        """Write ``value`` under ``key``."""
        self._batch.put(key, value)
        if self._log is not None:
            self._log.append((key, value))

    def put_many(self, key_list: Sequence[bytes], values: Sequence[bytes]) -> None:
        """:meth:`put` each of ``values`` under the key at the same position."""
        put = self._batch.put
        for key, value in zip(key_list, values, strict=True):
            put(key, value)
        if self._log is not None:
            self._log += zip(key_list, values, strict=True)

    def delete(self, key: bytes) -> None:
        """Delete ``key``."""
        self._batch.delete(key)
        if self._log is not None:
            self._log.append((key, None))

    def expire(self, day: int, key: bytes) -> None:
        """Delete ``key`` once the store's event time reaches UTC ``day``."""
        self._expiry.setdefault(max(day, self.db.expired_day), []).append(key)

    def saw(self, event_day: int) -> None:
        """The batch applied events of UTC ``event_day`` (the sweep's clock, see :meth:`sweep`)."""
        if event_day > self._today:
            self._today = event_day

    def expire_many(self, days: np.ndarray, key_list: list[bytes]) -> None:
        """:meth:`expire` for each key with its day (``days``: int array, one per key)."""
        first = int(days[0]) if len(key_list) else 0
        if len(key_list) == 1 or (len(key_list) and (days == first).all()):
            self._expiry.setdefault(max(first, self.db.expired_day), []).extend(key_list)
            return
        for day, key in zip(days.tolist(), key_list, strict=True):
            self.expire(day, key)

    def sweep(self, count: bytes = keys.PENDING) -> list[bytes]:
        """Delete records due before the last snapshot's UTC day (up to ``expiry_step``).

        Returns the deleted keys under the ``count`` prefix that were still present
        (labels that waited in vain for their transaction).
        """
        db = self.db
        today = db.safe[1]
        if today <= db.expired_day:
            return []
        start = db.sweep_from or keys.expiry_day_key(db.expired_day)
        stop = keys.expiry_day_key(today)
        budget = db.options.expiry_step
        counted: list[bytes] = []
        for index_key in db.db.keys(from_key=start):
            if not isinstance(index_key, bytes) or index_key >= stop:
                break
            targets = keys.unpack_keys(db.get(index_key) or b"")
            for target in targets:
                if target[:1] == count and db.get(target) is not None:
                    counted.append(target)
                self.delete(target)
            self.delete(index_key)
            budget -= max(1, len(targets))
            if budget <= 0:
                self._sweep = (db.expired_day, index_key + b"\x00")
                return counted
        self._sweep = (today, None)
        self.put(keys.EXPIRED_KEY, keys.pack_u64(today))
        return counted

    def prune_rows(self) -> None:
        """Drop rows blobs older than the last ``recent_rows`` changes (range deletes).

        Blobs written after the last recovery snapshot are always kept.
        """
        db = self.db
        keep_from = min(self.seq - db.options.recent_rows + 1, db.safe[0] + 1)
        if keep_from - self._pruned_to > db.options.recent_rows // 4:
            start, stop = keys.seq_key(self._pruned_to), keys.seq_key(keep_from)
            self._batch.delete_range(start, stop)
            if self._log is not None:  # a range delete reaches the changelog key by key
                for key in db.db.keys(from_key=start):
                    if not isinstance(key, bytes) or key >= stop:
                        break
                    self._log.append((key, None))
            self._pruned_to = keep_from

    def commit(self) -> None:
        """Write everything with the new sequence number, atomically; then update memory.

        Raises :class:`~state.errors.StoreIOError` when RocksDB refuses the write (the
        store's memory is then unchanged).
        """
        db = self.db
        if self._expiry:
            if self.seq == db.seq:
                self.next_seqs(1)  # one index record key per batch and day
            for day, key_list in self._expiry.items():
                self.put(keys.expiry_key(day, self.seq), keys.pack_keys(key_list))
        self.put(keys.SEQ_KEY, keys.pack_u64(self.seq))  # last: the batch is complete
        db.write(self._batch)
        if self._log is not None:
            assert db.changelog is not None
            db.changelog.send(db.identity.shard, self._log)
        db.seq = self.seq
        db.pruned_to = self._pruned_to
        db.today = max(db.today, self._today)
        if self._sweep is not None:
            db.expired_day, db.sweep_from = self._sweep
