"""What travels between the flow's steps: whole batches as columns, never one item a record.

A source poll of one partition becomes one :class:`~flows.kafka.RawBatch`; the
decode step turns it into :class:`Decoded` columns and addresses them to the card
shards (:class:`CardWork`, with where the source partition stands: its progress
in event time, or that it is idle); a card shard hands its results on to the
merchant shards as :class:`CardRows` (:class:`MerchantWork`, with the card
shard's own progress). So Bytewax moves a few items per batch, not several per
transaction, and every step works on arrays.

A traced transaction (:mod:`tracing`) is carried as a small dict beside the
columns, ``traces``: row index -> its trace state, None when none is traced, so
an untraced batch pays one None check per selection, nothing per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Generic, NamedTuple, Self, TypeVar

import numpy as np

from state.inputs import FeatureInputs
from topics.contracts import Label, Transaction
from tracing.carry import Carried, Timeline

#: Traced rows of a batch: row index -> what their trace needs (None: no row traced).
Traces = dict[int, Any] | None

T = TypeVar("T", Transaction, Label)


def _take_list(values: list[T], index: np.ndarray) -> list[T]:
    return [values[i] for i in index.tolist()]


def take_traces(traces: Traces, index: np.ndarray) -> Traces:
    """``traces`` of the rows at ``index``, re-indexed to their new positions.

    One vectorised comparison per traced row (few: they are sampled), no per-row Python.
    """
    if not traces:
        return None
    out: dict[int, Any] = {}
    for i, carried in traces.items():
        for j in np.flatnonzero(index == i).tolist():
            out[j] = carried
    return out or None


def slice_traces(traces: Traces, start: int, stop: int) -> Traces:
    """``traces`` of rows ``start:stop``, re-indexed from 0."""
    if not traces:
        return None
    return {i - start: t for i, t in traces.items() if start <= i < stop} or None


def concat_traces(parts: Sequence[Any]) -> Traces:
    """The ``traces`` of ``parts`` (each with ``traces`` and a length), one after the other."""
    out: dict[int, Any] = {}
    at = 0
    for p in parts:
        if p.traces:
            out.update({at + i: t for i, t in p.traces.items()})
        at += len(p)
    return out or None


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
    traces: dict[int, Carried] | None = None
    """Traced rows (:mod:`tracing.carry`): row index -> :class:`~tracing.carry.Carried`."""

    def __len__(self) -> int:
        return len(self.values)

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        """Unpickle (a recovery snapshot); one taken before ``traces`` existed has none."""
        self.traces = None
        for name, value in state[1].items():
            setattr(self, name, value)

    def take(self, index: np.ndarray) -> Self:
        """The rows at ``index`` (int array), in that order."""
        return type(self)(_take_list(self.values, index), self.partition[index],
                          self.offset[index], self.ingest_ms[index], self.event_ms[index],
                          self.fetched[index], self.clamped[index],
                          take_traces(self.traces, index) if self.traces else None)

    def slice(self, start: int, stop: int) -> Self:
        """Rows ``start:stop`` (array views)."""
        return type(self)(self.values[start:stop], self.partition[start:stop],
                          self.offset[start:stop], self.ingest_ms[start:stop],
                          self.event_ms[start:stop], self.fetched[start:stop],
                          self.clamped[start:stop],
                          slice_traces(self.traces, start, stop) if self.traces else None)

    @classmethod
    def concat(cls, parts: Sequence[Decoded[T]]) -> Decoded[T]:
        """The rows of ``parts`` one after the other."""
        if len(parts) == 1:
            return parts[0]
        def joined(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        return cls([v for p in parts for v in p.values], joined("partition"), joined("offset"),
                   joined("ingest_ms"), joined("event_ms"), joined("fetched"),
                   joined("clamped"), concat_traces(parts))


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
    produced_home: frozenset[int] = frozenset()
    """Offsets (of ``source``) of records on the partition their producer's key puts them
    on although their card id's hash does not: a PAN key with its card id tokenised at
    decode (:meth:`flows.decode.TransactionRouter.route`). They are not mis-keyed."""


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
    traces: dict[int, Timeline] | None = None
    """Traced records: index in ``records`` -> :class:`~tracing.carry.Timeline` (the sink
    records their spans and gives them a ``traceparent`` header)."""

    @classmethod
    def concat(cls, parts: list[SinkBatch]) -> SinkBatch | None:
        """One batch of ``parts``' records, in order (None: no parts)."""
        if len(parts) <= 1:
            return parts[0] if parts else None
        records: list[tuple[bytes | None, bytes]] = []
        traces: dict[int, Timeline] = {}
        for part in parts:
            if part.traces:
                traces.update((len(records) + i, t) for i, t in part.traces.items())
            records += part.records
        return cls(records, max(p.made for p in parts), traces or None)
