"""health.watch on the embedded broker: topics deleted, re-created, re-partitioned, unreachable.

Each test creates its own topic, starts a :class:`TopicWatch` with a short
interval, changes the topic through the admin API and measures how long the
watch takes to report the fault (printed: ``pytest -s`` shows the figures).
Tansu (the embedded broker) reports topic ids and deletes topics, but has no
CreatePartitions: there, "partitions added" is made by re-creating the topic
with more partitions and watching without ids (the same check fires).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from devkit.broker import EmbeddedBroker, free_port
from health.watch import (
    INPUT_HEALTHY,
    BrokerUnreachableError,
    InputTopicError,
    OffsetBeyondEndError,
    PartitionsChangedError,
    TopicMissingError,
    TopicRecreatedError,
    TopicWatch,
    all_ready,
    close_server,
    start_http_server,
    topic_identity,
)
from lifecycle import process as lifecycle
from topics.settings import KafkaSettings

pytestmark = [pytest.mark.integration]

INTERVAL = 0.5
DETECT_WITHIN = 5.0


class Faults:
    """``on_fault`` that records the error and when it came."""

    def __init__(self) -> None:
        self.errors: list[InputTopicError] = []
        self.at: float | None = None
        self.event = threading.Event()

    def __call__(self, error: InputTopicError) -> None:
        self.errors.append(error)
        self.at = time.monotonic()
        self.event.set()

    def wait(self, since: float, timeout: float = DETECT_WITHIN) -> tuple[InputTopicError, float]:
        assert self.event.wait(timeout), f"no fault reported within {timeout} s"
        assert len(self.errors) == 1 and self.at is not None
        return self.errors[0], self.at - since


def admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient({"bootstrap.servers": str(settings.bootstrap_servers), "log_level": 0})


def create(settings: KafkaSettings, name: str, partitions: int) -> None:
    client = admin(settings)  # kept alive until the futures resolve
    for future in client.create_topics([NewTopic(name, partitions)]).values():
        future.result(10)


def delete(settings: KafkaSettings, name: str) -> None:
    client = admin(settings)
    for future in client.delete_topics([name], operation_timeout=10).values():
        future.result(10)


def exists(settings: KafkaSettings, name: str) -> bool:
    return name in admin(settings).list_topics(timeout=10).topics  # all topics: creates none


def produce(settings: KafkaSettings, topic: str, partition: int, count: int) -> None:
    producer = Producer({"bootstrap.servers": str(settings.bootstrap_servers)})
    for i in range(count):
        producer.produce(topic, value=b"x%d" % i, partition=partition)
    assert producer.flush(10) == 0


def gauge(topic: str, check: str) -> float:
    value: float = INPUT_HEALTHY.labels(topic=topic, check=check)._value.get()
    return value


@pytest.fixture
def topic(kafka: KafkaSettings, topic_prefix: str) -> Iterator[str]:
    name = f"{topic_prefix}transactions"
    create(kafka, name, 3)
    yield name
    if exists(kafka, name):
        delete(kafka, name)


@pytest.fixture
def watches() -> Iterator[list[TopicWatch]]:
    started: list[TopicWatch] = []
    yield started
    for watch in started:
        watch.stop()


def start_watch(watches: list[TopicWatch], settings: KafkaSettings, topic: str, faults: Faults,
                partitions: int = 3, consumed: dict[tuple[str, int], int] | None = None,
                **options: float | bool) -> TopicWatch:
    watch = TopicWatch(settings, [topic], {topic: partitions}, lambda: dict(consumed or {}),
                       faults, interval_s=INTERVAL, confirm_after_s=0.2, **options)  # type: ignore[arg-type]
    watches.append(watch.start())
    deadline = time.monotonic() + 10
    while watch.checks < 2:  # a clean first round and a second one: the baseline is set
        assert time.monotonic() < deadline and watch.fault is None, watch.ready()
        time.sleep(0.05)
    return watch


def test_topic_identity_gives_the_id_and_never_creates_a_topic(
    kafka: KafkaSettings, topic: str, topic_prefix: str
) -> None:
    ident = topic_identity(kafka, topic)
    assert ident.partitions == 3 and ident.topic_id  # Tansu reports topic ids
    topic_id, partitions = ident  # unpacks as the (topic_id, partitions) pair
    assert (topic_id, partitions) == (ident.topic_id, 3)
    missing = f"{topic_prefix}never-created"
    with pytest.raises(TopicMissingError, match="does not exist.*just topics"):
        topic_identity(kafka, missing)
    assert not exists(kafka, missing)  # a metadata request naming it would have created it


def test_a_healthy_topic_is_ready_and_every_check_is_1(
    kafka: KafkaSettings, topic: str, watches: list[TopicWatch]
) -> None:
    produce(kafka, topic, 0, 5)
    faults = Faults()
    watch = start_watch(watches, kafka, topic, faults, consumed={(topic, 0): 5})
    time.sleep(3 * INTERVAL)
    assert watch.ready() == (True, "ok") and not faults.errors and watch.checks >= 3
    assert all(gauge(topic, check) == 1 for check in
               ("exists", "identity", "partitions", "offsets", "broker"))


def test_a_deleted_topic_stops_the_flow_and_readiness_says_why(
    kafka: KafkaSettings, topic: str, watches: list[TopicWatch]
) -> None:
    faults = Faults()
    watch = start_watch(watches, kafka, topic, faults)
    port = free_port()
    server = start_http_server(port, all_ready(lifecycle.ready, watch.ready), addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
            assert resp.status == 200 and resp.read() == b"ready\n"
        start = time.monotonic()
        delete(kafka, topic)
        error, took = faults.wait(start)
        print(f"deleted topic detected in {took:.2f} s (interval {INTERVAL} s)")
        assert isinstance(error, TopicMissingError) and error.topic == topic
        assert "no longer exists" in str(error) and "just topics" in str(error)
        assert gauge(topic, "exists") == 0
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5)
        assert answer.value.code == 503
        assert answer.value.read().decode().startswith(f"not ready: input topic '{topic}'")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert f'fraud_input_healthy{{check="exists",topic="{topic}"}} 0.0' in text
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
        assert answer.value.code == 404
    finally:
        close_server(server)
    time.sleep(2 * INTERVAL)
    assert not exists(kafka, topic)  # the watch did not bring it back


def test_a_recreated_topic_is_found_by_its_id(
    kafka: KafkaSettings, topic: str, watches: list[TopicWatch]
) -> None:
    faults = Faults()
    start_watch(watches, kafka, topic, faults)
    before = topic_identity(kafka, topic).topic_id
    start = time.monotonic()
    delete(kafka, topic)
    create(kafka, topic, 3)
    error, took = faults.wait(start)
    print(f"re-created topic detected in {took:.2f} s (interval {INTERVAL} s)")
    assert isinstance(error, TopicRecreatedError), error
    after = topic_identity(kafka, topic).topic_id
    assert before != after and f"topic id {before} is now {after}" in str(error)
    assert gauge(topic, "identity") == 0


def test_without_topic_ids_a_recreated_topic_is_found_by_its_offsets(
    kafka: KafkaSettings, topic: str, watches: list[TopicWatch]
) -> None:
    produce(kafka, topic, 1, 7)
    faults = Faults()
    # consumed up to the end: healthy (the end never falls below what was read)
    watch = start_watch(watches, kafka, topic, faults, consumed={(topic, 1): 7},
                        use_topic_ids=False)
    time.sleep(2 * INTERVAL)
    assert watch.ready() == (True, "ok")
    start = time.monotonic()
    delete(kafka, topic)
    create(kafka, topic, 3)
    error, took = faults.wait(start)
    print(f"re-created topic (no ids) detected in {took:.2f} s (interval {INTERVAL} s)")
    assert isinstance(error, OffsetBeyondEndError), error
    assert "partition 1 ends at offset 0, but the flow already read up to 7" in str(error)


def test_a_resume_offset_beyond_the_end_is_refused_at_the_first_check(
    kafka: KafkaSettings, topic: str, watches: list[TopicWatch]
) -> None:
    faults = Faults()
    start = time.monotonic()
    watch = TopicWatch(kafka, [topic], {topic: 3}, lambda: {(topic, 2): 500}, faults,
                       interval_s=INTERVAL, confirm_after_s=0.2)
    watches.append(watch.start())
    error, took = faults.wait(start)
    assert isinstance(error, OffsetBeyondEndError) and took < 2
    assert "read up to 500" in str(error)


def test_added_partitions_are_refused_at_once(
    kafka: KafkaSettings, topic: str, watches: list[TopicWatch]
) -> None:
    faults = Faults()
    client = admin(kafka)
    try:
        client.create_partitions([NewPartitions(topic, 5)])[topic].result(10)
        how = "CreatePartitions"
    except KafkaException as exc:
        assert "not supported by broker" in str(exc), exc  # Tansu: KIP-195 unsupported
        how = None
    if how is None:  # fall back: same count check, the topic re-created with more partitions
        start_watch(watches, kafka, topic, faults, use_topic_ids=False)
        start = time.monotonic()
        delete(kafka, topic)
        create(kafka, topic, 5)
        how = "re-created with 5 partitions (broker has no CreatePartitions)"
    else:
        start = time.monotonic()
        start_watch(watches, kafka, topic, faults)
    error, took = faults.wait(start)
    print(f"partitions 3 -> 5 ({how}) detected in {took:.2f} s (interval {INTERVAL} s)")
    assert isinstance(error, PartitionsChangedError), error
    assert "has 5 partitions, the flow started with 3: partitions 3..4 would stay unread" in str(
        error)
    assert gauge(topic, "partitions") == 0


@pytest.mark.slow
def test_a_paused_broker_is_survived_and_a_lost_one_stops_the_flow(
    tmp_path: Path, watches: list[TopicWatch]
) -> None:
    with EmbeddedBroker(log_dir=tmp_path) as broker:
        settings = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap})
        create(settings, "transactions", 2)
        faults = Faults()
        watch = start_watch(watches, settings, "transactions", faults, partitions=2,
                            unreachable_s=4.0, request_timeout_s=1.0)
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)  # paused shorter than the limit: survived
        try:
            deadline = time.monotonic() + 5
            while watch.ready()[0]:
                assert time.monotonic() < deadline, "readiness stayed true while paused"
                time.sleep(0.1)
            assert "unreachable" in watch.ready()[1] and gauge("transactions", "broker") == 0
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while not watch.ready()[0]:
            assert time.monotonic() < deadline, watch.ready()
            time.sleep(0.1)
        assert not faults.errors and gauge("transactions", "broker") == 1
        start = time.monotonic()
        broker.stop()
    error, took = faults.wait(start, timeout=15)
    print(f"broker gone detected in {took:.2f} s (limit 4 s, interval {INTERVAL} s)")
    assert isinstance(error, BrokerUnreachableError) and 4 <= took < 8
    assert "has not answered for" in str(error)
