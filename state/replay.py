"""Offline point-in-time feature replay: the stream's kernels, in event-time order, in memory.

This is the event-time reference every streamed score is held to (``just
score-file``, training, the chaos and integration tests). It runs the same batch
kernels (:mod:`state.features`) as the stream's card and merchant stores, without
RocksDB:

* the **card group** per card in stream order (the stream keeps a correctly keyed
  card's records in one partition, in offset order);
* the **merchant and context groups** per merchant, over all traffic, in **event
  time**: transactions by their (effective) event time, labels at their
  ``label_time``, a transaction before a label at the same millisecond, ties in
  stream order. The stream's merchant stage releases transactions behind a
  watermark over every input so that it computes exactly this, whatever order and
  speed the partitions are read at (:mod:`state.reorder`);
* **labels** as the merchant stage applies them (:mod:`state.labels`, the same
  functions): a label joins only its transaction, once that transaction is known
  and within the horizon, and counts for that transaction's merchant whatever
  merchant the label names; the latest label of a transaction is in force (a
  correction retracts the earlier fraud count from its own time on); a label read
  before its transaction waits for it and joins right after it; labels never move
  a window clock;
* **repeated transaction ids** as the stream treats them: an exact repeat (same
  body) gets no row of its own (the stream re-emits the first verdict), a repeat
  with another body is a conflict (dead-lettered by the stream); both are counted
  in :class:`ReplayStats`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from state import labels as contract
from state.features import (
    CARD_COLUMNS,
    CONTEXT_COLUMNS,
    MERCHANT_COLUMNS,
    MerchantOps,
    card_features,
    context_features,
    gc_paused,
    merchant_features,
)
from state.inputs import AmountFn, FeatureInputs
from state.options import StoreOptions
from state.records import body_digest
from state.spec import INDEX, N_FEATURES
from state.units import DAY_MS
from topics.contracts import Label, Transaction

_NEW_MERCHANT = INDEX["card_new_merchant_30d"]


@dataclass
class ReplayStats:
    """What the replay did with repeated transaction ids and labels."""

    transactions: int = 0
    repeats: int = 0
    """Exact repeats of an earlier transaction (re-deliveries): no row of their own."""
    conflicts: int = 0
    """Repeated ids with another body: dropped, as the stream dead-letters them."""
    labels: int = 0
    labels_repeated: int = 0
    """Labels that changed nothing: a repeat, or older than the label in force."""
    labels_unknown: int = 0
    """Labels for a transaction not known (yet, or any more) when they were read: they
    waited (as ``fraud_labels_unknown_total`` counts them)."""


def replay_matrix(
    events: Iterable[Transaction | Label],
    *,
    amount_of: AmountFn | None = None,
    event_time_of: Callable[[Transaction], int] | None = None,
    stats: ReplayStats | None = None,
    txn_horizon_ms: int = StoreOptions.txn_horizon_ms,
    label_horizon_ms: int = StoreOptions.label_horizon_ms,
) -> tuple[list[Transaction], np.ndarray]:
    """The distinct transactions in stream order and their float32 rows [n, N_FEATURES].

    ``events`` is in stream order: transactions as the topic holds them (by event
    time for a history), labels as the ``labels`` topic holds them. ``amount_of(txn)``
    gives the reference-currency amount (default: :func:`reference_amounts`, the
    code's rate table in EUR); ``event_time_of`` the event time the stream used
    (default: ``txn.event_time``; the stream clamps one too far ahead of its record).
    ``txn_horizon_ms``: how long a label waits for its transaction
    (``FRAUD_VERDICT_HORIZON_DAYS``); ``label_horizon_ms``: how long after its
    transaction a label still joins it (``FRAUD_LABEL_HORIZON_DAYS``).
    """
    amount_of = amount_of or reference_amounts()
    with gc_paused():
        return _replay(events, amount_of, event_time_of,
                       stats if stats is not None else ReplayStats(), txn_horizon_ms,
                       label_horizon_ms)


def reference_amounts(reference: str = "EUR") -> AmountFn:
    """Amounts converted with the code's rate table to ``reference`` (the flow's default)."""
    from topics.currency import default_rates, reference_amount

    rates = default_rates(reference)
    return lambda txn: reference_amount(txn, rates)


def _replay(events: Iterable[Transaction | Label], amount_of: AmountFn,
            event_time_of: Callable[[Transaction], int] | None, stats: ReplayStats,
            txn_horizon_ms: int, label_horizon_ms: int
            ) -> tuple[list[Transaction], np.ndarray]:
    txns: list[Transaction] = []
    labels: list[Label] = []
    first: dict[str, int] = {}  # transaction id -> body digest
    for event in events:
        if isinstance(event, Label):
            stats.labels += 1
            labels.append(event)
            continue
        body = body_digest(event)
        seen = first.get(event.transaction_id)
        if seen is not None:
            if seen == body:
                stats.repeats += 1
            else:
                stats.conflicts += 1
            continue
        first[event.transaction_id] = body
        txns.append(event)
    stats.transactions = n = len(txns)
    times = (None if event_time_of is None
             else np.fromiter((event_time_of(t) for t in txns), np.int64, n))
    inputs = FeatureInputs.of(txns, np.fromiter((amount_of(t) for t in txns), np.float64, n),
                              times)
    matrix = np.empty((n, N_FEATURES), dtype=np.float32)
    cards: dict[str, int] = {}
    card_of = np.fromiter((cards.setdefault(t.card_id, len(cards)) for t in txns), np.int64, n)
    matrix[:, CARD_COLUMNS], _ = card_features([None] * len(cards), card_of,
                                               inputs.for_card_windows(), encode=False)
    ops = event_time_ops(txns, inputs.event_ms, labels, matrix[:, _NEW_MERCHANT] == 0.0,
                         label_horizon_ms // DAY_MS, txn_horizon_ms // DAY_MS, stats)
    merchants, op_list = ops
    matrix[:, MERCHANT_COLUMNS], _ = merchant_features([None] * merchants, op_list, n,
                                                       encode=False)
    matrix[:, CONTEXT_COLUMNS] = context_features(inputs)
    return txns, matrix


def event_time_ops(txns: list[Transaction], event_ms: np.ndarray, labels: list[Label],
                   familiar: np.ndarray,
                   horizon_days: int = StoreOptions.label_horizon_ms // DAY_MS,
                   wait_days: int = StoreOptions.txn_horizon_ms // DAY_MS,
                   stats: ReplayStats | None = None) -> tuple[int, MerchantOps]:
    """The merchant operations of a history in event-time order, and how many merchants.

    Transactions at their event time and labels at their ``label_time`` (a transaction
    first at the same millisecond, then stream order). Each transaction id's labels
    are resolved in that order by :mod:`state.labels`: a label of a known transaction
    (within ``horizon_days``) acts at its own place; one read before its transaction
    waits and acts right after it (if it still waits then, ``wait_days`` after the first
    such label); ``familiar[i]``: the
    card of ``txns[i]`` was a regular customer of the merchant. ``stats`` counts
    repeated and unknown labels.
    """
    stats = stats if stats is not None else ReplayStats()
    n = len(txns)
    merchants: dict[str, int] = {}
    txn_merchant = np.fromiter((merchants.setdefault(t.merchant_id, len(merchants))
                                for t in txns), np.int64, n)
    label_ms = np.fromiter((lab.label_time for lab in labels), np.int64, len(labels))
    times = np.concatenate([event_ms, label_ms])
    kinds = np.concatenate([np.zeros(n, np.int64), np.ones(len(labels), np.int64)])
    seq = np.arange(n + len(labels), dtype=np.int64)
    rank = np.empty(n + len(labels), dtype=np.int64)
    rank[np.lexsort((seq, kinds, times))] = seq
    # ops sorted by (rank, sub): sub 0 the event itself, sub 1 a waiting label right after
    ops = MerchantOps()
    ops.txns(txn_merchant, event_ms, np.arange(n, dtype=np.int64))
    ranks, subs = rank[:n].tolist(), [0] * n
    position = {t.transaction_id: i for i, t in enumerate(txns)}
    per_txn: dict[str, list[tuple[int, Label | None]]] = {}
    for j, lab in enumerate(labels):
        per_txn.setdefault(lab.transaction_id, []).append((int(rank[n + j]), lab))
    for tid, events in per_txn.items():
        i = position.get(tid)
        if i is not None:
            events.append((int(rank[i]), None))
        events.sort(key=lambda e: e[0])
        current: contract.Current | None = None
        known = False
        waiting: tuple[Label, int] | None = None  # the winning waiting label, first_ms
        for r, label in events:
            if label is None:  # the transaction itself (i is not None)
                assert i is not None
                known = True
                t = int(event_ms[i])
                if waiting is not None and contract.still_waiting(waiting[1], t, wait_days):
                    current, effect = contract.first_label(waiting[0].label_time,
                                                           waiting[0].is_fraud, t)
                    if effect.kind != contract.NONE:
                        ranks.append(r)
                        subs.append(1)
                        ops.effect(int(txn_merchant[i]), t, bool(familiar[i]), effect)
                    waiting = None
                continue
            if known and i is not None and contract.joinable(int(event_ms[i]), label.label_time,
                                                             horizon_days):
                t = int(event_ms[i])
                resolved = contract.resolve(current, label.label_time, label.is_fraud, t)
                if resolved is None:
                    stats.labels_repeated += 1
                    continue
                current, effect = resolved
                if effect.kind != contract.NONE:
                    ranks.append(r)
                    subs.append(0)
                    ops.effect(int(txn_merchant[i]), t, bool(familiar[i]), effect)
                continue
            if waiting is None:
                waiting = (label, label.label_time)
            elif (waiting[0].label_time, waiting[0].is_fraud) == (label.label_time, label.is_fraud):
                stats.labels_repeated += 1
                continue
            elif contract.supersedes(label.label_time, label.is_fraud, waiting[0].label_time,
                                     waiting[0].is_fraud):
                waiting = (label, waiting[1])
            stats.labels_unknown += 1
    order = np.lexsort((np.arange(len(ops)), np.asarray(subs), np.asarray(ranks)))
    return len(merchants), ops.take(order)


def replay(events: Iterable[Transaction | Label], **options: object
           ) -> Iterator[tuple[Transaction, np.ndarray]]:
    """Yield ``(txn, float32 row as of just before txn)`` for every distinct transaction.

    Same options as :func:`replay_matrix` (which it runs first: the whole history
    is read before the first row is yielded); rows are views.
    """
    txns, matrix = replay_matrix(events, **options)  # type: ignore[arg-type]
    return zip(txns, matrix, strict=True)
