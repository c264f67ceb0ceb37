"""Kafka sources and sinks for Bytewax, built from ``KafkaSettings``.

The source is Bytewax's ``KafkaSource`` made lean: the same partitions
(``<index>-<topic>``), resume state (next offset) and lag gauge
(``bytewax_kafka_consumer_lag``), but a poll of one partition is **one item**, a
:class:`RawBatch` of plain tuples, so the dataflow moves batches, not records.
A partition with nothing to read for ``idle_ms`` says so once (an empty batch with
``idle``), so event-time watermarks downstream do not wait for it
(:mod:`state.reorder`); a ``transactions`` partition that runs too far ahead of the
watermark in event time is paused (:mod:`flows.alignment`). With ``headers`` (tracing
on) the W3C trace headers of the records that have them ride along
(:attr:`RawBatch.traces`); the predictions sink gives traced verdicts theirs
(:mod:`tracing`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, NamedTuple

import bytewax.operators as op
from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)

from flows import alignment, metrics
from flows.items import SinkBatch
from lifecycle import process as lifecycle
from topics.admin import partition_count
from topics.errors import BrokerError
from topics.producer import produce_waiting
from topics.settings import KafkaSettings
from tracing.carry import Header, trace_headers
from tracing.spans import Tracing


class RawRecord(NamedTuple):
    """One consumed record."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    """Kafka record timestamp (0: none)."""
    fetched: float = 0.0
    """When the source handed it to the dataflow (epoch seconds; per-stage latency)."""


class RawBatch(NamedTuple):
    """The records of one poll of one partition (one dataflow item), or an idle notice."""

    topic: str
    partition: int
    records: list[RawRecord]
    idle: bool = False
    """Nothing to read on the partition for the source's ``idle_ms`` (``records`` empty)."""
    traces: dict[int, Header] | None = None
    """Records with a W3C ``traceparent`` header: index in ``records`` -> (traceparent,
    tracestate); only read with tracing on (None: none)."""


class SinkRecord(NamedTuple):
    """One record for a sink (a tuple: cheaper than Bytewax's frozen ``KafkaSinkMessage``)."""

    key: bytes | None
    value: bytes
    scored: float = 0.0
    """When it was made (epoch seconds; 0: not timed), for the sink's stage latency."""


log = logging.getLogger(__name__)

#: Consumer defaults (``FRAUD_KAFKA_*`` overrides them). A short fetch wait keeps latency
#: low on brokers that hold a fetch for its whole wait (the embedded one does); the
#: statistics feed the ``bytewax_kafka_consumer_lag`` gauge.
SOURCE_DEFAULTS = {
    "fetch.wait.max.ms": "10",
    "statistics.interval.ms": "5000",
    # a resume offset already deleted by retention restarts at the oldest record kept,
    # not at the end (librdkafka's default would skip everything still retained)
    "auto.offset.reset": "earliest",
}


#: A partition with records left to read that delivers none this long (s) is counted idle.
STALLED_S = 30.0

#: Next offset to read per (topic, partition) in this process (the input watch compares them
#: with the partitions' ends: an end below it means the topic was re-created or truncated).
CONSUMED: dict[tuple[str, int], int] = {}


def consumed_offsets() -> dict[tuple[str, int], int]:
    """A copy of :data:`CONSUMED`."""
    return dict(CONSUMED)


