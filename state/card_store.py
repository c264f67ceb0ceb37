"""The card stage's store: per-card windows, idempotent by transaction id.

One store per card shard (``<state_dir>/cards/<shard>/``); a card's shard is
its ``transactions`` partition under the murmur2 partitioner, so a correctly
keyed card's records all arrive from one partition, in offset order.

For each transaction of a batch, in the order given:

* a **new** transaction id: the card group of its row is read as of just
  before it (:func:`state.features.card_step`), the card state is updated, and
  ``s<transaction_id>`` (:class:`~state.records.Seen`) plus the row itself
  (under its sequence number, kept for :attr:`StoreOptions.recent_rows` changes)
  are written;
* an id already applied with the **same body** (a producer re-delivery, or a
  replay after a crash): nothing changes; the stored row is handed on when it is
  still kept, so the merchant stage can finish a verdict a crash interrupted;
* an id already applied with **another body**: a conflict (the flow dead-letters
  it, naming where the first one came from).

Everything of one batch is committed in one ``WriteBatch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Self

import numpy as np

from state import keys
from state.card import CardState
from state.db import DAY_MS, StateDB, StoreIdentity
from state.features import CARD_COLUMNS, card_step, gc_paused
from state.inputs import TxnInput
from state.options import StoreOptions
from state.records import Seen
from topics.contracts import Transaction

CARD_WIDTH = CARD_COLUMNS.stop

FRESH, REPEAT, CONFLICT = 0, 1, 2


class CardIn(NamedTuple):
    """One transaction for the card stage."""

    txn: Transaction
    features: TxnInput
    body: int
    """:func:`~state.records.body_digest` of ``txn``."""
    partition: int
    offset: int


class CardOut(NamedTuple):
    """What the card stage made of one transaction."""

    kind: int
    """:data:`FRESH`, :data:`REPEAT` or :data:`CONFLICT`."""
    row: np.ndarray | None
    """The card group of the row (float32 [CARD_WIDTH]); None for a conflict, or a repeat
    whose row is no longer kept."""
    first: Seen | None = None
    """For a repeat or conflict: the record of the first time this id was applied."""


def _row_bytes(row: list[float]) -> bytes:
    return np.asarray(row, dtype=np.float32).tobytes()


class CardStore:
    """Card state of one card shard, with replay-safe, idempotent application."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._horizon_days = db.options.txn_horizon_ms // DAY_MS

    @classmethod
    def open(cls, state_dir: Path, identity: StoreIdentity,
             options: StoreOptions | None = None) -> Self:
        """Open (creating) the store of ``identity.shard`` under ``state_dir/cards``."""
        return cls(StateDB.open(Path(state_dir) / "cards" / str(identity.shard), identity,
                                options))

    @property
    def seq(self) -> int:
        """Changes applied so far."""
        return self.db.seq

    def checkpoint(self) -> int:
        """Bytewax snapshots now: see :meth:`state.db.StateDB.checkpoint`."""
        return self.db.checkpoint()

    def process(self, items: Sequence[CardIn]) -> list[CardOut]:
        """Apply ``items`` in order in one WriteBatch; one :class:`CardOut` each."""
        with gc_paused():
            before = self.db.seq
            try:
                return self._process(items)
            except BaseException:
                self.db.rollback_seq(before)
                raise

    def _process(self, items: Sequence[CardIn]) -> list[CardOut]:
        db = self.db
        stored = db.get_many([keys.txn_key(keys.SEEN, it.txn.transaction_id) for it in items])
        seen: dict[str, tuple[Seen, np.ndarray | None]] = {}
        for it, raw in zip(items, stored, strict=True):
            if raw is not None and it.txn.transaction_id not in seen:
                seen[it.txn.transaction_id] = (Seen.decode(raw), None)
        if seen:
            self._load_rows(seen)
        fresh = [it for it in items if it.txn.transaction_id not in seen]
        cards = self._load_cards(fresh)
        batch = db.batch()
        out: list[CardOut] = []
        for it in items:
            tid = it.txn.transaction_id
            hit = seen.get(tid)
            if hit is not None:
                first, row = hit
                out.append(CardOut(REPEAT, row, first) if first.body == it.body
                           else CardOut(CONFLICT, None, first))
                continue
            values = card_step(cards[it.txn.card_id], it.features)
            row_bytes = _row_bytes(values)
            seq = db.next_seq()
            record = Seen(it.body, seq, it.partition, it.offset)
            batch.put(keys.txn_key(keys.SEEN, tid), record.encode())
            batch.put(keys.seq_key(seq), row_bytes)
            day = it.features.event_time // DAY_MS
            db.expire_on(batch, day + self._horizon_days, keys.SEEN, tid)
            db.today = max(db.today, day)
            row = np.frombuffer(row_bytes, dtype=np.float32)
            seen[tid] = (record, row)
            out.append(CardOut(FRESH, row))
        if fresh:
            for card_id, card in cards.items():
                batch.put(keys.card_key(card_id), card.encode())
            db.prune_recent(batch)
            db.sweep(batch)
            db.commit(batch)
        return out

    def _load_cards(self, fresh: Sequence[CardIn]) -> dict[str, CardState]:
        ids = list(dict.fromkeys(it.txn.card_id for it in fresh))
        raws = self.db.get_many([keys.card_key(c) for c in ids])
        return {c: CardState.decode(raw) if raw is not None else CardState()
                for c, raw in zip(ids, raws, strict=True)}

    def _load_rows(self, seen: dict[str, tuple[Seen, np.ndarray | None]]) -> None:
        """Attach the kept row of each repeated id (None once pruned)."""
        tids = list(seen)
        raws = self.db.get_many([keys.seq_key(seen[t][0].seq) for t in tids])
        for tid, raw in zip(tids, raws, strict=True):
            if raw is not None:
                seen[tid] = (seen[tid][0], np.frombuffer(raw, dtype=np.float32))

    def close(self) -> None:
        """Close the store."""
        self.db.close()
