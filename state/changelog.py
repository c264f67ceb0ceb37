"""A store's changelog: every change it commits, so a shard can be restored anywhere.

As Kafka Streams, Quix Streams and Faust do, each store (one card or merchant
shard) also writes what it changes to its partition of a compacted topic (the
partition is the shard): one record per key put (the value) or deleted (a
tombstone), the batch's sequence number (:data:`state.keys.SEQ_KEY`) last.
Compaction keeps the latest value of each key, so the topic holds the store and no
more. The transport is :class:`ChangeSink` (Kafka: :mod:`changelog.kafka`).

**When a store is restored.** A store opened with a changelog is trusted as it is
only when it is *clean*: its last run closed after every change was acknowledged
(:data:`LOGGED_KEY` equals its sequence number), and it is not behind the recovery
snapshot. Otherwise (the directory is missing or empty, the process was killed, the
volume is stale) it is rebuilt from the changelog before it processes anything
(:func:`restore`). A killed store whose files are intact and at least as far as its
changelog is kept instead: it may hold changes whose records never reached the
broker, so the changelog is first sent what differs (:func:`reconcile`); carrying on
without that would leave the changelog short of them for good, and rebuilding from
the changelog would forget verdicts already published (they would be scored again,
with another ``scored_time``, instead of re-emitted byte for byte).

**A batch cut short.** A process killed while producing a batch's records leaves
some of them behind the last complete batch (the one whose sequence record came
last). :func:`restore` applies records up to that sequence record only, then
produces the restored value (or a tombstone) of every key of the cut batch, closed by
the sequence record as a batch, so the changelog again equals the store. Compaction
cannot have removed the older values of those keys first: the cut records are in the
topic's last segment, which Kafka never compacts until the partition is written to
again (:data:`COMPACTION_LAG_MS` covers a segment rolled within a batch).

**A store older than its changelog.** When the changelog has no sequence record
(changelogs were just turned on, or the topic was re-created), the local store,
whatever it holds, is written to it in full (:func:`seed`). A store that ran with
changelogs off after they had been on (:data:`WITHOUT`) is newer than its changelog,
which may also hold keys it has since deleted: the flow refuses to start until the
changelog topics are deleted (and are then seeded from the stores).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import rocksdict

from state import keys

log = logging.getLogger(__name__)

#: ``(key, value)``: a put, or ``(key, None)``: a delete (a tombstone on the topic).
Change = tuple[bytes, bytes | None]
#: Local only, never logged: the sequence number up to which the changelog holds this
#: store (written when a store closes after its last records were acknowledged).
LOGGED_KEY = keys.META + b"logged"
#: Changes written per RocksDB write batch while restoring.
RESTORE_BATCH = 20_000
#: ``min.compaction.lag.ms`` of the changelog topics: a day, so a batch cut short by a
#: crash cannot have been compacted against before its store is restored.
COMPACTION_LAG_MS = 24 * 3600 * 1000


class ChangeSink(Protocol):
    """Where a role's stores log their changes (one partition per shard)."""

    def send(self, shard: int, changes: list[Change]) -> None:
        """Hand ``changes`` on, in order, without waiting for the broker."""
        ...

    def flush(self) -> None:
        """Wait until everything sent is acknowledged; raise if anything was not."""
        ...

    def read(self, shard: int) -> Iterator[Change]:
        """Every record of the shard's partition, in offset order, up to its end."""
        ...

    def describe(self, shard: int) -> str:
        """Where the shard's changelog is, for messages."""
        ...


#: :data:`LOGGED_KEY`'s value in a store opened without a changelog: its changelog, if
#: any, misses what it changed since.
WITHOUT = b"without a changelog"


def is_clean(db: rocksdict.Rdict) -> bool:
    """Whether the store closed with its changelog acknowledged up to its last change."""
    seq, logged = db.get(keys.SEQ_KEY), db.get(LOGGED_KEY)
    return seq is not None and logged == seq


def mark_clean(db: rocksdict.Rdict, seq: int) -> None:
    """Record that the changelog holds this store up to ``seq`` (its last change)."""
    db.put(LOGGED_KEY, keys.pack_u64(seq))


def mark_unclean(db: rocksdict.Rdict) -> None:
    """Forget the mark: the store is about to change (a crash from now on is unclean)."""
    if db.get(LOGGED_KEY) is not None:
        db.delete(LOGGED_KEY)


def mark_without(db: rocksdict.Rdict) -> None:
    """Record that the store changes without its changelog (:data:`WITHOUT`)."""
    if db.get(LOGGED_KEY) != WITHOUT:
        db.put(LOGGED_KEY, WITHOUT)


def ran_without(db: rocksdict.Rdict) -> bool:
    """Whether the store changed without its changelog since the changelog last had it."""
    return db.get(LOGGED_KEY) == WITHOUT


@dataclass(frozen=True)
class Rebuilt:
    """A store rebuilt from its changelog when it was opened (:meth:`state.db.StateDB.open`)."""

    reason: str
    """``missing``, ``behind`` (the recovery snapshot) or ``unclean`` (not closed cleanly)."""
    records: int
    """Changelog records read."""
    seconds: float


