"""The demo's traffic: the world's transactions and labels, produced the way payment systems would.

A :class:`Traffic` thread produces the world's events in time order: the
warm-up (the first part, to build card and merchant state) as fast as the
broker takes it, then waits until the flow has answered it, then the live part
paced at ``rate`` transactions per second (a token bucket). Labels go to
``labels`` at their label time in the same order; one malformed message per
:data:`INVALID_EVERY` transactions goes to ``transactions`` too, to show dead
letters. Every record is keyed like the real producers key it.
"""

from __future__ import annotations

import threading
import time

import msgspec
from confluent_kafka import Producer

from demo.verdicts import Tally
from demo.world import DemoWorld
from devkit.pacing import TokenBucket
from topics.contracts import Label, Transaction
from topics.producer import PACED_PRODUCER, PRODUCER_DEFAULTS, produce_waiting
from topics.settings import KafkaSettings
from training.history import events

#: The simulated gateway batches its authorisations like any paced Kafka producer under load.
TRAFFIC_PRODUCER = PACED_PRODUCER

INVALID_EVERY = 997  # one malformed message per this many transactions
#: Longest wait for the warm-up's verdicts before the live part starts anyway (s).
WARM_UP_WAIT_S = 300.0
_encode = msgspec.json.Encoder().encode


def invalid_message(n: int) -> bytes:
    """The ``n``-th malformed transaction: a contract violation, not JSON, or a JSON array.

    >>> invalid_message(1)
    b'not json 1'
    """
    kinds = (b'{"transaction_id": "broken-%d", "amount": -1}', b"not json %d", b'["array", %d]')
    return kinds[n % len(kinds)] % n


class Traffic(threading.Thread):
    """Produce ``world`` (warm-up, then live at ``rate``/s), counting into ``tally``.

    ``phase`` is ``warm-up``, ``settling`` (waiting for the warm-up's verdicts),
    ``live`` or ``done``; a failure is kept in ``error`` and ends the thread.
    """

    def __init__(self, settings: KafkaSettings, world: DemoWorld, rate: float,
                 tally: Tally) -> None:
        super().__init__(name="traffic", daemon=True)
        self.settings, self.world, self.rate, self.tally = settings, world, rate, tally
        self.phase = "warm-up"
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.warm_up_verdicts_missing = 0  # when the wait for them timed out

    def run(self) -> None:
        """Produce every event unless stopped; flush before ending."""
        try:
            self._produce()
            self.phase = "done"
        except BaseException as exc:  # reported by the demo's main thread
            self.error = exc

    def _produce(self) -> None:
        settings, tally = self.settings, self.tally
        producer = Producer(settings.client_config(**{**PRODUCER_DEFAULTS, **TRAFFIC_PRODUCER}))
        txn_topic, label_topic = settings.topic("transactions"), settings.topic("labels")
        bucket: TokenBucket | None = None
        for event in events(self.world.history):
            if self.stopping.is_set():
                break
            if isinstance(event, Label):
                produce_waiting(producer, label_topic, _encode(event),
                                event.transaction_id.encode())  # fmt: skip
                continue
            assert isinstance(event, Transaction)
            if bucket is None and tally.produced >= self.world.live_from:
                self._settle(producer)
                bucket = TokenBucket(self.rate, burst=max(1.0, self.rate / 50))
                tally.live_start = time.time()
                self.phase = "live"
            if bucket is not None:
                bucket.wait()
            key = event.card_id.encode()
            produce_waiting(producer, txn_topic, _encode(event), key)
            tally.produced += 1
            if tally.produced % INVALID_EVERY == 0:
                produce_waiting(producer, txn_topic, invalid_message(tally.produced), key)
                tally.invalid_sent += 1
            producer.poll(0)
        producer.flush(30)

    def _settle(self, producer: Producer) -> None:
        """Deliver the warm-up and wait until the flow has a verdict for each of it."""
        self.phase = "settling"
        producer.flush(30)
        deadline = time.monotonic() + WARM_UP_WAIT_S
        while (self.tally.verdicts < self.world.live_from and time.monotonic() < deadline
               and not self.stopping.is_set()):
            time.sleep(0.1)
        self.warm_up_verdicts_missing = max(0, self.world.live_from - self.tally.verdicts)
