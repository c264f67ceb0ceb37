"""Watch the input topics while the flow runs, and answer Kubernetes' readiness probe.

A consumer assigned to a deleted topic, to a re-created one or to a broker that
lost its data keeps polling and reads nothing, with only librdkafka lines in the
log. :class:`TopicWatch` asks the broker's admin API every few seconds, in a
background thread, and reports the first fault to ``on_fault`` (the flow passes
:func:`lifecycle.process.request_fatal`, so it stops with a message that says what
happened and what to do):

- ``exists``: the topic is unknown (deleted; or a development broker restarted
  and lost every topic);
- ``identity``: its topic id changed (deleted and re-created; brokers from Kafka
  2.8 report ids, KIP-516);
- ``partitions``: its partition count is not the one the flow started with
  (partitions added would be left unread: refused at once);
- ``offsets``: a partition's end (high watermark) is below the offset already
  consumed: the topic was re-created or truncated (the check for brokers
  without topic ids, and for a resume offset beyond the end);
- ``broker``: no answer for longer than ``unreachable_s`` (default 120 s: a
  broker paused for a minute is survived).

A fault must be seen twice in a row (one second apart) before it is reported, so
one stale metadata answer does not stop the flow. Topics are described with
``describe_topics`` and, on brokers without it, ``list_topics()`` for *all*
topics: a metadata request naming a topic auto-creates it on some brokers
(Tansu does, whatever the client asks).

Health is exported as ``fraud_input_healthy{topic, check}`` (1 healthy, 0
failed) and as :meth:`TopicWatch.ready` for ``/ready``, served with the metrics
by :func:`start_http_server`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Gauge, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import CollectorRegistry

from topics.errors import BrokerError
from topics.settings import BOOTSTRAP_ENV, KafkaSettings

log = logging.getLogger(__name__)

CHECKS = ("exists", "identity", "partitions", "offsets", "broker")

INPUT_HEALTHY = Gauge(
    "fraud_input_healthy",
    "1 while an input topic passes a check, 0 once it failed (check: exists, identity, "
    "partitions, offsets, broker); the flow stops on a failed check, except broker "
    "(stops after FRAUD_BROKER_UNREACHABLE_SECONDS).",
    ["topic", "check"],
)

#: Kafka error codes (librdkafka's ``KafkaError`` values).
_UNKNOWN_TOPIC_OR_PART = 3
_UNSUPPORTED_FEATURE = -165
#: All-zero topic id: a broker that does not know topic ids (before Kafka 2.8).
_NO_TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"

Readiness = Callable[[], tuple[bool, str]]
ConsumedOffsets = Callable[[], Mapping[tuple[str, int], int]]


class InputTopicError(BrokerError):
    """An input topic is gone, changed or unreachable; the message says what to do."""

    check = "exists"

    def __init__(self, message: str, topic: str) -> None:
        super().__init__(message)
        self.topic = topic


class TopicMissingError(InputTopicError):
    """The topic does not exist (deleted, or the broker lost its data)."""

    check = "exists"


class TopicRecreatedError(InputTopicError):
    """The topic's id changed: it was deleted and created again."""

    check = "identity"


class PartitionsChangedError(InputTopicError):
    """The topic's partition count differs from the one the flow started with."""

    check = "partitions"


class OffsetBeyondEndError(InputTopicError):
    """A partition ends before an offset the flow already consumed."""

    check = "offsets"


class BrokerUnreachableError(InputTopicError):
    """The broker did not answer for longer than the limit."""

    check = "broker"


class TopicIdentity(NamedTuple):
    """A topic's incarnation: its id (None where the broker has no ids) and partition count."""

    topic_id: str | None
    partitions: int


_RESET = ("delete the state directory (FRAUD_STATE_DIR) and the recovery directory, then "
          "start again to rebuild from the topic")


def _admin(settings: KafkaSettings, timeout: float) -> Any:
    from confluent_kafka.admin import AdminClient

    # log_level 0: the watch reports what fails itself (one warning, then the fault).
    return AdminClient(settings.client_config(**{"log_level": 0,
                                                 "socket.timeout.ms": int(timeout * 1000)}))


