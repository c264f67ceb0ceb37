from __future__ import annotations

import msgspec
import pytest

from topics.contracts import Transaction
from topics.synthetic import synthetic_transactions
from topics.validation import TransactionDecoder

START = 1_700_000_000_000


def _encode(txns: list[Transaction]) -> list[bytes]:
    return [msgspec.json.encode(t) for t in txns]


def test_same_seed_same_transactions_other_seed_other_ones() -> None:
    a = list(synthetic_transactions(500, seed=3, cards=50, start_ms=START))
    b = list(synthetic_transactions(500, seed=3, cards=50, start_ms=START))
    c = list(synthetic_transactions(500, seed=4, cards=50, start_ms=START))
    assert _encode(a) == _encode(b)
    assert {t.transaction_id for t in a}.isdisjoint(t.transaction_id for t in c)
    assert [t.amount for t in a] != [t.amount for t in c]


def test_every_transaction_passes_the_wire_validation() -> None:
    txns = list(synthetic_transactions(5000, seed=1, cards=200, start_ms=START))
    decoder = TransactionDecoder()
    now = txns[-1].event_time
    for raw, txn in zip(_encode(txns), txns, strict=True):
        decoded = decoder.decode(raw, now)
        assert decoded == txn, decoded


def test_ids_unique_cards_from_pool_times_strictly_increasing() -> None:
    txns = list(synthetic_transactions(3000, seed=2, cards=25, start_ms=START))
    assert len({t.transaction_id for t in txns}) == 3000
    assert {t.card_id for t in txns} <= {f"card-{i:07d}" for i in range(25)}
    assert len({t.card_id for t in txns}) == 25
    times = [t.event_time for t in txns]
    assert times[0] > START
    assert all(a < b for a, b in zip(times, times[1:], strict=False))


def test_optional_fields_are_sometimes_missing_on_purpose() -> None:
    txns = list(synthetic_transactions(5000, seed=5, cards=100, start_ms=START))
    for field in ("mcc", "channel", "entry_mode", "country", "customer_id"):
        missing = sum(getattr(t, field) is None for t in txns)
        assert 0 < missing < 0.1 * len(txns), (field, missing)
    assert all((t.lat is None) == (t.lon is None) for t in txns)
    complete = list(
        synthetic_transactions(2000, seed=5, cards=100, missing_rate=0.0, start_ms=START)
    )
    assert all(t.mcc and t.channel and t.country and t.customer_id for t in complete)


def test_cards_mostly_buy_in_their_home_currency() -> None:
    txns = list(synthetic_transactions(4000, seed=9, cards=40, start_ms=START))
    by_card: dict[str, dict[str, int]] = {}
    for t in txns:
        by_card.setdefault(t.card_id, {}).setdefault(t.currency, 0)
        by_card[t.card_id][t.currency] += 1
    dominant = sum(max(c.values()) for c in by_card.values())
    assert dominant / len(txns) > 0.85


def test_endless_when_count_is_none_and_rejects_empty_pool() -> None:
    gen = synthetic_transactions(None, seed=0, cards=3, start_ms=START)
    assert len([next(gen) for _ in range(10_000)]) == 10_000
    with pytest.raises(ValueError, match="cards"):
        next(synthetic_transactions(1, cards=0))
