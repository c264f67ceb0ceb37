"""Card and merchant stores on real RocksDB: parity with offline replay, crashes, repeats."""

from __future__ import annotations

import dataclasses
import gc
import random
from pathlib import Path

import numpy as np
import pytest
from storekit import CARDS, MERCHANTS, Factory, Pipeline, batches, eur, numbered

from state import card_store as cs
from state import merchant_store as ms
from state.card_store import CardBatch, CardStore
from state.db import StoreIdentity
from state.errors import StateFormatError, StateIdentityError
from state.inputs import FeatureInputs
from state.merchant_store import MerchantStore
from state.options import DAY_MS, StoreOptions
from state.records import body_digest
from state.replay import ReplayStats, replay_matrix
from topics.contracts import Label, Transaction


def contents(root: Path) -> dict[bytes, bytes]:
    """Card and merchant states (what a crash must not change)."""
    p = Pipeline(root)
    found = {k: v for k, v in [*p.cards.db.db.items(), *p.merchants.db.db.items()]
             if k[:1] in (b"c", b"m")}
    p.close()
    return found


def test_stream_and_offline_replay_are_bit_identical(
    tmp_path: Path, events_factory: Factory
) -> None:
    events = events_factory(11, 600, cards=9, merchants=4)
    pipe = Pipeline(tmp_path, ordered=True)
    for batch in batches(numbered(events), random.Random(2)):
        pipe.feed(batch)
    pipe.drain()
    pipe.close()
    txns, matrix = replay_matrix(events, amount_of=eur)
    assert len(txns) == len(pipe.outputs)
    for txn, row in zip(txns, matrix, strict=True):
        assert pipe.outputs[txn.transaction_id] == [row.tobytes()], txn.transaction_id


def test_crash_between_or_inside_stages_changes_no_output_and_no_state(
    tmp_path: Path, events_factory: Factory
) -> None:
    items = numbered(events_factory(3, 300, cards=5, merchants=3))
    rng = random.Random(0)
    plan = batches(items, rng)
    clean = Pipeline(tmp_path / "clean")
    for batch in plan:
        clean.checkpoint()
        clean.feed(batch)
    clean.close()
    clean_contents = contents(tmp_path / "clean")
    for trial in range(12):
        root = tmp_path / f"crash{trial}"
        cut = rng.randint(1, len(plan))
        snap = rng.randint(0, cut - 1)  # the last recovery snapshot: before batch `snap`
        pipe = Pipeline(root)
        seqs = (0, 0)
        for k, batch in enumerate(plan[:cut]):
            if k <= snap:
                seqs = pipe.checkpoint()
            pipe.feed(batch, crash_between=k == cut - 1 and trial % 2 == 0)
        got = pipe.outputs
        del pipe  # crash: no close, no flush; only the WAL survives
        gc.collect()
        pipe = Pipeline(root)
        assert pipe.cards.seq >= seqs[0] and pipe.merchants.seq >= seqs[1]
        pipe.merchants.resume(seqs[1])
        pipe.outputs = {t: list(v) for t, v in got.items()}
        for batch in plan[snap:]:
            pipe.checkpoint()
            pipe.feed(batch)
        pipe.close()
        for tid, outs in clean.outputs.items():
            assert set(pipe.outputs[tid]) == set(outs), (trial, tid)
        assert ms.REPLAY in pipe.kinds or snap == cut - 1 or trial % 2 == 0
        assert contents(root) == clean_contents, trial


def test_redelivery_re_emits_the_first_bytes_and_changes_nothing(tmp_path: Path) -> None:
    t0 = 1_800_000_000_000
    txns = [Transaction(transaction_id=f"t{i}", card_id="c", merchant_id="m", amount=1.0,
                        currency="EUR", event_time=t0 + i * 60_000) for i in range(4)]
    pipe = Pipeline(tmp_path)
    pipe.feed(list(enumerate(txns[:2])))
    before = contents_of(pipe)
    pipe.feed([(10, txns[1]), (11, txns[0])])  # re-delivered at new offsets
    assert contents_of(pipe) == before
    assert pipe.kinds[2:] == [ms.REPEAT, ms.REPEAT]
    pipe.feed([(12, txns[2]), (13, txns[2])])  # an immediate re-delivery in one batch
    assert pipe.kinds[4:] == [ms.FRESH, ms.REPEAT]
    assert len(set(pipe.outputs["t2"])) == 1
    # the third transaction sees two before it, not four
    row = np.frombuffer(pipe.outputs["t2"][0], dtype=np.float32)
    from state.spec import INDEX
    assert row[INDEX["card_count_10m"]] == 2.0
    pipe.close()


