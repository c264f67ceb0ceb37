"""PartitionStore over real RocksDB: replay safety across crashes, parity with offline replay."""

from __future__ import annotations

import gc
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from state import keys
from state.card import IDLE_EVICT_MS, CardState
from state.codec import STATE_FORMAT_VERSION
from state.errors import ReplayGapError, StateFormatError
from state.merchant import MerchantState
from state.options import StoreOptions
from state.partitioning import murmur2_partition
from state.replay import replay, replay_matrix
from state.store import PartitionStore
from topics.contracts import Label, Transaction

Event = Transaction | Label
Factory = Callable[..., list[Event]]


def feed(store: PartitionStore, items: list[tuple[int, Event]], rng: random.Random,
         out: dict[int, bytes]) -> None:
    """Feed (offset, event) pairs in random-size batches; labels go through apply_labels."""
    i = 0
    while i < len(items):
        j = min(len(items), i + rng.randint(1, 7))
        chunk = items[i:j]
        # keep stream order: split the chunk at labels
        run: list[tuple[int, Transaction]] = []
        for o, e in chunk:
            if isinstance(e, Label):
                if run:
                    store_batch(store, run, out)
                    run = []
                store.apply_label(e)
            else:
                run.append((o, e))
        if run:
            store_batch(store, run, out)
        i = j


def store_batch(store: PartitionStore, run: list[tuple[int, Transaction]],
                out: dict[int, bytes]) -> None:
    vecs = store.process_batch(run)
    for (o, _), v in zip(run, vecs, strict=True):
        if o in out:
            assert out[o] == v.tobytes(), f"offset {o} re-emitted a different vector"
        out[o] = v.tobytes()


def contents(path: Path, partition: int) -> dict[bytes, bytes]:
    store = PartitionStore.open(path, partition)
    items = {k: v for k, v in store._db.items()}  # noqa: SLF001 - test reads the raw store
    store.close()
    return items


def numbered(events: list[Event]) -> list[tuple[int, Event]]:
    """Transactions get consecutive offsets; a label carries the offset of the next transaction."""
    items, offset = [], 0
    for e in events:
        items.append((offset, e))
        if isinstance(e, Transaction):
            offset += 1
    return items


def test_crash_and_replay_matches_clean_pass(tmp_path: Path, events_factory: Factory) -> None:
    items = numbered(events_factory(3, 260))
    clean: dict[int, bytes] = {}
    store = PartitionStore.open(tmp_path / "clean", 0)
    feed(store, items, random.Random(0), clean)
    store.close()
    clean_contents = contents(tmp_path / "clean", 0)
    rng = random.Random(1)
    for trial in range(30):
        cut = rng.randint(0, len(items))
        resume = rng.randint(0, cut)
        root = tmp_path / f"crash{trial}"
        got: dict[int, bytes] = {}
        store = PartitionStore.open(root, 0)
        feed(store, items[:cut], rng, got)
        del store  # crash: no close, no flush; only the WAL survives
        gc.collect()
        store = PartitionStore.open(root, 0)
        feed(store, items[resume:], rng, got)
        store.close()
        assert got == clean, f"cut={cut} resume={resume}"
        assert contents(root, 0) == clean_contents


def test_replayed_offset_returns_first_output_and_changes_nothing(
    tmp_path: Path, events_factory: Factory
) -> None:
    txns = [e for e in events_factory(5, 40) if isinstance(e, Transaction)]
    store = PartitionStore.open(tmp_path, 2)
    first = store.process_batch(list(enumerate(txns)))
    before = {k: v for k, v in store._db.items()}  # noqa: SLF001
    other = txns[::-1]  # different payloads at the same offsets must be ignored
    again = store.process_batch(list(enumerate(other)))
    assert np.array_equal(first, again)
    assert {k: v for k, v in store._db.items()} == before  # noqa: SLF001
    assert store.last_offset == len(txns) - 1
    store.close()
    assert (tmp_path / "2").is_dir()


def test_stream_and_offline_replay_are_bit_identical(
    tmp_path: Path, events_factory: Factory
) -> None:
    events = events_factory(11, 500, cards=9, merchants=4)
    n_parts = 3
    _, expected = replay_matrix(events, n_partitions=n_parts)
    stores = [PartitionStore.open(tmp_path, p) for p in range(n_parts)]
    offsets = [0] * n_parts
    got: list[np.ndarray] = []
    rng = random.Random(2)
    pending: list[tuple[int, int, Transaction]] = []  # (partition, offset, txn) in stream order

    def flush() -> None:
        for p in range(n_parts):
            run = [(o, t) for q, o, t in pending if q == p]
            if run:
                rows = iter(stores[p].process_batch(run))
                for i, (q, _, _) in enumerate(pending):
                    if q == p:
                        slots[i] = next(rows)
        got.extend(slots)

    for e in events:
        p = murmur2_partition(e.card_id, n_parts)
        if isinstance(e, Label):
            slots = [np.empty(0)] * len(pending)
            flush()
            pending = []
            stores[p].apply_label(e)
            continue
        pending.append((p, offsets[p], e))
        offsets[p] += 1
        if len(pending) >= rng.randint(1, 20):
            slots = [np.empty(0)] * len(pending)
            flush()
            pending = []
    slots = [np.empty(0)] * len(pending)
    flush()
    for s in stores:
        s.close()
    assert np.stack(got).tobytes() == expected.tobytes()