class _TopicReader:
    """One consumer per process and topic, feeding that process's partitions of the topic.

    Bytewax builds one source partition per topic partition; with a consumer each,
    a process would keep a fetch session per partition (eight per topic, eighteen
    for the flow's inputs), every one polled in turn. Here one consumer is assigned
    every partition the process reads (each at its own resume offset), so the
    broker answers one fetch per topic, and a poll hands each partition its
    records. Polls never block.
    """

    _readers: dict[tuple[int, str], _TopicReader] = {}

    def __init__(self, key: tuple[int, str], step_id: str, topic: str,
                 config: dict[str, Any]) -> None:
        self.key = key
        self.topic = topic
        self.step_id = step_id
        self.queues: dict[int, deque[RawRecord]] = {}
        self.eof: set[int] = set()
        self.lag: dict[int, Any] = {}
        self.next_offset: dict[int, int] = {}
        self._consumer = Consumer({**config, "stats_cb": self._on_stats})
        self._open = 0
        self.linger_s = 0.0
        """Between two fills, at least this long (s): see :meth:`due`."""
        #: Whether a record was fetched yet (``fraud_first_fetch_timestamp_seconds``).
        self.fetched_any = False
        self.next_fill = 0.0
        self.keep_headers = False
        """Note the trace headers of fetched records (tracing on)."""
        self.traces: dict[tuple[int, int], Header] = {}
        """(partition, offset) -> trace headers of records fetched, not yet handed on."""

    @classmethod
    def of(cls, source: object, step_id: str, topic: str, config: dict[str, Any]
           ) -> _TopicReader:
        """The process's reader for ``source``'s input step (created on first use)."""
        key = (id(source), step_id)
        found = cls._readers.get(key)
        if found is None:
            found = cls._readers[key] = cls(key, step_id, topic, config)
        return found

    def add(self, partition: int, offset: int) -> None:
        """Start reading ``partition`` at ``offset``."""
        self.queues[partition] = deque()
        self.lag[partition] = BYTEWAX_CONSUMER_LAG_GAUGE.labels(
            step_id=self.step_id, topic=self.topic, partition=partition)
        self._consumer.incremental_assign([TopicPartition(self.topic, partition, offset)])
        self._open += 1
        if offset >= 0:
            CONSUMED[(self.topic, partition)] = offset

    def _on_stats(self, stats: str) -> None:
        found = json.loads(stats)["topics"].get(self.topic, {}).get("partitions", {})
        for partition, gauge in self.lag.items():
            end = found.get(str(partition), {}).get("ls_offset", -1)
            offset = self.next_offset.get(partition, 0)
            if offset > 0 and end >= 0:
                gauge.set(end - offset)

    def due(self, now: float) -> bool:
        """Whether the next fill is due at ``now`` (wall s).

        With a linger, the consumer's queue is drained at most once per ``linger_s``,
        for every partition of the process at once: in live traffic each poll then
        hands on a few milliseconds of records, and every partition's records reach
        the card and merchant stages in the same step of the worker, so their fixed
        cost per batch is paid once per linger instead of once per record. A backlog
        is not slowed: each fill moves up to the batch size per partition.
        """
        return now >= self.next_fill

    def fill(self, batch_size: int) -> None:
        """Move what the consumer has fetched into the partitions' queues."""
        topic, queues = self.topic, self.queues
        fetched = time.time()
        self.next_fill = fetched + self.linger_s
        messages = self._consumer.consume(batch_size * max(1, len(queues)), 0)
        if messages and not self.fetched_any:
            self.fetched_any = True
            metrics.FIRST_FETCH.labels(topic=topic).set(fetched)
        for msg in messages:
            error = msg.error()
            partition = int(msg.partition() or 0)
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self.eof.add(partition)
                    continue
                raise BrokerError(f"error consuming from {topic!r} partition {partition}: "
                                  f"{error}; the flow stops and resumes from its snapshot")
            kind, ts = msg.timestamp()
            queues[partition].append(RawRecord(
                msg.key(), msg.value(), topic, partition, msg.offset() or 0,
                ts if kind != TIMESTAMP_NOT_AVAILABLE else 0, fetched))
        if self.keep_headers:
            self._note_traces(messages)

    def _note_traces(self, messages: list[Any]) -> None:
        """Keep the trace headers of the records that have a ``traceparent`` (tracing on)."""
        for msg in messages:  # headers() is None for most records: the cheap test first
            if (headers := msg.headers()) and msg.error() is None and (
                    found := trace_headers(headers)) is not None:
                self.traces[(int(msg.partition() or 0), msg.offset() or 0)] = found

    def traces_of(self, partition: int, records: list[RawRecord]) -> dict[int, Header] | None:
        """Hand on the noted trace headers of ``records`` (one poll of ``partition``)."""
        first, last = records[0].offset, records[-1].offset
        found: dict[int, Header] = {}
        for key in [k for k in self.traces if k[0] == partition and first <= k[1] <= last]:
            offset = key[1]
            index = offset - first  # offsets are usually consecutive
            if not (index < len(records) and records[index].offset == offset):
                index = next(i for i, r in enumerate(records) if r.offset == offset)
            found[index] = self.traces.pop(key)
        return found or None

    def caught_up(self, partition: int, next_offset: int) -> bool:
        """Whether ``partition`` has nothing left to read at ``next_offset``, as far as known.

        Compares with the end offset the broker reported in its last fetch response
        (librdkafka's cached high watermark, or last stable offset when reading committed
        records); unknown (no fetch answered yet) is not caught up.
        """
        low, high = self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), cached=True)
        if high < 0:
            return False
        return high <= max(next_offset, low, 0)

    def close(self) -> None:
        """Close the consumer once the last partition is done."""
        self._open -= 1
        if self._open <= 0:
            self._consumer.close()
            self._readers.pop(self.key, None)


