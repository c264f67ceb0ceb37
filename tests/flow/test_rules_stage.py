"""Analyst rules and lists in the merchant stage, over real RocksDB and a real ONNX model."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from prometheus_client import REGISTRY

from flows.serving import ModelSource
from rules.signing import sign_json
from stages import SIGNERS, Stages, sourced
from topics.contracts import DeadLetter, Transaction

T0 = 1_800_000_000_000
MIN = 60_000


def _source(path: Path) -> ModelSource:
    return ModelSource(path, thresholds=lambda m: m.thresholds, interval=0)


def txn(i: int, card: str = "c-1", amount: float = 20.0, t: int | None = None) -> Transaction:
    return Transaction(transaction_id=f"t-{card}-{i}", card_id=card, merchant_id=f"m-{i % 5}",
                       amount=amount, currency="EUR", event_time=T0 + i * MIN if t is None else t)


def rule(rule_id: str, expression: str, action: str = "decline", **kw: object) -> dict[str, object]:
    return {"id": rule_id, "version": kw.pop("version", 1), "description": f"rule {rule_id}",
            "owner": "tests", "expression": expression, "action": action, **kw}


def hits(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def stages(tiny_model_dir: Path, tmp_path: Path) -> Stages:
    return Stages(tmp_path, _source(tiny_model_dir))


def test_an_active_rule_decides_and_the_verdict_says_which(stages: Stages) -> None:
    stages.publish_rules("rules", [("big", rule("big", "amount_reference > 5000.0"))])
    stages.feed(sourced([txn(1), txn(2, amount=9000.0)], stages.parts))
    by_id = {v.transaction_id: v for v in stages.verdicts()}
    small, big = by_id["t-c-1-1"], by_id["t-c-1-2"]
    assert small.rule_hits == [] and small.model_decision is None
    assert big.decision == "decline" and [h.rule_id for h in big.rule_hits] == ["big"]
    assert big.reasons[0].feature == "rule:big" and big.reasons[0].text == "rule big"
    assert small.rule_set_version == big.rule_set_version is not None
    if big.score < 0.5:  # the model alone would not have declined it
        assert big.model_decision in ("approve", "review")


def test_a_shadow_rule_changes_no_decision_but_is_counted(stages: Stages,
                                                           tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:
    alone = Stages(tmp_path / "alone", _source(tiny_model_dir))
    stages.publish_rules("rules", [("all", rule("all", "amount_reference >= 0.0",
                                                mode="shadow"))])
    before = hits("fraud_rule_hits_total", rule_id="all", mode="shadow")
    batch = [txn(i) for i in range(20)]
    stages.feed(sourced(batch, stages.parts))
    alone.feed(sourced(batch, alone.parts))
    got, ref = stages.verdicts(), alone.verdicts()
    assert [(v.score, v.decision) for v in got] == [(v.score, v.decision) for v in ref]
    assert all(v.rule_hits and v.rule_hits[0].mode == "shadow" for v in got)
    assert all(v.model_decision is None for v in got)
    assert hits("fraud_rule_hits_total", rule_id="all", mode="shadow") == before + 20


def test_a_blocklist_entry_stops_applying_after_its_expiry(stages: Stages) -> None:
    stages.publish_rules("lists", [("blocked_cards/c-9", {
        "list": "blocked_cards", "kind": "card_id", "value": "c-9", "expires": T0 + 10 * MIN})])
    stages.publish_rules("rules", [("blk", rule("blk", "card_id in lists.blocked_cards"))])
    stages.feed(sourced([txn(1, "c-9"), txn(20, "c-9"), txn(2, "c-8")], stages.parts))
    by_id = {v.transaction_id: v for v in stages.verdicts()}
    assert by_id["t-c-9-1"].decision == "decline"  # before the expiry (event time)
    assert not by_id["t-c-9-20"].rule_hits  # after it
    assert not by_id["t-c-8-2"].rule_hits


def test_a_rule_applies_from_its_valid_from_in_event_time(stages: Stages) -> None:
    stages.publish_rules("rules", [("late", rule("late", "amount_reference > 1.0",
                                                 valid_from=T0 + 5 * MIN))])
    stages.feed(sourced([txn(i) for i in range(1, 10)], stages.parts))
    hit = {v.transaction_id: bool(v.rule_hits) for v in stages.verdicts()}
    assert [hit[f"t-c-1-{i}"] for i in range(1, 10)] == [False] * 4 + [True] * 5


def test_a_bad_rule_is_refused_once_with_a_dead_letter_and_scoring_goes_on(
    stages: Stages
) -> None:
    stages.publish_rules("rules", [("bad", rule("bad", "card_count_10m > nope"))])
    letters = [msgspec.json.decode(d.value, type=DeadLetter) for d in stages.dead_letters()]
    assert len(letters) == 1  # every shard refused it; shard 0 alone dead-letters it
    assert letters[0].error_class == "rule_compile" and "nope" in letters[0].reason
    assert letters[0].source_topic == "rules"
    stages.feed(sourced([txn(1)], stages.parts))
    assert len(stages.verdicts()) == 1 and not stages.verdicts()[0].rule_hits


def test_the_rule_book_survives_a_restart_from_the_snapshot(
    stages: Stages, tiny_model_dir: Path, tmp_path: Path
) -> None:
    stages.publish_rules("rules", [("big", rule("big", "amount_reference > 5000.0"))])
    _, snaps = stages.snapshots()
    assert all(s.rules for s in snaps.values())
    from flows.merchant_stage import MerchantLogic

    logic = stages.merchants[0]
    version = logic._opened(0).rules.version  # type: ignore[union-attr]
    logic._opened(0).store.close()  # the process dies
    restored = MerchantLogic(logic._open_scorer, snaps[0], 60.0, stages.parts, 1)
    scorer = restored._opened(0)
    assert scorer.rules is not None and scorer.rules.has_rules
    assert scorer.rules.version == version


def test_rule_hits_and_their_overlap_with_the_model_reach_the_drift_snapshot(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from drift.windows import DriftAggregator, DriftPartial

    window = 10 * MIN
    stages = Stages(tmp_path, _source(tiny_model_dir), drift_window_ms=window)
    stages.publish_rules("rules", [
        ("big", rule("big", "amount_reference > 5000.0", action="review")),
        ("all", rule("all", "amount_reference >= 0.0", mode="shadow")),
    ])
    batch = [txn(i, card=f"c-{i % 7}", amount=9000.0 if i % 4 == 0 else 20.0)
             for i in range(40)]
    stages.feed(sourced(batch, stages.parts))
    # every input partition moves two windows on: the first windows close everywhere
    stages.feed(sourced([txn(100 + p, card=f"c-{p}", t=T0 + 3 * window) for p in range(7)],
                        stages.parts))
    stages.advance(61.0)  # idle shards hand their windows on
    agg = DriftAggregator(stages.shards, window, psi_threshold=0.2, min_count=1,
                          flush_seconds=60)
    snaps = [s for o in stages.outputs if isinstance(o, DriftPartial)
             for s in agg.add(o, now=0.0)]
    snaps += agg.flush(now=120.0)
    assert agg.late_partials == 0
    expected: dict[tuple[str, str], list[int]] = {}
    for v in stages.verdicts():
        flagged = (v.model_decision or v.decision) != "approve"
        for h in v.rule_hits:
            c = expected.setdefault((h.rule_id, h.mode), [0, 0])
            c[0] += 1
            c[1] += int(flagged)
    got: dict[tuple[str, str], list[int]] = {}
    for s in snaps:
        for r in s.rules:
            c = got.setdefault((r.rule_id, r.mode), [0, 0])
            c[0] += r.hits
            c[1] += r.model_flagged
    assert got == expected
    assert got[("all", "shadow")][0] == 47 and got[("big", "active")][0] == 10


def test_an_unsigned_approve_all_rule_is_refused_counted_and_changes_no_verdict(
    stages: Stages, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The case ``unsigned-approve-rule``: written to ``rules`` by anyone, owner self-declared."""
    alone = Stages(tmp_path / "alone", _source(tiny_model_dir))
    refused = hits("fraud_rule_messages_refused_total", topic="rules",
                   error_class="rule_unauthenticated")
    vip = rule("vip-allow", "amount >= 0.0", "approve", owner="fraud-ops")
    stages.publish_rules("rules", [("vip-allow", vip)], signed=False)
    letters = [msgspec.json.decode(d.value, type=DeadLetter) for d in stages.dead_letters()]
    assert [(d.error_class, d.source_topic) for d in letters] == [("rule_unauthenticated",
                                                                   "rules")]
    assert "'vip-allow'" in letters[0].reason and "not signed" in letters[0].reason
    assert hits("fraud_rule_messages_refused_total", topic="rules",
                error_class="rule_unauthenticated") == refused + 1  # once, by shard 0
    batch = [txn(i, amount=4800.0 + i) for i in range(12)]
    stages.feed(sourced(batch, stages.parts))
    alone.feed(sourced(batch, alone.parts))
    got, ref = stages.verdicts(), alone.verdicts()
    assert [(v.transaction_id, v.decision) for v in got] == [
        (v.transaction_id, v.decision) for v in ref]
    assert not any(v.rule_hits for v in got)


