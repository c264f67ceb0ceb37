"""Cost of tracing (issue 24): the card and merchant stages with tracing off and on at 1%.

Runs the flow's two stages in one process (``tests/stages.py``: real RocksDB, the model
in ``models/current``) over one simulated stream, alternating tracing off and on
(``FRAUD_TRACE_SAMPLE_RATE`` = 1% of transactions start a trace, plus ``--parented``
of them carrying a sampled W3C traceparent), the traced verdicts' spans made as the
sink makes them and exported over OTLP/HTTP to a local receiver that accepts and drops
them (serialisation and HTTP included). Prints CPU µs per transaction (the process's,
every thread: the exporter's too), best and median of ``--runs`` alternating runs; and,
steadier on a busy machine, the CPU spent in the tracing code itself (the decode pick,
the traces' re-indexing, the sink's spans and headers, timed around each call) plus the
OTLP encoding of the spans made, per transaction of the stream.

    python -m bench.tracing_bench [--n 20000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from flows import items, scorer  # noqa: E402
from flows.items import SinkBatch  # noqa: E402
from flows.serving import ModelSource  # noqa: E402
from stages import Stages, sourced  # noqa: E402
from tiny_model import tiny_history  # noqa: E402
from topics.contracts import Transaction  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.01)
    parser.add_argument("--parented", type=float, default=0.0)
    parser.add_argument("--model", type=Path, default=Path("models/current"))
    args = parser.parse_args()
    stream = list(tiny_history(SimConfig(n_transactions=args.n, n_cards=2_000, days=10,
                                         seed=5)).transactions)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    tracing = Tracing(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)), {}, args.rate,
                      seed=1)
    off: list[float] = []
    on: list[float] = []
    run(stream[:2000], args.model, None, 0.0)  # warm-up: kernels compiled, caches
    for _ in range(args.runs):
        off.append(run(stream, args.model, None, 0.0))
        on.append(run(stream, args.model, tracing, args.parented))
    tracing.provider.force_flush()
    # the tracing code alone, timed around each call, and the encoding of what it made
    memory = InMemorySpanExporter()
    counted = Tracing(SimpleSpanProcessor(memory), {}, args.rate, seed=1)
    for module, name in ((items, "take_traces"), (items, "slice_traces"),
                         (items, "concat_traces"), (scorer, "timelines")):
        _timed(module, name)
    for name in ("carry", "publish", "end"):
        _timed(counted, name)
    run(stream, args.model, counted, args.parented)
    made = memory.get_finished_spans()
    started = time.thread_time()
    for i in range(0, len(made), 512):  # as the BatchSpanProcessor exports: 512 a batch
        encode_spans(made[i:i + 512]).SerializeToString()
    encoding = time.thread_time() - started
    print(f"tracing code: {SPENT[0] / len(stream) * 1e6:.2f} µs per transaction, OTLP "
          f"encoding {encoding / len(stream) * 1e6:.2f} µs ({len(made)} spans)")
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
    tracing.provider.shutdown()
    server.shutdown()


if __name__ == "__main__":
    main()
