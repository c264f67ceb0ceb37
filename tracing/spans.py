"""The flow's spans and the verdict's trace headers, through the OpenTelemetry SDK.

The OpenTelemetry SDK (``opentelemetry-sdk``) does the tracing: W3C Trace Context
parsing and injection (``TraceContextTextMapPropagator``), sampling
(``ParentBased``), span ids, batching and export (``BatchSpanProcessor`` with the
OTLP/HTTP exporter, ``opentelemetry-exporter-otlp-proto-http``: lighter than the
gRPC one, no ``grpcio``). It is the reference implementation every tracing backend
reads, and it reads the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``..._HEADERS``, ``OTEL_BSP_*``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``; ``OTEL_SDK_DISABLED=true``
turns tracing off). The flow keeps only what the SDK cannot know: which records
are traced, and when each step handled them.

**Sampling.** A record with a valid ``traceparent`` follows its parent's sampled
flag (W3C Trace Context: ``ParentBased``): flag ``01``, its spans are recorded;
``00``, none are, but its verdict still carries the trace (a new span id, flag
``00``), so the caller's trace continues downstream. A record without one (or with
a malformed one: ignored, as W3C Trace Context requires, counted in
:attr:`Tracing.malformed` and logged once) starts a new trace with probability
``FRAUD_TRACE_SAMPLE_RATE`` (default 0: never), drawn once per batch with numpy
(the SDK's ``TraceIdRatioBased`` needs a trace id per record first: a per-row cost
on every transaction); ``OTEL_TRACES_SAMPLER`` is therefore not read.

**Spans** (one trace per authorisation, what a user viewing it expects): under the
caller's span (the one whose ``traceparent`` came in), one span per step, in time
order: ``decode`` (source hand-over to decoded), ``card`` (the card stage),
``merchant`` (the wait in the merchant stage's event-time buffer), ``score``
(merchant state, models, rules, render) and ``sink`` (kind PRODUCER, handing the
verdict to the producer). A trace the flow starts itself has a root
``process transactions`` span (kind CONSUMER) over them all. Five spans, not six,
for a continued trace: each costs (see the README's tracing section). The verdict's
headers carry the ``sink`` span's context, as OpenTelemetry's messaging conventions
inject the producing span's. Spans are made at the sink with the times noted on the
way (:mod:`tracing.carry`), so nothing of the SDK is kept in recovery snapshots. The
root and ``sink`` spans go through the SDK's tracer (sampler, ids, processor); the
four step spans, whose times are all known by then, are handed to the same span
processor as the SDK's finished-span type (``ReadableSpan``), skipping the live-span
machinery (locks, sampler, attribute checks: about 25 µs a span).

**Attributes** are few (each costs) and carry no card data (PCI DSS): topic, partition
and offset of the transaction record (OpenTelemetry messaging conventions), the
verdict's topic, the verdict kind (fresh/repeat/replay); never a card id, PAN,
merchant id or transaction id (the trace id already finds the authorisation, and a
transaction id in a tracing backend would be one more store of payment data to scope).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Span, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tracing.carry import TRACEPARENT, TRACESTATE, Carried, Header, Timeline

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
#: The steps' spans made from the timeline: name, and the Timeline times (s) they run between.
_STEPS = (("decode", "fetched", "decoded"), ("card", "decoded", "carded"),
          ("merchant", "carded", "scoring"), ("score", "scoring", "scored"))


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def parent_context(traceparent: str, tracestate: str | None) -> Context | None:
    """The remote parent of a W3C ``traceparent`` (with ``tracestate``), None if malformed.

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
    """The flow's tracer: picks the traced rows at decode, records spans at the sink.

    ``processor``: the SDK span processor that exports (``BatchSpanProcessor`` in the
    flow, ``SimpleSpanProcessor`` over the in-memory exporter in tests); ``env``: for
    the service name (:func:`provider`); ``sample_rate``: the probability (0-1) that a
    record without a valid ``traceparent`` starts a trace; ``topic``: the transactions
    topic (a span attribute); ``seed``: of the draws.
    """

    def __init__(self, processor: SpanProcessor, env: Mapping[str, str],
                 sample_rate: float = 0.0, topic: str = "transactions",
                 seed: int | None = None) -> None:
        self.provider = provider(processor, env)
        self.processor = processor
        self.tracer = self.provider.get_tracer("fraudstream.flow")
        self._scope = InstrumentationScope("fraudstream.flow")
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
                ) -> tuple[dict[int, list[tuple[str, str | bytes | None]]], list[Span]]:
        """Start the spans of a sink batch's traced verdicts; their Kafka headers.

        ``traced``: index in the sink batch -> :class:`~tracing.carry.Timeline`;
        ``handed``: when the sink got the batch (epoch s); ``topic``: the verdicts'
        topic. Returns the headers per index, and the open spans (``sink``, and the
        root of a trace the flow started) for :meth:`end` once the verdicts are handed
        to the producer.
        """
        tracer = self.tracer
        headers: dict[int, list[tuple[str, str | bytes | None]]] = {}
        open_spans: list[Span] = []
        for index, t in traced.items():
            c = t.carried
            first = t.fetched if t.fetched > 0 else c.decoded
            inside = (parent_context(c.traceparent, c.tracestate)
                      if c.traceparent is not None else None)
            if inside is None:  # a trace of our own: its root spans the flow
                root = tracer.start_span(f"process {self.topic}", Context(), SpanKind.CONSUMER,
                                         start_time=_ns(first))
                open_spans.append(root)
                inside = trace.set_span_in_context(root)
            sink = tracer.start_span(  # the SDK's sampler decides (the parent's flag)
                "sink", inside, SpanKind.PRODUCER, start_time=_ns(max(handed, t.scored)),
                attributes={"messaging.destination.name": topic})
            if sink.is_recording():
                self._steps(trace.get_current_span(inside).get_span_context(), t, first)
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, trace.set_span_in_context(sink))
            headers[index] = [(k, v.encode("ascii")) for k, v in carrier.items()]
            open_spans.insert(0, sink)  # ended before the roots
        return headers, open_spans

    def _steps(self, parent: SpanContext, t: Timeline, first: float) -> None:
        """The four step spans under ``parent``, finished: straight to the processor."""
        times = {"fetched": first, "decoded": t.carried.decoded, "carded": t.carded,
                 "scoring": t.scoring, "scored": t.scored}
        resource, on_end = self.provider.resource, self.processor.on_end
        for name, start, end in _STEPS:
            a, b = times[start], times[end]
            context = SpanContext(parent.trace_id, self._ids.generate_span_id(), False,
                                  parent.trace_flags, parent.trace_state)
            attributes: dict[str, str | int] | None = None
            if name == "decode":  # where the record is (OpenTelemetry messaging conventions)
                attributes = {"messaging.destination.name": self.topic,
                              "messaging.destination.partition.id": str(t.partition),
                              "messaging.kafka.offset": t.offset}
            elif name == "score":
                attributes = {"fraud.verdict": t.verdict}
            on_end(ReadableSpan(
                name, context, parent, resource, attributes,
                instrumentation_scope=self._scope, start_time=_ns(a),
                end_time=_ns(max(a, b))))

    @staticmethod
    def end(spans: list[Span], at: float) -> None:
        """End the spans :meth:`publish` opened (``at``: epoch s)."""
        for span in spans:
            span.end(end_time=_ns(at))


