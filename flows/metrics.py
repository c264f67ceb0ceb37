"""Prometheus metrics of the scoring flow, declared once. Labels are bounded: never ids.

Served by :func:`serve` on ``FRAUD_METRICS_PORT`` (the next free port for a second
process on the same host). Consumer lag
is Bytewax's own ``bytewax_kafka_consumer_lag`` gauge (per topic partition),
fed from librdkafka statistics.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

log = logging.getLogger(__name__)

TRANSACTIONS_IN = Counter(
    "fraud_transactions_in_total",
    "Transactions scored for the first time (replays are fraud_replayed_verdicts_total).",
)
VERDICTS = Counter(
    "fraud_verdicts_total", "Verdicts produced, by decision and model version.",
    ["decision", "model_version"],
)
REPLAYED = Counter(
    "fraud_replayed_verdicts_total",
    "Verdicts re-emitted from the state store for offsets replayed after a recovery.",
)
REPLAY_SKIPPED = Counter(
    "fraud_replay_skipped_total",
    "Replayed offsets with no stored verdict (dead-lettered before, or past output retention).",
)
DEAD_LETTERS = Counter(
    "fraud_dead_letters_total", "Messages sent to the dead-letter topic, by error class.",
    ["error_class"],
)
LABELS = Counter(
    "fraud_labels_total", "Label events received (repeats are ignored by the store).",
    ["is_fraud"],
)
MISPARTITIONED = Counter(
    "fraud_mispartitioned_transactions_total",
    "Sampled transactions (1 in 64) not on their card's murmur2 partition: a producer "
    "uses another partitioner, so labels miss their card's merchant state.",
)
BATCH_SIZE = Histogram(
    "fraud_scoring_batch_size", "Transactions per scoring batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
BATCH_SECONDS = Histogram(
    "fraud_scoring_batch_seconds", "Time to compute features, score and decide one batch.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
LATENCY_SECONDS = Histogram(
    "fraud_end_to_end_latency_seconds",
    "From the transaction's Kafka timestamp (ingest) to its verdict being scored.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
MODEL_INFO = Info("fraud_model", "The serving model.")
MODEL_RELOADS = Counter(
    "fraud_model_reloads_total", "Model files found changed: loaded, or refused (old one kept).",
    ["role", "outcome"],
)
SHADOW_AGREEMENT = Counter(
    "fraud_shadow_decisions_total", "Verdicts also scored by the shadow model, by agreement.",
    ["agree"],
)
STATE_BYTES = Gauge(
    "fraud_state_disk_bytes", "Approximate RocksDB size per input partition.", ["partition"]
)


def serve(port: int, attempts: int = 16) -> int | None:
    """Start the metrics endpoint on ``port`` or the next free one; return it (None: off).

    The next free port serves a second process on the same host.
    """
    if port == 0:
        return None
    for candidate in range(port, port + attempts):
        try:
            start_http_server(candidate)
        except OSError:
            continue
        log.info("metrics on http://0.0.0.0:%d/metrics", candidate)
        return candidate
    log.warning("metrics endpoint not started: ports %d-%d are busy", port, port + attempts - 1)
    return None
