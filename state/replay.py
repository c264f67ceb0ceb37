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
* **labels** as the merchant stage applies them: the first label of a
  transaction id wins (for the label horizon, judged on label times), a fraud
  label counts at its label hour, and under its transaction's day once that
  transaction is known (labels never move a window clock);
* **repeated transaction ids** as the stream treats them: an exact repeat (same
  body) gets no row of its own (the stream re-emits the first verdict), a repeat
  with another body is a conflict (dead-lettered by the stream); both are counted
  in :class:`ReplayStats`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

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
from state.merchant_store import relabels
from state.options import StoreOptions
from state.records import body_digest
from state.spec import INDEX, N_FEATURES
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


def replay_matrix(
    events: Iterable[Transaction | Label],
    *,
    amount_of: AmountFn | None = None,
    event_time_of: Callable[[Transaction], int] | None = None,
    stats: ReplayStats | None = None,
    label_horizon_ms: int = StoreOptions.label_horizon_ms,
) -> tuple[list[Transaction], np.ndarray]:
    """The distinct transactions in stream order and their float32 rows [n, N_FEATURES].

    ``events`` is in stream order: transactions as the topic holds them (by event
    time for a history), labels as the ``labels`` topic holds them. ``amount_of(txn)``
    gives the reference-currency amount (default: :func:`reference_amounts`, the
    code's rate table in EUR); ``event_time_of`` the event time the stream used
    (default: ``txn.event_time``; the stream clamps one too far ahead of its record).
    """
    amount_of = amount_of or reference_amounts()
    with gc_paused():
        return _replay(events, amount_of, event_time_of,
                       stats if stats is not None else ReplayStats(), label_horizon_ms)


def reference_amounts(reference: str = "EUR") -> AmountFn:
    """Amounts converted with the code's rate table to ``reference`` (the flow's default)."""
    from topics.currency import default_rates, reference_amount

    rates = default_rates(reference)
    return lambda txn: reference_amount(txn, rates)


def _replay(events: Iterable[Transaction | Label], amount_of: AmountFn,
            event_time_of: Callable[[Transaction], int] | None, stats: ReplayStats,
            label_horizon_ms: int) -> tuple[list[Transaction], np.ndarray]:
    txns: list[Transaction] = []
    labels: list[Label] = []
    first: dict[str, int] = {}  # transaction id -> body digest
    labelled: dict[str, int] = {}  # transaction id -> time of the label that counts
    for event in events:
        if isinstance(event, Label):
            earlier = labelled.get(event.transaction_id)
            if earlier is not None and not relabels(earlier, event.label_time,
                                                    label_horizon_ms):
                stats.labels_repeated += 1
                continue
            labelled[event.transaction_id] = event.label_time
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
    matrix[:, CARD_COLUMNS], _ = card_features([None] * len(cards), card_of, inputs,
                                               encode=False)
    ops = event_time_ops(txns, inputs.event_ms, labels, matrix[:, _NEW_MERCHANT] == 0.0)
    merchants, op_list = ops
    matrix[:, MERCHANT_COLUMNS], _ = merchant_features([None] * merchants, op_list, n,
                                                       encode=False)
    matrix[:, CONTEXT_COLUMNS] = context_features(inputs)
    return txns, matrix


def event_time_ops(txns: list[Transaction], event_ms: np.ndarray, labels: list[Label],
                   familiar: np.ndarray) -> tuple[int, MerchantOps]:
    """The merchant operations of a history in event-time order, and how many merchants.

    Transactions at their event time and labels at their ``label_time`` (a transaction
    first at the same millisecond, then stream order). A fraud label counts at its
    label hour for its ``merchant_id``; under its transaction's day (``familiar[i]``:
    the card was a regular customer) once that transaction of the same merchant is
    known, i.e. right after the later of the two.
    """
    n = len(txns)
    merchants: dict[str, int] = {}
    txn_merchant = np.fromiter((merchants.setdefault(t.merchant_id, len(merchants))
                                for t in txns), np.int64, n)
    fraud = [lab for lab in labels if lab.is_fraud]
    label_merchant = [merchants.setdefault(lab.merchant_id, len(merchants)) for lab in fraud]
    label_ms = np.fromiter((lab.label_time for lab in fraud), np.int64, len(fraud))
    times = np.concatenate([event_ms, label_ms])
    kinds = np.concatenate([np.zeros(n, np.int64), np.ones(len(fraud), np.int64)])
    seq = np.arange(n + len(fraud), dtype=np.int64)
    rank = np.empty(n + len(fraud), dtype=np.int64)
    rank[np.lexsort((seq, kinds, times))] = seq
    # ops sorted by (rank, sub): sub 0 the event itself, sub 1 an aligned count right after it
    ops = MerchantOps()
    ops.txns(txn_merchant, event_ms, np.arange(n, dtype=np.int64))
    txn_rank = rank[:n].tolist()
    ranks, subs = txn_rank[:], [0] * n
    position = {t.transaction_id: i for i, t in enumerate(txns)}
    for j, lab in enumerate(fraud):
        r = int(rank[n + j])
        ranks.append(r)
        subs.append(0)
        ops.fraud(label_merchant[j], lab.label_time)
        i = position.get(lab.transaction_id)
        if i is None or int(txn_merchant[i]) != label_merchant[j]:
            continue  # waits for a transaction of this merchant that never comes
        ranks.append(max(r, txn_rank[i]))
        subs.append(1)
        ops.aligned(label_merchant[j], int(event_ms[i]), lab.label_time, bool(familiar[i]))
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
