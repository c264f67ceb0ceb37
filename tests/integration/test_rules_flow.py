"""Analyst rules and lists on the real flow (``flows.score``) and the embedded broker.

* A two-process cluster: a rule published mid-stream applies from its ``valid_from``
  (event time) on every merchant shard of both processes, never before; a rule that
  does not compile is dead-lettered once and scoring goes on.
* ``kill -9`` while rules are being updated: every transaction still gets exactly one
  verdict value, and each hit is of a version in force at the transaction's event
  time (the rule book is part of the recovery snapshot).
* Lists: eight merchant shards share the process's list table, loaded from the ``lists``
  topic at every start; a blocklist entry stays in force after a clean stop and after a
  ``kill -9`` (no snapshot holds it), and a refused entry is dead-lettered once.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer

from devkit.broker import free_port
from devkit.process import FlowProcess
from flowkit import RULE_KEYS, Collector, flow_env, topic_set, wait_until
from rules.contracts import ListEntry
from rules.signing import sign_record
from tiny_model import tiny_history
from topics.admin import ensure_topics
from topics.contracts import Rule, Transaction
from topics.producer import PRODUCER_DEFAULTS
from topics.settings import KafkaSettings
from training.simulate import SimConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = SimConfig(n_transactions=6_000, n_cards=300, days=12, seed=17, fraud_rate=0.02)
encode = msgspec.json.Encoder().encode


def _rule(rule_id: str, expression: str, version: int = 1, **kw: object) -> Rule:
    return Rule(id=rule_id, version=version, description=f"rule {rule_id} v{version}",
                owner="tests", expression=expression, action="tag", **kw)  # type: ignore[arg-type]


def signed(rule: Rule) -> bytes:
    """The rule's record, signed by the dev maker (a tag rule needs one analyst)."""
    return sign_record(rule, [RULE_KEYS.maker])


def _send(producer: Producer, settings: KafkaSettings, topic: str,
          items: list[tuple[str, bytes | None]]) -> None:
    for key, value in items:
        producer.produce(settings.topic(topic), key=key.encode(), value=value)
        producer.poll(0)
    assert producer.flush(30) == 0


def _txns(producer: Producer, settings: KafkaSettings, txns: list[Transaction]) -> None:
    _send(producer, settings, "transactions", [(t.card_id, encode(t)) for t in txns])


