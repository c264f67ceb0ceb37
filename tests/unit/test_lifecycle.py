"""lifecycle.process: stop requests, signals (also as PID 1), and one-line failures.

The process tests run a small real Bytewax dataflow (two source partitions that
call ``check_stop``, a keyed ``stateful_map``, a sink appending to a file) with
recovery, under ``python -m bytewax.run`` exactly like the scoring flow, and
send it real signals.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from lifecycle import process as lifecycle
from lifecycle.process import (
    EXIT_GRACE_EXCEEDED,
    check_stop,
    diagnose,
    request_fatal,
    request_stop,
    run_options,
    stop_requested,
)
from topics.errors import BrokerError, ConfigError

ROOT = Path(__file__).resolve().parents[2]

TOY_FLOW = textwrap.dedent('''
    import os, threading, time
    from datetime import datetime, timedelta, timezone
    from pathlib import Path
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from lifecycle import process as lifecycle
    from topics.errors import BrokerError

    OUT = Path(os.environ["TOY_OUT"])

    PROCESSED = [0]

    class Part(StatefulSourcePartition):
        def __init__(self, name, resume):
            self.name, self.i = name, resume or 0
        def next_batch(self):
            lifecycle.check_stop()
            PROCESSED[0] += 1
            self.i += 1
            return [(self.name, self.i - 1)]
        def next_awake(self):
            return datetime.now(timezone.utc) + timedelta(milliseconds=5)
        def snapshot(self):
            return self.i

    class Src(FixedPartitionedSource):
        def list_parts(self):
            return ["p0", "p1"]
        def build_part(self, step_id, name, resume):
            return Part(name, resume)

    class SinkPart(StatelessSinkPartition):
        def __init__(self):
            self.f = open(OUT, "a")
        def write_batch(self, items):
            self.f.writelines(f"{k} {i} {n}\\n" for k, (i, n) in items)
            self.f.flush()
        def close(self):
            if os.environ.get("TOY_SLOW_CLOSE"):
                time.sleep(60)
            self.f.close()

    class Sink(DynamicSink):
        def build(self, step_id, worker_index, worker_count):
            return SinkPart()

    def count(state, item):
        state = (state or 0) + 1
        return state, (item[1], state)

    if not os.environ.get("TOY_NO_LIFECYCLE"):
        lifecycle.install(debug_log=OUT.with_name("debug.log"),
                          grace_seconds=float(os.environ.get("TOY_GRACE", "25")), prog="toy")
    if os.environ.get("TOY_FIRST_SNAPSHOT"):
        assert lifecycle.first_snapshot(lifecycle.run_options(), lambda: PROCESSED[0])
    if os.environ.get("TOY_FATAL_AFTER"):
        def fatal():
            time.sleep(float(os.environ["TOY_FATAL_AFTER"]))
            lifecycle.request_fatal(BrokerError("input topic 'toy' was deleted; re-create it"))
        threading.Thread(target=fatal, daemon=True).start()

    flow = Dataflow("toy")
    keyed = op.key_on("key", op.input("in", flow, Src()), lambda x: x[0])
    op.output("out", op.stateful_map("count", keyed, count), Sink())
''')


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    with lifecycle.signals_restored():
        yield
    while _started:  # a failed test must not leave a flow running
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


class Toy:
    """One toy flow set-up: module, recovery partition, output file."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        (tmp / "toyflow.py").write_text(TOY_FLOW)
        self.recovery = tmp / "recovery"
        self.recovery.mkdir()
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(self.recovery), "1"],
                       check=True)
        self.out = tmp / "out.txt"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"}
        env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{self.dir}", TOY_OUT=str(self.out),
                   PYTHONUNBUFFERED="1", **extra)
        return env

    def command(self, *extra: str, recovery: Path | None = None, snapshot: int = 1
                ) -> list[str]:
        return [sys.executable, "-m", "bytewax.run", "toyflow:flow",
                "-r", str(recovery or self.recovery), "-s", str(snapshot), "-b", "0", *extra]

    def start(self, *extra: str, prefix: tuple[str, ...] = (), snapshot: int = 1, **env: str
              ) -> subprocess.Popen[str]:
        proc = subprocess.Popen([*prefix, *self.command(*extra, snapshot=snapshot)],
                                env=self.env(**env),
                                cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        _started.append(proc)
        return proc

    def wait_for_output(self, lines: int = 20, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.out.exists() and len(self.out.read_text().splitlines()) >= lines:
                return
            time.sleep(0.05)
        raise AssertionError(f"the toy flow wrote fewer than {lines} lines in {timeout} s")

    def records(self) -> list[tuple[str, int, int]]:
        if not self.out.exists():
            return []
        rows = [line.split() for line in self.out.read_text().splitlines()]
        return [(k, int(i), int(n)) for k, i, n in rows]


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, float]:
    """Exit code, stderr and seconds it took to exit."""
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err, time.monotonic() - start


def our_lines(stderr: str) -> list[str]:
    """Stderr minus Rust's panic notice, which single-process Bytewax prints before ours."""
    rust = ("thread '", "Box<dyn Any>", "note: run with `RUST_BACKTRACE")
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(rust)]


