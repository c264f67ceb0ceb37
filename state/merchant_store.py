"""The merchant stage's store: merchant windows over all traffic, verdicts, labels.

One store per merchant shard (``<state_dir>/merchants/<shard>/``). Every
transaction of a merchant, whichever card partition it came from, and every
label of it, reach the same shard.

Transactions (:meth:`MerchantStore.process`), in the order given:

* a **new** transaction id: the merchant and context groups of its row are
  read as of just before it and appended to the card group the card stage
  computed; the batch's new rows are rendered into verdict bytes in one call
  (the caller scores them); ``v<transaction_id>`` keeps the verdict bytes for the
  transaction horizon and ``r<seq>`` the row (for recounting drift after a crash);
  labels that were waiting for this transaction are applied;
* an id already scored with the **same body**: its stored verdict bytes are
  returned unchanged, as a **replay** (lost work after a crash: its drift counts
  and label joins must be redone) or a **re-delivery** (nothing to redo), see
  :class:`~state.records.Incarnation`;
* an id already scored with **another body**: a conflict.

Labels (:meth:`MerchantStore.apply_labels`): the first label of a transaction
id wins (``l<transaction_id>``). A fraud label counts at its label hour at once;
its transaction's day (for the delay-aligned risk) comes from the stored verdict,
or, when the label is read before its transaction, the label waits under
``p<transaction_id>`` and is applied when the transaction is scored. Neither moves
a window clock (see :mod:`state.merchant`), so the order of the two topics changes
no feature.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, Self

import msgspec
import numpy as np

from state import keys
from state.card_store import CARD_WIDTH
from state.db import DAY_MS, StateDB, StoreIdentity
from state.features import gc_paused, merchant_step
from state.inputs import TxnInput
from state.merchant import MerchantState
from state.options import StoreOptions
from state.records import Incarnation, LabelMark, Verdict
from state.spec import INDEX, N_FEATURES
from topics.contracts import Label, Transaction

FRESH, REPEAT, REPLAY, CONFLICT, MISSING = 0, 1, 2, 3, 4
_NEW_MERCHANT = INDEX["card_new_merchant_30d"]
_label_json = msgspec.json.Encoder().encode
_label_decode = msgspec.json.Decoder(Label).decode

#: ``render(positions, matrix)``: the verdict bytes of the new transactions at
#: ``positions`` (indices into the batch), given their float32 rows [n, N_FEATURES].
Render = Callable[[Sequence[int], np.ndarray], Sequence[bytes]]


class MerchantIn(NamedTuple):
    """One transaction for the merchant stage, with what the card stage made of it."""

    txn: Transaction
    features: TxnInput
    body: int
    partition: int
    offset: int
    card_row: np.ndarray | None
    """Card group of the row (float32 [CARD_WIDTH]); None when the card stage kept none."""


class MerchantOut(NamedTuple):
    """What the merchant stage made of one transaction."""

    kind: int
    """:data:`FRESH`, :data:`REPEAT`, :data:`REPLAY`, :data:`CONFLICT` or :data:`MISSING`."""
    output: bytes | None
    """The verdict bytes (stored ones for a repeat or replay)."""
    row: np.ndarray | None = None
    """The full float32 row: new ones always, replays while ``r<seq>`` is kept."""
    first: Verdict | None = None
    """For a conflict or repeat: the verdict record of the first time."""


def relabels(first_ms: int, again_ms: int, horizon_ms: int) -> bool:
    """Whether a second label of a transaction id counts as a new one.

    The first label wins for ``horizon_ms``, judged on label times, so the answer does
    not depend on the order labels are read in.
    """
    return again_ms - first_ms >= horizon_ms


class LabelJoin(NamedTuple):
    """A label and the verdict it judges (None: not scored here)."""

    label: Label
    verdict: Verdict | None
    replay: bool = False
    """Joined before a crash and lost with the process's memory: count it again."""