class _SourcePartition(StatefulSourcePartition[RawBatch, int]):
    """One topic partition, read through its process's :class:`_TopicReader`.

    Its snapshot is the next offset to read. After an empty poll the partition
    is asked again in ``idle_s`` (Bytewax's own default, 1 ms, when None), so idle
    topics cost next to nothing. After ``idle_ms`` without a record, *and* read up to
    the end the broker last reported (:meth:`_TopicReader.caught_up`), it hands on one
    idle notice: a partition that merely waits for a slow fetch in a backlog is not
    idle, or the watermark would pass its records (the rule Kafka Streams adopted in
    KIP-695). One with records left that delivers none for :data:`STALLED_S` is
    counted idle anyway, with a warning, so one stuck partition cannot stop scoring.
    While :mod:`flows.alignment` holds it back it reads nothing (and is not idle).
    """

    def __init__(
        self, reader: _TopicReader, partition: int, offset: int, batch_size: int,
        idle_s: float | None = None, idle_ms: int = 2000, aligned: bool = False,
    ) -> None:
        self._reader, self._partition, self._offset = reader, partition, offset
        self._batch_size = batch_size
        self._idle_s = idle_s
        self._idle_after = idle_ms / 1000
        self._aligned = aligned
        self._awake: datetime | None = None
        self._last_data = time.time()
        self._said_idle = False
        self._paused = False
        reader.add(partition, offset)
        self._queue = reader.queues[partition]

    def next_batch(self) -> list[RawBatch]:
        lifecycle.check_stop()  # a requested stop ends the input: the dataflow drains
        queue, reader, partition = self._queue, self._reader, self._partition
        now = time.time()
        if self._aligned and alignment.ahead(reader.topic, partition):
            if self._awake is None or not self._paused:
                log.debug("%s partition %d paused: event time %d ahead of watermark %d",
                          reader.topic, partition,
                          alignment.progress(reader.topic, partition),
                          alignment.watermark())
            self._paused = True
            self._last_data = now  # held back on purpose: not idle
            self._awake = datetime.fromtimestamp(now + alignment.PAUSE_S, tz=UTC)
            return []
        self._paused = False
        lingering = False
        if not queue:
            if reader.due(now):
                reader.fill(self._batch_size)
                if not queue and partition in reader.eof:
                    raise StopIteration
            else:
                lingering = True
        n = min(len(queue), self._batch_size)
        if n:
            out = [queue.popleft() for _ in range(n)]
            self._offset = out[-1].offset + 1
            reader.next_offset[partition] = self._offset
            CONSUMED[(reader.topic, partition)] = self._offset
            self._awake = None
            self._last_data = now
            self._said_idle = False
            if reader.traces:
                return [RawBatch(reader.topic, partition, out,
                                 traces=reader.traces_of(partition, out))]
            return [RawBatch(reader.topic, partition, out)]
        # Nothing for this partition. Whichever partition filled (another one may always
        # come first), the idle check below runs: it asks the broker's end, not the fill.
        if lingering:
            self._awake = datetime.fromtimestamp(reader.next_fill, tz=UTC)
        else:  # None: Bytewax's own cool-down (1 ms)
            self._awake = (None if self._idle_s is None
                           else datetime.fromtimestamp(now + self._idle_s, tz=UTC))
        quiet = now - self._last_data
        if not self._said_idle and quiet >= self._idle_after:
            if reader.caught_up(partition, self._offset):
                log.debug("%s partition %d idle", reader.topic, partition)
            elif quiet >= max(STALLED_S, self._idle_after):
                log.warning("%s partition %d has records left to read but delivered none "
                            "for %.0f s: counted idle, so the others are scored; its records "
                            "may now arrive behind the watermark (fraud_event_time_late_total)",
                            reader.topic, partition, quiet)
            else:
                return []
            self._said_idle = True
            return [RawBatch(reader.topic, partition, [], idle=True)]
        return []

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._reader.close()