def test_a_loosening_rule_signed_once_waits_and_is_counted_pending(stages: Stages) -> None:
    maker = SIGNERS[0]
    value = sign_json("rules", rule("vip", "amount >= 0.0", "approve"), [maker])
    stages.publish_rules("rules", [("vip", msgspec.json.decode(value))], signed=False)
    assert hits("fraud_rule_changes_pending", topic="rules") == 1
    assert hits("fraud_rule_changes_total", topic="rules", outcome="pending") >= 1
    assert stages.dead_letters() == []
    stages.feed(sourced([txn(i, amount=4800.0) for i in range(5)], stages.parts))
    assert not any(v.rule_hits for v in stages.verdicts())
    stages.publish_rules("rules", [("vip", rule("vip", "amount >= 0.0", "approve"))])
    assert hits("fraud_rule_changes_pending", topic="rules") == 0
    stages.feed(sourced([txn(i, amount=4800.0) for i in range(5, 8)], stages.parts))
    later = [v for v in stages.verdicts() if v.transaction_id >= "t-c-1-5"]
    assert later and all(v.decision == "approve" and v.rule_hits for v in later)


def test_amount_unrated_lets_a_rule_catch_a_currency_without_a_rate(stages: Stages) -> None:
    """Issue 23: without a rates file VND has no rate; ``amount_reference > X`` cannot see it."""
    stages.publish_rules("rules", [
        ("unrated", rule("unrated", "amount_unrated", action="review")),
        ("big-rated", rule("big-rated", "!amount_unrated && amount_reference > 1000.0")),
        ("big-silent", rule("big-silent", "amount_reference > 1000.0", mode="shadow")),
    ])
    vnd = msgspec.structs.replace(txn(1, "c-vn", amount=52_000_000.0), currency="VND")
    stages.feed(sourced([vnd, txn(2, "c-eu", amount=2000.0), txn(3, "c-eu")], stages.parts))
    by_id = {v.transaction_id: v for v in stages.verdicts()}
    unrated, big, small = by_id["t-c-vn-1"], by_id["t-c-eu-2"], by_id["t-c-eu-3"]
    assert unrated.amount_unrated and unrated.amount_reference is None
    assert [h.rule_id for h in unrated.rule_hits] == ["unrated"]
    assert unrated.decision in ("review", "decline")
    assert unrated.reasons[0].feature == "rule:unrated"
    assert [(h.rule_id, h.mode) for h in big.rule_hits] == [("big-rated", "active"),
                                                           ("big-silent", "shadow")]
    assert big.decision == "decline" and not big.amount_unrated
    assert small.rule_hits == []
