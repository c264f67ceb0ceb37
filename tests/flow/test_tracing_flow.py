"""Issue 24: a W3C traceparent is continued from a transaction to its verdict, with spans.

Real parts: the flow's card and merchant stages over real RocksDB and a real ONNX model
(:class:`stages.Stages`, the decode step's trace pick included), the sink's span and
header code (:meth:`tracing.spans.Tracing.publish`, as ``flows.kafka`` calls it), and
the OpenTelemetry SDK with its own in-memory exporter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from flows.items import SinkBatch
from flows.serving import ModelSource
from stages import Stages, sourced
from topics.contracts import Transaction
from tracing.spans import Tracing

T0 = 1_795_953_300_000
MIN = 60_000
TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
UNSAMPLED_TRACE = "11111111111111111111111111111111"
STEPS = {"decode", "card", "merchant", "score", "sink"}


def _txn(tid: str, card: str, minutes: int, merchant: str = "m-1") -> Transaction:
    return Transaction(transaction_id=tid, card_id=card, merchant_id=merchant, amount=42.0,
                       currency="EUR", event_time=T0 + minutes * MIN, channel="pos",
                       country="FR")


STREAM = [_txn(f"tx-{i}", f"card-{i % 5}", i, merchant=f"m-{i % 3}") for i in range(40)]


def _run(root: Path, model: Path, tracing: Tracing | None,
         traces: dict[str, tuple[str, str | None]] | None
         ) -> tuple[dict[str, list[tuple[str, str | bytes | None]]], list[SinkBatch]]:
    """Stream through the stages, then the sink's step: each verdict's Kafka headers."""
    source = ModelSource(model, thresholds=lambda m: m.thresholds, interval=0)
    stages = Stages(root, source, tracing=tracing)
    stages.feed(sourced(STREAM, stages.parts), traces=traces)
    batches = [o for o in stages.outputs if isinstance(o, SinkBatch)]
    headers: dict[str, list[tuple[str, str | bytes | None]]] = {}
    for batch in batches:
        if batch.traces is None or tracing is None:
            continue
        found, spans = tracing.publish(batch.traces, batch.made, "predictions")
        tracing.end(spans, batch.made + 0.001)
        for i, h in found.items():
            headers[batch.records[i][0].decode()] = h  # type: ignore[union-attr]
    return headers, batches


def _tracing(rate: float = 0.0) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing(SimpleSpanProcessor(exporter), {}, rate, seed=7), exporter


def _parts(header: list[tuple[str, str | bytes | None]]) -> list[str]:
    value = dict(header)["traceparent"]
    assert isinstance(value, bytes)
    return value.decode().split("-")


def test_a_sampled_traceparent_continues_into_the_verdict_with_a_span_per_step(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    tracing, exporter = _tracing()
    traces = {"tx-7": (f"00-{TRACE}-{PARENT}-01", "vendor=abc"),
              "tx-20": (f"00-{UNSAMPLED_TRACE}-{PARENT}-00", None)}
    headers, batches = _run(tmp_path, tiny_model_dir, tracing, traces)
    assert sum(len(b.records) for b in batches) == len(STREAM)  # every verdict, as before
    assert set(headers) == {"tx-7", "tx-20"}  # only the traced ones get headers

    version, trace_id, span_id, flags = _parts(headers["tx-7"])
    assert (version, trace_id, flags) == ("00", TRACE, "01")
    assert span_id != PARENT and len(span_id) == 16
    assert dict(headers["tx-7"])["tracestate"] == b"vendor=abc"  # carried on unchanged

    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {int(TRACE, 16)}  # the unsampled: none
    by_name = {s.name: s for s in spans}
    assert set(by_name) == STEPS and len(spans) == len(STEPS)
    for name in STEPS:  # each step a child of the caller's span, in time order
        parent = by_name[name].parent
        assert parent is not None and parent.span_id == int(PARENT, 16) and parent.is_remote
        assert by_name[name].start_time <= by_name[name].end_time  # type: ignore[operator]
        assert by_name[name].context.trace_state.get("vendor") == "abc"
    order = ["decode", "card", "merchant", "score", "sink"]
    starts = [by_name[n].start_time for n in order]
    assert starts == sorted(starts)  # type: ignore[type-var]
    sink = by_name["sink"]
    assert sink.kind == SpanKind.PRODUCER and f"{sink.context.span_id:016x}" == span_id
    assert by_name["score"].attributes["fraud.verdict"] == "fresh"  # type: ignore[index]
    decode = by_name["decode"].attributes or {}
    tx7 = next(s for s in sourced(STREAM, 4) if s.value.transaction_id == "tx-7")
    assert (decode["messaging.kafka.offset"], decode["messaging.destination.partition.id"]) == (
        tx7.offset, str(tx7.partition))  # where the record is, not whose
    # no card, merchant or transaction id in any attribute (PCI DSS)
    values = {str(v) for s in spans for v in (s.attributes or {}).values()}
    assert not any(("card-" in v or "tx-" in v or "m-" in v) for v in values)


def test_an_unsampled_traceparent_still_propagates_without_spans(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    tracing, exporter = _tracing()
    traces = {"tx-3": (f"00-{UNSAMPLED_TRACE}-{PARENT}-00", None)}
    headers, _ = _run(tmp_path, tiny_model_dir, tracing, traces)
    _, trace_id, span_id, flags = _parts(headers["tx-3"])
    assert (trace_id, flags) == (UNSAMPLED_TRACE, "00") and span_id != PARENT
    assert "tracestate" not in dict(headers["tx-3"])
    assert exporter.get_finished_spans() == ()


def test_tracing_off_adds_no_headers_and_records_no_spans(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    traces = {"tx-7": (f"00-{TRACE}-{PARENT}-01", None)}
    headers, batches = _run(tmp_path, tiny_model_dir, None, traces)
    assert headers == {}
    assert sum(len(b.records) for b in batches) == len(STREAM)
    assert all(b.traces is None for b in batches)


def test_a_malformed_traceparent_is_ignored_and_counted(
        tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracing, exporter = _tracing()
    bad = {"tx-1": ("00-zzzz-b7ad6b7169203331-01", None),
           "tx-2": (f"00-{'0' * 32}-{PARENT}-01", None)}  # all-zero trace id: invalid
    headers, batches = _run(tmp_path, tiny_model_dir, tracing, bad)
    assert headers == {} and exporter.get_finished_spans() == ()
    assert tracing.malformed == 2
    assert sum("traceparent" in r.message for r in caplog.records) == 1  # logged once
    assert sum(len(b.records) for b in batches) == len(STREAM)  # still scored


def test_new_traces_start_at_the_sample_rate_for_transactions_without_one(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    tracing, exporter = _tracing(rate=1.0)
    headers, _ = _run(tmp_path, tiny_model_dir, tracing, None)
    assert set(headers) == {t.transaction_id for t in STREAM}
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name == "process transactions"]
    assert len(roots) == len(STREAM) and all(s.parent is None for s in roots)
    assert all(r.kind == SpanKind.CONSUMER for r in roots)
    under = {r.context.span_id: set() for r in roots}  # type: ignore[var-annotated]
    for s in spans:
        if s.parent is not None:
            under[s.parent.span_id].add(s.name)
    assert all(names == STEPS for names in under.values())  # the five steps under each root
    assert len({s.context.trace_id for s in roots}) == len(STREAM)  # a trace each
    assert {_parts(h)[1] for h in headers.values()} == {
        f"{s.context.trace_id:032x}" for s in roots}
