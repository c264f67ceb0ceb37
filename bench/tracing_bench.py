"""Cost of tracing (issue 24): the card and merchant stages with tracing off and on at 1%.

Runs the flow's two stages in one process (``tests/stages.py``: real RocksDB, the model
in ``models/current``) over one simulated stream, alternating tracing off and on
(``FRAUD_TRACE_SAMPLE_RATE`` = 1% of transactions start a trace, plus ``--parented``
of them carrying a sampled W3C traceparent), the traced verdicts' headers and trace
records made as the sink makes them and handed to the span export process
(:mod:`tracing.export`, as the flow runs it), which exports them over OTLP/HTTP to a
local receiver that accepts and drops them. Prints, per transaction of the stream:
this process's CPU (every thread) off and on, best and median of ``--runs``
alternating runs; the CPU spent in the flow's tracing code itself (the decode pick, the
traces' re-indexing, the sink's ids, headers and hand-over, timed around each call),
steadier on a busy machine; and the export process's CPU (making, encoding and
sending the spans, on another core).

    python -m bench.tracing_bench [--n 20000] [--runs 3] [--rate 0.01] [--parented 0]
    python -m bench.tracing_bench --flow --n 100000 --runs 3   # the real flow, as just bench

``--flow`` measures the real scoring flow instead (:func:`flow_runs`).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from flows import items, scorer  # noqa: E402
from flows.items import SinkBatch  # noqa: E402
from flows.serving import ModelSource  # noqa: E402
from stages import Stages, sourced  # noqa: E402
from tiny_model import tiny_history  # noqa: E402
from topics.contracts import Transaction  # noqa: E402
from tracing.export import ExportProcess  # noqa: E402
from tracing.spans import Tracing  # noqa: E402
from training.simulate import SimConfig  # noqa: E402


class _Drop(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:  # noqa: N802
        _Drop.received += len(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


SPENT = [0.0]
"""CPU seconds spent inside the wrapped tracing calls."""


def _timed(module: object, name: str) -> None:
    """Wrap ``module.name`` to add its CPU time (this thread's) to :data:`SPENT`."""
    inner = getattr(module, name)

    def wrapped(*args: object, **kwargs: object) -> object:
        started = time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            SPENT[0] += time.thread_time() - started

    setattr(module, name, wrapped)


def run(stream: list[Transaction], model: Path, tracing: Tracing | None, parented: float,
        chunk: int = 1000) -> float:
    """µs per transaction through both stages (and the sink's span step when traced)."""
    traces = None
    if tracing is not None and parented:
        every = int(1 / parented)
        traces = {t.transaction_id: (f"00-{i + 1:032x}-{i + 1:016x}-01", None)
                  for i, t in enumerate(stream) if i % every == 0}
    with tempfile.TemporaryDirectory() as root:
        stages = Stages(Path(root), ModelSource(model, thresholds=lambda m: m.thresholds,
                                                interval=0), tracing=tracing)
        items = sourced(stream, stages.parts)
        started = time.process_time()  # CPU (all threads: export too), steadier than wall
        done = traced = 0
        for i in range(0, len(items) + chunk, chunk):
            if i < len(items):
                stages.feed(items[i:i + chunk], settle=False, traces=traces)
            else:
                stages.feed([])  # the end: every source idle, the rest scored
            if tracing is not None:  # the sink's step: spans and headers of traced verdicts
                for out in stages.outputs[done:]:
                    if isinstance(out, SinkBatch) and out.traces is not None:
                        _, spans = tracing.publish(out.traces, time.time(), "predictions")
                        tracing.end(spans, time.time())
                        traced += len(out.traces)
                done = len(stages.outputs)
        elapsed = time.process_time() - started
        run.traced = traced  # type: ignore[attr-defined]
        assert len(stages.records()) == len(stream)
        for c in stages.cards.values():
            c.close()
    return elapsed / len(stream) * 1e6


def flow_runs(n: int, runs: int, rate: float, endpoint: str, model: Path) -> None:
    """``--flow``: the real scoring flow over a pre-loaded backlog, tracing off and on.

    As ``just bench`` measures throughput (:func:`bench.throughput.throughput_once`, the
    embedded broker), interleaved; with tracing on at ``rate`` (``FRAUD_TRACE_SAMPLE_RATE``)
    its spans go to the local receiver. Prints the medians: scoring rate, the flow
    process's CPU per transaction, and its children's (the span export process).
    """
    from bench.harness import Env
    from bench.run import simulate
    from bench.throughput import throughput_once
    from devkit.broker import EmbeddedBroker
    from devkit.produce import produce_transactions
    from topics.settings import KafkaSettings

    txns = simulate(n, max(1000, n // 20))
    traced = {"FRAUD_TRACING": "on", "FRAUD_TRACE_SAMPLE_RATE": str(rate),
              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "500"}
    got: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="fraud-trace-bench-") as tmp, \
            EmbeddedBroker(log_dir=Path(tmp), keep_log=False) as broker:
        env = Env(KafkaSettings(bootstrap_servers=broker.bootstrap), Path(tmp) / "run", model,
                  broker.pid)
        shared = env.topic_set("preload").topic("transactions")
        produce_transactions(env.base, shared, txns, progress=False, flush_timeout=120)
        for r in range(runs):
            for name, extra in (("off", None), ("on", traced)):
                res = throughput_once(env, "flows.score", shared, len(txns), extra,
                                      children=True)
                got[name].append(res)
                print(f"run {r + 1}/{runs} tracing {name}: {res['tx_per_s']:,.0f} tx/s, flow "
                      f"CPU {res['flow_cpu_us_per_tx']:.1f} µs/tx, children "
                      f"{res['children_cpu_us_per_tx']:.1f} µs/tx", flush=True)
    med = {name: {k: statistics.median(x[k] for x in rs)
                  for k in ("tx_per_s", "flow_cpu_us_per_tx", "children_cpu_us_per_tx")}
           for name, rs in got.items()}
    off, on = med["off"], med["on"]
    print(f"{len(txns):,} transactions, medians of {runs} interleaved runs: scoring "
          f"{off['tx_per_s']:,.0f} tx/s off, {on['tx_per_s']:,.0f} on "
          f"({100 * (on['tx_per_s'] / off['tx_per_s'] - 1):+.1f}%); flow process CPU "
          f"{off['flow_cpu_us_per_tx']:.1f} -> {on['flow_cpu_us_per_tx']:.1f} µs/tx "
          f"({100 * (on['flow_cpu_us_per_tx'] / off['flow_cpu_us_per_tx'] - 1):+.1f}%); the "
          f"span export process {on['children_cpu_us_per_tx']:.1f} µs/tx (start-up included); "
          f"{_Drop.received:,} bytes of OTLP received")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flow", action="store_true",
                        help="the real scoring flow over a pre-loaded backlog (embedded broker)")
    parser.add_argument("--rate", type=float, default=0.01)
    parser.add_argument("--parented", type=float, default=0.0)
    parser.add_argument("--model", type=Path, default=Path("models/current"))
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    if args.flow:
        flow_runs(args.n, args.runs, args.rate, endpoint, args.model)
        server.shutdown()
        return
    stream = list(tiny_history(SimConfig(n_transactions=args.n, n_cards=2_000, days=10,
                                         seed=5)).transactions)
    child = ExportProcess("transactions", {**os.environ,
                                           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint})
    tracing = Tracing(child, {}, args.rate, seed=1)
    off: list[float] = []
    on: list[float] = []
    run(stream[:2000], args.model, None, 0.0)  # warm-up: kernels compiled, caches
    for _ in range(args.runs):
        off.append(run(stream, args.model, None, 0.0))
        on.append(run(stream, args.model, tracing, args.parented))
    # the tracing code alone, timed around each call
    for module, name in ((items, "take_traces"), (items, "slice_traces"),
                         (items, "concat_traces"), (scorer, "timelines")):
        _timed(module, name)
    for name in ("carry", "publish", "end"):
        _timed(tracing, name)
    run(stream, args.model, tracing, args.parented)
    tracing.close()  # the child exports what it holds, then exits
    done = resource.getrusage(resource.RUSAGE_CHILDREN)  # the export process, waited for
    exported = done.ru_utime + done.ru_stime
    print(f"tracing code: {SPENT[0] / len(stream) * 1e6:.2f} µs per transaction in the flow's "
          f"process; the export process {exported / ((args.runs + 1) * len(stream)) * 1e6:.2f} "
          f"µs per transaction (its whole life, start-up included)")
    best_off, best_on = min(off), min(on)
    mid_off, mid_on = statistics.median(off), statistics.median(on)
    print(f"{len(stream)} transactions, {args.runs} runs each: CPU per transaction, tracing "
          f"off {best_off:.1f} µs (median {mid_off:.1f}), on at rate {args.rate:g} "
          f"(+{args.parented:g} parented) {best_on:.1f} µs (median {mid_on:.1f}): "
          f"{100 * (best_on - best_off) / best_off:+.2f}% best, "
          f"{100 * (mid_on - mid_off) / mid_off:+.2f}% median; "
          f"all runs off {[round(x, 1) for x in off]}, on {[round(x, 1) for x in on]}; "
          f"{run.traced} traced verdicts per run, "  # type: ignore[attr-defined]
          f"{_Drop.received} bytes of OTLP received")
    server.shutdown()


if __name__ == "__main__":
    main()
