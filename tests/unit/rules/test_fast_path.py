"""The vectorised fast path agrees with the CEL library on random rules and rows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from unit.rules.rulekit import (
    STANDARD_ENTRIES,
    T0,
    TRUST,
    entry_message,
    random_batch,
    rule_message,
)

from rules.book import Applied, RuleBook
from rules.lists import brute_member
from state.spec import FEATURE_NAMES

FEATS = [n for n in FEATURE_NAMES if n not in ("amount", "channel", "entry_mode")][:6]
NUMS = FEATS + ["amount", "amount_reference", "score", "features.amount", "features.channel"]
TEXTS = ["channel", "country", "card_id", "ip", "bin", "model_decision", "device_id", "mcc"]
LISTS = ["blocked_cards", "bad_ips", "bins", "risky_countries", "unknown_list"]

double_lit = st.sampled_from(["0.0", "0.5", "1.0", "3.0", "999.5", "1000.0", "-1.0"])
text_lit = st.sampled_from(['"ecom"', '"FR"', '"c2"', '"review"', '""', '"41"', '"NG"'])
attr = st.sampled_from(["attributes.k", 'attributes["k"]', "attributes.bin"])


def numeric() -> st.SearchStrategy[str]:
    atom = st.one_of(st.sampled_from(NUMS), double_lit)
    return st.recursive(
        atom,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            inner.map(lambda x: f"-{x}" if not x.startswith("-") else x),
        ),
        max_leaves=3,
    )


def comparison() -> st.SearchStrategy[str]:
    ops = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])
    return st.one_of(
        st.tuples(numeric(), ops, numeric()).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(st.sampled_from(TEXTS), st.sampled_from(["==", "!="]), text_lit).map(
            lambda t: f"{t[0]} {t[1]} {t[2]}"
        ),
        st.tuples(st.sampled_from(TEXTS), st.sampled_from(LISTS)).map(
            lambda t: f"{t[0]} in lists.{t[1]}"
        ),
        st.tuples(attr, st.sampled_from(LISTS)).map(lambda t: f"{t[0]} in lists.{t[1]}"),
        st.tuples(attr, ops, st.sampled_from(["3", "2.5", "3u", '"3"', "true", "null"])).map(
            lambda t: f"{t[0]} {t[1]} {t[2]}"
        ),
        st.sampled_from(["has(attributes.k)", "has(attributes.bin)", "true", "false",
                         "amount_unrated", "!amount_unrated"]),
        st.tuples(st.sampled_from(TEXTS), st.sampled_from(["startsWith", "endsWith", "contains"]),
                  text_lit).map(lambda t: f"{t[0]}.{t[1]}({t[2]})"),  # fmt: skip
        st.tuples(st.sampled_from(TEXTS), st.sampled_from(['["ecom", "FR", "c2"]', '["NG"]'])).map(
            lambda t: f"{t[0]} in {t[1]}"
        ),
        st.tuples(attr, st.sampled_from(['["3", 3]', "[2.5, true]"])).map(
            lambda t: f"{t[0]} in {t[1]}"
        ),
        st.tuples(numeric(), st.sampled_from([">", "=="]), st.sampled_from(["2", "0"])).map(
            lambda t: f"int({t[0]}) {t[1]} {t[2]}"
        ),
        st.sampled_from(["size(device_id) > 1", "double(event_time) > 1.7e12",
                         "event_time - 1000 > 1735689600000"]),  # fmt: skip
    )


def expression() -> st.SearchStrategy[str]:
    return st.recursive(
        comparison(),
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            inner.map(lambda x: f"!({x})"),
            st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
        ),
        max_leaves=5,
    )


def book_with(expressions: list[str]) -> tuple[RuleBook, list[str]]:
    book = RuleBook(FEATURE_NAMES, TRUST)
    for entry in STANDARD_ENTRIES:
        assert isinstance(book.apply(entry_message(entry)), Applied)
    ids = []
    for i, text in enumerate(expressions):
        result = book.apply(rule_message(f"r{i}", text))
        if isinstance(result, Applied):
            ids.append(f"r{i}")
    return book, ids


def library_hits(book: RuleBook, batch):  # type: ignore[no-untyped-def]
    """Every rule in the library, with list membership by trying every entry (brute force)."""
    from rules import reference

    entries = book.lists.entries()
    member = lambda name, value, t: brute_member(entries, name, value, t)  # noqa: E731
    out = {}
    for c in book.compiled():
        out[c.rule.id] = reference.evaluate(c, batch, book.vocab, member)
    return out


@settings(max_examples=150, deadline=None)
@given(text=expression(), seed=st.integers(0, 2**16))
def test_fast_path_agrees_with_the_library(text: str, seed: int) -> None:
    book, ids = book_with([text])
    if not ids:  # refused by the type checker (e.g. text compared with a number): fine
        return
    compiled = book.compiled()[0]
    batch = random_batch(seed)
    fast_hits, fast_errors, library_rows = book.rule_hits(batch)
    expected = library_hits(book, batch)["r0"]
    if compiled.fast is not None:
        assert library_rows == 0
    np.testing.assert_array_equal(fast_hits["r0"], expected[0], err_msg=text)
    np.testing.assert_array_equal(fast_errors["r0"], expected[1], err_msg=text)


COVERED = [
    'channel == "ecom" && amount_reference > 1000.0 && card_count_10m > 3.0',
    "!(score < 0.5) || model_decision == 'decline'",
    "(amount / 2.0 - 1.0) * 3.0 >= -amount_reference",
    "country in ['NG', 'US'] ? score > 0.2 : score > 0.9",
    "card_id in lists.blocked_cards || ip in lists.bad_ips || bin in lists.bins",
    "attributes.bin in lists.bins && has(attributes.bin)",
    'attributes.k == 3 && attributes["k"] > 2.5 && attributes.k in [3, "3"]',
    "device_id.startsWith('d') && mcc.endsWith('1') && ip.contains('.')",
    "size(device_id) > 1 && int(card_count_10m) >= 2 && double(event_time) > 0.0",
    "'c2' in lists.blocked_cards && event_time - 1000 > 0 && features.amount > 1.0",
]


def test_the_common_constructs_take_the_fast_path() -> None:
    """The property test above exercises the fast path, not only the library."""
    book, ids = book_with(COVERED)
    assert len(ids) == len(COVERED)
    assert [c.fallback_reason for c in book.compiled()] == [None] * len(COVERED)


def test_list_membership_by_kind_and_event_time() -> None:
    book, ids = book_with(
        ["card_id in lists.blocked_cards", "ip in lists.bad_ips", "bin in lists.bins"]
    )
    assert ids == ["r0", "r1", "r2"]
    batch = random_batch(1, n=300)
    hits, _, _ = book.rule_hits(batch)
    day = 86_400_000
    for i in range(len(batch)):
        card, ip, t = batch.text["card_id"][i], batch.text["ip"][i], batch.event_time[i]
        assert hits["r0"][i] == (card == "c2" or (card == "c3" and t < T0 + 5 * day)), i
        assert hits["r1"][i] == (ip == "10.0.1.9" or (ip == "2001:db8::1" and t >= T0 + 2 * day))
        attrs = batch.attributes[i] or {}
        bin_ = str(attrs["bin"]) if str(attrs.get("bin", "")).isdigit() else (
            "41111111" if card == "4111111111111111" else "55000000" if card.startswith("55")
            else ""
        )
        assert hits["r2"][i] == (bin_.startswith("4111") or bin_.startswith("520000")), i


def test_absent_attribute_is_an_error_not_a_hit_and_absorbed_by_or() -> None:
    book, ids = book_with(['attributes.k == 3', 'attributes.k == 3 || true'])
    batch = random_batch(3, n=100)
    hits, errors, _ = book.rule_hits(batch)
    absent = np.array([not (a and "k" in a) for a in batch.attributes])
    np.testing.assert_array_equal(errors["r0"], absent)
    assert not (hits["r0"] & absent).any()
    assert hits["r1"].all() and not errors["r1"].any()


def test_a_comprehension_runs_in_the_library() -> None:
    book, ids = book_with(['[1.0, 2.0].exists(x, x > score)'])
    assert ids == ["r0"]
    compiled = book.compiled()[0]
    assert compiled.fast is None and "comprehension" in (compiled.fallback_reason or "")
    batch = random_batch(4)
    hits, _, library_rows = book.rule_hits(batch)
    assert library_rows == len(batch)
    np.testing.assert_array_equal(hits["r0"], batch.score < 2.0)
