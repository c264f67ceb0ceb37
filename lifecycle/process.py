"""The flow process's life: stop requests, SIGTERM/SIGINT, and failures a person can read.

**Stop.** :func:`request_stop` (a signal, or code that wants a clean end) and
:func:`request_fatal` (a background check found a fault) set one process-wide
request. Every source partition calls :func:`check_stop` at the top of
``next_batch``: after a clean request it raises ``StopIteration``, so Bytewax
drains the dataflow (the current batch finishes, sinks flush and are
acknowledged, stateful steps snapshot at end of input) and ``bytewax.run``
returns: exit 0. After a fatal request it raises the carried error, so Bytewax
stops with it and :func:`excepthook` prints one line: exit 1.

**Signals.** :func:`install_signal_handlers` handles SIGTERM and SIGINT itself,
which also makes it work as PID 1 in a container (the kernel gives PID 1 no
default action for SIGTERM: without a handler it is ignored until SIGKILL).
First signal: a clean stop, one line on stderr, and a watchdog that exits with
:data:`EXIT_GRACE_EXCEEDED` if the drain takes longer than the grace (default
25 s, inside Kubernetes' 30 s ``terminationGracePeriodSeconds``). Second signal:
exit at once with ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM).
Either forced exit skips the final snapshot: the next start resumes from the
last committed one, as after ``kill -9``.

**Several processes.** In a Bytewax cluster (``-i/-a``) a process whose sources
ended still runs its share of the keyed steps, fed by the other processes, so it
ends only when every process's input has ended. Stop them all together (scale to
0, ``docker compose stop``): each drains and exits 0. A signal to one process
alone ends, after the grace, with :data:`EXIT_GRACE_EXCEEDED`; the others then
lose their peer and stop with a one-line "cluster peer lost" error; all resume
from the last snapshot when restarted.

**Failures.** :func:`install_excepthook` replaces ``sys.excepthook``: a failure
recognised anywhere in the exception's cause/context chain (our typed errors,
RocksDB, Bytewax's SQLite recovery store, the broker, the cluster connection)
prints ONE line ``flows.score: stopped: <cause>; <remedy> (traceback: <file>)``,
and the full traceback goes to the debug log file. An unrecognised error keeps
Python's full traceback on stderr (and in the debug log).

**First snapshot.** Bytewax counts the snapshot interval (``-s``) from the start
of an execution, so a process killed before ``-s`` seconds never commits one and
its restart reads the input again from the last commit: in a crash loop (a poison
input, an OOM at a full batch) no restart makes progress (issue 23: with ``-s 10``
and a kill 4 s after each start, 8 kills re-emitted 37 s of verdicts). With
:func:`first_snapshot`, a process runs its dataflow in two executions: the first
with a snapshot (epoch) every :data:`FIRST_EPOCH_SECONDS`, so its first commit
comes within about a second of its first batch and each second of the catch-up
after a restart is committed as it goes; ``-s`` seconds after its first output,
its input ends as for a clean stop (the batch finishes, outputs are acknowledged,
every step snapshots, Bytewax commits; but the card and merchant stages keep what
they hold back for event-time order in that snapshot, :func:`restarting`, instead of
releasing it as at a real end of input) and the same dataflow runs
on at once from that commit with the configured ``-s`` (:func:`run_with_first_snapshot`).
A kill then replays at most about a second of output while the process is young,
and at most ``-s`` plus the epoch's drain afterwards.
Why not ``-s 1`` throughout: Bytewax closes an epoch for every snapshot (sinks
wait for every acknowledgement, stateful steps checkpoint their stores, the input
waits for the epoch to drain); ``-s 1`` instead of ``-s 10`` cost 34% of the
scoring flow's backlog throughput (8,850 against 13,428 tx/s, 205 against 152 us
CPU per transaction; 40,000 transactions, 2 runs each, this 2-core machine). Here
that cost is paid for the first ``-s`` seconds of a process only. Why not one early
end right after the first batch: a restart's first batches are the replay of the
last process's uncommitted output; a single commit 0.25 s in left part of it
uncommitted for ``-s`` seconds, so repeated early kills re-emitted the same
verdicts again and again (25.3 s back after 7 kills with ``-s 10``).

Exit codes: 0 clean stop; 1 failure while running; 2 refused at start-up
(``flows.score``); 124 stop took longer than the grace; 130/143 second signal.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType, ModuleType, TracebackType

from prometheus_client import Gauge

from topics.errors import FraudStreamError

#: Exit status of a failure while running (Python's status for an uncaught exception).
EXIT_FAILED = 1
#: Exit status when start-up is refused (configuration, locked or foreign state).
EXIT_REFUSED = 2
#: Exit status when a requested stop took longer than the grace (as GNU ``timeout``).
EXIT_GRACE_EXCEEDED = 124
#: Default grace: below Kubernetes' default 30 s terminationGracePeriodSeconds.
DEFAULT_GRACE_SECONDS = 25.0
#: Debug log file name, created next to the state directory.
DEBUG_LOG_NAME = "fraud-flow-debug.log"
#: The debug log is moved to ``<name>.1`` when it grows past this size.
DEBUG_LOG_MAX_BYTES = 10 * 1024 * 1024
#: Snapshot (epoch) interval of a process's first execution, seconds (issue 23: a restarted
#: flow commits "within a second of processing its first batch"); Bytewax's CLI takes whole
#: seconds, so 1 is its shortest.
FIRST_EPOCH_SECONDS = 1
#: Longest first execution, seconds past the first output (at most ``-s``). Its 1-s
#: snapshots cost throughput on a backlog (the scoring bench, ``-s 10``: 6,943 tx/s when every
#: start ran ``-s`` seconds of them); a few seconds are enough for a restart in a crash loop to
#: commit its progress, the switch itself committing once more. Only a restart after an
#: unclean end runs it (:func:`previous_run_unclean`).
FIRST_PHASE_MAX_SECONDS = 3.0
#: How often (s) the first-snapshot watch reads the progress counter.
_FIRST_SNAPSHOT_POLL_S = 0.02

log = logging.getLogger("lifecycle.process")

SNAPSHOT_INTERVAL = Gauge(
    "fraud_snapshot_interval_seconds",
    "Bytewax snapshot (and epoch) interval this process runs with (-s); absent without "
    "recovery. The snapshot-age alert compares against 3x this.",
)


# ---------------------------------------------------------------------------------------
# Stop requests


@dataclass(frozen=True)
class StopRequest:
    """Why the process is stopping; ``error`` is set for a fatal stop."""

    reason: str
    error: BaseException | None
    requested_at: float
    """``time.monotonic()`` of the first request (the grace counts from it)."""
    restart: bool = False
    """An early end for the first snapshot: the process runs the dataflow again after it."""

    @property
    def fatal(self) -> bool:
        """True when the flow must end with ``error`` rather than drain and exit 0."""
        return self.error is not None


_lock = threading.RLock()  # re-entrant: the signal handler may interrupt a holder
_request: StopRequest | None = None
_signals = 0
_grace: float | None = None
_prog = "flows.score"
_watchdog: threading.Timer | None = None


def stop_requested() -> bool:
    """True once a clean or fatal stop was requested (cheap: one global read)."""
    return _request is not None


def current_request() -> StopRequest | None:
    """The stop request, if any."""
    return _request


def request_stop(reason: str) -> bool:
    """Ask for a clean stop (sources end, the flow drains, exit 0); True if this call did.

    Thread-safe and idempotent: the first request wins (it replaces a first-snapshot
    end, so the process then exits instead of running on); a later fatal request
    replaces a clean one.
    """
    global _request
    with _lock:
        if _request is not None and not _request.restart:
            return False
        _request = StopRequest(reason, None, time.monotonic())
        _arm_watchdog()
    return True


def request_fatal(error: BaseException) -> bool:
    """Ask for a stop that ends the flow with ``error`` (exit 1 and its one-line message).

    Pass the ``on_fault`` of a background check here. Replaces an earlier clean
    request (keeping its start time for the grace); True if this call changed
    the request.
    """
    global _request
    with _lock:
        if _request is not None and _request.fatal:
            return False
        started = _request.requested_at if _request is not None else time.monotonic()
        _request = StopRequest(f"{type(error).__name__}: {error}", error, started)
        _arm_watchdog()
    return True


def request_restart(reason: str) -> bool:
    """End the inputs like a clean stop, to commit a snapshot and run on (no grace watchdog).

    Only when nothing else was requested; True if this call did. Used by
    :func:`run_with_first_snapshot`, which runs the dataflow again afterwards.
    """
    global _request
    with _lock:
        if _request is not None:
            return False
        _request = StopRequest(reason, None, time.monotonic(), restart=True)
    return True


def restarting() -> bool:
    """True while the inputs end for the first snapshot (:func:`request_restart`), not a stop.

    Stateful steps keep what they hold back (a reorder buffer, held records) at such an
    end of input: it is in the snapshot, and the next execution goes on with it. Released
    at once it would be handled ahead of its event-time order.
    """
    request = _request
    return request is not None and request.restart


def _clear_restart() -> bool:
    """Forget a first-snapshot request (True), unless a stop replaced it (False)."""
    global _request
    with _lock:
        if _request is None or not _request.restart:
            return False
        _request = None
    return True


def check_stop() -> None:
    """Call first in every source partition's ``next_batch``.

    Raises ``StopIteration`` after a clean request (the partition ends its
    input), or the carried error after a fatal one (Bytewax stops with it).
    """
    request = _request
    if request is None:
        return
    if request.error is not None:
        raise request.error
    raise StopIteration


def ready() -> tuple[bool, str]:
    """Readiness as far as the lifecycle knows: not ready once stopping."""
    request = _request
    if request is None or request.restart:
        return True, "running"
    return False, f"stopping ({request.reason})"


def reset() -> None:
    """Forget the stop request and signal count, cancel the watchdog (for tests only)."""
    global _request, _signals, _watchdog
    with _lock:
        if _watchdog is not None:
            _watchdog.cancel()
        _request, _signals, _watchdog = None, 0, None


def _say(line: str) -> None:
    """Write one line to stderr without locks (safe in a signal handler or a dying thread)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    with contextlib.suppress(OSError):
        os.write(2, (line.rstrip("\n") + "\n").encode(errors="replace"))


