"""Per-merchant state: transaction counts and fraud labels in event-time windows.

Windows (part of feature spec v1): 1 d at 1-hour buckets, 7 d at 6-hour buckets,
30 d at UTC-day buckets, ending at the merchant's newest transaction time.

Fraud labels count at their ``label_time`` (when the fraud became known), never
at the time of the transaction they label, and only from the *next* UTC hour
on: a transaction at time t counts fraud labels whose label hour is before t's
hour and inside the window. So no label later than t can leak into t's
features, and the same history replayed gives the same rates. Rates are fraud
labels / transactions of the window (0 without transactions), capped at 1.

Partitioning: a merchant's transactions arrive in every card partition.
Each :class:`~state.store.PartitionStore` keeps merchant state for the
transactions of its own input partition, and the flow must route each label to
the partition that owns ``label.card_id`` (the same partitioner as the
transactions topic). Merchant features are therefore computed over the
partition's slice of traffic; :func:`state.replay.replay` takes the same
``n_partitions`` / partitioner so training sees exactly what the stream sees.
"""

from __future__ import annotations

from array import array

from state.card import DAY_MS, HOUR_MS, IDLE_EVICT_MS
from state.codec import Head, Layout, Part, load_pairs, pairs_array
from state.windows import NO_TIME, CountWindow
from topics.contracts import Transaction

_FRAUD_HOURS = (24, 7 * 24, 30 * 24)
_MAX_HOURS = _FRAUD_HOURS[-1]


class FraudHours(dict[int, int]):
    """Fraud labels per UTC label hour (hour -> count)."""

    __slots__ = ()

    head_codes = "H"

    def head(self) -> tuple[int, ...]:
        """Fixed encoding field: the number of hours."""
        return (len(self),)

    def body(self) -> array:
        """Hours, then counts."""
        return pairs_array(self)

    def load(self, head: Head, i: int, body: memoryview, pos: int) -> tuple[int, int]:
        """Restore from ``head[i]`` and the pairs at ``body[pos:]`` (see :mod:`state.codec`)."""
        pairs, pos = load_pairs(body, pos, head[i])
        self.update(pairs)
        return i + 1, pos

    def drop_until(self, cutoff: int) -> None:
        """Forget the hours at or before ``cutoff``."""
        for h in [h for h in self if h <= cutoff]:
            del self[h]

    def totals(self, before: int, after: tuple[int, ...]) -> tuple[int, int, int]:
        """Labels in hours before ``before`` and after each of ``after`` (1 d, 7 d, 30 d)."""
        lo1, lo7, lo30 = after
        f1 = f7 = f30 = 0
        for k, v in self.items():
            if lo30 < k < before:
                f30 += v
                if k > lo7:
                    f7 += v
                    if k > lo1:
                        f1 += v
        return f1, f7, f30


class MerchantState:
    """Counts and fraud labels of one merchant; ``features`` before a txn, ``update`` after."""

    __slots__ = ("last_time", "hmax", "w1d", "w7d", "w30d", "fraud")

    def __init__(self) -> None:
        self.last_time = NO_TIME
        self.hmax = NO_TIME
        self.w1d = CountWindow(HOUR_MS, 24)
        self.w7d = CountWindow(6 * HOUR_MS, 28)
        self.w30d = CountWindow(DAY_MS, 30)
        self.fraud = FraudHours()

    def _parts(self) -> tuple[Part, ...]:
        return (self.w1d, self.w7d, self.w30d, self.fraud)

    def _expire(self, t_ms: int) -> None:
        if self.last_time != NO_TIME and t_ms - self.last_time > IDLE_EVICT_MS:
            self.__init__()  # type: ignore[misc]

    def _touch(self, t_ms: int) -> None:
        if t_ms > self.last_time:
            self.last_time = t_ms
        h = t_ms // HOUR_MS
        if h > self.hmax:
            self.hmax = h
            self.fraud.drop_until(h - _MAX_HOURS)

    def features(self, txn: Transaction) -> list[float]:
        """Merchant features of spec v1 (in order) as of just before ``txn``."""
        t = txn.event_time
        self._expire(t)
        w1, w7, w30 = self.w1d, self.w7d, self.w30d
        for w in (w1, w7, w30):
            if t // w.bucket_ms > w.bmax:
                w.advance(t)
        c1, c7, c30 = w1.count, w7.count, w30.count
        f1 = f7 = f30 = 0
        if self.fraud:
            h = t // HOUR_MS
            ref = h if h > self.hmax else self.hmax
            f1, f7, f30 = self.fraud.totals(h, tuple(ref - n for n in _FRAUD_HOURS))
        return [
            c1,
            c7,
            c30,
            min(1.0, f1 / c1) if c1 else 0.0,
            min(1.0, f7 / c7) if c7 else 0.0,
            min(1.0, f30 / c30) if c30 else 0.0,
        ]

    def update(self, txn: Transaction) -> None:
        """Count ``txn``."""
        t = txn.event_time
        self._expire(t)
        self._touch(t)
        for w in (self.w1d, self.w7d, self.w30d):
            w.add(t)

    def add_fraud(self, label_time: int) -> None:
        """Count one fraud label known from ``label_time`` on (callers deduplicate labels)."""
        self._expire(label_time)
        self._touch(label_time)
        h = label_time // HOUR_MS
        if h > self.hmax - _MAX_HOURS:
            self.fraud[h] = self.fraud.get(h, 0) + 1

    def encode(self) -> bytes:
        """Versioned compact bytes of this state (see :mod:`state.codec`)."""
        return _LAYOUT.encode((self.last_time, self.hmax), self._parts())

    @classmethod
    def decode(cls, buf: bytes) -> MerchantState:
        """Rebuild a state from :meth:`encode` bytes."""
        values = _LAYOUT.decode_head(buf)
        state = cls()
        state.last_time, state.hmax = values[1:3]
        _LAYOUT.load(state._parts(), values, 3, buf)
        return state


_LAYOUT = Layout("merchant", "qq", MerchantState()._parts())
