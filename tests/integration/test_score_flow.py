"""The real scoring flow (``python -m bytewax.run flows.score``) on the embedded broker.

One simulated stream of 20,000 transactions with invalid messages mixed in is
scored three ways: a fault-free run, a run killed with SIGKILL at random points
and resumed from recovery, and a two-process cluster. Each run's verdicts must
equal offline replay through the same ONNX file, replaying merchants in the
order that run's merchant stage scored them (read back from its state), and a
crash must change no verdict already published.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer

from devkit.broker import free_port
from devkit.process import FlowProcess
from flowkit import (
    Collector,
    Outcome,
    flow_env,
    offline_scores,
    topic_set,
)
from tiny_model import tiny_history
from topics.admin import ensure_topics
from topics.contracts import Label
from topics.producer import PRODUCER_DEFAULTS
from topics.settings import KafkaSettings
from training.history import History
from training.simulate import SimConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = SimConfig(n_transactions=20_000, n_cards=500, days=30, seed=31, fraud_rate=0.02)
INVALID_EVERY = 500


@pytest.fixture(scope="module")
def history() -> History:
    return tiny_history(WORLD)


def _produce(settings: KafkaSettings, history: History) -> int:
    """The stream, keyed by card, with an invalid message every 500; returns how many."""
    ensure_topics(settings)
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    encode = msgspec.json.encode
    invalid = 0
    for i, txn in enumerate(history.transactions, 1):
        producer.produce(settings.topic("transactions"), key=txn.card_id.encode(),
                         value=encode(txn))
        if i % INVALID_EVERY == 0:
            producer.produce(settings.topic("transactions"), key=txn.card_id.encode(),
                             value=b'{"transaction_id": "broken-%d"}' % i)
            invalid += 1
        producer.poll(0)
    # Labels known after the stream's end: applied (and deduplicated) by the flow, but
    # no transaction may count them, whatever order the two topics are read in.
    after = max(t.event_time for t in history.transactions) + 3_600_000
    for txn in history.transactions[:200]:
        producer.produce(settings.topic("labels"), key=txn.transaction_id.encode(),
                         value=encode(Label(transaction_id=txn.transaction_id,
                                            card_id=txn.card_id, merchant_id=txn.merchant_id,
                                            is_fraud=True, label_time=after)))
    assert producer.flush(30) == 0
    return invalid


def offline(history: History, model_dir: Path) -> dict[str, float]:
    """The event-time answer: offline replay (what ``just score-file`` and training see)."""
    (scores,) = offline_scores(history.transactions, [model_dir]).values()
    return scores


@pytest.fixture(scope="module")
def fault_free(kafka: KafkaSettings, history: History, tiny_model_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Outcome, Path]:
    settings = topic_set(kafka, "fault-free")
    invalid = _produce(settings, history)
    work = tmp_path_factory.mktemp("fault-free")
    collector = Collector(settings)
    collector.start()
    flow = FlowProcess(flow_env(settings, tiny_model_dir, work), work / "flow.log",
                       recovery_dir=work / "recovery")
    try:
        collector.wait_for(len(history), [flow], n_dead=invalid)
    finally:
        flow.stop()
        collector.stop()
    return collector.outcome, work / "state"


def test_one_verdict_per_transaction_equal_to_offline_scoring(
    fault_free: tuple[Outcome, Path], history: History, tiny_model_dir: Path,
    record_property: pytest.RecordProperty,
) -> None:
    fault_free, _ = fault_free  # type: ignore[misc, assignment]
    ids = {t.transaction_id for t in history.transactions}
    assert set(fault_free.verdicts) == ids
    assert fault_free.duplicates == 0
    assert len(fault_free.dead_letters) == len(history) // INVALID_EVERY
    assert {d.error_class for d in fault_free.dead_letters} == {"missing_field"}

    # This world packs 30 days into 20,000 transactions read as a backlog: card partitions
    # are read days of event time apart, and the merchant stage still gives the event-time
    # answer (its watermark holds a transaction until every input has passed its hour - 2)
    offline_ = offline(history, tiny_model_dir)
    streamed = fault_free.scores()
    differ = [t for t in ids if abs(streamed[t] - offline_[t]) > 1e-6]
    record_property("differ_from_event_time", len(differ))
    assert not differ, f"{len(differ)} of {len(ids)} scores differ from the event-time answer"


def test_kill_9_at_random_points_loses_no_verdict_and_changes_no_score(
    kafka: KafkaSettings, history: History, tiny_model_dir: Path,
    fault_free: tuple[Outcome, Path], tmp_path: Path, record_property: pytest.RecordProperty,
) -> None:
    settings = topic_set(kafka, "recovery")
    invalid = _produce(settings, history)
    collector = Collector(settings)
    collector.start()
    # Paced (at most 32 records per partition every 20 ms) so that the kills land while the
    # backlog is being scored: a fast flow scored all of it before its first kill, and a
    # snapshot after the last verdict left nothing to recover (no re-emission to see).
    env = flow_env(settings, tiny_model_dir, tmp_path, FRAUD_BATCH_MAX="32",
                   FRAUD_INPUT_LINGER_MS="20")
    kill_points = sorted(random.Random(7).sample(range(1_000, len(history) - 1_000), 3))
    killed_at = []
    try:
        for point in kill_points:
            flow = FlowProcess(env, tmp_path / "flow.log", recovery_dir=tmp_path / "recovery",
                               snapshot_seconds=1)
            # Each run makes progress of its own before it dies, wherever the last one got
            # (at most to the end: a fast machine may have scored nearly all before a kill).
            collector.wait_for(min(len(history), max(point, len(collector.outcome.verdicts)
                                                     + 500)), [flow])
            flow.kill()
            killed_at.append(len(collector.outcome.verdicts))
        flow = FlowProcess(env, tmp_path / "flow.log", recovery_dir=tmp_path / "recovery",
                           snapshot_seconds=1)
        collector.wait_for(len(history), [flow], n_dead=invalid)
        time.sleep(1)  # let re-emitted duplicates of the last epoch arrive too
        flow.stop()
    finally:
        collector.stop()
    outcome = collector.outcome
    assert set(outcome.verdicts) == set(fault_free[0].verdicts)  # zero missing
    expected = offline(history, tiny_model_dir)
    for tid, copies in outcome.verdicts.items():
        assert len({msgspec.json.encode(c) for c in copies}) == 1  # a crash changed none
        assert abs(copies[0].score - expected[tid]) <= 1e-6, tid  # equal to offline replay
    assert outcome.duplicates > 0, "a resumed run re-emits its last epoch: recovery did not run"
    record_property("killed_at", killed_at)
    record_property("duplicates", outcome.duplicates)
    print(f"\nkilled at {killed_at} verdicts; {outcome.duplicates} duplicate verdicts re-emitted")


def test_two_process_cluster_gives_the_same_verdicts(
    kafka: KafkaSettings, history: History, tiny_model_dir: Path,
    fault_free: tuple[Outcome, Path], tmp_path: Path,
) -> None:
    settings = topic_set(kafka, "cluster")
    invalid = _produce(settings, history)
    collector = Collector(settings)
    collector.start()
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    flows = [FlowProcess(flow_env(settings, tiny_model_dir, tmp_path / f"p{i}"),
                         tmp_path / f"flow-{i}.log", process_id=i, addresses=addresses)
             for i in range(2)]
    try:
        collector.wait_for(len(history), flows, n_dead=invalid)
    finally:
        for flow in flows:
            flow.stop()
        collector.stop()
    expected = offline(history, tiny_model_dir)
    got = collector.outcome.scores()
    assert set(got) == set(expected)
    assert max(abs(got[t] - expected[t]) for t in got) <= 1e-6
    assert collector.outcome.duplicates == 0


def test_a_recovery_dir_of_another_routing_is_refused_with_the_remedy(
    kafka: KafkaSettings, fault_free: tuple[Outcome, Path], tiny_model_dir: Path,
) -> None:
    """Issue 25: shard keys are Bytewax state keys; a flow on the other table would lose them."""
    from flows.routing import recovery_routing

    work = fault_free[1].parent
    assert recovery_routing(work / "recovery") == {"v2"}  # the real snapshots' keys
    settings = topic_set(kafka, "fault-free")
    flow = FlowProcess(flow_env(settings, tiny_model_dir, work, FRAUD_ROUTING="v1"),
                       work / "refused.log", recovery_dir=work / "recovery")
    assert flow.proc.wait(60) == 2
    said = flow.log_tail()
    assert "routing v2" in said and "FRAUD_ROUTING=v2" in said, said
