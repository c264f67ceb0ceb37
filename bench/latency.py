"""End-to-end latency under a steady offered rate: plain topic hop, pass-through flow, scoring flow.

Latency is from the transaction's Kafka record timestamp (create time: the
moment the load generator produced it) to the moment the bench consumer
receives its verdict. Each (path, rate) gets fresh topics and a fresh flow
process: the embedded broker's fetch cost grows with the number of record
batches in a partition, so a topic that already holds earlier rates' records
would slow every later rate.

Statistics, each defined once:

* **steady state**: the records produced from 2 s after the offer starts to
  its end (the first 2 s, while consumers settle, are dropped);
* **all records** (``p50``, ``p95``, ``p99``, ``max``): percentiles over every
  steady-state record;
* **per window** (``window_p50`` ...): the steady state is cut into 2 s windows
  of produce time, each window's percentile taken, and the median over windows
  reported (robust to one slow window; all-records is the stricter figure);
* **in flow** (produce -> verdict rendered, the flow's ``scored_time``) and
  **out** (rendered -> consumed by the bench): all-records p50/p99;
* **stages** (scoring flow only): the flow's own ``fraud_stage_seconds``
  histogram (broker = record timestamp to fetched by the source, card, merchant,
  sink = made to handed to the producer, ack = handed to acknowledged), its
  increase over the steady state, p50/p99 by ``histogram_quantile``
  interpolation inside the buckets.

A path "kept up" if its backlog drained within 5 s after the offer ended.
``cpu_cores`` is what the broker, the flow and the bench process used while
the rate was offered.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from bench.harness import (
    Buckets,
    Collector,
    Env,
    bucket_quantile,
    paced_produce,
    producer,
    say,
    scrape_buckets,
)
from devkit.broker import free_port

PATHS = ("hop", "passthrough", "score")
STAGES = "fraud_stage_seconds"
WARMUP = 300
DROP_MS, WINDOW_MS = 2000, 2000
DRAIN_S = 5.0


def _pct(values: np.ndarray) -> dict[str, float]:
    return {f"p{q}": round(float(np.percentile(values, q)), 1) for q in (50, 99)}


def summarize(samples: list[tuple[int, float, int]], t0: int, t1: int) -> dict[str, Any]:
    """Statistics of the samples produced in [t0 + 2 s, t1) (see the module docstring)."""
    arr = np.asarray([s for s in samples if t0 + DROP_MS <= s[0] < t1], dtype=np.float64)
    if not len(arr):
        return {"n": 0}
    total = arr[:, 1] - arr[:, 0]
    window = ((arr[:, 0] - t0 - DROP_MS) // WINDOW_MS).astype(np.int64)
    stats: dict[str, list[float]] = {"p50": [], "p95": [], "p99": []}
    for w in np.unique(window):
        values = total[window == w]
        if len(values) >= 100:
            for q in (50, 95, 99):
                stats[f"p{q}"].append(float(np.percentile(values, q)))
    out: dict[str, Any] = {
        f"p{q}": round(float(np.percentile(total, q)), 1) for q in (50, 95, 99)}
    out.update({f"window_{k}": round(statistics.median(v), 1) for k, v in stats.items() if v})
    out.update(max=round(float(total.max()), 1), n=len(arr), windows=len(stats["p50"]))
    if arr[0, 2] != arr[0, 0]:  # a verdict: split at the flow's scored_time
        out["in_flow"] = _pct(arr[:, 2] - arr[:, 0])
        out["out"] = _pct(arr[:, 1] - arr[:, 2])
    return out


def stage_breakdown(before: Buckets, after: Buckets) -> dict[str, dict[str, float]]:
    """p50/p99 (ms) per stage of the observations between two scrapes of the histogram."""
    out: dict[str, dict[str, float]] = {}
    for key, counts in sorted(after.items(), key=lambda kv: sorted(kv[0][1])):
        start = before.get(key, {})
        delta = {le: c - start.get(le, 0.0) for le, c in counts.items()}
        stage = dict(key[1])["stage"]
        stats = {f"p{q}": bucket_quantile(q / 100, delta) for q in (50, 99)}
        if all(v is not None for v in stats.values()):
            out[stage] = {k: round(float(v) * 1000, 1) for k, v in stats.items() if v is not None}
            out[stage]["n"] = delta[max(delta)]
    return out


def latency_at(env: Env, path: str, encoded: list[Any], rate: float,
               seconds: float) -> dict[str, Any]:
    """Latency of one path at one offered rate, on fresh topics (and a fresh flow)."""
    settings = env.topic_set(f"lat-{path}")
    in_topic = settings.topic("transactions")
    out_topic = in_topic if path == "hop" else settings.topic("predictions")
    collector = Collector(settings, out_topic, "hop" if path == "hop" else "verdict")
    collector.start()
    port = free_port() if path == "score" else 0
    flow = None if path == "hop" else env.start(
        "flows.score" if path == "score" else "bench.passthrough", settings, port)
    load = producer(settings)
    n = int(rate * seconds)
    try:
        # warm-up: the process is up and the pipe is primed before anything is timed
        paced_produce(load, in_topic, encoded[:WARMUP], 1000)
        if not collector.wait_for(WARMUP, 120, flow):
            raise RuntimeError(f"latency {path}: warm-up verdicts missing")
        cpu = env.cpu(flow)
        before = scrape_buckets(port, STAGES) if port else {}
        t0 = int(time.time() * 1000)
        offered = paced_produce(load, in_topic, encoded[WARMUP:WARMUP + n], rate)
        t1 = int(time.time() * 1000)
        used = cpu.take()
        # kept up: the backlog left when the offer ends drains within DRAIN_S
        kept_up = collector.wait_for(WARMUP + n, DRAIN_S, flow)
        after = scrape_buckets(port, STAGES) if port else {}
    finally:
        if flow is not None:
            flow.stop()
        collector.stop()
    res = summarize(collector.samples, t0, t1)
    if after:
        res["stages"] = stage_breakdown(before, after)
    wall = max(1e-3, (t1 - t0) / 1000)
    res.update(offered_per_s=rate, achieved_offer_per_s=round(offered), kept_up=kept_up,
               cpu_cores={k: round(v / wall, 2) for k, v in used.items()})
    return res


def latency(env: Env, encoded: list[Any], rates: list[float],
            seconds: float) -> dict[str, Any]:
    """Every path at every rate (a path stops at the first rate it cannot keep up with).

    ``encoded``: the transactions to offer; each is produced with its produce time as its
    event time, as live traffic is (a simulated month replayed in seconds would run event
    time thousands of times faster than the clock, and the merchant stage's hour of
    event-time slack would shrink to milliseconds of wall time).
    """
    out: dict[str, Any] = {}
    for path in PATHS:
        out[path] = {}
        for rate in rates:
            res = latency_at(env, path, encoded, rate, seconds)
            out[path][str(int(rate))] = res
            split = (f", in flow p50/p99 {res['in_flow']['p50']}/{res['in_flow']['p99']}"
                     if "in_flow" in res else "")
            say(f"latency {path} @ {rate:,.0f}/s: p50 {res.get('p50')} p99 {res.get('p99')} "
                f"max {res.get('max')} ms{split}; CPU cores {res['cpu_cores']}"
                + ("" if res["kept_up"] else " (did not keep up)"))
            if not res["kept_up"]:
                break
    for rate in rates:
        key = str(int(rate))
        score, pipe = out["score"].get(key, {}), out["passthrough"].get(key, {})
        if "p99" in score and "p99" in pipe:
            out.setdefault("ratio_to_passthrough", {})[key] = {
                q: round(score[q] / pipe[q], 2) for q in ("p50", "p99")}
    return out
