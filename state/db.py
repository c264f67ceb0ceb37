"""One RocksDB of the state: format and identity checks, sequence number, expiry, writes.

The card and merchant stores (:mod:`state.card_store`, :mod:`state.merchant_store`)
are built on this. Everything a store writes for one batch goes into one
``WriteBatch`` together with the new sequence number, so a crash leaves either all
of a batch or none of it.

**Identity.** A store records what it belongs to (:class:`StoreIdentity`: its role,
shard, shard count, and the input topic with the broker's topic id, which changes
when a topic is deleted and re-created). Opening it for anything else raises
:class:`~state.errors.StateIdentityError` naming both and the remedy: a state
directory reused for another topic must never answer for it.

Writes go through :class:`state.transaction.StoreTransaction` (one per batch):
the sequence number, puts, expiry and pruning, committed in one ``WriteBatch``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Self, cast

import rocksdict

from state import changelog, keys
from state.changelog import ChangeSink, Rebuilt, mark_clean, mark_unclean, mark_without
from state.errors import StateError, StateFormatError, StateIdentityError, StoreIOError
from state.kernels.card import FORMAT as STATE_FORMAT_VERSION
from state.options import StoreOptions
from state.spec import FEATURE_SPEC_VERSION

DAY_MS = keys.DAY_MS
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreIdentity:
    """What a store belongs to; stored in it and checked whenever it is opened."""

    role: str
    """``cards`` or ``merchants``."""
    shard: int
    shards: int
    topic: str
    """The ``transactions`` topic whose records built the state."""
    topic_id: str = ""
    """The broker's id of that topic ('' where the broker reports none)."""
    amounts: str = ""
    """``<reference currency>/<rate-table version>`` the stored amounts were converted with."""

    def describe(self) -> str:
        """Human-readable form for messages."""
        tid = f" (topic id {self.topic_id})" if self.topic_id else ""
        return f"{self.role} shard {self.shard} of {self.shards} for topic {self.topic!r}{tid}"


#: Record layouts changed apart from the card state's format (a store of an older layout is
#: refused, and says what to do): 2, the merchant store's verdicts in one blob per batch.
_RECORDS = {"merchants": "/records-2"}


def _format(role: str) -> bytes:
    return (f"state{STATE_FORMAT_VERSION}/{role}/features-{FEATURE_SPEC_VERSION}"
            f"{_RECORDS.get(role, '')}").encode()


