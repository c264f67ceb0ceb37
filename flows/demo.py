"""The end-to-end demo (``just demo``): broker, topics, model, flow, simulator and a live view.

1. a broker: ``KAFKA_BOOTSTRAP_SERVERS``, a running ``just broker``, or an embedded one;
2. fresh topics under a unique prefix (``demo-<time>.``), so runs never mix;
3. a model: ``models/current``, or a small one simulated, trained and exported now;
4. the scoring flow (``python -m bytewax.run flows.score`` with recovery) as a child
   process that dies with the demo;
5. a simulated world the model has never seen (another seed): its first days are
   replayed as fast as possible to build card state (warm-up), the rest is offered
   at ``--rate`` transactions per second for ``--duration`` seconds, with labels
   at their label time and a few invalid messages mixed in;
6. a live view of throughput, latency, decisions, fraud caught and missed (against the
   simulator's ground truth) and dead letters; then a summary, and everything stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from flows.process import FlowProcess
from topics.broker import connect, dev_dir
from topics.contracts import DriftSnapshot, Label, Prediction, Transaction
from topics.produce import PRODUCER_DEFAULTS, produce_waiting
from topics.progress import TokenBucket, format_duration
from topics.settings import ConfigValue, KafkaSettings
from topics.tail import read_topic
from training.history import History, events
from training.simulate import SimConfig, simulated_history

MODEL_DIR = Path("models")
TRAIN_DATA = Path("data/history.parquet")
#: One simulated world shape for the demo's training history and its stream.
WORLD = SimConfig(n_transactions=300_000, n_cards=6_000, days=90, seed=7)
INVALID_EVERY = 997  # one malformed message per this many transactions
SAMPLE_DIR = Path(".dev/samples/demo")
#: The demo world's ground truth, for ``just drift-report --labels``.
TRUTH_FILE = Path(".dev/demo-labels.parquet")
_encode = msgspec.json.Encoder().encode


def say(text: str) -> None:
    """A demo progress line on stderr."""
    print(f"[demo] {text}", file=sys.stderr, flush=True)


def ensure_model() -> None:
    """Simulate, train and export a small model unless ``models/current`` exists."""
    if (MODEL_DIR / "current").exists():
        say(f"serving {(MODEL_DIR / 'current').resolve().name} from models/current")
        return
    say("no models/current: simulating a history, training and exporting a model (about a minute)")
    from export.onnx import main as export_main
    from training.simulate import main as simulate_main
    from training.train import main as train_main

    steps = (
        (simulate_main, ["-n", str(WORLD.n_transactions), "--cards", str(WORLD.n_cards),
                         "--days", str(WORLD.days), "--seed", str(WORLD.seed),
                         "--out", str(TRAIN_DATA)]),
        (train_main, ["--data", str(TRAIN_DATA), "--out", "runs/train"]),
        (export_main, ["--model", "runs/train", "--models-dir", str(MODEL_DIR)]),
    )
    for step, argv in steps:
        if step(argv) != 0:
            raise SystemExit("[demo] model bootstrap failed; see the messages above")


@dataclasses.dataclass
class Tally:
    """What the live view shows; written by the consumer thread, read by the view."""

    produced: int = 0
    invalid_sent: int = 0
    verdicts: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    decisions: Counter[str] = dataclasses.field(default_factory=Counter)
    fraud_caught: int = 0
    fraud_missed: int = 0
    false_alarms: int = 0
    live_latency_ms: list[float] = dataclasses.field(default_factory=list)
    live_start_ms: int = 0


class VerdictReader(threading.Thread):
    """Consume predictions and dead letters (assigned partitions, no group) into a Tally."""

    def __init__(self, settings: KafkaSettings, truth: dict[str, bool], tally: Tally) -> None:
        super().__init__(daemon=True)
        self.settings, self.truth, self.tally = settings, truth, tally
        self.stopping = threading.Event()
        self.seen: set[str] = set()

    def run(self) -> None:
        """Consume until ``stopping`` is set."""
        options: dict[str, ConfigValue] = {
            "group.id": "fraudstream-demo", "enable.auto.commit": False,
            "fetch.wait.max.ms": 20, "log.connection.close": False,
        }
        consumer = Consumer(self.settings.client_config(**options))
        predictions = self.settings.topic("predictions")
        dead = self.settings.topic("dead-letter")
        consumer.assign([TopicPartition(t, p, 0) for t in (predictions, dead) for p in range(8)])
        decode = msgspec.json.Decoder(Prediction).decode
        while not self.stopping.is_set():
            for msg in consumer.consume(1000, 0.1):
                error, value = msg.error(), msg.value()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        say(f"consumer: {error}")
                elif msg.topic() == dead:
                    self.tally.dead_letters += 1
                elif value is not None:
                    self._count(decode(value), time.time() * 1000)
        consumer.close()

    def _count(self, p: Prediction, now_ms: float) -> None:
        t = self.tally
        if p.transaction_id in self.seen:
            t.duplicates += 1
            return
        self.seen.add(p.transaction_id)
        t.verdicts += 1
        t.decisions[p.decision] += 1
        flagged = p.decision != "approve"
        if self.truth.get(p.transaction_id, False):
            if flagged:
                t.fraud_caught += 1
            else:
                t.fraud_missed += 1
        elif flagged:
            t.false_alarms += 1
        if t.live_start_ms and p.ingest_time >= t.live_start_ms:
            t.live_latency_ms.append(now_ms - p.ingest_time)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values[-50_000:])
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def status(t: Tally, elapsed: float, rate: float) -> str:
    """One line of the live view."""
    lat = t.live_latency_ms
    fraud = t.fraud_caught + t.fraud_missed
    return (
        f"{format_duration(elapsed):>6} | produced {t.produced:>8,} | verdicts {t.verdicts:>8,} "
        f"({rate:>7,.0f}/s) | p50 {_percentile(lat, 0.5):6.1f} ms p99 {_percentile(lat, 0.99):6.1f}"
        f" ms | approve {t.decisions['approve']:,} review {t.decisions['review']:,} "
        f"decline {t.decisions['decline']:,} | fraud caught {t.fraud_caught}/{fraud} | "
        f"dead letters {t.dead_letters}"
    )


def write_truth(history: History) -> None:
    """The world's ``transaction_id`` and ``is_fraud`` as Parquet (outside the sample dir)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    TRUTH_FILE.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "transaction_id": [t.transaction_id for t in history.transactions],
        "is_fraud": history.is_fraud,
    }), TRUTH_FILE)


