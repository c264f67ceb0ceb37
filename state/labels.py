"""The label contract: which label of a transaction is in force, and what it does to merchants.

Pure functions over times (epoch ms), shared by the merchant store
(:mod:`state.merchant_store`) and the offline replay (:mod:`state.replay`), so the
stream and ``just score-file`` resolve labels the same way.

**Sources.** A label (``topics.contracts.Label``) comes from a card network's
chargeback, an analyst's decision, a customer's report or another system
(``source``). Any of them may be repeated (re-delivery), come weeks or months after
the transaction (dispute windows run to 120 days and more), or be corrected by a
later one: a chargeback reversed after the merchant won the dispute (fraud, then
not fraud), or an analyst confirming fraud on a transaction first reported as
legitimate.

**What wins.** The label with the latest ``label_time`` is in force; on equal
``label_time`` a fraud label wins over a not-fraud one (a fixed rule, so the outcome
never depends on the order the two are read in; it errs towards the risk signal).
Ordering key: ``(label_time, is_fraud)``. The source never decides. A label equal to
the one in force (same time, same truth) is a repeat and changes nothing; an older
one is superseded and changes nothing; a newer one with the same truth confirms it
(nothing changes: the fraud still counts from when it was first known).

**Joining.** A label is only ever applied to a transaction the merchant stage
scored, and to *that transaction's* merchant: the ``merchant_id`` (and ``card_id``)
written in the label are not trusted. It joins when its transaction is known
within the label horizon (:func:`joinable`: the label's UTC day is before the
transaction's day plus ``FRAUD_LABEL_HORIZON_DAYS``, 180); a label read before its
transaction waits for it (:func:`still_waiting`, ``FRAUD_VERDICT_HORIZON_DAYS`` from
the first such label) and joins when it is scored; labels that never join are
counted as unknown and expire to ``dead-letter``.

**Effect on merchants** (:func:`resolve`): a fraud label in force counts from
``since`` = the later of its ``label_time`` and its transaction's event time (a label
cannot count before its transaction was seen); a later not-fraud label *retracts*
that count from its own time on (transactions before still saw it: it was known
then). The kernel keeps each count as an interval of label hours
(:mod:`state.kernels.merchant`).

>>> first, effect = resolve(None, 5_000, True, 1_000)
>>> first, effect
(Current(label_time=5000, is_fraud=True, since=5000), Effect(kind=1, since=5000, until=0))
>>> resolve(first, 5_000, True, 1_000) is None  # the same label again
True
>>> resolve(first, 9_000, False, 1_000)[1]  # reversed later: the count ends at 9000
Effect(kind=2, since=5000, until=9000)
"""

from __future__ import annotations

from typing import NamedTuple

from state.units import DAY_MS

NONE, COUNT, RETRACT = 0, 1, 2


class Current(NamedTuple):
    """The label in force for a transaction."""

    label_time: int
    """ms, of the label in force."""
    is_fraud: bool
    since: int
    """ms: when its truth took effect for the merchant (a fraud counts from here)."""


class Effect(NamedTuple):
    """What a label does to its transaction's merchant."""

    kind: int
    """:data:`NONE`, :data:`COUNT` (a fraud counts from ``since``) or :data:`RETRACT` (the
    fraud counted from ``since`` stops at ``until``)."""
    since: int = 0
    until: int = 0


NO_EFFECT = Effect(NONE)


def supersedes(label_time: int, is_fraud: bool, than_time: int, than_fraud: bool) -> bool:
    """Whether a label ``(label_time, is_fraud)`` replaces ``(than_time, than_fraud)``."""
    return (label_time, is_fraud) > (than_time, than_fraud)


def resolve(current: Current | None, label_time: int, is_fraud: bool, txn_ms: int
            ) -> tuple[Current, Effect] | None:
    """The label in force after a new label of a known transaction, and its effect.

    ``current``: the label in force (None: none yet); ``txn_ms``: the transaction's
    event time. Returns None when the label changes nothing (a repeat, or older
    than the one in force).
    """
    at = max(label_time, txn_ms)
    if current is None:
        return first_label(label_time, is_fraud, txn_ms)
    if not supersedes(label_time, is_fraud, current.label_time, current.is_fraud):
        return None
    if is_fraud == current.is_fraud:  # a confirmation: still counted from when first known
        return Current(label_time, is_fraud, current.since), NO_EFFECT
    if is_fraud:
        return Current(label_time, True, at), Effect(COUNT, at)
    return Current(label_time, False, at), Effect(RETRACT, current.since, at)


def first_label(label_time: int, is_fraud: bool, txn_ms: int) -> tuple[Current, Effect]:
    """:func:`resolve` for the first label of a transaction (at ``txn_ms``)."""
    at = max(label_time, txn_ms)
    return Current(label_time, is_fraud, at), (Effect(COUNT, at) if is_fraud else NO_EFFECT)


def joinable(txn_ms: int, label_ms: int, horizon_days: int) -> bool:
    """Whether a label at ``label_ms`` still joins its transaction at ``txn_ms``.

    The merchant stage remembers what a label needs of a transaction until the UTC day
    ``horizon_days`` after its event day: later labels are unknown.
    """
    return label_ms // DAY_MS < txn_ms // DAY_MS + horizon_days


def still_waiting(first_label_ms: int, txn_ms: int, wait_days: int) -> bool:
    """Whether a label waiting since ``first_label_ms`` joins a transaction at ``txn_ms``.

    A label for a transaction not (yet) known waits until the UTC day ``wait_days``
    after the day the first label of that transaction id arrived, then expires.
    """
    return txn_ms // DAY_MS < first_label_ms // DAY_MS + wait_days
