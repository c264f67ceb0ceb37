"""One owner per directory: an exclusive, non-blocking ``flock`` on ``<dir>/.lock``.

A flow process locks its state directory (and Bytewax's recovery directory)
at start-up and keeps the lock until it exits; the kernel releases it when the
process ends in any way, ``kill -9`` included, so there is never a stale lock
to delete. A second process gets :class:`DirectoryLockedError` naming the
holder (PID, host, start time and command, written into the lock file) and
what to do, and the flow exits 2 at start-up instead of corrupting the first
one's state. ``flock`` works on local file systems and NFSv4; a file system
without locks is refused (:class:`LockUnsupportedError`).

Processes of one Bytewax cluster that share a state directory (the shared
volume layout of ``k8s/README.md``) lock ``.lock-<process id>`` instead: two
processes with the same id are refused; each partition's RocksDB ``LOCK`` still
guards the partitions themselves.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     with lock_directory(Path(d), purpose="state directory", remedy="stop it") as held:
...         held.path.name, holder(Path(d)).pid == os.getpid()
('.lock', True)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from state.errors import StateError

LOCK_NAME = ".lock"

_held: dict[Path, DirectoryLock] = {}
_held_lock = threading.Lock()


class DirectoryLockedError(StateError):
    """Another process owns the directory; the message names it and what to do."""


class LockUnsupportedError(StateError):
    """The directory's file system does not support ``flock`` (an NFSv3 mount without locks)."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as it wrote itself into the lock file."""

    pid: int | None
    host: str
    started: str
    """ISO 8601 UTC time the lock was taken."""
    command: str

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        """The holder recorded in a lock file's text, or None when empty or unreadable."""
        try:
            data = json.loads(text)
            pid = data.get("pid")
            return cls(int(pid) if pid is not None else None, str(data.get("host", "?")),
                       str(data.get("started", "?")), str(data.get("command", "")))
        except (ValueError, TypeError, AttributeError):
            return None

    @classmethod
    def this_process(cls) -> LockHolder:
        """The calling process: PID, host name, now, command line."""
        argv = list(sys.argv)
        if argv and argv[0].endswith(("bytewax/run.py", "bytewax\\run.py")):
            argv[0] = "python -m bytewax.run"  # what the operator typed, not runpy's path
        return cls(os.getpid(), socket.gethostname(),
                   datetime.now(UTC).isoformat(timespec="seconds"), " ".join(argv))

    def describe(self) -> str:
        """``process 4242 on host fraud-score-0 (since ...: python -m bytewax.run ...)``."""
        command = self.command if len(self.command) <= 160 else self.command[:159] + "…"
        return (f"process {self.pid if self.pid is not None else '?'} on host {self.host} "
                f"(since {self.started}{': ' + command if command else ''})")

    def to_json(self) -> str:
        """One JSON line, the lock file's content."""
        return json.dumps({"pid": self.pid, "host": self.host, "started": self.started,
                           "command": self.command}) + "\n"


class DirectoryLock:
    """A held lock: an open file descriptor with an exclusive ``flock`` on it.

    Keep the object for the life of the process (closing the descriptor
    releases the lock). :meth:`release` or leaving the ``with`` block unlocks.
    """

    def __init__(self, directory: Path, path: Path, fd: int) -> None:
        self.directory = directory
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """True until :meth:`release`."""
        return self._fd is not None

    def release(self) -> None:
        """Unlock and close; idempotent. The lock file stays (its content is the last holder)."""
        with _held_lock:
            fd, self._fd = self._fd, None
            if _held.get(self.path) is self:
                del _held[self.path]
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"DirectoryLock({str(self.path)!r}, held={self.held})"


def holder(directory: Path, name: str = LOCK_NAME) -> LockHolder | None:
    """The process recorded in ``directory``'s lock file (the holder, or the last one)."""
    try:
        return LockHolder.parse((directory / name).read_text())
    except OSError:
        return None