def start_flow(settings: KafkaSettings, work: Path) -> FlowProcess:
    """The scoring flow with recovery, on the demo's topics, state in ``work``.

    Drift windows are one simulated day (the stream runs through weeks of event
    time in minutes); the vector sample for ``just drift-report`` goes to
    :data:`SAMPLE_DIR`, emptied first.
    """
    shutil.rmtree(SAMPLE_DIR, ignore_errors=True)
    env = {"KAFKA_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
           "FRAUD_TOPIC_PREFIX": settings.topic_prefix,
           "FRAUD_STATE_DIR": str(work / "state"),
           "FRAUD_MODEL_PATH": str(MODEL_DIR / "current"),
           "FRAUD_DRIFT_WINDOW_SECONDS": "86400", "FRAUD_DRIFT_FLUSH_SECONDS": "10",
           "FRAUD_SAMPLE_DIR": str(SAMPLE_DIR)}
    log = dev_dir() / "demo-flow.log"
    log.unlink(missing_ok=True)
    return FlowProcess(env, log, recovery_dir=work / "recovery")


def _check(flow: FlowProcess) -> None:
    try:
        flow.check()
    except RuntimeError as exc:
        raise SystemExit(f"[demo] {exc}") from None


def _invalid(n: int) -> bytes:
    kinds = (b'{"transaction_id": "broken-%d", "amount": -1}', b"not json %d", b'["array", %d]')
    return kinds[n % len(kinds)] % n


