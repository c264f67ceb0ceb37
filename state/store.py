"""Replay-safe RocksDB state of one input partition (Kafka Streams / Quix pattern).

Layout: ``<state_dir>/<partition>/`` is one RocksDB per input partition; a
process owning several partitions opens one :class:`PartitionStore` each.

Replay safety: every :meth:`PartitionStore.process_batch` writes the new card
and merchant states, the emitted vectors (keyed by offset) and the last applied
offset in ONE ``WriteBatch``. After a crash the flow may replay offsets it had
already applied; those do not touch state and return the stored vector of the
first pass. Vectors are kept for ``StoreOptions.output_retention`` offsets.
Labels are idempotent by transaction id (first label wins; markers swept after
``label_horizon_ms``). Each verdict can also be indexed by transaction id
(:class:`~state.verdicts.VerdictRecord`, kept ``verdict_horizon_ms`` by event
time, expired by whole days), so a label finds the verdict it judges.

Memory: card states live on disk and are decoded per batch (one multi-get);
decoded merchant states (few, hot) are also kept in a bounded write-through
cache (``StoreOptions.merchant_cache``), which never holds anything the disk
does not.

Eviction: a card or merchant idle for more than
:data:`state.card.IDLE_EVICT_MS` is treated as empty when next read (same code
as replay), and :meth:`PartitionStore.sweep` deletes such keys from disk.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Self, TypeVar, cast

import numpy as np
import rocksdict

from state import keys
from state.card import IDLE_EVICT_MS, CardState, last_time_of
from state.codec import STATE_FORMAT_VERSION
from state.errors import ReplayGapError, StateFormatError, StoreIOError
from state.features import gc_paused, step
from state.merchant import MerchantState
from state.options import StoreOptions
from state.spec import FEATURE_SPEC_VERSION, N_FEATURES
from state.verdicts import VerdictRecord
from topics.contracts import Label, Transaction

_S = TypeVar("_S", CardState, MerchantState)

class Rendered(NamedTuple):
    """What ``render`` gives for the fresh items of a batch, in their order."""

    outputs: Sequence[bytes]
    """Stored per offset and returned (a replay returns the same bytes)."""
    verdicts: Sequence[VerdictRecord] = ()
    """Indexed by transaction id for :meth:`PartitionStore.apply_labels` (empty: none)."""


#: ``render(positions, features)``: what to store for the fresh items at ``positions``
#: (indices into the batch), given their float32 feature rows.
Render = Callable[[Sequence[int], np.ndarray], Rendered]


def _vector_bytes(_positions: Sequence[int], features: np.ndarray) -> Rendered:
    return Rendered([row.tobytes() for row in features])
_FORMAT = f"state{STATE_FORMAT_VERSION}/features-{FEATURE_SPEC_VERSION}".encode()


def partition_path(state_dir: str | Path, partition: int) -> Path:
    """Directory of one partition's RocksDB."""
    return Path(state_dir) / str(partition)