class StateDB:
    """A RocksDB opened for one store, with its identity checked."""

    def __init__(self, db: rocksdict.Rdict, path: Path, identity: StoreIdentity,
                 options: StoreOptions, rebuildable: bool = False,
                 changelog: ChangeSink | None = None) -> None:
        self.db = db
        self.changelog = changelog
        """Where every committed change is also sent (None: no changelog)."""
        self.path = path
        self.identity = identity
        self.options = options
        self.rebuildable = rebuildable
        """Written without a write-ahead log and flushed at every recovery snapshot (see
        :meth:`open`)."""
        self.rebuilt: Rebuilt | None = None
        """Set by :meth:`open` when the store was rebuilt from its changelog."""
        self._write_opts = options.write_options()
        if rebuildable:
            self._write_opts.disable_wal = True  # type: ignore[method-assign,assignment]
        self._flushed = -1
        raw = db.get(keys.SEQ_KEY)
        self.seq = keys.unpack_u64(raw) if raw is not None else 0
        """Changes applied so far (monotonic; part of every batch)."""
        raw = db.get(keys.EXPIRED_KEY)
        self.expired_day = keys.unpack_u64(raw) if raw is not None else 0
        """UTC day before which every expiry index record has been swept."""
        self.sweep_from: bytes | None = None
        """Where an unfinished sweep of ``expired_day`` .. ``safe`` day goes on."""
        self.pruned_to = 0
        """Rows blobs below this sequence number have been deleted."""
        self.today = 0
        """Newest UTC event day this process applied."""
        self.safe = (self.seq, 0)
        """``(seq, today)`` at the last recovery snapshot."""

    @classmethod
    def open(cls, path: Path, identity: StoreIdentity,
             options: StoreOptions | None = None, rebuildable: bool = False,
             changelog: ChangeSink | None = None, at_least: int = 0) -> Self:
        """Open (creating if needed) the store at ``path`` for ``identity``.

        ``changelog``: the store logs every change there, and is first rebuilt from it
        unless it closed cleanly and holds at least ``at_least`` changes (the recovery
        snapshot's sequence number); see :mod:`state.changelog`.

        ``rebuildable``: everything written since the last recovery snapshot can be
        rebuilt exactly by replaying the input from it (the card store: its rows are a
        function of the card's records in offset order). Such a store skips the
        write-ahead log and flushes its memtables at every snapshot
        (:meth:`checkpoint`), so after a crash it holds at least the snapshot's state
        and the replay redoes the rest; a write costs about half. Raises
        :class:`StoreIOError` (cannot open), :class:`StateFormatError` (another code
        version wrote it) or :class:`StateIdentityError` (it belongs to another topic,
        shard or role).
        """
        options = options or StoreOptions()
        rebuilt = _sync(path, identity, options, changelog, at_least) if changelog else None
        try:
            path.mkdir(parents=True, exist_ok=True)
            db = rocksdict.Rdict(str(path), options.rocksdb())
        except Exception as exc:
            raise StoreIOError(
                f"cannot open RocksDB at {path}: {exc}; check that no other process uses "
                "this state directory and that it is writable"
            ) from exc
        try:
            stamped = _check(db, path, identity)
        except Exception:
            db.close()
            raise
        if changelog is not None:
            if stamped:  # a new store: its changelog says what it is, before any batch
                changelog.send(identity.shard, [(k, db.get(k)) for k in (keys.FORMAT_KEY,
                                                                        keys.IDENTITY_KEY)])
            mark_unclean(db)  # changes follow: a crash from now on is unclean
        else:
            mark_without(db)  # a changelog, if any, no longer has every change
        store = cls(db, path, identity, options, rebuildable, changelog)
        store.rebuilt = rebuilt
        return store

    # --- reads -------------------------------------------------------------------------
    def batch(self) -> rocksdict.WriteBatch:
        """A new (raw) write batch."""
        return rocksdict.WriteBatch(raw_mode=True)

    def write(self, batch: rocksdict.WriteBatch) -> None:
        """Write ``batch`` atomically; raises :class:`StoreIOError` if RocksDB fails."""
        try:
            self.db.write(batch, self._write_opts)
        except Exception as exc:
            raise StoreIOError(
                f"{self.identity.describe()}: RocksDB write failed at {self.path}: {exc}; the "
                "batch was not applied; free disk space or fix the volume, then restart (the "
                "flow resumes from its last snapshot)"
            ) from exc

    def get(self, key: bytes) -> bytes | None:
        """One value, or None."""
        return cast(bytes | None, self.db.get(key))

    def get_many(self, key_list: Sequence[bytes]) -> list[bytes | None]:
        """Values of ``key_list`` in one multi-get (None where absent)."""
        if not key_list:
            return []
        return cast(list[bytes | None], self.db.get(list(key_list)))

    def checkpoint(self) -> int:
        """Note that Bytewax is taking a recovery snapshot now; return the sequence number.

        Expiry and pruning never touch what a replay from this snapshot may need:
        the sweep's clock stops at the day of the last snapshot, and rows written
        after it are kept (see :class:`state.transaction.StoreTransaction`).
        """
        if self.rebuildable and self._flushed != self.seq:
            self.flush()
            self._flushed = self.seq
        if self.changelog is not None:
            self.changelog.flush()  # the snapshot never runs ahead of the changelog
        self.safe = (self.seq, self.today)
        return self.seq

    # --- upkeep ------------------------------------------------------------------------
    def approximate_disk_bytes(self) -> int:
        """Live SST plus memtable size, as RocksDB estimates it."""
        sst = self.db.property_int_value("rocksdb.total-sst-files-size") or 0
        mem = self.db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
        return int(sst + mem)

    def flush(self) -> None:
        """Flush memtables to SST files (durability of a rebuildable store; measurements)."""
        self.db.flush()

    def compact(self) -> None:
        """Compact the whole database (drops overwritten and deleted versions)."""
        self.db.compact_range(None, None)

    def close(self) -> None:
        """Close the database (a store without a write-ahead log flushes first).

        With a changelog, waits for its acknowledgements and marks the store clean
        (:func:`state.changelog.mark_clean`); if they fail, the store is left unclean
        and the next open rebuilds it from the changelog.
        """
        if self.changelog is not None:
            try:
                self.changelog.flush()
            except Exception as exc:  # noqa: BLE001 - reported; the next open restores
                log.warning("%s: changelog not acknowledged at close (%s); the next start "
                            "rebuilds this store from its changelog", self.identity.describe(),
                            exc)
            else:
                mark_clean(self.db, self.seq)
        if self.rebuildable:
            self.db.flush()
        self.db.close()


