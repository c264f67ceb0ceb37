"""Run a command that dies with a given parent: ``python -m devkit.deathsig PARENT_PID CMD...``.

Sets Linux's ``PR_SET_PDEATHSIG`` (SIGKILL) in a fresh, single-threaded process
and then execs the command, which keeps the setting. This replaces a
``preexec_fn``: running Python in a child forked from a process whose
librdkafka threads hold locks can deadlock. Elsewhere than Linux the command
just runs (the parents' atexit and signal handling still stop it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def orphan_safe(command: list[str]) -> list[str]:
    """``command`` wrapped so that it is killed when the calling process dies."""
    return [sys.executable, "-m", "devkit.deathsig", str(os.getpid()), *command]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_with_parent() -> None:
    """Make SIGTERM, and the death of our parent, stop this process as Ctrl-C does.

    For a foreground service such as ``just broker``: killing the pid of ``just`` (or
    closing its terminal) kills ``just`` but not its child, which would keep the broker
    running with nobody to stop it. The parent's death now sends us SIGTERM
    (``PR_SET_PDEATHSIG``), and SIGTERM raises :class:`KeyboardInterrupt` in the main
    thread, so the command's own clean-up (stop the broker, remove its state file) runs.
    Call from the main thread.
    """
    parent = os.getppid()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with `&`
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no death signal
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        raise KeyboardInterrupt


def main(argv: list[str]) -> None:
    """Arm the death signal, check the parent is still there, exec the command."""
    parent, command = int(argv[0]), argv[1:]
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no death signal
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        raise SystemExit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
