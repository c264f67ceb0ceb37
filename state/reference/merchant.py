"""Per-merchant state over all traffic: transaction counts and fraud labels in event time.

One :class:`MerchantState` sees every transaction of its merchant, whichever
card partition it came from: the flow keys its merchant stage by merchant, and
the offline replay runs each merchant's events in stream order.

**Anchored, closed windows.** Records from different card partitions reach a
merchant in an order that depends on how fast each partition is read, so its
features must not depend on that order. Every merchant feature of a transaction
in bucket ``b`` therefore counts only buckets that ended one bucket before ``b``
began: ``merchant_count_1d`` counts the 24 whole hours ``b-25 .. b-2`` (hour
buckets), ``merchant_count_7d`` 28 six-hour buckets, ``merchant_count_30d`` 30
UTC days, each ending two buckets before the transaction's own. Nothing a
transaction reads can still change unless a partition lags more than one bucket
(one hour for the 1-day window) behind another, so a live stream, a paced one and
a backlog give the same merchant features, and so does the offline replay in
event-time order. Windows are anchored at the transaction's own time, never at
the merchant's newest, so a late transaction reads what it would have read on
time, up to :data:`LATENESS` buckets late.

**Labels never move a clock** and are counted by when they became known: a
fraud label joined to one of the merchant's transactions (:mod:`state.labels`
decides which labels count, and from when) is kept under its UTC label hour and
under its transaction's UTC day. A transaction counts labels whose label hour
ended one hour before its own hour began, so a label read ahead of the stream (a
backlog, a replay, a catch-up after an outage) waits, in effect, for its time.
A later "not fraud" label of the same transaction *retracts* the count from its
own hour on: each count is an interval of label hours ``[hs, he)``, so every
transaction reads the labels known, and not yet corrected, as of its own time.

Two kinds of rate (spec v2):

* ``merchant_fraud_rate_{1d,7d,30d}``: fraud labels whose label hour falls in the
  24, 168 or 720 hours ending two hours before this one, over the matching
  transaction count (capped at 1; 0 without transactions);
* ``merchant_fraud_labels_7d``: the count behind ``merchant_fraud_rate_7d`` (a rate
  dilutes one fraud at a busy merchant); ``merchant_familiar_fraud_{7d,30d}``: fraud
  labels known in 7 or 30 days on transactions of the merchant's *regular* customers
  (cards that had used it in the 30 days before), the mark of a compromised point of
  sale (skimming) rather than of fraudsters passing through. These count by label
  hour, whatever the age of the labelled transaction (a chargeback 120 days after
  its purchase counts as one 7 days after it does);
* ``merchant_risk_aligned_{1d,7d,30d}``: frauds among the merchant's transactions
  of the 1, 7 or 30 UTC days that ended :data:`~state.spec.LABEL_DELAY_DAYS` days
  before this transaction's day, counting labels known by then (label hour two
  hours before this one), over those days' transaction count. By then most of
  those days' fraud has been reported, so this reads a merchant's true fraud
  rate rather than the labels that happened to arrive lately (delay-aligned
  features, after Le Borgne et al., "Reproducible Machine Learning for Credit
  Card Fraud Detection - Practical Handbook", 2022, ch. 3 and 5: the feedback
  delay shifts what a detector can know).
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING

from state.reference.codec import Head, Layout, Part, load_pairs, pairs_array
from state.reference.windows import NO_TIME, CountWindow
from state.spec import LABEL_DELAY_DAYS
from state.units import DAY_MS, HOUR_MS

if TYPE_CHECKING:
    from state.inputs import TxnInput

#: Buckets a transaction may arrive behind the merchant's newest and still read
#: exactly what it would have read on time.
LATENESS = 2
_GAP = 2  # a window ends this many buckets before the transaction's own (b - 2)
_COUNT_WINDOWS = ((HOUR_MS, 24), (6 * HOUR_MS, 28), (DAY_MS, 30))
_FRAUD_HOURS = (24, 7 * 24, 30 * 24)
_ALIGNED_DAYS = (1, 7, 30)
#: Daily buckets kept: the label delay plus the longest aligned window, the gap and lateness.
_DAY_BUCKETS = LABEL_DELAY_DAYS + _ALIGNED_DAYS[-1] + _GAP + LATENESS
_HOUR_KEEP = _FRAUD_HOURS[-1] + _GAP + LATENESS * 24
_HOUR_BITS = 21  # label hours since 1970 stay below 2**21 until the 2200s
#: End hour of a fraud count that no later label has retracted.
OPEN = (1 << _HOUR_BITS) - 1
_HOUR_MASK = OPEN
_FRAUD_SHIFT = _HOUR_BITS + 1  # fraud map key: hs << 22 | he << 1 | familiar
_DAY_SHIFT = 2 * _HOUR_BITS  # aligned map key: txn_day << 42 | hs << 21 | he

class Counts(dict[int, int]):
    """A bounded int -> count map stored as one flat int64 body (see :mod:`state.codec`)."""

    __slots__ = ()

    head_codes = "q"

    def head(self) -> tuple[int, ...]:
        """Fixed encoding field: the number of entries."""
        return (len(self),)

    def body(self) -> array:
        """Keys, then counts."""
        return pairs_array(self)

    def load(self, head: Head, i: int, body: memoryview, pos: int) -> tuple[int, int]:
        """Restore from ``head[i]`` and the pairs at ``body[pos:]`` (see :mod:`state.codec`)."""
        pairs, pos = load_pairs(body, pos, head[i])
        self.update(pairs)
        return i + 1, pos

    def drop_below(self, cutoff: int) -> None:
        """Forget the keys at or below ``cutoff``."""
        for k in [k for k in self if k <= cutoff]:
            del self[k]

    def bump(self, key: int) -> None:
        """Count one more under ``key``."""
        self[key] = self.get(key, 0) + 1

    def move(self, old: int, new: int) -> None:
        """Move one count from ``old`` to ``new`` (nothing when ``old`` is gone)."""
        have = self.get(old)
        if have is None:
            return
        if have > 1:
            self[old] = have - 1
        else:
            del self[old]
        self.bump(new)


def _fraud_key(label_hour: int, end_hour: int, familiar: bool) -> int:
    return (label_hour << _FRAUD_SHIFT) | (end_hour << 1) | int(familiar)


def _aligned_key(txn_day: int, label_hour: int, end_hour: int) -> int:
    return (txn_day << _DAY_SHIFT) | (label_hour << _HOUR_BITS) | end_hour


class MerchantState:
    """Counts and fraud labels of one merchant; ``features`` before a txn, ``update`` after."""

    __slots__ = ("hmax", "hours", "quarters", "days", "fraud", "aligned")

    def __init__(self) -> None:
        self.hmax = NO_TIME
        """Hour of the newest transaction (retention only: no feature reads it)."""
        (h, nh), (q, nq), (d, nd) = _COUNT_WINDOWS
        self.hours = CountWindow(h, nh + _GAP + LATENESS)
        self.quarters = CountWindow(q, nq + _GAP + LATENESS)
        self.days = CountWindow(d, _DAY_BUCKETS)
        self.fraud = Counts()
        """Fraud labels per (label hour, retracted hour, regular customer), packed."""
        self.aligned = Counts()
        """Fraud labels per (transaction's UTC day, label hour, retracted hour), packed."""

    def _parts(self) -> tuple[Part, ...]:
        return (self.hours, self.quarters, self.days, self.fraud, self.aligned)

    def features(self, txn: TxnInput) -> list[float]:
        """Merchant features of the spec (in order) as of the buckets before ``txn``'s."""
        t = txn.event_time
        counts = []
        for w, (size, n) in zip((self.hours, self.quarters, self.days), _COUNT_WINDOWS,
                                strict=True):
            b = t // size
            counts.append(w.counts_between([b - _GAP - n], b - _GAP)[0])
        c1, c7, c30 = counts
        h = t // HOUR_MS
        known = h - _GAP  # the newest label hour this transaction may count
        f1 = f7 = f30 = 0
        familiar7 = familiar30 = 0
        if self.fraud:
            lo1, lo7, lo30 = (known - n for n in _FRAUD_HOURS)
            for key, v in self.fraud.items():
                k = key >> _FRAUD_SHIFT
                if lo30 < k <= known and (key >> 1) & _HOUR_MASK > known:
                    f30 += v
                    familiar30 += v if key & 1 else 0
                    if k > lo7:
                        f7 += v
                        familiar7 += v if key & 1 else 0
                        if k > lo1:
                            f1 += v
        aligned = [0.0, 0.0, 0.0]
        if self.aligned:
            end = t // DAY_MS - LABEL_DELAY_DAYS  # newest day of the aligned windows
            starts = [end - n for n in _ALIGNED_DAYS]  # exclusive lower bounds
            frauds = [0, 0, 0]
            for key, v in self.aligned.items():
                day = key >> _DAY_SHIFT
                hs, he = (key >> _HOUR_BITS) & _HOUR_MASK, key & _HOUR_MASK
                if starts[2] < day <= end and hs <= known < he:
                    for j in range(3):
                        if day > starts[j]:
                            frauds[j] += v
            if any(frauds):
                totals = self.days.counts_between(starts, end)
                aligned = [min(1.0, f / c) if c else 0.0
                           for f, c in zip(frauds, totals, strict=True)]
        return [
            c1,
            c7,
            c30,
            min(1.0, f1 / c1) if c1 else 0.0,
            min(1.0, f7 / c7) if c7 else 0.0,
            min(1.0, f30 / c30) if c30 else 0.0,
            *aligned,
            float(f7),
            float(familiar7),
            float(familiar30),
        ]

    def update(self, txn: TxnInput) -> None:
        """Count ``txn`` (and drop what no window of a newer transaction can reach)."""
        t = txn.event_time
        for w in (self.hours, self.quarters, self.days):
            w.add(t)
        h = t // HOUR_MS
        if h > self.hmax:
            self.hmax = h
            self.fraud.drop_below(((h - _HOUR_KEEP + 1) << _FRAUD_SHIFT) - 1)
            self.aligned.drop_below(((h // 24 - _DAY_BUCKETS + 1) << _DAY_SHIFT) - 1)

    def add_fraud(self, txn_time: int, since: int, familiar: bool = False) -> None:
        """Count one fraud label of a transaction of this merchant (callers resolve labels).

        ``txn_time``: the labelled transaction's event time; ``since``: when the label
        counts from (ms; :func:`state.labels.resolve`); ``familiar``: the labelled
        transaction's card had used this merchant in the 30 days before it
        (``card_new_merchant_30d`` was 0): a regular customer defrauded here, the mark
        of a compromised point of sale rather than of a fraudster passing through.
        Kept under its label hour while that is within the hours the merchant keeps,
        and under its transaction's day while that is within the days it keeps.
        """
        hs, day = since // HOUR_MS, txn_time // DAY_MS
        if self.hmax == NO_TIME or hs > self.hmax - _HOUR_KEEP:
            self.fraud.bump(_fraud_key(hs, OPEN, familiar))
        if self.hmax == NO_TIME or day > self.hmax // 24 - _DAY_BUCKETS:
            self.aligned.bump(_aligned_key(day, hs, OPEN))

    def retract_fraud(self, txn_time: int, since: int, until: int,
                      familiar: bool = False) -> None:
        """The fraud counted by ``add_fraud(txn_time, since, familiar)`` stops at ``until`` (ms).

        Transactions from ``until``'s hour on no longer count it; earlier ones still
        do (it was known then). Nothing when the count has already been forgotten.
        """
        hs, he, day = since // HOUR_MS, until // HOUR_MS, txn_time // DAY_MS
        self.fraud.move(_fraud_key(hs, OPEN, familiar), _fraud_key(hs, he, familiar))
        self.aligned.move(_aligned_key(day, hs, OPEN), _aligned_key(day, hs, he))

    def encode(self) -> bytes:
        """Versioned compact bytes of this state (see :mod:`state.codec`)."""
        return _LAYOUT.encode((self.hmax,), self._parts())

    @classmethod
    def decode(cls, buf: bytes) -> MerchantState:
        """Rebuild a state from :meth:`encode` bytes."""
        values = _LAYOUT.decode_head(buf)
        state = cls()
        state.hmax = values[1]
        _LAYOUT.load(state._parts(), values, 2, buf)
        return state


_LAYOUT = Layout("merchant", "q", MerchantState()._parts())