def check_state_dir(state_dir: Path, expected: Sequence[StoreIdentity]) -> int:
    """Refuse, before anything runs, a state directory written for something else.

    Opens every existing store of ``expected`` (``<state_dir>/<role>/<shard>``)
    read-only and checks its format and identity; returns how many were found.
    Raises :class:`StateFormatError`, :class:`StateIdentityError` or
    :class:`StoreIOError` (cannot open).
    """
    found = 0
    for identity in expected:
        path = Path(state_dir) / identity.role / str(identity.shard)
        if not (path / "CURRENT").exists():
            continue
        try:
            db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True),
                                 access_type=rocksdict.AccessType.read_only())
        except Exception as exc:
            raise StoreIOError(f"cannot open RocksDB at {path} to check it: {exc}") from exc
        try:
            _check(db, path, identity, stamp=False)
        finally:
            db.close()
        found += 1
    return found


def _sync(path: Path, identity: StoreIdentity, options: StoreOptions, sink: ChangeSink,
          at_least: int) -> Rebuilt | None:
    """Rebuild the store at ``path`` from its changelog unless it is clean (see module).

    A store not closed cleanly but at least as far as its changelog and the snapshot
    is kept, and the changelog sent what it lacks (:func:`state.changelog.reconcile`).
    Returns what was rebuilt or reconciled (None: the local store was used as it is).
    """
    shard = identity.shard
    local = (path / "CURRENT").exists()
    seq = 0
    without = False
    if local:
        try:
            db = rocksdict.Rdict(str(path), options.rocksdb())
        except Exception as exc:
            raise StoreIOError(f"cannot open RocksDB at {path}: {exc}") from exc
        try:
            raw = db.get(keys.SEQ_KEY)
            seq = keys.unpack_u64(raw) if raw is not None else 0
            if changelog.is_clean(db) and seq >= at_least:
                return None
            without = changelog.ran_without(db)
        finally:
            db.close()
    why = ("it was not closed cleanly" if local and seq >= at_least
           else f"it holds {seq} changes, the recovery snapshot {at_least}" if local
           else "it is missing")
    started = time.monotonic()
    where = sink.describe(shard)

    def progress(records: int) -> None:
        log.info("%s: restoring from %s: %d records read", identity.describe(), where, records)

    restoring = path.with_name(path.name + ".restoring")
    found = changelog.restore(restoring, options.rocksdb(), options.write_options(), sink,
                              shard, progress)
    if found.seq is None:  # nothing logged yet: the local store, if any, goes to it
        shutil.rmtree(restoring, ignore_errors=True)
        if local:
            db = rocksdict.Rdict(str(path), options.rocksdb())
            try:
                sent = changelog.seed(db, sink, shard)
                sink.flush()
            finally:
                db.close()
            log.info("%s: changelog %s was empty; wrote the local store to it (%d records)",
                     identity.describe(), where, sent)
        return None
    if without:
        shutil.rmtree(restoring, ignore_errors=True)
        raise StateError(
            f"{identity.describe()}: this store ran with FRAUD_CHANGELOG=off after its "
            f"{where} had it, so the changelog misses its later changes (and may hold keys "
            "it has since deleted). Stop every process, delete the changelog topics "
            "(cards-changelog, merchants-changelog) and start again: they are then written "
            "from the stores; or keep FRAUD_CHANGELOG=off"
        )
    if local and seq >= at_least and seq >= found.seq:  # killed ahead of its changelog
        return _reconciled(path, restoring, identity, options, sink, found, started)
    changelog.replace_dir(restoring, path)
    seconds = time.monotonic() - started
    log.warning("%s: rebuilt from %s because %s: %d records to change %d in %.1f s%s",
                identity.describe(), where, why, found.records, found.seq, seconds,
                f" ({found.cut} records of a batch cut short corrected)" if found.cut else "")
    reason = ("missing" if not local else "unclean" if seq >= at_least else "behind")
    return Rebuilt(reason, found.records, seconds)


