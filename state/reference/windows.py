"""Pure event-time aggregates with bounded memory per key; no clock, no IO.

Time always comes from the events. Out-of-order handling, shared by every class:

* a window ends at the bucket of the *latest* event time it has seen (its
  watermark); an older event never moves it back, so a late transaction sees
  the window as of the card's newest event;
* a late event is added to its own bucket if that bucket is still inside the
  window, and ignored by that window otherwise;
* window sums are kept incrementally and recomputed (left fold in insertion
  order) whenever buckets expire, so the same event sequence gives bit-identical
  floats whether the state stayed in memory or went through ``encode``/``decode``.

Storage: a window keeps its buckets as one flat float64 array of records in
insertion order; every aggregate encodes as a few fixed ``head`` fields (packed
into its owner's one head struct) plus one ``body`` array, so a window's
encode and decode are memory copies (see :mod:`state.codec`).

>>> w = BucketWindow(bucket_ms=60_000, n_buckets=10)
>>> w.add(0, 3.0, 1.0); w.add(30_000, 2.0, 1.0); (w.count, w.total)
(2.0, 5.0)
>>> w.advance(600_000); (w.count, w.total)
(0.0, 0.0)
"""

from __future__ import annotations

from array import array
from functools import reduce
from operator import add

from state.reference.codec import Head, load_array, load_pairs, pairs_array

NO_TIME = -(1 << 62)
"""Sentinel for "nothing seen yet" (bucket indices and epoch-ms times)."""