def _arm_watchdog() -> None:
    """Start the grace timer once (caller holds ``_lock``); no-op without a grace."""
    global _watchdog
    if _grace is None or _watchdog is not None:
        return
    _watchdog = threading.Timer(_grace, _grace_exceeded, args=(_grace,))
    _watchdog.daemon = True
    _watchdog.name = "stop-watchdog"
    _watchdog.start()


def _grace_exceeded(grace: float) -> None:
    request = _request
    _say(
        f"{_prog}: stopping took longer than {grace:g} s ({request.reason if request else '?'}); "
        f"exiting now (exit {EXIT_GRACE_EXCEEDED}) without a final snapshot: the next start "
        "resumes from the last committed one. In a multi-process cluster, stop every "
        "process together"
    )
    os._exit(EXIT_GRACE_EXCEEDED)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _signals
    _signals += 1
    name = signal.Signals(signum).name
    if _signals > 1:
        _say(f"{_prog}: second {name}: exiting now (exit {128 + signum}) without a final "
             "snapshot; the next start resumes from the last committed one")
        os._exit(128 + signum)
    grace = f"{_grace:g} s" if _grace is not None else "no grace limit"
    _say(f"{_prog}: {name} received: stopping cleanly (current batch, outputs flushed, final "
         f"snapshot); a second signal or {grace} exits at once")
    request_stop(f"{name} received")


