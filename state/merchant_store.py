"""The merchant stage's store: merchant windows over all traffic, verdicts, labels.

One store per merchant shard (``<state_dir>/merchants/<shard>/``). Every
transaction of a merchant, whichever card partition it came from, and every
label of it, reach the same shard; the stage hands transactions over in event-time
order (:mod:`state.reorder`), so the rows equal the offline replay's.

Transactions (:meth:`MerchantStore.process`), a batch at a time, in the order given:

* a **new** transaction id: the merchant and context groups of its row are read
  as of just before it (the merchant kernel over every merchant of the batch,
  :func:`state.features.merchant_features`) and appended to the card group the
  card stage computed; the batch's rows are rendered into verdict bytes in one
  call (the caller scores them); ``v<transaction_id>`` keeps the verdict bytes
  for the transaction horizon and one blob the batch's rows (for recounting
  drift after a crash); labels that were waiting for these transactions are
  applied;
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
a window clock (see :mod:`state.kernels.merchant`), so the order of the two topics
changes no feature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Self

import msgspec
import numpy as np

from state import keys
from state.db import StateDB, StoreIdentity
from state.features import (
    CARD_COLUMNS,
    CONTEXT_COLUMNS,
    MERCHANT_COLUMNS,
    MerchantOps,
    context_features,
    gc_paused,
    merchant_features,
)
from state.inputs import FeatureInputs
from state.options import StoreOptions
from state.records import Incarnation, LabelMark, Verdict
from state.spec import INDEX, N_FEATURES
from state.transaction import StoreTransaction
from state.units import DAY_MS
from topics.contracts import Label

FRESH, REPEAT, REPLAY, CONFLICT, MISSING = 0, 1, 2, 3, 4
_NEW_MERCHANT = INDEX["card_new_merchant_30d"]
_label_json = msgspec.json.Encoder().encode
_label_decode = msgspec.json.Decoder(Label).decode

#: ``render(positions, matrix)``: the verdict bytes of the new transactions at
#: ``positions`` (int array of indices into the batch), given their float32 rows
#: ``[len(positions), N_FEATURES]``.
Render = Callable[[np.ndarray, np.ndarray], Sequence[bytes]]


@dataclass(frozen=True, slots=True)
class MerchantBatch:
    """``n`` transactions for the merchant store, as columns, in the order to apply them."""

    transaction_ids: Sequence[str]
    merchant_ids: Sequence[str]
    body: np.ndarray
    """uint64 body digests."""
    partition: np.ndarray
    """int32 source partitions."""
    offset: np.ndarray
    """int64 source offsets."""
    inputs: FeatureInputs
    card_rows: np.ndarray
    """float32 ``[n, CARD_WIDTH]``: the card group the card stage computed."""
    has_row: np.ndarray
    """bool: the card stage handed a row (it keeps none for a long-past repeat)."""

    def __len__(self) -> int:
        return len(self.transaction_ids)


@dataclass(frozen=True, slots=True)
class MerchantOutcome:
    """What the merchant store made of each transaction of a :class:`MerchantBatch`."""

    kind: np.ndarray
    """int8 :data:`FRESH`, :data:`REPEAT`, :data:`REPLAY`, :data:`CONFLICT` or :data:`MISSING`."""
    output: list[bytes | None]
    """The verdict bytes (the stored ones for a repeat or replay)."""
    rows: np.ndarray
    """float32 ``[n, N_FEATURES]``: every new row; a replay's while its blob is kept."""
    has_row: np.ndarray
    first: list[Verdict | None]
    """For a new id its record; for a repeat, replay or conflict the first one's."""


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
        self._states: dict[str, bytes] = {}  # encoded merchant states, LRU order
        self._pending: set[str] = set()
        """Ids of labels waiting for their transaction (``p<transaction_id>``)."""
        for key in db.db.keys(from_key=keys.PENDING):
            if not isinstance(key, bytes) or key[:1] != keys.PENDING:
                break
            self._pending.add(key[1:].decode())
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
    def process(self, batch: MerchantBatch, render: Render
                ) -> tuple[MerchantOutcome, list[LabelJoin]]:
        """Score and apply ``batch`` in order, in one WriteBatch.

        Returns what became of each transaction, and the label joins this batch made
        (labels that were waiting for these transactions, and joins lost in a crash
        that a replay redoes). Raises :class:`~state.errors.StoreIOError` when the
        write fails (nothing is applied) or ``ValueError`` on a corrupt state.
        """
        with gc_paused():
            return self._process(batch, render)

    def _process(self, batch: MerchantBatch, render: Render
                 ) -> tuple[MerchantOutcome, list[LabelJoin]]:
        db = self.db
        n = len(batch)
        tids = batch.transaction_ids
        verdict_keys = [keys.VERDICT + t.encode() for t in tids]
        stored = db.get_many(verdict_keys)
        outcome = MerchantOutcome(np.full(n, MISSING, dtype=np.int8), [None] * n,
                                  np.zeros((n, N_FEATURES), dtype=np.float32),
                                  np.zeros(n, dtype=bool), [None] * n)
        if stored.count(None) == n and len(set(tids)) == n and batch.has_row.all():
            fresh = np.arange(n, dtype=np.int64)
            again: list[tuple[int, int]] = []
            replays: list[int] = []
        else:
            fresh, again, replays = self._classify(batch, stored, outcome)
        joins = self._redo_joins(tids, replays, outcome) if replays else []
        if len(fresh):
            joins += self._apply(fresh, batch, verdict_keys, outcome, render)
        for i, j in again:  # a repeat within the batch: of the new id at j
            first = outcome.first[j]
            if first is None:
                continue
            outcome.first[i] = first
            if first.body == int(batch.body[i]):
                outcome.kind[i], outcome.output[i] = REPEAT, first.output
            else:
                outcome.kind[i] = CONFLICT
        return outcome, joins

    def _classify(self, batch: MerchantBatch, stored: list[bytes | None],
                  outcome: MerchantOutcome
                  ) -> tuple[np.ndarray, list[tuple[int, int]], list[int]]:
        fresh: list[int] = []
        again: list[tuple[int, int]] = []
        replays: list[int] = []
        first_at: dict[str, int] = {}
        for i, raw in enumerate(stored):
            if raw is not None:
                first = Verdict.decode(raw)
                outcome.first[i] = first
                if first.body != int(batch.body[i]):
                    outcome.kind[i] = CONFLICT
                elif self.incarnation.is_replay(first.seq):
                    outcome.kind[i], outcome.output[i] = REPLAY, first.output
                    replays.append(i)
                else:
                    outcome.kind[i], outcome.output[i] = REPEAT, first.output
                continue
            tid = batch.transaction_ids[i]
            j = first_at.get(tid)
            if j is not None:
                again.append((i, j))
            elif batch.has_row[i]:
                first_at[tid] = i
                fresh.append(i)
        return np.asarray(fresh, dtype=np.int64), again, replays

    def _apply(self, fresh: np.ndarray, batch: MerchantBatch, verdict_keys: list[bytes],
               outcome: MerchantOutcome, render: Render) -> list[LabelJoin]:
        db = self.db
        f = len(fresh)
        fresh_list = fresh.tolist()
        inputs = batch.inputs if f == len(batch) else batch.inputs.take(fresh)
        matrix = np.empty((f, N_FEATURES), dtype=np.float32)
        matrix[:, CARD_COLUMNS] = batch.card_rows[fresh]
        familiar = matrix[:, _NEW_MERCHANT] == 0.0
        ids: dict[str, int] = {}
        mids = batch.merchant_ids
        merchant_of = np.fromiter((ids.setdefault(mids[i], len(ids)) for i in fresh_list),
                                  np.int64, f)
        ops = MerchantOps()
        waiting = [k for k, i in enumerate(fresh_list)
                   if batch.transaction_ids[i] in self._pending] if self._pending else []
        labels: dict[int, Label] = {}
        if waiting:
            raws = db.get_many([keys.PENDING + batch.transaction_ids[fresh_list[k]].encode()
                                for k in waiting])
            labels = {k: _label_decode(r) for k, r in zip(waiting, raws, strict=True)
                      if r is not None}
            for k in range(f):
                ops.txn(int(merchant_of[k]), int(inputs.event_ms[k]), k)
                label = labels.get(k)
                if label is not None and label.is_fraud and label.merchant_id == mids[
                        fresh_list[k]]:  # the label waited for this transaction
                    ops.aligned(int(merchant_of[k]), int(inputs.event_ms[k]), label.label_time,
                                bool(familiar[k]))
        else:
            ops.txns(merchant_of, inputs.event_ms, np.arange(f, dtype=np.int64))
        states = self._load(list(ids))
        matrix[:, MERCHANT_COLUMNS], new_states = merchant_features(states, ops, f)
        matrix[:, CONTEXT_COLUMNS] = context_features(inputs)
        outputs = render(fresh, matrix)
        txn = StoreTransaction(db)
        first = txn.next_seqs(f)
        joins: list[LabelJoin] = []
        event_ms = inputs.event_ms.tolist()
        for k, i in enumerate(fresh_list):
            record = Verdict(int(batch.body[i]), first + k, int(batch.partition[i]),
                             int(batch.offset[i]), first, event_ms[k], bool(familiar[k]),
                             mids[i], outputs[k])
            txn.put(verdict_keys[i], record.encode())
            outcome.first[i] = record
            outcome.output[i] = outputs[k]
        for k, label in labels.items():
            tid = batch.transaction_ids[fresh_list[k]]
            txn.delete(keys.PENDING + tid.encode())
            joins.append(LabelJoin(label, outcome.first[fresh_list[k]]))
        txn.put(keys.seq_key(first), matrix.tobytes())
        days = inputs.event_ms // DAY_MS
        txn.expire_many(days + self._txn_days, [verdict_keys[i] for i in fresh_list])
        txn.saw(int(days.max()))
        for merchant_id, state in zip(ids, new_states, strict=True):
            txn.put(keys.MERCHANT + merchant_id.encode(), state)
        txn.prune_rows()
        expired = txn.sweep()
        txn.commit()
        self._remember(ids, new_states)
        for k in labels:
            self._pending.discard(batch.transaction_ids[fresh_list[k]])
        self._expired(expired)
        outcome.kind[fresh] = FRESH
        outcome.rows[fresh] = matrix
        outcome.has_row[fresh] = True
        return joins

    def _redo_joins(self, tids: Sequence[str], replays: list[int],
                    outcome: MerchantOutcome) -> list[LabelJoin]:
        """Rows and label joins of replayed verdicts, lost with the crashed process's memory."""
        firsts = [outcome.first[i] for i in replays]
        blobs = list({f.rows for f in firsts if f is not None})
        found = dict(zip(blobs, self.db.get_many([keys.seq_key(b) for b in blobs]),
                         strict=True))
        marks = self.db.get_many([keys.LABEL + tids[i].encode() for i in replays])
        joins: list[LabelJoin] = []
        width = N_FEATURES * 4
        for i, first, mark in zip(replays, firsts, marks, strict=True):
            assert first is not None
            blob = found[first.rows]
            at = (first.seq - first.rows) * width
            if blob is not None and at + width <= len(blob):
                outcome.rows[i] = np.frombuffer(blob, np.float32, N_FEATURES, at)
                outcome.has_row[i] = True
            label = LabelMark.decode(mark) if mark is not None else None
            if label is not None and label.seq < first.seq:
                # the label waited for this transaction and was joined when it was scored
                joins.append(LabelJoin(Label(
                    transaction_id=tids[i], card_id="", merchant_id=first.merchant_id,
                    is_fraud=label.is_fraud, label_time=label.label_time), first, replay=True))
        return joins

    # --- labels ------------------------------------------------------------------------
    def apply_labels(self, labels: Sequence[Label]) -> list[LabelJoin]:
        """Apply labels in order (first label of an id wins) in one WriteBatch.

        Returns the joins to count for label feedback: new labels whose
        transaction is known (verdict) or not (None, and the label waits); and
        labels applied before a crash whose join was lost (``replay``).
        """
        if not labels:
            return []
        with gc_paused():
            return self._apply_labels(labels)

    def _apply_labels(self, labels: Sequence[Label]) -> list[LabelJoin]:
        db = self.db
        tids = [lab.transaction_id for lab in labels]
        found = db.get_many([keys.LABEL + t.encode() for t in tids]
                            + [keys.VERDICT + t.encode() for t in tids])
        marks, verdicts = found[: len(labels)], found[len(labels):]
        txn = StoreTransaction(db)
        joins: list[LabelJoin] = []
        done: set[str] = set()
        ops = MerchantOps()
        ids: dict[str, int] = {}
        waiting: list[str] = []
        for label, mark_raw, verdict_raw in zip(labels, marks, verdicts, strict=True):
            tid = label.transaction_id
            if tid in done:
                continue
            done.add(tid)
            verdict = Verdict.decode(verdict_raw) if verdict_raw is not None else None
            mark = LabelMark.decode(mark_raw) if mark_raw is not None else None
            if mark is not None and not relabels(mark.label_time, label.label_time,
                                                 db.options.label_horizon_ms):
                if self.incarnation.is_replay(mark.seq) and (
                        verdict is None or verdict.seq < mark.seq):
                    joins.append(LabelJoin(label, verdict, replay=True))
                continue
            seq = txn.next_seqs(1)
            key = keys.LABEL + tid.encode()
            txn.put(key, LabelMark(label.label_time, seq, label.is_fraud).encode())
            label_day = label.label_time // DAY_MS
            # kept past the label horizon (see relabels), so the sweep never decides a repeat
            txn.expire(label_day + self._label_days + self._txn_days, key)
            if label.is_fraud:
                m = ids.setdefault(label.merchant_id, len(ids))
                ops.fraud(m, label.label_time)
                if verdict is not None and verdict.merchant_id == label.merchant_id:
                    ops.aligned(m, verdict.event_time, label.label_time, verdict.familiar)
            if verdict is None:
                pending = keys.PENDING + tid.encode()
                txn.put(pending, _label_json(label))
                txn.expire(label_day + self._txn_days, pending)
                waiting.append(tid)
            joins.append(LabelJoin(label, verdict))
        if txn.seq == db.seq:
            return joins
        new_states: list[bytes] = []
        if ids:
            _, new_states = merchant_features(self._load(list(ids)), ops, 0)
            for merchant_id, state in zip(ids, new_states, strict=True):
                txn.put(keys.MERCHANT + merchant_id.encode(), state)
        txn.commit()
        self._remember(ids, new_states)
        self._pending.update(waiting)
        return joins

    # --- merchant states ---------------------------------------------------------------
    def _load(self, merchant_ids: list[str]) -> list[bytes | None]:
        """Encoded states of ``merchant_ids`` (memory first, then one multi-get)."""
        cache = self._states
        out: list[bytes | None] = [cache.get(m) for m in merchant_ids]
        missing = [k for k, s in enumerate(out) if s is None]
        if missing:
            raws = self.db.get_many([keys.MERCHANT + merchant_ids[k].encode() for k in missing])
            for k, raw in zip(missing, raws, strict=True):
                out[k] = raw
        return out

    def _remember(self, merchant_ids: Iterable[str], states: Sequence[bytes]) -> None:
        """Keep committed states in memory (most recently used last, bounded)."""
        cache = self._states
        for m, state in zip(merchant_ids, states, strict=True):
            cache.pop(m, None)
            cache[m] = state
        excess = len(cache) - self.db.options.merchant_cache
        if excess > 0:
            for m in list(cache)[:excess]:
                del cache[m]

    def _expired(self, pending_keys: list[bytes]) -> None:
        """Labels that waited in vain: forget them, count them."""
        for key in pending_keys:
            self._pending.discard(key[1:].decode())
        self.unknown_labels += len(pending_keys)

    def close(self) -> None:
        """Close the store."""
        self.db.close()
