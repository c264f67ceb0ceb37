"""Governance on the embedded broker and the real flow: gates, promote, rollback, history, retrain.

- a gate-rejected version never moves ``models/current``; the running flow keeps the champion;
- ``promote`` then ``rollback`` move ``models/current`` atomically and the running flow
  hot-reloads each time: every verdict is the offline score of the version it names, and
  by scoring time the versions go champion -> promoted -> champion, switching once each;
- ``just history`` over topics filled like the demo fills them gives a history whose
  replayed features equal the original's bit for bit, and ``just retrain`` publishes a model
  from it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
from confluent_kafka import Producer

from devkit.process import FlowProcess
from export.cli import main as cli
from export.gates import GateConfig
from export.lifecycle import Lifecycle
from export.model import load_model
from export.release import release
from flowkit import Collector, flow_env, offline_scores, topic_set, wait_until
from tiny_model import TINY_WORLD, tiny_history, train_tiny
from topics.admin import ensure_topics
from topics.producer import PRODUCER_DEFAULTS, produce_waiting
from topics.settings import KafkaSettings
from training.features import point_in_time_features
from training.history import History, events, load_history
from training.simulate import SimConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = SimConfig(n_transactions=3_000, n_cards=150, days=20, seed=43, fraud_rate=0.03)
LOOSE = ["--gate", "max_drop_average_precision=1", "--gate", "max_drop_auc_roc=1",
         "--gate", "max_drop_card_precision=1"]
TRICKLE = 5


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A registry: v-a champion, v-b a candidate (two real models from two tiny worlds)."""
    root = tmp_path_factory.mktemp("gov")
    a = train_tiny(root / "run-a")
    b = train_tiny(root / "run-b", tiny_history(dataclasses.replace(TINY_WORLD, seed=6)))
    loose = GateConfig.load(None, LOOSE[1::2])
    release(a, root / "models", version="v-a", gates=loose)
    assert release(b, root / "models", version="v-b", gates=loose,
                   make_current=False).state == "candidate"
    return root / "models", "v-a", "v-b"


def produce(settings: KafkaSettings, history: History, start: int, end: int,
) -> None:
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    txn_topic = settings.topic("transactions")
    for txn in history.transactions[start:end]:
        produce_waiting(producer, txn_topic, msgspec.json.encode(txn), txn.card_id.encode())
    assert producer.flush(30) == 0


@pytest.fixture
def flow(kafka: KafkaSettings, models: tuple[Path, str, str],
         tmp_path: Path) -> Iterator[tuple[KafkaSettings, FlowProcess, Collector]]:
    settings = topic_set(kafka, "gov")
    ensure_topics(settings)
    env = flow_env(settings, models[0] / "current", tmp_path, FRAUD_MODEL_RELOAD_SECONDS="1",
                   FRAUD_LOG_LEVEL="INFO")
    collector = Collector(settings)
    collector.start()
    proc = FlowProcess(env, tmp_path / "flow.log")
    try:
        yield settings, proc, collector
    finally:
        proc.stop()
        collector.stop()