def provider(processor: SpanProcessor, env: Mapping[str, str]) -> TracerProvider:
    """A tracer provider: parent-based sampling, ``processor`` for export.

    The service name is ``OTEL_SERVICE_NAME`` or ``fraudstream``; other resource
    attributes come from ``OTEL_RESOURCE_ATTRIBUTES`` (the SDK reads it).
    """
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "fraudstream"})
    made = TracerProvider(sampler=ParentBased(ALWAYS_ON), resource=resource)
    made.add_span_processor(processor)
    return made


def configure(enabled: bool, sample_rate: float, topic: str, env: Mapping[str, str]
              ) -> Tracing | None:
    """The flow's tracing from its settings (None: off), exporting over OTLP/HTTP.

    Off unless ``enabled`` (``FRAUD_TRACING=on``), and off when ``OTEL_SDK_DISABLED`` is
    ``true`` (the SDK's own switch). The exporter reads ``OTEL_EXPORTER_OTLP_*``
    (default endpoint ``http://localhost:4318/v1/traces``).
    """
    if not enabled or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter: SpanExporter = OTLPSpanExporter()
    tracing = Tracing(BatchSpanProcessor(exporter), env, sample_rate, topic)
    log.info("tracing on: W3C traceparent continued, new traces at rate %g, spans exported "
             "over OTLP/HTTP", sample_rate)
    return tracing


__all__ = ["Tracing", "configure", "parent_context", "provider"]
