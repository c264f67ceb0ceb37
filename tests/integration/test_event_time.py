"""Labels in event time on the real flow: a backlog of labels read first changes no score.

The same simulated stream is scored twice by the real ``flows.score`` process:

* **paced**: transactions and labels produced together in event-time order, one
  hour of event time at a time (the next hour once the flow has scored this one);
* **labels as a backlog**: every label produced at once, before any transaction
  (a replay, or a catch-up after an outage of the transactions feed), then the
  transactions paced as above.

Both must equal offline replay in event-time order (what training sees), to the
last bit of the score: labels never move a window clock and count only from the
hour after they became known, so when they are read does not matter.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer

from devkit.process import FlowProcess
from export.model import load_model
from flowkit import Collector, flow_env, topic_set, wait_until
from state.replay import replay_matrix
from tiny_model import tiny_history
from topics.admin import ensure_topics
from topics.contracts import Label, Transaction
from topics.producer import PRODUCER_DEFAULTS
from topics.settings import KafkaSettings
from training.history import History, events, labels
from training.simulate import SimConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Dense enough that one hour of event time holds a few hundred transactions.
WORLD = SimConfig(n_transactions=16_000, n_cards=500, days=4, seed=41, fraud_rate=0.05)
HOUR = 3_600_000


@pytest.fixture(scope="module")
def history() -> History:
    return tiny_history(WORLD)


def _hours(items: Iterable[Transaction | Label]) -> list[list[Transaction | Label]]:
    out: list[list[Transaction | Label]] = []
    current = None
    for e in items:
        t = (e.event_time if isinstance(e, Transaction) else e.label_time) // HOUR
        if t != current:
            out.append([])
            current = t
        out[-1].append(e)
    return out


def _score(kafka: KafkaSettings, model: Path, work: Path, history: History,
           backlog_labels: bool) -> dict[str, float]:
    settings = topic_set(kafka, "labels-backlog" if backlog_labels else "paced")
    ensure_topics(settings)
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    encode = msgspec.json.encode

    def send(e: Transaction | Label) -> None:
        if isinstance(e, Transaction):
            producer.produce(settings.topic("transactions"), key=e.card_id.encode(),
                             value=encode(e))
        else:
            producer.produce(settings.topic("labels"), key=e.transaction_id.encode(),
                             value=encode(e))

    if backlog_labels:
        for label in labels(history):
            send(label)
        assert producer.flush(30) == 0
        stream: Iterable[Transaction | Label] = history.transactions
    else:
        stream = events(history)
    collector = Collector(settings)
    collector.start()
    # Each hour ends with the partitions quiet: short idleness (as the demo's) lets the
    # watermark pass the hour's last records sooner; a late one would change its score.
    env = flow_env(settings, model, work, FRAUD_INPUT_IDLE_MS="200", FRAUD_IDLE_GRACE_MS="100")
    flow = FlowProcess(env, work / "flow.log")
    sent = 0
    try:
        for hour in _hours(stream):
            for e in hour:
                send(e)
            sent += sum(isinstance(e, Transaction) for e in hour)
            assert producer.flush(30) == 0
            wait_until(lambda n=sent: len(collector.outcome.verdicts) >= n, [flow],
                       f"{sent} verdicts")
    finally:
        flow.stop()
        collector.stop()
    return collector.outcome.scores()


def test_labels_read_ahead_give_the_scores_of_a_paced_stream_and_of_replay(
    kafka: KafkaSettings, history: History, tiny_model_dir: Path, tmp_path: Path
) -> None:
    end = max(t.event_time for t in history.transactions)
    within = int((history.is_fraud & (history.label_time < end)).sum())
    assert within > 50  # labels known inside the stream: they change merchant features
    paced = _score(kafka, tiny_model_dir, tmp_path / "paced", history, backlog_labels=False)
    backlog = _score(kafka, tiny_model_dir, tmp_path / "backlog", history, backlog_labels=True)
    txns, X = replay_matrix(events(history))
    offline = dict(zip((t.transaction_id for t in txns),
                       load_model(tiny_model_dir).predict(X).tolist(), strict=True))
    assert set(paced) == set(backlog) == set(offline)
    assert paced == backlog
    assert max(abs(paced[t] - offline[t]) for t in offline) <= 1e-6
