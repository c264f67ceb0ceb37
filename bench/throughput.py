"""Throughput of the pass-through flow (pipe limit) and the scoring flow on one pre-loaded topic.

Every run reads the same pre-loaded transactions topic from the beginning with a
fresh output topic set, state directory and recovery directory. Rate of the scoring
flow = verdicts / (the last verdict's Kafka record timestamp - the moment the flow
first fetched a transaction, ``fraud_first_fetch_timestamp_seconds``), so start-up
(imports, model load, metadata, the list read) is excluded but verdicts the merchant
stage holds back at first are not: a span from the first verdict read 750,000 tx/s
on a 60,000-transaction run whose verdicts came in a burst (kept as
``tx_per_s_from_first_verdict``). The pass-through flow holds nothing and serves no
/metrics: (verdicts - 1) / span between its first and last verdict. The flow's CPU time per
transaction is kept too: it is less sensitive to a busy machine than the rate.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.harness import ChildCpu, Collector, Env, first_fetch_s, say, verdict_rate
from devkit.broker import free_port

#: ``(name, module, extra environment)``: the pipe limit, the scoring flow, and the scoring
#: flow with its stores' changelogs (``FRAUD_CHANGELOG=on``, issue 25: at most 15% slower).
FLOWS: tuple[tuple[str, str, dict[str, str] | None], ...] = (
    ("passthrough", "bench.passthrough", None),
    ("score", "flows.score", None),
    ("score+changelog", "flows.score", {"FRAUD_CHANGELOG": "on"}),
)


def throughput_once(env: Env, module: str, shared: str, n: int,
                    extra: dict[str, str] | None = None,
                    children: bool = False) -> dict[str, float]:
    """One flow process over the pre-loaded topic, stopped as soon as all verdicts arrived.

    ``extra``: more environment variables for the flow; ``children``: also report the CPU
    of the flow's child processes (``children_cpu_us_per_tx``, e.g. the span export).
    """
    settings = env.topic_set(module.split(".")[-1], transactions=shared)
    collector = Collector(settings, settings.topic("predictions"), "count")
    collector.start()
    started = time.time()
    scoring = module == "flows.score"  # serves /metrics; the pass-through flow does not
    port = free_port() if scoring else 0
    flow = env.start(module, settings, port, extra)
    cpu = env.cpu(flow)
    kids = ChildCpu(flow.proc.pid) if children else None
    try:
        # Stops at n verdicts; a 30 s stall is reported with the count that did arrive.
        collector.wait_for(n, 900, flow, stall=30)
        if collector.count < 0.95 * n:
            raise RuntimeError(f"{module}: only {collector.count}/{n} verdicts")
        used = cpu.take()
        kid_s = kids.take() if kids is not None else 0.0
        fetched = first_fetch_s(port, shared) if scoring else None
    finally:
        flow.stop()
        collector.stop()
    # From the first record fetched (the scoring flow) when known: verdicts held back at
    # first (a backlog's watermark) would otherwise shorten the span and inflate the rate
    rate, from_first = verdict_rate(collector, fetched)
    return {"tx_per_s": rate,
            "tx_per_s_from_first_verdict": from_first,
            "measured_from": "first fetch" if fetched else "first verdict",
            "startup_s": (fetched - started) if fetched else collector.first_local - started,
            "flow_cpu_us_per_tx": used["flow"] / n * 1e6,
            "broker_cpu_us_per_tx": used["broker"] / n * 1e6,
            "children_cpu_us_per_tx": kid_s / n * 1e6,
            "verdicts": collector.count}


def throughput(env: Env, shared: str, n: int, runs: int) -> dict[str, Any]:
    """Median of ``runs`` runs per flow, interleaved so drift in the machine hits both alike."""
    per: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in FLOWS}
    for r in range(runs):
        for name, module, extra in FLOWS:
            start = time.monotonic()
            res = throughput_once(env, module, shared, n, extra)
            say(f"throughput {r + 1}/{runs} {name}: {res['tx_per_s']:,.0f} tx/s, flow CPU "
                f"{res['flow_cpu_us_per_tx']:.1f} us/tx, start-up {res['startup_s']:.1f} s, "
                f"{time.monotonic() - start:.0f} s")
            per[name].append(res)
    out: dict[str, Any] = {}
    for name, results in per.items():
        out[name] = {key: statistics.median(x[key] for x in results)
                     for key in ("tx_per_s", "startup_s", "flow_cpu_us_per_tx",
                                 "broker_cpu_us_per_tx")}
        out[name]["runs"] = [round(x["tx_per_s"]) for x in results]
    out["ratio"] = out["score"]["tx_per_s"] / out["passthrough"]["tx_per_s"]
    out["changelog_cost"] = 1 - out["score+changelog"]["tx_per_s"] / out["score"]["tx_per_s"]
    out["transactions"] = n
    return out
