"""Bounded rule cost in the merchant stage, over real RocksDB and a real ONNX model.

A hostile rule record (the case ``expensive-shadow-rule``, properly signed) is
refused with a dead letter naming its cost; a rule that passes the check but
overruns on live payloads is disabled by the stream's guard, counted by rule id,
and the verdicts are those of the same stream without it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest
from prometheus_client import REGISTRY

from flows.serving import ModelSource
from stages import Stages, sourced
from topics.contracts import DeadLetter, Transaction

CASE = Path(__file__).parents[1] / "fixtures" / "cases" / "expensive-shadow-rule" / "records.jsonl"
T0 = 1_800_000_000_000
MIN = 60_000


def _source(path: Path) -> ModelSource:
    return ModelSource(path, thresholds=lambda m: m.thresholds, interval=0)


def txn(i: int, attributes: dict[str, str | int | float | bool | None] | None = None,
        amount: float = 20.0, merchant: str | None = None) -> Transaction:
    return Transaction(transaction_id=f"t-{i}", card_id=f"c-{i % 7}",
                       merchant_id=merchant or f"m-{i % 5}",
                       amount=amount, currency="EUR", event_time=T0 + i * MIN,
                       attributes=attributes)


def rule(rule_id: str, expression: str, action: str = "decline", **kw: object) -> dict[str, object]:
    return {"id": rule_id, "version": 1, "description": f"rule {rule_id}", "owner": "tests",
            "expression": expression, "action": action, **kw}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def stages(tiny_model_dir: Path, tmp_path: Path) -> Stages:
    return Stages(tmp_path / "with", _source(tiny_model_dir))


@pytest.fixture
def control(tiny_model_dir: Path, tmp_path: Path) -> Stages:
    return Stages(tmp_path / "without", _source(tiny_model_dir))


def test_the_case_rule_is_refused_naming_its_cost_and_scoring_goes_on(stages: Stages) -> None:
    first = json.loads(CASE.read_text().splitlines()[0])
    hostile = first["value_json"]
    stages.publish_rules("rules", [(hostile["id"], hostile),
                                   ("big", rule("big", "amount_reference > 5000.0"))])
    letters = [msgspec.json.decode(d.value, type=DeadLetter) for d in stages.dead_letters()]
    assert [(d.error_class, d.source_topic) for d in letters] == [("rule_too_costly", "rules")]
    assert f"rule {hostile['id']!r}" in letters[0].reason
    cost = re.search(r"([\d,.]+) µs per transaction", letters[0].reason)
    assert cost and float(cost.group(1).replace(",", "")) > 50.0 and "50 µs" in letters[0].reason
    stages.feed(sourced([txn(i) for i in range(10)] + [txn(10, amount=9000.0)], stages.parts))
    got = {v.transaction_id: v for v in stages.verdicts()}
    assert len(got) == 11
    assert all(h.rule_id != hostile["id"] for v in got.values() for h in v.rule_hits)
    assert got["t-10"].decision == "decline"  # the cheap rule applies


def test_an_overrunning_rule_is_disabled_and_verdicts_equal_those_without_it(
    stages: Stages, control: Stages
) -> None:
    """Each verdict names the rule set that decided it; once disabled, the rule is as if absent."""
    common = [("big", rule("big", "amount_reference > 5000.0")),
              ("lib", rule("lib", "string(amount).size() > 6", "review"))]
    stages.publish_rules("rules", [*common, ("attr-loop", rule("attr-loop",
                                                               'attributes.all(k, k != "zz")'))])
    control.publish_rules("rules", common)
    assert not stages.dead_letters()  # it passes the check: 64 attributes at most there
    before = sample("fraud_rules_disabled_total", rule_id="attr-loop")
    payload: dict[str, str | int | float | bool | None] = {f"k{j}": j for j in range(2_000)}
    batches = [[txn(16 * b + i, payload, amount=9000.0 if i == 3 else 20.0 + i, merchant="m-1")
                for i in range(16)] for b in range(5)]  # one merchant: one shard, 16-row batches
    for s in (stages, control):
        for batch in batches:
            s.feed(sourced(batch, s.parts))
    got, want = stages.verdicts(), control.verdicts()
    assert len(got) == len(want) == 80 and [v.transaction_id for v in got] == [
        v.transaction_id for v in want]
    without = want[0].rule_set_version
    assert {v.rule_set_version for v in want} == {without}
    disabled_at = next(i for i, v in enumerate(got) if v.rule_set_version == without)
    # over twice its budget in 3 consecutive batches (the 3rd takes no part), or sooner when
    # one batch is ten times over and 50 ms; never in the middle of a batch's verdicts
    assert disabled_at in (0, 16, 32)
    for mine in got[:disabled_at]:
        assert mine.rule_set_version != without  # decided with it, and says so
        assert "attr-loop" in [h.rule_id for h in mine.rule_hits]
        assert mine.decision == "decline"
    for mine, theirs in zip(got[disabled_at:], want[disabled_at:], strict=True):
        assert (mine.decision, mine.rule_set_version, mine.rule_hits) == (
            theirs.decision, theirs.rule_set_version, theirs.rule_hits)
    assert sample("fraud_rules_disabled_total", rule_id="attr-loop") == before + 1