def install_signal_handlers(grace_seconds: float | None = DEFAULT_GRACE_SECONDS,
                            prog: str = "flows.score") -> None:
    """Handle SIGTERM and SIGINT: first a clean stop within ``grace_seconds``, then exit.

    Must run in the main thread (Python delivers signals there; Bytewax's run
    loop calls Python's signal check, so the handler runs while the dataflow
    does). ``grace_seconds=None``: no watchdog (wait for the drain however long).
    Raises ``ValueError`` outside the main thread or for a negative grace.
    """
    global _grace, _prog
    if grace_seconds is not None and grace_seconds < 0:
        raise ValueError(f"grace_seconds must be >= 0, not {grace_seconds}")
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("install_signal_handlers must be called from the main thread")
    _grace, _prog = grace_seconds, prog
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)


# ---------------------------------------------------------------------------------------
# Failures a person can read


@dataclass(frozen=True)
class Diagnosis:
    """A recognised failure: what happened and what to do (``remedy`` may be empty)."""

    cause: str
    remedy: str

    def line(self, prog: str, debug_log: Path | None) -> str:
        """The one line for stderr."""
        text = f"{prog}: stopped: {self.cause}"
        if self.remedy:
            text += f"; {self.remedy}"
        if debug_log is not None:
            text += f" (traceback: {debug_log})"
        return text


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or during, outermost first, once each."""
    seen: set[int] = set()
    out: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        out.append(current)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return out


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_STATE = "FRAUD_STATE_DIR"
_RESTART = "the flow resumes from its last snapshot when restarted"
_REBUILD = ("delete the state directory (FRAUD_STATE_DIR) and the recovery directory together "
            "to rebuild from the topic (slow: the retained input is read again)")
_LOCK_PATH = re.compile(r"(/\S+?)/LOCK\b")
_ROCKS_FILE = re.compile(r"(/\S+?/[0-9]+\.(?:log|sst)|/\S+?/MANIFEST-[0-9]+)")


def _text_rules(text: str) -> Diagnosis | None:
    """Rules over the messages of the chain (Bytewax turns Rust panics into text)."""
    low = text.lower()
    if "no space left on device" in low or "database or disk is full" in low or (
        "diskfull" in low
    ):
        return Diagnosis(
            "disk full (No space left on device)",
            f"free space or grow the volume holding {_STATE} and the recovery directory, then "
            f"restart: {_RESTART}",
        )
    if "corruption:" in low:
        found = _ROCKS_FILE.search(text)
        where = f" ({found.group(1)})" if found else ""
        return Diagnosis(
            f"the RocksDB state store is corrupt{where}",
            f"restore the state directory from a backup, or {_REBUILD}",
        )
    if "while lock file:" in low or "lock hold by current process" in low:
        found = _LOCK_PATH.search(text)
        where = f" {found.group(1)}" if found else ""
        return Diagnosis(
            f"the RocksDB store{where} is open in another process (or twice in this one)",
            f"one flow process owns a state directory: stop the other one, or give each its "
            f"own {_STATE}",
        )
    if "database is locked" in low or "databasebusy" in low:
        return Diagnosis(
            "Bytewax's recovery store (SQLite) is locked by another process",
            "one flow process owns a recovery directory: stop the other one, or give each its "
            "own (-r / FLOW_RECOVERY_DIR)",
        )
    if ("database disk image is malformed" in low or "databasecorrupt" in low
            or "file is not a database" in low or "notadatabase" in low):
        return Diagnosis(
            "Bytewax's recovery store (SQLite) is corrupt",
            f"restore the recovery directory from a backup, or {_REBUILD}",
        )
    if "unable to open database file" in low or "cannotopen" in low:
        return Diagnosis(
            "Bytewax's recovery store (SQLite) cannot be opened",
            "check that the recovery directory exists, is writable by this user and is on a "
            "local or lock-capable file system",
        )
    if "recovery directory" in low and "does not exist" in low:
        return Diagnosis(
            _one_line(text.split("): ", 1)[-1].split(";")[0]),
            "create it and its partitions once with `mkdir -p DIR && python -m bytewax.recovery "
            "DIR N` (docker/fraud-flow.sh does this for process 0)",
        )
    if ("timely communication error" in low or "send thread panic" in low
            or "recv thread panic" in low or "error connecting to worker" in low):
        return Diagnosis(
            "lost the connection to another process of the Bytewax cluster",
            "a cluster runs only while every process runs: restart them all (they resume from "
            "the last snapshot); the first failure is in the other processes' logs",
        )
    return None


def diagnose(exc: BaseException) -> Diagnosis | None:
    """Recognise a known failure anywhere in ``exc``'s chain; None when unknown.

    Order: our typed errors (their message already says what to do), Bytewax's
    recovery-partition errors, disk full as an ``OSError``, then text rules for
    RocksDB, SQLite, the cluster connection, and broker (``KafkaException``) errors.

    >>> try:
    ...     try:
    ...         raise OSError(28, "No space left on device")
    ...     except OSError as exc:
    ...         raise RuntimeError("error calling `snapshot` in step score") from exc
    ... except RuntimeError as exc:
    ...     print(diagnose(exc).cause)
    disk full (No space left on device)
    """
    chain = exception_chain(exc)
    for e in chain:
        if isinstance(e, FraudStreamError):
            return Diagnosis(_one_line(str(e), 600), "")
    for e in chain:
        name = type(e).__name__
        if name in {"NoPartitionsError", "MissingPartitionsError", "InconsistentPartitionsError"}:
            return Diagnosis(
                f"Bytewax recovery partitions: {_one_line(str(e))}",
                "create them once with `mkdir -p DIR && python -m bytewax.recovery DIR N` on the "
                "process that "
                "holds them (process 0 in docker/fraud-flow.sh); never mix directories of "
                "different runs",
            )
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return _text_rules("No space left on device")
    for e in chain:
        found = _text_rules(str(e))
        if found is not None:
            return found
    for e in chain:
        if type(e).__name__ == "KafkaException":
            detail = e.args[0] if e.args else e
            return Diagnosis(
                f"broker error: {_one_line(str(detail))}",
                f"check KAFKA_BOOTSTRAP_SERVERS, the broker and its credentials (FRAUD_KAFKA_*); "
                f"{_RESTART}",
            )
    if isinstance(exc, MemoryError):
        return Diagnosis("out of memory", "raise the memory limit, or lower FRAUD_BATCH_MAX")
    return None


def default_debug_log(state_dir: Path) -> Path:
    """Where the debug log goes by default: next to the state directory."""
    return state_dir.resolve().parent / DEBUG_LOG_NAME


def write_debug_log(
    path: Path, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> Path | None:
    """Append the full traceback to ``path`` (rotated at 10 MB); the path, or None if unwritable."""
    header = (f"=== {datetime.now(UTC).isoformat(timespec='seconds')} pid {os.getpid()} "
              f"host {socket.gethostname()}: {' '.join(sys.argv)}\n")
    body = "".join(traceback.format_exception(exc_type, exc, tb))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if path.stat().st_size > DEBUG_LOG_MAX_BYTES:
                path.replace(path.with_name(path.name + ".1"))
        with path.open("a", encoding="utf-8", errors="replace") as f:
            f.write(header + body + "\n")
    except OSError:
        return None
    return path


def _make_excepthook(
    debug_log: Path, prog: str
) -> Callable[[type[BaseException], BaseException, TracebackType | None], None]:
    previous = sys.__excepthook__

    def hook(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, KeyboardInterrupt):  # only before the handlers were installed
            _say(f"{prog}: interrupted")
            return
        try:
            written = write_debug_log(debug_log, exc_type, exc, tb)
            diagnosis = diagnose(exc)
        except Exception:  # never lose the original error to a bug in here
            previous(exc_type, exc, tb)
            return
        if diagnosis is None:
            previous(exc_type, exc, tb)
            if written is not None:
                _say(f"{prog}: stopped by an unexpected error (traceback above, also in "
                     f"{written})")
            return
        _say(diagnosis.line(prog, written))
        if written is None:  # nowhere to keep it: better on stderr than lost
            _say(f"{prog}: debug log {debug_log} is not writable; traceback follows")
            previous(exc_type, exc, tb)

    return hook


def install_excepthook(debug_log: Path, prog: str = "flows.score",
                       rust_backtrace: bool = False) -> None:
    """Replace ``sys.excepthook``: known failures print one line, tracebacks go to ``debug_log``.

    Unless ``rust_backtrace``, also sets ``RUST_BACKTRACE=0``: Bytewax's Rust panic
    hook (single-process runs) would otherwise print a ~40-frame backtrace of its
    internals before the Python error; with it off, two lines remain
    (``thread '<unnamed>' panicked at src/...`` and a note). Multi-process runs
    print none. Call before the dataflow runs (Rust reads the variable at its
    first panic).
    """
    if not rust_backtrace:
        os.environ["RUST_BACKTRACE"] = "0"
    sys.excepthook = _make_excepthook(debug_log, prog)


def install(*, debug_log: Path, grace_seconds: float | None = DEFAULT_GRACE_SECONDS,
            prog: str = "flows.score", rust_backtrace: bool = False) -> None:
    """Both: signal handlers with a grace, and the excepthook (the one set-up call)."""
    install_excepthook(debug_log, prog, rust_backtrace)
    install_signal_handlers(grace_seconds, prog)


# ---------------------------------------------------------------------------------------
# How the process was started


@dataclass(frozen=True)
class RunOptions:
    """The ``python -m bytewax.run`` options this process runs with (or their env defaults)."""

    recovery_dir: Path | None
    snapshot_seconds: float | None
    process_id: int | None
    """None: a single process (no ``-i``)."""
    processes: int
    backup_seconds: float | None = None
    """``-b/--backup-interval``: how long Bytewax keeps snapshots no longer needed."""

    def publish(self) -> None:
        """Export the snapshot interval as ``fraud_snapshot_interval_seconds`` (if recovering)."""
        if self.recovery_dir is not None and self.snapshot_seconds is not None:
            SNAPSHOT_INTERVAL.set(self.snapshot_seconds)


def run_options(argv: Sequence[str] | None = None,
                env: Mapping[str, str] | None = None) -> RunOptions:
    """Parse Bytewax's CLI (``sys.argv`` of ``python -m bytewax.run``) for what we need.

    Reads ``-r/--recovery-directory``, ``-s/--snapshot-interval`` (seconds),
    ``-b/--backup-interval`` (seconds), ``-i/--process-id`` and ``-a/--addresses``
    with Bytewax's environment defaults
    (``BYTEWAX_RECOVERY_DIRECTORY``, ...); unknown arguments are ignored.

    >>> o = run_options(["run.py", "flows.score", "-r", "/data/r", "-s", "10", "-b", "0",
    ...                  "-i", "1", "-a", "a:1;b:1"], env={})
    >>> o.recovery_dir, o.snapshot_seconds, o.process_id, o.processes, o.backup_seconds
    (PosixPath('/data/r'), 10.0, 1, 2, 0.0)
    """
    argv = list(sys.argv if argv is None else argv)[1:]
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-r", "--recovery-directory",
                        default=env.get("BYTEWAX_RECOVERY_DIRECTORY"))
    parser.add_argument("-s", "--snapshot-interval",
                        default=env.get("BYTEWAX_SNAPSHOT_INTERVAL"))
    parser.add_argument("-b", "--backup-interval",
                        default=env.get("BYTEWAX_RECOVERY_BACKUP_INTERVAL"))
    parser.add_argument("-i", "--process-id", default=env.get("BYTEWAX_PROCESS_ID"))
    parser.add_argument("-a", "--addresses", default=env.get("BYTEWAX_ADDRESSES"))
    known, _ = parser.parse_known_args(argv)
    addresses = [a for a in (known.addresses or "").split(";") if a.strip()]
    return RunOptions(
        recovery_dir=Path(known.recovery_directory) if known.recovery_directory else None,
        snapshot_seconds=float(known.snapshot_interval) if known.snapshot_interval else None,
        process_id=int(known.process_id) if known.process_id not in (None, "") else None,
        processes=max(1, len(addresses)),
        backup_seconds=float(known.backup_interval) if known.backup_interval else None,
    )


# ---------------------------------------------------------------------------------------
# The first snapshot soon after the first output


class _FirstOutput(threading.Thread):
    """Requests the end of the first execution ``after_s`` after ``progress`` first grows."""

    def __init__(self, progress: Callable[[], float], after_s: float) -> None:
        super().__init__(daemon=True, name="first-snapshot")
        self._progress, self._after_s = progress, after_s
        self._cancel = threading.Event()
        self.first_output: float | None = None
        """``time.monotonic()`` when the first processed record was seen."""

    def run(self) -> None:
        start = self._progress()
        while self._progress() <= start:
            if self._cancel.wait(_FIRST_SNAPSHOT_POLL_S) or _request is not None:
                return
        self.first_output = time.monotonic()
        if not self._cancel.wait(self._after_s):
            request_restart("end of the first execution")

    def cancel(self) -> None:
        """Stop watching (the execution ended)."""
        self._cancel.set()
        self.join()


def run_with_first_snapshot(cli_main: Callable[..., object], kwargs: Mapping[str, object],
                            progress: Callable[[], float], after_s: float,
                            first_epoch: timedelta = timedelta(seconds=FIRST_EPOCH_SECONDS),
                            ) -> None:
    """Run the dataflow with short epochs first, then on with the configured interval.

    ``cli_main(**kwargs)`` is Bytewax's entry point (``bytewax._bytewax.cli_main``)
    with the ``python -m bytewax.run`` arguments. The first execution runs with
    ``epoch_interval=first_epoch`` (a snapshot each ``first_epoch``); a watch thread
    reads ``progress`` (a count of records processed that only grows) every 20 ms and,
    ``after_s`` seconds after it first grows, asks for the end of that execution
    (:func:`request_restart`): every source partition's next ``check_stop`` ends its
    input, Bytewax drains, snapshots and commits, and ``cli_main`` returns. Unless a
    stop replaced that request meanwhile (then this returns: the process exits 0),
    the dataflow runs again at once from the commit, with ``kwargs`` as given. A
    failure raises as usual. Delivery is unchanged: every commit, early or not,
    follows the sinks' acknowledgements of what it covers.
    """
    watch = _FirstOutput(progress, after_s)
    watch.start()
    try:
        cli_main(**{**kwargs, "epoch_interval": first_epoch})
    finally:
        watch.cancel()
    if not _clear_restart():
        return
    log.info("first execution (a snapshot every %s s) ended %.1f s after the first output; "
             "running on with the configured snapshot interval", first_epoch.total_seconds(),
             time.monotonic() - (watch.first_output or time.monotonic()))
    gc.collect()  # the first execution's steps close their stores before the second opens them
    cli_main(**kwargs)


def _bytewax_main(main: ModuleType | None
                  ) -> tuple[ModuleType | None, Callable[..., object] | None]:
    """``(__main__, its cli_main)`` when ``python -m bytewax.run`` runs us, else ``(None, None)``.

    ``main`` (tests) stands for ``sys.modules["__main__"]``.
    """
    main = sys.modules.get("__main__") if main is None else main
    spec = getattr(main, "__spec__", None)
    real = getattr(main, "cli_main", None)
    if main is None or spec is None or spec.name != "bytewax.run" or not callable(real):
        return None, None
    return main, real


def first_snapshot(run: RunOptions, progress: Callable[[], float],
                   main: ModuleType | None = None) -> bool:
    """Make ``python -m bytewax.run`` commit snapshots every second while the process is young.

    Call while ``bytewax.run`` imports the dataflow (``flows.score`` builds ``flow``
    then): Bytewax's ``__main__`` calls ``cli_main(**kwargs)`` by its global name
    right after the import (bytewax 0.21.1 ``pysrc/bytewax/run.py``, its last
    release), so replacing that name with :func:`run_with_first_snapshot` (the
    first execution lasting ``-s`` seconds past the first output, at most
    :data:`FIRST_PHASE_MAX_SECONDS`) runs the flow
    through it, with every command line unchanged. True when armed; False (the
    first snapshot then comes after ``-s``, as before) without recovery, when ``-s``
    is :data:`FIRST_EPOCH_SECONDS` or less, for a cluster (``-i/-a``: every process
    would have to end and rejoin together; not done), or when the process was not
    started by ``python -m bytewax.run``.
    """
    seconds = run.snapshot_seconds
    if (run.recovery_dir is None or seconds is None or seconds <= FIRST_EPOCH_SECONDS
            or run.process_id is not None or run.processes > 1):
        return False
    main, real = _bytewax_main(main)
    if main is None or real is None:
        log.info("not started by python -m bytewax.run: the first snapshot comes after -s")
        return False

    def cli_main(**kwargs: object) -> None:
        run_with_first_snapshot(real, kwargs, progress, min(seconds, FIRST_PHASE_MAX_SECONDS))

    main.cli_main = cli_main  # type: ignore[attr-defined]
    return True


#: In a recovery directory while a process runs on it; removed when the run returns normally.
RUNNING_MARKER = ".fraud-running"
#: Called, in order, after Bytewax's ``cli_main`` returns normally (:func:`on_clean_return`).
_AFTER_CLEAN_RETURN: list[Callable[[], None]] = []


def on_clean_return(action: Callable[[], None]) -> None:
    """Run ``action`` once the dataflow has returned normally (its final snapshot committed).

    Needs :func:`clear_on_clean_return` armed; not after a failure or a kill.
    """
    _AFTER_CLEAN_RETURN.append(action)


def previous_run_unclean(run: RunOptions) -> bool:
    """Whether the last process on this recovery directory ended without returning normally.

    True when :data:`RUNNING_MARKER` is still there (kill -9, OOM kill, a crash, a
    grace exceeded); then (re)writes it. False without recovery or on a first start.
    Only a restart after such an end needs the short first execution
    (:func:`first_snapshot`): after a clean stop, or on a fresh directory, the flow runs
    at once with the configured ``-s`` and pays nothing (on a backlog the 1-s snapshots
    cost up to a third of the throughput).
    """
    if run.recovery_dir is None:
        return False
    marker = Path(run.recovery_dir) / RUNNING_MARKER
    unclean = marker.exists()
    marker.write_text(f"{os.getpid()}\n")
    return unclean


def clear_on_clean_return(run: RunOptions, main: ModuleType | None = None) -> bool:
    """Remove :data:`RUNNING_MARKER` when Bytewax's ``cli_main`` returns normally.

    Wraps the outermost ``cli_main`` of ``python -m bytewax.run`` (call after
    :func:`first_snapshot`); an exception or a kill leaves the marker. True when armed.
    """
    main, real = _bytewax_main(main)
    if run.recovery_dir is None or main is None or real is None:
        return False
    marker = Path(run.recovery_dir) / RUNNING_MARKER

    def cli_main(**kwargs: object) -> None:
        real(**kwargs)
        marker.unlink(missing_ok=True)
        for action in _AFTER_CLEAN_RETURN:
            action()

    main.cli_main = cli_main  # type: ignore[attr-defined]
    return True


@contextlib.contextmanager
def signals_restored() -> Iterator[None]:
    """Restore the SIGTERM/SIGINT handlers and excepthook on exit (for tests)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    hook = sys.excepthook
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        sys.excepthook = hook
        reset()
