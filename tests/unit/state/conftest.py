"""Shared event generators for the state tests."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from topics.contracts import Label, Transaction

T0 = 1_700_000_000_000
COUNTRIES = ["FR", "DE", "ES", "US", None]
GAPS_MS = [0, 1_000, 20_000, 90_000, 600_000, 3_600_000, 6 * 3_600_000, 2 * 86_400_000]

Event = Transaction | Label


def make_events(seed: int, n: int, cards: int = 6, merchants: int = 5) -> list[Event]:
    """A seeded stream: transactions (unique ids, some late, some zero-value) and labels.

    A label names an earlier transaction, or (sometimes) one that comes later in the
    stream, as a label read ahead of its transaction would.
    """
    rng = random.Random(seed)
    t = T0
    events: list[Event] = []
    txns: list[Transaction] = []
    next_merchant = f"m{rng.randrange(merchants)}"
    for i in range(n):
        t += rng.choice(GAPS_MS) + rng.randint(0, 999)
        if txns and rng.random() < 0.2:
            if rng.random() < 0.15:  # ahead of its transaction: t<i+1> is the next one
                tid, card, merchant = f"t{i + 1}", "card-0", next_merchant
            else:
                target = rng.choice(txns)
                tid, card, merchant = target.transaction_id, target.card_id, target.merchant_id
            events.append(Label(transaction_id=tid, card_id=card, merchant_id=merchant,
                                is_fraud=rng.random() < 0.7, label_time=t))
            continue
        late = rng.choice([0, 0, 0, 30_000, 3_600_000, 3 * 86_400_000]) if rng.random() < 0.3 else 0
        located = rng.random() < 0.7
        txn = Transaction(
            transaction_id=f"t{i}",
            card_id=f"card-{rng.randrange(cards)}",
            merchant_id=next_merchant,
            amount=rng.choice([0.0, 1.5, 4.99, 20.0, round(rng.uniform(0.01, 5000), 2)]),
            currency="EUR",
            event_time=max(0, t - late),
            country=rng.choice(COUNTRIES),
            lat=rng.uniform(-60, 60) if located else None,
            lon=rng.uniform(-170, 170) if located else None,
            channel=rng.choice(["pos", "ecom", None]),
            entry_mode=rng.choice(["chip", "manual", None]),
        )
        txns.append(txn)
        events.append(txn)
        next_merchant = f"m{rng.randrange(merchants)}"
    return events


@pytest.fixture
def events_factory() -> Callable[..., list[Event]]:
    """The seeded stream generator."""
    return make_events
