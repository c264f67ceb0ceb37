"""OpenTelemetry traces across Kafka: an authorisation's trace continued through the flow.

A transaction whose Kafka headers carry a W3C Trace Context ``traceparent``
(https://www.w3.org/TR/trace-context/) keeps its trace: the flow records a span per
step for it (decode, card, merchant, score, sink) when the trace is sampled, and its
verdict on ``predictions`` carries a ``traceparent`` (and ``tracestate``) of the same
trace. Off by default (``FRAUD_TRACING``); the exporter is the SDK's OTLP exporter,
configured by the standard ``OTEL_*`` variables.

- :mod:`tracing.carry`: what a traced transaction carries between the steps
  (plain values: recovery snapshots pickle them) and the header pick at the source.
- :mod:`tracing.spans`: the SDK side: sampling, ids, the verdict's headers, and the
  spans built from a trace's times (:class:`~tracing.spans.SpanMaker`).
- :mod:`tracing.export`: the child process that makes and exports the spans, off the
  scoring loop.
"""
