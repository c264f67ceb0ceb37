"""podman, invoked the one way that works on a machine without a Docker engine.

Every call goes through :class:`Podman`, which adds the global flags this project
needs instead of editing ``/etc/containers``:

* ``--runtime``: ``runc`` when installed, else ``crun`` (Debian's podman default);
  :data:`RUNTIME_ENV` picks one. crun 1.8 (bookworm) refuses a host whose cgroups
  are in hybrid mode (v1 controllers with a v2 mount: this VM, many CI runners):
  "cgroups in hybrid mode not supported"; runc runs there.
* ``--cgroup-manager cgroupfs``: no systemd in containers, CI runners or this VM.
* ``--events-backend file``: no journald either.
* ``--storage-driver``: only when :data:`STORAGE_ENV` names one (``vfs`` where
  overlay mounts are refused); otherwise podman's own choice (overlay here).

The variables are ``FRAUDSTREAM_*``, not ``FRAUD_*``: the flow refuses ``FRAUD_*``
variables it does not know, and a shell that sets these also starts flows.

Containers and builds get ``--ulimit nofile=N:N --ulimit nproc=M:M`` (:func:`ulimits`),
capped by this process's hard limits: podman's defaults (about a million open
files) are above the hard limit of a sandboxed host, and the runtime then fails
with "setrlimit: operation not permitted".

:func:`Podman.stream` runs a long command (a build) with its whole output in a
log file and a few chosen lines on stderr, prefixed with the elapsed time; a
failure raises :class:`PodmanError` with the last lines of the log.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from topics.errors import FraudStreamError

#: ``runc`` or ``crun``; unset: runc if installed, else crun.
RUNTIME_ENV = "FRAUDSTREAM_PODMAN_RUNTIME"
#: a containers/storage driver (``overlay``, ``vfs``); unset: podman's default.
STORAGE_ENV = "FRAUDSTREAM_PODMAN_STORAGE_DRIVER"
RUNTIMES = ("runc", "crun")
INSTALL_HINT = "apt-get install podman mmdebstrap uidmap runc (Debian/Ubuntu)"
#: Wanted limits inside containers: Kafka clients and RocksDB open many files.
WANTED_NOFILE = 65_536
WANTED_NPROC = 32_768
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ImageError(FraudStreamError):
    """Building, running or checking the container image failed; the message says how to fix it."""


class ToolMissingError(ImageError):
    """podman, mmdebstrap or an OCI runtime is not installed."""


class PodmanError(ImageError):
    """A podman command failed; the message holds its exit code and the end of its output."""


def require_tool(name: str, why: str) -> str:
    """Absolute path of executable ``name``; :class:`ToolMissingError` with the apt command."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissingError(f"`{name}` is not installed ({why}); install it: {INSTALL_HINT}")
    return path


def pick_runtime(env: dict[str, str] | None = None) -> str:
    """The OCI runtime name: :data:`RUNTIME_ENV`, else runc if installed, else crun.

    Raises :class:`ToolMissingError` when the chosen (or any) runtime is absent, and
    :class:`ImageError` for a runtime name this module does not know.
    """
    env = dict(os.environ) if env is None else env
    wanted = env.get(RUNTIME_ENV, "").strip()
    if wanted:
        if wanted not in RUNTIMES:
            raise ImageError(f"{RUNTIME_ENV}={wanted!r}: expected one of {', '.join(RUNTIMES)}")
        require_tool(wanted, f"{RUNTIME_ENV} asks for it")
        return wanted
    for name in RUNTIMES:
        if shutil.which(name):
            return name
    raise ToolMissingError(
        f"no OCI runtime (runc or crun) is installed; install one: apt-get install runc "
        f"(or {INSTALL_HINT}, which brings crun)"
    )


