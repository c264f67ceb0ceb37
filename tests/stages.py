"""The flow's two stages in one process, without Kafka or Bytewax, for tests and benches.

Transactions go to their card shard's :class:`~flows.card_stage.CardLogic` and then
to their merchant shard's :class:`~flows.merchant_stage.MerchantLogic`, batch by
batch, exactly as the dataflow wires them (same adapters, real RocksDB, real ONNX).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from flows.card_stage import CardLogic, CardResult, CardSnapshot
from flows.decode import DeadLetterRecord, Sourced
from flows.drift import DriftPartial, PartitionDrift
from flows.kafka import RawRecord, SinkRecord
from flows.merchant_stage import MerchantLogic, MerchantSnapshot, RuleRecord
from flows.scorer import MerchantScorer
from flows.serving import ModelSource
from rules.book import RuleBook
from state.card_store import CardStore
from state.db import StoreIdentity
from state.merchant_store import MerchantStore
from state.options import StoreOptions
from state.partitioning import murmur2_partition
from topics.contracts import Label, Prediction, Transaction
from topics.currency import default_rates, reference_amount

Event = Transaction | Label


def sourced(events: Iterable[Event], parts: int, ingest_ms: int | None = None
            ) -> list[Sourced[Transaction] | Sourced[Label]]:
    """Events as the decode step hands them on: partition (murmur2) and offsets."""
    offsets: dict[tuple[str, int], int] = {}
    out: list[Sourced[Transaction] | Sourced[Label]] = []
    for e in events:
        topic = "t" if isinstance(e, Transaction) else "l"
        key = e.card_id if isinstance(e, Transaction) else e.transaction_id
        p = murmur2_partition(key, parts)
        o = offsets.get((topic, p), 0)
        offsets[(topic, p)] = o + 1
        t = e.event_time if isinstance(e, Transaction) else e.label_time
        out.append(Sourced(e, p, o, ingest_ms if ingest_ms is not None else t, t))
    return out


class Stages:
    """Card shards and merchant shards under ``root``, fed like the dataflow feeds them."""

    def __init__(self, root: Path, champion: ModelSource, shadow: ModelSource | None = None,
                 *, parts: int = 4, shards: int = 3, drift_window_ms: int | None = None,
                 options: StoreOptions | None = None) -> None:
        self.parts, self.shards = parts, shards
        rates = default_rates()
        self.cards = {
            p: CardLogic(
                lambda s: CardStore.open(root, StoreIdentity("cards", s, parts, "t"), options),
                lambda c: murmur2_partition(c, parts), lambda t: reference_amount(t, rates),
                "transactions", None)
            for p in range(parts)
        }

        def open_scorer(shard: int, resumed: MerchantSnapshot | None) -> MerchantScorer:
            store = MerchantStore.open(
                root, StoreIdentity("merchants", shard, shards, "t"), options)
            drift = (resumed.drift if resumed is not None else None) or (
                PartitionDrift(shard, drift_window_ms, 0) if drift_window_ms else None)
            book = (RuleBook.restore(resumed.rules) if resumed is not None and resumed.rules
                    else RuleBook())
            return MerchantScorer(store, champion, shadow, drift=drift, rules=book, shard=shard)

        self.merchants = {
            s: MerchantLogic(open_scorer, lambda m: murmur2_partition(m, shards), None, 60.0)
            for s in range(shards)
        }
        self._rule_offsets: dict[str, int] = {}
        self.outputs: list[SinkRecord | DeadLetterRecord | DriftPartial] = []

    def feed(self, batch: Sequence[Sourced[Transaction] | Sourced[Label]]) -> None:
        """One batch through both stages (labels straight to their merchant shard)."""
        by_card: dict[int, list[Sourced[Transaction]]] = {}
        to_merchant: dict[int, list[CardResult | Sourced[Label]]] = {}
        for item in batch:
            if isinstance(item.value, Transaction):
                shard = murmur2_partition(item.value.card_id, self.parts)
                by_card.setdefault(shard, []).append(item)  # type: ignore[arg-type]
            else:
                m = murmur2_partition(item.value.merchant_id, self.shards)
                to_merchant.setdefault(m, []).append(item)  # type: ignore[arg-type]
        for shard, values in sorted(by_card.items()):
            out, _ = self.cards[shard].on_batch(values)
            for r in out:
                if isinstance(r, CardResult):
                    m = murmur2_partition(r.item.value.merchant_id, self.shards)
                    to_merchant.setdefault(m, []).append(r)
                else:
                    self.outputs.append(r)
        for shard, mvalues in sorted(to_merchant.items()):
            mout, _ = self.merchants[shard].on_batch(mvalues)
            self.outputs.extend(mout)

    def publish_rules(self, topic: str, records: Sequence[tuple[str, object | None]]) -> None:
        """``rules``/``lists`` records (key, JSON-able value or None), to every shard."""
        raws = []
        for key, value in records:
            offset = self._rule_offsets.get(topic, -1) + 1
            self._rule_offsets[topic] = offset
            raws.append(RawRecord(key.encode(), None if value is None
                                  else msgspec.json.encode(value), topic, 0, offset, 0))
        for shard, logic in sorted(self.merchants.items()):
            out, _ = logic.on_batch([RuleRecord(shard, r) for r in raws])
            self.outputs.extend(out)

    def snapshots(self) -> tuple[dict[int, CardSnapshot], dict[int, MerchantSnapshot]]:
        """What Bytewax would keep now."""
        return ({p: c.snapshot() for p, c in self.cards.items()},
                {s: m.snapshot() for s, m in self.merchants.items()})

    def verdicts(self) -> list[Prediction]:
        """Every verdict published so far, decoded, in order."""
        return [msgspec.json.decode(o.value, type=Prediction) for o in self.outputs
                if isinstance(o, SinkRecord)]

    def dead_letters(self) -> list[DeadLetterRecord]:
        """Every dead letter so far."""
        return [o for o in self.outputs if isinstance(o, DeadLetterRecord)]
