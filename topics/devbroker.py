"""Where a running development broker is: the record ``just broker`` leaves in ``.dev/``.

``python -m devkit.broker`` (``just broker``) writes :class:`DevBrokerState` to
``.dev/broker.json`` while it runs. Any command that may use that broker when
``KAFKA_BOOTSTRAP_SERVERS`` is unset (the history export, the model-governance
commands, the development tools) finds it with :func:`running_dev_broker`, which
trusts the record only while the broker process is alive and its port answers.
Reading the record needs no development tooling: no broker binary, no child process.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE_NAME = "broker.json"


def dev_dir() -> Path:
    """``.dev/`` in the repository checkout (or in the working directory when installed)."""
    root = Path(__file__).resolve().parent.parent
    base = root if (root / "pyproject.toml").is_file() else Path.cwd()
    return base / ".dev"


def state_file() -> Path:
    """Where ``python -m devkit.broker`` records its address and pid (``.dev/broker.json``)."""
    return dev_dir() / STATE_FILE_NAME


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a running process (zombies count as dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        # No /proc: fall back to signal 0.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # Field 3, after the parenthesised command name (which may contain spaces).
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


@dataclass(frozen=True)
class DevBrokerState:
    """What ``python -m devkit.broker`` records in ``.dev/broker.json``."""

    bootstrap: str
    pid: int
    broker_pid: int
    log_file: str

    def write(self, path: Path) -> None:
        """Write atomically, so a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> DevBrokerState | None:
        """The recorded state, or None when there is none or it is unreadable."""
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return cls(
                str(data["bootstrap"]), int(data["pid"]), int(data["broker_pid"]),
                str(data["log_file"]),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def is_live(self) -> bool:
        """The broker process is alive and its port answers."""
        host, _, port = self.bootstrap.rpartition(":")
        return pid_alive(self.broker_pid) and port.isdigit() and port_answers(host, int(port))


def running_dev_broker(path: Path | None = None) -> DevBrokerState | None:
    """The dev broker started by ``just broker``, if one is running."""
    state = DevBrokerState.read(path or state_file())
    return state if state is not None and state.is_live() else None
