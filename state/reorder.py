"""Event-time order for the merchant stage: a watermark over every input and a bounded buffer.

A merchant shard hears from every card shard and every ``labels`` partition, each
read at its own speed. Its features must nevertheless count exactly what event
time says (:mod:`state.replay`): a transaction in UTC hour ``h`` reads the
merchant's transactions and fraud labels of the hours up to ``h - 2`` (the
anchored, closed windows of :mod:`state.kernels.merchant`). So a transaction may
be scored once every input has passed hour ``h - 2``, and not before.

**Watermark.** Each input reports its *progress*, the largest event time it has
handed on (an input hands on its records in event-time order, up to the
tolerance below), or that it is *idle* (nothing to read for a while: it does not
hold the others back, as Flink's ``withIdleness``). The watermark is the smallest
progress of the inputs that are not idle (an input not heard from yet holds it at
the start; with every input idle, it is the largest progress); it never goes
back. Everything below it has arrived. When an idle input wakes up, the other idle
ones count again for a short grace (:attr:`Watermark.grace_s`): a burst after a quiet
spell reaches the partitions milliseconds apart, and the first to wake must not
carry the watermark past the others' records.

**Release.** Buffered transactions of hour ``h`` are released, in event-time order,
once the watermark reaches the start of hour ``h - 1``; in live traffic that is at
once (every partition is within the hour), so the order costs no latency. In a
backlog, a partition read ahead of the others waits here until they catch up; the
source pauses a partition that runs more than the alignment bound ahead of the
watermark (:mod:`flows.alignment`, the idea of Flink's watermark alignment,
FLIP-182), so the buffer stays small.

**Labels** wait too and are applied at their label time among the transactions
(a fraud label counts from its label hour, and under its transaction's day once
that transaction is known), as the offline replay applies them.

**Bounds.** The buffer holds at most ``limit`` rows: beyond it, the oldest
transactions are released anyway and counted (:attr:`EventTimeOrder.forced`); their
merchant features may then differ from the event-time answer. A transaction or
label that arrives after transactions two hours later than it were released is
*late* (counted, processed with the next release). A record up to an hour behind
its input's progress is never late.

**One known difference.** Transactions are released up to two hours ahead of the
watermark (the slack of the windows), labels with them, in event-time order per
release; a label read after a transaction up to two hours later than it was
released is applied after it. No feature reads that transaction's hour, but the
merchant keeps a label's delay-aligned count only while its transaction's day is
within 41 days of its newest transaction: for a label 40 to 41 days after its
transaction, around UTC midnight, that one count can differ from the replay's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, Self, TypeVar

import numpy as np

from state.kernels.windows import NO_TIME
from state.units import HOUR_MS

#: The watermark of inputs that are all idle: everything has arrived.
EVERYTHING = 1 << 62
#: How far behind the watermark an input can be and still hand on records that are not late.
SLACK_MS = HOUR_MS


class Rows(Protocol):
    """A columnar chunk of transactions: event times, a selection, a concatenation."""

    @property
    def event_ms(self) -> np.ndarray:
        """int64 event times (ms) of the rows."""
        ...

    def __len__(self) -> int: ...

    def take(self, index: np.ndarray) -> Self:
        """The rows at ``index`` (int array), in that order."""
        ...


R = TypeVar("R", bound=Rows)
L = TypeVar("L", bound=Rows)


def release_limit(watermark: int) -> int:
    """Transactions before this time (ms) may be scored under ``watermark``."""
    if watermark >= EVERYTHING:
        return EVERYTHING
    if watermark <= NO_TIME:
        return NO_TIME
    return (watermark // HOUR_MS + 2) * HOUR_MS


def is_late(time_ms: int | np.ndarray, watermark: int) -> bool | np.ndarray:
    """Whether records at ``time_ms`` may have been missed by transactions already scored."""
    if watermark >= EVERYTHING or watermark <= NO_TIME:
        return np.zeros(np.shape(time_ms), dtype=bool) if np.ndim(time_ms) else False
    return time_ms < (watermark // HOUR_MS) * HOUR_MS


@dataclass
class Watermark:
    """The smallest progress of the non-idle inputs, monotone (see the module docstring).

    Inputs are named by any hashable; :meth:`expect` declares the ones to wait for.
    ``grace_s``: when an idle input wakes up, the other idle inputs may be waking too (a
    burst after a quiet spell reaches the partitions a few milliseconds apart), so for
    this long (wall-clock seconds) they hold the watermark at their progress again: those
    within :data:`SLACK_MS` of the watermark (one left far behind long ago cannot hold it
    back any more), or all of them before the watermark has moved at all.
    """

    progress: dict[object, int] = field(default_factory=dict)
    idle: dict[object, bool] = field(default_factory=dict)
    value: int = NO_TIME
    grace_s: float = 1.0
    suspect_until: dict[object, float] = field(default_factory=dict)

    def expect(self, inputs: Sequence[object]) -> None:
        """Wait for ``inputs`` (progress unknown, not idle) unless already heard."""
        for name in inputs:
            self.progress.setdefault(name, NO_TIME)
            self.idle.setdefault(name, False)

    def resumed(self) -> None:
        """Forget which inputs were idle: a restored snapshot's idle flags are the past.

        Inputs idle when the snapshot was taken (a stream that had caught up) may have
        records waiting now (a backlog built while the flow was down). Left idle, the
        first input to deliver would carry the watermark past the others' records, a
        whole outage ahead of them (their records would then arrive late and be counted
        out of event-time order). So every input holds the watermark at its restored
        progress again until it delivers or says anew that it is idle (its source does
        after ``FRAUD_INPUT_IDLE_MS`` with nothing left to read).
        """
        for name in self.idle:
            self.idle[name] = False
        self.suspect_until.clear()

    def heard(self, name: object, progress: int, idle: bool, now: float = 0.0) -> None:
        """``name`` handed on records up to ``progress`` (ms) and is (not) idle at ``now`` (s)."""
        if progress > self.progress.get(name, NO_TIME):
            self.progress[name] = progress
        else:
            self.progress.setdefault(name, NO_TIME)
        if self.idle.get(name, False) and not idle:  # woke up: the other idle ones may too
            until = now + self.grace_s
            current = self.value - SLACK_MS  # idle inputs further behind were left long ago
            for other, other_idle in self.idle.items():
                if other_idle and other != name and (
                        self.value <= NO_TIME or self.progress.get(other, NO_TIME) >= current):
                    self.suspect_until[other] = until
        self.idle[name] = idle
        if not idle:
            self.suspect_until.pop(name, None)

    def update(self, now: float = 0.0) -> int:
        """Recompute at ``now`` (s); the new (never smaller) watermark.

        With every input idle, everything up to the newest progress has arrived.
        """
        suspect = self.suspect_until
        if suspect:
            for name in [n for n, until in suspect.items() if until <= now]:
                del suspect[name]
        active = [p for name, p in self.progress.items()
                  if not self.idle.get(name, False) or name in suspect]
        newest = min(active) if active else max(self.progress.values(), default=NO_TIME)
        if newest > self.value:
            self.value = newest
        return self.value

    def recheck_at(self) -> float | None:
        """When (wall-clock s) the watermark may move on by itself (a grace ends), if ever."""
        return min(self.suspect_until.values(), default=None)


@dataclass
class _Buffer(Generic[R]):
    """Chunks of rows waiting for the watermark."""

    chunks: list[R] = field(default_factory=list)
    size: int = 0
    oldest: int = EVERYTHING
    """The smallest event time buffered (ms; EVERYTHING when empty)."""

    def add(self, chunk: R) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        self.oldest = min(self.oldest, int(chunk.event_ms.min()))

    def split(self, limit: int) -> tuple[list[R], list[R]]:
        """``(ready, kept)``: the rows before ``limit`` (ms), and the others."""
        if self.oldest >= limit:
            return [], self.chunks
        out: list[R] = []
        keep: list[R] = []
        for chunk in self.chunks:
            ready = chunk.event_ms < limit
            if ready.all():
                out.append(chunk)
            elif ready.any():
                out.append(chunk.take(np.flatnonzero(ready)))
                keep.append(chunk.take(np.flatnonzero(~ready)))
            else:
                keep.append(chunk)
        return out, keep


    @classmethod
    def of(cls, chunks: list[R], size: int) -> _Buffer[R]:
        """A buffer of ``chunks`` (``size`` rows in all)."""
        oldest = min((int(c.event_ms.min()) for c in chunks), default=EVERYTHING)
        return cls(chunks, size, oldest)


def _sorted(chunks: list[R], concat: Callable[[list[R]], R]) -> R | None:
    if not chunks:
        return None
    merged = chunks[0] if len(chunks) == 1 else concat(chunks)
    times = merged.event_ms
    if len(times) > 1 and (np.diff(times) < 0).any():
        merged = merged.take(np.argsort(times, kind="stable"))
    return merged


@dataclass
class EventTimeOrder(Generic[R, L]):
    """Transactions and labels buffered until the watermark lets them go, in event-time order.

    :meth:`release` hands them on as runs to apply in turn: transactions by event time,
    labels at their label time, a transaction before a label at the same millisecond
    (the order of :func:`state.replay.event_time_ops`), arrival order among equals.
    """

    limit: int = 200_000
    watermark: Watermark = field(default_factory=Watermark)
    txns: _Buffer[R] = field(default_factory=_Buffer)
    labels: _Buffer[L] = field(default_factory=_Buffer)
    late: int = 0
    """Transactions that arrived behind the watermark (a running count)."""
    late_labels: int = 0
    """Labels that arrived behind the watermark (a running count)."""
    forced: int = 0
    """Rows released ahead of the watermark because the buffer was full."""

    @property
    def buffered(self) -> int:
        """Rows waiting."""
        return self.txns.size + self.labels.size

    def frozen(self) -> EventTimeOrder[R, L]:
        """A copy for a recovery snapshot that later calls on this one leave unchanged.

        Buffered chunks are never changed in place (a split takes new chunks), so the
        copy shares them and copies only the lists and the watermark's dictionaries:
        O(chunks) instead of a deep copy of every buffered transaction (about 4% of
        the scoring flow's CPU in a backlog).
        """
        mark = self.watermark
        return replace(
            self,
            watermark=replace(mark, progress=dict(mark.progress), idle=dict(mark.idle),
                              suspect_until=dict(mark.suspect_until)),
            txns=replace(self.txns, chunks=list(self.txns.chunks)),
            labels=replace(self.labels, chunks=list(self.labels.chunks)))

    def add_txns(self, chunk: R) -> None:
        """Buffer transactions (late ones are counted, and go with the next release)."""
        if len(chunk):
            self.late += int(np.count_nonzero(is_late(chunk.event_ms, self.watermark.value)))
            self.txns.add(chunk)

    def add_labels(self, chunk: L) -> None:
        """Buffer labels (late ones are counted, and go with the next release)."""
        if len(chunk):
            self.late_labels += int(np.count_nonzero(
                is_late(chunk.event_ms, self.watermark.value)))
            self.labels.add(chunk)

    def release(self, concat_txns: Callable[[list[R]], R], concat_labels: Callable[[list[L]], L],
                now: float = 0.0) -> list[tuple[bool, R | L]]:
        """What the watermark lets go at ``now`` (wall s), as runs to apply in turn.

        Each run is ``(is_label, chunk)``. When more than ``limit`` rows would stay, the
        oldest transactions go anyway.
        """
        limit = release_limit(self.watermark.update(now))
        if not self.buffered or (self.buffered <= self.limit and self.txns.oldest >= limit
                                 and self.labels.oldest >= limit):
            return []
        ready_t, keep_t = self.txns.split(limit)
        ready_l, keep_l = self.labels.split(limit)
        kept_t, kept_l = sum(map(len, keep_t)), sum(map(len, keep_l))
        if kept_t + kept_l > self.limit and kept_t:  # full: the oldest go anyway
            merged = concat_txns(keep_t)
            order = np.argsort(merged.event_ms, kind="stable")
            cut = min(kept_t, kept_t + kept_l - self.limit)
            ready_t.append(merged.take(order[:cut]))
            keep_t = [merged.take(order[cut:])] if cut < kept_t else []
            kept_t -= cut
            self.forced += cut
        self.txns = _Buffer.of(keep_t, kept_t)
        self.labels = _Buffer.of(keep_l, kept_l)
        txns, labels = _sorted(ready_t, concat_txns), _sorted(ready_l, concat_labels)
        if labels is None:
            return [] if txns is None else [(False, txns)]
        if txns is None:
            return [(True, labels)]
        # each label goes after the transactions at or before its time
        at = np.searchsorted(txns.event_ms, labels.event_ms, side="right")
        runs: list[tuple[bool, R | L]] = []
        start = 0
        for pos in np.unique(at).tolist():
            if pos > start:
                runs.append((False, txns.take(np.arange(start, pos))))
                start = pos
            runs.append((True, labels.take(np.flatnonzero(at == pos))))
        if start < len(txns):
            runs.append((False, txns.take(np.arange(start, len(txns))) if start else txns))
        return runs