class MerchantStore:
    """Merchant state, verdicts and labels of one merchant shard."""

    def __init__(self, db: StateDB, incarnation: Incarnation | None = None) -> None:
        self.db = db
        self.incarnation = incarnation or Incarnation(db.seq, db.seq)
        opts = db.options
        self._txn_days = opts.txn_horizon_ms // DAY_MS
        self._label_days = opts.label_horizon_ms // DAY_MS
        self._merchants: dict[str, MerchantState] = {}  # write-through, LRU order
        self.unknown_labels = 0
        """Labels whose transaction never arrived within the horizon (a running count)."""

    @classmethod
    def open(cls, state_dir: Path, identity: StoreIdentity,
             options: StoreOptions | None = None) -> Self:
        """Open (creating) the store of ``identity.shard`` under ``state_dir/merchants``."""
        return cls(StateDB.open(Path(state_dir) / "merchants" / str(identity.shard), identity,
                                options))

    def resume(self, snapshot_seq: int) -> None:
        """Record the sequence number of the recovery snapshot this process resumed from."""
        self.incarnation = Incarnation(snapshot_seq, self.db.seq)

    @property
    def seq(self) -> int:
        """Changes applied so far."""
        return self.db.seq

    def checkpoint(self) -> int:
        """Bytewax snapshots now: see :meth:`state.db.StateDB.checkpoint`."""
        return self.db.checkpoint()

    # --- transactions ------------------------------------------------------------------
    def process(self, items: Sequence[MerchantIn], render: Render
                ) -> tuple[list[MerchantOut], list[LabelJoin]]:
        """Score and apply ``items`` in order, in one WriteBatch.

        Returns one :class:`MerchantOut` per item, and the label joins this batch
        made (labels that were waiting for these transactions, and joins lost in a
        crash that a replay redoes).
        """
        with gc_paused(), self._guard():
            return self._process(items, render)

    def _process(self, items: Sequence[MerchantIn], render: Render
                 ) -> tuple[list[MerchantOut], list[LabelJoin]]:
        db = self.db
        tids = [it.txn.transaction_id for it in items]
        found = db.get_many([keys.txn_key(keys.VERDICT, t) for t in tids]
                            + [keys.txn_key(keys.PENDING, t) for t in tids])
        stored, pending_raw = found[: len(items)], found[len(items):]
        out: list[MerchantOut | None] = [None] * len(items)
        first_at: dict[str, int] = {}  # new id -> position of its first occurrence
        fresh: list[int] = []
        replays: list[int] = []
        for i, (it, raw) in enumerate(zip(items, stored, strict=True)):
            tid = it.txn.transaction_id
            if raw is not None:
                first = Verdict.decode(raw)
                if first.body != it.body:
                    out[i] = MerchantOut(CONFLICT, None, None, first)
                elif self.incarnation.is_replay(first.seq):
                    out[i] = MerchantOut(REPLAY, first.output, None, first)
                    replays.append(i)
                else:
                    out[i] = MerchantOut(REPEAT, first.output, None, first)
            elif tid in first_at:
                continue  # a repeat within the batch: filled in once the first is rendered
            elif it.card_row is None:
                out[i] = MerchantOut(MISSING, None)
            else:
                first_at[tid] = i
                fresh.append(i)
        joins = self._redo_joins(items, replays, out) if replays else []
        if not fresh:
            return [o if o is not None else MerchantOut(MISSING, None) for o in out], joins
        batch = db.batch()
        merchants = self._load([items[i].txn.merchant_id for i in fresh])
        matrix = np.empty((len(fresh), N_FEATURES), dtype=np.float32)
        waiting: list[Label | None] = []
        for j, i in enumerate(fresh):
            it = items[i]
            merchant = merchants[it.txn.merchant_id]
            matrix[j, :CARD_WIDTH] = it.card_row
            matrix[j, CARD_WIDTH:] = merchant_step(merchant, it.features)
            raw = pending_raw[i]
            label = _label_decode(raw) if raw is not None else None
            waiting.append(label)
            if label is not None and label.is_fraud and label.merchant_id == it.txn.merchant_id:
                # the label waited for this transaction: it counts from now on, in stream order
                merchant.add_aligned_fraud(it.features.event_time, label.label_time,
                                           bool(matrix[j, _NEW_MERCHANT] == 0.0))
        outputs = render(fresh, matrix)
        for j, i in enumerate(fresh):
            it = items[i]
            tid = it.txn.transaction_id
            seq = db.next_seq()
            familiar = bool(matrix[j, _NEW_MERCHANT] == 0.0)
            record = Verdict(it.body, seq, it.partition, it.offset, it.features.event_time,
                             familiar, it.txn.merchant_id, outputs[j])
            batch.put(keys.txn_key(keys.VERDICT, tid), record.encode())
            batch.put(keys.seq_key(seq), matrix[j].tobytes())
            day = it.features.event_time // DAY_MS
            db.expire_on(batch, day + self._txn_days, keys.VERDICT, tid)
            db.today = max(db.today, day)
            out[i] = MerchantOut(FRESH, outputs[j], matrix[j], record)
            label = waiting[j]
            if label is not None:
                batch.delete(keys.txn_key(keys.PENDING, tid))
                joins.append(LabelJoin(label, record))
        for i, it in enumerate(items):
            if out[i] is None:  # a repeat within the batch
                first_out = out[first_at[it.txn.transaction_id]]
                assert first_out is not None and first_out.first is not None
                same = first_out.first.body == it.body
                out[i] = (MerchantOut(REPEAT, first_out.output, None, first_out.first) if same
                          else MerchantOut(CONFLICT, None, None, first_out.first))
        for merchant_id, merchant in merchants.items():
            batch.put(keys.merchant_key(merchant_id), merchant.encode())
        db.prune_recent(batch)
        self.unknown_labels += db.sweep(batch)
        db.commit(batch)
        return [o for o in out if o is not None], joins

    def _redo_joins(self, items: Sequence[MerchantIn], replays: list[int],
                    out: list[MerchantOut | None]) -> list[LabelJoin]:
        """Rows and label joins of replayed verdicts, lost with the crashed process's memory."""
        firsts = [out[i].first for i in replays]  # type: ignore[union-attr]
        rows = self.db.get_many([keys.seq_key(f.seq) for f in firsts if f is not None])
        marks = self.db.get_many(
            [keys.txn_key(keys.LABEL, items[i].txn.transaction_id) for i in replays])
        joins: list[LabelJoin] = []
        for i, first, row, mark in zip(replays, firsts, rows, marks, strict=True):
            assert first is not None
            if row is not None:
                out[i] = out[i]._replace(row=np.frombuffer(row, dtype=np.float32))  # type: ignore[union-attr]
            label = LabelMark.decode(mark) if mark is not None else None
            if label is not None and label.seq < first.seq:
                # the label waited for this transaction and was joined when it was scored
                joins.append(LabelJoin(self._label_of(items[i].txn, label), first, replay=True))
        return joins

    @staticmethod
    def _label_of(txn: Transaction, mark: LabelMark) -> Label:
        return Label(transaction_id=txn.transaction_id, card_id=txn.card_id,
                     merchant_id=txn.merchant_id, is_fraud=mark.is_fraud,
                     label_time=mark.label_time)

    # --- labels ------------------------------------------------------------------------
    def apply_labels(self, labels: Sequence[Label]) -> list[LabelJoin]:
        """Apply labels in order (first label of an id wins) in one WriteBatch.

        Returns the joins to count for label feedback: new labels whose
        transaction is known (verdict) or not (None, and the label waits); and
        labels applied before a crash whose join was lost (``replay``).
        """
        if not labels:
            return []
        with self._guard():
            return self._apply_labels(labels)

    def _apply_labels(self, labels: Sequence[Label]) -> list[LabelJoin]:
        db = self.db
        tids = [lab.transaction_id for lab in labels]
        found = db.get_many([keys.txn_key(keys.LABEL, t) for t in tids]
                            + [keys.txn_key(keys.VERDICT, t) for t in tids])
        marks, verdicts = found[: len(labels)], found[len(labels):]
        batch = db.batch()
        joins: list[LabelJoin] = []
        done: set[str] = set()
        merchants: dict[str, MerchantState] = {}
        changed = False
        for label, mark_raw, verdict_raw in zip(labels, marks, verdicts, strict=True):
            tid = label.transaction_id
            if tid in done:
                continue
            done.add(tid)
            verdict = Verdict.decode(verdict_raw) if verdict_raw is not None else None
            mark = LabelMark.decode(mark_raw) if mark_raw is not None else None
            if mark is not None and not relabels(mark.label_time, label.label_time,
                                                 self.db.options.label_horizon_ms):
                if self.incarnation.is_replay(mark.seq) and (
                        verdict is None or verdict.seq < mark.seq):
                    joins.append(LabelJoin(label, verdict, replay=True))
                continue
            changed = True
            seq = db.next_seq()
            batch.put(keys.txn_key(keys.LABEL, tid),
                      LabelMark(label.label_time, seq, label.is_fraud).encode())
            label_day = label.label_time // DAY_MS
            # kept past the label horizon (see relabels), so the sweep never decides a repeat
            db.expire_on(batch, label_day + self._label_days + self._txn_days, keys.LABEL, tid)
            if label.is_fraud:
                if label.merchant_id not in merchants:
                    merchants.update(self._load([label.merchant_id]))
                merchant = merchants[label.merchant_id]
                merchant.add_fraud(label.label_time)
                if verdict is not None and verdict.merchant_id == label.merchant_id:
                    merchant.add_aligned_fraud(verdict.event_time, label.label_time,
                                               verdict.familiar)
            if verdict is None:
                batch.put(keys.txn_key(keys.PENDING, tid), _label_json(label))
                db.expire_on(batch, label_day + self._txn_days, keys.PENDING, tid)
            joins.append(LabelJoin(label, verdict))
        if changed:
            for merchant_id, merchant in merchants.items():
                batch.put(keys.merchant_key(merchant_id), merchant.encode())
            db.commit(batch)
        return joins

    # --- merchant states ---------------------------------------------------------------
    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Undo in-memory effects of a batch that did not commit (cache, sequence)."""
        seq = self.db.seq
        try:
            yield
        except BaseException:
            self._merchants.clear()
            self.db.rollback_seq(seq)
            raise

    def _load(self, merchant_ids: list[str]) -> dict[str, MerchantState]:
        """Decoded states of ``merchant_ids`` (cache first, then one multi-get)."""
        cache = self._merchants
        found: dict[str, MerchantState] = {}
        missing: list[str] = []
        for m in dict.fromkeys(merchant_ids):
            state = cache.pop(m, None)
            if state is None:
                missing.append(m)
            else:
                found[m] = state
        if missing:
            raws = self.db.get_many([keys.merchant_key(m) for m in missing])
            for m, raw in zip(missing, raws, strict=True):
                found[m] = MerchantState.decode(raw) if raw is not None else MerchantState()
        cache.update(found)  # re-inserted: most recently used last
        excess = len(cache) - self.db.options.merchant_cache
        if excess > 0:
            for key in list(itertools.islice(cache, excess)):
                del cache[key]
        return found

    def close(self) -> None:
        """Close the store."""
        self.db.close()

