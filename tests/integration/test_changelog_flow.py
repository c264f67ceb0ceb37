"""Changelogs on a broker: a store that is lost, or killed, is rebuilt and changes no score.

``FRAUD_CHANGELOG=on``: the flow scores the first half of a stream and stops; its
whole state volume is lost (the recovery directory is kept, as Bytewax's recovery
partitions live elsewhere in a cluster); it restarts on an empty one, scores a
quarter more and is killed with SIGKILL (every store then unclean); it restarts
again for the rest. Every transaction must have one verdict value, equal to the
event-time answer of offline replay.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
    assert "because it is missing" in text
    assert "not closed cleanly; kept it" in text  # killed with its files: kept, caught up
    outcome = collector.outcome
    assert set(outcome.verdicts) == {t.transaction_id for t in stream}
    (offline,) = offline_scores(stream, [tiny_model_dir]).values()
    for tid, copies in outcome.verdicts.items():
        assert len({msgspec.json.encode(c) for c in copies}) == 1, tid  # re-emitted unchanged
        assert abs(copies[0].score - offline[tid]) <= 1e-6, tid  # the event-time answer


def test_a_shard_count_change_is_refused_then_rebuilt_from_the_topics(
    kafka: KafkaSettings, tiny_model_dir: Path, tmp_path: Path,
) -> None:
    """README, "Changing the shard counts": refused at start, then the documented rebuild."""
    stream = list(tiny_history(SimConfig(n_transactions=1_200, n_cards=80, days=10, seed=27,
                                         fraud_rate=0.03)).transactions)
    settings = topic_set(kafka, "reshard")
    env = flow_env(settings, tiny_model_dir, tmp_path, FRAUD_CHANGELOG="on")
    recovery, log = tmp_path / "recovery", tmp_path / "flow.log"
    resharded = {**env, "FRAUD_CARD_SHARDS": "16", "FRAUD_MERCHANT_SHARDS": "4"}
    collector = Collector(settings)
    collector.start()
    try:
        _produce(settings, stream[:600])
        flow = FlowProcess(env, log, recovery_dir=recovery, snapshot_seconds=1)
        collector.wait_for(600, [flow], timeout=120)
        time.sleep(2.5)
        flow.stop()
        refused = FlowProcess(resharded, tmp_path / "refused.log", recovery_dir=recovery)
        assert refused.proc.wait(120) == 2  # the state volume was made with 8 and 8
        assert "shards cannot be re-split in place" in refused.log_tail()
        shutil.rmtree(tmp_path / "state")
        shutil.rmtree(recovery)
        refused = FlowProcess(resharded, tmp_path / "refused2.log", recovery_dir=recovery)
        assert refused.proc.wait(120) == 2  # and so were the changelog topics
        assert ("has 8 partitions, this run has 16 cards shards: FRAUD_CARD_SHARDS changed"
                in refused.log_tail())
        # the procedure: stop, delete the changelog topics and both volumes, start
        dry = subprocess.run([sys.executable, "-m", "changelog", "delete"], capture_output=True,
                             text=True, env={**os.environ, **env}, timeout=60)
        assert dry.returncode == 2 and "add --yes" in dry.stderr
        done = subprocess.run([sys.executable, "-m", "changelog", "delete", "--yes"],
                              capture_output=True, text=True, env={**os.environ, **env},
                              timeout=60)
        assert done.returncode == 0 and "cards-changelog" in done.stdout, done.stderr
        shutil.rmtree(tmp_path / "state")
        shutil.rmtree(recovery)
        _produce(settings, stream[600:])
        flow = FlowProcess(resharded, log, recovery_dir=recovery, snapshot_seconds=1)
        collector.wait_for(len(stream), [flow], timeout=120)
        flow.stop()
    finally:
        collector.stop()
    outcome = collector.outcome
    assert set(outcome.verdicts) == {t.transaction_id for t in stream}
    (offline,) = offline_scores(stream, [tiny_model_dir]).values()
    for tid, copies in outcome.verdicts.items():  # the rebuild scored the first half again:
        assert len({msgspec.json.encode(msgspec.structs.replace(c, scored_time=0))  # when
                    for c in copies}) == 1, tid  # differs, nothing else
        assert abs(copies[0].score - offline[tid]) <= 1e-6, tid
