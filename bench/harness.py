"""Kafka-side plumbing of the benchmark: phases, CPU accounting, flows, producer, collector."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Consumer, Producer, TopicPartition

from devkit.process import FlowProcess
from topics.admin import ensure_topics
from topics.producer import produce_waiting
from topics.settings import KafkaSettings

PARTITIONS = 8
#: Live-traffic probes: a simulated card becomes a new card every this many transactions.
CARD_SPREAD = 2000
#: The bench's own consumer. fetch.wait.max.ms bounds how long the broker holds an empty
#: fetch; the broker answers as soon as data is there (fetch.min.bytes 1).
CONSUMER: dict[str, str | int | bool] = {
    "group.id": "bench", "enable.auto.commit": False, "fetch.wait.max.ms": 10,
    "log.connection.close": False,
}
_TICKS = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Phases:
    """Wall-clock duration of each named phase, announced when it starts and ends."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        say(f"{name} ...")
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - start, 1)
            say(f"{name}: {self.seconds[name]:.0f} s (total {self.elapsed():.0f} s)")

    def elapsed(self) -> float:
        """Seconds since the bench started."""
        return time.monotonic() - self.started


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a live process (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


class CpuMeter:
    """CPU seconds used by the broker, the flow and this process since the last ``take``."""

    def __init__(self, broker_pid: int | None, flow_pid: int | None) -> None:
        self.pids = {"broker": broker_pid, "flow": flow_pid}
        self.last = self._now()

    def _now(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["bench"] = sum(os.times()[:2])
        return now

    def take(self) -> dict[str, float]:
        """CPU seconds per process since the previous call."""
        now = self._now()
        used = {k: round(now[k] - self.last[k], 2) for k in now}
        self.last = now
        return used


class ChildCpu:
    """CPU seconds used by the child processes of ``pid`` (found as they come) since start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen: dict[int, float] = {}

    def poll(self) -> None:
        """Note the children's CPU now (call before they exit: a dead one reads as gone)."""
        for path in Path(f"/proc/{self.pid}/task").glob("*/children"):
            try:
                kids = path.read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                self.seen[kid] = max(self.seen.get(kid, 0.0), cpu_seconds(kid))

    def take(self) -> float:
        """CPU seconds of every child seen so far (polled now)."""
        self.poll()
        return sum(self.seen.values())


class _Times(msgspec.Struct):
    ingest_time: int = 0
    scored_time: int = 0


_decode_times = msgspec.json.Decoder(_Times).decode


class Collector(threading.Thread):
    """Consume one topic from the beginning (all partitions, no group) and keep times.

    ``mode``: ``count`` only counts; ``hop`` keeps (record timestamp, consumed ms);
    ``verdict`` keeps (the verdict's ingest_time, consumed ms, scored_time).
    """

    def __init__(self, settings: KafkaSettings, topic: str, mode: str) -> None:
        super().__init__(daemon=True)
        self.settings, self.topic, self.mode = settings, topic, mode
        self.stopping = threading.Event()
        self.count = 0
        self.first_ts = self.last_ts = 0  # record timestamps (ms) of the messages
        self.first_local = self.last_local = 0.0
        self.samples: list[tuple[int, float, int]] = []

    def run(self) -> None:
        consumer = Consumer(self.settings.client_config(**CONSUMER))
        consumer.assign([TopicPartition(self.topic, p, 0) for p in range(PARTITIONS)])
        keep = self.mode != "count"
        while not self.stopping.is_set():
            msgs = consumer.consume(2000, 0.05)
            if not msgs:
                continue
            now = time.time()
            for msg in msgs:
                if msg.error() is not None:
                    continue
                ts = msg.timestamp()[1]
                if keep:
                    if self.mode == "hop":
                        self.samples.append((ts, now * 1000, ts))
                    else:
                        times = _decode_times(msg.value() or b"{}")
                        self.samples.append((times.ingest_time, now * 1000, times.scored_time))
                if self.count == 0:
                    self.first_ts, self.first_local = ts, now
                self.first_ts = min(self.first_ts, ts)
                self.last_ts = max(self.last_ts, ts)
                self.count += 1
            self.last_local = now
        consumer.close()

    def wait_for(self, n: int, timeout: float, flow: FlowProcess | None = None,
                 stall: float | None = None) -> bool:
        """Wait until ``n`` messages were consumed; False on timeout or a ``stall`` s pause.

        The stall clock starts at the first message: a slow start-up (a busy machine, a JVM
        broker's first fetch) is bounded by ``timeout`` only.
        """
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while self.count < n:
            if flow is not None:
                flow.check()
            now = time.monotonic()
            if self.count != last:
                last, since = self.count, now
            if now > deadline or (stall is not None and self.count and now - since > stall):
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def paced_produce(producer: Producer, topic: str, values: list[tuple[bytes, bytes]] | list[Any],
                  rate: float) -> float:
    """Offer ``values`` at ``rate`` per second (1 ms pacing); return the offered rate.

    ``values``: encoded ``(key, value)`` pairs, or transactions, which are produced as live
    traffic carries them: stamped with the moment they are produced as their event time,
    and spread over as many cards as a processor offering that rate has (a card of the
    simulated world is a new card every :data:`CARD_SPREAD` transactions, so no card pays
    every few seconds), keyed by card. The offered rate is measured over the produce
    calls; the final flush (waiting for the broker's acknowledgements) is not part of it.
    """
    encode = msgspec.json.Encoder().encode
    start = time.perf_counter()
    chunk = max(1, int(rate / 1000))
    now_ms = int(time.time() * 1000)
    for i, item in enumerate(values):
        if i % chunk == 0:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            producer.poll(0)
            now_ms = int(time.time() * 1000)
        if isinstance(item, tuple):
            key, value = item
        else:
            card = f"{item.card_id}~{i // CARD_SPREAD}"
            key, value = card.encode(), encode(msgspec.structs.replace(
                item, card_id=card, event_time=now_ms))
        produce_waiting(producer, topic, value, key)
    offered = len(values) / (time.perf_counter() - start)
    producer.flush(60)
    return offered


@dataclasses.dataclass
class Env:
    """Shared context of the Kafka parts of the run: broker, work directory, model."""

    base: KafkaSettings
    work: Path
    model: Path
    broker_pid: int | None = None
    counter: int = 0

    def topic_set(self, name: str, transactions: str | None = None) -> KafkaSettings:
        """A fresh registry topic set; ``transactions`` shares an existing input topic."""
        self.counter += 1
        overrides = {"transactions": transactions} if transactions else {}
        settings = dataclasses.replace(self.base, topic_prefix=f"bench-{name}-{self.counter}.",
                                       topic_overrides=overrides)
        ensure_topics(settings)
        return settings

    def start(self, module: str, settings: KafkaSettings,
              metrics_port: int = 0, extra: dict[str, str] | None = None) -> FlowProcess:
        """One flow process on ``settings``' topics, with its own state and recovery dirs.

        ``metrics_port``: where the flow serves /metrics (0: not served); ``extra``: more
        environment variables (e.g. ``FRAUD_RULES_TRUSTED_KEYS``).
        """
        run = self.work / f"{module}-{self.counter}"
        env = {"KAFKA_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
               "FRAUD_TOPIC_PREFIX": settings.topic_prefix,
               "FRAUD_STATE_DIR": str(run / "state"), "FRAUD_MODEL_PATH": str(self.model),
               "FRAUD_SAMPLE_DIR": str(run / "samples"),
               # The bench streams weeks of event time in a minute: with the default
               # 5-minute windows the flow would publish a drift snapshot per ~60
               # transactions, a load no live stream has. One day per window here.
               "FRAUD_DRIFT_WINDOW_SECONDS": "86400",
               "FRAUD_METRICS_PORT": str(metrics_port), "FRAUD_LOG_LEVEL": "WARNING"}
        for logical, name in settings.topic_overrides.items():
            env[f"FRAUD_TOPIC_{logical.upper().replace('-', '_')}"] = name
        env.update(extra or {})
        return FlowProcess(env, run / "flow.log", recovery_dir=run / "recovery",
                           snapshot_seconds=10, module=module)

    def cpu(self, flow: FlowProcess | None) -> CpuMeter:
        """A CPU meter over the broker, ``flow`` and this process."""
        return CpuMeter(self.broker_pid, flow.proc.pid if flow is not None else None)


def producer(settings: KafkaSettings, **config: Any) -> Producer:
    """The load generator's producer: the CLI's defaults (linger 5 ms, lz4, acks=all)."""
    from topics.producer import PRODUCER_DEFAULTS

    return Producer(settings.client_config(**{**PRODUCER_DEFAULTS, **config}))


#: A histogram's cumulative bucket counts: {(metric, labels): {upper bound s: count}}.
Buckets = dict[tuple[str, frozenset[tuple[str, str]]], dict[float, float]]


def scrape_buckets(port: int, metric: str) -> Buckets:
    """Cumulative bucket counts of every series of the histogram ``metric`` on /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name != metric:
            continue
        for sample in family.samples:
            if sample.name == f"{metric}_bucket":
                labels = {k: v for k, v in sample.labels.items() if k != "le"}
                key = (metric, frozenset(labels.items()))
                out.setdefault(key, {})[float(sample.labels["le"])] = sample.value
    return out


def scrape_counters(port: int, metrics: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Counter and gauge samples on /metrics: ``{metric: {"k=v,...": value}}`` (``_total`` kept).

    Samples of each named family, labels joined in order (``""`` when unlabelled);
    ``_created`` samples are left out.
    """
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    wanted = {m.removesuffix("_total"): m for m in metrics}
    out: dict[str, dict[str, float]] = {m: {} for m in metrics}
    for family in text_string_to_metric_families(text):
        name = wanted.get(family.name)
        if name is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sample.labels.items())
            out[name][labels] = out[name].get(labels, 0.0) + sample.value
    return out


def bucket_quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """The ``q`` quantile (0-1) of a histogram from cumulative bucket counts, in the unit of
    the bounds, interpolated linearly inside the bucket (PromQL's ``histogram_quantile``)."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower  # above the largest finite bound
            width = count - below
            return lower + (bound - lower) * ((rank - below) / width if width else 0.0)
        lower, below = bound, count
    return lower


def first_fetch_s(port: int, topic: str) -> float | None:
    """When the flow serving /metrics on ``port`` first fetched a record of ``topic`` (Unix s).

    From ``fraud_first_fetch_timestamp_seconds``; None if the flow has not said. A rate
    measured from there counts the verdicts a flow holds back at first (the merchant
    stage's watermark in a backlog), which a span from the first verdict would not.
    """
    found = scrape_counters(port, ("fraud_first_fetch_timestamp_seconds",))
    value = found["fraud_first_fetch_timestamp_seconds"].get(f"topic={topic}")
    return value if value else None


def verdict_rate(collector: Collector, fetched: float | None) -> tuple[float, float]:
    """``(rate, rate from the first verdict)`` of a run's verdicts, in tx/s.

    ``rate``: verdicts / (the last verdict's record timestamp - ``fetched``, the flow's
    first fetch, :func:`first_fetch_s`); without ``fetched`` (the pass-through flow serves
    no /metrics) the span from the first to the last verdict, as the second value.
    """
    from_first = (collector.count - 1) / (max(1, collector.last_ts - collector.first_ts) / 1000)
    from_fetch = (collector.last_ts / 1000 - fetched) if fetched else None
    rate = collector.count / from_fetch if from_fetch and from_fetch > 0 else from_first
    return rate, from_first