class CountWindow:
    """Sliding window of ``n_buckets`` time buckets counting events.

    ``data`` holds one record per non-empty bucket, ``[bucket, count]`` (bucket
    indices are exact in float64), in insertion order.
    """

    __slots__ = ("bucket_ms", "n", "bmax", "data", "count")

    STRIDE = 2
    _ZERO = array("d", [0.0])  # the values of a new record
    head_codes = "qqd"

    def __init__(self, bucket_ms: int, n_buckets: int) -> None:
        self.bucket_ms = bucket_ms
        self.n = n_buckets
        self.bmax = NO_TIME
        self.data = array("d")
        self._clear()
    def _clear(self) -> None:
        self.count = 0.0

    def _refold(self) -> None:
        self.count = reduce(add, self.data[1 :: self.STRIDE], 0.0)

    def head(self) -> tuple[int | float, ...]:
        """Fixed encoding fields: end bucket, bucket count, window sums."""
        return (self.bmax, len(self.data) // self.STRIDE, self.count)

    def body(self) -> array:
        """The bucket records."""
        return self.data

    def load(self, head: Head, i: int, body: memoryview, pos: int) -> tuple[int, int]:
        """Restore from ``head[i:]`` and the records at ``body[pos:]`` (see :mod:`state.codec`)."""
        self.bmax = head[i]
        self.data, pos = load_array("d", body, pos, head[i + 1] * self.STRIDE)
        n = len(self.head_codes)
        self._load_sums(head[i + 2 : i + n])
        return i + n, pos

    def _load_sums(self, sums: Head) -> None:
        (self.count,) = sums

    def advance(self, t_ms: int) -> None:
        """Move the window end to ``t_ms``'s bucket if that is later; drop expired buckets."""
        b = t_ms // self.bucket_ms
        if b <= self.bmax:
            return
        cutoff = b - self.n
        everything = self.bmax <= cutoff
        self.bmax = b
        data = self.data
        if not data:
            return
        if everything:  # the common case for a quiet key
            self.data = array("d")
            self._clear()
            return
        s = self.STRIDE
        if min(data[::s]) > cutoff:
            return
        i = 0  # expired buckets are usually the oldest records: drop that prefix
        while i < len(data) and data[i] <= cutoff:
            i += s
        del data[:i]
        if data and min(data[::s]) <= cutoff:  # late records further in
            data[:] = array("d", [x for i in range(0, len(data), s) if data[i] > cutoff
                                  for x in data[i : i + s]])
        self._refold()

    def _record(self, t_ms: int) -> int:
        """Index of the record of ``t_ms``'s bucket (appended, zero, if new); -1 if too old."""
        b = t_ms // self.bucket_ms
        if b > self.bmax:
            self.advance(t_ms)
        elif b <= self.bmax - self.n:
            return -1
        data, s = self.data, self.STRIDE
        i = len(data) - s  # the newest bucket is the usual target
        if i >= 0 and data[i] == b:
            return i
        starts = data[::s]
        if b in starts:
            return starts.index(b) * s
        data.append(b)
        data += self._ZERO
        return i + s

    def add(self, t_ms: int) -> None:
        """Count one event (advancing first); an event older than the window is ignored."""
        i = self._record(t_ms)
        if i >= 0:
            self.data[i + 1] += 1.0
            self.count += 1.0

    def counts_between(self, after: list[int], upto: int) -> list[float]:
        """Events in buckets ``a < bucket <= upto``, for each ``a`` in ``after``."""
        data, s = self.data, self.STRIDE
        out = [0.0] * len(after)
        for i in range(0, len(data), s):
            b = data[i]
            if b <= upto:
                c = data[i + 1]
                for j, a in enumerate(after):
                    if b > a:
                        out[j] += c
        return out


class BucketWindow(CountWindow):
    """:class:`CountWindow` that also sums amounts, squared amounts and "small" flags.

    Records are ``[bucket, count, total, total_sq, small, rated]``: ``count`` counts
    every event (velocity), ``rated`` the events with an amount, the denominator of
    amount means (an unrated event, :meth:`add_unrated`, has no amount: issue 23).
    """

    __slots__ = ("total", "total_sq", "small", "rated")

    STRIDE = 6
    _ZERO = array("d", [0.0] * 5)
    head_codes = "qqddddd"

    def _clear(self) -> None:
        self.count = self.total = self.total_sq = self.small = self.rated = 0.0

    def _refold(self) -> None:
        data = self.data
        self.count, self.total, self.total_sq, self.small, self.rated = (
            reduce(add, data[j::6], 0.0) for j in range(1, 6)
        )

    def head(self) -> tuple[int | float, ...]:
        """Fixed encoding fields: end bucket, bucket count, window sums."""
        return (self.bmax, len(self.data) // 6, self.count, self.total, self.total_sq,
                self.small, self.rated)

    def _load_sums(self, sums: Head) -> None:
        self.count, self.total, self.total_sq, self.small, self.rated = sums

    def add(self, t_ms: int, amount: float, small: float) -> None:  # type: ignore[override]
        """Add one event (advancing first); an event older than the window is ignored."""
        i = self._record(t_ms)
        if i < 0:
            return
        sq = amount * amount
        data = self.data
        data[i + 1] += 1.0
        data[i + 2] += amount
        data[i + 3] += sq
        data[i + 4] += small
        data[i + 5] += 1.0
        self.count += 1.0
        self.total += amount
        self.total_sq += sq
        self.small += small
        self.rated += 1.0

    def add_unrated(self, t_ms: int) -> None:
        """Count one event without an amount (advancing first); its sums stay as they are."""
        CountWindow.add(self, t_ms)

    def since(self, bucket: int) -> tuple[float, float]:
        """Count and small count over the buckets after ``bucket``."""
        data = self.data
        count = small = 0.0
        for i in range(0, len(data), 6):
            if data[i] > bucket:
                count += data[i + 1]
                small += data[i + 4]
        return count, small


class LastSeen:
    """Bounded map of value -> latest event time, for distinct counts and "first seen" flags.

    Holds at most ``cap`` values; when full, values older than ``horizon_ms``
    before the newest time go first, then the least recently seen (ties: the
    smallest value). Counts are exact while a key has at most ``cap`` values in
    the horizon and saturate at ``cap`` beyond.
    """

    __slots__ = ("cap", "horizon_ms", "seen")

    head_codes = "q"

    def __init__(self, cap: int, horizon_ms: int) -> None:
        self.cap = cap
        self.horizon_ms = horizon_ms
        self.seen: dict[int, int] = {}

    def head(self) -> tuple[int, ...]:
        """Fixed encoding field: the number of values."""
        return (len(self.seen),)

    def body(self) -> array:
        """Value and time pairs."""
        return pairs_array(self.seen)

    def load(self, head: Head, i: int, body: memoryview, pos: int) -> tuple[int, int]:
        """Restore from ``head[i]`` and the pairs at ``body[pos:]`` (see :mod:`state.codec`)."""
        self.seen, pos = load_pairs(body, pos, head[i])
        return i + 1, pos

    def count_since(self, since_ms: int) -> int:
        """Number of values whose latest time is after ``since_ms``."""
        return sum(1 for t in self.seen.values() if t > since_ms)

    def count_since2(self, since_a: int, since_b: int) -> tuple[int, int]:
        """:meth:`count_since` for two times in one pass."""
        a = b = 0
        for t in self.seen.values():
            if t > since_a:
                a += 1
            if t > since_b:
                b += 1
        return a, b

    def last(self, value: int) -> int:
        """Latest time ``value`` was seen, or :data:`NO_TIME`."""
        return self.seen.get(value, NO_TIME)

    def add(self, value: int, t_ms: int, ref_ms: int) -> None:
        """Record ``value`` at ``t_ms``; ``ref_ms`` is the key's newest time, for eviction."""
        seen = self.seen
        if seen.get(value, NO_TIME) < t_ms:
            seen[value] = t_ms
        if len(seen) > self.cap:
            cutoff = ref_ms - self.horizon_ms
            kept = {v: t for v, t in seen.items() if t > cutoff}
            while len(kept) > self.cap:
                del kept[min(kept, key=lambda v: (kept[v], v))]
            self.seen = kept


class TopCounts:
    """Bounded value -> count map with a mode; when full, the rarest value (then smallest) goes."""

    __slots__ = ("cap", "counts", "best")

    head_codes = "qq"

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counts: dict[int, int] = {}
        self.best: int | None = None

    def head(self) -> tuple[int, ...]:
        """Fixed encoding fields: the number of values and the mode (0 when empty)."""
        return (len(self.counts), 0 if self.best is None else self.best)

    def body(self) -> array:
        """Value and count pairs."""
        return pairs_array(self.counts)

    def load(self, head: Head, i: int, body: memoryview, pos: int) -> tuple[int, int]:
        """Restore from ``head[i:i+2]`` and the pairs at ``body[pos:]`` (see :mod:`state.codec`)."""
        self.counts, pos = load_pairs(body, pos, head[i])
        self.best = head[i + 1] if self.counts else None
        return i + 2, pos

    def mode(self) -> int | None:
        """The most frequent value (ties: the smallest), or None when empty."""
        return self.best

    def _argmax(self) -> int | None:
        counts = self.counts
        return max(counts, key=lambda v: (counts[v], -v)) if counts else None

    def add(self, value: int) -> None:
        """Count one occurrence of ``value``."""
        counts = self.counts
        if value in counts:
            counts[value] += 1
        else:
            if len(counts) >= self.cap:
                del counts[min(counts, key=lambda v: (counts[v], v))]
                self.best = self._argmax()
            counts[value] = 1
        best = self.best
        if best is None or (counts[value], -value) > (counts.get(best, 0), -best):
            self.best = value
