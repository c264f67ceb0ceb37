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
