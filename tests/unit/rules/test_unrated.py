"""The rule variable ``amount_unrated``: true where no rate converted the amount (NaN reference).

Real parts: the CEL library (type checker and row-by-row evaluation), the rule
book's evaluation path, the cost reference batch and the validate warning.
"""

from __future__ import annotations

import numpy as np
import pytest

from rules import cost
from rules.batch import RuleBatch
from rules.book import Applied, Refused, RuleBook
from rules.cli import unrated_warnings
from rules.contracts import Rule
from rules.cost import reference_batch
from rules.names import vocabulary
from state.spec import FEATURE_NAMES
from topics.contracts import Transaction

from .rulekit import random_batch


@pytest.fixture(autouse=True)
def fresh_judgements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test measures for itself (the process keeps what it measured)."""
    monkeypatch.setattr(cost, "_JUDGED", {})


def rule(rule_id: str, expression: str, action: str = "review") -> Rule:
    return Rule(id=rule_id, version=1, description=f"rule {rule_id}", owner="tests",
                expression=expression, action=action)


def unrated_batch() -> RuleBatch:
    """Four rows: EUR 2,000 (rated), VND and COP (unrated: NaN), EUR 10 (rated)."""
    txns = [Transaction(transaction_id=f"t{i}", card_id=f"c{i}", merchant_id="m", amount=a,
                        currency=c, event_time=1_800_000_000_000 + i)
            for i, (a, c) in enumerate([(2000.0, "EUR"), (52_000_000.0, "VND"),
                                        (12_000_000.0, "COP"), (10.0, "EUR")])]
    n = len(txns)
    return RuleBatch.from_transactions(
        txns, np.zeros((n, len(FEATURE_NAMES)), np.float32), FEATURE_NAMES,
        np.full(n, 0.1, np.float32), np.full(n, "approve"),
        amount_reference=np.array([2000.0, np.nan, np.nan, 10.0]),
    )


def test_the_variable_is_declared_as_bool_and_typed_by_the_checker() -> None:
    vocab = vocabulary(FEATURE_NAMES)
    assert vocab.kinds["amount_unrated"] == "bool"
    assert "amount_unrated" not in vocab.bare_features
    book = RuleBook(FEATURE_NAMES)
    assert isinstance(book.put_rule(rule("ok", "amount_unrated && currency == 'VND'")), Applied)
    refused = book.put_rule(rule("bad", "amount_unrated > 1.0"))
    assert isinstance(refused, Refused) and refused.error_class == "rule_compile"


def test_the_column_is_true_exactly_where_the_reference_amount_is_nan() -> None:
    batch = unrated_batch()
    assert batch.amount_unrated.tolist() == [False, True, True, False]
    assert batch.row(1)["amount_unrated"] is True and batch.row(0)["amount_unrated"] is False
    assert batch.row(2, {"amount_unrated"}) == {"amount_unrated": True}
    # no reference amount given: taken from the feature (never NaN), so nothing is unrated
    plain = RuleBatch.from_transactions(
        [Transaction(transaction_id="t", card_id="c", merchant_id="m", amount=1.0,
                     currency="VND", event_time=0)],
        np.zeros((1, len(FEATURE_NAMES)), np.float32), FEATURE_NAMES,
        np.zeros(1, np.float32), ["approve"])
    assert plain.amount_unrated.tolist() == [False]


@pytest.mark.parametrize("use_library", [False, True])
def test_rules_say_which_way_an_unrated_amount_goes(use_library: bool) -> None:
    book = RuleBook(FEATURE_NAMES)
    for r in (rule("unrated", "amount_unrated"),
              rule("big-rated", "!amount_unrated && amount_reference > 1000.0"),
              rule("big-or-unrated", "amount_unrated || amount_reference > 1000.0"),
              rule("big-silent", "amount_reference > 1000.0"),
              rule("small", "amount_reference <= 1000.0")):
        assert isinstance(book.put_rule(r), Applied)
    hits, errors, _ = book.rule_hits(unrated_batch(), use_library=use_library)
    assert hits["unrated"].tolist() == [False, True, True, False]
    assert hits["big-rated"].tolist() == [True, False, False, False]
    assert hits["big-or-unrated"].tolist() == [True, True, True, False]
    # without amount_unrated, NaN makes both a comparison and its opposite false
    assert hits["big-silent"].tolist() == [True, False, False, False]
    assert hits["small"].tolist() == [False, False, False, True]
    assert not any(e.any() for e in errors.values())


def test_fast_path_and_library_agree_on_random_batches_with_unrated_rows() -> None:
    book = RuleBook(FEATURE_NAMES)
    for i, text in enumerate(["amount_unrated", "!amount_unrated && amount_reference > 999.0",
                              "amount_unrated ? score > 0.5 : amount_reference >= 1000.0"]):
        assert isinstance(book.put_rule(rule(f"r{i}", text)), Applied)
    for seed in range(5):
        batch = random_batch(seed)
        assert batch.amount_unrated.any() and not batch.amount_unrated.all()
        fast, fast_err, _ = book.rule_hits(batch)
        lib, lib_err, _ = book.rule_hits(batch, use_library=True)
        for key in fast:
            np.testing.assert_array_equal(fast[key], lib[key], err_msg=key)
            np.testing.assert_array_equal(fast_err[key], lib_err[key], err_msg=key)
        np.testing.assert_array_equal(fast["r0"], np.isnan(batch.amount_reference))


def test_the_cost_reference_batch_has_unrated_rows() -> None:
    batch = reference_batch(vocabulary(FEATURE_NAMES))
    unrated = batch.amount_unrated
    assert unrated.any() and not unrated.all()
    assert set(batch.text["currency"][unrated]) == {"VND"}
    assert np.isnan(batch.amount_reference[unrated]).all()


def test_validate_warns_about_amount_rules_that_ignore_unrated_amounts() -> None:
    book = RuleBook(FEATURE_NAMES)
    for r in (rule("silent", "channel == 'ecom' && amount_reference > 1000.0"),
              rule("explicit", "!amount_unrated && amount_reference > 1000.0"),
              rule("in-a-loop", "[1.0, 2.0].exists(x, amount_reference > x * 1000.0)"),
              rule("no-amount", "score > 0.9")):
        assert isinstance(book.put_rule(r), Applied)
    warnings = unrated_warnings(book)
    assert len(warnings) == 2
    assert "'in-a-loop'" in warnings[0] and "'silent'" in warnings[1]
    assert all("amount_unrated" in w and w.startswith("warning:") for w in warnings)
