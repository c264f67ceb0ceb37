"""One list table per process, shared by its books: applied once, reported once, one version."""

from __future__ import annotations

import threading

import msgspec
import numpy as np
import pytest
from unit.rules.rulekit import (
    KEYS,
    STANDARD_ENTRIES,
    TRUST,
    entry_message,
    random_batch,
    rule_message,
)

from flows.list_loader import fill
from rules.book import SNAPSHOT_FORMAT, Applied, Message, Refused, RuleBook, _Snapshot
from rules.contracts import ListEntry, list_key
from rules.cost import CostBudget
from rules.errors import SnapshotError
from rules.list_table import ListTable
from rules.signing import sign_record
from state.spec import FEATURE_NAMES


def at(message: Message, offset: int) -> Message:
    return Message(message.topic, message.key, message.value, offset)


def books(n: int = 2, **kw: object) -> tuple[ListTable, list[RuleBook]]:
    table = ListTable()
    return table, [RuleBook(FEATURE_NAMES, TRUST, table=table, **kw) for _ in range(n)]  # type: ignore[arg-type]


def test_two_books_sharing_a_table_apply_a_record_once_and_agree_on_the_version() -> None:
    table, (one, two) = books()
    for b in (one, two):
        b.apply(rule_message("blk", "card_id in lists.blocked_cards", action="decline"))
    results = [[b.apply(at(entry_message(e), i)) for b in (one, two)]
               for i, e in enumerate(STANDARD_ENTRIES)]
    assert all(first.change == "added" and again.change == "replayed"
               for first, again in results)  # type: ignore[union-attr]
    assert one.lists is two.lists is table.index
    assert table.index.size() == len(STANDARD_ENTRIES) and table.offset == len(STANDARD_ENTRIES) - 1
    alone = RuleBook(FEATURE_NAMES, TRUST)  # a book with its own table, fed the same records
    alone.apply(rule_message("blk", "card_id in lists.blocked_cards", action="decline"))
    for e in STANDARD_ENTRIES:
        alone.apply(entry_message(e))
    assert one.version == two.version == alone.version
    assert one.offsets == two.offsets == {"lists": len(STANDARD_ENTRIES) - 1}
    batch = random_batch(3, n=128)
    assert one.evaluate(batch).hits == two.evaluate(batch).hits == alone.evaluate(batch).hits


def test_a_refused_record_is_refused_once_and_its_redelivery_is_a_no_op() -> None:
    _, (one, two) = books()
    unsigned = Message("lists", "blocked_cards/c1",
                       msgspec.json.encode(ListEntry(list="blocked_cards", kind="card_id",
                                                     value="c1")), offset=0)
    first, second = one.apply(unsigned), two.apply(unsigned)
    assert isinstance(first, Refused) and first.error_class == "list_unauthenticated"
    assert isinstance(second, Applied) and second.change == "replayed"
    assert one.apply(unsigned).change == "replayed"  # type: ignore[union-attr]
    assert one.lists.size() == 0


def test_a_pending_list_change_is_the_tables_and_seen_by_every_book() -> None:
    _, (one, two) = books()
    for b in (one, two):
        b.apply(rule_message("vip", "card_id in lists.vip_cards", action="approve"))
    entry = ListEntry(list="vip_cards", kind="card_id", value="c1")
    waiting = one.apply(at(entry_message(entry, signers=[KEYS.maker]), 0))
    assert isinstance(waiting, Applied) and waiting.change == "pending"
    assert ("lists", "vip_cards/c1") in two.pending and two.lists.size() == 0
    assert two.apply(at(entry_message(entry), 1)).change == "added"  # type: ignore[union-attr]
    assert one.pending == {} and one.signers["lists:vip_cards/c1"] == ("dev-maker",
                                                                       "dev-checker")


def test_the_caps_count_the_process_once_not_per_book() -> None:
    _, (one, two) = books(budget=CostBudget(max_list_entries=3))
    entries = [ListEntry(list="blocked_cards", kind="card_id", value=f"c{i}") for i in range(4)]
    results = [b.apply(at(entry_message(e), i)) for i, e in enumerate(entries) for b in (one, two)]
    assert [r.change for r in results[:6:2]] == ["added"] * 3  # type: ignore[union-attr]
    full = results[6]
    assert isinstance(full, Refused) and full.error_class == "list_full"
    assert results[7].change == "replayed"  # type: ignore[union-attr]


def test_a_snapshot_holds_no_entry_and_does_not_grow_with_the_lists() -> None:
    sizes = []
    for n in (10, 2_000):
        table, (b,) = books(1)
        b.apply(rule_message("blk", "card_id in lists.blocked_cards", action="decline"))
        for i in range(n):
            table.put_entry(ListEntry(list="blocked_cards", kind="card_id", value=f"tok{i}"))
        table.offset = n - 1
        snap = msgspec.msgpack.decode(b.snapshot(), type=_Snapshot)
        assert snap.format == SNAPSHOT_FORMAT == 2 and snap.entries == []
        assert snap.offsets == {"lists": n - 1}
        sizes.append(len(b.snapshot()))
        restored = RuleBook.restore(b.snapshot(), FEATURE_NAMES, TRUST, table=table)
        assert restored.version == b.version and restored.lists.size() == n
    assert abs(sizes[1] - sizes[0]) <= 8  # the offset's integer, nothing per entry


