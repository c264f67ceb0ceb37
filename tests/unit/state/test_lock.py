"""state.lock: one owner per directory, checked with real second processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from state.errors import StateError
from state.lock import (
    DirectoryLockedError,
    LockHolder,
    holder,
    lock_directory,
    lock_recovery_dir,
    lock_state_dir,
)

ROOT = Path(__file__).resolve().parents[3]

# What flows.score does at start-up: lock, or print the one-line error and exit 2.
SECOND = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from state.lock import lock_recovery_dir, lock_state_dir
    from topics.errors import FraudStreamError
    kind, path, hold = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    try:
        held = (lock_state_dir(path, int(sys.argv[4]) if len(sys.argv) > 4 else None)
                if kind == "state" else lock_recovery_dir(path))
    except FraudStreamError as exc:
        print(f"flows.score: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2)
    print("locked", flush=True)
    time.sleep(hold)
""")


def process(kind: str, path: Path, hold: float = 0.0, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SECOND, kind, str(path), str(hold), *extra],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def holding(kind: str, path: Path, *extra: str) -> subprocess.Popen[str]:
    """A process that took the lock and keeps it for a minute."""
    proc = process(kind, path, 60, *extra)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n", proc.stderr
    return proc


def test_a_second_process_is_refused_with_the_holder_and_a_remedy(tmp_path: Path) -> None:
    first = holding("state", tmp_path / "state")
    try:
        second = process("state", tmp_path / "state")
        _, err = second.communicate(timeout=30)
        assert second.returncode == 2
        (line,) = err.splitlines()
        assert line.startswith(f"flows.score: cannot start: state directory (FRAUD_STATE_DIR) "
                               f"{tmp_path / 'state'} is in use by process {first.pid} on host "
                               f"{socket.gethostname()} (since ")
        assert "stop that process first" in line and "its own FRAUD_STATE_DIR" in line
        assert first.poll() is None  # the first one keeps running, untouched
        recorded = holder(tmp_path / "state")
        assert recorded is not None and recorded.pid == first.pid
    finally:
        first.kill()
        first.wait()


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    first = holding("state", tmp_path / "state")
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = process("state", tmp_path / "state")
    out, err = second.communicate(timeout=30)
    assert second.returncode == 0 and out == "locked\n", err
    recorded = holder(tmp_path / "state")
    assert recorded is not None and recorded.pid == second.pid  # the file names the new holder


def test_cluster_processes_lock_per_process_id(tmp_path: Path) -> None:
    state = tmp_path / "state"
    zero = holding("state", state, "0")
    try:
        one = process("state", state, 0, "1")  # another process id of one cluster: allowed
        assert one.communicate(timeout=30)[0] == "locked\n" and one.returncode == 0
        again = process("state", state, 0, "0")  # the same id twice: refused
        _, err = again.communicate(timeout=30)
        assert again.returncode == 2 and "as cluster process 0" in err
    finally:
        zero.kill()
        zero.wait()
    assert sorted(p.name for p in state.iterdir()) == [".lock-0", ".lock-1"]


def test_a_shared_recovery_directory_is_refused(tmp_path: Path) -> None:
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
    first = holding("recovery", recovery)
    try:
        second = process("recovery", recovery)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 2
        assert f"recovery directory (-r, FLOW_RECOVERY_DIR) {recovery} is in use by process " \
               f"{first.pid}" in err and "never share one between flows" in err
    finally:
        first.kill()
        first.wait()
    # Bytewax still finds its partitions: the lock file is not a *.sqlite3 partition.
    assert sorted(p.suffix for p in recovery.iterdir()) == ["", ".sqlite3"]


def test_a_missing_recovery_directory_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(StateError, match=r"does not exist; create it and its partitions once "
                                         r"with `mkdir -p \S+ && python -m bytewax.recovery"):
        lock_recovery_dir(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    (tmp_path / "empty").mkdir()  # a cluster's process 1..n: no partitions, nothing to guard
    assert lock_recovery_dir(tmp_path / "empty") is None
    assert not list((tmp_path / "empty").iterdir())


def test_in_process_the_lock_is_reentrant_and_released(tmp_path: Path) -> None:
    first = lock_state_dir(tmp_path)
    assert lock_state_dir(tmp_path) is first and first.held
    first.release()
    first.release()  # idempotent
    assert not first.held
    with lock_directory(tmp_path, purpose="x", remedy="y") as again:
        assert again is not first and again.held
        data = json.loads((tmp_path / ".lock").read_text())
        assert set(data) == {"pid", "host", "started", "command"}
        assert data["pid"] == os.getpid()
    assert not again.held


def test_the_holder_record_survives_a_refused_attempt(tmp_path: Path) -> None:
    first = holding("state", tmp_path)
    try:
        for _ in range(2):  # a refused process must not truncate the holder's record
            refused = process("state", tmp_path)
            refused.communicate(timeout=30)
            assert refused.returncode == 2
        with pytest.raises(DirectoryLockedError, match=f"in use by process {first.pid} "):
            lock_state_dir(tmp_path)  # and in this process: the typed error
        recorded = holder(tmp_path)
        assert recorded is not None and recorded.pid == first.pid
    finally:
        first.kill()
        first.wait()


def test_holder_text_is_parsed_leniently() -> None:
    assert LockHolder.parse("") is None and LockHolder.parse("[1]") is None
    found = LockHolder.parse('{"pid": 7, "host": "h"}')
    assert found is not None and found.describe() == "process 7 on host h (since ?)"
    long = LockHolder(1, "h", "t", "x" * 500).describe()
    assert len(long) < 220 and long.endswith("…)")


def test_a_lock_is_taken_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    for i in range(50):
        lock_directory(tmp_path / str(i), purpose="x", remedy="y").release()
    assert (time.perf_counter() - start) / 50 < 0.05  # one fsync each; start-up only
