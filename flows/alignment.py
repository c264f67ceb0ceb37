"""Watermark alignment in one process: pause a partition that runs ahead in event time.

In a backlog, partitions are read at different speeds; a merchant shard can only
score a transaction once every input has passed its hour minus two
(:mod:`state.reorder`), so records of a fast partition would pile up in its
buffer. As in Flink's watermark alignment (FLIP-182), a ``transactions`` partition
whose newest event time is more than :data:`BOUND_MS` ahead of the watermark is not
read until the others catch up. The decode step records each partition's newest
event time (:func:`heard`), the merchant stages of the process record the
watermark they see (:func:`watermark_at`), and the source asks :func:`ahead`
before each poll. Every process has merchant shards hearing from every card shard,
so in a cluster each process knows the global watermark; a process without a
merchant shard never pauses.

The bound stays under an hour, the slack of the merchant windows: a record less
than an hour ahead of the watermark is scored at once, so an aligned partition's
records never wait in the merchant buffer.
"""

from __future__ import annotations

import threading

from state.kernels.windows import NO_TIME

#: How far (ms of event time) a partition may run ahead of the watermark.
BOUND_MS = 30 * 60_000
#: How long a paused partition waits before it asks again (s).
PAUSE_S = 0.02

_lock = threading.Lock()
_progress: dict[tuple[str, int], int] = {}
_watermarks: dict[int, int] = {}
_bound = [BOUND_MS]


def configure(bound_ms: int) -> None:
    """Set the alignment bound (``FRAUD_ALIGN_MS``; 0 turns alignment off)."""
    _bound[0] = bound_ms


def heard(topic: str, partition: int, event_ms: int) -> None:
    """``partition`` of ``topic`` handed on records up to ``event_ms``."""
    key = (topic, partition)
    if event_ms > _progress.get(key, NO_TIME):
        _progress[key] = event_ms


def progress(topic: str, partition: int) -> int:
    """The newest event time ``partition`` of ``topic`` handed on (NO_TIME: none)."""
    return _progress.get((topic, partition), NO_TIME)


def watermark_at(shard: int, watermark: int) -> None:
    """Merchant shard ``shard`` of this process sees ``watermark`` (ms)."""
    with _lock:
        _watermarks[shard] = watermark


def watermark() -> int:
    """The most advanced watermark a merchant shard of this process sees (NO_TIME: none)."""
    with _lock:
        return max(_watermarks.values(), default=NO_TIME)


def ahead(topic: str, partition: int) -> bool:
    """Whether ``partition`` should wait: its newest event time is past watermark + bound."""
    bound = _bound[0]
    if bound <= 0:
        return False
    known = watermark()
    if known <= NO_TIME:
        return False
    return _progress.get((topic, partition), NO_TIME) > known + bound


def reset() -> None:
    """Forget everything (tests; a process runs one flow)."""
    with _lock:
        _progress.clear()
        _watermarks.clear()
        _bound[0] = BOUND_MS