def ulimits() -> list[str]:
    """``--ulimit`` flags for nofile and nproc: the wanted values, capped by our hard limits.

    Returns e.g. ``["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]``.
    """
    flags: list[str] = []
    for name, limit, wanted in (
        ("nofile", resource.RLIMIT_NOFILE, WANTED_NOFILE),
        ("nproc", resource.RLIMIT_NPROC, WANTED_NPROC),
    ):
        hard = resource.getrlimit(limit)[1]
        value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        flags += ["--ulimit", f"{name}={value}:{value}"]
    return flags


@dataclass(frozen=True)
class Podman:
    """The ``podman`` executable with this project's global flags.

    Build one with :meth:`detect` (checks podman and a runtime are installed).
    """

    executable: str
    runtime: str
    storage_driver: str | None = None

    @classmethod
    def detect(cls, env: dict[str, str] | None = None) -> Podman:
        """The podman and runtime on PATH; :class:`ToolMissingError` with the apt command if not."""
        env = dict(os.environ) if env is None else env
        executable = require_tool("podman", "it builds and runs the image")
        storage = env.get(STORAGE_ENV, "").strip() or None
        return cls(executable, pick_runtime(env), storage)

    def command(self, *args: str) -> list[str]:
        """The full argv of ``podman ARGS`` with the global flags."""
        flags = [self.executable, "--runtime", self.runtime, "--cgroup-manager", "cgroupfs",
                 "--events-backend", "file"]  # fmt: skip
        if self.storage_driver:
            flags += ["--storage-driver", self.storage_driver]
        return [*flags, *args]

    def run(self, *args: str, timeout: float = 120.0, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``podman ARGS`` to completion, output captured (text).

        ``env`` is added to our environment for podman: values passed into a container
        with ``--env NAME`` (name only) never appear on a command line.
        Raises :class:`PodmanError` (exit code and stderr) when it fails and ``check``,
        or when it outlives ``timeout`` seconds.
        """
        argv = self.command(*args)
        full_env = {**os.environ, **env} if env else None
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  env=full_env, check=False)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise PodmanError(f"`podman {' '.join(args)}` took longer than {timeout:g} s") from exc
        if check and done.returncode != 0:
            raise PodmanError(
                f"`podman {' '.join(args)}` exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
        return done

    def output(self, *args: str, timeout: float = 120.0) -> str:
        """Stripped stdout of ``podman ARGS``; :class:`PodmanError` if it fails."""
        return self.run(*args, timeout=timeout).stdout.strip()

    def image_exists(self, ref: str) -> bool:
        """Whether local storage holds image ``ref``."""
        return self.run("image", "exists", ref, check=False).returncode == 0

    def stream(self, args: Sequence[str], log_file: Path, *, what: str,
               show: Callable[[str], bool], remedy: str = "",
               argv: Sequence[str] | None = None) -> float:
        """Run ``podman ARGS`` (or ``argv``), output to ``log_file``; return its seconds.

        Lines for which ``show(line)`` is true are also printed on stderr, as
        ``[  12s] what: line``. A non-zero exit raises :class:`PodmanError` naming
        ``what``, the log file, its last 25 lines and ``remedy``.
        """
        command = list(argv) if argv is not None else self.command(*args)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        tail: deque[str] = deque(maxlen=25)
        start = time.monotonic()
        with log_file.open("w", encoding="utf-8") as log:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, errors="replace", bufsize=1)  # fmt: skip
            assert process.stdout is not None
            try:
                for raw in process.stdout:
                    line = _ANSI.sub("", raw.rstrip("\n"))
                    log.write(line + "\n")
                    tail.append(line)
                    if show(line):
                        print(f"[{time.monotonic() - start:5.0f}s] {what}: {line[:160]}",
                              file=sys.stderr, flush=True)  # fmt: skip
                code = process.wait()
            except BaseException:
                process.kill()
                process.wait()
                raise
        seconds = time.monotonic() - start
        if code != 0:
            hint = f"; {remedy}" if remedy else ""
            raise PodmanError(
                f"{what} failed (exit {code}) after {seconds:.0f} s; full output in {log_file}"
                f"{hint}. Last lines:\n" + "\n".join(tail)
            )
        return seconds