class LeanKafkaSource(FixedPartitionedSource[RawBatch, int]):
    """Every partition of one topic, from the beginning or the resumed offset."""

    def __init__(
        self, settings: KafkaSettings, topic: str, *, tail: bool, batch_size: int,
        config: dict[str, str] | None = None, idle_s: float | None = None,
        idle_ms: int = 2000, aligned: bool = False, linger_ms: int = 0, headers: bool = False,
    ) -> None:
        self._settings, self._topic = settings, topic
        self._linger_ms = linger_ms
        self._headers = headers
        self._tail, self._batch_size = tail, batch_size
        self._config = config or {}
        self._idle_s = idle_s
        self._idle_ms = idle_ms
        self._aligned = aligned

    def list_parts(self) -> list[str]:
        """Bytewax's partition names: ``<index>-<topic>``."""
        count = partition_count(self._settings, self._topic)
        return [f"{i}-{self._topic}" for i in range(count)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None
                   ) -> _SourcePartition:
        """One partition at the resumed (or first) offset, read by the topic's shared consumer."""
        index, topic = for_part.split("-", 1)
        config: dict[str, Any] = {
            **SOURCE_DEFAULTS,
            **self._config,
            "group.id": "BYTEWAX_IGNORED",  # offsets live in Bytewax's recovery store
            "enable.auto.commit": False,
            "enable.partition.eof": not self._tail,
            **self._settings.client_config(),
        }
        start = OFFSET_BEGINNING if resume_state is None else resume_state
        reader = _TopicReader.of(self, step_id, topic, config)
        reader.linger_s = self._linger_ms / 1000
        reader.keep_headers = self._headers
        return _SourcePartition(reader, int(index), start, self._batch_size, self._idle_s,
                                self._idle_ms, self._aligned)


def source(
    settings: KafkaSettings, logical: str, *, tail: bool = True, batch_size: int = 1000,
    config: dict[str, str] | None = None, idle_s: float | None = None, idle_ms: int = 2000,
    aligned: bool = False, linger_ms: int = 0, headers: bool = False,
) -> LeanKafkaSource:
    """Read one registry topic from the beginning; offsets live in Bytewax's recovery store.

    ``config`` overrides :data:`SOURCE_DEFAULTS` for this topic (``FRAUD_KAFKA_*``
    still wins). ``idle_s``: after an empty poll, ask that partition again this much
    later (None: 1 ms; labels and rules can wait longer). ``idle_ms``: a partition
    with nothing to read this long hands on an idle notice. ``aligned``: pause a
    partition that runs ahead of the event-time watermark (:mod:`flows.alignment`).
    ``linger_ms``: drain the consumer at most this often, for every partition at once
    (:meth:`_TopicReader.due`). ``headers``: hand on the W3C trace headers of the records
    that have them (:attr:`RawBatch.traces`; tracing on). A consumer error stops the flow
    (it resumes from its last snapshot), so only records reach the stream.
    """
    return LeanKafkaSource(settings, settings.topic(logical), tail=tail, batch_size=batch_size,
                           config=config, idle_s=idle_s, idle_ms=idle_ms, aligned=aligned,
                           linger_ms=linger_ms, headers=headers)


