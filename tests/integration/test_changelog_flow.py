"""Changelogs on a broker: a store that is lost, or killed, is rebuilt and changes no score.

``FRAUD_CHANGELOG=on``: the flow scores the first half of a stream and stops; its
whole state volume is lost (the recovery directory is kept, as Bytewax's recovery
partitions live elsewhere in a cluster); it restarts on an empty one, scores a
quarter more and is killed with SIGKILL (every store then unclean); it restarts
again for the rest. Every transaction must have one verdict value, equal to the
event-time answer of offline replay.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer

from devkit.process import FlowProcess
from flowkit import Collector, flow_env, offline_scores, topic_set
from tiny_model import tiny_history
from topics.admin import ensure_topics
from topics.contracts import Transaction
from topics.producer import PRODUCER_DEFAULTS
from topics.settings import KafkaSettings
from training.simulate import SimConfig

pytestmark = pytest.mark.integration

WORLD = SimConfig(n_transactions=3_000, n_cards=150, days=12, seed=25, fraud_rate=0.02)


def _produce(settings: KafkaSettings, txns: list[Transaction]) -> None:
    ensure_topics(settings)
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    topic = settings.topic("transactions")
    for txn in txns:
        producer.produce(topic, key=txn.card_id.encode(), value=msgspec.json.encode(txn))
    assert producer.flush(30) == 0


def test_a_lost_volume_and_a_kill_9_are_restored_from_the_changelogs(
    kafka: KafkaSettings, tiny_model_dir: Path, tmp_path: Path,
) -> None:
    stream = list(tiny_history(WORLD).transactions)
    settings = topic_set(kafka, "changelog")
    half, three_quarters = len(stream) // 2, 3 * len(stream) // 4
    env = flow_env(settings, tiny_model_dir, tmp_path, FRAUD_CHANGELOG="on",
                   FRAUD_LOG_LEVEL="INFO")
    recovery, log = tmp_path / "recovery", tmp_path / "flow.log"
    collector = Collector(settings)
    collector.start()
    try:
        _produce(settings, stream[:half])
        flow = FlowProcess(env, log, recovery_dir=recovery, snapshot_seconds=1)
        collector.wait_for(half, [flow], timeout=120)
        time.sleep(2.5)  # a snapshot past the last verdict
        flow.stop()
        shutil.rmtree(tmp_path / "state")  # the state volume is lost
        _produce(settings, stream[half:three_quarters])
        flow = FlowProcess(env, log, recovery_dir=recovery, snapshot_seconds=1)
        collector.wait_for(three_quarters, [flow], timeout=120)
        time.sleep(2.5)
        flow.kill()  # every store unclean
        _produce(settings, stream[three_quarters:])
        flow = FlowProcess(env, log, recovery_dir=recovery, snapshot_seconds=1)
        collector.wait_for(len(stream), [flow], timeout=120)
        flow.stop()
    finally:
        collector.stop()
    text = log.read_text()
    assert "because it is missing" in text and "because it was not closed cleanly" in text
    outcome = collector.outcome
    assert set(outcome.verdicts) == {t.transaction_id for t in stream}
    (offline,) = offline_scores(stream, [tiny_model_dir]).values()
    for tid, copies in outcome.verdicts.items():
        assert len({msgspec.json.encode(c) for c in copies}) == 1, tid  # re-emitted unchanged
        assert abs(copies[0].score - offline[tid]) <= 1e-6, tid  # the event-time answer
