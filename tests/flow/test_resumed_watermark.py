"""A resumed stage forgets which inputs were idle: a backlog built while it was down.

The flow caught up, every partition said it was idle, a snapshot kept that, the
process stopped; transactions were produced on every partition while it was down.
On resume the first partition to deliver must not carry the watermark over the
others' backlog: with the snapshot's idle flags it did (a score on Apache Kafka
differed from the event-time answer, once in a CI run, when one partition's fetch
came in before the others').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flows.card_stage import CardLogic, CardSnapshot
from flows.items import CardRows, CardWork, Decoded, MerchantWork
from flows.merchant_stage import MerchantLogic, MerchantSnapshot
from flows.scorer import MerchantScorer
from stages import Src, decoded
from state.card_store import CardStore
from state.db import StoreIdentity
from state.reorder import EventTimeOrder, Watermark
from state.units import HOUR_MS
from topics.contracts import Label, Transaction

T0 = 1_700_000_000_000
DAY = 24 * HOUR_MS


class Clock:
    """Wall-clock seconds that a test moves on."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _logic(root: Path, resumed: CardSnapshot | None, clock: Clock) -> CardLogic:
    return CardLogic(
        lambda shard, _: CardStore.open(root, StoreIdentity("cards", shard, 2, "t")),
        lambda txns: np.array([t.amount for t in txns]), "t", 2, 1, resumed,
        card_shards=1, clock=clock, grace_s=1.0)


def _work(partition: int, offset: int, event_ms: int) -> CardWork:
    txn = Transaction(transaction_id=f"t{partition}-{offset}", card_id=f"c{partition}",
                      merchant_id="m", amount=1.0, currency="EUR", event_time=event_ms)
    return CardWork(0, partition, event_ms, False,
                    decoded([Src(txn, partition, offset, event_ms, event_ms)]))


def test_a_resumed_card_shard_waits_for_every_partition_it_saw_idle(tmp_path: Path) -> None:
    clock = Clock()
    first = _logic(tmp_path, None, clock)
    first.on_batch([_work(0, 0, T0), _work(1, 0, T0)])
    first.on_batch([CardWork(0, p, T0, True, None) for p in (0, 1)])  # caught up: idle
    assert first.progress() == (T0, True)
    snapshot = first.snapshot()
    first.close()

    resumed = _logic(tmp_path, snapshot, clock)
    out, _ = resumed.on_batch([_work(0, 1, T0 + 5 * DAY)])  # partition 0's backlog first
    (told,) = [w for _, w in out if isinstance(w, MerchantWork)]
    assert (told.progress, told.idle) == (T0, False)  # partition 1 still holds it
    clock.now += 5.0  # partition 1's fetch is slow: far longer than any grace
    assert resumed.progress() == (T0, False)
    out, _ = resumed.on_batch([_work(1, 1, T0 + 5 * DAY)])
    (told,) = [w for _, w in out if isinstance(w, MerchantWork)]
    assert told.progress == T0 + 5 * DAY
    resumed.close()


def test_a_resumed_merchant_stage_waits_for_every_card_shard_it_saw_idle() -> None:
    order: EventTimeOrder[CardRows, Decoded[Label]] = EventTimeOrder()
    order.watermark.expect([("cards", 0), ("cards", 1)])
    for s in (0, 1):
        order.watermark.heard(("cards", s), T0, True)
    assert order.watermark.update() == T0
    clock = Clock()

    def no_scorer(shard: int, resumed: MerchantSnapshot | None) -> MerchantScorer:
        raise AssertionError("not opened before a batch")

    logic = MerchantLogic(no_scorer, MerchantSnapshot(0, None, None, order.frozen()),
                          idle_seconds=1.0, card_shards=2, label_partitions=0, clock=clock)
    restored = logic.snapshot().order
    assert restored is not None and not any(restored.watermark.idle.values())
    restored.watermark.heard(("cards", 0), T0 + 5 * DAY, False, now=clock.now)
    assert restored.watermark.update(now=clock.now + 5.0) == T0  # long after any grace


def test_resumed_clears_idle_flags_and_graces_and_keeps_progress() -> None:
    w = Watermark(grace_s=1.0)
    w.expect(["a", "b"])
    w.heard("a", T0, True)
    w.heard("b", T0 + 1, True)
    w.heard("a", T0 + 2, False, now=1.0)  # b is suspect for a grace
    assert w.suspect_until
    w.resumed()
    assert w.idle == {"a": False, "b": False} and not w.suspect_until
    assert w.progress == {"a": T0 + 2, "b": T0 + 1}
