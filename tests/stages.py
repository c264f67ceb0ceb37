"""The flow's two stages in one process, without Kafka or Bytewax, for tests and benches.

Transactions are decoded into columns per source partition, routed to their card
shard's :class:`~flows.card_stage.CardLogic` and then to their merchant shard's
:class:`~flows.merchant_stage.MerchantLogic`, batch by batch, exactly as the
dataflow wires them (same routers, adapters, real RocksDB, real ONNX). After a
:meth:`Stages.feed` the source partitions are idle unless ``settle=False``: the
watermark then lets everything fed so far be scored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np

from drift.windows import DriftPartial, PartitionDrift
from flows.card_stage import CardLogic, CardSnapshot
from flows.decode import DeadLetterRecord, KeyRule, LabelRouter, TransactionRouter
from flows.items import CardRows, CardWork, Decoded, SinkBatch
from flows.kafka import RawRecord
from flows.merchant_stage import MerchantLogic, MerchantSnapshot, RuleRecord
from flows.scorer import MerchantScorer
from flows.serving import ModelSource
from rules.book import RuleBook
from rules.signing import TrustedKeys, dev_keys, sign_json
from state.card_store import CardStore
from state.db import StoreIdentity
from state.merchant_store import MerchantStore
from state.options import StoreOptions
from state.partitioning import murmur2_partition
from topics.contracts import Label, Prediction, Transaction
from topics.currency import default_rates, reference_amount
from tracing.carry import Header
from tracing.spans import Tracing

#: The dev analysts (.dev/rules-keys/, made on first use), trusted by the stages' rule books.
_KEYS = dev_keys(Path(__file__).resolve().parents[1] / ".dev" / "rules-keys")
TRUST = TrustedKeys.from_file(_KEYS.trusted)
SIGNERS = (_KEYS.maker, _KEYS.checker)

Event = Transaction | Label
LABEL_PARTITIONS = 1


class Src(NamedTuple):
    """A decoded record and where it came from (as the decode step sees it)."""

    value: Transaction | Label
    partition: int
    offset: int
    ingest_ms: int
    event_ms: int


def sourced(events: Iterable[Event], parts: int, ingest_ms: int | None = None) -> list[Src]:
    """Events as the source hands them on: partition (murmur2 of the key) and offsets."""
    offsets: dict[tuple[str, int], int] = {}
    out: list[Src] = []
    for e in events:
        topic = "t" if isinstance(e, Transaction) else "l"
        p = (murmur2_partition(e.card_id, parts) if isinstance(e, Transaction)
             else murmur2_partition(e.transaction_id, LABEL_PARTITIONS))
        o = offsets.get((topic, p), 0)
        offsets[(topic, p)] = o + 1
        t = e.event_time if isinstance(e, Transaction) else e.label_time
        out.append(Src(e, p, o, ingest_ms if ingest_ms is not None else t, t))
    return out


def decoded(items: Sequence[Src]) -> Decoded[Any]:
    """Columns of decoded records."""
    n = len(items)
    return Decoded([s.value for s in items], np.fromiter((s.partition for s in items), np.int32, n),
                   np.fromiter((s.offset for s in items), np.int64, n),
                   np.fromiter((s.ingest_ms for s in items), np.int64, n),
                   np.fromiter((s.event_ms for s in items), np.int64, n), np.zeros(n),
                   np.fromiter((s.event_ms != (s.value.event_time if isinstance(
                       s.value, Transaction) else s.value.label_time) for s in items), bool, n))


def decoded_rows(items: Iterable[Any]) -> list[Src]:
    """The decoded records in decode-step output (``(key, CardWork | MerchantWork)`` pairs)."""
    out: list[Src] = []
    for _, work in items:
        rows = work.txns if isinstance(work, CardWork) else work.rows
        if isinstance(rows, CardRows):
            rows = rows.txns
        if rows is None:
            continue
        out += [Src(v, int(p), int(o), int(i), int(e)) for v, p, o, i, e in zip(
            rows.values, rows.partition, rows.offset, rows.ingest_ms, rows.event_ms,
            strict=True)]
    return out


class Stages:
    """Card shards and merchant shards under ``root``, fed like the dataflow feeds them."""

    def __init__(self, root: Path, champion: ModelSource, shadow: ModelSource | None = None,
                 *, parts: int = 4, shards: int = 3, cards: int | None = None,
                 hold_ms: int = 0, drift_window_ms: int | None = None,
                 options: StoreOptions | None = None, resumed: tuple[
                     dict[int, CardSnapshot], dict[int, MerchantSnapshot]] | None = None,
                 tracing: Tracing | None = None) -> None:
        self.parts, self.shards = parts, shards
        self.tracing = tracing  # the decode step's: picks traced rows (feed's ``traces``)
        card_shards = cards or parts
        rates = default_rates()

        def amounts(txns: list[Transaction]) -> np.ndarray:
            return np.fromiter((reference_amount(t, rates) for t in txns), np.float64, len(txns))

        cards_resumed, merchants_resumed = resumed or ({}, {})
        self.now = 1_000_000.0  # wall-clock seconds the steps see (advanced by feed, advance)
        self.cards = {
            p: CardLogic(
                lambda s, _: CardStore.open(root, StoreIdentity("cards", s, card_shards, "t"),
                                            options),
                amounts, "transactions", parts, shards, cards_resumed.get(p),
                hold_ms, clock=lambda: self.now, card_shards=card_shards,
                before_batch=lambda: (champion.poll(), shadow.poll() if shadow else None))
            for p in range(card_shards)
        }

        def open_scorer(shard: int, resumed: MerchantSnapshot | None) -> MerchantScorer:
            store = MerchantStore.open(
                root, StoreIdentity("merchants", shard, shards, "t"), options)
            drift = (resumed.drift if resumed is not None else None) or (
                PartitionDrift(shard, drift_window_ms, 0, n_inputs=card_shards)
                if drift_window_ms else None)
            book = (RuleBook.restore(resumed.rules, trust=TRUST)
                    if resumed is not None and resumed.rules else RuleBook(trust=TRUST))
            return MerchantScorer(store, champion, shadow, drift=drift, rules=book, shard=shard)

        self.merchants = {
            s: MerchantLogic(open_scorer, merchants_resumed.get(s), 60.0, card_shards,
                             LABEL_PARTITIONS,
                             clock=lambda: self.now)
            for s in range(shards)
        }
        self._txn_router = TransactionRouter(KeyRule(parts), card_shards=card_shards)
        self._label_router = LabelRouter(shards)
        self._rule_offsets: dict[str, int] = {}
        self.outputs: list[Any] = []

    def advance(self, seconds: float) -> None:
        """Let wall-clock time pass; steps with something due are notified (as Bytewax does)."""
        self.now += seconds
        work: dict[str, list[Any]] = defaultdict(list)
        for logic in self.cards.values():
            if logic.notify_at() is not None and logic.notify_at().timestamp() <= self.now:
                for o in logic.on_notify()[0]:
                    self._collect(o, work)
        for works in work.values():
            self.outputs.extend(self.merchants[works[0].shard].on_batch(works)[0])
        for logic in self.merchants.values():
            if logic.notify_at() is not None and logic.notify_at().timestamp() <= self.now:
                self.outputs.extend(logic.on_notify()[0])

    def feed(self, batch: Sequence[Src], settle: bool = True,
             traces: dict[str, Header] | None = None) -> None:
        """One batch through both stages; then (``settle``) every source goes idle and the
        watermark's grace for sources waking up passes.

        ``traces``: transaction id -> its W3C trace headers, as the source hands them on
        (with ``tracing``, the decode step picks the traced rows as in the flow)."""
        card_work: dict[str, list[Any]] = defaultdict(list)
        merchant_work: dict[str, list[Any]] = defaultdict(list)
        by_partition: dict[tuple[bool, int], list[Src]] = defaultdict(list)
        for item in batch:
            by_partition[(isinstance(item.value, Transaction), item.partition)].append(item)
        for (is_txn, q), items in sorted(by_partition.items()):
            if is_txn:
                rows = decoded(items)
                if self.tracing is not None:
                    found = {i: traces[s.value.transaction_id] for i, s in enumerate(items)
                             if traces and s.value.transaction_id in traces}
                    rows.traces = self.tracing.carry(found or None, len(rows), self.now)
                for out in self._txn_router.route(q, rows, []):
                    self._collect(out, card_work)
            else:
                for key, work in self._label_router.route(q, decoded(items)):
                    merchant_work[key].append(work)
        if settle:
            empty: Decoded[Any] = decoded([])
            for q in range(self.parts):
                for out in self._txn_router.route(q, empty, [], idle=True):
                    self._collect(out, card_work)
            for q in range(LABEL_PARTITIONS):
                for key, work in self._label_router.route(q, empty, idle=True):
                    merchant_work[key].append(work)
        for works in card_work.values():
            shard = works[0].shard
            outs, _ = self.cards[shard].on_batch(works)
            for o in outs:
                self._collect(o, merchant_work)
        for works in merchant_work.values():
            shard = works[0].shard
            mout, _ = self.merchants[shard].on_batch(works)
            self.outputs.extend(mout)
        if settle:
            self.advance(2.0)

    def _collect(self, out: Any, work: dict[str, list[Any]]) -> None:
        if isinstance(out, DeadLetterRecord):
            self.outputs.append(out)
        else:
            work[out[0]].append(out[1])

    def publish_rules(self, topic: str, records: Sequence[tuple[str, object | None]],
                      signed: bool = True) -> None:
        """``rules``/``lists`` records (key, JSON-able value or None), to every shard.

        ``signed``: by the dev maker and checker (a loosening change takes effect).
        """
        raws = []
        for key, value in records:
            offset = self._rule_offsets.get(topic, -1) + 1
            self._rule_offsets[topic] = offset
            raws.append(RawRecord(key.encode(), None if value is None
                                  else sign_json(topic, value, SIGNERS) if signed
                                  else msgspec.json.encode(value), topic, 0, offset, 0))
        for shard, logic in sorted(self.merchants.items()):
            out, _ = logic.on_batch([RuleRecord(shard, r) for r in raws])
            self.outputs.extend(out)

    def snapshots(self) -> tuple[dict[int, CardSnapshot], dict[int, MerchantSnapshot]]:
        """What Bytewax would keep now."""
        return ({p: c.snapshot() for p, c in self.cards.items()},
                {s: m.snapshot() for s, m in self.merchants.items()})

    def records(self) -> list[tuple[bytes | None, bytes]]:
        """Every ``predictions`` record published so far, in order."""
        return [r for o in self.outputs if isinstance(o, SinkBatch) for r in o.records]

    def verdicts(self) -> list[Prediction]:
        """Every verdict published so far, decoded, in order."""
        return [msgspec.json.decode(value, type=Prediction) for _, value in self.records()]

    def dead_letters(self) -> list[DeadLetterRecord]:
        """Every dead letter so far."""
        return [o for o in self.outputs if isinstance(o, DeadLetterRecord)]

    def partials(self) -> list[DriftPartial]:
        """Every drift partial so far."""
        return [o for o in self.outputs if isinstance(o, DriftPartial)]
