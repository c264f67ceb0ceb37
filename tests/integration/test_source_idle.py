"""A ``transactions`` partition is idle only when read to its end (flows.kafka).

An idle partition stops holding the merchant stage's watermark back, so a partition
that merely waits for a slow fetch must not say it is idle: its records would then
arrive behind the watermark. Against the embedded broker: the fetcher is stopped
half way (the reader fills nothing, as when the broker is slow to answer), and the
partition stays quiet but not idle until :data:`flows.kafka.STALLED_S`; read to the
end, it is idle after ``idle_ms``.
"""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Producer

import flows.kafka as kafka_mod
from flows.kafka import RawBatch, source
from topics.settings import KafkaSettings

pytestmark = pytest.mark.integration


def _poll(part: kafka_mod._SourcePartition, seconds: float) -> list[RawBatch]:
    out: list[RawBatch] = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        out += part.next_batch()
        time.sleep(0.005)
    return out


def test_a_partition_with_records_left_is_not_idle_until_stalled(
    topics: KafkaSettings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    topic = topics.topic("transactions")
    producer = Producer(topics.client_config())
    for i in range(6):
        producer.produce(topic, f"r{i}".encode(), partition=0)
    assert producer.flush(10) == 0
    src = source(topics, "transactions", batch_size=2, idle_ms=50)
    part = src.build_part("test-in", f"0-{topic}", None)
    reader = part._reader
    try:
        got: list[RawBatch] = []
        deadline = time.time() + 10
        while not got and time.time() < deadline:
            got += part.next_batch()
        assert [r.offset for b in got for r in b.records] == [0, 1]
        fill = reader.fill
        monkeypatch.setattr(reader, "fill", lambda batch_size: None)  # the fetch stalls
        reader.queues[0].clear()  # what was fetched beyond the first batch is not there yet
        quiet = _poll(part, 0.4)
        assert not any(b.idle for b in quiet), "records 2-5 are unread: the partition is not idle"
        monkeypatch.setattr(kafka_mod, "STALLED_S", 0.3)
        with caplog.at_level(logging.WARNING, logger="flows.kafka"):
            stalled = _poll(part, 0.4)
        assert [b.idle for b in stalled] == [True]
        assert "has records left to read but delivered none" in caplog.text

        monkeypatch.setattr(reader, "fill", fill)  # the broker answers again
        monkeypatch.setattr(kafka_mod, "STALLED_S", 60.0)
        reader._consumer.seek(kafka_mod.TopicPartition(topic, 0, 2))
        rest = _poll(part, 1.0)
        assert [r.offset for b in rest for r in b.records] == [2, 3, 4, 5]
        assert rest[-1].idle and not any(b.idle for b in rest[:-1]), (
            "read to the end, the partition is idle after idle_ms")
    finally:
        part.close()


def test_a_linger_drains_the_consumer_at_most_once_per_linger_for_every_partition(
    topics: KafkaSettings,
) -> None:
    topic = topics.topic("transactions")
    producer = Producer(topics.client_config())

    def produce(n: int) -> None:
        for i in range(n):
            producer.produce(topic, f"r{i}".encode(), partition=i % 2)
        assert producer.flush(10) == 0

    produce(4)
    src = source(topics, "transactions", batch_size=100, linger_ms=300)
    parts = [src.build_part("test-in", f"{p}-{topic}", None) for p in (0, 1)]
    try:
        got: list[RawBatch] = []
        deadline = time.time() + 10
        while sum(len(b.records) for b in got) < 4 and time.time() < deadline:
            for part in parts:
                got += part.next_batch()
            time.sleep(0.01)
        filled = time.time()
        produce(4)
        time.sleep(0.1)  # fetched by the consumer, but the linger is not over
        early = [b for part in parts for b in part.next_batch()]
        assert not any(b.records for b in early)
        awake = parts[0].next_awake()
        assert awake is not None and awake.timestamp() > filled, "asked again when the linger ends"
        time.sleep(max(0.0, awake.timestamp() - time.time()) + 0.01)
        late = [b for part in parts for b in part.next_batch()]
        assert sorted(b.partition for b in late if b.records) == [0, 1], (
            "one fill hands every partition its records in the same round")
    finally:
        for part in parts:
            part.close()


def test_a_partition_that_never_fills_itself_still_goes_idle(topics: KafkaSettings) -> None:
    """Another partition of the process polled more often always fills first (a linger).

    The idle check asks the broker's end, not whether this partition did the fill: a
    read-to-the-end partition whose polls always find the linger running is still idle.
    """
    topic = topics.topic("transactions")
    producer = Producer(topics.client_config())
    for i in range(3):
        producer.produce(topic, f"r{i}".encode(), partition=1)
    assert producer.flush(10) == 0
    src = source(topics, "transactions", batch_size=100, idle_ms=50, linger_ms=20)
    eager, starved = (src.build_part("test-in", f"{p}-{topic}", None) for p in (0, 1))
    try:
        got: list[RawBatch] = []
        deadline = time.time() + 10
        while not any(b.records for b in got) and time.time() < deadline:
            got += eager.next_batch() + starved.next_batch()
            time.sleep(0.001)
        assert [r.offset for b in got for r in b.records] == [0, 1, 2]
        later: list[RawBatch] = []
        deadline = time.time() + 1.0
        while time.time() < deadline:
            reader = eager._reader
            time.sleep(max(0.0, reader.next_fill - time.time()))
            eager.next_batch()  # fills first, every time
            later += starved.next_batch()
        assert [b.idle for b in later] == [True], "read to its end, it is idle after idle_ms"
    finally:
        eager.close()
        starved.close()