def test_same_id_with_another_body_is_a_conflict_naming_the_first(tmp_path: Path) -> None:
    t0 = 1_800_000_000_000
    a = Transaction(transaction_id="t1", card_id="c", merchant_id="m", amount=1.0,
                    currency="EUR", event_time=t0)
    b = Transaction(transaction_id="t1", card_id="c", merchant_id="m", amount=2.0,
                    currency="EUR", event_time=t0)
    store = CardStore.open(tmp_path, CARDS)

    def one(t: Transaction, partition: int, offset: int) -> cs.CardOutcome:
        return store.process(CardBatch(
            [t.transaction_id], [t.card_id], np.array([body_digest(t)], np.uint64),
            np.array([partition], np.int32), np.array([offset]),
            FeatureInputs.of([t], [t.amount])))

    first, again = one(a, 3, 40), one(b, 5, 77)
    assert first.kind[0] == cs.FRESH and again.kind[0] == cs.CONFLICT
    assert (again.first_partition[0], again.first_offset[0]) == (3, 40)
    store.close()


def test_a_label_read_before_its_transaction_waits_and_joins(tmp_path: Path) -> None:
    t0 = 1_800_000_000_000
    txn = Transaction(transaction_id="t1", card_id="c", merchant_id="m", amount=5.0,
                      currency="EUR", event_time=t0)
    label = Label(transaction_id="t1", card_id="c", merchant_id="m", is_fraud=True,
                  label_time=t0 + DAY_MS)
    pipe = Pipeline(tmp_path)
    pipe.feed([(0, label)])
    assert pipe.joins == [] and pipe.merchants.unknown_labels == 1  # not scored yet: waits
    pipe.feed([(1, txn)])
    assert len(pipe.joins) == 1 and pipe.joins[0].verdict is not None
    assert pipe.joins[0].verdict.merchant_id == "m"
    pipe.feed([(2, label)])  # the same label again: nothing new
    assert len(pipe.joins) == 1 and pipe.merchants.unknown_labels == 1
    pipe.close()


