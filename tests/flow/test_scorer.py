"""The card and merchant stages over real RocksDB and a real exported ONNX model."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from export.model import load_model
from flows.serving import ModelSource
from scoring.reasons import COMBINED
from stages import Stages, sourced
from state.options import StoreOptions
from state.replay import replay_matrix
from tiny_model import tiny_history
from topics.contracts import Label, Prediction, Transaction
from training.history import events
from training.simulate import SimConfig

WORLD = SimConfig(n_transactions=6_000, n_cards=150, days=20, seed=23, fraud_rate=0.05)


def _source(path: Path, **kwargs: object) -> ModelSource:
    kwargs.setdefault("thresholds", lambda m: m.thresholds)
    kwargs.setdefault("interval", 0)
    return ModelSource(path, **kwargs)  # type: ignore[arg-type]


def _run(stages: Stages, stream: list, rng: random.Random, largest: int = 300) -> None:
    """Feed ``stream`` in random chunks (the watermark decides what is scored), then settle."""
    i = 0
    while i < len(stream):
        n = rng.randint(1, largest)
        stages.feed(stream[i:i + n], settle=False)
        i += n
    stages.feed([])


@pytest.fixture(scope="module")
def stream() -> list[Transaction | Label]:
    return list(events(tiny_history(WORLD)))


def test_stream_verdicts_equal_offline_replay_through_the_same_onnx(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = load_model(tiny_model_dir)
    txns, X = replay_matrix(stream)
    offline = dict(zip((t.transaction_id for t in txns), model.predict(X).tolist(), strict=True))
    stages = Stages(tmp_path, _source(tiny_model_dir))
    _run(stages, sourced(stream, stages.parts), random.Random(5))
    verdicts = stages.verdicts()
    assert len(verdicts) == len(txns)
    # the same, scored and committed 7 rows at a time (StoreOptions.commit_max)
    sliced = Stages(tmp_path / "sliced", _source(tiny_model_dir),
                    options=StoreOptions(commit_max=7))
    _run(sliced, sourced(stream, sliced.parts), random.Random(5))
    assert {v.transaction_id: v.score for v in sliced.verdicts()} == {
        v.transaction_id: v.score for v in verdicts}
    assert {v.transaction_id: v.score for v in verdicts} == pytest.approx(offline, abs=1e-6)
    flagged = [v for v in verdicts if v.decision != "approve"]
    assert flagged and all(v.reasons for v in flagged)
    assert all(r.feature in (*model.metadata.feature_names, COMBINED.feature)
               for v in flagged for r in v.reasons)
    assert all(v.amount_reference is not None and v.reference_currency == "EUR"
               for v in verdicts)


@pytest.mark.parametrize("cards", [None, 1, 3])
def test_partitions_read_at_any_speed_give_the_event_time_answer(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path, cards: int | None
) -> None:
    """A backlog whose partitions (and labels) are read at very different speeds: the merchant
    stage waits for the watermark, so every row equals the offline event-time replay; with a
    card shard per partition, one for all of them, or three over four partitions."""
    model = load_model(tiny_model_dir)
    txns, X = replay_matrix(stream)
    offline = dict(zip((t.transaction_id for t in txns), model.predict(X).tolist(), strict=True))
    stages = Stages(tmp_path, _source(tiny_model_dir), cards=cards)
    items = sourced(stream, stages.parts)
    queues: dict[tuple[bool, int], list] = {}
    for item in items:
        queues.setdefault((isinstance(item.value, Transaction), item.partition), []).append(item)
    rng = random.Random(11)
    speed = {q: rng.choice([1, 5, 40, 300]) for q in queues}
    while queues:
        q = rng.choice(sorted(queues))
        chunk, queues[q] = queues[q][:speed[q]], queues[q][speed[q]:]
        if not queues[q]:
            del queues[q]
        stages.feed(chunk, settle=False)
    stages.feed([])
    verdicts = stages.verdicts()
    assert len(verdicts) == len(txns)
    assert {v.transaction_id: v.score for v in verdicts} == offline  # bit for bit
    assert sum(m._order.late for m in stages.merchants.values()) == 0


@pytest.mark.parametrize("cards", [None, 1, 3])
def test_mis_keyed_records_are_held_and_applied_with_their_card_in_event_time(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path, cards: int | None
) -> None:
    """One record in five on the next partition (produced without the card as key): the card
    stage holds a card's records while its mis-keyed ones arrive and applies them in event
    time, whichever card shard serves the card, so every score is the event-time answer."""
    model = load_model(tiny_model_dir)
    txns, X = replay_matrix(stream)
    offline = dict(zip((t.transaction_id for t in txns), model.predict(X).tolist(), strict=True))
    stages = Stages(tmp_path, _source(tiny_model_dir), cards=cards, hold_ms=500)
    items = sourced(stream, stages.parts)
    moved = [item._replace(partition=(item.partition + 1) % stages.parts)
             if isinstance(item.value, Transaction) and k % 5 == 0 else item
             for k, item in enumerate(items)]
    assert sum(a.partition != b.partition for a, b in zip(items, moved, strict=True)) > 100
    for i in range(0, len(moved), 400):
        stages.feed(moved[i:i + 400], settle=False)
        stages.advance(1.0)  # the hold ends
    stages.feed([])
    verdicts = stages.verdicts()
    assert len(verdicts) == len(txns)
    assert {v.transaction_id: v.score for v in verdicts} == offline


def test_a_mis_keyed_straggler_read_after_the_hold_still_counts_in_event_time(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """In a backlog a partition may be read long after the others: a card's mis-keyed record
    on it arrives after the wall-clock hold of the card's other records. They wait until
    every input has passed them in event time, so every row equals the event-time answer
    (with the hold alone, the card's later rows missed the straggler)."""
    from flows.items import CardRows
    from state.features import CARD_COLUMNS
    from state.partitioning import murmur2_partition

    stages = Stages(tmp_path, _source(tiny_model_dir), hold_ms=500)  # 4 partitions
    card = next(c for c in (f"card-{n}" for n in range(100))
                if murmur2_partition(c, stages.parts) == 0)
    filler = next(c for c in (f"card-{n}" for n in range(100))
                  if murmur2_partition(c, stages.parts) == 3)
    t0 = 1_796_000_000_000

    def txn(tid: str, card_id: str, minutes: int) -> Transaction:
        return Transaction(transaction_id=tid, card_id=card_id, merchant_id="m", amount=20.0,
                           currency="EUR", event_time=t0 + minutes * 60_000)

    history = [txn("t1", card, 0), txn("late", card, 1), txn("t2", card, 2),
               txn("t3", card, 3), txn("f1", filler, 10)]
    moved = {"t2": 1, "late": 2}  # mis-keyed: on partitions 1 and 2, not the card's 0
    items = {i.value.transaction_id: i._replace(partition=moved.get(
        i.value.transaction_id, i.partition)) for i in sourced(history, stages.parts)}
    rows: dict[str, np.ndarray] = {}
    collect = stages._collect

    def seen(out: object, work: dict) -> None:  # type: ignore[type-arg]
        found = getattr(out[1], "rows", None) if isinstance(out, tuple) else None
        if isinstance(found, CardRows):
            for t, row in zip(found.txns.values, found.rows, strict=True):
                rows[t.transaction_id] = row
        collect(out, work)

    stages._collect = seen  # type: ignore[method-assign]
    stages.feed([items[t] for t in ("t1", "t2", "t3", "f1")], settle=False)
    stages.advance(1.0)  # the hold is over; partition 2 has not been read yet
    stages.feed([items["late"]], settle=False)  # read now: the straggler, a minute in
    stages.feed([])  # every input idle: the rest is released
    txns, X = replay_matrix(history)
    for t, x in zip(txns, X, strict=True):
        assert rows[t.transaction_id].tolist() == x[CARD_COLUMNS].tolist(), t.transaction_id


def test_a_burst_after_a_quiet_spell_waits_for_every_partition_to_wake(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Every partition idle, then a burst: the first partition to wake must not carry the
    watermark past the others' records (they count again for a grace)."""
    model = load_model(tiny_model_dir)
    txns, X = replay_matrix(stream)
    offline = dict(zip((t.transaction_id for t in txns), model.predict(X).tolist(), strict=True))
    stages = Stages(tmp_path, _source(tiny_model_dir))
    items = sourced(stream, stages.parts)
    half = len(items) // 2
    stages.feed(items[:half])  # then quiet: every partition idle
    by_partition: dict[tuple[bool, int], list] = {}
    for item in items[half:]:
        by_partition.setdefault((isinstance(item.value, Transaction), item.partition),
                                []).append(item)
    for key in sorted(by_partition):  # the burst reaches the partitions one after another
        stages.feed(by_partition[key], settle=False)
    stages.feed([])
    assert {v.transaction_id: v.score for v in stages.verdicts()} == offline
    assert sum(m._order.late for m in stages.merchants.values()) == 0


def test_redelivered_transactions_re_emit_the_first_bytes_and_change_no_score(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    txns = [e for e in stream if isinstance(e, Transaction)][:1500]
    rng = random.Random(9)
    with_dups: list[Transaction] = []
    for t in txns:
        with_dups.append(t)
        if rng.random() < 0.03:  # re-delivered at once, or a simulated while later
            with_dups.insert(min(len(with_dups) + rng.choice([0, 40]), len(with_dups)), t)
    clean = Stages(tmp_path / "clean", _source(tiny_model_dir))
    _run(clean, sourced(txns, clean.parts), random.Random(1))
    dup = Stages(tmp_path / "dup", _source(tiny_model_dir))
    before = REGISTRY.get_sample_value("fraud_duplicate_transactions_total",
                                       {"kind": "redelivery"}) or 0.0
    _run(dup, sourced(with_dups, dup.parts), random.Random(1))
    scores = {v.transaction_id: v.score for v in clean.verdicts()}
    copies: dict[str, set[bytes]] = {}
    for key, value in dup.records():
        copies.setdefault((key or b"").decode(), set()).add(value)
    assert all(len(bodies) == 1 for bodies in copies.values())  # one verdict body per id
    assert {v.transaction_id: v.score for v in dup.verdicts()} == scores
    after = REGISTRY.get_sample_value("fraud_duplicate_transactions_total",
                                      {"kind": "redelivery"})
    assert after == before + (len(with_dups) - len(txns))


def test_same_id_with_another_body_is_dead_lettered_naming_both_offsets(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    t = Transaction(transaction_id="t-1", card_id="c-1", merchant_id="m-1", amount=10.0,
                    currency="EUR", event_time=1_800_000_000_000)
    other = Transaction(transaction_id="t-1", card_id="c-1", merchant_id="m-1", amount=99.0,
                        currency="EUR", event_time=1_800_000_000_000)
    stages = Stages(tmp_path, _source(tiny_model_dir))
    first, second = sourced([t, other], stages.parts)
    stages.feed([first])
    stages.feed([second])
    (letter,) = stages.dead_letters()
    import msgspec

    from topics.contracts import DeadLetter

    record = msgspec.json.decode(letter.value, type=DeadLetter)
    assert record.error_class == "duplicate_conflict"
    assert (record.first_partition, record.first_offset) == (first.partition, first.offset)
    assert f"offset {second.offset}" in record.reason and len(stages.verdicts()) == 1


def test_threshold_override_changes_decisions_not_scores(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from export.metadata import Thresholds

    txns = [e for e in stream if isinstance(e, Transaction)][:800]
    strict = Stages(tmp_path / "a", _source(
        tiny_model_dir, thresholds=lambda m: Thresholds(review=0.0, decline=1.0)))
    usual = Stages(tmp_path / "b", _source(tiny_model_dir))
    for stages in (strict, usual):
        _run(stages, sourced(txns, stages.parts), random.Random(2))
    a, b = strict.verdicts(), usual.verdicts()
    assert [v.score for v in a] == [v.score for v in b]
    assert {v.decision for v in a} == {"review"}


def test_shadow_rides_along_and_never_changes_the_decision(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from export.metadata import Thresholds

    txns = [e for e in stream if isinstance(e, Transaction)][:600]
    shadow = _source(tiny_model_dir, thresholds=lambda m: Thresholds(review=0.0, decline=0.0),
                     role="shadow")
    with_shadow = Stages(tmp_path / "a", _source(tiny_model_dir), shadow)
    alone = Stages(tmp_path / "b", _source(tiny_model_dir))
    for stages in (with_shadow, alone):
        _run(stages, sourced(txns, stages.parts), random.Random(3))
    ws, al = with_shadow.verdicts(), alone.verdicts()
    assert [(v.score, v.decision) for v in ws] == [(v.score, v.decision) for v in al]
    assert all(v.shadow_decision == "decline" and v.shadow_score == v.score for v in ws)
    assert all(v.shadow_score is None for v in al)


def test_labels_read_ahead_change_no_score_and_still_join(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A backlog of labels read before any transaction gives the scores of the stream order."""
    txns = [e for e in stream if isinstance(e, Transaction)]
    labels = [e for e in stream if isinstance(e, Label)]
    assert labels
    in_order = Stages(tmp_path / "a", _source(tiny_model_dir))
    _run(in_order, sourced(stream, in_order.parts), random.Random(4))
    ahead = Stages(tmp_path / "b", _source(tiny_model_dir))
    version = load_model(tiny_model_dir).version

    def joined() -> float:
        return sum(REGISTRY.get_sample_value("fraud_label_feedback_total", {
            "model_version": version, "decision": d, "truth": "fraud"}) or 0.0
            for d in ("approve", "review", "decline"))

    before = joined()
    _run(ahead, sourced(labels, ahead.parts) + sourced(txns, ahead.parts), random.Random(4))
    assert {v.transaction_id: v.score for v in ahead.verdicts()} == {
        v.transaction_id: v.score for v in in_order.verdicts()}
    assert joined() - before == len({lab.transaction_id for lab in labels})


def test_hot_reload_swaps_between_batches_and_refuses_other_rates(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from flows.serving import check_rates, model_rates

    model = load_model(tiny_model_dir)
    rates = model_rates(model)
    check_rates(rates)(model)  # its own table passes
    from dataclasses import replace

    from topics.errors import ConfigError

    other = replace(rates, version="ecb-1999-01-04+pegs.0")
    with pytest.raises(ConfigError, match="rate table"):
        check_rates(other)(model)
    txns = [e for e in stream if isinstance(e, Transaction)][:300]
    stages = Stages(tmp_path, _source(tiny_model_dir, interval=5, clock=lambda: 0.0))
    _run(stages, sourced(txns, stages.parts), random.Random(6))
    assert {v.model_version for v in stages.verdicts()} == {model.version}
    assert np.isfinite([v.score for v in stages.verdicts()]).all()


def test_prediction_records_the_reference_amount(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    jpy = Transaction(transaction_id="t-jpy", card_id="c-9", merchant_id="m-9", amount=4500,
                      currency="JPY", event_time=1_800_000_000_000)
    stages = Stages(tmp_path, _source(tiny_model_dir))
    stages.feed(sourced([jpy], stages.parts))
    (v,) = stages.verdicts()
    assert isinstance(v, Prediction) and v.reference_currency == "EUR"
    assert 10 < (v.amount_reference or 0) < 60  # about 27 EUR, never 4,500


def test_a_card_keyed_by_its_pan_is_not_held_as_mis_keyed(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A producer keys a card's records by the PAN it sends as ``card_id``; decode turns
    the PAN into a token whose hash points at another partition. The router knows the
    records are on their key's partition, so the card stage applies them at once instead
    of holding them FRAUD_MISKEYED_HOLD_MS like mis-keyed records."""
    from flows.decode import KeyRule, TransactionRouter, decode_batch
    from flows.kafka import RawRecord
    from samples import NOW_MS, raw
    from state.partitioning import murmur2_partition
    from topics.pan import CardGuard, PanKey
    from topics.validation import TransactionDecoder

    stages = Stages(tmp_path, _source(tiny_model_dir), hold_ms=60_000)
    guard = CardGuard(PanKey(b"k" * 32))
    pan = next(p for p in (f"4111111111{n:06d}" for n in range(100_000))
               if _luhn(p) and murmur2_partition(p, stages.parts) != murmur2_partition(
                   guard.identify(p).card_id, stages.parts))  # type: ignore[union-attr]
    q = murmur2_partition(pan, stages.parts)
    records = [RawRecord(pan.encode(), raw(transaction_id=f"p-{i}", card_id=pan,
                                           event_time=NOW_MS - 60_000 + i), "transactions",
                         q, i, NOW_MS) for i in range(3)]
    decoded, kept, dead = decode_batch(records, TransactionDecoder(cards=guard), NOW_MS)
    assert len(decoded) == 3 and not dead
    router = TransactionRouter(KeyRule(stages.parts), card_shards=stages.parts, cards=guard)
    works = [w for key, w in router.route(q, decoded, kept)]  # type: ignore[misc]
    mine = [w for w in works if w.txns is not None]
    assert len(mine) == 1 and mine[0].produced_home == frozenset({0, 1, 2})
    logic = stages.cards[mine[0].shard]
    outs, _ = logic.on_batch(mine)
    assert logic._held is None  # applied now, not held for a minute
    applied = sum(len(o[1].rows) for o in outs
                  if isinstance(o, tuple) and o[1].rows is not None)
    assert applied == 3
    # the same records without the router's word (another key) are held as mis-keyed
    moved = mine[0]._replace(produced_home=frozenset())
    other = Stages(tmp_path / "other", _source(tiny_model_dir), hold_ms=60_000)
    other.cards[moved.shard].on_batch([moved])
    assert other.cards[moved.shard]._held is not None


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0
