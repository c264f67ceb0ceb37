"""A backlog gives the event-time answer: every streamed score equals ``just score-file``.

A simulated labelled history over 60 days is written to a file and scored offline by
``just score-file`` (:mod:`training.score_file`), the reference for every score. The same
history is published before the flow starts, as a catch-up after an outage finds it:
the transactions keyed by card, a third of the fraud labels before them, a third
interleaved with them at their label time, a third after them. The real flow then
reads it all, its partitions at whatever speed the broker serves them, by one process
(one card and one merchant shard, the default) and by a cluster of two (three card
shards over the eight partitions, two merchant shards): every verdict's score must be
the score-file's, bit for bit.

The quick set (CI) plays 24,000 transactions; ``just backlog`` (``FRAUD_BACKLOG=full``)
plays 200,000 over 60 days of 20,000 cards.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from devkit.broker import free_port
from devkit.process import FlowProcess
from flowkit import Collector, flow_env, metric, scrape, topic_set
from topics.admin import ensure_topics
from topics.contracts import Label, Transaction
from topics.producer import PRODUCER_DEFAULTS, produce_waiting
from topics.settings import KafkaSettings
from training.history import History, events, labels, load_history, write_history
from training.score_file import main as score_file
from training.simulate import SimConfig, simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FULL = os.environ.pop("FRAUD_BACKLOG", "").strip().lower() == "full"  # not for the flow
WORLD = (SimConfig(n_transactions=204_000, n_cards=20_000, days=60, seed=77, fraud_rate=0.01)
         if FULL else
         SimConfig(n_transactions=24_500, n_cards=1_500, days=60, seed=77, fraud_rate=0.02))
TIMEOUT = 1200 if FULL else 300


@pytest.fixture(scope="module")
def backlog(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
            ) -> tuple[History, dict[str, float]]:
    """The history file, and the scores ``just score-file`` gives it."""
    root = tmp_path_factory.mktemp("backlog")
    data, out = root / "history.parquet", root / "verdicts.parquet"
    write_history(simulate(WORLD), data)
    history = load_history(data)
    assert len(history) >= (200_000 if FULL else 24_000)
    days = (history.event_time.max() - history.event_time.min()) / 86_400_000
    assert days >= 59
    assert score_file(["--data", str(data), "--out", str(out),
                       "--model", str(tiny_model_dir)]) == 0
    table = pq.read_table(out, columns=["transaction_id", "score"]).to_pydict()
    return history, dict(zip(table["transaction_id"], table["score"], strict=True))


def _publish(settings: KafkaSettings, history: History) -> None:
    """Labels before, among and after the transactions, all before the flow starts."""
    ensure_topics(settings)
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    encode = msgspec.json.encode
    txn_topic, label_topic = settings.topic("transactions"), settings.topic("labels")
    every = list(labels(history))
    assert len(every) > 100
    before = {lab.transaction_id for lab in every[0::3]}
    after = {lab.transaction_id for lab in every[2::3]}

    def send(event: Transaction | Label) -> None:
        if isinstance(event, Transaction):
            produce_waiting(producer, txn_topic, encode(event), event.card_id.encode())
        else:
            produce_waiting(producer, label_topic, encode(event),
                            event.transaction_id.encode())

    for lab in every:
        if lab.transaction_id in before:
            send(lab)
    for event in events(history):
        if isinstance(event, Transaction) or (
                event.transaction_id not in before and event.transaction_id not in after):
            send(event)
    for lab in every:
        if lab.transaction_id in after:
            send(lab)
    assert producer.flush(120) == 0


def _stream(kafka: KafkaSettings, model: Path, work: Path, history: History, name: str,
            processes: int) -> tuple[dict[str, float], dict[str, float]]:
    """Every verdict's score, and how many records each process read behind its watermark."""
    settings = topic_set(kafka, name)
    _publish(settings, history)
    collector = Collector(settings)
    collector.start()
    addresses = ([f"127.0.0.1:{free_port()}" for _ in range(processes)]
                 if processes > 1 else None)
    ports = [free_port() for _ in range(processes)]
    # one process: the default single shards; two: three card shards over eight partitions
    shards = ({"FRAUD_CARD_SHARDS": "1", "FRAUD_MERCHANT_SHARDS": "1"} if processes == 1
              else {"FRAUD_CARD_SHARDS": "3", "FRAUD_MERCHANT_SHARDS": "2"})
    flows = [FlowProcess(flow_env(settings, model, work / f"p{i}",
                                  FRAUD_METRICS_PORT=str(ports[i]), **shards),
                         work / f"flow-{i}.log",
                         process_id=i if addresses else None, addresses=addresses)
             for i in range(processes)]
    try:
        collector.wait_for(len(history), flows, timeout=TIMEOUT)
        samples = [scrape(port) for port in ports]
        behind = {
            "late transactions": sum(metric(s, "fraud_event_time_late_total",
                                            kind="transaction") for s in samples),
            "late labels": sum(metric(s, "fraud_event_time_late_total", kind="label")
                               for s in samples),
            "forced": sum(metric(s, "fraud_reorder_forced_total") for s in samples)}
    finally:
        for flow in flows:
            flow.stop()
        collector.stop()
    assert collector.outcome.duplicates == 0
    return collector.outcome.scores(), behind


@pytest.mark.parametrize("processes", [1, 2])
def test_a_backlog_of_labelled_history_streams_the_score_file_scores(
    kafka: KafkaSettings, backlog: tuple[History, dict[str, float]], tiny_model_dir: Path,
    tmp_path: Path, processes: int, record_property: pytest.RecordProperty,
) -> None:
    history, reference = backlog
    streamed, behind = _stream(kafka, tiny_model_dir, tmp_path, history,
                               f"backlog{processes}", processes)
    assert set(streamed) == set(reference)
    differ = [t for t, s in streamed.items() if s != reference[t]]
    record_property("differ", len(differ))
    assert not differ, (f"{len(differ)} of {len(reference)} scores differ from score-file, "
                        f"e.g. {differ[0]}: {streamed[differ[0]]} vs {reference[differ[0]]}; "
                        f"read behind the watermark: {behind}")
    assert not any(behind.values()), behind
