"""The card stage's store: per-card windows, idempotent by transaction id, a batch at a time.

One store per card shard (``<state_dir>/cards/<shard>/``); a card's shard is
``murmur2(card_id) mod FRAUD_CARD_SHARDS`` (:class:`flows.decode.TransactionRouter`),
and a correctly keyed card's records all arrive from one partition, in offset order.

For each transaction of a batch, in the order given:

* a **new** transaction id: the card group of its row is read as of just
  before it and the card state is updated (the card kernel,
  :func:`state.features.card_features`, over every card of the batch at once);
  ``s<transaction_id>`` (:class:`~state.records.Seen`) is written, and the batch's
  rows go into one blob (kept for :attr:`StoreOptions.recent_rows` changes);
* an id already applied with the **same body** (a producer re-delivery, or a
  replay after a crash): nothing changes; the stored row is handed on when it is
  still kept, so the merchant stage can finish a verdict a crash interrupted;
* an id already applied with **another body**: a conflict (the flow dead-letters
  it, naming where the first one came from).

A batch costs one multi-get of its transaction ids, one of its new cards' states,
and one ``WriteBatch`` (:class:`~state.transaction.StoreTransaction`). The store is
*rebuildable* (:meth:`state.db.StateDB.open`): its rows are a function of each card's
records in offset order, so it writes without a write-ahead log and flushes at every
recovery snapshot; after a crash the replay from the snapshot redoes what was lost,
bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from state import keys
from state.changelog import ChangeSink
from state.db import StateDB, StoreIdentity
from state.features import CARD_WIDTH, card_features, gc_paused
from state.inputs import FeatureInputs
from state.options import StoreOptions
from state.records import Seen
from state.transaction import StoreTransaction
from state.units import DAY_MS

FRESH, REPEAT, CONFLICT = 0, 1, 2
_SEEN_DTYPE = np.dtype([("body", "<u8"), ("seq", "<u8"), ("partition", "<i4"),
                        ("offset", "<i8"), ("rows", "<u8")])


@dataclass(frozen=True, slots=True)
class CardBatch:
    """``n`` transactions for the card store, as columns, in the order to apply them."""

    transaction_ids: Sequence[str]
    card_ids: Sequence[str]
    body: np.ndarray
    """uint64 :func:`~state.records.body_digest` of each transaction."""
    partition: np.ndarray
    """int32 source partition."""
    offset: np.ndarray
    """int64 source offset."""
    inputs: FeatureInputs

    def __len__(self) -> int:
        return len(self.transaction_ids)

    def slice(self, start: int, stop: int) -> CardBatch:
        """Transactions ``start:stop``."""
        stop = min(stop, len(self))
        return CardBatch(self.transaction_ids[start:stop], self.card_ids[start:stop],
                         self.body[start:stop], self.partition[start:stop],
                         self.offset[start:stop],
                         self.inputs.take(np.arange(start, stop, dtype=np.int64)))


@dataclass(frozen=True, slots=True)
class CardOutcome:
    """What the card store made of each transaction of a :class:`CardBatch`."""

    kind: np.ndarray
    """int8 :data:`FRESH`, :data:`REPEAT` or :data:`CONFLICT`."""
    rows: np.ndarray
    """float32 ``[n, CARD_WIDTH]`` card groups (zero where ``has_row`` is false)."""
    has_row: np.ndarray
    """bool: a row is there (every fresh one; a repeat while its blob is kept)."""
    first_partition: np.ndarray
    """int64: for a repeat or conflict, where the id was first applied (else -1)."""
    first_offset: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence[CardOutcome]) -> CardOutcome:
        """The outcomes of consecutive slices of one batch, as one."""
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("kind", "rows", "has_row", "first_partition", "first_offset")))


class CardStore:
    """Card state of one card shard, with replay-safe, idempotent application."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._horizon_days = db.options.txn_horizon_ms // DAY_MS

    @classmethod
    def open(cls, state_dir: Path, identity: StoreIdentity,
             options: StoreOptions | None = None, changelog: ChangeSink | None = None,
             at_least: int = 0) -> Self:
        """Open (creating) the store of ``identity.shard`` under ``state_dir/cards``.

        ``changelog``, ``at_least``: see :meth:`state.db.StateDB.open`.
        """
        return cls(StateDB.open(Path(state_dir) / "cards" / str(identity.shard), identity,
                                options, rebuildable=True, changelog=changelog,
                                at_least=at_least))

    @property
    def seq(self) -> int:
        """Changes applied so far."""
        return self.db.seq

    def checkpoint(self) -> int:
        """Bytewax snapshots now: see :meth:`state.db.StateDB.checkpoint`."""
        return self.db.checkpoint()

    def process(self, batch: CardBatch) -> CardOutcome:
        """Apply ``batch`` in order, in one WriteBatch per ``commit_max`` transactions.

        Raises :class:`~state.errors.StoreIOError` (the write failed; nothing applied)
        or ``ValueError`` (a stored card state is corrupt).
        """
        step = self.db.options.commit_max
        with gc_paused():
            if len(batch) <= step:
                return self._process(batch)
            return CardOutcome.concat([self._process(batch.slice(a, a + step))
                                       for a in range(0, len(batch), step)])

    def _process(self, batch: CardBatch) -> CardOutcome:
        n = len(batch)
        db = self.db
        tids = batch.transaction_ids
        seen_keys = [keys.SEEN + t.encode() for t in tids]
        stored = db.get_many(seen_keys)
        kind = np.zeros(n, dtype=np.int8)
        rows = np.zeros((n, CARD_WIDTH), dtype=np.float32)
        has_row = np.zeros(n, dtype=bool)
        first_partition = np.full(n, -1, dtype=np.int64)
        first_offset = np.full(n, -1, dtype=np.int64)
        outcome = CardOutcome(kind, rows, has_row, first_partition, first_offset)
        if stored.count(None) == n and len(set(tids)) == n:  # the usual batch: all new
            fresh = np.arange(n, dtype=np.int64)
            again: list[tuple[int, int]] = []
            repeats: list[tuple[int, Seen]] = []
        else:
            fresh, again, repeats = self._classify(tids, stored, batch.body)
        if repeats:
            self._repeats(repeats, batch, outcome)
        if len(fresh):
            self._apply(fresh, batch, seen_keys, outcome)
        for i, j in again:  # a repeat within the batch, of the fresh row j
            same = batch.body[i] == batch.body[j]
            kind[i] = REPEAT if same else CONFLICT
            first_partition[i], first_offset[i] = batch.partition[j], batch.offset[j]
            if same:
                rows[i], has_row[i] = rows[j], True
        return outcome

    @staticmethod
    def _classify(tids: Sequence[str], stored: list[bytes | None], body: np.ndarray
                  ) -> tuple[np.ndarray, list[tuple[int, int]], list[tuple[int, Seen]]]:
        fresh: list[int] = []
        again: list[tuple[int, int]] = []
        repeats: list[tuple[int, Seen]] = []
        first_at: dict[str, int] = {}
        for i, raw in enumerate(stored):
            if raw is not None:
                repeats.append((i, Seen.decode(raw)))
                continue
            j = first_at.setdefault(tids[i], i)
            if j == i:
                fresh.append(i)
            else:
                again.append((i, j))
        return np.asarray(fresh, dtype=np.int64), again, repeats

    def _repeats(self, repeats: list[tuple[int, Seen]], batch: CardBatch,
                 outcome: CardOutcome) -> None:
        """Mark repeats and conflicts; attach a repeat's kept row (gone once pruned)."""
        blobs = list({s.rows for _, s in repeats})
        found = dict(zip(blobs, self.db.get_many([keys.seq_key(b) for b in blobs]),
                         strict=True))
        for i, seen in repeats:
            outcome.first_partition[i], outcome.first_offset[i] = seen.partition, seen.offset
            if seen.body != int(batch.body[i]):
                outcome.kind[i] = CONFLICT
                continue
            outcome.kind[i] = REPEAT
            blob = found[seen.rows]
            at = (seen.seq - seen.rows) * CARD_WIDTH * 4
            if blob is not None and at + CARD_WIDTH * 4 <= len(blob):
                outcome.rows[i] = np.frombuffer(blob, np.float32, CARD_WIDTH, at)
                outcome.has_row[i] = True

    def _apply(self, fresh: np.ndarray, batch: CardBatch, seen_keys: list[bytes],
               outcome: CardOutcome) -> None:
        db = self.db
        cards = batch.card_ids
        ids: dict[str, int] = {}
        card_of = np.fromiter((ids.setdefault(cards[i], len(ids)) for i in fresh.tolist()),
                              np.int64, len(fresh))
        card_keys = keys.card_keys(ids)
        states = db.get_many(card_keys)
        inputs = batch.inputs if len(fresh) == len(batch) else batch.inputs.take(fresh)
        features, new_states = card_features(states, card_of, inputs.for_card_windows())
        txn = StoreTransaction(db)
        first = txn.next_seqs(len(fresh))
        records = np.empty(len(fresh), dtype=_SEEN_DTYPE)
        records["body"] = batch.body[fresh]
        records["seq"] = np.arange(first, first + len(fresh), dtype=np.uint64)
        records["partition"] = batch.partition[fresh]
        records["offset"] = batch.offset[fresh]
        records["rows"] = first
        blob = records.tobytes()
        size = _SEEN_DTYPE.itemsize
        fresh_list = fresh.tolist()
        txn.put_many([seen_keys[i] for i in fresh_list],
                     [blob[k * size:(k + 1) * size] for k in range(len(fresh_list))])
        txn.put_many(card_keys, new_states)
        txn.put(keys.seq_key(first), features.tobytes())
        days = inputs.event_ms // DAY_MS
        txn.expire_many(days + self._horizon_days, [seen_keys[i] for i in fresh_list])
        txn.saw(int(days.max()))
        txn.prune_rows()
        txn.sweep()
        txn.commit()
        outcome.rows[fresh] = features
        outcome.has_row[fresh] = True

    def close(self) -> None:
        """Close the store."""
        self.db.close()