# ---- stop requests, in process --------------------------------------------------------


def test_a_clean_request_ends_sources_and_says_not_ready() -> None:
    check_stop()  # nothing requested: returns
    assert lifecycle.ready() == (True, "running")
    assert request_stop("SIGTERM received") and stop_requested()
    assert not request_stop("again")  # the first request wins
    with pytest.raises(StopIteration):
        check_stop()
    ok, reason = lifecycle.ready()
    assert not ok and "SIGTERM" in reason


def test_a_fatal_request_replaces_a_clean_one_and_sources_raise_it() -> None:
    request_stop("SIGTERM received")
    started = lifecycle.current_request()
    error = BrokerError("input topic 'transactions' no longer exists")
    assert request_fatal(error)
    assert not request_fatal(BrokerError("a second fault"))  # the first fault wins
    request = lifecycle.current_request()
    assert request is not None and started is not None
    assert request.fatal and request.requested_at == started.requested_at  # the grace runs on
    with pytest.raises(BrokerError, match="no longer exists"):
        check_stop()
    assert not request_stop("later")  # a clean request never hides a fault
    assert lifecycle.current_request() is request


def test_signal_handlers_only_from_the_main_thread() -> None:
    import threading

    errors: list[BaseException] = []

    def body() -> None:
        try:
            lifecycle.install_signal_handlers(1.0)
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert errors and "main thread" in str(errors[0])
    with pytest.raises(ValueError, match=">= 0"):
        lifecycle.install_signal_handlers(-1)


def test_a_signal_in_process_sets_the_request_without_an_exception() -> None:
    lifecycle.install_signal_handlers(None, prog="test")
    os.kill(os.getpid(), signal.SIGINT)  # delivered at the next bytecode: no KeyboardInterrupt
    time.sleep(0.01)
    request = lifecycle.current_request()
    assert request is not None and request.reason == "SIGINT received" and not request.fatal


# ---- the first snapshot soon after the first output -------------------------------------


def test_a_stop_replaces_a_first_snapshot_end_and_readiness_stays() -> None:
    assert not lifecycle.restarting()
    assert lifecycle.request_restart("first snapshot")
    assert not lifecycle.request_restart("again")
    assert lifecycle.restarting()  # stateful steps keep what they hold back
    assert lifecycle.ready() == (True, "running")  # an early end is no stop
    with pytest.raises(StopIteration):
        check_stop()  # the inputs end as for a clean stop
    assert request_stop("SIGTERM received")  # a stop wins: the process then exits
    request = lifecycle.current_request()
    assert request is not None and not request.restart and not lifecycle.ready()[0]
    assert not lifecycle.restarting()  # a stop (its end of input keeps state too: stop_requested)
    assert not lifecycle.request_restart("later")


