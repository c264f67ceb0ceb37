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
  call (the caller scores them); ``j<transaction_id>`` records that the id was
  scored (:class:`~state.records.LabelTarget`, kept for the label horizon), one
  blob per batch keeps the verdict bytes for the transaction horizon (``o<seq>``)
  and one the batch's rows (``r<seq>``, for recounting drift after a crash);
  labels that were waiting for these transactions are applied;
* an id already scored with the **same body**: its stored verdict bytes are
  returned unchanged, as a **replay** (lost work after a crash: its drift counts
  and label joins must be redone) or a **re-delivery** (nothing to redo), see
  :class:`~state.records.Incarnation`;
* an id already scored with **another body**: a conflict.

An id whose verdicts blob is gone (past the transaction horizon, as the card stage's
record of it) counts as new again: it is scored, and its ``j`` record replaced.

Labels (:meth:`MerchantStore.apply_labels`), resolved by :mod:`state.labels` (the
label contract, ``docs/labels.md``): a label joins only a transaction this store
scored, through its compact record ``j<id>`` (:class:`~state.records.LabelTarget`,
kept for the label horizon, ``label_horizon_ms``, well past the verdict), and
changes only *that transaction's* merchant (the merchant named in the label is not
trusted; a mismatch is counted). The label in force (latest ``label_time``; on a tie
fraud wins) is kept under ``l<id>`` as long: a repeat changes nothing, a correction
retracts the earlier fraud count (or adds one) from its own time on. A label whose
transaction is not known waits under ``p<id>`` (the winning one, with where it was
read), is counted (:attr:`MerchantStore.unknown_labels`), joins when the transaction
is scored, or, when its wait ends (``txn_horizon_ms`` after the first such label,
in the store's event days), expires: :meth:`MerchantStore.take_expired` hands it on
for the dead-letter topic (kept under ``e<seq>`` until the next recovery snapshot,
so a crash re-sends it). Labels never move a window clock (see
:mod:`state.kernels.merchant`) and the merchant stage applies them at their label
time among the transactions, so the order of the two topics changes no feature.

**Late chargebacks.** A label 60 or 120 days after its transaction joins through
``j<id>`` (the stored verdict is gone after ``txn_horizon_ms``) and moves the
label-hour features and label feedback as a prompt one does; one ``label_horizon_ms``
or more after it (``FRAUD_LABEL_HORIZON_DAYS``, 180 days by default) is unknown and
expires to ``dead-letter``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import NamedTuple, Self

import numpy as np

from state import keys
from state import labels as contract
from state.changelog import ChangeSink
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
from state.records import (
    NO_LABEL,
    Incarnation,
    LabelMark,
    LabelTarget,
    PendingLabel,
    Verdict,
    encode_targets,
    encode_verdicts,
    scored,
    verdict_gist,
)
from state.spec import INDEX, N_FEATURES
from state.transaction import StoreTransaction
from state.units import DAY_MS
from topics.contracts import Label

FRESH, REPEAT, REPLAY, CONFLICT, MISSING = 0, 1, 2, 3, 4
_NEW_MERCHANT = INDEX["card_new_merchant_30d"]


class Rendered(NamedTuple):
    """The verdict bytes of a batch's new transactions and the gist of each.

    A gist is :func:`~state.records.verdict_gist` of the verdict: what a label joined
    later reads of it.
    """

    outputs: Sequence[bytes]
    gists: Sequence[bytes]


#: ``render(positions, matrix)``: the verdict bytes of the new transactions at
#: ``positions`` (int array of indices into the batch), given their float32 rows
#: ``[len(positions), N_FEATURES]``; a :class:`Rendered` when the renderer has the
#: gists at hand, else the store reads them from the bytes.
Render = Callable[[np.ndarray, np.ndarray], Sequence[bytes] | Rendered]


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

    def slice(self, start: int, stop: int) -> MerchantBatch:
        """Transactions ``start:stop``."""
        stop = min(stop, len(self))
        return MerchantBatch(self.transaction_ids[start:stop], self.merchant_ids[start:stop],
                             self.body[start:stop], self.partition[start:stop],
                             self.offset[start:stop],
                             self.inputs.take(np.arange(start, stop, dtype=np.int64)),
                             self.card_rows[start:stop], self.has_row[start:stop])


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

    @classmethod
    def concat(cls, parts: Sequence[MerchantOutcome]) -> MerchantOutcome:
        """The outcomes of consecutive slices of one batch, as one."""
        return cls(np.concatenate([p.kind for p in parts]),
                   [x for p in parts for x in p.output],
                   np.concatenate([p.rows for p in parts]),
                   np.concatenate([p.has_row for p in parts]),
                   [x for p in parts for x in p.first])


class LabelSource(NamedTuple):
    """Where a label was read: its ``labels`` partition, offset and Kafka timestamp (ms)."""

    partition: int
    offset: int
    record_ms: int


_NO_SOURCE = LabelSource(-1, -1, 0)


class LabelJoin(NamedTuple):
    """A label in force for a scored transaction, and the verdict it judges (for feedback)."""

    label: Label
    verdict: Verdict
    replay: bool = False
    """Joined before a crash and lost with the process's memory: count it again."""
    replaces: bool | None = None
    """The truth this label replaces in label feedback (None: nothing to take back)."""
    replaces_time: int = 0
    """``label_time`` of the label it replaces (0: unknown, after a crash)."""


def _truth(is_fraud: bool | None) -> int:
    return NO_LABEL if is_fraud is None else int(is_fraud)


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
        """Labels for a transaction not known here (not scored, or past the horizon), that
        wait (a running count; an exact repeat of the waiting label is not counted)."""
        self.mismatched_labels = 0
        """Labels naming another merchant than their transaction's (a running count)."""
        self.expired: list[PendingLabel] = []
        """Labels whose wait ended, for the dead-letter topic (:meth:`take_expired`)."""
        self._expired_blobs: list[int] = []
        self._redone: set[str] = set()
        """Ids whose label feedback this process counted again after a crash (once each)."""

    @classmethod
    def open(cls, state_dir: Path, identity: StoreIdentity,
             options: StoreOptions | None = None, changelog: ChangeSink | None = None,
             at_least: int = 0) -> Self:
        """Open (creating) the store of ``identity.shard`` under ``state_dir/merchants``.

        ``changelog``, ``at_least``: see :meth:`state.db.StateDB.open`.
        """
        return cls(StateDB.open(Path(state_dir) / "merchants" / str(identity.shard), identity,
                                options, changelog=changelog, at_least=at_least))

    def resume(self, snapshot_seq: int) -> None:
        """Record the sequence number of the recovery snapshot this process resumed from.

        Labels that expired after that snapshot are handed on again (their dead letters
        may have been lost with the crashed process).
        """
        self.incarnation = Incarnation(snapshot_seq, self.db.seq)
        # what the flow can resume from again: label feedback bases and kept blobs refer to it
        self.db.safe = (min(self.db.safe[0], snapshot_seq), self.db.safe[1])
        self._redone = set()
        self.expired = []
        self._expired_blobs = []
        for key, value in self.db.db.items(from_key=keys.expired_labels_key(snapshot_seq + 1)):
            if not isinstance(key, bytes) or key[:1] != keys.EXPIRED_LABELS:
                break
            self._expired_blobs.append(keys.unpack_u64(key[1:]))
            self.expired += [PendingLabel.decode(r) for r in keys.unpack_keys(value)]

    @property
    def waiting(self) -> int:
        """Labels waiting for their transaction."""
        return len(self._pending)

    def take_expired(self) -> list[PendingLabel]:
        """The labels whose wait for their transaction ended since the last call."""
        out, self.expired = self.expired, []
        return out

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
        """Score and apply ``batch`` in order, in one WriteBatch per ``commit_max`` transactions.

        Returns what became of each transaction, and the label joins this batch made
        (labels that were waiting for these transactions, and joins lost in a crash
        that a replay redoes). Raises :class:`~state.errors.StoreIOError` when the
        write fails (nothing is applied) or ``ValueError`` on a corrupt state.
        """
        step = self.db.options.commit_max
        with gc_paused():
            if len(batch) <= step:
                return self._process(batch, render)
            outcomes: list[MerchantOutcome] = []
            joins: list[LabelJoin] = []
            for a in range(0, len(batch), step):
                def shifted(fresh: np.ndarray, matrix: np.ndarray, a: int = a
                            ) -> Sequence[bytes] | Rendered:
                    return render(fresh + a, matrix)  # positions in the whole batch
                outcome, made = self._process(batch.slice(a, a + step), shifted)
                outcomes.append(outcome)
                joins += made
            return MerchantOutcome.concat(outcomes), joins

    def _process(self, batch: MerchantBatch, render: Render
                 ) -> tuple[MerchantOutcome, list[LabelJoin]]:
        db = self.db
        n = len(batch)
        tids = batch.transaction_ids
        target_keys = [keys.TARGET + t.encode() for t in tids]
        stored = db.get_many(target_keys)
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
            joins += self._apply(fresh, batch, target_keys, outcome, render)
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
        targets = [LabelTarget.decode(raw) if raw is not None else None for raw in stored]
        batches = list({t.rows for t in targets if t is not None})
        blobs = dict(zip(batches, self.db.get_many([keys.verdicts_key(b) for b in batches]),
                         strict=True))
        for i, target in enumerate(targets):
            first = scored(target, blobs[target.rows]) if target is not None else None
            if first is not None:
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

    def _apply(self, fresh: np.ndarray, batch: MerchantBatch, target_keys: list[bytes],
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
        joined: dict[int, tuple[PendingLabel, contract.Current]] = {}
        if waiting:
            raws = db.get_many([keys.PENDING + batch.transaction_ids[fresh_list[k]].encode()
                                for k in waiting])
            pending = {k: PendingLabel.decode(r) for k, r in zip(waiting, raws, strict=True)
                       if r is not None}
            for k in range(f):
                t = int(inputs.event_ms[k])
                ops.txn(int(merchant_of[k]), t, k)
                waited = pending.get(k)
                if waited is not None and contract.still_waiting(waited.first_ms, t,
                                                                 self._txn_days):
                    # the label waited for this transaction: it counts right after it
                    label = waited.label
                    current, effect = contract.first_label(label.label_time, label.is_fraud, t)
                    ops.effect(int(merchant_of[k]), t, bool(familiar[k]), effect)
                    joined[k] = (waited, current)
        else:
            ops.txns(merchant_of, inputs.event_ms, np.arange(f, dtype=np.int64))
        states = self._load(list(ids))
        matrix[:, MERCHANT_COLUMNS], new_states = merchant_features(states, ops, f)
        matrix[:, CONTEXT_COLUMNS] = context_features(inputs)
        rendered = render(fresh, matrix)
        if isinstance(rendered, Rendered):
            outputs, gists = rendered
        else:
            outputs, gists = rendered, [verdict_gist(out) for out in rendered]
        txn = StoreTransaction(db)
        first = txn.next_seqs(f)
        joins: list[LabelJoin] = []
        fresh_targets = [target_keys[i] for i in fresh_list]
        merchants = [mids[i] for i in fresh_list]
        body, partition, offset = batch.body[fresh], batch.partition[fresh], batch.offset[fresh]
        verdicts_key = keys.verdicts_key(first)
        txn.put(verdicts_key, encode_verdicts(body, partition, offset, outputs))
        txn.put_many(fresh_targets, encode_targets(first, inputs.event_ms, familiar,
                                                   [m.encode() for m in merchants], gists))
        for k, record in enumerate(map(Verdict._make, zip(
                body.tolist(), range(first, first + f), partition.tolist(), offset.tolist(),
                repeat(first, f), inputs.event_ms.tolist(), familiar.tolist(), merchants,
                outputs, strict=True))):
            outcome.first[fresh_list[k]] = record
            outcome.output[fresh_list[k]] = record.output
        for k, (waited, current) in joined.items():
            record = outcome.first[fresh_list[k]]
            assert record is not None
            key = batch.transaction_ids[fresh_list[k]].encode()
            txn.delete(keys.PENDING + key)
            txn.put(keys.LABEL + key, LabelMark(
                current.label_time, txn.next_seqs(1), current.is_fraud, current.since,
                NO_LABEL, True).encode())
            joins.append(LabelJoin(waited.label, record))
        txn.put(keys.seq_key(first), matrix.tobytes())
        days = inputs.event_ms // DAY_MS
        txn.expire(int(days.max()) + self._txn_days, verdicts_key)  # with its last verdict
        txn.expire_many(days + self._label_days, fresh_targets)
        if joined:
            txn.expire_many(days[list(joined)] + self._label_days,
                            [keys.LABEL + batch.transaction_ids[fresh_list[k]].encode()
                             for k in joined])
        txn.saw(int(days.max()))
        for merchant_id, state in zip(ids, new_states, strict=True):
            txn.put(keys.MERCHANT + merchant_id.encode(), state)
        txn.prune_rows()
        self._prune_expired(txn)
        swept = txn.sweep()
        if joined:
            done = {keys.PENDING + batch.transaction_ids[fresh_list[k]].encode() for k in joined}
            swept = [key for key in swept if key not in done]
        expired = self._expire(txn, swept, first)
        txn.commit()
        self._remember(ids, new_states)
        for key in swept:
            self._pending.discard(key[1:].decode())
        for k, (waited, _) in joined.items():
            self._pending.discard(batch.transaction_ids[fresh_list[k]])
            self.mismatched_labels += waited.label.merchant_id != mids[fresh_list[k]]
        if expired:
            self.expired += expired
            self._expired_blobs.append(first)
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
            if label is not None and label.at_scoring and self.incarnation.is_replay(label.seq):
                # the label waited for this transaction and was joined when it was scored
                joins.append(LabelJoin(Label(
                    transaction_id=tids[i], card_id="", merchant_id=first.merchant_id,
                    is_fraud=label.is_fraud, label_time=label.label_time), first, replay=True))
        return joins

    # --- labels ------------------------------------------------------------------------
    def apply_labels(self, labels: Sequence[Label],
                     sources: Sequence[LabelSource] | None = None) -> list[LabelJoin]:
        """Apply labels in order, in one WriteBatch (see :mod:`state.labels`).

        ``sources[i]``: where ``labels[i]`` was read (for its dead letter should it
        expire). Returns the joins to count in label feedback: labels that changed the
        truth in force of a scored transaction (``replaces`` the truth they take
        back), and labels applied before a crash whose feedback was lost (``replay``).
        Raises :class:`~state.errors.StoreIOError` when the write fails (nothing is
        applied) or :class:`~state.errors.StateFormatError` on a corrupt state.
        """
        if not labels:
            return []
        with gc_paused():
            return self._apply_labels(labels, sources or [_NO_SOURCE] * len(labels))

    def _apply_labels(self, labels: Sequence[Label], sources: Sequence[LabelSource]
                      ) -> list[LabelJoin]:
        db = self.db
        tids = list(dict.fromkeys(lab.transaction_id for lab in labels))
        n = len(tids)
        found = db.get_many([keys.LABEL + t.encode() for t in tids]
                            + [keys.TARGET + t.encode() for t in tids]
                            + [keys.PENDING + t.encode() for t in tids])
        marks = {t: LabelMark.decode(r) if r is not None else None
                 for t, r in zip(tids, found[:n], strict=True)}
        targets = {t: LabelTarget.decode(r) if r is not None else None
                   for t, r in zip(tids, found[n:2 * n], strict=True)}
        pending = {t: PendingLabel.decode(r) if r is not None else None
                   for t, r in zip(tids, found[2 * n:], strict=True)}
        txn = StoreTransaction(db)
        safe = db.safe[0]
        joins: list[LabelJoin] = []
        ops = MerchantOps()
        ids: dict[str, int] = {}
        unknown = mismatched = 0
        for label, source in zip(labels, sources, strict=True):
            tid = label.transaction_id
            target = targets[tid]
            if target is None or not contract.joinable(target.event_time, label.label_time,
                                                       self._label_days):
                # not scored here (yet), or past the label horizon (its record may linger)
                unknown += self._wait(txn, label, source, pending)
                continue
            verdict = target.verdict()
            mark = marks[tid]
            current = (contract.Current(mark.label_time, mark.is_fraud, mark.since)
                       if mark is not None else None)
            resolved = contract.resolve(current, label.label_time, label.is_fraud,
                                        verdict.event_time)
            if resolved is None:  # a repeat or an older label: nothing changes
                if (mark is not None and tid not in self._redone and not mark.at_scoring
                        and (mark.label_time, mark.is_fraud) == (label.label_time,
                                                                 label.is_fraud)
                        and self.incarnation.is_replay(mark.seq)):
                    self._redone.add(tid)  # applied before a crash: its feedback was lost
                    joins.append(LabelJoin(label, verdict, replay=True,
                                           replaces=None if mark.base == NO_LABEL
                                           else bool(mark.base)))
                continue
            new, effect = resolved
            if mark is None:
                base = NO_LABEL
                txn.expire(verdict.event_time // DAY_MS + self._label_days,
                           keys.LABEL + tid.encode())
            else:
                base = _truth(mark.is_fraud) if mark.seq <= safe else mark.base
            marks[tid] = written = LabelMark(new.label_time, txn.next_seqs(1), new.is_fraud,
                                             new.since, base, False)
            txn.put(keys.LABEL + tid.encode(), written.encode())
            mismatched += label.merchant_id != verdict.merchant_id
            ops.effect(ids.setdefault(verdict.merchant_id, len(ids)), verdict.event_time,
                       verdict.familiar, effect)
            if mark is None or mark.is_fraud != new.is_fraud:
                joins.append(LabelJoin(label, verdict,
                                       replaces=None if mark is None else mark.is_fraud,
                                       replaces_time=0 if mark is None else mark.label_time))
        if txn.seq == db.seq:
            self.unknown_labels += unknown
            return joins
        new_states: list[bytes] = []
        if ids:
            _, new_states = merchant_features(self._load(list(ids)), ops, 0)
            for merchant_id, state in zip(ids, new_states, strict=True):
                txn.put(keys.MERCHANT + merchant_id.encode(), state)
        txn.commit()
        self._remember(ids, new_states)
        self._pending.update(t for t, p in pending.items() if p is not None)
        self.unknown_labels += unknown
        self.mismatched_labels += mismatched
        return joins

    def _wait(self, txn: StoreTransaction, label: Label, source: LabelSource,
              pending: dict[str, PendingLabel | None]) -> int:
        """Keep ``label`` waiting for its transaction unless one that wins waits already.

        Returns how many labels to count as unknown (0 for an exact repeat of the
        waiting label, unless it was applied before a crash).
        """
        tid = label.transaction_id
        waiting = pending[tid]
        if waiting is not None:
            old = waiting.label
            if (old.label_time, old.is_fraud) == (label.label_time, label.is_fraud):
                return int(self.incarnation.is_replay(waiting.seq))
            if not contract.supersedes(label.label_time, label.is_fraud, old.label_time,
                                       old.is_fraud):
                return 1
        seq = txn.next_seqs(1)
        first_ms = waiting.first_ms if waiting is not None else label.label_time
        pending[tid] = record = PendingLabel(label, source.partition, source.offset,
                                             source.record_ms, first_ms, seq)
        key = keys.PENDING + tid.encode()
        txn.put(key, record.encode())
        if waiting is None:
            txn.expire(first_ms // DAY_MS + self._txn_days, key)
        return 1

    def _expire(self, txn: StoreTransaction, swept: list[bytes], seq: int
                ) -> list[PendingLabel]:
        """The pending labels among ``swept`` (deleted by this batch), kept under ``e<seq>``."""
        if not swept:
            return []
        raws = [r for r in self.db.get_many(swept) if r is not None]
        if raws:
            txn.put(keys.expired_labels_key(seq), keys.pack_keys(raws))
        return [PendingLabel.decode(r) for r in raws]

    def _prune_expired(self, txn: StoreTransaction) -> None:
        """Forget expired labels handed on before the last recovery snapshot."""
        safe = self.db.safe[0]
        done = [s for s in self._expired_blobs if s <= safe]
        if done:
            for s in done:
                txn.delete(keys.expired_labels_key(s))
            self._expired_blobs = [s for s in self._expired_blobs if s > safe]

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

    def close(self) -> None:
        """Close the store."""
        self.db.close()