def _reconciled(path: Path, restoring: Path, identity: StoreIdentity, options: StoreOptions,
                sink: ChangeSink, found: changelog.Restored, started: float) -> Rebuilt:
    """Keep a killed store that is as far as its changelog or further; send it the difference."""
    local = rocksdict.Rdict(str(path), options.rocksdb())
    try:
        restored = rocksdict.Rdict(str(restoring), options.rocksdb())
        try:
            sent = changelog.reconcile(local, restored, sink, identity.shard)
            sink.flush()
        finally:
            restored.close()
    finally:
        local.close()
    shutil.rmtree(restoring, ignore_errors=True)
    seconds = time.monotonic() - started
    log.warning("%s: not closed cleanly; kept it (its changelog %s reached change %d): sent the "
                "changelog %d records it lacked, in %.1f s", identity.describe(),
                sink.describe(identity.shard), found.seq, sent, seconds)
    return Rebuilt("unclean", found.records, seconds)


def _check(db: rocksdict.Rdict, path: Path, identity: StoreIdentity, stamp: bool = True
           ) -> bool:
    """Stamp a new store (``stamp``); refuse one written by other code or for something else.

    Returns whether it stamped a new store.
    """
    expected = _format(identity.role)
    found = db.get(keys.FORMAT_KEY)
    stored = db.get(keys.IDENTITY_KEY)
    if found is None:
        first = db.iter()
        first.seek_to_first()
        if first.valid():
            raise StateFormatError(
                f"{path} holds data but no format stamp (written by an older fraudstream): "
                "delete the state directory and the recovery directory, then restart"
            )
        if stamp:
            batch = rocksdict.WriteBatch(raw_mode=True)
            batch.put(keys.FORMAT_KEY, expected)
            batch.put(keys.IDENTITY_KEY, json.dumps(asdict(identity), sort_keys=True).encode())
            db.write(batch)
        return stamp
    if found != expected:
        raise StateFormatError(
            f"{path} holds {found.decode(errors='replace')}, this code writes "
            f"{expected.decode()}: delete the state directory and the recovery directory "
            "(FRAUD_STATE_DIR and -r), then restart to rebuild from the topic"
        )
    have = StoreIdentity(**cast(dict[str, Any], json.loads(stored))) if stored else None
    if (have is not None and have != identity
            and replace(have, amounts=identity.amounts) == identity):
        raise StateIdentityError(
            f"{path} holds amounts converted to {have.amounts or 'an unrecorded rate table'}; "
            f"the model converts to {identity.amounts}: card and merchant history would mix "
            "two scales. Serve a model trained on the same rate table, or delete the state "
            "and recovery directories to rebuild from the topic"
        )
    if have is not None and have != identity and replace(have, shards=identity.shards) == identity:
        setting = ("FRAUD_MERCHANT_SHARDS" if identity.role == "merchants"
                   else "FRAUD_CARD_SHARDS")
        raise StateIdentityError(
            f"{path} was made with {have.shards} {identity.role} shards, this run has "
            f"{identity.shards}: {setting} changed. Set it back, or delete the state and "
            "recovery directories to rebuild from the topic (shards cannot be re-split in place)"
        )
    if have != identity:
        what = have.describe() if have is not None else "nothing recorded"
        raise StateIdentityError(
            f"{path} belongs to {what}, not to {identity.describe()}: a state directory "
            "serves one topic set (a re-created topic gets a new id). Point FRAUD_STATE_DIR "
            "at this topic set's own state, or delete this one together with the recovery "
            "directory to rebuild from the topic"
        )
    return False