def _fake_cli_main(calls: list[dict[str, object]], progress: list[int],
                   stop_in_run: int | None) -> Callable[..., None]:
    """Bytewax's run as far as the lifecycle sees it: sources poll ``check_stop``."""

    def cli_main(**kwargs: object) -> None:
        calls.append(kwargs)
        while True:
            try:
                check_stop()
            except StopIteration:
                return
            progress[0] += 1
            if len(calls) == stop_in_run and progress[0] > 5:
                request_stop("SIGTERM received")
            time.sleep(0.005)

    return cli_main


def test_the_first_execution_snapshots_each_second_then_the_flow_runs_on_with_s() -> None:
    from datetime import timedelta

    calls: list[dict[str, object]] = []
    progress = [0]
    started = time.monotonic()
    ten = timedelta(seconds=10)
    lifecycle.run_with_first_snapshot(_fake_cli_main(calls, progress, stop_in_run=2),
                                      {"flow": "f", "epoch_interval": ten},
                                      lambda: progress[0], 0.1)
    # the same dataflow twice: first with a snapshot every second, then with -s
    assert calls == [{"flow": "f", "epoch_interval": timedelta(seconds=1)},
                     {"flow": "f", "epoch_interval": ten}]
    assert time.monotonic() - started < 2  # the first ended 0.1 s after the first output
    request = lifecycle.current_request()
    assert request is not None and request.reason == "SIGTERM received"


def test_a_stop_during_the_first_execution_ends_the_process() -> None:
    calls: list[dict[str, object]] = []
    progress = [0]
    lifecycle.run_with_first_snapshot(_fake_cli_main(calls, progress, stop_in_run=1), {},
                                      lambda: progress[0], 5.0)
    assert len(calls) == 1  # no second execution after a real stop


def test_the_first_snapshot_is_armed_only_under_bytewax_run_with_a_long_interval() -> None:
    import types

    def options(*args: str) -> lifecycle.RunOptions:
        return run_options(["run.py", "flows.score", *args], env={})

    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="bytewax.run")  # type: ignore[assignment]
    main.cli_main = real = lambda **kw: None  # type: ignore[attr-defined]
    recovering = ("-r", "/r", "-b", "0")
    assert not lifecycle.first_snapshot(options("-s", "10"), lambda: 0, main=main)  # no -r
    assert not lifecycle.first_snapshot(options(*recovering, "-s", "1"), lambda: 0, main=main)
    assert not lifecycle.first_snapshot(options(*recovering, "-s", "10", "-i", "0", "-a",
                                                "a:1;b:1"), lambda: 0, main=main)
    assert main.cli_main is real
    other = types.ModuleType("__main__")
    assert not lifecycle.first_snapshot(options(*recovering, "-s", "10"), lambda: 0, main=other)
    assert lifecycle.first_snapshot(options(*recovering, "-s", "10"), lambda: 0, main=main)
    assert main.cli_main is not real


def test_bytewax_run_still_calls_cli_main_by_name_after_importing_the_flow() -> None:
    import importlib.util

    spec = importlib.util.find_spec("bytewax.run")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text()
    main = source[source.index('if __name__ == "__main__":'):]
    # first_snapshot replaces the name between these two lines: an upgrade must keep them
    assert main.index("_locate_dataflow(") < main.index("cli_main(**kwargs)")


# ---- diagnosis of failures -----------------------------------------------------------


def wrapped(inner: BaseException, *, as_context: bool = False) -> BaseException:
    """``inner`` under a Bytewax-like error, as its cause (or only as its context)."""
    try:
        try:
            raise inner
        except BaseException as exc:
            if as_context:
                raise RuntimeError("error calling `StatefulBatchLogic.on_batch`") from None
            raise RuntimeError("error calling `StatefulBatchLogic.on_batch`") from exc
    except RuntimeError as outer:
        if as_context:
            outer.__context__ = inner
        return outer


def test_our_typed_error_anywhere_in_the_chain_is_the_message() -> None:
    error = ConfigError("FRAUD_BATCH_MAX='x': expected an integer from 1 to 100000")
    for outer in (wrapped(error), wrapped(error, as_context=True)):
        found = diagnose(outer)
        assert found is not None and found.cause == str(error) and found.remedy == ""


