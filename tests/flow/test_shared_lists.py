"""The process's list table in the merchant stage: one index for every shard, out of snapshots.

The merchant shards are built as :func:`flows.score.build_flow` builds them: every
book shares one :class:`~rules.list_table.ListTable`, and the table of a new process
is loaded from the ``lists`` records (here: kept in memory, the topic's stand-in) by
:func:`flows.list_loader.fill`, the code path of the start-up read.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import msgspec
import pytest

import stages as stages_module
from flows.kafka import RawRecord
from flows.list_loader import fill
from flows.merchant_stage import MerchantSnapshot, RuleRecord
from flows.scorer import MerchantScorer
from flows.serving import ModelSource
from rules.book import RuleBook
from rules.cost import CostBudget
from rules.list_table import ListTable
from rules.signing import sign_json
from stages import SIGNERS, TRUST, Stages, sourced
from topics.contracts import DeadLetter, Transaction

T0 = 1_800_000_000_000
MIN = 60_000
SHARDS = 2
RULE = {"id": "blk", "version": 1, "description": "blocked card", "owner": "tests",
        "expression": "card_id in lists.blocked_cards", "action": "decline"}


def entry(value: str) -> dict[str, object]:
    return {"list": "blocked_cards", "kind": "card_id", "value": value}


def txn(i: int, card: str) -> Transaction:
    return Transaction(transaction_id=f"t-{card}-{i}", card_id=card, merchant_id=f"m-{i % 7}",
                       amount=20.0, currency="EUR", event_time=T0 + i * MIN)


class Process:
    """One flow process: merchant shards whose books share one list table, and the topics."""

    def __init__(self, root: Path, model: Path, monkeypatch: pytest.MonkeyPatch,
                 topics: dict[str, list[RawRecord]],
                 resumed: tuple[dict[int, Any], dict[int, MerchantSnapshot]] | None = None
                 ) -> None:
        self.topics = topics
        self.table = ListTable()
        as_records = {name: [(r.offset, r.key, r.value) for r in records]
                      for name, records in topics.items()}
        fill(self.table, as_records["rules"], as_records["lists"], TRUST, CostBudget())
        table = self.table

        class SharedBook(RuleBook):  # as build_flow's open_scorer: table=the process's
            def __init__(self, *args: Any, **kw: Any) -> None:
                kw["table"] = kw.get("table") or table
                super().__init__(*args, **kw)

        monkeypatch.setattr(stages_module, "RuleBook", SharedBook)
        monkeypatch.setattr(stages_module, "MerchantScorer",
                            functools.partial(MerchantScorer, reports_lists=True))
        source = ModelSource(model, thresholds=lambda m: m.thresholds, interval=0)
        self.stages = Stages(root, source, shards=SHARDS, resumed=resumed)

    def publish(self, topic: str, items: list[tuple[str, dict[str, object] | None]],
                signed: bool = True) -> None:
        """Append records to the topic and hand each to every merchant shard (the broadcast)."""
        log = self.topics[topic]
        raws = [RawRecord(key.encode(), sign_json(topic, value, SIGNERS) if signed
                          else msgspec.json.encode(value), topic, 0, len(log) + i, 0)
                for i, (key, value) in enumerate(items)]
        log.extend(raws)
        self.redeliver(raws)

    def redeliver(self, raws: list[RawRecord]) -> None:
        for shard in sorted(self.stages.merchants, reverse=True):  # shard 0 is not the first
            out, _ = self.stages.merchants[shard].on_batch([RuleRecord(shard, r) for r in raws])
            self.stages.outputs.extend(out)

    def books(self) -> list[RuleBook]:
        return [m._opened(s).rules for s, m in self.stages.merchants.items()]  # type: ignore[misc]

    def stop(self) -> tuple[dict[int, Any], dict[int, MerchantSnapshot]]:
        snaps = self.stages.snapshots()
        for s, m in self.stages.merchants.items():
            m._opened(s).store.close()
        for c in self.stages.cards.values():
            if c._store is not None:  # type: ignore[attr-defined]
                c._store.close()  # type: ignore[attr-defined]
        return snaps


@pytest.fixture
def topics() -> dict[str, list[RawRecord]]:
    return {"rules": [], "lists": []}


def test_two_merchant_shards_hold_one_index_and_report_a_refused_entry_once(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    topics: dict[str, list[RawRecord]],
) -> None:
    p = Process(tmp_path, tiny_model_dir, monkeypatch, topics)
    p.publish("rules", [("blk", RULE)])
    p.publish("lists", [("blocked_cards/c-9", entry("c-9"))])
    p.publish("lists", [("blocked_cards/c-8", entry("c-8"))], signed=False)
    one, two = p.books()
    assert one.table is two.table is p.table and one.lists is two.lists
    assert one.lists.size() == 1 and one.version == two.version
    letters = [msgspec.json.decode(d.value, type=DeadLetter)
               for d in p.stages.dead_letters()]
    assert [d.error_class for d in letters] == ["list_unauthenticated"]  # once, not per shard
    p.stages.feed(sourced([txn(i, "c-9") for i in range(1, 15)] + [txn(1, "c-8")],
                          p.stages.parts))
    by_id = {v.transaction_id: v for v in p.stages.verdicts()}
    assert len(by_id) == 15
    assert all(v.decision == "decline" for k, v in by_id.items() if "c-9" in k)
    assert not by_id["t-c-8-1"].rule_hits
    assert len({v.rule_set_version for v in by_id.values()}) == 1  # both shards, one version


@pytest.mark.parametrize("clean", [True, False], ids=["clean-stop", "kill"])
def test_a_list_entry_is_in_force_after_a_restart_from_a_snapshot(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    topics: dict[str, list[RawRecord]], clean: bool,
) -> None:
    first = Process(tmp_path, tiny_model_dir, monkeypatch, topics)
    first.publish("rules", [("blk", RULE)])
    first.publish("lists", [("blocked_cards/c-9", entry("c-9"))])
    first.publish("lists", [("blocked_cards/c-8", entry("c-8"))], signed=False)
    first.stages.feed(sourced([txn(1, "c-9")], first.stages.parts))
    if clean:
        first.publish("lists", [("blocked_cards/c-7", entry("c-7"))])
    snaps = first.stop()
    if not clean:  # killed after the snapshot: a later entry is in the topic, not the snapshot
        topics["lists"].append(RawRecord(b"blocked_cards/c-7", sign_json(
            "lists", entry("c-7"), SIGNERS), "lists", 0, len(topics["lists"]), 0))
    assert all(len(s.rules or b"") < 2_000 for s in snaps[1].values())
    second = Process(tmp_path, tiny_model_dir, monkeypatch, topics, resumed=snaps)
    assert second.table.index.size() == 2 and second.table.offset == 2
    second.redeliver(topics["lists"])  # the source re-reads from its snapshot offset or before
    letters = [msgspec.json.decode(d.value, type=DeadLetter)
               for d in second.stages.dead_letters()]
    # the unsigned record was refused at start-up again: reported once more (as before the
    # table, a restart re-reading it dead-letters it again), by one shard only
    assert [d.error_class for d in letters] == ["list_unauthenticated"]
    second.stages.feed(sourced([txn(i, c) for i in range(2, 6) for c in ("c-9", "c-7")]
                               + [txn(6, "c-8")], second.stages.parts))
    by_id = {v.transaction_id: v for v in second.stages.verdicts()}
    assert all(v.decision == "decline" and v.rule_hits for k, v in by_id.items()
               if "c-8" not in k)
    assert not by_id["t-c-8-6"].rule_hits
    one, two = second.books()
    assert one.table is two.table and one.version == two.version


def test_the_snapshot_does_not_grow_with_the_number_of_list_entries(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes = {}
    for n in (10, 5_000):
        p = Process(tmp_path / str(n), tiny_model_dir, monkeypatch, {"rules": [], "lists": []})
        p.publish("rules", [("blk", RULE)])
        p.publish("lists", [(f"blocked_cards/tok-{i}", entry(f"tok-{i}")) for i in range(n)])
        assert p.table.index.size() == n
        _, merchants = p.stages.snapshots()
        sizes[n] = [len(s.rules or b"") for s in merchants.values()]
        p.stop()
    assert all(abs(big - small) <= 8 for small, big in zip(sizes[10], sizes[5_000], strict=True))
    assert max(sizes[5_000]) < 2_000, sizes


def test_lists_that_cannot_be_read_stop_the_start_with_what_to_check() -> None:
    from flows.list_loader import load_lists
    from topics.errors import BrokerError
    from topics.settings import KafkaSettings

    nowhere = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with pytest.raises(BrokerError, match="cannot load the lists before scoring") as err:
        load_lists(nowhere, TRUST, CostBudget(), stall_s=2)
    assert "127.0.0.1:1" in str(err.value) and "ACLs" in str(err.value)