def _code(exc: BaseException) -> int | None:
    err = exc.args[0] if exc.args else None
    code = getattr(err, "code", None)
    return int(code()) if callable(code) else None


def describe(admin: Any, topics: Iterable[str], timeout: float, *, use_topic_ids: bool = True
             ) -> dict[str, TopicIdentity | None]:
    """Identity of each topic (None: unknown topic); raise ``KafkaException`` if unreachable.

    Uses ``describe_topics`` (topic ids); on a broker without it, or with
    ``use_topic_ids`` false, the partition counts of ``list_topics()`` (ids None).
    """
    from confluent_kafka import KafkaException, TopicCollection

    names = list(topics)
    if use_topic_ids:
        try:
            futures = admin.describe_topics(TopicCollection(names), request_timeout=timeout)
            out: dict[str, TopicIdentity | None] = {}
            for name, future in futures.items():
                try:
                    found = future.result(timeout)
                except KafkaException as exc:
                    if _code(exc) == _UNKNOWN_TOPIC_OR_PART:
                        out[name] = None
                        continue
                    raise
                topic_id = str(found.topic_id) if found.topic_id is not None else None
                out[name] = TopicIdentity(
                    topic_id if topic_id not in (None, _NO_TOPIC_ID) else None,
                    len(found.partitions),
                )
            return out
        except KafkaException as exc:
            if _code(exc) != _UNSUPPORTED_FEATURE:
                raise
    metadata = admin.list_topics(timeout=timeout)  # all topics: never auto-creates one
    return {
        name: (TopicIdentity(None, len(metadata.topics[name].partitions))
               if name in metadata.topics and metadata.topics[name].error is None else None)
        for name in names
    }