def test_rejected_model_keeps_the_champion_then_promote_and_rollback_hot_reload(
    flow: tuple[KafkaSettings, FlowProcess, Collector], models: tuple[Path, str, str],
    tmp_path: Path,
) -> None:
    settings, proc, collector = flow
    root, a, b = models
    history = tiny_history(WORLD)
    sent = 0

    def send(n: int) -> None:
        nonlocal sent
        if sent + n > len(history):
            pytest.fail("the stream ran out before the flow saw the change")
        produce(settings, history, sent, sent + n)
        sent += n

    def seen_after(version: str, t_ms: int) -> bool:
        return any(vs[0].model_version == version and vs[0].scored_time >= t_ms
                   for vs in list(collector.outcome.verdicts.values()))

    send(600)
    collector.wait_for(600, [proc])
    # a model below a gate: published as rejected, current does not move, the flow keeps a
    trained = train_tiny(tmp_path / "run-r", tiny_history(dataclasses.replace(TINY_WORLD,
                                                                              seed=9)))
    rejected = release(trained, root, version="v-r", gates=GateConfig(min_auc_roc=0.99999))
    assert rejected.state == "rejected" and Lifecycle(root).champion() == a
    time.sleep(2.5)  # two reload intervals
    t_rejected = int(time.time() * 1000)
    send(200)
    collector.wait_for(800, [proc])
    assert not seen_after("v-r", 0) and seen_after(a, t_rejected)

    assert cli(["--models-dir", str(root), "promote", b, "--reason", "test", *LOOSE]) == 0
    t_promote = int(time.time() * 1000)
    wait_until(lambda: seen_after(b, t_promote), [proc], f"a verdict by {b}",
               tick=lambda: send(TRICKLE))
    assert cli(["--models-dir", str(root), "rollback", "--reason", "test"]) == 0
    t_rollback = int(time.time() * 1000)
    wait_until(lambda: seen_after(a, t_rollback), [proc], f"a verdict by {a} again",
               tick=lambda: send(TRICKLE))
    send(100)
    collector.wait_for(sent, [proc])

    proc.stop()
    verdicts = [vs[0] for vs in collector.outcome.verdicts.values()]
    assert collector.outcome.duplicates == 0 and len(verdicts) == sent
    # the stream gets no labels here: the event-time answer of the transactions alone
    offline = offline_scores(history.transactions[:sent], [root / a, root / b])
    for v in verdicts:
        assert abs(v.score - offline[v.model_version][v.transaction_id]) <= 1e-6
    in_time = [v.model_version for v in sorted(verdicts, key=lambda v: v.scored_time)]
    runs = [k for i, k in enumerate(in_time) if i == 0 or in_time[i - 1] != k]
    assert runs == [a, b, a], runs
    log = proc.log_path.read_text()
    assert f"champion model {b} now serving (was {a})" in log
    assert f"champion model {a} now serving (was {b})" in log
    actions = [(r["action"], r["version"]) for r in Lifecycle(root).audit()]
    assert actions[-3:] == [("publish", "v-r"), ("promote", b), ("rollback", a)]


def test_history_from_the_topics_replays_to_identical_features_and_retrains(
    kafka: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from training.history_export import main as history_main
    from training.retrain import main as retrain_main

    settings = topic_set(kafka, "hist")
    ensure_topics(settings)
    history = tiny_history()
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    txn_topic, label_topic = settings.topic("transactions"), settings.topic("labels")
    n_labels = 0
    for ev in events(history):  # as the demo produces them: transactions, then fraud labels
        if hasattr(ev, "amount"):
            produce_waiting(producer, txn_topic, msgspec.json.encode(ev), ev.card_id.encode())
        else:
            n_labels += 1
            producer.produce(label_topic, key=ev.transaction_id.encode(),
                             value=msgspec.json.encode(ev))
    first = history.transactions[0]
    producer.produce(txn_topic, key=first.card_id.encode(), value=msgspec.json.encode(first))
    producer.produce(txn_topic, key=b"x", value=b"not json")
    assert producer.flush(30) == 0
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", str(settings.bootstrap_servers))
    monkeypatch.setenv("FRAUD_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    out = tmp_path / "history.parquet"
    assert history_main(["--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "duplicates 1 (conflicting bodies 0), invalid 1" in err
    exported = load_history(out)
    assert [t.transaction_id for t in exported.transactions] == [
        t.transaction_id for t in history.transactions]
    fraud = history.is_fraud & (history.label_time < 2**62)
    assert int(exported.is_fraud.sum()) == n_labels == int(fraud.sum())
    assert np.array_equal(exported.label_time[exported.is_fraud],
                          history.label_time[history.is_fraud])
    assert np.array_equal(point_in_time_features(exported), point_in_time_features(history))

    # a range: only transactions with from <= event_time < to
    mid = int(np.median(history.event_time))
    part = tmp_path / "part.parquet"
    assert history_main(["--to", str(mid), "--out", str(part)]) == 0
    assert len(load_history(part)) == int((history.event_time < mid).sum())

    models = tmp_path / "models"
    code = retrain_main(["--quick", "--models-dir", str(models), "--work", str(tmp_path / "w"),
                         "--label-delay-days", "3"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "1/4 history" in err and "4/4 promoted" in err
    life = Lifecycle(models)
    champion = life.champion()
    assert champion is not None and life.records()[champion].gates["passed"]  # type: ignore[index]
    model = load_model(models / "current")
    assert model.metadata.probe_rows and model.version == champion
