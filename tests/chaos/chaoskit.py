"""Helpers of the chaos tier: labelled streams, drift and replay bookkeeping, flow restarts.

Everything runs against the real embedded broker and real ``flows.score``
processes (:class:`~devkit.process.FlowProcess`); what is shared with the
integration tests (collector, environment, offline replay, metrics) comes from
:mod:`flowkit`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import msgspec
from confluent_kafka import Consumer, Producer, TopicPartition

from devkit.broker import free_port
from devkit.process import FlowProcess
from drift.windows import DECISIONS
from flowkit import CONSUMER, Collector, metric, scrape
from state.partitioning import murmur2_partition
from topics.admin import ensure_topics
from topics.contracts import DriftSnapshot, Label, Transaction
from topics.producer import PRODUCER_DEFAULTS
from topics.settings import KafkaSettings
from training.history import History, labels

DAY = 86_400_000
#: Merchant shards of the flow (``FRAUD_MERCHANT_SHARDS`` default) and input partitions.
SHARDS = 8
INPUTS = 8
QUICK = "chaos_quick"
F = TypeVar("F", bound=Callable[..., object])


def quick(test: F) -> F:
    """Mark a chaos test as part of the quick set (run by default and in CI)."""
    setattr(test, QUICK, True)
    return test


# --- streams ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelledStream:
    """Transactions and labels in production order, and what their drift windows must hold."""

    events: list[Transaction | Label]
    txns: list[Transaction]
    """Every transaction produced, the closers included."""
    labels: list[Label]
    window_ms: int
    last_window: int
    """Start (ms) of the last window that holds stream transactions (closers excluded)."""

    def window(self, time_ms: int) -> int:
        """Start of the window holding ``time_ms``."""
        return time_ms // self.window_ms * self.window_ms


def first_keys(prefix: str, n: int) -> dict[int, str]:
    """For each murmur2 partition of ``n``, the first key ``<prefix>-<i>`` that lands there."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < n:
        found.setdefault(murmur2_partition(f"{prefix}-{i}", n), f"{prefix}-{i}")
        i += 1
    return found


def closers(after_ms: int, shards: int = SHARDS, inputs: int = INPUTS) -> list[Transaction]:
    """One transaction per (merchant shard, input partition) at ``after_ms``.

    A merchant shard's drift clock is the slowest of its input partitions (a
    watermark), so every pair has to move on for the stream's last window to close.
    """
    merchants, cards = first_keys("closer", shards), first_keys("closer-card", inputs)
    return [Transaction(transaction_id=f"close-{s}-{p}", card_id=card, merchant_id=merchant,
                        amount=10.0, currency="EUR", event_time=after_ms)
            for s, merchant in sorted(merchants.items()) for p, card in sorted(cards.items())]