def test_a_rocksdb_store_open_twice_is_recognised(tmp_path: Path) -> None:
    from rocksdict import Rdict

    first = Rdict(str(tmp_path / "store"))
    try:
        with pytest.raises(Exception) as info:
            Rdict(str(tmp_path / "store"))
    finally:
        first.close()
    found = diagnose(wrapped(info.value))
    assert found is not None and "open in another process" in found.cause
    assert str(tmp_path / "store") in found.cause and "FRAUD_STATE_DIR" in found.remedy


def test_a_corrupt_rocksdb_store_is_recognised(tmp_path: Path) -> None:
    from rocksdict import Rdict

    store = Rdict(str(tmp_path / "store"))
    store[b"k"] = b"v"
    store.close()
    for manifest in tmp_path.glob("store/MANIFEST-*"):
        manifest.write_bytes(b"garbage" * 20)
    with pytest.raises(Exception) as info:
        Rdict(str(tmp_path / "store"))
    found = diagnose(wrapped(info.value))
    assert found is not None and "corrupt" in found.cause and "MANIFEST" in found.cause
    assert "recovery directory together" in found.remedy


def test_disk_full_from_rocksdb_text_or_errno() -> None:
    rocks = Exception("IO error: No space left on device: While appending to file: "
                      "/data/state/3/000004.log: No space left on device")  # rocksdict's words
    for error in (rocks, OSError(errno.ENOSPC, "No space left on device")):
        found = diagnose(wrapped(error))
        assert found is not None and found.cause.startswith("disk full")
        assert "grow the volume" in found.remedy


def test_a_locked_or_corrupt_sqlite_recovery_store_is_recognised(tmp_path: Path) -> None:
    db = tmp_path / "part-0.sqlite3"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.OperationalError) as info:
        sqlite3.connect(db, timeout=0).execute("SELECT * FROM sqlite_master")
    holder.close()
    found = diagnose(wrapped(info.value))
    assert found is not None and "locked by another process" in found.cause
    # Bytewax's Rust panic text for the same failure, and for a damaged file
    panic = RuntimeError("called `Result::unwrap()` on an `Err` value: SqliteFailure(Error { "
                         "code: DatabaseCorrupt, extended_code: 11 }, Some(\"database disk "
                         "image is malformed\"))")
    found = diagnose(panic)
    assert found is not None and "recovery store (SQLite) is corrupt" in found.cause


def test_bytewax_recovery_errors_are_recognised(tmp_path: Path) -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.recovery import RecoveryConfig
    from bytewax.testing import TestingSource, run_main

    flow = Dataflow("x")
    op.inspect("i", op.input("in", flow, TestingSource([1])))
    with pytest.raises(FileNotFoundError) as missing:
        run_main(flow, recovery_config=RecoveryConfig(tmp_path / "nope"))
    found = diagnose(missing.value)
    assert found is not None and "does not exist" in found.cause
    assert "python -m bytewax.recovery" in found.remedy


def test_broker_and_cluster_errors_are_recognised() -> None:
    found = diagnose(wrapped(KafkaException(KafkaError(KafkaError._TRANSPORT))))
    assert found is not None and found.cause.startswith("broker error")
    assert "KAFKA_BOOTSTRAP_SERVERS" in found.remedy
    found = diagnose(RuntimeError("Send thread panic: Any { .. }"))  # a peer process went away
    assert found is not None and "Bytewax cluster" in found.cause


def test_an_unknown_error_is_not_guessed() -> None:
    assert diagnose(wrapped(ZeroDivisionError("division by zero"))) is None


def test_the_hook_prints_one_line_and_logs_the_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "logs" / "debug.log"
    lifecycle.install_excepthook(log, prog="flows.score")
    assert os.environ["RUST_BACKTRACE"] == "0"
    error = wrapped(BrokerError("input topic 'transactions' no longer exists; run just topics"))
    sys.excepthook(type(error), error, error.__traceback__)
    err = capfd.readouterr().err
    assert err.splitlines() == [
        "flows.score: stopped: input topic 'transactions' no longer exists; run just topics "
        f"(traceback: {log})"
    ]
    text = log.read_text()
    assert "Traceback" in text and "BrokerError" in text and "StatefulBatchLogic" in text