class Restored:
    """What a restore found: the changelog's last complete sequence number and counts."""

    __slots__ = ("seq", "records", "cut")

    def __init__(self) -> None:
        self.seq: int | None = None
        """The last complete batch's sequence number (None: no sequence record at all)."""
        self.records = 0
        """Records read."""
        self.cut = 0
        """Records of a batch cut short, left out and corrected on the topic."""


def restore(path: Path, options: rocksdict.Options, write: rocksdict.WriteOptions,
            sink: ChangeSink, shard: int,
            progress: Callable[[int], None] | None = None) -> Restored:
    """Rebuild the store at ``path`` (made empty first) from the shard's changelog.

    Applies every record up to the last sequence record, in order, a
    :data:`RESTORE_BATCH` of changes per write; leaves the records after it out and
    re-logs the restored value of their keys (see the module docstring).
    ``progress(records)`` is called every few seconds. Raises whatever the sink's
    ``read`` raises (the broker cannot be read).
    """
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    db = rocksdict.Rdict(str(path), options)
    found = Restored()
    try:
        pending: list[Change] = []  # since the last sequence record
        batch = rocksdict.WriteBatch(raw_mode=True)
        size = 0
        told = time.monotonic()
        for key, value in sink.read(shard):
            found.records += 1
            pending.append((key, value))
            if key != keys.SEQ_KEY:
                continue
            found.seq = keys.unpack_u64(value) if value is not None else None
            for k, v in pending:
                if v is None:
                    batch.delete(k)
                else:
                    batch.put(k, v)
            size += len(pending)
            pending = []
            if size >= RESTORE_BATCH:
                db.write(batch, write)
                batch, size = rocksdict.WriteBatch(raw_mode=True), 0
            if progress is not None and time.monotonic() - told >= 2.0:
                progress(found.records)
                told = time.monotonic()
        if size:
            db.write(batch, write)
        if pending and found.seq is not None:  # a batch cut short: restored values again
            found.cut = len(pending)
            cut = [k for k in dict.fromkeys(k for k, _ in pending) if k != keys.SEQ_KEY]
            # closed by the sequence record, as a batch: a later restore applies them
            sink.send(shard, [*((k, db.get(k)) for k in cut),
                              (keys.SEQ_KEY, keys.pack_u64(found.seq))])
            sink.flush()
        if progress is not None:
            progress(found.records)
        db.flush()
    finally:
        db.close()
    return found


def seed(db: rocksdict.Rdict, sink: ChangeSink, shard: int, chunk: int = 10_000) -> int:
    """Log every key of a store to an empty changelog, its sequence number last.

    Returns how many records were sent (the caller flushes).
    """
    return _send(sink, shard, _contents(db), db.get(keys.SEQ_KEY), chunk)


def reconcile(local: rocksdict.Rdict, restored: rocksdict.Rdict, sink: ChangeSink, shard: int,
              chunk: int = 10_000) -> int:
    """Make the changelog (``restored`` is what it holds) equal the ``local`` store.

    For a store killed ahead of its changelog (the records of its last batches were not
    yet acknowledged): every key whose local value differs from the changelog's is sent
    again, every key the changelog holds and the store no longer does gets a tombstone,
    and the store's sequence number comes last, closing them as one batch. Both
    stores are read in key order, once. Returns the records sent (the caller flushes).
    """
    return _send(sink, shard, _differences(_contents(local), _contents(restored)),
                 local.get(keys.SEQ_KEY), chunk)


def _contents(db: rocksdict.Rdict) -> Iterator[tuple[bytes, bytes]]:
    """A store's logged keys and values, in key order (not the sequence number, not marks)."""
    for key, value in db.items():
        if isinstance(key, bytes) and key not in (LOGGED_KEY, keys.SEQ_KEY):
            yield key, bytes(value)


def _differences(mine: Iterator[tuple[bytes, bytes]], theirs: Iterator[tuple[bytes, bytes]]
                 ) -> Iterator[Change]:
    """What turns ``theirs`` into ``mine`` (both in key order): puts and tombstones."""
    a, b = next(mine, None), next(theirs, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            assert a is not None
            yield a
            a = next(mine, None)
        elif a is None or b[0] < a[0]:
            yield b[0], None
            b = next(theirs, None)
        else:
            if a[1] != b[1]:
                yield a
            a, b = next(mine, None), next(theirs, None)


def _send(sink: ChangeSink, shard: int, changes: Iterable[Change], seq: bytes | None,
          chunk: int) -> int:
    """Send ``changes`` in chunks, closed by the sequence record ``seq``; how many records."""
    sent = 0
    batch: list[Change] = []
    for change in changes:
        batch.append(change)
        if len(batch) >= chunk:
            sink.send(shard, batch)
            sent += len(batch)
            batch = []
    batch.append((keys.SEQ_KEY, seq if seq is not None else keys.pack_u64(0)))
    sink.send(shard, batch)
    return sent + len(batch)


def replace_dir(restored: Path, path: Path) -> None:
    """Put a restored store where the local one was."""
    shutil.rmtree(path, ignore_errors=True)
    restored.rename(path)
