"""What a traced transaction carries from the source to the sink: plain, picklable values.

Recovery snapshots keep decoded transactions (held mis-keyed records, the merchant
stage's event-time buffer), so a trace travels as the header strings and epoch
seconds, never as SDK objects; its spans are recorded once, at the sink
(:mod:`tracing.spans`), from the times noted on the way. A batch carries them as a
dict, row index -> :class:`Carried` (:attr:`flows.items.Decoded.traces`), only
for its traced rows: an untraced batch carries None.

Header names and formats: W3C Trace Context, level 1
(https://www.w3.org/TR/trace-context/): ``traceparent`` is
``version-traceid-parentid-flags`` (ASCII); several ``tracestate`` values are one
comma-separated list. Kafka header keys are case-sensitive, HTTP's are not: both
spellings are accepted here, as OpenTelemetry's Kafka instrumentations write lower case.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


class Carried(NamedTuple):
    """A traced transaction between the decode step and the sink."""

    traceparent: str | None
    """The W3C ``traceparent`` as received (validated at decode); None: a trace this flow
    started (``FRAUD_TRACE_SAMPLE_RATE``)."""
    tracestate: str | None
    """The W3C ``tracestate`` as received (None: none)."""
    decoded: float
    """When the decode step was done with its batch (epoch s)."""


class Timeline(NamedTuple):
    """A traced verdict: its trace and the times of its steps (epoch s), for the sink's spans."""

    carried: Carried
    partition: int
    """Its ``transactions`` partition."""
    offset: int
    """Its offset there (not card data: where the record is, not whose)."""
    fetched: float
    """When the source handed it on (0: not timed; the decode span then starts at decode)."""
    carded: float
    """When the card stage was done with it."""
    scoring: float
    """When the merchant stage started scoring its batch (after the event-time wait)."""
    scored: float
    """When its verdict was rendered."""
    verdict: str
    """``fresh``, ``repeat`` (a re-delivery) or ``replay`` (after a crash)."""


Header = tuple[str, str | None]
"""``(traceparent, tracestate or None)`` of one record, as sent."""


def trace_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> Header | None:
    """The ``traceparent`` and ``tracestate`` among a record's Kafka headers (None: none).

    Values are decoded as ASCII (undecodable bytes become U+FFFD, so the decode step's
    validation refuses them); of several ``traceparent`` headers the first counts.

    >>> trace_headers([("Traceparent", b"00-ab"), ("tracestate", b"a=1"), ("tracestate", b"b=2")])
    ('00-ab', 'a=1,b=2')
    >>> trace_headers([("other", b"x")]) is None
    True
    """
    if not headers:
        return None
    parent: str | None = None
    states: list[str] = []
    for key, value in headers:
        name = key.lower()
        if name == TRACEPARENT and parent is None:
            parent = (value or b"").decode("ascii", "replace")
        elif name == TRACESTATE and value:
            states.append(value.decode("ascii", "replace"))
    if parent is None:
        return None
    return parent, ",".join(states) or None


def timelines(traces: dict[int, Carried], sent: list[int], partition: np.ndarray,
              offset: np.ndarray, fetched: np.ndarray, carded: np.ndarray, scoring: float,
              scored: float, verdicts: Sequence[str] | np.ndarray
              ) -> dict[int, Timeline] | None:
    """The traced verdicts of a scored batch: index in the sink batch -> :class:`Timeline`.

    ``traces``: the batch's traced rows; ``sent``: the rows that got a verdict, ascending
    (the sink batch's order); the arrays are the batch's columns; ``verdicts``: each row's
    kind. Rows without a verdict (refused, missing) are not traced further.
    """
    out: dict[int, Timeline] = {}
    for row, carried in traces.items():
        j = bisect_left(sent, row)
        if j < len(sent) and sent[j] == row:
            out[j] = Timeline(carried, int(partition[row]), int(offset[row]),
                              float(fetched[row]), float(carded[row]), scoring, scored,
                              str(verdicts[row]))
    return out or None
