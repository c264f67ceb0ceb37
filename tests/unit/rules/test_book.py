"""The rule book: idempotent apply, refusals, event-time validity, version, snapshot, policy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit.rules.rulekit import (
    BOTH,
    STANDARD_ENTRIES,
    T0,
    TRUST,
    entry_message,
    random_batch,
    rule_message,
)

from rules.book import Applied, Message, Refused, RuleBook
from rules.contracts import ListEntry, Rule
from rules.errors import SnapshotError
from rules.signing import sign_record
from scoring.policy import apply, combine
from state.spec import FEATURE_NAMES

DAY = 86_400_000


def book() -> RuleBook:
    return RuleBook(FEATURE_NAMES, TRUST)


def test_rule_versions_are_idempotent_stale_or_conflicting() -> None:
    b = book()
    assert b.apply(rule_message("r", "score > 0.5")).change == "added"
    v1 = b.version
    assert b.apply(rule_message("r", "score > 0.5")).change == "unchanged"
    conflict = b.apply(rule_message("r", "score > 0.9"))
    assert isinstance(conflict, Refused) and conflict.error_class == "rule_conflict"
    assert "version 2" in conflict.reason
    assert b.apply(rule_message("r", "score > 0.9", version=2)).change == "updated"
    assert b.version != v1
    assert b.apply(rule_message("r", "score > 0.5", version=1)).change == "stale"
    assert b.compiled()[0].rule.expression == "score > 0.9"


def test_a_refused_update_keeps_the_previous_version_in_force() -> None:
    b = book()
    b.apply(rule_message("r", "score > 0.5"))
    refused = b.apply(rule_message("r", "scor > 0.5", version=2))
    assert isinstance(refused, Refused) and refused.error_class == "rule_compile"
    assert "undeclared reference to 'scor'" in refused.reason
    assert [c.rule.version for c in b.compiled()] == [1]


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("card_count_10m > 3", "write 3.0 instead of 3"),
        ("amount", "needs true or false"),
        ("features.no_such_feature > 1.0", "unknown feature 'no_such_feature'"),
        ("size(lists.blocked) > 0", "use lists only as"),
        ("amount > 1.0 &&", "Syntax error"),
        ('channel == 1', "no matching overload"),
    ],
)
def test_bad_rules_are_refused_with_a_reason(expression: str, words: str) -> None:
    result = book().apply(rule_message("bad", expression))
    assert isinstance(result, Refused) and result.error_class == "rule_compile"
    assert words in result.reason, result.reason


def test_bad_messages_are_refused_not_raised() -> None:
    b = book()
    cases = [
        Message("rules", None, b"{}"),
        Message("rules", "r", b"not json"),
        Message("rules", "r", b'{"id":"other","version":1,"description":"d","owner":"o",'
                              b'"expression":"true","action":"decline"}'),
        Message("rules", "r", b'{"id":"r","version":0,"description":"d","owner":"o",'
                              b'"expression":"true","action":"decline"}'),
        Message("lists", "nolistkey", b"{}"),
        Message("lists", "bad_ips/1.2.3.4/99",
                b'{"list":"bad_ips","kind":"ip_range","value":"1.2.3.4/99"}'),
        Message("lists", "x/y", b'{"list":"z","kind":"card_id","value":"y"}'),
    ]  # fmt: skip
    for message in cases:
        result = b.apply(message)
        assert isinstance(result, Refused), message
        assert result.reason
    assert b.compiled() == [] and b.lists.entries() == []


def test_a_tombstone_is_refused_and_a_signed_disabled_version_retires_a_rule() -> None:
    b = book()
    b.apply(rule_message("a", "true", action="decline"))
    b.apply(rule_message("b", "true", action="decline"))
    b.apply(rule_message("b", "true", action="decline", version=2, enabled=False))
    tombstone = b.apply(Message("rules", "a", None))
    assert isinstance(tombstone, Refused) and tombstone.error_class == "rule_unauthenticated"
    assert "tombstone" in tombstone.reason and [c.rule.id for c in b.compiled()] == ["a"]
    b.apply(rule_message("a", "true", action="decline", version=2, enabled=False))
    assert b.compiled() == []
    assert [r.id for r in b.rules()] == ["a", "b"]  # disabled rules stay listed
    assert b.version == book().version  # nothing in force, no lists: the empty version


def test_validity_and_expiry_are_judged_on_event_time() -> None:
    b = book()
    b.apply(rule_message("late", "true", action="decline", valid_from=T0 + 2 * DAY,
                         valid_until=T0 + 4 * DAY))  # fmt: skip
    b.apply(entry_message(ListEntry(list="blocked_cards", kind="card_id", value="c1",
                                    expires=T0 + 3 * DAY)))  # fmt: skip
    b.apply(rule_message("block", "card_id in lists.blocked_cards", action="decline"))
    batch = random_batch(9, n=200)
    hits, _, _ = b.rule_hits(batch)
    t = batch.event_time
    np.testing.assert_array_equal(hits["late"], (t >= T0 + 2 * DAY) & (t < T0 + 4 * DAY))
    is_c1 = batch.text["card_id"] == "c1"
    np.testing.assert_array_equal(hits["block"], is_c1 & (t < T0 + 3 * DAY))
    rules, entries = b.in_force(T0 + 3 * DAY)
    assert [r.id for r in rules] == ["block", "late"] and entries == []


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(len(STANDARD_ENTRIES))))
def test_version_depends_on_content_not_order(order: list[int]) -> None:
    a, b = book(), book()
    for i in range(len(STANDARD_ENTRIES)):
        a.apply(entry_message(STANDARD_ENTRIES[i]))
    for i in order:
        b.apply(entry_message(STANDARD_ENTRIES[i]))
    assert a.version == b.version
    b.apply(entry_message(STANDARD_ENTRIES[order[0]]))  # re-delivery changes nothing
    assert a.version == b.version


def test_offsets_make_a_replay_a_no_op_and_survive_a_snapshot() -> None:
    b = book()
    b.apply(Message("rules", "r", rule_message("r", "score > 0.5").value, offset=4))
    replay = b.apply(Message("rules", "r", rule_message("r", "score > 0.9", version=2).value,
                             offset=4))  # fmt: skip
    assert isinstance(replay, Applied) and replay.change == "replayed"
    restored = RuleBook.restore(b.snapshot(), FEATURE_NAMES)
    assert restored.offsets == {"rules": 4}
    assert restored.apply(Message("rules", "r", None, offset=3)).change == "replayed"


def test_snapshot_restores_the_same_decisions() -> None:
    b = book()
    for entry in STANDARD_ENTRIES:
        b.apply(entry_message(entry))
    b.apply(rule_message("x", "ip in lists.bad_ips", action="decline"))
    b.apply(rule_message("y", "score > 0.7", action="review", mode="shadow"))
    b.apply(rule_message("z", "true", action="tag", enabled=False))
    restored = RuleBook.restore(b.snapshot(), FEATURE_NAMES, table=b.table)  # the process's
    assert restored.version == b.version
    assert restored.rules() == b.rules() and restored.lists.entries() == b.lists.entries()
    batch = random_batch(5, n=128)
    one, two = b.evaluate(batch), restored.evaluate(batch)
    np.testing.assert_array_equal(apply(one).decision, apply(two).decision)
    assert one.hits == two.hits and one.ruleset_version == two.ruleset_version


def test_a_restored_rule_that_no_longer_compiles_is_kept_out_of_force() -> None:
    names = tuple(FEATURE_NAMES)
    b = RuleBook(names, TRUST)
    b.apply(rule_message("r", f"{names[0]} > 1.0"))
    restored = RuleBook.restore(b.snapshot(), names[1:])
    assert restored.compiled() == [] and [r.id for r in restored.rules()] == ["r"]
    assert "undeclared reference" in restored.restore_refusals[0].reason
    with pytest.raises(SnapshotError, match="rebuild the book"):
        RuleBook.restore(b"garbage")


def test_policy_table() -> None:
    model = np.array(["approve", "review", "decline", "decline", "approve", "review"])
    f, t = False, True
    out = combine(
        model,
        decline=np.array([f, f, f, t, f, f]),
        review=np.array([f, f, t, f, t, t]),
        approve=np.array([t, t, t, t, f, t]),
    )
    # approve overrides the model, not a review rule, never a decline rule.
    assert out.tolist() == ["approve", "approve", "review", "decline", "review", "review"]


def test_outcome_shadow_tag_and_authors() -> None:
    b = book()
    b.apply(entry_message(ListEntry(list="vip", kind="card_id", value="c1")))
    b.apply(rule_message("allow", "card_id in lists.vip", action="approve", priority=5))
    b.apply(rule_message("hi", "score >= 0.0", action="decline", mode="shadow"))
    b.apply(rule_message("tag", "score >= 0.0", action="tag"))
    batch = random_batch(11, n=100)
    out = b.evaluate(batch)
    policy = apply(out)
    vip = batch.text["card_id"] == "c1"
    np.testing.assert_array_equal(policy.decision[vip], "approve")
    np.testing.assert_array_equal(policy.decision[~vip], batch.model_decision[~vip])
    assert (policy.shadow_decision == "decline").all()  # shadow decline would decline all
    assert out.counts[("hi", "shadow")] == 100 and out.counts[("tag", "active")] == 100
    i = int(np.flatnonzero(vip & (batch.model_decision != "approve"))[0])
    assert [h.rule_id for h in out.hits[i]] == ["allow", "tag", "hi"]
    assert policy.decided_by[i] == "allow"
    j = int(np.flatnonzero(~vip)[0])
    assert policy.decided_by[j] == "model"
    assert [r.feature for r in out.reasons(i)] == ["rule:allow", "rule:tag", "rule:hi"]
    assert out.reasons(i)[2].text.startswith("[shadow] ")


def test_batch_of_another_spec_is_an_error() -> None:
    b = RuleBook(tuple(FEATURE_NAMES)[:-1])
    with pytest.raises(ValueError, match="feature spec"):
        b.evaluate(random_batch(1))


def test_rule_contract_roundtrip() -> None:
    rule = Rule(id="r", version=3, description="d", owner="o", expression="true",
                action="tag", valid_from=T0)  # fmt: skip
    data = sign_record(rule, BOTH)  # signed over the decoded content: any time format verifies
    assert b'"valid_from":1735689600000' in data
    b = book()
    assert b.apply(Message("rules", "r", data.replace(b"1735689600000",
                                                      b'"2025-01-01T00:00:00Z"'))).change == "added"
    assert b.rules() == [rule]
