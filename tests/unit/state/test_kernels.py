"""The batch kernels against the per-transaction reference, bit for bit (river's update_many).

Random event sequences (late events, idle cards, more merchants and countries than a
card keeps, zero amounts, missing locations) go once through the reference classes one
event at a time, and once through the kernels in random batches with the encoded state
handed from batch to batch: every feature (as float32 bits) and every encoded state
(byte for byte; a stored card state in the reference's word layout,
:func:`state.kernels.card.transcode`) must agree.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from state.errors import StateFormatError
from state.features import MerchantOps, card_features, context_features, merchant_features
from state.inputs import FeatureInputs, TxnInput
from state.kernels.card import transcode
from state.reference.card import CardState
from state.reference.merchant import MerchantState
from state.reference.steps import card_step
from state.reference.steps import context_features as reference_context
from topics.contracts import Transaction

HOUR, DAY = 3_600_000, 86_400_000
T0 = 1_700_000_000_000
CHANNELS = [None, "pos", "ecom", "atm", "moto"]
ENTRY = [None, "chip", "contactless", "swipe", "manual", "ecom"]


def _card_events(rng: random.Random, n: int, cards: int) -> list[tuple[str, Transaction]]:
    t, out = T0, []
    for i in range(n):
        r = rng.random()
        t += (rng.randint(0, 40 * DAY) if r < 0.02 else rng.randint(0, HOUR) if r < 0.3
              else rng.randint(0, 60_000))
        late = rng.randint(0, 7 * DAY) if rng.random() < 0.05 else 0
        located = rng.random() < 0.7
        country = rng.choice([None, "FR", "DE", "US", *(
            chr(65 + rng.randint(0, 25)) + chr(65 + rng.randint(0, 25)) for _ in range(3))])
        out.append((f"c{rng.randrange(cards)}", Transaction(
            transaction_id=f"t{i}", card_id="x", merchant_id=f"m{rng.randint(0, 120)}",
            amount=rng.choice([0.0, 0.01, 4.99, 5.0, 12.5, rng.random() * 1000]),
            currency="EUR", event_time=max(0, t - late), country=country,
            lat=rng.uniform(-90, 90) if located else None,
            lon=rng.uniform(-180, 180) if located else None,
            channel=rng.choice(CHANNELS), entry_mode=rng.choice(ENTRY))))
    return out


def _batches(n: int, rng: random.Random, largest: int) -> list[tuple[int, int]]:
    out, i = [], 0
    while i < n:
        j = min(n, i + rng.randint(1, largest))
        out.append((i, j))
        i = j
    return out


@pytest.mark.parametrize("seed", range(12))
def test_card_kernel_equals_the_reference_in_any_batches(seed: int) -> None:
    rng = random.Random(seed)
    events = _card_events(rng, 1500, rng.choice([1, 3, 30]))
    cards: dict[str, CardState] = {}
    expected = np.array([card_step(cards.setdefault(c, CardState()),
                                   TxnInput(t.event_time, t.amount, t.merchant_id, t.country,
                                            t.lat, t.lon, t.channel, t.entry_mode))
                         for c, t in events], dtype=np.float32)
    states: dict[str, bytes] = {}
    got = np.zeros_like(expected)
    for a, b in _batches(len(events), rng, 300):
        chunk = events[a:b]
        ids = list(dict.fromkeys(c for c, _ in chunk))
        index = {c: k for k, c in enumerate(ids)}
        txns = [t for _, t in chunk]
        rows, new = card_features([states.get(c) for c in ids],
                                  np.array([index[c] for c, _ in chunk]),
                                  FeatureInputs.of(txns, [t.amount for t in txns]))
        got[a:b] = rows
        states.update(zip(ids, new, strict=True))
    assert np.array_equal(expected.view(np.uint32), got.view(np.uint32))
    wide = dict(zip(states, transcode(list(states.values()), to_wide=True), strict=True))
    assert {c: s.encode() for c, s in cards.items()} == wide
    assert transcode([cards[c].encode() for c in states], to_wide=False) == list(states.values())


@pytest.mark.parametrize("seed", range(12))
def test_merchant_kernel_equals_the_reference_in_any_batches(seed: int) -> None:
    rng = random.Random(seed)
    t, ops = T0, []
    frauds: list[tuple[str, str, int, int, int, bool]] = []
    merchants = rng.choice([1, 2, 10])
    for _ in range(2000):
        t += rng.randint(0, 2 * HOUR) if rng.random() < 0.3 else rng.randint(0, 60_000)
        if rng.random() < 0.01:
            t += rng.randint(0, 60 * DAY)
        m, k = f"m{rng.randrange(merchants)}", rng.random()
        if k < 0.7:
            ops.append((m, "txn", t - (rng.randint(0, 5 * HOUR) if rng.random() < 0.1 else 0),
                        0, 0, False))
        elif k < 0.88 or not frauds:
            op = (m, "fraud", t - rng.randint(0, 150 * DAY),
                  t + rng.randint(-40 * DAY, 3 * DAY), 0, rng.random() < 0.5)
            ops.append(op)
            frauds.append(op)
        else:  # a later "not fraud" label ends an earlier count (or one long forgotten)
            m, _, t1, since, _, flag = rng.choice(frauds)
            ops.append((m, "retract", t1, since, max(since, t + rng.randint(-3 * DAY, 3 * DAY)),
                        flag))
    reference: dict[str, MerchantState] = {}
    expected = []
    for m, kind, t1, t2, t3, flag in ops:
        state = reference.setdefault(m, MerchantState())
        if kind == "txn":
            x = TxnInput(t1, 1.0, m, None, None, None, None, None)
            expected.append(state.features(x))
            state.update(x)
        elif kind == "fraud":
            state.add_fraud(t1, t2, flag)
        else:
            state.retract_fraud(t1, t2, t3, flag)
    states: dict[str, bytes] = {}
    got = []
    for a, b in _batches(len(ops), rng, 400):
        chunk = ops[a:b]
        ids = list(dict.fromkeys(o[0] for o in chunk))
        index = {m: k for k, m in enumerate(ids)}
        batch = MerchantOps()
        rows = 0
        for m, kind, t1, t2, t3, flag in chunk:
            if kind == "txn":
                batch.txn(index[m], t1, rows)
                rows += 1
            elif kind == "fraud":
                batch.fraud(index[m], t1, t2, flag)
            else:
                batch.retract(index[m], t1, t2, t3, flag)
        features, new = merchant_features([states.get(m) for m in ids], batch, rows)
        got.append(features)
        states.update(zip(ids, new, strict=True))
    assert np.array_equal(np.array(expected, dtype=np.float32).view(np.uint32),
                          np.concatenate(got).view(np.uint32))
    assert {m: s.encode() for m, s in reference.items()} == states


def test_context_kernel_equals_the_reference() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    txns = [Transaction(transaction_id=f"t{i}", card_id="c", merchant_id="m",
                        amount=float(a), currency="EUR", event_time=int(t),
                        channel=CHANNELS[int(c)], entry_mode=ENTRY[int(e)])
            for i, (a, t, c, e) in enumerate(zip(
                np.round(rng.random(n) * 1e5, 2), rng.integers(1.6e12, 1.9e12, n),
                rng.integers(0, 5, n), rng.integers(0, 6, n), strict=True))]
    got = context_features(FeatureInputs.of(txns, [t.amount for t in txns]))
    expected = np.array([reference_context(TxnInput(t.event_time, t.amount, "m", None, None,
                                                    None, t.channel, t.entry_mode))
                         for t in txns], dtype=np.float32)
    assert np.array_equal(expected.view(np.uint32), got.view(np.uint32))


def test_a_state_of_another_format_is_refused() -> None:
    with pytest.raises(StateFormatError, match="format version unsupported.*delete the state"):
        card_features([b"\x04" + bytes(303)], np.zeros(1, np.int64),
                      FeatureInputs.of([Transaction(transaction_id="t", card_id="c",
                                                    merchant_id="m", amount=1.0,
                                                    currency="EUR", event_time=T0)], [1.0]))


def test_the_warm_up_compiles_every_kernel_the_flow_calls_from_python() -> None:
    """The image compiles them at build (``python -m state.kernels.warm``, docker/Dockerfile)."""
    from state.kernels import card, merchant
    from state.kernels.warm import warm
    from state.partitioning import _murmur2_batch

    warm(300)
    called = (card.card_batch, merchant.merchant_batch, merchant.context_features,
              _murmur2_batch)  # what state/features.py and the routing call
    assert all(kernel.signatures for kernel in called)
