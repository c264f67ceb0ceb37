"""Changelogs on real RocksDB: a store restored from its compacted changelog is the store.

The log here is a list per shard with Kafka's compaction (the latest record per key,
tombstones kept or dropped) and a crash that cuts a batch's records short; the
Kafka transport is tested in ``tests/integration/test_changelog_flow.py``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from storekit import CARDS, MERCHANTS, Pipeline, batches, numbered

from state import changelog, keys
from state.card_store import CardStore
from state.changelog import Change
from state.errors import StateError, StateIdentityError
from state.merchant_store import MerchantStore
from state.options import StoreOptions

#: Small enough that rows blobs are pruned and expiry sweeps run within a test.
SMALL = StoreOptions(recent_rows=40, expiry_step=5, txn_horizon_ms=3 * 86_400_000,
                     label_horizon_ms=6 * 86_400_000)


class MemoryLog:
    """One topic: a list of ``(key, value)`` per partition, compacted on request."""

    def __init__(self) -> None:
        self.parts: dict[int, list[Change]] = {}
        self.flushes = 0

    def send(self, shard: int, changes: list[Change]) -> None:
        self.parts.setdefault(shard, []).extend(changes)

    def flush(self) -> None:
        self.flushes += 1

    def read(self, shard: int) -> Iterator[Change]:
        yield from list(self.parts.get(shard, []))

    def describe(self, shard: int) -> str:
        return f"memory log partition {shard}"

    def compact(self, drop_tombstones: bool = False) -> None:
        """Keep the latest record of each key, in log order (Kafka's log cleaner)."""
        for shard, records in self.parts.items():
            last = {k: i for i, (k, _) in enumerate(records)}
            self.parts[shard] = [(k, v) for i, (k, v) in enumerate(records)
                                 if last[k] == i and not (drop_tombstones and v is None)]


def _state(db_items: Iterator[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    return {k: v for k, v in db_items if k != changelog.LOGGED_KEY}


def _pipeline_state(root: Path) -> dict[str, dict[bytes, bytes]]:
    cards = CardStore.open(root, CARDS, SMALL)
    merchants = MerchantStore.open(root, MERCHANTS, SMALL)
    try:
        return {"cards": _state(cards.db.db.items()),
                "merchants": _state(merchants.db.db.items())}
    finally:
        cards.close()
        merchants.close()


def _restored(log: MemoryLog, root: Path, store: type[CardStore] | type[MerchantStore],
              identity: object) -> dict[bytes, bytes]:
    opened = store.open(root, identity, SMALL, changelog=log)  # type: ignore[arg-type]
    try:
        return _state(opened.db.db.items())
    finally:
        opened.db.changelog = None  # read only: no clean mark
        opened.close()


@pytest.mark.parametrize("drop_tombstones", [False, True])
def test_a_store_restored_from_its_compacted_changelog_equals_the_store(
    tmp_path: Path, events_factory, drop_tombstones: bool,
) -> None:
    events = events_factory(5, 700, cards=7, merchants=4)
    cards_log, merchants_log = MemoryLog(), MemoryLog()
    pipe = Pipeline(tmp_path / "live", SMALL, changelogs=(cards_log, merchants_log))
    for n, batch in enumerate(batches(numbered(events), random.Random(4))):
        pipe.feed(batch)
        if n % 17 == 0:
            pipe.checkpoint()
        if n % 29 == 0:
            cards_log.compact(drop_tombstones)
            merchants_log.compact(drop_tombstones)
    pipe.close()
    assert cards_log.flushes and merchants_log.flushes
    live = _pipeline_state(tmp_path / "live")
    deletes = [sum(v is None for _, v in log.parts[0]) for log in (cards_log, merchants_log)]
    assert all(deletes) or drop_tombstones  # expiry and pruning reached the logs as tombstones
    cards_log.compact(drop_tombstones)
    merchants_log.compact(drop_tombstones)
    assert _restored(cards_log, tmp_path / "new", CardStore, CARDS) == live["cards"]
    assert _restored(merchants_log, tmp_path / "new", MerchantStore,
                     MERCHANTS) == live["merchants"]


def test_a_batch_cut_short_is_left_out_and_corrected_on_the_log(
    tmp_path: Path, events_factory,
) -> None:
    events = numbered(events_factory(8, 200, cards=5, merchants=3))
    log = MemoryLog()
    cards = CardStore.open(tmp_path / "live", CARDS, SMALL, changelog=log)
    pipe_batches = batches([e for e in events if not hasattr(e[1], "label_time")],
                           random.Random(1))
    before: dict[bytes, bytes] = {}
    feeder = Pipeline.__new__(Pipeline)  # the card half of the pipeline only
    feeder.cards, feeder.order = cards, None
    for batch in pipe_batches[:-1]:
        _feed_cards(cards, batch)
    before = _state(cards.db.db.items())
    sent = len(log.parts[0])
    _feed_cards(cards, pipe_batches[-1])
    last = log.parts[0][sent:]
    assert last[-1][0] == keys.SEQ_KEY and len(last) > 3
    log.parts[0] = log.parts[0][:sent + len(last) // 2]  # killed while producing it
    cards.db.changelog = None
    cards.db.db.close()  # killed: no clean close
    (tmp_path / "live").rename(tmp_path / "lost")  # and the volume is gone

    restored = _restored(log, tmp_path / "live", CardStore, CARDS)
    assert restored == before  # the last complete batch's state, not half of the next
    log.compact()
    assert _restored(log, tmp_path / "again", CardStore, CARDS) == before


def _feed_cards(store: CardStore, batch: list) -> None:
    import numpy as np

    from state.card_store import CardBatch
    from state.inputs import FeatureInputs
    from state.records import body_digest

    ts = [t for _, t in batch]
    store.process(CardBatch([t.transaction_id for t in ts], [t.card_id for t in ts],
                            np.array([body_digest(t) for t in ts], dtype=np.uint64),
                            np.zeros(len(ts), dtype=np.int32),
                            np.array([o for o, _ in batch], dtype=np.int64),
                            FeatureInputs.of(ts, [t.amount for t in ts])))


def test_a_clean_store_is_kept_and_an_unclean_one_rebuilt(tmp_path: Path,
                                                          events_factory) -> None:
    events = [e for e in numbered(events_factory(9, 120, cards=4)) if
              not hasattr(e[1], "label_time")]
    log = MemoryLog()
    store = CardStore.open(tmp_path, CARDS, SMALL, changelog=log)
    _feed_cards(store, events[:60])
    store.close()  # clean: acknowledged and marked
    sent = len(log.parts[0])
    store = CardStore.open(tmp_path, CARDS, SMALL, changelog=log)
    assert len(log.parts[0]) == sent and store.seq > 0  # kept, nothing re-logged
    assert store.db.rebuilt is None
    _feed_cards(store, events[60:])
    expected = _state(store.db.db.items())
    seq = store.seq
    store.db.changelog = None
    store.db.db.close()  # killed
    log.compact()
    (tmp_path / "cards" / "0" / "CURRENT").unlink()  # and its files are unusable
    store = CardStore.open(tmp_path, CARDS, SMALL, changelog=log)
    assert store.seq == seq and _state(store.db.db.items()) == expected
    rebuilt = store.db.rebuilt  # counted by the flow (fraud_changelog_restores_total)
    assert rebuilt is not None and rebuilt.reason == "missing"
    assert rebuilt.records == len(log.parts[0])
    store.close()
    # behind the recovery snapshot: rebuilt too
    store = CardStore.open(tmp_path, CARDS, SMALL, changelog=log, at_least=seq + 1)
    assert store.seq == seq  # the changelog has no more: the flow's stale check decides
    assert store.db.rebuilt is not None and store.db.rebuilt.reason == "behind"
    store.db.changelog = None
    store.db.db.close()  # killed with its files intact: not closed cleanly
    store = CardStore.open(tmp_path, CARDS, SMALL, changelog=log)
    assert store.db.rebuilt is not None and store.db.rebuilt.reason == "unclean"
    store.close()


def test_an_empty_changelog_gets_the_local_store(tmp_path: Path, events_factory) -> None:
    events = [e for e in numbered(events_factory(10, 100, cards=4)) if
              not hasattr(e[1], "label_time")]
    store = CardStore.open(tmp_path / "a", CARDS, SMALL)  # changelogs turned on later
    _feed_cards(store, events)
    expected = _state(store.db.db.items())
    store.close()
    log = MemoryLog()
    CardStore.open(tmp_path / "a", CARDS, SMALL, changelog=log).close()
    assert log.parts[0][-1][0] == keys.SEQ_KEY
    assert _restored(log, tmp_path / "b", CardStore, CARDS) == expected


def test_a_changelog_of_another_topic_is_refused(tmp_path: Path, events_factory) -> None:
    log = MemoryLog()
    store = CardStore.open(tmp_path / "a", CARDS, SMALL, changelog=log)
    _feed_cards(store, [e for e in numbered(events_factory(1, 20)) if
                        not hasattr(e[1], "label_time")])
    store.close()
    other = CARDS.__class__("cards", 0, 1, "transactions", "id-2")  # topic re-created
    with pytest.raises(StateIdentityError, match="belongs to"):
        CardStore.open(tmp_path / "b", other, SMALL, changelog=log)


def test_a_store_that_ran_without_its_changelog_is_refused_until_the_topic_is_deleted(
    tmp_path: Path, events_factory,
) -> None:
    events = [e for e in numbered(events_factory(12, 120, cards=4)) if
              not hasattr(e[1], "label_time")]
    log = MemoryLog()
    store = CardStore.open(tmp_path, CARDS, SMALL, changelog=log)
    _feed_cards(store, events[:60])
    store.close()
    store = CardStore.open(tmp_path, CARDS, SMALL)  # FRAUD_CHANGELOG=off for a while
    _feed_cards(store, events[60:])
    expected = _state(store.db.db.items())
    store.close()
    with pytest.raises(StateError, match="delete the changelog topics"):
        CardStore.open(tmp_path, CARDS, SMALL, changelog=log)
    fresh = MemoryLog()  # the topics deleted: written from the store
    CardStore.open(tmp_path, CARDS, SMALL, changelog=fresh).close()
    assert _restored(fresh, tmp_path / "elsewhere", CardStore, CARDS) == expected


def test_a_store_killed_ahead_of_its_changelog_is_kept_and_the_changelog_caught_up(
    tmp_path: Path, events_factory,
) -> None:
    """The records of its last batches never reached the broker (a kill within the linger):
    the store is kept, not rebuilt (a rebuild would forget verdicts already published), and
    the changelog is sent what it lacks, so a later restore still equals the store."""
    events = [e for e in numbered(events_factory(9, 120, cards=4)) if
              not hasattr(e[1], "label_time")]
    log = MemoryLog()
    store = CardStore.open(tmp_path, CARDS, SMALL, changelog=log)
    _feed_cards(store, events[:50])
    store.checkpoint()  # acknowledged up to here
    acknowledged = len(log.parts[0])
    for a in range(50, 90, 10):  # more batches, applied and written locally...
        _feed_cards(store, events[a:a + 10])
    expected = _state(store.db.db.items())
    seq = store.seq
    store.db.changelog = None
    store.db.db.close()  # ...then killed before their records were delivered
    del log.parts[0][acknowledged:]
    store = CardStore.open(tmp_path, CARDS, SMALL, changelog=log)
    assert store.seq == seq and _state(store.db.db.items()) == expected  # kept
    assert store.db.rebuilt is not None and store.db.rebuilt.reason == "unclean"
    store.close()
    log.compact(drop_tombstones=True)
    assert _restored(log, tmp_path / "elsewhere", CardStore, CARDS) == expected
