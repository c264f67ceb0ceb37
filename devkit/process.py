"""Run ``python -m bytewax.run flows.score`` as a child process (demo, tests, benchmarks).

The child is started through :mod:`devkit.deathsig`, so it never outlives its parent, writes its
output to a log file, and runs with recovery when a recovery directory is given
(initialised here on first use, as the README recommends).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from devkit.deathsig import orphan_safe


def init_recovery(recovery_dir: Path, partitions: int = 1,
                  env: Mapping[str, str] | None = None) -> str:
    """Create Bytewax recovery partitions once (``python -m bytewax.recovery``).

    With ``env`` holding ``FRAUD_CHANGELOG=on`` the latest copies on the broker are
    restored first (``python -m changelog.recovery restore``), as ``docker/fraud-flow.sh``
    does; a failure raises ``RuntimeError`` with its output. Returns what the restore said.
    """
    if recovery_dir.exists() and any(recovery_dir.glob("*.sqlite3")):
        return ""
    recovery_dir.mkdir(parents=True, exist_ok=True)
    said = ""
    if env is not None and backup_seconds(env):
        done = subprocess.run(
            [sys.executable, "-m", "changelog.recovery", "restore", str(recovery_dir)],
            env={**os.environ, **env}, capture_output=True, text=True)
        said = done.stdout + done.stderr
        if done.returncode:
            raise RuntimeError(f"changelog.recovery restore failed: {said}")
        if any(recovery_dir.glob("*.sqlite3")):
            return said
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery_dir), str(partitions)],
        check=True, capture_output=True,
    )
    return said


def backup_seconds(env: Mapping[str, str]) -> int:
    """How often process 0 copies its recovery partitions with ``env`` (0: never)."""
    if env.get("FRAUD_CHANGELOG", os.environ.get("FRAUD_CHANGELOG", "off")) != "on":
        return 0
    from flows.settings import VARIABLES  # the flow's own default (a settings import)

    default = VARIABLES["FRAUD_RECOVERY_BACKUP_SECONDS"][0]
    return int(env.get("FRAUD_RECOVERY_BACKUP_SECONDS", default))


class FlowProcess:
    """One Bytewax process of the scoring flow."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        recovery_dir: Path | None = None,
        snapshot_seconds: int = 5,
        process_id: int | None = None,
        addresses: list[str] | None = None,
        module: str = "flows.score",
    ) -> None:
        args = [sys.executable, "-m", "bytewax.run", module]
        said = ""
        if recovery_dir is not None:
            if process_id:  # as docker/fraud-flow.sh: process 0 holds the partitions
                recovery_dir.mkdir(parents=True, exist_ok=True)
            else:
                said = init_recovery(recovery_dir, env=env)
            args += ["-r", str(recovery_dir), "-s", str(snapshot_seconds),
                     "-b", str(backup_seconds(env))]
        if addresses:
            args += ["-i", str(process_id or 0), "-a", ";".join(addresses)]
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(said.encode())
            log.flush()
            self.proc = subprocess.Popen(
                orphan_safe(args), env={**os.environ, **env}, stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's output."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def check(self) -> None:
        """Raise with the log tail if the process has exited."""
        if not self.alive:
            raise RuntimeError(f"the flow exited ({self.proc.returncode}):\n{self.log_tail()}")

    def kill(self) -> None:
        """``kill -9``: no cleanup, no flush, as a crash."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 10) -> None:
        """Interrupt; kill if it has not stopped within ``timeout`` seconds."""
        if self.alive:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