def read(
    step_id: str, flow: Dataflow, settings: KafkaSettings, logical: str,
    **options: int | bool | float | dict[str, str],
) -> Stream[RawBatch]:
    """Input step over one registry topic (``options``: see :func:`source`)."""
    return op.input(step_id, flow, source(settings, logical, **options))  # type: ignore[arg-type]


#: Producer defaults for the flow's outputs (``FRAUD_KAFKA_*`` overrides them). A short
#: linger groups a few milliseconds of verdicts into one record batch: brokers (the embedded
#: one especially) fetch faster from fewer, larger batches.
SINK_DEFAULTS = {"linger.ms": "2", "compression.type": "lz4"}
#: Sink partitions (items are spread over them by key; each is written by one worker).
SINK_PARTS = 8


class _Deliveries:
    """One producer per process and sink configuration, shared by its partitions."""

    _producers: dict[tuple[tuple[str, str], ...], Producer] = {}

    @classmethod
    def producer(cls, config: dict[str, Any]) -> Producer:
        key = tuple(sorted((k, str(v)) for k, v in config.items()))
        found = cls._producers.get(key)
        if found is None:
            # librdkafka notices (level 5: a topic's partition count changed, ...) are the
            # input watch's to report, in its one line; warnings and errors still print
            found = cls._producers[key] = Producer({"log_level": 4, **config})
        return found


class _CheckedPartition(StatefulSinkPartition[SinkRecord | SinkBatch, None]):
    """Produce without waiting; before Bytewax snapshots an epoch, wait for every ack.

    ``write_batch`` hands records to the producer and returns at once, so the worker
    goes on scoring while the broker acknowledges. ``snapshot`` (called at the end of
    each epoch, before the epoch's recovery snapshot is committed) flushes and fails
    loudly if any record was not delivered: an epoch is never committed ahead of its
    outputs, so a crash still loses nothing (at-least-once, as Bytewax's own sink).
    """

    def __init__(self, producer: Producer, topic: str, tracing: Tracing | None = None) -> None:
        self._producer = producer
        self._topic = topic
        self._tracing = tracing
        self._failures: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._failures.append(str(err))

    def write_batch(self, values: list[SinkRecord | SinkBatch]) -> None:
        handed = time.time()
        made = 0.0
        producer, topic, report = self._producer, self._topic, self._on_delivery
        for item in values:
            if isinstance(item, SinkBatch):
                if item.traces is not None and self._tracing is not None:
                    self._write_traced(item, handed)
                else:
                    for key, value in item.records:
                        produce_waiting(producer, topic, value, key, report)
                made = item.made or made
            else:  # a SinkRecord, a dead letter
                produce_waiting(producer, topic, item[1], item[0], report)
                if len(item) > 2:
                    made = item[2] or made
        producer.poll(0)  # serve delivery reports of earlier batches
        self._check()
        if made:
            metrics.STAGE_SECONDS.labels(stage="sink").observe(max(0.0, handed - made))

    def _write_traced(self, item: SinkBatch, handed: float) -> None:
        """Produce a batch with traced verdicts: theirs with trace headers, and their spans."""
        assert self._tracing is not None and item.traces is not None
        producer, topic, report = self._producer, self._topic, self._on_delivery
        headers, spans = self._tracing.publish(item.traces, handed, topic)
        for i, (key, value) in enumerate(item.records):
            found = headers.get(i)
            while True:  # as produce_waiting, with headers
                try:
                    if found is None:
                        producer.produce(topic, value, key, on_delivery=report)
                    else:
                        producer.produce(topic, value, key, on_delivery=report, headers=found)
                    break
                except BufferError:
                    producer.poll(0.05)
        self._tracing.end(spans, time.time())

    def _check(self) -> None:
        if self._failures:
            first, count = self._failures[0], len(self._failures)
            raise BrokerError(
                f"{count} records were not delivered to {self._topic!r} (first: {first}); "
                "the flow stops so that recovery produces them again"
            )

    def _flush(self) -> BaseException | None:
        """Wait for every ack, in 1-s slices that notice a fatal stop (a lost broker).

        A plain ``flush()`` waits up to ``message.timeout.ms`` (5 min by default), past
        the stop's grace: the flow would then end with exit 124 instead of the
        fault's one-line message. Returns the fatal error that cut the wait short.
        """
        while self._producer.flush(1.0):
            request = lifecycle.current_request()
            if request is not None and request.error is not None:
                return request.error
        return None

    def snapshot(self) -> None:
        started = time.time()
        fault = self._flush()
        if fault is not None:  # the epoch must not commit: its outputs are not acknowledged
            raise fault
        metrics.STAGE_SECONDS.labels(stage="ack").observe(time.time() - started)
        self._check()

    def close(self) -> None:
        # Bytewax also closes a sink while it unwinds from an error: raising here would
        # abort the process, so a fatal stop leaves the unacknowledged records to recovery
        if self._flush() is None:
            self._check()