def test_the_hook_keeps_the_traceback_of_an_unknown_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "debug.log"
    lifecycle.install_excepthook(log, prog="flows.score")
    error = wrapped(ZeroDivisionError("division by zero"))
    sys.excepthook(type(error), error, error.__traceback__)
    err = capfd.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and str(log) in err


def test_the_debug_log_is_rotated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "DEBUG_LOG_MAX_BYTES", 100)
    log = tmp_path / "debug.log"
    error = ValueError("x" * 200)
    for _ in range(2):
        assert lifecycle.write_debug_log(log, ValueError, error, None) == log
    # the second write found the file too big: moved aside, one entry in each
    assert [f.read_text().count("\n=== ") + f.read_text().startswith("=== ")
            for f in (log, tmp_path / "debug.log.1")] == [1, 1]
    assert lifecycle.write_debug_log(tmp_path / "f" / "x", ValueError, error, None) is not None
    (tmp_path / "file").write_text("")
    assert lifecycle.write_debug_log(tmp_path / "file" / "x", ValueError, error, None) is None


def test_run_options_from_the_environment() -> None:
    options = run_options(["run.py", "flows.score"], env={
        "BYTEWAX_RECOVERY_DIRECTORY": "/data/recovery", "BYTEWAX_SNAPSHOT_INTERVAL": "10"})
    assert options.recovery_dir == Path("/data/recovery") and options.snapshot_seconds == 10
    assert options.process_id is None and options.processes == 1
    options.publish()
    assert lifecycle.SNAPSHOT_INTERVAL._value.get() == 10


# ---- a real Bytewax process ------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_the_flow_and_a_restart_continues_exactly(
    tmp_path: Path, sig: signal.Signals
) -> None:
    toy = Toy(tmp_path)
    for _run in range(2):
        proc = toy.start()
        toy.wait_for_output(lines=len(toy.records()) + 20)
        proc.send_signal(sig)
        code, err, took = finish(proc)
        assert code == 0, err
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert f"toy: {sig.name} received: stopping cleanly" in err
        assert took < 5
    rows = toy.records()
    for part in ("p0", "p1"):
        seen = [(i, n) for k, i, n in rows if k == part]
        # every offset once, in order, and the keyed state resumed: count == offset + 1
        assert seen == [(i, i + 1) for i in range(len(seen))], part


def test_a_process_killed_soon_after_its_first_output_resumes_from_its_first_snapshot(
    tmp_path: Path,
) -> None:
    toy = Toy(tmp_path)
    proc = toy.start(snapshot=30, TOY_FIRST_SNAPSHOT="1")
    toy.wait_for_output(lines=20)
    time.sleep(2.5)  # well before -s 30: only the first execution's 1-s epochs committed
    proc.kill()
    proc.communicate()
    first = toy.records()
    again = toy.start(snapshot=30, TOY_FIRST_SNAPSHOT="1")
    toy.wait_for_output(lines=len(first) + 20)
    again.send_signal(signal.SIGINT)
    code, err, _ = finish(again)
    assert code == 0, err
    rows = toy.records()
    assert all(n == i + 1 for _, i, n in rows)  # the keyed state resumed with the offsets
    for part in ("p0", "p1"):
        killed = [i for k, i, _ in first if k == part]
        resumed = [i for k, i, _ in rows[len(first):] if k == part]
        # from a snapshot of the first execution (1-s epochs), not from offset 0 ...
        assert 0 < resumed[0] <= max(killed) + 1, (part, resumed[0], max(killed))
        # a second or so before the kill: under half of what the killed process read again
        assert max(killed) + 1 - resumed[0] < (max(killed) + 1) / 2, (part, resumed[0])
        # ... and the rest of the input once, in order
        assert resumed == list(range(resumed[0], resumed[0] + len(resumed))), part


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    toy = Toy(tmp_path)
    proc = toy.start(TOY_SLOW_CLOSE="1")  # the drain hangs in a sink's close()
    toy.wait_for_output()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    code, err, took = finish(proc)
    assert code == 128 + signal.SIGTERM and took < 2
    assert "second SIGTERM: exiting now" in err.splitlines()[-1]