class PartitionStore:
    """Card and merchant state of one input partition, with replay-safe offsets."""

    def __init__(self, db: rocksdict.Rdict, partition: int, options: StoreOptions) -> None:
        self._db = db
        self.partition = partition
        self._options = options
        self._write_opts = options.write_options()
        raw = db.get(keys.LAST_OFFSET_KEY)
        self._last = keys.unpack_u64(raw) - 1 if raw is not None else -1
        self._pruned_to = 0
        self._verdicts_expired_to = 0  # first event day still kept
        # decoded merchant states, write-through: merchants are few and hot, cards many and cold
        self._merchants: dict[bytes, MerchantState] = {}

    @classmethod
    def open(
        cls, state_dir: str | Path, partition: int, options: StoreOptions | None = None
    ) -> Self:
        """Open (creating if needed) the store of ``partition`` under ``state_dir``."""
        options = options or StoreOptions()
        path = partition_path(state_dir, partition)
        try:
            path.mkdir(parents=True, exist_ok=True)
            db = rocksdict.Rdict(str(path), options.rocksdb())
        except Exception as exc:
            raise StoreIOError(
                f"cannot open RocksDB at {path}: {exc}; check that no other process holds "
                "this partition and the directory is writable"
            ) from exc
        found = db.get(keys.FORMAT_KEY)
        if found is None:
            db.put(keys.FORMAT_KEY, _FORMAT)
        elif found != _FORMAT:
            db.close()
            raise StateFormatError(
                f"{path} holds {found.decode(errors='replace')}, this code writes "
                f"{_FORMAT.decode()}: delete the state directory and restart"
            )
        return cls(db, partition, options)

    @property
    def last_offset(self) -> int:
        """Last applied input offset, -1 before the first."""
        return self._last

    def process(self, offset: int, txn: Transaction) -> np.ndarray:
        """Features of ``txn`` as of just before it (float32, shape [N_FEATURES]); apply it."""
        return self.process_batch([(offset, txn)])[0]

    def process_batch(self, items: Sequence[tuple[int, Transaction]]) -> np.ndarray:
        """Process ``(offset, txn)`` pairs in order in one WriteBatch; float32 [n, N_FEATURES].

        Offsets at or below the last applied one are replays: they return the
        vector stored the first time and change nothing.
        """
        outputs = self.process_and_render(items, _vector_bytes)
        for (offset, _), output in zip(items, outputs, strict=True):
            if output is None:
                raise ReplayGapError(
                    f"partition {self.partition}: offset {offset} is at or below the last "
                    f"applied offset but no vector is kept for it (output_retention="
                    f"{self._options.output_retention}); raise StoreOptions.output_retention "
                    "or rebuild the state directory from history"
                )
        vectors = cast(list[bytes], outputs)
        return np.frombuffer(b"".join(vectors), dtype=np.float32).reshape(len(items), N_FEATURES)

    def process_and_render(
        self, items: Sequence[tuple[int, Transaction]], render: Render
    ) -> list[bytes | None]:
        """Like :meth:`process_batch`, but store and return ``render``'s bytes per offset.

        ``None`` for an offset at or below the last applied one with nothing stored:
        it was never applied (its message was dead-lettered the first time) or its
        output is older than ``output_retention`` (a restart that re-reads the topic
        from the beginning). Either way its verdict, if any, was published back then.

        The stream renders each verdict here, so the verdict is committed in the same
        WriteBatch as the state it was computed from, and a replayed offset gets the
        very bytes it got the first time (same score, decision and model version).
        """
        with gc_paused(), self._cache_guard():
            return self._process_batch(items, render)

    def _process_batch(
        self, items: Sequence[tuple[int, Transaction]], render: Render
    ) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(items)
        fresh: list[tuple[int, int, Transaction]] = []
        replayed: list[tuple[int, int]] = []
        hi = self._last
        for i, (offset, txn) in enumerate(items):
            if offset > hi:
                fresh.append((i, offset, txn))
                hi = offset
            else:
                replayed.append((i, offset))
        batch = rocksdict.WriteBatch(raw_mode=True)
        pending: dict[int, bytes] = {}
        if fresh:
            cards = self._load([keys.card_key(t.card_id) for _, _, t in fresh], CardState)
            merchants = self._load_merchants(
                [keys.merchant_key(t.merchant_id) for _, _, t in fresh]
            )
            rows = [
                step(cards[keys.card_key(t.card_id)],
                     merchants[keys.merchant_key(t.merchant_id)], t)
                for _, _, t in fresh
            ]
            matrix = np.array(rows, dtype=np.float32)
            rendered = render([i for i, _, _ in fresh], matrix)
            for (i, offset, _), value in zip(fresh, rendered.outputs, strict=True):
                out[i] = value
                pending[offset] = value
                batch.put(keys.offset_key(offset), value)
            self._index_verdicts(batch, [t for _, _, t in fresh], rendered.verdicts)
            for key, card in cards.items():
                batch.put(key, card.encode())
            for key, merchant in merchants.items():
                batch.put(key, merchant.encode())
            batch.put(keys.LAST_OFFSET_KEY, keys.pack_u64(hi + 1))
            self._prune_outputs(batch, hi)
        for i, offset in replayed:
            out[i] = pending[offset] if offset in pending else self._stored_output(offset)
        if fresh:
            self._write(batch)
            self._last = hi
        return out

    def apply_label(self, label: Label) -> None:
        """Apply one label event (idempotent by transaction id)."""
        self.apply_labels([label])

    def apply_labels(self, labels: Iterable[Label]) -> list[Label]:
        """Apply label events in order, in one WriteBatch; return the new ones (not repeats)."""
        with self._cache_guard():
            return self._apply_labels(labels)

    def _apply_labels(self, labels: Iterable[Label]) -> list[Label]:
        batch = rocksdict.WriteBatch(raw_mode=True)
        merchants: dict[bytes, MerchantState] = {}
        seen: set[bytes] = set()
        applied: list[Label] = []
        for label in labels:
            lkey = keys.label_key(label.transaction_id)
            if lkey in seen or self._db.get(lkey) is not None:
                continue
            seen.add(lkey)
            applied.append(label)
            batch.put(lkey, keys.pack_u64(label.label_time))
            if label.is_fraud:
                mkey = keys.merchant_key(label.merchant_id)
                if mkey not in merchants:
                    merchants.update(self._load_merchants([mkey]))
                merchants[mkey].add_fraud(label.label_time)
        for key, merchant in merchants.items():
            batch.put(key, merchant.encode())
        if seen:
            self._write(batch)
        return applied

    def _index_verdicts(
        self, batch: rocksdict.WriteBatch, txns: list[Transaction],
        verdicts: Sequence[VerdictRecord],
    ) -> None:
        """Put each verdict under its transaction id and expire days past the horizon."""
        horizon = self._options.verdict_horizon_ms
        if not horizon or not verdicts:
            return
        for txn, record in zip(txns, verdicts, strict=True):
            batch.put(keys.verdict_key(txn.event_time // keys.DAY_MS, txn.transaction_id),
                      record.encode())
        keep_from = (max(t.event_time for t in txns) - horizon) // keys.DAY_MS
        if keep_from > self._verdicts_expired_to:
            batch.delete_range(keys.verdict_day_key(self._verdicts_expired_to),
                               keys.verdict_day_key(keep_from))
            self._verdicts_expired_to = keep_from

    def verdicts(self, labels: Sequence[Label]) -> list[VerdictRecord | None]:
        """The verdict each label's transaction got, in one multi-get (None: unknown).

        Unknown: not scored here (yet), or past the verdict horizon. Only the days
        the transaction can fall on (the horizon before ``label_time``) are read.
        """
        horizon = self._options.verdict_horizon_ms
        if not horizon or not labels:
            return [None] * len(labels)
        spans = []
        lookup: list[Any] = []
        for label in labels:
            last = label.label_time // keys.DAY_MS + 1  # a day of clock skew
            first = (label.label_time - horizon) // keys.DAY_MS
            days = range(max(first, self._verdicts_expired_to), last + 1)
            spans.append((len(lookup), len(lookup) + len(days)))
            lookup.extend(keys.verdict_key(d, label.transaction_id) for d in days)
        found = cast(list[bytes | None], self._db.get(lookup)) if lookup else []
        out: list[VerdictRecord | None] = []
        for lo, hi in spans:
            raw = next((v for v in found[lo:hi] if v is not None), None)
            out.append(VerdictRecord.decode(raw) if raw is not None else None)
        return out

    def sweep(self, now_ms: int) -> int:
        """Delete keys idle since before ``now_ms`` (event time) and old label markers.

        Keys are deleted when idle longer than ``IDLE_EVICT_MS`` plus
        ``sweep_grace_ms``, so events up to the grace late see the same
        (empty) state as without the sweep. Returns the number of keys deleted.
        """
        idle_before = now_ms - IDLE_EVICT_MS - self._options.sweep_grace_ms
        label_before = now_ms - self._options.label_horizon_ms
        batch = rocksdict.WriteBatch(raw_mode=True)
        deleted = 0
        for prefix, too_old in (
            (keys.CARD, lambda v: last_time_of(v) < idle_before),
            (keys.MERCHANT, lambda v: last_time_of(v) < idle_before),
            (keys.LABEL, lambda v: keys.unpack_u64(v) < label_before),
        ):
            for key, value in self._db.items(from_key=prefix):
                if not isinstance(key, bytes) or not key.startswith(prefix):
                    break
                if too_old(value):
                    batch.delete(key)
                    self._merchants.pop(key, None)
                    deleted += 1
        if deleted:
            self._write(batch)
        return deleted

    def approximate_disk_bytes(self) -> int:
        """Live SST plus memtable size, as RocksDB estimates it."""
        sst = self._db.property_int_value("rocksdb.total-sst-files-size") or 0
        mem = self._db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
        return sst + mem

    def flush(self) -> None:
        """Flush memtables to SST files (for measurements; not needed for durability)."""
        self._db.flush()

    def compact(self) -> None:
        """Compact the whole database (drops overwritten and deleted versions)."""
        self._db.compact_range(None, None)

    def close(self) -> None:
        """Close the database; the store is unusable afterwards."""
        self._db.close()

    def _load(self, key_list: list[bytes], cls: type[_S]) -> dict[bytes, _S]:
        unique: list[Any] = list(dict.fromkeys(key_list))
        values = cast(list[bytes | None], self._db.get(unique))
        return {
            key: cls.decode(raw) if raw is not None else cls()
            for key, raw in zip(unique, values, strict=True)
        }

    @contextmanager
    def _cache_guard(self) -> Iterator[None]:
        """Drop the merchant cache if a batch fails: it may be ahead of the disk."""
        try:
            yield
        except BaseException:
            self._merchants.clear()
            raise

    def _load_merchants(self, key_list: list[bytes]) -> dict[bytes, MerchantState]:
        """Merchant states from the cache (least recently used ones evicted) or the disk."""
        cache = self._merchants
        found = {key: cache.pop(key) for key in key_list if key in cache}
        cache.update(found)  # re-inserted: most recently used last
        missing = [key for key in key_list if key not in found]
        if missing:
            loaded = self._load(missing, MerchantState)
            found.update(loaded)
            cache.update(loaded)
            excess = len(cache) - self._options.merchant_cache
            if excess > 0:
                for key in list(itertools.islice(cache, excess)):
                    del cache[key]
        return found

    def _stored_output(self, offset: int) -> bytes | None:
        return cast(bytes | None, self._db.get(keys.offset_key(offset)))

    def _prune_outputs(self, batch: rocksdict.WriteBatch, hi: int) -> None:
        keep_from = hi - self._options.output_retention + 1
        if keep_from - self._pruned_to > self._options.output_retention // 4:
            batch.delete_range(keys.offset_key(self._pruned_to), keys.offset_key(keep_from))
            self._pruned_to = keep_from

    def _write(self, batch: rocksdict.WriteBatch) -> None:
        try:
            self._db.write(batch, self._write_opts)
        except Exception as exc:
            raise StoreIOError(
                f"partition {self.partition}: RocksDB write failed: {exc}; the batch was not "
                "applied, restart from the last committed offset"
            ) from exc