def test_a_restored_book_without_the_table_reads_the_lists_again_from_offset_0() -> None:
    _, (b,) = books(1)
    b.apply(at(entry_message(STANDARD_ENTRIES[0]), 5))
    alone = RuleBook.restore(b.snapshot(), FEATURE_NAMES, TRUST)
    assert alone.lists.size() == 0 and "lists" not in alone.offsets
    assert alone.apply(at(entry_message(STANDARD_ENTRIES[0]), 5)).change == "added"  # type: ignore[union-attr]
    assert alone.version == b.version


def test_a_format_1_snapshot_is_restored_without_its_entries() -> None:
    b = RuleBook(FEATURE_NAMES, TRUST)
    b.apply(Message("rules", "blk", rule_message("blk", "card_id in lists.blocked_cards",
                                                 action="decline").value, offset=3))
    old = msgspec.msgpack.encode(_Snapshot(
        format=1, feature_names=list(FEATURE_NAMES), rules=b.rules(),
        entries=list(STANDARD_ENTRIES), offsets={"rules": 3, "lists": 6},
        signers={"rules:blk": ["dev-maker"], f"lists:{list_key(STANDARD_ENTRIES[0])}": ["x"]}))
    table = ListTable()
    table.put_entry(STANDARD_ENTRIES[0])
    restored = RuleBook.restore(old, FEATURE_NAMES, TRUST, table=table)
    assert restored.lists.size() == 1 and table.offset == -1  # the topic is the source
    assert [r.id for r in restored.rules()] == ["blk"] and restored.offsets == {"rules": 3}
    assert restored.signers == {"rules:blk": ("dev-maker",)}
    with pytest.raises(SnapshotError, match="format 0"):
        RuleBook.restore(msgspec.msgpack.encode(_Snapshot(
            format=0, feature_names=[], rules=[], offsets={})), FEATURE_NAMES)


def test_the_start_up_load_defers_refusals_to_the_first_book_that_reads_them_again() -> None:
    entry = ListEntry(list="blocked_cards", kind="card_id", value="c1")
    good = entry_message(entry)
    bad = Message("lists", "blocked_cards/c2", msgspec.json.encode(
        ListEntry(list="blocked_cards", kind="card_id", value="c2")))
    rule = rule_message("vip", "card_id in lists.vip_cards", action="approve")
    vip = entry_message(ListEntry(list="vip_cards", kind="card_id", value="c9"),
                        signers=[KEYS.maker])
    table = ListTable()
    records, refused = fill(table, [(0, b"vip", rule.value)],  # type: ignore[list-item]
                            [(0, b"blocked_cards/c1", good.value), (1, b"blocked_cards/c2",
                                                                    bad.value),
                             (2, b"vip_cards/c9", vip.value)],  # type: ignore[list-item]
                            TRUST, CostBudget())
    assert records == 3 and dict(refused) == {"list_unauthenticated": 1}
    # the approve rule read first: one signature on its allowlist waits for a checker
    assert table.index.size() == 1 and ("lists", "vip_cards/c9") in table.pending
    one, two = (RuleBook(FEATURE_NAMES, TRUST, table=table) for _ in range(2))
    late = one.apply(at(bad, 1))
    assert isinstance(late, Refused) and late.error_class == "list_unauthenticated"
    assert two.apply(at(bad, 1)).change == "replayed"  # type: ignore[union-attr]
    assert one.apply(at(good, 0)).change == "replayed"  # type: ignore[union-attr]
    assert one.apply(at(entry_message(ListEntry(list="blocked_cards", kind="card_id",
                                                value="c3")), 3)).change == "added"  # type: ignore[union-attr]


def test_books_on_worker_threads_apply_each_record_once() -> None:
    table, shards = books(4)
    records = [at(Message("lists", list_key(e), sign_record(e, [KEYS.maker])), i)
               for i, e in enumerate(ListEntry(list="blocked_cards", kind="card_id",
                                               value=f"tok{i}") for i in range(300))]
    changes: list[list[str]] = [[] for _ in shards]
    batch = random_batch(1, n=32)

    def run(k: int) -> None:
        for r in records:
            changes[k].append(shards[k].apply(r).change)  # type: ignore[union-attr]
            if r.offset is not None and r.offset % 50 == 0:
                shards[k].evaluate(batch)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    added = np.array([[c == "added" for c in per] for per in changes])
    assert (added.sum(axis=0) == 1).all() and table.index.size() == 300
