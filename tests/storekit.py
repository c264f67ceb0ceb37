"""The flow's two stores fed batch by batch, as the stages feed them, for the state tests.

:class:`Pipeline` drives a card and a merchant store (real RocksDB) the way the card
and merchant stages do, without Bytewax or Kafka.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np

from state import card_store as cs
from state.card_store import CardBatch, CardStore
from state.changelog import ChangeSink
from state.db import StoreIdentity
from state.inputs import FeatureInputs
from state.merchant_store import LabelJoin, MerchantBatch, MerchantStore
from state.options import StoreOptions
from state.records import body_digest
from state.reorder import EVERYTHING, EventTimeOrder
from topics.contracts import Label, Transaction

Event = Transaction | Label
Factory = Callable[..., list[Event]]
CARDS = StoreIdentity("cards", 0, 1, "transactions", "id-1")
MERCHANTS = StoreIdentity("merchants", 0, 1, "transactions", "id-1")


def eur(txn: Transaction) -> float:
    return txn.amount


def vector_bytes(_positions: np.ndarray, matrix: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in matrix]


class _Chunk:
    """Merchant-stage input rows for the event-time order (a list of items)."""

    def __init__(self, items: list, times: list[int]) -> None:
        self.items, self.event_ms = items, np.asarray(times, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def take(self, index: np.ndarray) -> _Chunk:
        return _Chunk([self.items[i] for i in index.tolist()], self.event_ms[index].tolist())

    @staticmethod
    def concat(parts: list[_Chunk]) -> _Chunk:
        return _Chunk([x for p in parts for x in p.items],
                      [t for p in parts for t in p.event_ms.tolist()])


class Pipeline:
    """The flow's two stages over two stores, fed batch by batch (as Bytewax would).

    ``ordered``: the merchant store gets everything at :meth:`close`, in event-time
    order (as the merchant stage's watermark releases a backlog).
    """

    def __init__(self, root: Path, options: StoreOptions | None = None,
                 ordered: bool = False,
                 changelogs: tuple[ChangeSink, ChangeSink] | None = None) -> None:
        cards, merchants = changelogs or (None, None)
        self.cards = CardStore.open(root, CARDS, options, changelog=cards)
        self.merchants = MerchantStore.open(root, MERCHANTS, options, changelog=merchants)
        self.outputs: dict[str, list[bytes]] = {}
        self.kinds: list[int] = []
        self.joins: list[LabelJoin] = []
        self.order = EventTimeOrder() if ordered else None

    def feed(self, batch: list[tuple[int, Event]], crash_between: bool = False) -> None:
        labels = [e for _, e in batch if isinstance(e, Label)]
        txns = [(o, e) for o, e in batch if isinstance(e, Transaction)]
        if self.order is not None:
            self.order.add_labels(_Chunk(labels, [lab.label_time for lab in labels]))
        else:
            self.joins += self.merchants.apply_labels(labels)
        if not txns:
            return
        ts = [t for _, t in txns]
        n = len(ts)
        tids = [t.transaction_id for t in ts]
        body = np.array([body_digest(t) for t in ts], dtype=np.uint64)
        part = np.zeros(n, dtype=np.int32)
        offset = np.array([o for o, _ in txns], dtype=np.int64)
        inputs = FeatureInputs.of(ts, [t.amount for t in ts])
        card_out = self.cards.process(CardBatch(tids, [t.card_id for t in ts], body, part,
                                                offset, inputs))
        if crash_between:
            return
        keep = np.flatnonzero(card_out.kind != cs.CONFLICT)
        batch = MerchantBatch([tids[i] for i in keep], [ts[i].merchant_id for i in keep],
                              body[keep], part[keep], offset[keep], inputs.take(keep),
                              card_out.rows[keep], card_out.has_row[keep])
        if self.order is not None:
            self.order.add_txns(_Chunk([(batch, k) for k in range(len(batch))],
                                       batch.inputs.event_ms.tolist()))
            return
        self._merchants(batch)

    def _merchants(self, batch: MerchantBatch) -> None:
        tids = batch.transaction_ids
        keep = np.arange(len(batch))
        outcome, joins = self.merchants.process(batch, vector_bytes)
        self.joins += joins
        for k in keep.tolist():
            self.kinds.append(int(outcome.kind[k]))
            out = outcome.output[k]
            if out is not None:
                self.outputs.setdefault(tids[k], []).append(out)

    def drain(self) -> None:
        """Apply everything buffered, in event-time order (``ordered`` only)."""
        assert self.order is not None
        self.order.watermark.value = EVERYTHING
        for is_label, chunk in self.order.release(_Chunk.concat, _Chunk.concat):
            if is_label:
                self.joins += self.merchants.apply_labels(chunk.items)
                continue
            rows = [b for b, _ in chunk.items]
            index = [k for _, k in chunk.items]
            self._merchants(MerchantBatch(
                [r.transaction_ids[k] for r, k in zip(rows, index, strict=True)],
                [r.merchant_ids[k] for r, k in zip(rows, index, strict=True)],
                np.array([r.body[k] for r, k in zip(rows, index, strict=True)], np.uint64),
                np.array([r.partition[k] for r, k in zip(rows, index, strict=True)], np.int32),
                np.array([r.offset[k] for r, k in zip(rows, index, strict=True)], np.int64),
                FeatureInputs.concat([r.inputs.take(np.array([k])) for r, k in
                                      zip(rows, index, strict=True)]),
                np.stack([r.card_rows[k] for r, k in zip(rows, index, strict=True)]),
                np.array([r.has_row[k] for r, k in zip(rows, index, strict=True)])))

    def checkpoint(self) -> tuple[int, int]:
        return self.cards.checkpoint(), self.merchants.checkpoint()

    def close(self) -> None:
        self.cards.close()
        self.merchants.close()


def numbered(events: list[Event]) -> list[tuple[int, Event]]:
    return list(enumerate(events))


def batches(items: list[tuple[int, Event]], rng: random.Random) -> list[list[tuple[int, Event]]]:
    out, i = [], 0
    while i < len(items):
        j = min(len(items), i + rng.randint(1, 9))
        out.append(items[i:j])
        i = j
    return out