def produce(
    settings: KafkaSettings, history: History, live_from: int, rate: float, tally: Tally,
    flow: FlowProcess, wait_for: int,
) -> Iterator[str]:
    """Produce the warm-up as fast as possible, wait for its verdicts, then the live part."""
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    txn_topic, label_topic = settings.topic("transactions"), settings.topic("labels")
    bucket: TokenBucket | None = None
    live_phase = False
    for event in events(history):
        if isinstance(event, Label):
            producer.produce(label_topic, key=event.transaction_id.encode(), value=_encode(event))
            continue
        assert isinstance(event, Transaction)
        if not live_phase and tally.produced >= live_from:
            producer.flush(30)
            yield "warm-up produced; waiting for its verdicts"
            deadline = time.time() + 300
            while tally.verdicts < wait_for and time.time() < deadline:
                time.sleep(0.2)
                yield "tick"
            yield "live"
            live_phase = True
            tally.live_start_ms = int(time.time() * 1000)
            bucket = TokenBucket(rate, burst=max(1.0, rate / 50))
        if bucket is not None:
            bucket.wait()
        produce_waiting(producer, txn_topic, _encode(event), event.card_id.encode())
        tally.produced += 1
        if tally.produced % INVALID_EVERY == 0:
            producer.produce(txn_topic, key=event.card_id.encode(), value=_invalid(tally.produced))
            tally.invalid_sent += 1
        producer.poll(0)
        if tally.produced % 1000 == 0:
            yield "tick"
    producer.flush(30)


def run(args: argparse.Namespace) -> int:
    """The demo; returns the exit code."""
    ensure_model()
    live_count = int(args.rate * args.duration)
    # Same density of transactions per card and day as the training world.
    world = dataclasses.replace(
        WORLD, seed=WORLD.seed + 1000, n_transactions=args.transactions,
        n_cards=args.transactions * WORLD.n_cards // WORLD.n_transactions,
    )
    say(f"simulating an unseen world: {world.n_transactions:,} transactions, "
        f"{world.n_cards:,} cards, {world.days} days (seed {world.seed})")
    history = simulated_history(world)
    write_truth(history)
    truth = {t.transaction_id: s is not None for t, s in zip(
        history.transactions, history.scenario, strict=True)}
    live_from = max(0, len(history) - live_count)
    prefix = os.environ.get("FRAUD_TOPIC_PREFIX") or f"demo-{time.strftime('%Y%m%d-%H%M%S')}."
    base = dataclasses.replace(KafkaSettings.from_env(), topic_prefix=prefix)
    with connect(base) as settings, tempfile.TemporaryDirectory(prefix="fraud-demo-") as tmp:
        from topics.admin import ensure_topics

        ensure_topics(settings)
        say(f"topics {prefix}*; starting the flow (log: {dev_dir() / 'demo-flow.log'})")
        flow = start_flow(settings, Path(tmp))
        tally = Tally()
        reader = VerdictReader(settings, truth, tally)
        reader.start()
        try:
            return _drive(settings, history, live_from, args, flow, tally)
        except KeyboardInterrupt:
            say("interrupted")
            return 130
        finally:
            reader.stopping.set()
            flow.stop()
            reader.join(5)
            say("flow stopped, broker stopping")