def test_labels_are_idempotent_and_first_wins(tmp_path: Path) -> None:
    t0 = 1_700_000_000_000
    fraud = Label(transaction_id="x", card_id="c", merchant_id="m", is_fraud=True, label_time=t0)
    legit = Label(transaction_id="x", card_id="c", merchant_id="m", is_fraud=False, label_time=t0)
    store = PartitionStore.open(tmp_path, 0)
    store.apply_labels([fraud, fraud, legit])
    store.apply_label(fraud)
    raw = store._db.get(keys.merchant_key("m"))  # noqa: SLF001
    assert MerchantState.decode(raw).fraud == {t0 // 3_600_000: 1}
    store.close()


def test_output_retention_gap_is_a_typed_error(tmp_path: Path, events_factory: Factory) -> None:
    txns = [e for e in events_factory(6, 60) if isinstance(e, Transaction)]
    store = PartitionStore.open(tmp_path, 0, StoreOptions(output_retention=8))
    last = [store.process(offset, txn) for offset, txn in enumerate(txns)][-1]
    assert np.array_equal(store.process(len(txns) - 1, txns[0]), last)
    with pytest.raises(ReplayGapError, match="output_retention"):
        store.process(0, txns[0])
    store.close()


def test_format_mismatch_is_refused_with_a_remedy(tmp_path: Path) -> None:
    PartitionStore.open(tmp_path, 0).close()
    store = PartitionStore.open(tmp_path, 0)
    store._db.put(keys.FORMAT_KEY, b"state0/features-v0")  # noqa: SLF001
    store.close()
    with pytest.raises(StateFormatError, match="delete the state directory"):
        PartitionStore.open(tmp_path, 0)
    with pytest.raises(StateFormatError, match="delete the state directory"):
        CardState.decode(bytes([STATE_FORMAT_VERSION + 1]) + b"\0" * 40)


def test_sweep_drops_idle_keys_without_changing_features(
    tmp_path: Path, events_factory: Factory
) -> None:
    txns = [e for e in events_factory(8, 80) if isinstance(e, Transaction)]
    last = max(t.event_time for t in txns)
    later = last + IDLE_EVICT_MS + 3 * 86_400_000
    probe = [Transaction(transaction_id=f"p{i}", card_id=t.card_id, merchant_id=t.merchant_id,
                         amount=10.0, currency="EUR", event_time=later)
             for i, t in enumerate(txns[:5])]
    results = []
    for sweep in (False, True):
        store = PartitionStore.open(tmp_path / str(sweep), 0)
        store.process_batch(list(enumerate(txns)))
        if sweep:
            assert store.sweep(later) > 0
            assert not any(k.startswith(keys.CARD) for k in store._db.keys())  # noqa: SIM118
        results.append(store.process_batch([(len(txns) + i, p) for i, p in enumerate(probe)]))
        store.close()
    assert np.array_equal(results[0], results[1])


@pytest.mark.parametrize("seed", range(25))
def test_state_bytes_round_trip(seed: int, events_factory: Factory) -> None:
    events = events_factory(seed, 40, cards=1, merchants=2)
    card, merchant = CardState(), MerchantState()
    for e in events:
        if isinstance(e, Label):
            if e.is_fraud:
                merchant.add_fraud(e.label_time)
            continue
        card.update(e)
        merchant.update(e)
        assert CardState.decode(card.encode()).encode() == card.encode()
        assert MerchantState.decode(merchant.encode()).encode() == merchant.encode()
    probe = next(e for e in events if isinstance(e, Transaction))
    assert CardState.decode(card.encode()).features(probe) == card.features(probe)


def test_replay_yields_every_transaction_in_order(events_factory: Factory) -> None:
    events = events_factory(4, 100)
    txns = [e for e in events if isinstance(e, Transaction)]
    assert [t for t, _ in replay(events)] == txns


def test_failed_batch_leaves_no_trace(
    tmp_path: Path, events_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import state.store as store_module

    txns = [e for e in events_factory(9, 60, merchants=2) if isinstance(e, Transaction)]
    head, tail = list(enumerate(txns[:15])), list(enumerate(txns[15:], 15))
    good, bad = PartitionStore.open(tmp_path / "good", 0), PartitionStore.open(tmp_path / "bad", 0)
    good.process_batch(head)
    bad.process_batch(head)
    real, calls = store_module.step, [0]

    def flaky(card: CardState, merchant: MerchantState, txn: Transaction) -> list[float]:
        calls[0] += 1
        if calls[0] == 4:
            raise RuntimeError("boom")
        return real(card, merchant, txn)

    monkeypatch.setattr(store_module, "step", flaky)
    with pytest.raises(RuntimeError):
        bad.process_batch(tail)  # merchants were mutated in memory before the failure
    monkeypatch.setattr(store_module, "step", real)
    assert bad.last_offset == good.last_offset == 14
    assert good.process_batch(tail).tobytes() == bad.process_batch(tail).tobytes()
    good.close()
    bad.close()