def test_ids_are_forgotten_after_the_horizon(tmp_path: Path) -> None:
    opts = StoreOptions(txn_horizon_ms=2 * DAY_MS, expiry_step=3)
    t0 = 1_800_000_000_000
    txns = [Transaction(transaction_id=f"t{i}", card_id="c", merchant_id="m", amount=1.0,
                        currency="EUR", event_time=t0 + i * DAY_MS // 2) for i in range(12)]
    pipe = Pipeline(tmp_path, opts)
    for i, t in enumerate(txns):
        pipe.checkpoint()
        pipe.feed([(i, t)])
    pipe.checkpoint()
    pipe.feed([(99, txns[0])])  # 5.5 days later: the first id has expired, so it is new
    assert pipe.kinds[-1] == ms.FRESH
    pipe.feed([(100, txns[-1])])  # the newest is still remembered
    assert pipe.kinds[-1] == ms.REPEAT
    pipe.close()


def test_identity_and_format_are_checked(tmp_path: Path) -> None:
    CardStore.open(tmp_path, CARDS).close()
    other = StoreIdentity("cards", 0, 1, "transactions", "id-2")  # topic re-created
    with pytest.raises(StateIdentityError, match="id-1"):
        CardStore.open(tmp_path, other)
    import rocksdict

    db = rocksdict.Rdict(str(tmp_path / "cards" / "0"), StoreOptions().rocksdb())
    db.put(b"~meta/format", b"state3/features-v1")
    db.close()
    with pytest.raises(StateFormatError, match="delete the state directory"):
        CardStore.open(tmp_path, CARDS)


def test_a_merchant_store_of_the_per_transaction_verdict_layout_is_refused(
        tmp_path: Path) -> None:
    """Verdicts moved from ``v<id>`` records into one blob per batch: an older merchant store
    is refused with what to do, never read as if it had no verdicts (every repeat rescored)."""
    import rocksdict

    MerchantStore.open(tmp_path, MERCHANTS).close()
    path = tmp_path / "merchants" / "0"
    db = rocksdict.Rdict(str(path), StoreOptions().rocksdb())
    stamp = bytes(db[b"~meta/format"])
    assert stamp.endswith(b"/records-2")
    db.put(b"~meta/format", stamp.removesuffix(b"/records-2"))
    db.close()
    with pytest.raises(StateFormatError, match="delete the state directory and the recovery"):
        MerchantStore.open(tmp_path, MERCHANTS)


def test_a_changed_shard_count_is_named_as_such(tmp_path: Path) -> None:
    MerchantStore.open(tmp_path, MERCHANTS).close()
    fewer = dataclasses.replace(MERCHANTS, shards=4)
    with pytest.raises(StateIdentityError, match=r"made with 1 merchants shards, this run has 4: "
                                                 r"FRAUD_MERCHANT_SHARDS changed"):
        MerchantStore.open(tmp_path, fewer)


def test_replay_counts_repeats_and_conflicts(events_factory: Factory) -> None:
    events = events_factory(4, 50)
    txns = [e for e in events if isinstance(e, Transaction)]
    dup = txns[3]
    conflict = Transaction(**{**{f: getattr(dup, f) for f in dup.__struct_fields__},
                              "amount": dup.amount + 1})
    stats = ReplayStats()
    got, _ = replay_matrix([*events, dup, conflict], amount_of=eur, stats=stats)
    assert len(got) == len(txns) and (stats.repeats, stats.conflicts) == (1, 1)


def contents_of(pipe: Pipeline) -> dict[bytes, bytes]:
    return {**dict(pipe.cards.db.db.items()), **dict(pipe.merchants.db.db.items())}


def test_a_foreign_state_directory_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from state.db import check_state_dir

    CardStore.open(tmp_path, CARDS).close()
    assert check_state_dir(tmp_path, [CARDS]) == 1
    assert check_state_dir(tmp_path / "empty", [CARDS]) == 0
    recreated = StoreIdentity("cards", 0, 1, "transactions", "id-2")
    with pytest.raises(StateIdentityError, match="id-1"):
        check_state_dir(tmp_path, [recreated])
    # the check stamps nothing: a new store is still stamped on first open
    assert check_state_dir(tmp_path, [StoreIdentity("merchants", 0, 8, "t", "x")]) == 0
    assert not (tmp_path / "merchants").exists()


def test_state_built_with_another_rate_table_is_refused(tmp_path: Path) -> None:
    from state.db import check_state_dir

    eur_a = dataclasses.replace(CARDS, amounts="EUR/table-a")
    CardStore.open(tmp_path, eur_a).close()
    with pytest.raises(StateIdentityError, match="EUR/table-a.*EUR/table-b"):
        check_state_dir(tmp_path, [dataclasses.replace(CARDS, amounts="EUR/table-b")])
    with pytest.raises(StateIdentityError, match="mix two scales"):
        CardStore.open(tmp_path, dataclasses.replace(CARDS, amounts="USD/table-a"))


def test_a_batch_longer_than_commit_max_gives_what_one_write_batch_gives(
    tmp_path: Path, events_factory: Factory
) -> None:
    """Stores commit long batches in slices (``commit_max``): the same verdicts and state.

    Only the bookkeeping differs: a slice's rows blob and expiry index record, and the
    sequence numbers of label joins (taken after their slice's transactions).
    """
    items = numbered(events_factory(21, 400, cards=6, merchants=3))
    got = []
    for name, options in (("one", StoreOptions()), ("sliced", StoreOptions(commit_max=3))):
        pipe = Pipeline(tmp_path / name, options)
        for batch in batches(items, random.Random(5)):
            pipe.feed(batch)
        stored = contents_of(pipe)
        states = {k: v for k, v in stored.items() if k[:1] in b"ctmp"}  # cards, merchants
        records = sorted(k for k in stored if k[:1] in b"svjl")  # seen, verdicts, labels
        got.append((pipe.outputs, pipe.kinds, states, records))
        pipe.close()
    assert got[0] == got[1]
