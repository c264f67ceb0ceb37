"""Pass-through dataflow, the pipe limit: ``python -m bytewax.run bench.passthrough``.

Same topics, source, decode + validate (:mod:`flows.decode`) and sinks as
:mod:`flows.score`, but no state and no model: every valid transaction becomes
a verdict-sized :class:`~topics.contracts.Prediction` with fixed score,
decision and versions (its own ids, event time and Kafka timestamp), so the
bytes written per transaction match the real flow's approve verdicts.

Reads the same environment as the scoring flow (``KAFKA_BOOTSTRAP_SERVERS``,
``FRAUD_TOPIC_*``, ``FRAUD_BATCH_MAX``); ``flow`` is built on first access.
"""

from __future__ import annotations

import os
import sys
import time

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow

from flows import kafka
from flows.decode import Sourced, decode
from flows.kafka import SinkRecord
from topics.contracts import Prediction, Transaction
from topics.settings import KafkaSettings
from topics.validation import TransactionDecoder

_encode = msgspec.json.Encoder().encode


def _verdicts(batch: list[Sourced[Transaction]]) -> list[SinkRecord]:
    now_ms = int(time.time() * 1000)
    out = []
    for item in batch:
        txn = item.value
        verdict = _encode(Prediction(
            transaction_id=txn.transaction_id, card_id=txn.card_id, event_time=txn.event_time,
            score=0.0123, decision="approve", model_version="v1-20261122T231245",
            feature_spec_version="v1", ingest_time=item.ingest_ms, scored_time=now_ms,
        ))
        out.append(SinkRecord(txn.transaction_id.encode(), verdict))
    return out


def build_flow(settings: KafkaSettings, batch_max: int = 1000) -> Dataflow:
    """KafkaSource -> decode + validate -> fixed verdict -> the flow's sinks (dead letters too)."""
    flow = Dataflow("bench-passthrough")
    msgs = kafka.read("transactions-in", flow, settings, "transactions", batch_size=batch_max)
    txns = decode("decode-transactions", msgs, TransactionDecoder())
    kafka.write("dead-letter-out", txns.errs, settings, "dead-letter")
    verdicts = op.flat_map_batch("verdict", txns.oks, _verdicts)
    kafka.write("predictions-out", verdicts, settings, "predictions")
    return flow


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        settings = KafkaSettings.from_env()
        if settings.bootstrap_servers is None:
            print("bench.passthrough: KAFKA_BOOTSTRAP_SERVERS is not set", file=sys.stderr)
            raise SystemExit(2)
        return build_flow(settings, int(os.environ.get("FRAUD_BATCH_MAX", "1000")))
    raise AttributeError(name)
