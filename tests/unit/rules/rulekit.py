"""Shared builders for the rules tests: random batches, signed records, the test analysts."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

import numpy as np

from rules.batch import RuleBatch
from rules.book import Message
from rules.contracts import ListEntry, Rule, list_key
from rules.names import TEXT_FIELDS
from rules.signing import Signer, TrustedKeys, dev_keys, sign_record
from state.spec import FEATURE_NAMES

#: A maker and a checker, made once per test session in a temporary directory.
KEYS = dev_keys(tempfile.mkdtemp(prefix="rules-keys-"))
TRUST = TrustedKeys.from_file(KEYS.trusted)
#: Both analysts: a record signed by them takes effect even when it loosens decisions.
BOTH = (KEYS.maker, KEYS.checker)

T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z
CHANNELS = np.array(["pos", "ecom", "atm", "moto", ""], dtype=object)
COUNTRIES = np.array(["FR", "DE", "US", "NG", ""], dtype=object)
DECISIONS = np.array(["approve", "review", "decline"])
IPS = ["10.0.0.7", "10.0.1.9", "203.0.113.5", "2001:db8::1", "2001:db9::2", "not-an-ip", ""]


def random_batch(seed: int, n: int = 64, names: tuple[str, ...] | None = None) -> RuleBatch:
    """A batch with small value pools (so equality and lists hit), NaN-free features.

    ``amount_reference`` is NaN on some rows: unrated, as the flow passes them.
    """
    rng = np.random.default_rng(seed)
    names = tuple(FEATURE_NAMES) if names is None else names
    pick = lambda pool: np.array([pool[i] for i in rng.integers(0, len(pool), n)], dtype=object)  # noqa: E731
    text = {name: pick([f"{name[:1]}{i}" for i in range(4)] + [""]) for name in TEXT_FIELDS}
    text["card_id"] = pick(["c1", "c2", "4111111111111111", "5500 0000 0000 0004", "c3"])
    text["channel"] = pick(list(CHANNELS))
    text["country"] = pick(list(COUNTRIES))
    text["ip"] = pick(IPS)
    attr_pool: list[dict[str, object] | None] = [
        None, {}, {"bin": "411111"}, {"bin": 52000012}, {"k": 3}, {"k": 2.5}, {"k": "3"},
        {"k": True}, {"k": None}, {"k": "x", "bin": "abc"},
    ]  # fmt: skip
    attributes = [attr_pool[i] for i in rng.integers(0, len(attr_pool), n)]
    features = rng.choice(np.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 10.0], np.float32),
                          size=(n, len(names)))  # fmt: skip
    features += rng.normal(0, 0.01, size=features.shape).astype(np.float32) * (
        rng.random(features.shape) < 0.3
    )
    return RuleBatch(
        event_time=T0 + rng.integers(0, 10 * 86_400_000, n),
        text=text,
        amount=rng.choice([0.0, 5.0, 999.0, 1000.0, 1500.0], n),
        amount_reference=rng.choice([0.0, 4.5, 999.5, 1000.0, 2000.0, np.nan], n),
        attributes=attributes,
        features=features.astype(np.float32),
        feature_names=names,
        score=rng.random(n).astype(np.float32),
        model_decision=DECISIONS[rng.integers(0, 3, n)],
    )


def rule_message(rule_id: str, expression: str, action: str = "review",
                 signers: Sequence[Signer] = BOTH, **kw: object) -> Message:
    """A ``rules`` record signed by ``signers`` (default: maker and checker)."""
    rule = Rule(id=rule_id, version=int(kw.pop("version", 1)), description=f"rule {rule_id}",
                owner="tests", expression=expression, action=action, **kw)  # type: ignore[arg-type]
    return Message("rules", rule_id, sign_record(rule, signers))


def entry_message(entry: ListEntry, signers: Sequence[Signer] = BOTH,
                  retired: bool = False) -> Message:
    """A ``lists`` record signed by ``signers`` (``retired``: the entry's removal)."""
    return Message("lists", list_key(entry), sign_record(entry, signers, retired=retired))


STANDARD_ENTRIES = [
    ListEntry(list="blocked_cards", kind="card_id", value="c2"),
    ListEntry(list="blocked_cards", kind="card_id", value="c3", expires=T0 + 5 * 86_400_000),
    ListEntry(list="bad_ips", kind="ip_range", value="10.0.1.0/24"),
    ListEntry(list="bad_ips", kind="ip_range", value="2001:db8::/32",
              valid_from=T0 + 2 * 86_400_000),
    ListEntry(list="bins", kind="bin_prefix", value="4111"),
    ListEntry(list="bins", kind="bin_prefix", value="520000"),
    ListEntry(list="risky_countries", kind="country", value="NG"),
]

