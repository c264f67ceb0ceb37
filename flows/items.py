"""What travels between the flow's steps: whole batches as columns, never one item a record.

A source poll of one partition becomes one :class:`~flows.kafka.RawBatch`; the
decode step turns it into :class:`Decoded` columns and addresses them to the card
shards (:class:`CardWork`, with where the source partition stands: its progress
in event time, or that it is idle); a card shard hands its results on to the
merchant shards as :class:`CardRows` (:class:`MerchantWork`, with the card
shard's own progress). So Bytewax moves a few items per batch, not several per
transaction, and every step works on arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Generic, NamedTuple, Self, TypeVar

import numpy as np

from state.inputs import FeatureInputs
from topics.contracts import Label, Transaction

T = TypeVar("T", Transaction, Label)


def _take_list(values: list[T], index: np.ndarray) -> list[T]:
    return [values[i] for i in index.tolist()]


@dataclass(slots=True)
class Decoded(Generic[T]):
    """Decoded records of one topic as columns, in the order read.

    ``values``: the contract structs; ``partition`` int32 and ``offset`` int64:
    where each came from; ``ingest_ms`` int64: the Kafka record timestamp;
    ``event_ms`` int64: the time the windows use (the event or label time, clamped
    to ``ingest_ms`` when it ran further ahead than the allowed skew); ``fetched``
    float64: when the source handed the record on (epoch s, per-stage latency).
    """

    values: list[T]
    partition: np.ndarray
    offset: np.ndarray
    ingest_ms: np.ndarray
    event_ms: np.ndarray
    fetched: np.ndarray
    clamped: np.ndarray
    """bool: the time used is the record timestamp (:class:`flows.decode.SkewRule`)."""

    def __len__(self) -> int:
        return len(self.values)

    def take(self, index: np.ndarray) -> Self:
        """The rows at ``index`` (int array), in that order."""
        return type(self)(_take_list(self.values, index), self.partition[index],
                          self.offset[index], self.ingest_ms[index], self.event_ms[index],
                          self.fetched[index], self.clamped[index])

    def slice(self, start: int, stop: int) -> Self:
        """Rows ``start:stop`` (array views)."""
        return type(self)(self.values[start:stop], self.partition[start:stop],
                          self.offset[start:stop], self.ingest_ms[start:stop],
                          self.event_ms[start:stop], self.fetched[start:stop],
                          self.clamped[start:stop])

    @classmethod
    def concat(cls, parts: Sequence[Decoded[T]]) -> Decoded[T]:
        """The rows of ``parts`` one after the other."""
        if len(parts) == 1:
            return parts[0]
        return cls([v for p in parts for v in p.values],
                   *(np.concatenate([getattr(p, f.name) for p in parts])
                     for f in fields(cls)[1:]))


@dataclass(slots=True)
class CardRows:
    """A card shard's results: the transactions with their card groups, as columns.

    ``txns``: the decoded transactions; ``inputs``: what the features read from them
    (built once, by the card stage); ``body`` uint64 body digests; ``rows`` float32
    ``[n, CARD_WIDTH]``; ``has_row`` bool (a repeat whose row is no longer kept has
    none); ``carded`` float64: when the card stage was done (epoch s).
    """

    txns: Decoded[Transaction]
    inputs: FeatureInputs
    body: np.ndarray
    rows: np.ndarray
    has_row: np.ndarray
    carded: np.ndarray

    @property
    def amount(self) -> np.ndarray:
        """float64 reference-currency amounts, NaN where no rate converted it (unrated)."""
        return self.inputs.reference_amount

    def __len__(self) -> int:
        return len(self.txns)

    @property
    def event_ms(self) -> np.ndarray:
        """int64 event times the windows use."""
        return self.txns.event_ms

    def take(self, index: np.ndarray) -> CardRows:
        """The rows at ``index`` (int array), in that order."""
        return CardRows(self.txns.take(index), self.inputs.take(index), self.body[index],
                        self.rows[index], self.has_row[index], self.carded[index])

    def slice(self, start: int, stop: int) -> CardRows:
        """Rows ``start:stop`` (array views)."""
        return CardRows(self.txns.slice(start, stop), self.inputs.slice(start, stop),
                        self.body[start:stop], self.rows[start:stop],
                        self.has_row[start:stop], self.carded[start:stop])

    @classmethod
    def concat(cls, parts: Sequence[CardRows]) -> CardRows:
        """The rows of ``parts`` one after the other."""
        if len(parts) == 1:
            return parts[0]
        return cls(Decoded.concat([p.txns for p in parts]),
                   FeatureInputs.concat([p.inputs for p in parts]),
                   *(np.concatenate([getattr(p, f.name) for p in parts])
                     for f in fields(cls)[2:]))


class CardWork(NamedTuple):
    """For card shard ``shard``: where source partition ``source`` stands, and its records."""

    shard: int
    source: int
    progress: int
    """Largest event time the partition handed on (ms; NO_TIME: none yet)."""
    idle: bool
    """Nothing to read on the partition for a while: it holds no one back."""
    txns: Decoded[Transaction] | None


class MerchantWork(NamedTuple):
    """For merchant shard ``shard``: where an input stands, and its rows for this shard.

    ``source`` is ``("cards", shard)`` (``rows``: :class:`CardRows`) or
    ``("labels", partition)`` (``rows``: decoded labels).
    """

    shard: int
    source: tuple[str, int]
    progress: int
    idle: bool
    rows: CardRows | Decoded[Label] | None


class SinkBatch(NamedTuple):
    """Records for one sink, handed over together (one Bytewax item)."""

    records: list[tuple[bytes | None, bytes]]
    made: float = 0.0
    """When they were made (epoch seconds; 0: not timed), for the sink's stage latency."""
