"""The tracing room's pure parts: header pick, W3C validation, traces carried through batches."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flows.decode import kept_traces
from flows.items import Decoded
from flows.kafka import RawBatch, RawRecord
from flows.settings import ScoringSettings
from tracing.carry import Carried, Timeline, timelines, trace_headers
from tracing.export import serve
from tracing.spans import SpanMaker, TraceRecord, Tracing, configure, parent_context, resource

GOOD = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("value", [
    "",                                                         # empty
    "garbage",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",     # no flags
    "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",   # short trace id
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero parent id
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is forbidden
    "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",  # not hex
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",  # version 00 has 4 parts
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033\ufffd1-01",  # undecodable byte
])
def test_malformed_traceparents_are_refused(value: str) -> None:
    assert parent_context(value, None) is None


def test_a_valid_traceparent_gives_a_remote_parent() -> None:
    from opentelemetry import trace

    context = parent_context(GOOD, "a=1")
    assert context is not None
    span = trace.get_current_span(context).get_span_context()
    assert span.is_remote and span.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert span.trace_flags.sampled and span.trace_state.get("a") == "1"


def test_header_pick_keeps_only_trace_context() -> None:
    assert trace_headers(None) is None and trace_headers([]) is None
    assert trace_headers([("tracestate", b"a=1")]) is None  # a state without a parent
    assert trace_headers([("traceparent", GOOD.encode()), ("traceparent", b"second")]) == (
        GOOD, None)  # the first counts
    assert trace_headers([("TraceParent", None)]) == ("", None)  # refused later, at decode
    assert trace_headers([("traceparent", b"\xff")]) == ("\ufffd", None)


def test_traces_follow_their_rows_through_take_slice_concat_and_pickle() -> None:
    n = 6
    def batch(traces: dict[int, Carried] | None, base: int) -> Decoded[object]:
        return Decoded(list(range(base, base + n)), np.zeros(n, np.int32),
                       np.arange(base, base + n, dtype=np.int64), np.zeros(n, np.int64),
                       np.zeros(n, np.int64), np.zeros(n), np.zeros(n, bool), traces)

    a = batch({1: Carried("p1", None, 1.0), 4: Carried("p4", None, 1.0)}, 0)
    b = batch({0: Carried("q0", None, 2.0)}, 100)
    both = Decoded.concat([a, b])
    assert {i: t.traceparent for i, t in (both.traces or {}).items()} == {
        1: "p1", 4: "p4", 6: "q0"}
    taken = both.take(np.array([6, 0, 4]))
    assert taken.values == [100, 0, 4]
    assert {i: t.traceparent for i, t in (taken.traces or {}).items()} == {0: "q0", 2: "p4"}
    assert both.take(np.array([0, 2])).traces is None  # none of the traced rows
    assert both.slice(3, 7).traces is not None
    assert {i: t.traceparent for i, t in (both.slice(3, 7).traces or {}).items()} == {
        1: "p4", 3: "q0"}
    assert Decoded.concat([batch(None, 0), batch(None, 6)]).traces is None
    assert pickle.loads(pickle.dumps(taken)).traces == taken.traces


def test_a_snapshot_from_before_traces_unpickles_without_any() -> None:
    d = Decoded([1], np.zeros(1, np.int32), np.zeros(1, np.int64), np.zeros(1, np.int64),
                np.zeros(1, np.int64), np.zeros(1), np.zeros(1, bool))
    none, slots = d.__reduce_ex__(2)[2]
    del slots["traces"]  # what an older version pickled
    old = Decoded.__new__(Decoded)
    old.__setstate__((none, slots))
    assert old.traces is None and old.take(np.array([0])).values == [1]


def test_decode_reindexes_trace_headers_past_refused_records() -> None:
    records = [RawRecord(None, b"", "t", 0, offset, 0) for offset in range(10, 15)]
    batch = RawBatch("t", 0, records, traces={1: ("a", None), 3: ("b", None)})
    assert kept_traces(batch, records) == batch.traces  # nothing refused
    kept = [records[0], records[2], records[3], records[4]]  # offset 11 was dead-lettered
    assert kept_traces(batch, kept) == {2: ("b", None)}
    assert kept_traces(RawBatch("t", 0, records), records) is None


def test_the_decode_pick_keeps_valid_parents_and_draws_roots_per_batch() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(SimpleSpanProcessor(exporter), {}, 0.0, seed=1)
    found = {0: (GOOD, None), 1: ("junk", None)}
    carried = tracing.carry(found, 3, 5.0)
    assert carried == {0: Carried(GOOD, None, 5.0)} and tracing.malformed == 1
    assert tracing.carry(None, 1000, 5.0) is None  # rate 0: no new traces
    processor = SimpleSpanProcessor(exporter)
    sampled = Tracing(processor, {}, 0.01, seed=3)
    drawn = [len(sampled.carry(None, 1000, 5.0) or {}) for _ in range(200)]
    assert 8 < np.mean(drawn) < 12  # 1% of rows start a trace
    assert all(c.traceparent is None
               for c in (Tracing(processor, {}, 1.0).carry(None, 5, 5.0) or {}).values())


def test_timelines_index_the_sink_batch_and_skip_rows_without_a_verdict() -> None:
    traces = {0: Carried(GOOD, None, 1.0), 2: Carried(None, None, 1.0)}
    sent = [0, 1, 3]  # row 2 got no verdict (refused)
    out = timelines(traces, sent, np.array([5, 5, 5, 5]), np.array([7, 8, 9, 10]),
                    np.zeros(4), np.full(4, 2.0), 3.0, 4.0, np.array(["fresh"] * 4))
    assert out is not None and set(out) == {0}
    assert (out[0].offset, out[0].partition, out[0].verdict) == (7, 5, "fresh")
    assert timelines({2: Carried(None, None, 1.0)}, sent, *([np.zeros(4)] * 4), 3.0, 4.0,
                     ["fresh"] * 4) is None


def test_off_by_default_and_by_the_sdk_switch() -> None:
    settings = ScoringSettings.from_env({})
    assert settings.tracing is False and settings.trace_sample_rate == 0.0
    on = ScoringSettings.from_env({"FRAUD_TRACING": "on", "FRAUD_TRACE_SAMPLE_RATE": "0.01"})
    assert on.tracing and on.trace_sample_rate == 0.01
    with pytest.raises(Exception, match="FRAUD_TRACE_SAMPLE_RATE"):
        ScoringSettings.from_env({"FRAUD_TRACE_SAMPLE_RATE": "2"})
    assert configure(False, 0.5, "t", {}) is None
    assert configure(True, 0.5, "t", {"OTEL_SDK_DISABLED": "true"}) is None
    tracing = configure(True, 0.5, "t", {"OTEL_SERVICE_NAME": "fraud-eu"})
    assert tracing is not None and tracing.sample_rate == 0.5
    assert tracing.resource.attributes["service.name"] == "fraud-eu"
    tracing.close()


def _record(trace_id: int, caller: int = 0x1234) -> TraceRecord:
    carried = Carried(GOOD, None, 2.0)
    timeline = Timeline(carried, 3, 41, 1.0, 3.0, 4.0, 5.0, "fresh")
    return TraceRecord(trace_id, caller, 0, 0x99, (1, 2, 3, 4), "a=1", timeline, 5.5, 6.0,
                       "predictions")


def test_the_export_pipe_frames_traces_and_the_child_makes_their_spans() -> None:
    from tracing.export import _LEN

    batches = [[_record(7)], [_record(8), _record(9)]]
    frames = b"".join(_LEN.pack(len(raw)) + raw
                      for raw in (pickle.dumps(b) for b in batches))
    exporter = InMemorySpanExporter()
    maker = SpanMaker(SimpleSpanProcessor(exporter), resource({}), "transactions")
    assert serve(io.BytesIO(frames + b"\x05\x00"), maker) == 3  # a torn last frame: ignored
    spans = exporter.get_finished_spans()
    assert len(spans) == 3 * 5 and {s.context.trace_id for s in spans} == {7, 8, 9}
    sink = next(s for s in spans if s.name == "sink" and s.context.trace_id == 7)
    assert sink.context.span_id == 0x99 and sink.parent is not None
    assert sink.parent.span_id == 0x1234 and sink.parent.is_remote
    assert sink.context.trace_state.get("a") == "1"
    assert (sink.start_time, sink.end_time) == (5_500_000_000, 6_000_000_000)


def test_a_dead_export_process_drops_spans_and_never_stops_scoring() -> None:
    from tracing.export import ExportProcess

    child = ExportProcess("transactions", {"PATH": "/usr/bin:/bin",
                                           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
                                           "http://127.0.0.1:9/v1/traces"})
    child._proc.kill()
    child._proc.wait()
    for _ in range(3):  # the first write may still fit the pipe's buffer: no error then
        child.send([_record(1)] * 2000)
    assert child.dropped > 0
    child.close()  # and closing twice, or after the child died, is harmless
    child.close()


def test_a_stalled_export_process_never_blocks_the_flow() -> None:
    import os
    import signal
    import time

    from tracing.export import MAX_WAITING, ExportProcess

    child = ExportProcess("transactions", {"PATH": "/usr/bin:/bin",
                                           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
                                           "http://127.0.0.1:9/v1/traces"})
    os.kill(child.pid, signal.SIGSTOP)  # reads nothing from now on
    try:
        started = time.monotonic()
        batch = [_record(i) for i in range(1, 501)]  # distinct: pickle shares repeats
        for _ in range(40):  # ~4 MB of traces: the pipe (64 KiB) and the cap fill up
            child.send(batch)
        assert time.monotonic() - started < 5  # never waited for the child
        assert child.dropped > 0 and len(child._waiting) <= MAX_WAITING
    finally:
        child._proc.kill()
        child.close()