def test_a_drain_longer_than_the_grace_is_ended(tmp_path: Path) -> None:
    toy = Toy(tmp_path)
    proc = toy.start(TOY_SLOW_CLOSE="1", TOY_GRACE="1")
    toy.wait_for_output()
    proc.send_signal(signal.SIGINT)
    code, err, took = finish(proc)
    assert code == EXIT_GRACE_EXCEEDED and 0.9 < took < 3, (code, took)
    assert "stopping took longer than 1 s" in err.splitlines()[-1]


def test_a_fatal_request_stops_the_flow_with_one_line(tmp_path: Path) -> None:
    toy = Toy(tmp_path)
    proc = toy.start(TOY_FATAL_AFTER="1")
    code, err, _ = finish(proc)
    assert code == 1
    assert "Traceback" not in err and "stack backtrace" not in err
    assert our_lines(err) == ["toy: stopped: input topic 'toy' was deleted; re-create it "
                              f"(traceback: {tmp_path / 'debug.log'})"]
    log = (tmp_path / "debug.log").read_text()
    assert "BrokerError" in log and "next_batch" in log


def _pid1_supported() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "true"],
                           capture_output=True)
    return probe.returncode == 0


def _wait_child(parent: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.02)
    raise AssertionError("no child process appeared")


@pytest.mark.skipif(not _pid1_supported(), reason="cannot create a PID namespace here")
def test_as_pid_1_sigterm_still_stops_cleanly_and_without_the_handler_is_ignored(
    tmp_path: Path,
) -> None:
    toy = Toy(tmp_path)
    ns = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")
    # control: no handler, and PID 1 gets no default action: SIGTERM is ignored
    proc = toy.start(prefix=ns, TOY_NO_LIFECYCLE="1")
    flow_pid = _wait_child(proc.pid)
    toy.wait_for_output()
    os.kill(flow_pid, signal.SIGTERM)
    time.sleep(1.5)
    assert proc.poll() is None, "the control flow died: it was not PID 1"
    proc.kill()
    os.kill(flow_pid, signal.SIGKILL)
    finish(proc)
    # with the lifecycle's handler
    proc = toy.start(prefix=ns)
    flow_pid = _wait_child(proc.pid)
    nspid = next(line for line in Path(f"/proc/{flow_pid}/status").read_text().splitlines()
                 if line.startswith("NSpid")).split()
    assert nspid[-1] == "1"  # PID 1 inside its namespace
    toy.wait_for_output(lines=len(toy.records()) + 20)
    os.kill(flow_pid, signal.SIGTERM)
    code, err, took = finish(proc)
    assert code == 0 and took < 5 and "Traceback" not in err, err


@pytest.mark.skipif(shutil.which("tini") is None or not _pid1_supported(),
                    reason="tini not installed (apt-get install tini) or no PID namespace")