def _drive(
    settings: KafkaSettings, history: History, live_from: int, args: argparse.Namespace,
    flow: FlowProcess, tally: Tally,
) -> int:
    warm_valid = live_from
    say(f"warm-up: replaying {live_from:,} transactions as fast as possible to build card "
        f"state, then {len(history) - live_from:,} live at {args.rate:,.0f}/s")
    start = last_view = time.time()
    last_verdicts = 0
    live_started = 0.0
    for phase in produce(settings, history, live_from, args.rate, tally, flow, warm_valid):
        _check(flow)
        now = time.time()
        if phase == "live":
            live_started = now
            say("warm-up done; live traffic from now on")
        elif phase != "tick":
            say(phase)
        if now - last_view >= args.view_every:
            rate = (tally.verdicts - last_verdicts) / (now - last_view)
            last_view, last_verdicts = now, tally.verdicts
            print(status(tally, now - start, rate), flush=True)
    deadline = time.time() + 60
    while tally.verdicts < tally.produced and time.time() < deadline:
        _check(flow)
        time.sleep(0.2)
    live_seconds = time.time() - (live_started or start)
    lat = tally.live_latency_ms
    fraud = tally.fraud_caught + tally.fraud_missed
    print("\n=== summary ===")
    print(f"transactions produced   {tally.produced:,} (+{tally.invalid_sent} invalid)")
    print(f"verdicts                {tally.verdicts:,} unique, {tally.duplicates} duplicates")
    print(f"missing verdicts        {tally.produced - tally.verdicts:,}")
    print(f"dead letters            {tally.dead_letters} (sent {tally.invalid_sent} invalid)")
    print("decisions               " + ", ".join(
        f"{k} {v:,}" for k, v in sorted(tally.decisions.items())))
    print(f"fraud caught / missed   {tally.fraud_caught} / {tally.fraud_missed}"
          + (f" ({tally.fraud_caught / fraud:.0%} recall)" if fraud else ""))
    print(f"false alarms            {tally.false_alarms:,} legitimate transactions flagged")
    if lat:
        print(f"live latency            p50 {statistics.median(lat):.1f} ms, "
              f"p99 {_percentile(lat, 0.99):.1f} ms, max {max(lat):.1f} ms "
              f"(produce -> verdict consumed, {len(lat):,} live verdicts)")
        print(f"live throughput         {len(lat) / max(live_seconds, 1e-9):,.0f} verdicts/s "
              f"offered {args.rate:,.0f}/s")
    for line in drift_summary(settings):
        print(line)
    ok = tally.verdicts == tally.produced and tally.dead_letters == tally.invalid_sent
    print("result                  " + ("OK: every transaction has exactly one verdict"
                                         if ok else "INCOMPLETE: see the counts above"))
    return 0 if ok else 1


def read_drift(settings: KafkaSettings, quiet_seconds: float = 2.0) -> list[DriftSnapshot]:
    """Every snapshot on the ``drift`` topic so far."""
    records = read_topic(settings, settings.topic("drift"), timeout=quiet_seconds)
    return [msgspec.json.decode(r.value, type=DriftSnapshot) for r in records if r.value]


def drift_summary(settings: KafkaSettings) -> list[str]:
    """Summary lines of the drift snapshots: windows, alerts, label feedback."""
    snaps = read_drift(settings)
    if not snaps:
        return ["drift snapshots        none yet (a window closes a simulated day after it)"]
    alerted = Counter(a for s in snaps for a in s.alerts)
    lines = [f"drift snapshots         {len(snaps)} daily windows on "
             f"{settings.topic('drift')}; PSI alerts: "
             + (", ".join(f"{k} in {v}" for k, v in alerted.most_common(4)) or "none")]
    caught = sum(s.labels.fraud_declined + s.labels.fraud_reviewed for s in snaps if s.labels)
    missed = sum(s.labels.fraud_approved for s in snaps if s.labels)
    if caught + missed:
        lines.append(f"label feedback          {caught} labelled frauds flagged, {missed} missed "
                     f"({caught / (caught + missed):.0%} recall, from the labels topic); "
                     "precision needs legit labels too")
    lines.append(f"drift report            just drift-report --labels {TRUTH_FILE} "
                 f"(sample in {SAMPLE_DIR})")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m flows.demo --help``."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.demo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="live transactions per second offered (default 1000: what one "
                             "2-core machine sustains with broker, flow and demo on it)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of live traffic after the warm-up (default 30)")
    parser.add_argument("--transactions", type=int, default=200_000,
                        help="size of the simulated world streamed, warm-up included "
                             "(default 200000)")
    parser.add_argument("--view-every", type=float, default=1.0,
                        help="seconds between live-view lines (default 1)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
