"""The span export process: the flow's spans made and OTLP-encoded off the scoring loop.

The OpenTelemetry SDK's OTLP encoding costs about 50-90 µs a span on this project's
machines (protobuf messages built field by field in Python), five or six spans a
trace: at 1% sampling that alone was 3 µs per transaction of the flow's ~100. So the
flow (:class:`ExportProcess`, in the flow's process) only writes each sink batch's
sampled traces (:class:`tracing.spans.TraceRecord`: ids and times, plain values) to a
pipe, one pickle per batch, and a child process (``python -m tracing.export``, this
module's :func:`main`) turns them into SDK spans (:class:`tracing.spans.SpanMaker`)
for the SDK's ``BatchSpanProcessor`` and OTLP/HTTP exporter, configured by the same
``OTEL_*`` variables (it inherits the flow's environment).

**Failure and load.** Tracing never stops or slows scoring: the child runs at a lower
priority (``nice`` :data:`NICENESS`: when the CPU is saturated the flow and the broker
go first), the flow's writes never block (what the pipe does not take waits in
memory, up to :data:`MAX_WAITING` bytes; beyond that traces are dropped and counted,
as the SDK's ``BatchSpanProcessor`` drops beyond ``OTEL_BSP_MAX_QUEUE_SIZE``), and if
the child is gone the flow logs it once and drops spans from then on (the verdicts
still carry their ``traceparent``). The child exits when the pipe closes (the flow stopped, even by
``kill -9``), after exporting what it holds (``BatchSpanProcessor.shutdown``:
``OTEL_BSP_EXPORT_TIMEOUT`` bounds it). It ignores SIGINT and SIGTERM, so a stop
signal sent to the whole process group cannot lose the spans of the flow's last
batches: the flow's own exit closes the pipe.

**Frame.** Each message is a 4-byte little-endian length and a pickle of a
``list[TraceRecord]``; parent and child are the same code (trusted input).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
from collections.abc import Mapping
from typing import IO, BinaryIO

from tracing.spans import SpanMaker, SpanSink, TraceRecord, resource

log = logging.getLogger(__name__)

_LEN = struct.Struct("<I")
#: How long the flow waits at exit for the child to export what it holds (s).
CLOSE_TIMEOUT_S = 10.0
#: Bytes of traces the flow keeps for a child that is behind (about 2,500 traces).
MAX_WAITING = 1 << 20
#: The child's niceness: under a saturated CPU, scoring goes first.
NICENESS = 10


class ExportProcess(SpanSink):
    """The child process that exports the flow's spans (see the module docstring).

    ``topic``: the transactions topic (a span attribute); ``env``: the child's
    environment (the ``OTEL_*`` variables). Raises ``OSError`` if the child cannot
    be started. Writes never block scoring: the pipe is non-blocking, what does not fit
    waits in memory (up to :data:`MAX_WAITING` bytes) and traces beyond that are
    dropped and counted (:attr:`dropped`, logged once).
    """

    def __init__(self, topic: str, env: Mapping[str, str]) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tracing.export", topic], stdin=subprocess.PIPE,
            env=dict(env), close_fds=True)
        assert self._proc.stdin is not None
        self._pipe: IO[bytes] | None = self._proc.stdin
        os.set_blocking(self._pipe.fileno(), False)
        self._waiting = bytearray()
        self.dropped = 0
        """Traces dropped (the child was gone, or behind by :data:`MAX_WAITING` bytes)."""
        atexit.register(self.close)  # a clean exit waits for the last spans' export

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._proc.pid

    def send(self, records: list[TraceRecord]) -> None:
        """Hand one batch's traces to the child, without blocking (see the class docstring)."""
        if self._pipe is None:
            self.dropped += len(records)
            return
        raw = pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
        if len(self._waiting) + len(raw) > MAX_WAITING:
            if not self.dropped:
                log.warning("the span export process is behind by %d bytes: spans are dropped "
                            "until it catches up (counted, not logged again)", len(self._waiting))
            self.dropped += len(records)
        else:
            self._waiting += _LEN.pack(len(raw)) + raw
        self._drain()

    def _drain(self) -> None:
        """Write what the pipe takes now."""
        pipe = self._pipe
        while self._waiting and pipe is not None:
            try:
                written = os.write(pipe.fileno(), self._waiting)
            except BlockingIOError:
                return
            except OSError as exc:  # BrokenPipeError: the child is gone
                self._gone(exc)
                return
            del self._waiting[:written]

    def _gone(self, exc: BaseException) -> None:
        self._pipe = None
        self._waiting.clear()
        log.warning("the span export process (pid %d) is gone (%s, exit code %s): spans are "
                    "dropped from now on; verdicts still carry their traceparent",
                    self._proc.pid, type(exc).__name__, self._proc.poll())

    def close(self) -> None:
        """Write what waits, close the pipe, wait (up to :data:`CLOSE_TIMEOUT_S`) for the child."""
        pipe = self._pipe
        if pipe is not None:
            try:
                os.set_blocking(pipe.fileno(), True)
                self._drain()
            except OSError as exc:
                self._gone(exc)
            with contextlib.suppress(OSError):
                pipe.close()
            self._pipe = None
        try:
            self._proc.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("the span export process did not finish within %.0f s: killed",
                        CLOSE_TIMEOUT_S)
            self._proc.kill()
            self._proc.wait()


def _read(stream: BinaryIO, size: int) -> bytes | None:
    """Exactly ``size`` bytes, or None at the end of the stream."""
    parts: list[bytes] = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def serve(stream: BinaryIO, maker: SpanMaker) -> int:
    """Feed every trace read from ``stream`` to ``maker`` until the stream ends; the count."""
    count = 0
    while (head := _read(stream, _LEN.size)) is not None:
        body = _read(stream, _LEN.unpack(head)[0])
        if body is None:
            break
        records: list[TraceRecord] = pickle.loads(body)  # noqa: S301 - our own parent
        maker(records)
        count += len(records)
    return count


def main(argv: list[str] | None = None) -> int:
    """The child: ``python -m tracing.export TOPIC``, traces on stdin, spans over OTLP/HTTP."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the flow's exit ends us (pipe closed)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    logging.basicConfig(level=os.environ.get("FRAUD_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    processor = BatchSpanProcessor(OTLPSpanExporter())
    maker = SpanMaker(processor, resource(os.environ), args[0] if args else "transactions")
    try:
        serve(sys.stdin.buffer, maker)
    finally:
        processor.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
