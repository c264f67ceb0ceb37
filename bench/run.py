"""End-to-end benchmark of the scoring flow on both brokers (``just bench``).

    python bench/run.py [--quick] [--runs N] [--only PARTS] [--out bench] [--broker B]

``--broker both`` (the default) runs every part on the embedded broker into ``<out>``,
then throughput and latency again on a real Apache Kafka started for the run into
``<out>/kafka``, and prints the two side by side (:func:`bench.report.side_by_side`);
``embedded`` or ``kafka`` runs one broker only.

Everything runs on this machine, in one invocation, so every comparison is
measured in the same run:

1. pipe limit and scoring flow (:mod:`bench.throughput`): the pass-through flow
   (:mod:`bench.passthrough`) and the real ``flows.score`` over one pre-loaded
   topic of simulator transactions, interleaved, median of ``--runs`` runs;
2. latency under a steady offered rate (:mod:`bench.latency`): a plain topic
   hop (the broker's floor), the pass-through flow and the scoring flow;
3. components in process (:mod:`bench.components`);
4. analyst rules: µs per transaction with 1, 10 and 100 active rules
   (``bench/rules_bench.py``); and in the flow (``rules-flow``, :mod:`bench.rules_flow`):
   ``flows.score`` over the throughput part's pre-loaded topic with no rules, with 100
   signed rules and lists, and with those plus hostile rules published mid-run;
5. memory and disk with 1,000,000 and 10,000,000 cards (``bench/state_bench.py``,
   one fresh process per size, both at once: they use a core each).

Each phase prints its progress and duration; the total goes into the results.
Writes ``<out>/results.json`` and ``<out>/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from bench.components import components  # noqa: E402
from bench.harness import Env, Phases, say  # noqa: E402
from bench.latency import WARMUP, latency  # noqa: E402
from bench.report import machine, markdown, side_by_side, targets  # noqa: E402
from bench.rules_flow import rules_flow  # noqa: E402
from bench.throughput import throughput  # noqa: E402
from devkit.apache_kafka import ApacheKafka  # noqa: E402
from devkit.broker import EmbeddedBroker  # noqa: E402
from devkit.produce import produce_transactions  # noqa: E402
from topics.contracts import Transaction  # noqa: E402
from topics.settings import KafkaSettings  # noqa: E402
from training.simulate import SimConfig, simulated_history  # noqa: E402

ALL_PARTS = ("throughput", "latency", "components", "rules", "rules-flow", "memory")
_encode = msgspec.json.Encoder().encode


def simulate(n: int, cards: int) -> list[Transaction]:
    """Exactly ``n`` simulator transactions over about ``cards`` cards."""
    # the simulator yields slightly fewer transactions than asked for
    history = simulated_history(SimConfig(n_transactions=int(n * 1.02) + 1000, n_cards=cards,
                                          days=30, seed=11, fraud_rate=0.01))
    txns = history.transactions[:n]
    if len(txns) < n:
        raise RuntimeError(f"the simulator gave {len(txns)} transactions, {n} needed")
    return txns


def memory(sizes: list[tuple[int, int, int]]) -> dict[str, Any]:
    """``bench/state_bench.py`` per (cards, real-path cards, probe txns), in parallel."""
    procs = {}
    for cards, real, probe in sizes:
        cmd = [sys.executable, str(ROOT / "bench" / "state_bench.py"), "--cards", str(cards),
               "--txns-per-card", "1", "--real-cards", str(real),
               "--probe-txns", str(probe)]
        procs[cards] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out = {}
    for cards, proc in procs.items():
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"state_bench --cards {cards} failed ({proc.returncode})")
        out[str(cards)] = {**json.loads(stdout[stdout.index("{"):]), "txns_per_card": 1}
        say(f"memory {cards:,} cards: peak RSS {out[str(cards)]['peak_rss_mib']} MiB, "
            f"{out[str(cards)]['disk_bytes_per_card']} B/card on disk")
    return out


def rules_cost(quick: bool) -> dict[str, Any]:
    """``bench/rules_bench.py --json``: µs per transaction with 1, 10 and 100 active rules."""
    cmd = [sys.executable, str(ROOT / "bench" / "rules_bench.py"), "--json",
           "--batches", "10" if quick else "40", "--rounds", "3" if quick else "5"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise RuntimeError(f"rules_bench failed ({done.returncode}): {done.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    say(f"rules: 100 active rules {out['rules_100_us_per_txn']} µs/txn, "
        f"10 rules {out['rules_10_us_per_txn']} µs/txn")
    return out


def latency_need(opts: dict[str, Any]) -> int:
    """Transactions one latency rate uses (every rate replays the same ones on fresh topics)."""
    return WARMUP + int(max(opts["rates"]) * opts["seconds"])


BROKERS = ("both", "embedded", "kafka")
#: The parts ``--broker both`` runs on Apache Kafka too (the others do not use a broker).
KAFKA_PARTS = ("throughput", "latency")


def fresh_broker(kind: str, work: Path) -> EmbeddedBroker | ApacheKafka:
    """A fresh broker: the embedded one (Tansu) or Apache Kafka (:mod:`devkit.apache_kafka`)."""
    if kind == "kafka":
        jvm = os.environ.get("BENCH_KAFKA_JVM_OPTIONS", "").split()
        return ApacheKafka(log_dir=work / f"kafka-{time.monotonic_ns()}", jvm_options=jvm)
    return EmbeddedBroker(log_dir=work, keep_log=False)


def kafka_phases(res: dict[str, Any], parts: set[str], txns: list[Transaction],
                 live: list[Transaction], work: Path, model: Path, phase: Phases,
                 opts: dict[str, Any]) -> None:
    """Throughput, rules in the flow and latency, on fresh brokers (``opts["broker"]``).

    Throughput and ``rules-flow`` read the same pre-loaded topic on one broker. The
    embedded broker keeps every record in memory and its fetches slow down as a
    partition fills, so the latency phase does not inherit the throughput runs' topics.
    """
    if parts & {"throughput", "rules-flow"}:
        with fresh_broker(opts["broker"], work) as broker:
            env = Env(KafkaSettings(bootstrap_servers=broker.bootstrap), work / "throughput",
                      model, broker.pid)
            with phase("preload"):
                shared = env.topic_set("preload").topic("transactions")
                produce_transactions(env.base, shared, txns, progress=False, flush_timeout=120)
            if "throughput" in parts:
                with phase("throughput"):
                    res["throughput"] = throughput(env, shared, len(txns), opts["runs"])
            if "rules-flow" in parts:
                with phase("rules-flow"):
                    res["rules_flow"] = rules_flow(env, shared, [t.card_id for t in txns],
                                                   len(txns), opts["runs"])
    if "latency" in parts:
        with fresh_broker(opts["broker"], work) as broker:
            env = Env(KafkaSettings(bootstrap_servers=broker.bootstrap), work / "latency",
                      model, broker.pid)
            with phase("latency"):
                res["latency"] = latency(env, live[:latency_need(opts)], opts["rates"],
                                         opts["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run of about 2 minutes (smaller data, 6 s rates, 2 runs)")
    parser.add_argument("--runs", type=int, default=None,
                        help="throughput runs per flow (default 3, quick 2)")
    parser.add_argument("--transactions", type=int, default=None,
                        help="pre-loaded transactions (default 200000, quick 60000)")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "current",
                        help="ONNX model (default models/current; a tiny one is trained if "
                             "missing)")
    parser.add_argument("--only", default=",".join(ALL_PARTS),
                        help="comma-separated parts to run (default: all); a partial run "
                             "updates the previous results.json")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for results.json and RESULTS.md (default bench/, "
                             "bench/kafka/ with --broker kafka)")
    parser.add_argument("--broker", choices=BROKERS, default="both",
                        help="broker of the throughput, latency and rules-flow parts: both "
                             "(default: every part on the embedded Tansu broker, then "
                             "throughput and latency on a real Apache Kafka 4.1 started for "
                             "the run, into <out>/kafka, printed side by side; Kafka needs "
                             "java and mvn), embedded or kafka alone; the latency targets "
                             "are judged on Kafka")
    args = parser.parse_args(argv)
    if args.broker == "both":
        return _both(args)
    quick = args.quick
    n = args.transactions or (60_000 if quick else 200_000)
    opts: dict[str, Any] = {"runs": args.runs or (2 if quick else 3),
                            "rates": [2000.0, 5000.0, 10000.0],
                            "seconds": 6.0 if quick else 8.0, "broker": args.broker}
    if args.out is None:
        args.out = ROOT / "bench" / ("kafka" if args.broker == "kafka" else "")
    component_runs, n_state = 3, (10_000 if quick else 30_000)
    sizes = [(100_000, 20_000, 20_000)] if quick else [(1_000_000, 100_000, 50_000),
                                                       (10_000_000, 100_000, 50_000)]
    parts = set(args.only.split(","))
    os.chdir(ROOT)  # the flow processes import bench.passthrough / flows.score from here
    phase = Phases()
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
        with phase(f"simulate {n:,} transactions, {n // 5:,} cards"):
            txns = simulate(max(n, latency_need(opts)), n // 5)
        kafka_phases(res, parts, txns[:n], txns, work, model, phase, opts)
        if "components" in parts:
            with phase("components"):
                res["components"] = components(txns[:n], model, n_state, component_runs)
        if "rules" in parts:
            with phase("rules"):
                res["rules"] = rules_cost(quick)
        if "memory" in parts:
            with phase("memory"):
                res["memory"] = memory(sizes)
    config = {"quick": quick, "runs": opts["runs"], "transactions": n, "cards": n // 5,
              "rates": opts["rates"], "latency_seconds": opts["seconds"],
              "component_runs": component_runs, "model": str(args.model),
              "broker": args.broker,
              "phases_s": phase.seconds, "elapsed_s": round(phase.elapsed(), 1)}
    if partial:  # keep the full run's settings and duration
        config = {k: v for k, v in config.items() if k not in ("elapsed_s", "model", "phases_s")}
    res["config"] = {**res.get("config", {}), **config}
    res["targets"] = targets(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "RESULTS.md").write_text(markdown(res))
    say(f"done in {phase.elapsed():.0f} s: {args.out / 'RESULTS.md'}")
    print(markdown(res))
    return 0


def _both(args: argparse.Namespace) -> int:
    """``--broker both``: the embedded run, then Kafka's throughput and latency, side by side."""
    out = args.out if args.out is not None else ROOT / "bench"
    common = [*(["--quick"] if args.quick else []),
              *(["--runs", str(args.runs)] if args.runs else []),
              *(["--transactions", str(args.transactions)] if args.transactions else []),
              "--model", str(args.model)]
    parts = args.only.split(",")
    main([*common, "--only", ",".join(parts), "--out", str(out), "--broker", "embedded"])
    on_kafka = [p for p in parts if p in KAFKA_PARTS]
    if not on_kafka:
        return 0
    say(f"the same {' and '.join(on_kafka)} on Apache Kafka")
    main([*common, "--only", ",".join(on_kafka), "--out", str(out / "kafka"),
          "--broker", "kafka"])
    embedded = json.loads((out / "results.json").read_text())
    kafka = json.loads((out / "kafka" / "results.json").read_text())
    print(side_by_side(embedded, kafka))
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