def labelled_stream(history: History, window_ms: int = DAY,
                    legit_every: int = 10) -> LabelledStream:
    """The history's transactions and labels interleaved in event time, then the closers.

    Labels: every fraud label, and a legitimate one for every ``legit_every``-th
    transaction, each at its ``label_time`` (clamped to the last transaction, so
    every label falls in a window that gets published). Labels are produced where
    they fall in time, as :func:`training.history.events` orders them.
    """
    txns = list(history.transactions)
    end = max(t.event_time for t in txns)
    keep = {t.transaction_id for t in txns[::legit_every]}
    chosen = [msgspec.structs.replace(lab, label_time=min(lab.label_time, end))
              for lab in labels(history, legit_labels=True)
              if lab.is_fraud or lab.transaction_id in keep]
    timed: list[tuple[int, int, Transaction | Label]] = [
        *((t.event_time, 0, t) for t in txns), *((lab.label_time, 1, lab) for lab in chosen)]
    timed.sort(key=lambda e: (e[0], e[1]))
    closing = closers((end // window_ms + 2) * window_ms)
    return LabelledStream(
        events=[e for _, _, e in timed] + list(closing), txns=txns + closing, labels=chosen,
        window_ms=window_ms, last_window=end // window_ms * window_ms,
    )


def produce(settings: KafkaSettings, events: Iterable[Transaction | Label]) -> int:
    """Create the set's topics; produce transactions (key: card) and labels (key: id).

    Returns how many transactions were produced.
    """
    ensure_topics(settings)
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    encode = msgspec.json.Encoder().encode
    txn_topic, label_topic = settings.topic("transactions"), settings.topic("labels")
    n = 0
    for e in events:
        if isinstance(e, Transaction):
            producer.produce(txn_topic, key=e.card_id.encode(), value=encode(e))
            n += 1
        else:
            producer.produce(label_topic, key=e.transaction_id.encode(), value=encode(e))
        producer.poll(0)
    assert producer.flush(60) == 0
    return n


# --- reading what the flow published ------------------------------------------------------


class DriftReader(threading.Thread):
    """Read every drift snapshot of one topic set as it arrives (all copies, in order)."""

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(daemon=True)
        self.settings, self.stopping = settings, threading.Event()
        self.snapshots: list[DriftSnapshot] = []

    def run(self) -> None:
        consumer = Consumer(self.settings.client_config(**CONSUMER, **{"fetch.wait.max.ms": 10}))
        consumer.assign([TopicPartition(self.settings.topic("drift"), 0, 0)])
        while not self.stopping.is_set():
            for msg in consumer.consume(100, 0.1):
                value = msg.value()
                if msg.error() is None and value is not None:
                    self.snapshots.append(msgspec.json.decode(value, type=DriftSnapshot))
        consumer.close()

    def has_window(self, start_ms: int) -> bool:
        """Whether a snapshot of the window starting at ``start_ms`` arrived."""
        return any(s.window_start == start_ms for s in list(self.snapshots))

    def stop(self) -> list[DriftSnapshot]:
        """Stop reading; every snapshot read."""
        self.stopping.set()
        self.join()
        return self.snapshots


def copies(collector: Collector) -> dict[str, int]:
    """Verdict copies read so far, per transaction id."""
    return {tid: len(vs) for tid, vs in list(collector.outcome.verdicts.items())}


def settle(collector: Collector, quiet_s: float = 1.5, timeout: float = 30) -> dict[str, int]:
    """Wait until no verdict has arrived for ``quiet_s`` (the flow is stopped); the copies."""
    deadline = time.time() + timeout
    seen, since = -1, time.time()
    while time.time() < deadline:
        now = sum(len(vs) for vs in list(collector.outcome.verdicts.values()))
        if now != seen:
            seen, since = now, time.time()
        elif time.time() - since >= quiet_s:
            break
        time.sleep(0.1)
    return copies(collector)


def snapshot_age(port: int) -> float | None:
    """Seconds since the flow last handed Bytewax a snapshot (its metric); None if unknown."""
    try:
        last = metric(scrape(port), "fraud_last_snapshot_timestamp_seconds")
    except OSError:
        return None
    return time.time() - last if last else None


# --- drift tables -------------------------------------------------------------------------

#: One published window: count, decision counts, label matrix (decision x legit/fraud), ...
WindowFacts = dict[str, object]
WindowKey = tuple[int, str]


def facts(snap: DriftSnapshot, features: Sequence[str] = ()) -> WindowFacts:
    """What a drift snapshot says, as comparable plain values (``features``: their PSI too)."""
    decisions = {d: round(snap.decision_rates.get(d, 0.0) * snap.count) for d in DECISIONS}
    fb = snap.labels
    matrix = {}
    if fb is not None:
        for d in DECISIONS:
            stem = d.rstrip("e")
            matrix[(d, True)] = getattr(fb, f"fraud_{stem}ed")
            matrix[(d, False)] = getattr(fb, f"legit_{stem}ed")
    return {
        "count": snap.count, "complete": snap.complete, "partitions": snap.partitions,
        "decisions": decisions, "labels": {k: v for k, v in matrix.items() if v},
        "labels_unknown": snap.labels_unknown,
        "psi": {f: snap.feature_psi.get(f) for f in features},
    }


def drift_table(snapshots: Sequence[DriftSnapshot], features: Sequence[str] = ()
                ) -> tuple[dict[WindowKey, WindowFacts], dict[WindowKey, int]]:
    """Facts per (window start, model version), and how many times each was published.

    Raises ``AssertionError`` when one window was published twice with different facts.
    """
    table: dict[WindowKey, WindowFacts] = {}
    times: Counter[WindowKey] = Counter()
    for snap in snapshots:
        key = (snap.window_start, snap.model_version)
        found = facts(snap, features)
        times[key] += 1
        assert table.setdefault(key, found) == found, (
            f"window {key} published twice with different contents:\n{table[key]}\n{found}")
    return table, dict(times)


def implied_drift(stream: LabelledStream, decision: Mapping[str, str]
                  ) -> dict[int, tuple[int, dict[str, int], dict[tuple[str, bool], int]]]:
    """Per window start: what a run's published verdicts imply for its drift snapshot.

    ``(count, decision counts, label matrix)``: transactions by event-time window,
    their verdicts' decisions, and each label's truth against the decision of the
    verdict it judges, in the window of its ``label_time``.
    """
    out: dict[int, tuple[int, dict[str, int], dict[tuple[str, bool], int]]] = {}
    closing = {t.transaction_id for t in closers(0)}
    for t in stream.txns:
        if t.transaction_id in closing:
            continue
        w = stream.window(t.event_time)
        count, decisions, matrix = out.setdefault(w, (0, dict.fromkeys(DECISIONS, 0), {}))
        decisions[decision[t.transaction_id]] += 1
        out[w] = (count + 1, decisions, matrix)
    for lab in stream.labels:
        w = stream.window(lab.label_time)
        count, decisions, matrix = out.setdefault(w, (0, dict.fromkeys(DECISIONS, 0), {}))
        key = (decision[lab.transaction_id], lab.is_fraud)
        matrix[key] = matrix.get(key, 0) + 1
    return out


# --- flows --------------------------------------------------------------------------------


#: :func:`start`'s signature, as the ``launch`` fixture hands it out (conftest.py).
Launch = Callable[..., tuple[FlowProcess, int]]


def start(env: Mapping[str, str], work: Path, *, snapshot_seconds: int = 1,
          recovery: bool = True, log: str = "flow.log") -> tuple[FlowProcess, int]:
    """A flow process with its own metrics port; returns it and the port."""
    port = free_port()
    flow = FlowProcess({**env, "FRAUD_METRICS_PORT": str(port)}, work / log,
                       recovery_dir=work / "recovery" if recovery else None,
                       snapshot_seconds=snapshot_seconds)
    return flow, port


def exit_of(flow: FlowProcess, timeout: float = 60) -> tuple[int, str]:
    """Wait for ``flow`` to exit by itself; its exit status and the log it wrote."""
    code = flow.proc.wait(timeout)
    return code, flow.log_path.read_text(errors="replace")


def lines_with(text: str, needle: str) -> list[str]:
    """The lines of ``text`` that contain ``needle``."""
    return [line for line in text.splitlines() if needle in line]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0-1) of ``values`` by the nearest-rank method."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


# --- live traffic, models and refusals (tests/chaos/test_operations.py) -------------------


class Feed(threading.Thread):
    """Live traffic: produce ``txns`` (key: card id) at ``per_second`` until done or stopped.

    :attr:`sent` counts the transactions handed to the producer; after :meth:`stop` every
    one of them is acknowledged by the broker, so ``txns[:sent]`` is what was produced.
    """

    def __init__(self, settings: KafkaSettings, txns: Sequence[Transaction],
                 per_second: float = 200.0) -> None:
        super().__init__(daemon=True)
        ensure_topics(settings)
        self.settings, self.txns, self.per_second = settings, list(txns), per_second
        self.stopping = threading.Event()
        self.sent = 0
        self.unacked = -1
        """Records the final flush left undelivered (-1 until the feed has ended)."""

    def run(self) -> None:
        producer = Producer(self.settings.client_config(**PRODUCER_DEFAULTS))
        topic, encode = self.settings.topic("transactions"), msgspec.json.Encoder().encode
        started, tick = time.monotonic(), 0.02
        per_tick = max(1, round(self.per_second * tick))
        while self.sent < len(self.txns) and not self.stopping.is_set():
            for txn in self.txns[self.sent:self.sent + per_tick]:
                producer.produce(topic, key=txn.card_id.encode(), value=encode(txn))
            self.sent = min(len(self.txns), self.sent + per_tick)
            producer.poll(0)
            self.stopping.wait(max(0.0, started + self.sent / self.per_second
                                   - time.monotonic()))
        self.unacked = producer.flush(60)

    def stop(self) -> int:
        """Stop producing, wait for the broker's acknowledgements; how many were sent."""
        self.stopping.set()
        if self.ident is not None:  # started
            self.join()
        assert self.unacked in (0, -1), f"{self.unacked} transactions never reached the broker"
        return self.sent


def narrow_graph(model_dir: Path, version: str) -> bytes:
    """``model_dir``'s ONNX model, renamed ``version``, whose graph input declares one
    feature column fewer than its metadata names (issue 14: a graph of 35 columns under
    metadata naming 36 features). The metadata itself stays valid for the running spec.
    """
    import onnx

    from export.model import MODEL_FILE

    proto = onnx.load(str(model_dir / MODEL_FILE))
    width = proto.graph.input[0].type.tensor_type.shape.dim[1]
    assert width.dim_value > 1, "expected a fixed feature width in the exported graph"
    width.dim_value -= 1
    for prop in proto.metadata_props:
        if prop.key.removeprefix("fraudstream.") == "model_version":
            prop.value = version
    return proto.SerializeToString()


def refusal(log: str, prog: str = "flows.score") -> str:
    """The one ``<prog>: cannot start: ...`` line of a refused start-up.

    Fails unless there is exactly one such line and the log holds no Python
    traceback and no Rust panic (a refusal a person can read, issue 14 item 8).
    """
    lines = lines_with(log, f"{prog}: cannot start: ")
    assert len(lines) == 1, f"expected one refusal line, got {len(lines)}:\n{log[-3000:]}"
    assert "Traceback" not in log and "panicked" not in log, log[-3000:]
    return lines[0]