class CheckedSink(FixedPartitionedSink[SinkRecord | SinkBatch, None]):
    """Bytewax's ``KafkaSink``, except that no record is lost silently and no batch waits.

    Bytewax's sink ignores delivery reports, so a record that failed after its
    retries would vanish; here the flow stops and recovery produces it again. And
    instead of waiting for the broker after every batch (which holds the worker,
    so every transaction behind it waits too), it waits once per epoch, before the
    epoch's snapshot. Items are ``(key, record)``; the key spreads them over
    :data:`SINK_PARTS` partitions.
    """

    def __init__(self, settings: KafkaSettings, logical: str, tracing: Tracing | None = None
                 ) -> None:
        self._config = {**SINK_DEFAULTS, **settings.client_config()}
        self._topic = settings.topic(logical)
        self._tracing = tracing

    def list_parts(self) -> list[str]:
        """The same partition names on every worker."""
        return [str(i) for i in range(SINK_PARTS)]

    def build_part(self, step_id: str, for_part: str, resume_state: None
                   ) -> _CheckedPartition:
        """A partition writing through the process's shared producer."""
        return _CheckedPartition(_Deliveries.producer(self._config), self._topic, self._tracing)


def sink(settings: KafkaSettings, logical: str, tracing: Tracing | None = None) -> CheckedSink:
    """The sink for one registry topic (its input: ``(key, SinkRecord)`` pairs).

    With ``tracing``, a :class:`~flows.items.SinkBatch`'s traced records get their spans
    and W3C trace headers (:meth:`tracing.spans.Tracing.publish`).
    """
    return CheckedSink(settings, logical, tracing)


def keyed(record: SinkRecord | SinkBatch | Any) -> tuple[str, Any]:
    """``(routing key, record)`` for :class:`CheckedSink` (a batch: by its first key)."""
    if isinstance(record, SinkBatch):
        key = record.records[0][0] if record.records else None
    else:
        key = record[0]
    return (key.decode("utf-8", "replace") if key else ""), record


def write(step_id: str, up: Stream[Any], settings: KafkaSettings, logical: str,
          tracing: Tracing | None = None) -> None:
    """Output step: ``up``'s records (:class:`SinkRecord` or alike) to one registry topic."""
    op.output(step_id, op.map(f"{step_id}-key", up, keyed), sink(settings, logical, tracing))
