"""Issue 24 acceptance: the real flow continues a transaction's W3C trace into its verdict.

The scoring flow (``python -m bytewax.run flows.score``, ``FRAUD_TRACING=on``) on the
session's broker, its spans exported by the OpenTelemetry SDK's OTLP/HTTP exporter
(configured by ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) to a receiver in this test that
decodes the OTLP protobuf requests.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from devkit.process import FlowProcess
from flowkit import CONSUMER, PARTITIONS, flow_env, topic_set, wait_until
from topics.admin import ensure_topics
from topics.contracts import Transaction
from topics.producer import PRODUCER_DEFAULTS
from topics.settings import KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = 1_795_953_300_000
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UNSAMPLED = "5bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
N = 60


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: every span it is sent, as (trace, span, parent, name)."""

    spans: ClassVar[list[tuple[str, str, str, str]]] = []

    def do_POST(self) -> None:  # noqa: N802
        request = ExportTraceServiceRequest.FromString(
            self.rfile.read(int(self.headers["Content-Length"])))
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend((s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                   s.name) for s in scope.spans)
        body = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _produce(settings: KafkaSettings) -> None:
    ensure_topics(settings)
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    for i in range(N):
        txn = Transaction(transaction_id=f"tx-{i}", card_id=f"card-{i % 7}",
                          merchant_id=f"m-{i % 3}", amount=20.0 + i, currency="EUR",
                          event_time=T0 + i * 60_000, channel="pos", country="FR")
        headers = {7: [("traceparent", f"00-{TRACE}-{PARENT}-01"),
                       ("tracestate", "congo=t61rcWkgMzE")],
                   20: [("traceparent", f"00-{UNSAMPLED}-{PARENT}-00")],
                   30: [("traceparent", "00-not-a-trace-01")]}.get(i)
        producer.produce(settings.topic("transactions"), key=txn.card_id.encode(),
                         value=msgspec.json.encode(txn), headers=headers)
    assert producer.flush(30) == 0


def test_a_traceparent_is_continued_into_the_verdict_with_a_span_per_step(
        kafka: KafkaSettings, tiny_model_dir: Path, tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = topic_set(kafka, "tracing")
    _produce(settings)
    env = flow_env(settings, tiny_model_dir, tmp_path, FRAUD_TRACING="on",
                   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=(
                       f"http://127.0.0.1:{server.server_address[1]}/v1/traces"),
                   OTEL_BSP_SCHEDULE_DELAY="100")
    consumer = Consumer(settings.client_config(**CONSUMER))
    consumer.assign([TopicPartition(settings.topic("predictions"), p, 0)
                     for p in range(PARTITIONS)])
    headers: dict[str, list[tuple[str, bytes]]] = {}
    flow = FlowProcess(env, tmp_path / "flow.log")
    try:
        def read() -> None:
            for msg in consumer.consume(100, 0.1):
                if msg.error() is None and msg.key() is not None:
                    headers[msg.key().decode()] = msg.headers() or []

        wait_until(lambda: len(headers) >= N, [flow], lambda: f"{N} verdicts ({len(headers)})",
                   180, tick=read)
        wait_until(lambda: sum(s[0] == TRACE for s in _Receiver.spans) >= 5, [flow],
                   "the sampled transaction's five spans", 60, tick=lambda: time.sleep(0.1))
    finally:
        flow.stop()
        consumer.close()
        server.shutdown()

    traced = {k: dict(v) for k, v in headers.items() if v}
    assert set(traced) == {"tx-7", "tx-20"}  # the malformed one and the rest: none
    _, trace_id, span_id, flags = traced["tx-7"]["traceparent"].decode().split("-")
    assert (trace_id, flags) == (TRACE, "01") and span_id != PARENT
    assert traced["tx-7"]["tracestate"] == b"congo=t61rcWkgMzE"
    _, trace_id, span_id20, flags = traced["tx-20"]["traceparent"].decode().split("-")
    assert (trace_id, flags) == (UNSAMPLED, "00") and span_id20 != PARENT

    ours = [s for s in _Receiver.spans if s[0] == TRACE]
    assert sorted(name for *_, name in ours) == ["card", "decode", "merchant", "score", "sink"]
    assert all(parent == PARENT for _, _, parent, _ in ours)  # under the caller's span
    assert [span for _, span, _, name in ours if name == "sink"] == [span_id]  # the verdict's
    assert not [s for s in _Receiver.spans if s[0] == UNSAMPLED]  # flag 00: no spans
