"""Only signed rules and lists change decisions; loosening changes wait for a second analyst.

Over the real rule book (CEL compiled, the decision policy of ``scoring.policy``)
and the case ``tests/fixtures/cases/unsigned-approve-rule``.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest
from unit.rules.rulekit import BOTH, KEYS, TRUST, entry_message, random_batch, rule_message

from rules.approval import rule_loosens
from rules.audit import ApprovalError, approval, changes
from rules.book import Applied, Message, Refused, RuleBook
from rules.contracts import ListEntry, Rule
from rules.signing import Signature, Signer, attach, sign_record, write_key
from scoring.policy import apply
from state.spec import FEATURE_NAMES

CASE = Path(__file__).parents[2] / "fixtures" / "cases" / "unsigned-approve-rule"
MAKER, CHECKER = KEYS.maker, KEYS.checker


def book() -> RuleBook:
    return RuleBook(FEATURE_NAMES, TRUST)


def decisions(b: RuleBook, seed: int = 3) -> np.ndarray:
    return apply(b.evaluate(random_batch(seed, n=256))).decision


def case_rule() -> tuple[str, bytes]:
    for line in (CASE / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("topic") == "rules":
            return record["key"], json.dumps(record["value_json"]).encode()
    raise AssertionError("the case has no rules record")


def test_the_case_rule_is_refused_naming_the_rule_and_what_is_missing() -> None:
    b = book()
    model_only = decisions(b)
    key, value = case_rule()
    result = b.apply(Message("rules", key, value, offset=0))
    assert isinstance(result, Refused) and result.error_class == "rule_unauthenticated"
    assert "'vip-allow'" in result.reason and "not signed" in result.reason
    assert b.compiled() == [] and b.pending == {}
    np.testing.assert_array_equal(decisions(b), model_only)


@pytest.mark.parametrize("forgery", ["random", "untrusted key", "other record", "self-declared"])
def test_forged_and_untrusted_signatures_change_nothing(forgery: str, tmp_path: Path) -> None:
    b = book()
    model_only = decisions(b)
    rule = Rule(id="vip-allow", version=1, description="vip", owner="fraud-ops",
                expression="amount >= 0.0", action="approve")
    if forgery == "random":
        value = attach(rule, [Signature("dev-maker", "A" * 86 + "==")] * 2)
    elif forgery == "untrusted key":  # a real Ed25519 key pair that nobody trusted
        mallory = Signer.from_file(write_key("mallory", tmp_path)[0])
        value = sign_record(rule, [mallory, Signer("dev-checker", mallory.key)])
    elif forgery == "other record":  # both real signatures, copied from a harmless rule
        harmless = msgspec.structs.replace(rule, action="tag")
        content = msgspec.json.decode(sign_record(harmless, BOTH))
        value = attach(rule, [msgspec.convert(s, Signature) for s in content["signatures"]])
    else:  # an analyst id in the record is not a signature
        value = msgspec.json.encode({**msgspec.to_builtins(rule), "signatures": [
            {"analyst": "dev-maker", "signature": ""}, {"analyst": "dev-checker",
                                                        "signature": ""}]})
    result = b.apply(Message("rules", "vip-allow", value))
    assert isinstance(result, Refused) and result.error_class == "rule_unauthenticated"
    assert "no valid signature" in result.reason
    np.testing.assert_array_equal(decisions(b), model_only)


def test_an_approve_rule_waits_for_a_second_distinct_analyst_and_survives_a_snapshot() -> None:
    b = book()
    model_only = decisions(b)
    one = b.apply(rule_message("vip", "amount >= 0.0", action="approve", signers=[MAKER]))
    assert isinstance(one, Applied) and one.change == "pending"
    twice = b.apply(rule_message("vip", "amount >= 0.0", action="approve",
                                 signers=[MAKER, MAKER]))
    assert isinstance(twice, Applied) and twice.change == "pending"  # one analyst, twice
    np.testing.assert_array_equal(decisions(b), model_only)
    waiting = b.pending[("rules", "vip")]
    assert waiting.author == "dev-maker" and "approve" in waiting.reason
    restored = RuleBook.restore(b.snapshot(), FEATURE_NAMES, TRUST)
    assert restored.pending == b.pending and restored.compiled() == []
    both = restored.apply(rule_message("vip", "amount >= 0.0", action="approve"))
    assert isinstance(both, Applied) and both.change == "added"
    assert restored.pending == {} and restored.signers["rules:vip"] == ("dev-maker",
                                                                         "dev-checker")
    assert (decisions(restored) == "approve").all()


def test_which_changes_loosen_decisions() -> None:
    decline = Rule(id="r", version=1, description="d", owner="o", expression="amount > 1.0",
                   action="decline")
    loosening = {
        "review": msgspec.structs.replace(decline, version=2, action="review"),
        "disabled": msgspec.structs.replace(decline, version=2, enabled=False),
        "shadow": msgspec.structs.replace(decline, version=2, mode="shadow"),
        "tag": msgspec.structs.replace(decline, version=2, action="tag"),
        "expression": msgspec.structs.replace(decline, version=2, expression="amount > 9.0"),
        "window": msgspec.structs.replace(decline, version=2, valid_until=1),
        "approve": msgspec.structs.replace(decline, version=2, action="approve"),
    }
    for name, new in loosening.items():
        assert rule_loosens(decline, new) is not None, name
    tightening = {
        "new decline": (None, decline),
        "new review": (None, msgspec.structs.replace(decline, action="review")),
        "shadow approve": (None, msgspec.structs.replace(decline, action="approve",
                                                         mode="shadow")),
        "review to decline": (msgspec.structs.replace(decline, action="review"), decline),
        "description": (decline, msgspec.structs.replace(decline, version=2, description="x")),
        "tag rewritten": (msgspec.structs.replace(decline, action="tag"),
                          msgspec.structs.replace(decline, version=2, action="tag",
                                                  expression="true")),
    }
    for name, (old, new) in tightening.items():
        assert rule_loosens(old, new) is None, name


def test_one_signature_cannot_disable_a_decline_rule_but_can_add_one() -> None:
    b = book()
    assert b.apply(rule_message("block", "amount > 100.0", action="decline",
                                signers=[MAKER])).change == "added"
    before = decisions(b)
    result = b.apply(rule_message("block", "amount > 100.0", action="decline", version=2,
                                  enabled=False, signers=[CHECKER]))
    assert isinstance(result, Applied) and result.change == "pending"
    assert [c.rule.version for c in b.compiled()] == [1]
    np.testing.assert_array_equal(decisions(b), before)
    tighter = b.apply(rule_message("block", "amount > 100.0", action="decline", version=3,
                                   priority=5, signers=[MAKER]))
    assert isinstance(tighter, Applied) and tighter.change == "updated"
    assert b.pending == {}  # the later version settles the waiting one


def test_list_entries_are_signed_and_blocklist_removals_need_two() -> None:
    b = book()
    blocked = ListEntry(list="blocked_cards", kind="card_id", value="c1")
    unsigned = b.apply(Message("lists", "blocked_cards/c1", msgspec.json.encode(blocked)))
    assert isinstance(unsigned, Refused) and unsigned.error_class == "list_unauthenticated"
    assert b.apply(entry_message(blocked, signers=[MAKER])).change == "added"
    b.apply(rule_message("blk", "card_id in lists.blocked_cards", action="decline",
                         signers=[MAKER]))
    tombstone = b.apply(Message("lists", "blocked_cards/c1", None))
    assert isinstance(tombstone, Refused) and tombstone.error_class == "list_unauthenticated"
    assert b.apply(entry_message(blocked, signers=[MAKER], retired=True)).change == "pending"
    assert b.lists.get("blocked_cards", "c1") == blocked
    assert b.apply(entry_message(blocked, retired=True)).change == "removed"
    assert b.lists.get("blocked_cards", "c1") is None and b.pending == {}


def test_allowlist_additions_need_two_once_an_approve_rule_uses_the_list() -> None:
    b = book()
    b.apply(rule_message("vip", "card_id in lists.vip_cards", action="approve"))
    entry = ListEntry(list="vip_cards", kind="card_id", value="c1")
    assert b.apply(entry_message(entry, signers=[MAKER])).change == "pending"
    assert b.lists.get("vip_cards", "c1") is None
    other = ListEntry(list="blocked_cards", kind="card_id", value="c2")
    assert b.apply(entry_message(other, signers=[MAKER])).change == "added"


def test_the_publisher_and_the_checker_make_what_the_flow_accepts() -> None:
    b = book()
    rule = Rule(id="vip", version=1, description="vip", owner="fraud-ops",
                expression="amount >= 0.0", action="approve")
    made = changes(b, "add", [(rule, False)], MAKER, reason="VIP programme", now_ms=5)[0]
    assert made.audit.outcome == "pending" and made.audit.signers == ["dev-maker"]
    assert made.audit.reason == "VIP programme" and made.audit.value == made.value.decode()
    assert b.apply(Message("rules", made.key, made.value)).change == "pending"
    with pytest.raises(ApprovalError, match="distinct analyst"):
        approval(b.pending[("rules", "vip")], MAKER, reason="", now_ms=6)
    checked = approval(b.pending[("rules", "vip")], CHECKER, reason="ok", now_ms=6)
    assert checked.audit.command == "approve" and checked.audit.outcome == "in_force"
    assert checked.audit.signers == ["dev-maker", "dev-checker"]
    assert b.apply(Message("rules", checked.key, checked.value)).change == "added"
    key, value = checked.audit_record()
    assert key == "rules/vip" and json.loads(value)["value_sha256"] == checked.audit.value_sha256


def test_a_book_without_trusted_keys_refuses_every_record() -> None:
    b = RuleBook(FEATURE_NAMES)
    result = b.apply(rule_message("r", "amount > 1.0", action="decline"))
    assert isinstance(result, Refused) and result.error_class == "rule_unauthenticated"
    assert "not a trusted analyst" in result.reason


@pytest.mark.parametrize("pan", ["4111111111111111", "5105 1051 0510 5100", "3782-822463-10005"])
def test_a_card_list_entry_holding_a_pan_is_refused_and_never_stored(pan: str) -> None:
    """card_id list entries are tokens: a PAN in clear is refused, signed or not, masked."""
    b = book()
    result = b.apply(entry_message(ListEntry(list="blocked_cards", kind="card_id", value=pan)))
    assert isinstance(result, Refused) and result.error_class == "list_invalid"
    digits = pan.replace(" ", "").replace("-", "")
    assert digits not in result.reason and pan not in result.reason
    assert digits not in result.key and pan not in result.key
    assert pan.encode() not in b.snapshot() and digits.encode() not in b.snapshot()
    token = b.apply(entry_message(ListEntry(list="blocked_cards", kind="card_id",
                                            value="tok_0123456789abcdef0123456789abcdef")))
    assert isinstance(token, Applied)


def test_lists_are_capped_per_list_and_in_all() -> None:
    """A new entry beyond a list's cap, or the cap of all lists, is refused (list_full)."""
    from rules.cost import CostBudget

    b = RuleBook(FEATURE_NAMES, TRUST, budget=CostBudget(max_list_entries=3, max_entries=5))

    def add(name: str, value: str, kind: str = "card_id") -> Applied | Refused:
        return b.apply(entry_message(ListEntry(list=name, kind=kind, value=value)))

    assert all(isinstance(add("blocked_cards", f"c{i}"), Applied) for i in range(3))
    full = add("blocked_cards", "c3")
    assert isinstance(full, Refused) and full.error_class == "list_full"
    assert "'blocked_cards' holds 3 entries" in full.reason
    assert "FRAUD_LIST_MAX_ENTRIES=3" in full.reason
    assert isinstance(add("blocked_cards", "c1"), Applied)  # the same entry again: no growth
    b.apply(entry_message(ListEntry(list="blocked_cards", kind="card_id", value="c0"),
                          retired=True))
    assert isinstance(add("blocked_cards", "c3"), Applied)  # room again after a removal
    assert all(isinstance(add("watch", c, "country"), Applied) for c in ("FR", "DE"))
    over = add("watch", "NG", "country")
    assert isinstance(over, Refused) and "FRAUD_LISTS_MAX_ENTRIES=5" in over.reason
    assert len(b.lists.entries()) == 5
