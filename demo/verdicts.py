"""Read the flow's verdicts and dead letters and count what the live view shows.

A :class:`VerdictReader` thread consumes ``predictions`` and ``dead-letter`` by
partition assignment (no consumer group) and writes a :class:`Tally`, which the
view reads: decisions, fraud caught and missed against the simulator's truth,
rule hits, dead letters by reason, and the end-to-end latency of each live
verdict (its transaction's Kafka timestamp to the moment the demo consumed it).
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
import time
from collections import Counter

import msgspec
import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition

from topics.admin import topic_partitions
from topics.contracts import DeadLetter, Prediction
from topics.settings import ConfigValue, KafkaSettings


@dataclasses.dataclass
class RuleTally:
    """Hits of one rule over the verdicts read; ``fraud`` of them were fraud (simulator truth)."""

    mode: str
    action: str
    hits: int = 0
    fraud: int = 0


@dataclasses.dataclass
class Tally:
    """What the live view shows; written by the reader thread, read by the view.

    Latencies are in ms; ``live_seen_at`` are ``time.time()`` seconds at which each
    live verdict was consumed (ascending), parallel to ``live_latency_ms``.
    """

    produced: int = 0
    invalid_sent: int = 0
    verdicts: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = dataclasses.field(default_factory=Counter)  # by error class
    other_dead_letters: int = 0  # from other topics than transactions (rules, lists, labels)
    decisions: Counter[str] = dataclasses.field(default_factory=Counter)
    fraud_caught: int = 0
    fraud_missed: int = 0
    false_alarms: int = 0
    rule_hits: dict[str, RuleTally] = dataclasses.field(default_factory=dict)
    changed_by_rules: int = 0  # verdicts whose decision a rule changed (model_decision set)
    rule_set_versions: Counter[str] = dataclasses.field(default_factory=Counter)
    live_start: float = 0.0  # time.time() when the live phase began; 0 before
    live_latency_ms: list[float] = dataclasses.field(default_factory=list)
    live_seen_at: list[float] = dataclasses.field(default_factory=list)

    @property
    def transaction_dead_letters(self) -> int:
        """Dead letters of the ``transactions`` topic (the invalid messages the demo sent)."""
        return sum(self.dead_letters.values())

    def latency(self, since: float = 0.0, until: float | None = None) -> np.ndarray:
        """Live latencies (ms) of verdicts consumed in ``[since, until)`` (wall-clock seconds)."""
        seen = self.live_seen_at
        n = min(len(seen), len(self.live_latency_ms))  # the reader may be mid-append
        lo = bisect.bisect_left(seen, since, 0, n)
        hi = n if until is None else bisect.bisect_left(seen, until, 0, n)
        return np.asarray(self.live_latency_ms[lo:hi], dtype=np.float64)


def percentiles(values: np.ndarray, *qs: float) -> list[float | None]:
    """The ``qs`` (0..100) percentiles of ``values``, or None for each when it is empty.

    >>> percentiles(np.arange(1.0, 101.0), 50, 99)
    [50.5, 99.01]
    >>> percentiles(np.array([]), 50)
    [None]
    """
    if values.size == 0:
        return [None for _ in qs]
    return [round(float(v), 6) for v in np.percentile(values, qs)]


class VerdictReader(threading.Thread):
    """Consume predictions and dead letters from offset 0 into a :class:`Tally` until stopped."""

    def __init__(self, settings: KafkaSettings, truth: dict[str, bool], tally: Tally) -> None:
        super().__init__(name="verdict-reader", daemon=True)
        self.settings, self.truth, self.tally = settings, truth, tally
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self._seen: set[str] = set()
        self._transactions = settings.topic("transactions")

    def run(self) -> None:
        """Consume until ``stopping`` is set; a failure is kept in ``error`` for the demo."""
        try:
            self._consume()
        except BaseException as exc:  # the demo reports it; a thread cannot raise into it
            self.error = exc

    def _consume(self) -> None:
        options: dict[str, ConfigValue] = {
            "group.id": "fraudstream-demo", "enable.auto.commit": False,
            "fetch.wait.max.ms": 20, "log.connection.close": False,
        }  # fmt: skip
        consumer = Consumer(self.settings.client_config(**options))
        predictions = self.settings.topic("predictions")
        dead = self.settings.topic("dead-letter")
        counts = topic_partitions(self.settings)
        consumer.assign([TopicPartition(t, p, 0) for t in (predictions, dead)
                         for p in range(counts.get(t, 0))])  # fmt: skip
        decode_prediction = msgspec.json.Decoder(Prediction).decode
        decode_dead = msgspec.json.Decoder(DeadLetter).decode
        try:
            while not self.stopping.is_set():
                for msg in consumer.consume(1000, 0.1):
                    error, value = msg.error(), msg.value()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            raise RuntimeError(f"reading verdicts: {error.str()}")
                    elif value is None:
                        continue
                    elif msg.topic() == dead:
                        self._dead_letter(decode_dead(value))
                    else:
                        self._verdict(decode_prediction(value), time.time())
        finally:
            consumer.close()

    def _dead_letter(self, letter: DeadLetter) -> None:
        if letter.source_topic == self._transactions:
            self.tally.dead_letters[letter.error_class] += 1
        else:
            self.tally.other_dead_letters += 1

    def _verdict(self, p: Prediction, now: float) -> None:
        t = self.tally
        if p.transaction_id in self._seen:
            t.duplicates += 1
            return
        self._seen.add(p.transaction_id)
        t.verdicts += 1
        t.decisions[p.decision] += 1
        fraud = self.truth.get(p.transaction_id, False)
        flagged = p.decision != "approve"
        if fraud:
            if flagged:
                t.fraud_caught += 1
            else:
                t.fraud_missed += 1
        elif flagged:
            t.false_alarms += 1
        for hit in p.rule_hits:
            rule = t.rule_hits.get(hit.rule_id)
            if rule is None:
                rule = t.rule_hits[hit.rule_id] = RuleTally(hit.mode, hit.action)
            rule.hits += 1
            rule.fraud += fraud
        if p.model_decision is not None:
            t.changed_by_rules += 1
        if p.rule_set_version:
            t.rule_set_versions[p.rule_set_version] += 1
        if t.live_start and p.ingest_time >= t.live_start * 1000:
            t.live_latency_ms.append(now * 1000 - p.ingest_time)
            t.live_seen_at.append(now)