def test_under_tini_as_pid_1_the_signal_reaches_the_flow(tmp_path: Path) -> None:
    toy = Toy(tmp_path)
    proc = toy.start(prefix=("unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                             "tini", "--"))
    tini = _wait_child(proc.pid)
    toy.wait_for_output()
    os.kill(tini, signal.SIGTERM)  # what `docker stop` and the kubelet do: signal PID 1
    code, err, took = finish(proc)
    assert code == 0 and took < 5 and "toy: SIGTERM received" in err, err


@pytest.mark.slow
def test_a_two_process_cluster_stops_cleanly_only_together(tmp_path: Path) -> None:
    from devkit.broker import free_port

    toy = Toy(tmp_path)
    spare = tmp_path / "recovery-1"
    spare.mkdir()
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"

    def cluster() -> list[subprocess.Popen[str]]:
        procs = [subprocess.Popen(
            toy.command("-i", str(i), "-a", addresses, recovery=toy.recovery if i == 0 else spare),
            env=toy.env(TOY_GRACE="2"), cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True) for i in range(2)]
        _started.extend(procs)
        return procs

    procs = cluster()
    toy.wait_for_output()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    results = [finish(proc) for proc in procs]
    assert [code for code, _, _ in results] == [0, 0], results

    # One process signalled alone cannot leave: its peer still sends it keyed data.
    procs = cluster()
    toy.wait_for_output(lines=len(toy.records()) + 20)
    procs[1].send_signal(signal.SIGTERM)
    code1, err1, took = finish(procs[1])
    code0, err0, _ = finish(procs[0])
    assert code1 == EXIT_GRACE_EXCEEDED and took >= 1.9, (code1, err1)
    assert code0 == 1 and "Traceback" not in err0
    assert our_lines(err0)[-1].startswith(
        "toy: stopped: lost the connection to another process of the Bytewax cluster"), err0


# ---- the stages at a first-snapshot end ------------------------------------------------


def test_at_a_first_snapshot_end_the_merchant_stage_keeps_its_reorder_buffer(
    tiny_model_dir: Path, tmp_path: Path,
) -> None:
    from flows.serving import ModelSource
    from stages import Stages, sourced
    from topics.contracts import Transaction

    def fed() -> Stages:
        stages = Stages(tmp_path / f"s{len(list(tmp_path.iterdir()))}",
                        ModelSource(tiny_model_dir, thresholds=lambda m: m.thresholds,
                                    interval=0))
        txns = [Transaction(transaction_id=f"t-{i}", card_id=f"c-{i}", merchant_id="m-1",
                            amount=20.0, currency="EUR", event_time=1_800_000_000_000 + i)
                for i in range(8)]
        stages.feed(sourced(txns, stages.parts), settle=False)  # not idle: held back
        return stages

    stages = fed()
    held = sum(m.snapshot().order.buffered for m in stages.merchants.values())
    assert held > 0 and not stages.verdicts()
    lifecycle.request_restart("end of the first execution")
    for logic in stages.merchants.values():
        out, _ = logic.on_eof()
        assert out == []  # nothing released ahead of its event-time order ...
    assert sum(m.snapshot().order.buffered for m in stages.merchants.values()) == held
    lifecycle.reset()  # ... while a real end of input releases it all
    stages = fed()
    released = [o for m in stages.merchants.values() for o in m.on_eof()[0]]
    assert released and sum(m.snapshot().order.buffered for m in stages.merchants.values()) == 0


def test_only_a_restart_after_an_unclean_end_runs_the_short_first_execution(
        tmp_path: Path) -> None:
    """The marker stays behind a crash (the next start is armed), not a normal return."""
    import types

    run = lifecycle.RunOptions(tmp_path, 10.0, None, 1)
    assert not lifecycle.previous_run_unclean(run)  # a fresh directory: full speed
    assert lifecycle.previous_run_unclean(run)  # that process never returned: armed
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="bytewax.run")  # type: ignore[assignment]
    calls: list[str] = []

    def failing(**kwargs: object) -> None:
        calls.append("run")
        raise RuntimeError("poison input")

    main.cli_main = failing  # type: ignore[attr-defined]
    assert lifecycle.clear_on_clean_return(run, main)
    with pytest.raises(RuntimeError):
        main.cli_main()  # type: ignore[attr-defined]
    assert (tmp_path / lifecycle.RUNNING_MARKER).exists()  # a crash: the next start is armed
    main.cli_main = lambda **kwargs: calls.append("run")  # type: ignore[attr-defined]
    assert lifecycle.clear_on_clean_return(run, main)
    main.cli_main()  # type: ignore[attr-defined]
    assert not (tmp_path / lifecycle.RUNNING_MARKER).exists()
    assert not lifecycle.previous_run_unclean(run)  # after a clean return: full speed
    assert calls == ["run", "run"]
    assert not lifecycle.previous_run_unclean(lifecycle.RunOptions(None, 10.0, None, 1))