def high_watermarks(admin: Any, partitions: Iterable[tuple[str, int]], timeout: float
                    ) -> dict[tuple[str, int], int]:
    """The end offset (next offset to be written) of each ``(topic, partition)``."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    wanted = {TopicPartition(t, p): OffsetSpec.latest() for t, p in partitions}
    if not wanted:
        return {}
    futures = admin.list_offsets(wanted, request_timeout=timeout)
    return {(tp.topic, tp.partition): int(f.result(timeout).offset) for tp, f in futures.items()}


def topic_identity(settings: KafkaSettings, topic: str, timeout: float = 10.0) -> TopicIdentity:
    """``(topic_id | None, partitions)`` of ``topic``, e.g. to stamp a state store at start-up.

    Raises :class:`TopicMissingError` for an unknown topic and
    :class:`~topics.errors.BrokerError` when the broker cannot be asked.
    """
    from confluent_kafka import KafkaException

    try:
        found = describe(_admin(settings, timeout), [topic], timeout).get(topic)
    except (KafkaException, TimeoutError) as exc:  # a future unanswered within the timeout
        raise BrokerError(
            f"cannot describe topic {topic!r} on {settings.bootstrap_servers}: "
            f"{exc or f'no answer within {timeout:g} s'}; "
            f"check {BOOTSTRAP_ENV} and that the broker is running"
        ) from exc
    if found is None:
        raise TopicMissingError(
            f"topic {topic!r} does not exist on {settings.bootstrap_servers}; create the topics "
            "with `just topics` (python -m devkit.topics)", topic)
    return found


class TopicWatch:
    """Background checks of the input topics; see the module docstring.

    ``expected_partitions``: partitions per topic the flow was built with.
    ``consumed_offsets_fn``: ``{(topic, partition): next offset to read}`` of the
    partitions this process reads (called from the watch thread; may be empty).
    ``expected_ids``: topic ids stamped at start-up (default: the first ones
    seen). ``on_fault`` is called once, from the watch thread, with the error.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topics: Iterable[str],
        expected_partitions: Mapping[str, int],
        consumed_offsets_fn: ConsumedOffsets,
        on_fault: Callable[[InputTopicError], object],
        interval_s: float = 5.0,
        *,
        expected_ids: Mapping[str, str | None] | None = None,
        unreachable_s: float = 120.0,
        request_timeout_s: float | None = None,
        use_topic_ids: bool = True,
        confirm_after_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.topics = list(topics)
        missing = [t for t in self.topics if t not in expected_partitions]
        if missing:
            raise ValueError(f"expected_partitions has no count for {missing}")
        self.expected_partitions = dict(expected_partitions)
        self.expected_ids: dict[str, str | None] = dict(expected_ids or {})
        self.interval_s = interval_s
        self.unreachable_s = unreachable_s
        self.timeout_s = request_timeout_s or max(2.0, min(interval_s, 10.0))
        self.use_topic_ids = use_topic_ids
        self.confirm_after_s = min(confirm_after_s, interval_s)
        self._consumed = consumed_offsets_fn
        self._on_fault = on_fault
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = time.monotonic()
        self._down_since: float | None = None
        self._suspect: tuple[type[InputTopicError], str] | None = None  # (kind, topic)
        self._status: tuple[bool, str] = (False, "input topics not checked yet")
        self.fault: InputTopicError | None = None
        self.checks = 0
        for topic in self.topics:
            for check in CHECKS:
                INPUT_HEALTHY.labels(topic=topic, check=check).set(1)

    # -- public ------------------------------------------------------------------------

    def start(self) -> TopicWatch:
        """Check at once, then every ``interval_s`` in a daemon thread; returns self."""
        if self._thread is None:
            self._last_ok = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="topic-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (idempotent); the gauges keep their last values."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def ready(self) -> tuple[bool, str]:
        """``(True, "ok")`` while every check passes; else False and the reason."""
        return self._status

    def check_once(self) -> InputTopicError | None:
        """Run every check now; the fault seen (not yet confirmed), or None."""
        self.checks += 1
        now = time.monotonic()
        try:
            consumed = dict(self._consumed())  # before the watermarks: they only grow
        except RuntimeError:  # the owner changed the mapping meanwhile: next round
            consumed = {}
        try:
            # A fresh admin client each round, as for the fetches below: librdkafka 2.16 can
            # crash when a client whose metadata cache holds a topic sees it re-created, which
            # is what this watch exists to see (a full test run segfaulted there, 2 in 5).
            admin = _admin(self.settings, self.timeout_s)
            found = describe(admin, self.topics, self.timeout_s,
                             use_topic_ids=self.use_topic_ids)
            fault = self._check_topics(found)
            if fault is None:
                mine = {tp: off for tp, off in consumed.items() if tp[0] in self.topics and off > 0}
                ends = high_watermarks(admin, mine, self.timeout_s)
                fault = self._check_offsets(self._confirm_ends(ends, mine), mine)
        except Exception as exc:  # any failure to ask counts as unreachable
            return self._unreachable(now, exc)
        self._reachable(now)
        if fault is None:
            self._status = (True, "ok")
        else:
            self._status = (False, str(fault))
        return fault

    # -- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.0
        while not self._stopping.wait(delay):
            fault = self.check_once()
            if fault is None:
                self._suspect = None
                delay = self.interval_s
                continue
            key = (type(fault), fault.topic)
            if self._suspect != key and not isinstance(fault, BrokerUnreachableError):
                self._suspect = key  # seen once: look again soon before stopping the flow
                delay = self.confirm_after_s
                continue
            self._report(fault)
            return

    def _report(self, fault: InputTopicError) -> None:
        self.fault = fault
        self._status = (False, str(fault))
        INPUT_HEALTHY.labels(topic=fault.topic, check=fault.check).set(0)
        log.error("input check %r failed for topic %s: stopping the flow", fault.check, fault.topic)
        try:
            self._on_fault(fault)
        except Exception:
            log.exception("on_fault raised")

    # -- checks ------------------------------------------------------------------------

    def _gauge(self, topic: str, check: str, ok: bool) -> None:
        INPUT_HEALTHY.labels(topic=topic, check=check).set(1 if ok else 0)

    def _check_topics(self, found: Mapping[str, TopicIdentity | None]) -> InputTopicError | None:
        where = self.settings.bootstrap_servers
        for topic in self.topics:
            ident = found.get(topic)
            self._gauge(topic, "exists", ident is not None)
            if ident is None:
                return TopicMissingError(
                    f"input topic {topic!r} no longer exists on {where} (deleted, or the broker "
                    "lost its data: a restarted development broker keeps topics in memory); "
                    "nothing can be read from it. Point "
                    f"{BOOTSTRAP_ENV} at the right broker, or re-create the topics (just "
                    f"topics) and, as their offsets start again at 0, {_RESET}", topic)
            baseline = self.expected_ids.setdefault(topic, ident.topic_id)
            changed = (self.use_topic_ids and baseline is not None
                       and ident.topic_id is not None and ident.topic_id != baseline)
            self._gauge(topic, "identity", not changed)
            if changed:
                return TopicRecreatedError(
                    f"input topic {topic!r} was deleted and re-created on {where} (topic id "
                    f"{baseline} is now {ident.topic_id}, {ident.partitions} partitions; a broker "
                    "that lost its data re-creates a topic when a client asks for it): its "
                    "offsets start again at 0 and no longer match the stored state. If that was "
                    f"meant, {_RESET}; otherwise restore the topic", topic)
            wanted = self.expected_partitions[topic]
            self._gauge(topic, "partitions", ident.partitions == wanted)
            if ident.partitions != wanted:
                unread = (f"partitions {wanted}..{ident.partitions - 1} would stay unread"
                          if ident.partitions > wanted else "partitions went missing")
                return PartitionsChangedError(
                    f"input topic {topic!r} has {ident.partitions} partitions, the flow started "
                    f"with {wanted}: {unread}, so the flow stops rather than skip them. Restart "
                    f"it to read all {ident.partitions} (new partitions are read from their "
                    "first offset); if they were added by mistake, re-create the topic with "
                    f"{wanted} and {_RESET}", topic)
        return None

    def _confirm_ends(self, ends: Mapping[tuple[str, int], int],
                      consumed: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Ends below a consumed offset, checked against the end a fetch reports.

        Some brokers answer ListOffsets with the start of the partition's last
        record batch (Tansu 0.6 does), not its end; a fetch response carries the
        true high watermark.
        """
        confirmed = dict(ends)
        for tp, end in ends.items():
            if end < consumed.get(tp, 0):
                fetched = self._fetched_end(*tp, max(0, end - 1))
                if fetched is not None:
                    confirmed[tp] = fetched
        return confirmed

    def _fetched_end(self, topic: str, partition: int, start: int) -> int | None:
        """High watermark from a fetch at ``start``; None when the fetch gave nothing.

        A fresh consumer each time, closed after: librdkafka 2.16 can crash when a
        consumer whose metadata cache holds a topic sees it re-created.
        """
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        options: dict[str, str | int | float | bool] = {
            "group.id": "fraudstream-health", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "error", "log_level": 0,
            "fetch.wait.max.ms": 10,
        }
        reader = Consumer(self.settings.client_config(**options))
        try:
            where = TopicPartition(topic, partition, start)
            reader.assign([where])
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                for msg in reader.consume(1, 0.1):
                    error = msg.error()
                    if error is not None and error.code() != KafkaError._PARTITION_EOF:
                        return None  # offset out of range and the like: ListOffsets stands
                    high = int(reader.get_watermark_offsets(where, cached=True)[1])
                    return high if high >= 0 else None
            return None
        finally:
            reader.close()

    def _check_offsets(self, ends: Mapping[tuple[str, int], int],
                       consumed: Mapping[tuple[str, int], int]) -> InputTopicError | None:
        bad = sorted(tp for tp, off in consumed.items() if tp in ends and ends[tp] < off)
        for topic in self.topics:
            self._gauge(topic, "offsets", not any(t == topic for t, _ in bad))
        if not bad:
            return None
        topic, partition = bad[0]
        return OffsetBeyondEndError(
            f"input topic {topic!r} partition {partition} ends at offset {ends[bad[0]]}, but the "
            f"flow already read up to {consumed[bad[0]]} ({len(bad)} partition(s) like this): "
            "the topic was re-created or truncated, so new records would be skipped or "
            f"scored against the wrong state. {_RESET[0].upper()}{_RESET[1:]}; or restore the "
            "topic", topic)

    def _unreachable(self, now: float, exc: BaseException) -> InputTopicError | None:
        exc = exc if str(exc) else TimeoutError(f"no answer within {self.timeout_s:g} s")
        if self._down_since is None:
            self._down_since = now
            log.warning("broker %s not answering the input check: %s",
                        self.settings.bootstrap_servers, exc)
        down = now - self._last_ok
        for topic in self.topics:
            self._gauge(topic, "broker", False)
        self._status = (False, f"broker {self.settings.bootstrap_servers} unreachable for "
                               f"{down:.0f} s (limit {self.unreachable_s:g} s): {exc}")
        if down <= self.unreachable_s:
            return None
        return BrokerUnreachableError(
            f"broker {self.settings.bootstrap_servers} has not answered for {down:.0f} s (last "
            f"error: {exc}); check the broker, the network and {BOOTSTRAP_ENV}; the flow resumes "
            "from its last snapshot when restarted", self.topics[0] if self.topics else "")

    def _reachable(self, now: float) -> None:
        if self._down_since is not None:
            log.warning("broker %s answers again after %.0f s", self.settings.bootstrap_servers,
                        now - self._down_since)
        self._down_since = None
        self._last_ok = now
        for topic in self.topics:
            self._gauge(topic, "broker", True)


# ---------------------------------------------------------------------------------------
# /metrics and /ready on one port


def all_ready(*checks: Readiness) -> Readiness:
    """One readiness answer from several: ready when all are; the first reason otherwise."""

    def ready() -> tuple[bool, str]:
        for check in checks:
            ok, reason = check()
            if not ok:
                return False, reason
        return True, "ok"

    return ready


class _QuietHandler(WSGIRequestHandler):
    """No access log: probes come every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        """Drop the line."""


def wsgi_app(ready: Readiness, registry: CollectorRegistry = REGISTRY) -> Any:
    """WSGI app: ``/ready`` (200 or 503 with the reason), ``/metrics`` and ``/``; 404 else."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/ready":
            try:
                ok, reason = ready()
            except Exception as exc:  # a probe must always get an answer
                ok, reason = False, f"readiness check failed: {exc}"
            body = (("ready" if ok else f"not ready: {reason}") + "\n").encode()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
            return [body]
        if path in ("/metrics", "/"):
            result: Iterable[bytes] = metrics(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /ready\n"]

    return app


class _ThreadingWSGIServerV6(ThreadingWSGIServer):
    """The same server on an IPv6 socket (``addr`` such as ``::`` or ``::1``)."""

    address_family = socket.AF_INET6


def start_http_server(port: int, ready: Readiness, addr: str = "127.0.0.1",
                      registry: CollectorRegistry = REGISTRY) -> WSGIServer:
    """Serve :func:`wsgi_app` on ``addr:port`` from a daemon thread; ``OSError`` if busy.

    A drop-in for ``prometheus_client.start_http_server`` that adds ``/ready``;
    ``server.shutdown()`` stops it. ``addr`` defaults to the loopback (the flow passes
    ``FRAUD_METRICS_BIND``): ``/metrics`` shows rule ids and hit counts, so it listens on
    every interface only where asked to (pods, behind the NetworkPolicy).
    """
    server_class = _ThreadingWSGIServerV6 if ":" in addr else ThreadingWSGIServer
    server = make_server(addr, port, wsgi_app(ready, registry), server_class,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True)
    thread.start()
    return server


def close_server(server: WSGIServer) -> None:
    """Stop a server from :func:`start_http_server` (tests)."""
    with contextlib.suppress(OSError):
        server.shutdown()
        server.server_close()