def test_a_rule_published_mid_stream_applies_from_its_valid_from_on_every_worker(
    kafka: KafkaSettings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    txns = tiny_history(WORLD).transactions
    half = len(txns) // 2
    valid_from = txns[half].event_time
    settings = topic_set(kafka, "rules-cluster")
    ensure_topics(settings)
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    collector = Collector(settings)
    collector.start()
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    flows = [FlowProcess(flow_env(settings, tiny_model_dir, tmp_path / f"p{i}"),
                         tmp_path / f"flow-{i}.log", process_id=i, addresses=addresses)
             for i in range(2)]
    try:
        _txns(producer, settings, txns[:half // 2])
        collector.wait_for(half // 2, flows)
        # mid-stream: a rule from a point in event time still ahead, and a broken rule
        _send(producer, settings, "rules", [
            ("every", signed(_rule("every", "amount_reference >= 0.0", valid_from=valid_from))),
            ("broken", signed(_rule("broken", "card_count_10m > no_such_feature"))),
        ])
        wait_until(lambda: any(d.source_topic.endswith("rules")
                               for d in collector.outcome.dead_letters), flows,
                   "the broken rule's dead letter")
        _txns(producer, settings, txns[half // 2:])
        collector.wait_for(len(txns), flows)
        time.sleep(1)
    finally:
        for flow in flows:
            flow.stop()
        collector.stop()
    outcome = collector.outcome
    assert set(outcome.verdicts) == {t.transaction_id for t in txns}
    for t in txns:
        (v,) = {encode(c): c for c in outcome.verdicts[t.transaction_id]}.values()
        applied = [h.rule_id for h in v.rule_hits]
        assert applied == (["every"] if t.event_time >= valid_from else []), t.transaction_id
        assert v.decision == (v.model_decision or v.decision)  # a tag never decides
    letters = [d for d in outcome.dead_letters if d.source_topic.endswith("rules")]
    assert len(letters) == 1 and letters[0].error_class == "rule_compile"
    assert "no_such_feature" in letters[0].reason
    shards = {v[0].rule_set_version for v in outcome.verdicts.values() if v[0].rule_hits}
    assert len(shards) == 1  # one rule set version on every shard of both processes


def test_kill_9_during_rule_updates_changes_no_verdict(
    kafka: KafkaSettings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    txns = tiny_history(WORLD).transactions
    settings = topic_set(kafka, "rules-kill")
    ensure_topics(settings)
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    # four versions of one rule, each in force from a later point in event time
    points = [txns[i * len(txns) // 5].event_time for i in range(1, 5)]
    versions = [_rule("big", f"amount_reference > {10.0 * (k + 1)}", version=k + 1,
                      valid_from=p) for k, p in enumerate(points)]
    collector = Collector(settings)
    collector.start()
    env = flow_env(settings, tiny_model_dir, tmp_path)
    rng = random.Random(3)
    chunks = [txns[i:i + len(txns) // 6] for i in range(0, len(txns), len(txns) // 6)]
    try:
        for k, chunk in enumerate(chunks):
            flow = FlowProcess(env, tmp_path / "flow.log", recovery_dir=tmp_path / "recovery",
                               snapshot_seconds=1)
            if k < len(versions):
                _send(producer, settings, "rules", [("big", signed(versions[k]))])
            _txns(producer, settings, chunk)
            seen = len(collector.outcome.verdicts)
            wait_until(lambda s=seen: len(collector.outcome.verdicts) >= s + rng.randint(1, 200),
                       [flow], "progress before the kill")
            flow.kill()
        flow = FlowProcess(env, tmp_path / "flow.log", recovery_dir=tmp_path / "recovery",
                           snapshot_seconds=1)
        collector.wait_for(len(txns), [flow])
        time.sleep(1)
        flow.stop()
    finally:
        collector.stop()
    outcome = collector.outcome
    assert set(outcome.verdicts) == {t.transaction_id for t in txns}
    by_id = {t.transaction_id: t for t in txns}
    for tid, copies in outcome.verdicts.items():
        assert len({encode(c) for c in copies}) == 1, tid  # a crash changed no verdict
        v, t = copies[0], by_id[tid]
        # a hit is the version the shard held when it scored: in force, and it matched
        for hit in v.rule_hits:
            rule = versions[hit.version - 1]
            assert rule.valid_from is not None and rule.valid_from <= t.event_time
            assert (v.amount_reference or 0) > 10.0 * hit.version
    assert outcome.duplicates > 0, "a resumed run re-emits its last epoch: recovery did not run"


def _entry(value: str) -> tuple[str, bytes]:
    entry = ListEntry(list="blocked_cards", kind="card_id", value=value)
    return f"blocked_cards/{value}", sign_record(entry, [RULE_KEYS.maker])


def test_list_entries_are_loaded_per_process_and_stay_in_force_across_restarts(
    kafka: KafkaSettings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    txns = tiny_history(WORLD).transactions[:1_500]
    counts: dict[str, int] = {}
    for t in txns:
        counts[t.card_id] = counts.get(t.card_id, 0) + 1
    first, later = sorted(counts, key=lambda c: -counts[c])[:2]  # blocked now, after a kill
    settings = topic_set(kafka, "lists-restart")
    ensure_topics(settings)
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    decline = Rule(id="blk", version=1, description="blocked card", owner="tests",
                   expression="card_id in lists.blocked_cards", action="decline")
    _send(producer, settings, "rules", [("blk", signed(decline))])
    unsigned = ListEntry(list="blocked_cards", kind="card_id", value="tok-unsigned")
    _send(producer, settings, "lists", [_entry(first), *(_entry(f"tok-{i}") for i in range(20)),
                                        ("blocked_cards/tok-unsigned", encode(unsigned))])
    collector = Collector(settings)
    collector.start()
    env = flow_env(settings, tiny_model_dir, tmp_path,  # eight merchant shards, one process
                   FRAUD_LOG_LEVEL="INFO")
    log = tmp_path / "flow.log"
    runs = [txns[:500], txns[500:1_000], txns[1_000:]]
    try:
        for k, chunk in enumerate(runs):
            flow = FlowProcess(env, log, recovery_dir=tmp_path / "recovery", snapshot_seconds=1)
            if k == 0:  # the rule is read before the first transaction is sent
                wait_until(lambda: "rules blk added" in log.read_text(errors="replace"),
                           [flow], "the rule applied")
            if k == 2:  # published while the flow was down
                _send(producer, settings, "lists", [_entry(later)])
            _txns(producer, settings, chunk)
            collector.wait_for(len(collector.outcome.verdicts) + len(chunk), [flow], n_dead=1)
            if k == 1:
                time.sleep(2.5)  # a snapshot holds the chunk, then a crash
                flow.kill()
            else:
                flow.stop()
    finally:
        collector.stop()
    outcome = collector.outcome
    text = log.read_text(errors="replace")
    loads = [line for line in text.splitlines() if "lists: " in line and "loaded" in line]
    assert len(loads) == 3 and "21 entries loaded" in loads[0] and "22 entries" in loads[2]
    assert set(outcome.verdicts) == {t.transaction_id for t in txns}
    for k, chunk in enumerate(runs):
        for t in chunk:
            v = outcome.verdicts[t.transaction_id][0]
            blocked = t.card_id == first or (k == 2 and t.card_id == later)
            assert ([h.rule_id for h in v.rule_hits] == ["blk"]) == blocked, (k, t.card_id)
            assert v.decision == "decline" or not blocked
    letters = [d for d in outcome.dead_letters if d.source_topic.endswith("lists")]
    assert [d.error_class for d in letters] == ["list_unauthenticated"]  # once, 8 shards
