"""Offline point-in-time feature replay for training: the stream's feature path, in memory.

Runs the same state classes and step functions (:mod:`state.features`) as the
stream's card and merchant stores, without RocksDB, so each transaction gets
bit for bit the row the stream gives it when the stream sees the same order:

* the **card group** in stream order per card (the stream keeps a correctly
  keyed card's records in one partition, in offset order);
* the **merchant and context groups** in stream order per merchant, over all
  traffic (the stream's merchant stage sees every card partition); a test can
  pass the order a live merchant stage saw (``merchant_order``);
* **labels** as the merchant stage applies them: the first label of a
  transaction id wins (for the label horizon, judged on label times), a fraud
  label counts at its label hour, and under its
  transaction's day once that transaction has been seen; labels never move a
  window clock, so where they fall in the event list changes no feature;
* **repeated transaction ids** as the stream treats them: an exact repeat
  (same body) gets no row of its own (the stream re-emits the first verdict),
  a repeat with another body is a conflict (dead-lettered by the stream);
  both are counted in :class:`ReplayStats`.

Card and merchant states are independent, so replay runs each card's (and each
merchant's) events back to back: the state stays in CPU cache and is dropped
when done, which is several times faster than interleaving and keeps memory flat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from state.card import CardState
from state.features import CARD_COLUMNS, MERCHANT_COLUMNS, card_step, gc_paused, merchant_step
from state.inputs import AmountFn, TxnInput, txn_input
from state.merchant import MerchantState
from state.merchant_store import relabels
from state.options import StoreOptions
from state.records import body_digest
from state.spec import INDEX, N_FEATURES
from topics.contracts import Label, Transaction

_FILL_ROWS = 65_536


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
    merchant_order: Sequence[int] | None = None,
    label_ranks: Mapping[str, float] | None = None,
    stats: ReplayStats | None = None,
    label_horizon_ms: int = StoreOptions.label_horizon_ms,
) -> tuple[list[Transaction], np.ndarray]:
    """The distinct transactions in stream order and their float32 rows [n, N_FEATURES].

    ``events`` is in stream order: transactions as the topic holds them (by event
    time for a history), labels by ``label_time``. ``amount_of(txn)`` gives the
    reference-currency amount (default: :func:`reference_amounts`, the code's
    rate table in EUR); ``event_time_of`` the event time the stream used (default:
    ``txn.event_time``). ``merchant_order``, if given, lists transaction positions
    (indices into the returned list) in the order the merchant stage processed
    them. Raises ``ValueError`` if it is not a permutation. ``label_ranks``, with
    ``merchant_order``, places labels among them: the label of transaction id ``k`` is
    applied after the transactions ranked below ``label_ranks[k]`` in ``merchant_order``
    (a label without a rank is applied before its merchant's first transaction). With
    both read from a stopped flow's stores (:mod:`state.inspect`), the replay repeats
    the merchant stage's own sequence, labels included: a label read behind a partition
    that ran ahead in a backlog is then missed by the same transactions as in the stream.
    """
    amount_of = amount_of or reference_amounts()
    with gc_paused():
        return _replay(events, amount_of, event_time_of, merchant_order, label_ranks,
                       stats if stats is not None else ReplayStats(), label_horizon_ms)


def reference_amounts(reference: str = "EUR") -> AmountFn:
    """Amounts converted with the code's rate table to ``reference`` (the flow's default)."""
    from topics.currency import default_rates, reference_amount

    rates = default_rates(reference)
    return lambda txn: reference_amount(txn, rates)


def _replay(
    events: Iterable[Transaction | Label], amount_of: AmountFn,
    event_time_of: Callable[[Transaction], int] | None,
    merchant_order: Sequence[int] | None, label_ranks: Mapping[str, float] | None,
    stats: ReplayStats, label_horizon_ms: int,
) -> tuple[list[Transaction], np.ndarray]:
    txns: list[Transaction] = []
    inputs: list[TxnInput] = []
    first: dict[str, tuple[int, int]] = {}  # transaction id -> (position, body digest)
    by_card: dict[str, list[int]] = {}
    # per merchant: transaction positions and labels, in stream order
    by_merchant: dict[str, list[int | Label]] = {}
    labelled: dict[str, int] = {}  # transaction id -> time of the label that counts
    for event in events:
        if isinstance(event, Label):
            first_label = labelled.get(event.transaction_id)
            if first_label is not None and not relabels(first_label, event.label_time,
                                                        label_horizon_ms):
                stats.labels_repeated += 1
                continue
            labelled[event.transaction_id] = event.label_time
            stats.labels += 1
            by_merchant.setdefault(event.merchant_id, []).append(event)
            continue
        body = body_digest(event)
        seen = first.get(event.transaction_id)
        if seen is not None:
            if seen[1] == body:
                stats.repeats += 1
            else:
                stats.conflicts += 1
            continue
        i = len(txns)
        first[event.transaction_id] = (i, body)
        txns.append(event)
        t = event_time_of(event) if event_time_of is not None else None
        inputs.append(txn_input(event, amount_of(event), t))
        by_card.setdefault(event.card_id, []).append(i)
        if merchant_order is None:
            by_merchant.setdefault(event.merchant_id, []).append(i)
    stats.transactions = len(txns)
    if merchant_order is not None:
        _merchant_sequences(txns, merchant_order, by_merchant, label_ranks or {})
    matrix = np.empty((len(txns), N_FEATURES), dtype=np.float32)
    filler = _Filler(matrix, CARD_COLUMNS)
    for indices in by_card.values():
        card = CardState()
        filler.extend(indices, [card_step(card, inputs[i]) for i in indices])
    filler.flush()
    filler = _Filler(matrix, slice(MERCHANT_COLUMNS.start, N_FEATURES))
    new_merchant = matrix[:, INDEX["card_new_merchant_30d"]]
    for items in by_merchant.values():
        merchant = MerchantState()
        index: list[int] = []
        rows: list[list[float]] = []
        waiting: dict[str, int] = {}  # transaction id -> fraud label time, txn not seen yet
        seen_at: dict[str, tuple[int, bool]] = {}  # txn id -> (event time, regular customer)
        for item in items:
            if isinstance(item, Label):
                if not item.is_fraud:
                    continue
                merchant.add_fraud(item.label_time)
                found = seen_at.get(item.transaction_id)
                if found is None:
                    waiting[item.transaction_id] = item.label_time
                else:
                    merchant.add_aligned_fraud(found[0], item.label_time, found[1])
                continue
            x = inputs[item]
            index.append(item)
            rows.append(merchant_step(merchant, x))
            tid = txns[item].transaction_id
            familiar = bool(new_merchant[item] == 0.0)
            seen_at[tid] = (x.event_time, familiar)
            label_time = waiting.pop(tid, None)
            if label_time is not None:
                merchant.add_aligned_fraud(x.event_time, label_time, familiar)
        filler.extend(index, rows)
    filler.flush()
    return txns, matrix


def _merchant_sequences(txns: list[Transaction], order: Sequence[int],
                        by_merchant: dict[str, list[int | Label]],
                        label_ranks: Mapping[str, float]) -> None:
    """Put transaction positions into their merchants' sequences in ``order``.

    Labels already there go before the transactions unless ``label_ranks`` places
    them among them (see :func:`replay_matrix`).
    """
    if sorted(order) != list(range(len(txns))):
        raise ValueError("merchant_order must list every transaction position exactly once")
    for i in order:
        by_merchant.setdefault(txns[i].merchant_id, []).append(i)
    if not label_ranks:
        return
    rank_of = {i: rank for rank, i in enumerate(order)}
    for merchant, items in by_merchant.items():
        if any(isinstance(x, Label) and x.transaction_id in label_ranks for x in items):
            by_merchant[merchant] = sorted(items, key=lambda x: (
                label_ranks.get(x.transaction_id, -1.0) if isinstance(x, Label)
                else float(rank_of[x])))


def replay(
    events: Iterable[Transaction | Label], **options: object
) -> Iterator[tuple[Transaction, np.ndarray]]:
    """Yield ``(txn, float32 row as of just before txn)`` for every distinct transaction.

    Same options as :func:`replay_matrix` (which it runs first: the whole history
    is read before the first row is yielded); rows are views.
    """
    txns, matrix = replay_matrix(events, **options)  # type: ignore[arg-type]
    return zip(txns, matrix, strict=True)


class _Filler:
    """Writes row groups into matrix columns in large blocks (one float32 cast per block)."""

    __slots__ = ("matrix", "columns", "rows", "index")

    def __init__(self, matrix: np.ndarray, columns: slice) -> None:
        self.matrix, self.columns = matrix, columns
        self.rows: list[list[float]] = []
        self.index: list[int] = []

    def extend(self, index: Iterable[int], rows: list[list[float]]) -> None:
        self.rows += rows
        self.index += index
        if len(self.rows) >= _FILL_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            block = np.array(self.rows, dtype=np.float32).reshape(len(self.rows), -1)
            self.matrix[self.index, self.columns] = block
            self.rows, self.index = [], []
