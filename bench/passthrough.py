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
from flows.decode import KeyRule, SkewRule, decode_transactions
from flows.items import CardWork, SinkBatch
from topics.admin import partition_count
from topics.contracts import Prediction
from topics.settings import KafkaSettings
from topics.validation import TransactionDecoder

_encode = msgspec.json.Encoder().encode


def _verdicts(work: CardWork) -> list[SinkBatch]:
    """A fixed verdict per decoded transaction of one poll (one sink item)."""
    txns = work.txns
    if txns is None or not len(txns):
        return []
    now_ms = int(time.time() * 1000)
    out = []
    for txn, ingest in zip(txns.values, txns.ingest_ms.tolist(), strict=True):
        verdict = _encode(Prediction(
            transaction_id=txn.transaction_id, card_id=txn.card_id, event_time=txn.event_time,
            score=0.0123, decision="approve", model_version="v1-20261122T231245",
            feature_spec_version="v1", ingest_time=ingest, scored_time=now_ms,
        ))
        out.append((txn.transaction_id.encode(), verdict))
    return [SinkBatch(out, time.time())]


def build_flow(settings: KafkaSettings, batch_max: int = 1000) -> Dataflow:
    """KafkaSource -> decode + validate -> fixed verdict -> the flow's sinks (dead letters too)."""
    flow = Dataflow("bench-passthrough")
    polls = kafka.read("transactions-in", flow, settings, "transactions", batch_size=batch_max)
    parts = partition_count(settings, settings.topic("transactions"))
    txns = decode_transactions("decode-transactions", polls, TransactionDecoder(), SkewRule(),
                               KeyRule(parts))
    kafka.write("dead-letter-out", txns.errs, settings, "dead-letter")
    verdicts = op.flat_map("verdict", op.key_rm("unkey", txns.oks), _verdicts)
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
