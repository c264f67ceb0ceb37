"""Start-up: the process's list table read from the compacted ``lists`` topic to its end.

The table (:class:`rules.list_table.ListTable`) is the GlobalKTable of the flow:
one per process, shared by every merchant shard's rule book, never in a recovery
snapshot. Before scoring begins, :func:`load_lists` reads ``rules`` and ``lists``
from the beginning to the end each had when the read started, with one plain
consumer (``assign``, nothing committed; the flow's group id only because librdkafka
looks up its coordinator), and applies the rules, then the lists, through
a rule book of its own that shares the table: the same checks as in the stream
(signatures, maker-checker, caps, PANs). The ``rules`` are read only to judge
which list changes loosen decisions (a list an active approve or decline rule
uses), with the rules in force now; that book is then dropped (the merchant
shards' books have their rules from their snapshots and the ``rules`` source).

A record refused here is kept to be reported (dead letter, metric, log) by the
first rule book the flow's ``lists`` source hands it to again
(:meth:`~rules.list_table.ListTable.defer`); every other record the source
re-delivers at or below the loaded offset is a no-op.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence

from flows import metrics
from rules.book import Message, Refused, RuleBook
from rules.cost import CostBudget
from rules.list_table import ListTable
from rules.signing import TrustedKeys
from topics.errors import BrokerError
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)
#: One record of a topic: (offset, key, value; None: a tombstone).
Record = tuple[int, bytes | None, bytes | None]
#: Seconds without any progress after which the read gives up (the flow does not start).
STALL_SECONDS = 60.0


def read_to_end(settings: KafkaSettings, topics: Sequence[str],
                stall_s: float = STALL_SECONDS) -> dict[str, list[Record]]:
    """Every record of each of ``topics`` (offset, key, value), until each partition's end.

    One consumer reads them all at once (a start pays one connection and one wait for
    the ends, not one per topic). The end is the broker's end-of-partition notice (not
    the high watermark: the embedded broker's are not record offsets). Raises
    :class:`BrokerError` (what to check) if a topic is missing or unreadable, or if
    neither a record nor an end arrives for ``stall_s`` seconds.
    """
    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    options: dict[str, str | int | bool] = {
        # required, never joined (assign()), but librdkafka looks up its coordinator: the
        # flow's own input group (FRAUD_KAFKA_GROUP_ID), the one its ACLs grant (docs/kafka-acls.md)
        "group.id": str(settings.client_options.get("group.id", "BYTEWAX_IGNORED")),
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 50,
        "log.connection.close": False,
    }
    consumer = Consumer(settings.client_config(**options))
    where = f"{', '.join(map(repr, topics))} on {settings.bootstrap_servers}"
    found: dict[str, list[Record]] = {t: [] for t in topics}
    try:
        try:
            open_: set[tuple[str, int]] = set()
            for topic in topics:
                meta = consumer.list_topics(topic, timeout=min(10.0, stall_s)).topics.get(topic)
                if meta is None or meta.error is not None or not meta.partitions:
                    raise BrokerError(
                        f"topic {topic!r} on {settings.bootstrap_servers} does not exist or "
                        f"cannot be described ({meta.error if meta is not None else 'absent'})")
                open_ |= {(topic, p) for p in meta.partitions}
            consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in sorted(open_)])
            progress = time.monotonic()
            while open_:
                # consume() waits its whole timeout unless 1,000 records come: keep it short
                # so the ends are seen as they arrive (a 0.5 s timeout cost each start 0.5 s)
                batch = consumer.consume(num_messages=1000, timeout=0.05)
                if not batch and time.monotonic() - progress > stall_s:
                    raise BrokerError(f"nothing read from {where} for {stall_s:.0f} s before "
                                      f"the end of partitions {sorted(open_)}")
                for msg in batch:
                    progress = time.monotonic()
                    err = msg.error()
                    at = (str(msg.topic()), int(msg.partition() or 0))
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            open_.discard(at)
                            continue
                        raise BrokerError(f"reading {where}: {err.str()}")
                    offset = msg.offset()
                    assert offset is not None  # set on every record
                    if at in open_:  # past its end: the flow source's
                        found[at[0]].append((offset, msg.key(), msg.value()))
        except KafkaException as exc:
            raise BrokerError(f"reading {where}: {exc}") from exc
    finally:
        consumer.close()
    return found


Records = Iterable[Record]


def fill(table: ListTable, rules: Records, lists: Records, trust: TrustedKeys,
         budget: CostBudget) -> tuple[int, Counter[str]]:
    """Apply ``rules`` then ``lists`` records (offset, key, value) to ``table``; no IO.

    Returns the ``lists`` records read and the refused ones by error class (each
    kept in the table for its report, :meth:`~rules.list_table.ListTable.defer`).
    """
    book = RuleBook(trust=trust, budget=budget, table=table)
    for offset, key, value in rules:
        book.apply(Message("rules", key, value, offset))
    records = 0
    refused: Counter[str] = Counter()
    for offset, key, value in lists:
        records += 1
        result = book.apply(Message("lists", key, value, offset))
        if isinstance(result, Refused):
            refused[result.error_class] += 1
            table.defer(offset, result)
    return records, refused


def load_lists(settings: KafkaSettings, trust: TrustedKeys, budget: CostBudget,
               stall_s: float = STALL_SECONDS) -> ListTable:
    """The process's table, loaded from ``lists`` (judged with the ``rules`` now in force).

    Logs the entries loaded and the seconds taken; raises :class:`BrokerError` if
    either topic cannot be read to its end (the flow then does not start).
    """
    started = time.monotonic()
    table = ListTable()
    lists_topic = settings.topic("lists")
    try:
        rules_topic = settings.topic("rules")
        read = read_to_end(settings, [rules_topic, lists_topic], stall_s)
        records, refused = fill(table, read[rules_topic], read[lists_topic], trust, budget)
    except BrokerError as exc:
        raise BrokerError(
            f"cannot load the lists before scoring: {exc}. The flow reads the rules and lists "
            "topics to their end at start-up (its principal needs Read and Describe on both); "
            "check the broker and the ACLs, then start again") from exc
    took = time.monotonic() - started
    metrics.LISTS_LOAD_SECONDS.set(took)
    metrics.LIST_ENTRIES.set(table.index.size())
    log.info("lists: %d entries loaded from %d records of %s (to offset %d) in %.1f s%s",
             table.index.size(), records, lists_topic, table.offset, took,
             f"; {sum(refused.values())} refused ({dict(refused)}), dead-lettered if the "
             "flow's source reads them again" if refused else "")
    return table