def lock_directory(directory: Path, *, purpose: str, remedy: str,
                   name: str = LOCK_NAME, create: bool = True) -> DirectoryLock:
    """Take the exclusive lock on ``directory`` or fail at once.

    ``purpose`` names the directory in messages ("state directory"), ``remedy``
    says what to do when another process holds it; ``create`` makes a missing
    directory. Asking again in the process that holds it returns the same lock.

    Raises :class:`DirectoryLockedError` when another process holds it (naming the
    holder), :class:`LockUnsupportedError` on a file system without ``flock``,
    :class:`StateError` for a missing directory with ``create`` false, and
    ``OSError`` when the lock file cannot be opened.
    """
    directory = Path(directory)
    if create:
        directory.mkdir(parents=True, exist_ok=True)
    elif not directory.is_dir():
        raise StateError(f"{purpose} {directory} does not exist")
    path = directory.resolve() / name
    with _held_lock:
        existing = _held.get(path)
        if existing is not None and existing.held:
            return existing
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                found = holder(directory, name)
                who = found.describe() if found is not None else "another process"
                raise DirectoryLockedError(
                    f"{purpose} {directory} is in use by {who}; {remedy}"
                ) from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise LockUnsupportedError(
                    f"cannot lock {purpose} {directory}: its file system does not support "
                    f"file locks ({exc.strerror}); use a local volume or NFSv4, never a mount "
                    "without locking (two processes could then write one store)"
                ) from exc
            raise
        # Only the holder writes: truncating before the lock would erase the holder's record.
        info = LockHolder.this_process().to_json().encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        with contextlib.suppress(OSError):
            os.fsync(fd)
        held = DirectoryLock(directory, path, fd)
        _held[path] = held
        return held


def state_lock_name(process_id: int | None) -> str:
    """Lock file name in a state directory: ``.lock``, or ``.lock-<id>`` in a cluster."""
    return LOCK_NAME if process_id is None else f"{LOCK_NAME}-{process_id}"


def lock_state_dir(state_dir: Path, process_id: int | None = None) -> DirectoryLock:
    """Lock ``FRAUD_STATE_DIR`` for this flow process (see the module docstring).

    ``process_id``: Bytewax's ``-i`` in a multi-process cluster, None for a
    single process. Raises :class:`DirectoryLockedError` when another flow process
    uses it, :class:`LockUnsupportedError` on a file system without locks.
    """
    who = "" if process_id is None else f" as cluster process {process_id}"
    return lock_directory(
        state_dir, purpose=f"state directory (FRAUD_STATE_DIR){who}",
        remedy=("one flow process owns a state directory: stop that process first (a "
                "Kubernetes pod may still be terminating), or give this one its own "
                "FRAUD_STATE_DIR"),
        name=state_lock_name(process_id),
    )


def lock_recovery_dir(recovery_dir: Path) -> DirectoryLock | None:
    """Lock Bytewax's recovery directory (``-r``) if it holds partitions; None if it holds none.

    Without the lock, a second process on the directory reads and commits the
    same epochs as the first (duplicate outputs, no error) or dies in a SQLite
    panic. Processes 1..n of a cluster keep an empty recovery directory (process
    0 holds the partitions, ``docker/fraud-flow.sh``): Bytewax opens nothing
    there, so nothing is locked and the directory stays empty. Raises
    :class:`DirectoryLockedError` when another process (or another flow) uses
    it, :class:`~state.errors.StateError` when it does not exist.
    """
    recovery_dir = Path(recovery_dir)
    if not recovery_dir.is_dir():
        raise StateError(
            f"recovery directory {recovery_dir} does not exist; create it and its partitions "
            f"once with `mkdir -p {recovery_dir} && python -m bytewax.recovery {recovery_dir} N` "
            "(docker/fraud-flow.sh does it for process 0)"
        )
    if not any(recovery_dir.glob("*.sqlite3")):
        return None
    return lock_directory(
        recovery_dir, purpose="recovery directory (-r, FLOW_RECOVERY_DIR)",
        remedy=("one flow process owns a recovery directory: stop that process first, or give "
                "this one its own recovery directory (mkdir -p DIR && python -m bytewax.recovery "
                "DIR N creates one); never share one between flows"),
        create=False,
    )
