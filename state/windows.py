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

>>> w = BucketWindow(bucket_ms=60_000, n_buckets=10)
>>> w.add(0, 3.0, 1.0); w.add(30_000, 2.0, 1.0); w.advance(600_000)
>>> (w.count, w.total)
(0.0, 0.0)
"""

from __future__ import annotations

import functools
import struct
from itertools import chain as _chain

from state.codec import Reader

NO_TIME = -(1 << 62)
"""Sentinel for "nothing seen yet" (bucket indices and epoch-ms times)."""

_WIN_EMPTY = struct.Struct("<qH")


@functools.cache
def _win_full(k: int) -> struct.Struct:
    """Encoder of a window holding ``k`` buckets (k is at most a window's bucket count)."""
    return struct.Struct(f"<qH4d{k}q{4 * k}d")

_SEEN_HEAD = struct.Struct("<H")


class BucketWindow:
    """Sliding window of ``n_buckets`` buckets: count, sum, sum of squares, small count."""

    __slots__ = ("bucket_ms", "n", "bmax", "bmin", "buckets", "count", "total", "total_sq", "small")

    def __init__(self, bucket_ms: int, n_buckets: int) -> None:
        self.bucket_ms = bucket_ms
        self.n = n_buckets
        self.bmax = NO_TIME
        self.bmin = -NO_TIME
        self.buckets: dict[int, list[float]] = {}
        self.count = 0.0
        self.total = 0.0
        self.total_sq = 0.0
        self.small = 0.0

    def advance(self, t_ms: int) -> None:
        """Move the window end to ``t_ms``'s bucket if that is later; drop expired buckets."""
        b = t_ms // self.bucket_ms
        if b <= self.bmax:
            return
        cutoff = b - self.n
        if self.bmax <= cutoff:  # everything expired: the common case for a quiet key
            self.bmax = b
            if self.buckets:
                self.buckets = {}
                self.bmin = -NO_TIME
                self.count = self.total = self.total_sq = self.small = 0.0
            return
        self.bmax = b
        if self.bmin <= cutoff:
            kept = {k: v for k, v in self.buckets.items() if k > cutoff}
            self.buckets = kept
            self.bmin = min(kept) if kept else -NO_TIME
            self._refold()

    def add(self, t_ms: int, amount: float, small: float) -> None:
        """Add one event (advancing first); an event older than the window is ignored."""
        b = t_ms // self.bucket_ms
        if b > self.bmax:
            self.advance(t_ms)
        elif b <= self.bmax - self.n:
            return
        sq = amount * amount
        entry = self.buckets.get(b)
        if entry is None:
            self.buckets[b] = [1.0, amount, sq, small]
            if b < self.bmin:
                self.bmin = b
        else:
            entry[0] += 1.0
            entry[1] += amount
            entry[2] += sq
            entry[3] += small
        self.count += 1.0
        self.total += amount
        self.total_sq += sq
        self.small += small

    def _refold(self) -> None:
        count = total = total_sq = small = 0.0
        for c, s, q, m in self.buckets.values():
            count += c
            total += s
            total_sq += q
            small += m
        self.count, self.total, self.total_sq, self.small = count, total, total_sq, small

    def encode(self, out: list[bytes]) -> None:
        """Append this window's bytes to ``out``: end bucket, sums, bucket indices, bucket sums.

        Buckets keep their insertion order (the order :meth:`_refold` sums them in).
        """
        buckets = self.buckets
        k = len(buckets)
        if not k:  # empty window: its sums are exactly 0.0
            out.append(_WIN_EMPTY.pack(self.bmax, 0))
            return
        out.append(_win_full(k).pack(self.bmax, k, self.count, self.total, self.total_sq,
                                     self.small, *buckets, *_chain.from_iterable(buckets.values())))

    def decode(self, reader: Reader) -> None:
        """Load this window's state from ``reader`` (the inverse of :meth:`encode`)."""
        buf, pos = reader.buf, reader.pos
        bmax, k = _WIN_EMPTY.unpack_from(buf, pos)
        self.bmax = bmax
        if not k:
            reader.pos = pos + _WIN_EMPTY.size
            self.buckets = {}
            self.bmin = -NO_TIME
            self.count = self.total = self.total_sq = self.small = 0.0
            return
        fmt = _win_full(k)
        vals = fmt.unpack_from(buf, pos)
        _, _, self.count, self.total, self.total_sq, self.small = vals[:6]
        it = iter(vals[6 + k:])
        rows = map(list, zip(it, it, it, it, strict=True))
        self.buckets = buckets = dict(zip(vals[6:6 + k], rows, strict=True))
        reader.pos = pos + fmt.size
        self.bmin = min(buckets)


class LastSeen:
    """Bounded map of value -> latest event time, for distinct counts and "first seen" flags.

    Holds at most ``cap`` values; when full, values older than ``horizon_ms``
    before the newest time go first, then the least recently seen (ties: the
    smallest value). Counts are exact while a key has at most ``cap`` values in
    the horizon and saturate at ``cap`` beyond.
    """

    __slots__ = ("cap", "horizon_ms", "seen")

    def __init__(self, cap: int, horizon_ms: int) -> None:
        self.cap = cap
        self.horizon_ms = horizon_ms
        self.seen: dict[int, int] = {}

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

    def encode(self, out: list[bytes]) -> None:
        """Append this map's bytes to ``out``."""
        k = len(self.seen)
        out.append(_SEEN_HEAD.pack(k))
        if k:
            out.append(struct.pack(f"<{k}q{k}q", *self.seen, *self.seen.values()))

    def decode(self, reader: Reader) -> None:
        """Load this map from ``reader``."""
        (k,) = reader.unpack(_SEEN_HEAD)
        assert isinstance(k, int)
        vals = reader.unpack_fmt(f"<{k}q{k}q") if k else ()
        self.seen = dict(zip(vals[:k], vals[k:], strict=True))  # type: ignore[arg-type]


class TopCounts:
    """Bounded value -> count map with a mode; when full, the rarest value (then smallest) goes."""

    __slots__ = ("cap", "counts", "best")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counts: dict[int, int] = {}
        self.best: int | None = None

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

    def encode(self, out: list[bytes]) -> None:
        """Append this map's bytes to ``out``."""
        k = len(self.counts)
        out.append(_SEEN_HEAD.pack(k))
        if k:
            out.append(struct.pack(f"<{k}q{k}I", *self.counts, *self.counts.values()))

    def decode(self, reader: Reader) -> None:
        """Load this map from ``reader``."""
        (k,) = reader.unpack(_SEEN_HEAD)
        assert isinstance(k, int)
        vals = reader.unpack_fmt(f"<{k}q{k}I") if k else ()
        self.counts = dict(zip(vals[:k], vals[k:], strict=True))  # type: ignore[arg-type]
        self.best = self._argmax()
