from __future__ import annotations

import msgspec
import pytest

from topics.contracts import Transaction
from topics.currency import MINOR_UNITS
from topics.validation import TransactionDecoder
from training.simulate import transaction_stream

START = 1_700_000_000_000


def _encode(txns: list[Transaction]) -> list[bytes]:
    return [msgspec.json.encode(t) for t in txns]


def test_same_seed_same_transactions_other_seed_other_ones() -> None:
    a = list(transaction_stream(500, seed=3, cards=50, start_ms=START))
    b = list(transaction_stream(500, seed=3, cards=50, start_ms=START))
    c = list(transaction_stream(500, seed=4, cards=50, start_ms=START))
    assert _encode(a) == _encode(b)
    assert {t.transaction_id for t in a}.isdisjoint(t.transaction_id for t in c)
    assert [t.amount for t in a] != [t.amount for t in c]


def test_every_transaction_passes_the_wire_validation() -> None:
    txns = list(transaction_stream(5000, seed=1, cards=200, start_ms=START))
    decoder = TransactionDecoder()
    now = txns[-1].event_time
    for raw, txn in zip(_encode(txns), txns, strict=True):
        decoded = decoder.decode(raw, now)
        assert decoded == txn, decoded


def test_ids_unique_cards_from_pool_times_strictly_increasing() -> None:
    txns = list(transaction_stream(3000, seed=2, cards=25, start_ms=START))
    assert len({t.transaction_id for t in txns}) == 3000
    assert {t.card_id for t in txns} <= {f"c{i:06d}" for i in range(25)}
    assert len({t.card_id for t in txns}) == 25
    times = [t.event_time for t in txns]
    assert times[0] > START
    assert all(a < b for a, b in zip(times, times[1:], strict=False))


def test_optional_fields_are_sometimes_missing_on_purpose() -> None:
    txns = list(transaction_stream(5000, seed=5, cards=100, start_ms=START))
    for field in ("mcc", "channel", "entry_mode", "country", "customer_id"):
        missing = sum(getattr(t, field) is None for t in txns)
        assert 0 < missing < 0.1 * len(txns), (field, missing)
    assert all((t.lat is None) == (t.lon is None) for t in txns)
    complete = list(
        transaction_stream(2000, seed=5, cards=100, missing_rate=0.0, start_ms=START)
    )
    assert all(t.mcc and t.channel and t.country and t.customer_id for t in complete)


def test_cards_mostly_buy_in_their_home_currency() -> None:
    txns = list(transaction_stream(4000, seed=9, cards=40, start_ms=START))
    by_card: dict[str, dict[str, int]] = {}
    for t in txns:
        by_card.setdefault(t.card_id, {}).setdefault(t.currency, 0)
        by_card[t.card_id][t.currency] += 1
    dominant = sum(max(c.values()) for c in by_card.values())
    assert dominant / len(txns) > 0.85


def test_the_stream_is_multi_currency_with_billing_and_zero_value_verifications() -> None:
    txns = list(transaction_stream(20_000, seed=3, cards=500, start_ms=START))
    currencies = {t.currency for t in txns}
    assert {MINOR_UNITS[c] for c in currencies} >= {0, 2, 3}, currencies
    billed = [t for t in txns if t.billing_currency is not None]
    assert 0.01 < len(billed) / len(txns) < 0.3
    assert all(t.billing_currency != t.currency and t.billing_amount is not None for t in billed)
    zero = [t for t in txns if t.amount == 0.0]
    assert zero and all(t.channel in ("ecom", None) for t in zero)
    # a verification comes just before a purchase of the same card at the same merchant
    following = {(t.card_id, t.merchant_id) for t in txns if t.amount > 0}
    assert sum((z.card_id, z.merchant_id) in following for z in zero) / len(zero) > 0.9


def test_endless_when_count_is_none_and_rejects_empty_pool() -> None:
    gen = transaction_stream(None, seed=0, cards=3, start_ms=START)
    assert len([next(gen) for _ in range(10_000)]) == 10_000
    with pytest.raises(ValueError, match="cards"):
        next(transaction_stream(1, cards=0))


def test_duplicates_re_deliver_the_same_bytes_now_or_a_simulated_day_later() -> None:
    from devkit.produce import DAY_MS, with_duplicates

    # one transaction a minute for three days
    txns = [msgspec.structs.replace(t, event_time=START + i * 60_000) for i, t in
            enumerate(transaction_stream(3 * 1440, seed=8, cards=100, start_ms=START))]
    out = with_duplicates(txns, 0.05, seed=3)
    got = list(out)
    assert len(got) == len(txns) + out.immediate + out.delayed
    assert out.immediate > 50 and out.delayed > 50
    first: dict[str, int] = {}
    immediate = delayed = 0
    for pos, txn in enumerate(got):
        if txn.transaction_id not in first:
            first[txn.transaction_id] = pos
            continue
        original = got[first[txn.transaction_id]]
        assert msgspec.json.encode(txn) == msgspec.json.encode(original)  # same bytes
        if pos == first[txn.transaction_id] + 1:
            immediate += 1
        else:  # re-delivered once the stream reached a day later, or at its end
            assert got[pos - 1].event_time >= original.event_time + DAY_MS - 60_000 or (
                pos >= len(txns) + out.immediate)
            delayed += 1
    assert (immediate, delayed) == (out.immediate, out.delayed)
    again = [t.transaction_id for t in with_duplicates(txns, 0.05, seed=3)]
    assert again == [t.transaction_id for t in got]
    with pytest.raises(ValueError, match="between 0 and 1"):
        with_duplicates(txns, 1.5)
