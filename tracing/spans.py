"""The flow's spans and the verdict's trace headers, through the OpenTelemetry SDK.

The OpenTelemetry SDK (``opentelemetry-sdk``) does the tracing: W3C Trace Context
parsing and injection (``TraceContextTextMapPropagator``), span and trace ids
(``RandomIdGenerator``), the span type (``ReadableSpan``), batching and export
(``BatchSpanProcessor`` with the OTLP/HTTP exporter,
``opentelemetry-exporter-otlp-proto-http``: lighter than the gRPC one, no ``grpcio``).
It is the reference implementation every tracing backend reads, and it reads the
standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``..._HEADERS``, ``OTEL_BSP_*``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``; ``OTEL_SDK_DISABLED=true``
turns tracing off). The flow keeps only what the SDK cannot know: which records
are traced, and when each step handled them.

**Sampling.** A record with a valid ``traceparent`` follows its parent's sampled
flag (W3C Trace Context; the SDK's ``ParentBased`` rule): flag ``01``, its spans are
recorded; ``00``, none are, but its verdict still carries the trace (a new span id,
flag ``00``), so the caller's trace continues downstream. A record without one (or
with a malformed one: ignored, as W3C Trace Context requires, counted in
:attr:`Tracing.malformed` and logged once) starts a new, sampled trace with
probability ``FRAUD_TRACE_SAMPLE_RATE`` (default 0: never), drawn once per batch with
numpy (the SDK's ``TraceIdRatioBased`` needs a trace id per record first: a per-row
cost on every transaction); ``OTEL_TRACES_SAMPLER`` is therefore not read.

**Spans** (one trace per authorisation, what a user viewing it expects): under the
caller's span (the one whose ``traceparent`` came in), one span per step, in time
order: ``decode`` (source hand-over to decoded), ``card`` (the card stage),
``merchant`` (the wait in the merchant stage's event-time buffer), ``score``
(merchant state, models, rules, render) and ``sink`` (kind PRODUCER, handing the
verdict to the producer). A trace the flow starts itself has a root
``process transactions`` span (kind CONSUMER) over them all. Five spans, not six,
for a continued trace: each costs (see the README's tracing section). The verdict's
headers carry the ``sink`` span's context, as OpenTelemetry's messaging conventions
inject the producing span's.

**Where the cost goes.** The times are noted on the way (:mod:`tracing.carry`), so
nothing of the SDK is kept in recovery snapshots. At the sink, :meth:`Tracing.publish`
only draws the ids and writes the headers; the spans, all finished by then, are
built as ``ReadableSpan`` s (skipping the SDK's live-span machinery: locks, sampler,
attribute checks, about 25 µs a span) and OTLP-encoded in a child process
(:mod:`tracing.export`), off the scoring loop.

**Attributes** are few (each costs) and carry no card data (PCI DSS): topic, partition
and offset of the transaction record (OpenTelemetry messaging conventions), the
verdict's topic, the verdict kind (fresh/repeat/replay); never a card id, PAN,
merchant id or transaction id (the trace id already finds the authorisation, and a
transaction id in a tracing backend would be one more store of payment data to scope).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tracing.carry import TRACEPARENT, TRACESTATE, Carried, Header, Timeline

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
#: The steps' spans made from the timeline: name, and the Timeline times (s) they run between.
_STEPS = (("decode", "fetched", "decoded"), ("card", "decoded", "carded"),
          ("merchant", "carded", "scoring"), ("score", "scoring", "scored"))
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


@functools.lru_cache(maxsize=4096)
def parent_context(traceparent: str, tracestate: str | None) -> Context | None:
    """The remote parent of a W3C ``traceparent`` (with ``tracestate``), None if malformed.

    Cached (a record's headers are parsed at decode, then again at the sink).

    >>> parent_context("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None) is None
    False
    >>> parent_context("00-00000000000000000000000000000000-b7ad6b7169203331-01", None) is None
    True
    """
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    context = _PROPAGATOR.extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


class Tracing:
    """The flow's tracing: picks the traced rows at decode, writes the verdicts' headers.

    ``export``: where the spans go, either an SDK span processor, fed in this process
    by a :class:`SpanMaker` (tests: ``SimpleSpanProcessor`` over the in-memory
    exporter), or a :class:`tracing.export.ExportProcess` (the flow: the spans are made
    and OTLP-encoded in a child process, off the scoring loop); ``env``: for the service
    name (:func:`resource`); ``sample_rate``: the probability (0-1) that a record
    without a valid ``traceparent`` starts a trace; ``topic``: the transactions topic
    (a span attribute); ``seed``: of the draws.
    """

    def __init__(self, export: SpanProcessor | SpanSink, env: Mapping[str, str],
                 sample_rate: float = 0.0, topic: str = "transactions",
                 seed: int | None = None) -> None:
        self.resource = resource(env)
        self.export: Callable[[list[TraceRecord]], None]
        if isinstance(export, SpanProcessor):
            self.processor: SpanProcessor | None = export
            self.export = SpanMaker(export, self.resource, topic)
            self.close: Callable[[], None] = export.shutdown
            """Export what is left and stop the exporter (its process, if any)."""
        else:
            self.processor = None
            self.export, self.close = export.send, export.close
        self._ids = RandomIdGenerator()
        self.sample_rate = sample_rate
        self.topic = topic
        self.malformed = 0
        """Records whose ``traceparent`` was malformed (ignored), since start."""
        self._rng = np.random.default_rng(seed)

    # --- decode: which rows are traced ---------------------------------------------------
    def carry(self, found: dict[int, Header] | None, n: int, decoded: float
              ) -> dict[int, Carried] | None:
        """The traced rows of a decoded batch of ``n`` rows (None: none).

        ``found``: row -> the headers of rows that had a ``traceparent``; ``decoded``:
        when the decode step was done (epoch s). Valid parents are kept (sampled or not:
        their verdicts continue the trace); the other rows start a trace with
        probability ``sample_rate``.
        """
        out: dict[int, Carried] = {}
        if found:
            for row, (parent, state) in found.items():
                if parent_context(parent, state) is not None:
                    out[row] = Carried(parent, state, decoded)
                else:
                    self._count_malformed(parent)
        if self.sample_rate > 0 and n:
            for row in np.flatnonzero(self._rng.random(n) < self.sample_rate).tolist():
                if row not in out:
                    out[row] = Carried(None, None, decoded)
        return out or None

    def _count_malformed(self, value: str) -> None:
        self.malformed += 1
        if self.malformed == 1:
            log.warning("a transaction record's traceparent header is not W3C Trace Context "
                        "(%d characters, expected version-traceid-parentid-flags): ignored, as "
                        "are later ones (counted, not logged)", len(value))

    # --- sink: the spans and the verdicts' headers ---------------------------------------
    def publish(self, traced: Mapping[int, Timeline], handed: float, topic: str
                ) -> tuple[dict[int, list[tuple[str, str | bytes | None]]], list[TraceRecord]]:
        """The Kafka headers of a sink batch's traced verdicts, and their spans to come.

        ``traced``: index in the sink batch -> :class:`~tracing.carry.Timeline`;
        ``handed``: when the sink got the batch (epoch s); ``topic``: the verdicts'
        topic. Returns the headers per index, and one :class:`TraceRecord` per sampled
        trace for :meth:`end` once the verdicts are handed to the producer. Only ids are
        drawn here (the SDK's ``RandomIdGenerator``) and the ``traceparent`` written (the
        SDK's propagator); the spans themselves are made by :meth:`end`'s export.
        """
        headers: dict[int, list[tuple[str, str | bytes | None]]] = {}
        pending: list[TraceRecord] = []
        ids = self._ids
        for index, t in traced.items():
            c = t.carried
            inside = (parent_context(c.traceparent, c.tracestate)
                      if c.traceparent is not None else None)
            if inside is None:  # a trace of our own, sampled (the draw at decode)
                caller = None
                trace_id, flags, state = ids.generate_trace_id(), _SAMPLED, None
                root = ids.generate_span_id()
            else:
                caller = trace.get_current_span(inside).get_span_context()
                trace_id, flags, state = caller.trace_id, caller.trace_flags, caller.trace_state
                root = 0
            sink = SpanContext(trace_id, ids.generate_span_id(), False, flags, state)
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, trace.set_span_in_context(NonRecordingSpan(sink)))
            headers[index] = [(k, v.encode("ascii")) for k, v in carrier.items()]
            if flags & _SAMPLED:  # W3C sampled flag: the parent's decision (ParentBased)
                pending.append(TraceRecord(
                    trace_id, caller.span_id if caller is not None else 0, root, sink.span_id,
                    tuple(ids.generate_span_id() for _ in _STEPS), c.tracestate, t,
                    max(handed, t.scored), 0.0, topic))
        return headers, pending

    def end(self, pending: list[TraceRecord], at: float) -> None:
        """The sink handed the verdicts to the producer at ``at`` (epoch s): export the spans."""
        if pending:
            self.export([r._replace(ended=at) for r in pending])


class TraceRecord(NamedTuple):
    """One sampled trace's ids and times: plain values, from the sink to the span export."""

    trace_id: int
    caller: int
    """The caller's span id (the ``traceparent``'s parent id); 0: a trace of our own."""
    root: int
    """Span id of our root ``process <topic>`` span (0: none, the caller's trace)."""
    sink: int
    """Span id of the ``sink`` span: the one in the verdict's ``traceparent``."""
    steps: tuple[int, ...]
    """Span ids of the step spans, in :data:`_STEPS` order."""
    tracestate: str | None
    timeline: Timeline
    handed: float
    """When the sink span starts (epoch s)."""
    ended: float
    """When the verdict was handed to the producer (epoch s)."""
    topic: str
    """The verdicts' topic."""


class SpanMaker:
    """Finished SDK spans (``ReadableSpan``) of :class:`TraceRecord` s, to a span processor.

    ``processor``: the SDK processor that exports (``BatchSpanProcessor`` with the OTLP
    exporter, or ``SimpleSpanProcessor`` over the in-memory exporter in tests);
    ``resource``: the service's (:func:`resource`); ``topic``: the transactions topic.
    Spans are built finished, skipping the SDK's live-span machinery (locks, sampler,
    attribute checks): every time is known by then.
    """

    def __init__(self, processor: SpanProcessor, resource: Resource, topic: str) -> None:
        self.processor = processor
        self.resource = resource
        self.topic = topic
        self._scope = InstrumentationScope("fraudstream.flow")

    def __call__(self, records: list[TraceRecord]) -> None:
        """Hand the spans of ``records`` to the processor."""
        on_end = self.processor.on_end
        for r in records:
            for span in self.spans(r):
                on_end(span)

    def spans(self, r: TraceRecord) -> list[ReadableSpan]:
        """The spans of one trace: the steps, ``sink``, and our root if we started it."""
        t = r.timeline
        state = TraceState.from_header([r.tracestate]) if r.tracestate else None
        flags = TraceFlags(TraceFlags.SAMPLED)

        def context(span_id: int) -> SpanContext:
            return SpanContext(r.trace_id, span_id, False, flags, state)

        first = t.fetched if t.fetched > 0 else t.carried.decoded
        made: list[ReadableSpan] = []
        if r.root:
            parent = context(r.root)
            made.append(self._span(f"process {self.topic}", parent, None, first, r.ended,
                                   SpanKind.CONSUMER))
        else:
            parent = SpanContext(r.trace_id, r.caller, True, flags, state)
        times = {"fetched": first, "decoded": t.carried.decoded, "carded": t.carded,
                 "scoring": t.scoring, "scored": t.scored}
        for (name, start, end), span_id in zip(_STEPS, r.steps, strict=True):
            attributes: dict[str, str | int] | None = None
            if name == "decode":  # where the record is (OpenTelemetry messaging conventions)
                attributes = {"messaging.destination.name": self.topic,
                              "messaging.destination.partition.id": str(t.partition),
                              "messaging.kafka.offset": t.offset}
            elif name == "score":
                attributes = {"fraud.verdict": t.verdict}
            made.append(self._span(name, context(span_id), parent, times[start], times[end],
                                   SpanKind.INTERNAL, attributes))
        made.append(self._span("sink", context(r.sink), parent, r.handed, r.ended,
                               SpanKind.PRODUCER, {"messaging.destination.name": r.topic}))
        return made

    def _span(self, name: str, context: SpanContext, parent: SpanContext | None, start: float,
              end: float, kind: SpanKind, attributes: dict[str, str | int] | None = None
              ) -> ReadableSpan:
        return ReadableSpan(name, context, parent, self.resource, attributes, kind=kind,
                            instrumentation_scope=self._scope, start_time=_ns(start),
                            end_time=_ns(max(start, end)))


class SpanSink:
    """What :class:`Tracing` hands finished traces to, besides a span processor."""

    def send(self, records: list[TraceRecord]) -> None:
        """Take the traces of one sink batch (must not block scoring for long)."""
        raise NotImplementedError

    def close(self) -> None:
        """Export what is left, then stop."""
        raise NotImplementedError


def resource(env: Mapping[str, str]) -> Resource:
    """The service's resource: ``OTEL_SERVICE_NAME`` or ``fraudstream``.

    Other resource attributes come from ``OTEL_RESOURCE_ATTRIBUTES`` (the SDK reads it).
    """
    return Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "fraudstream"})


def configure(enabled: bool, sample_rate: float, topic: str, env: Mapping[str, str]
              ) -> Tracing | None:
    """The flow's tracing from its settings (None: off), exporting over OTLP/HTTP.

    Off unless ``enabled`` (``FRAUD_TRACING=on``), and off when ``OTEL_SDK_DISABLED`` is
    ``true`` (the SDK's own switch). Starts the export process
    (:class:`tracing.export.ExportProcess`), whose exporter reads
    ``OTEL_EXPORTER_OTLP_*`` (default endpoint ``http://localhost:4318/v1/traces``).
    """
    if not enabled or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    from tracing.export import ExportProcess

    tracing = Tracing(ExportProcess(topic, env), env, sample_rate, topic)
    log.info("tracing on: W3C traceparent continued, new traces at rate %g, spans exported "
             "over OTLP/HTTP by a child process", sample_rate)
    return tracing


__all__ = ["SpanMaker", "SpanSink", "TraceRecord", "Tracing", "configure", "parent_context",
           "resource"]
