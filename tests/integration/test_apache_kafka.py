"""The real Apache Kafka broker of :mod:`devkit.apache_kafka`: topics, produce/consume, stop.

One broker for the module (about 5-10 s to start, about 330 MB); the jars are
resolved with Maven on first use (about 20 s, cached outside the repository).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from devkit.apache_kafka import ApacheKafka
from flowkit import REAL_KAFKA_MARKS
from topics.admin import ensure_topics, topic_partitions
from topics.registry import TOPICS
from topics.settings import KafkaSettings

pytestmark = REAL_KAFKA_MARKS

RECORDS = 1_000


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    with ApacheKafka(log_dir=tmp_path_factory.mktemp("apache-kafka")) as kafka:
        yield kafka


@pytest.fixture(scope="module")
def settings(broker: ApacheKafka) -> KafkaSettings:
    """Registry topics under a prefix of their own, created on the broker."""
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap, topic_prefix=f"test-{uuid.uuid4().hex[:12]}."
    )
    ensure_topics(settings)
    return settings


def _java_pids(marker: str) -> set[int]:
    """Live processes whose command line mentions ``marker`` (our log directory)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in cmdline and state != "Z":
            pids.add(int(entry.name))
    return pids


def test_registry_topics_exist_with_their_partitions(
    broker: ApacheKafka, settings: KafkaSettings
) -> None:
    assert not broker.secured and broker.client_options() == {}  # the default: no SASL
    found = topic_partitions(settings)
    for logical, spec in TOPICS.items():
        assert found.get(settings.topic(logical)) == spec.partitions, logical
    assert set(ensure_topics(settings).values()) == {"exists"}  # idempotent


def test_produce_then_consume_by_assign_and_cached_high_watermark(
    broker: ApacheKafka, settings: KafkaSettings
) -> None:
    topic = settings.topic("transactions")
    producer = Producer(settings.client_config(acks="all", **{"enable.idempotence": True}))
    for i in range(RECORDS):
        producer.produce(topic, key=f"card-{i % 7}", value=f"record-{i}", partition=0)
    assert producer.flush(30) == 0

    consumer = Consumer(
        settings.client_config(**{"group.id": f"g-{uuid.uuid4().hex}", "enable.auto.commit": False})
    )
    tp = TopicPartition(topic, 0, OFFSET_BEGINNING)
    consumer.assign([tp])
    got: list[tuple[int, bytes | None, bytes | None]] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < RECORDS and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            assert message.partition() == 0
            got.append((message.offset(), message.key(), message.value()))
        assert [offset for offset, _, _ in got] == list(range(RECORDS))
        assert [value for _, _, value in got] == [f"record-{i}".encode() for i in range(RECORDS)]
        assert got[0][1] == b"card-0"
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), cached=True)
        assert high == got[-1][0] + 1
    finally:
        consumer.close()


def test_stop_leaves_no_java_process(broker: ApacheKafka) -> None:
    """Last in the module: stops the shared broker (the fixture's stop is then a no-op)."""
    pid = broker.pid
    assert pid is not None and broker.running
    ours = _java_pids(str(broker.log_dir))
    assert ours == {pid}  # the death-signal wrapper exec'd java: one process
    broker.stop()
    assert not broker.running and broker.pid is None
    assert _java_pids(str(broker.log_dir)) == set()
    assert not Path(f"/proc/{pid}").exists()
