"""What the development brokers share as child processes: readiness, stop, clean-up at exit.

:class:`~devkit.broker.EmbeddedBroker` (Tansu) and :class:`~devkit.apache_kafka.ApacheKafka`
each run a broker as a child of the calling process. Both wait until it answers metadata
(:func:`wait_serving`), stop it with a signal and then SIGKILL (:func:`stop_process`), and
are stopped at interpreter exit, also on SIGTERM (:func:`track`, :func:`untrack`).
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from topics.devbroker import port_answers
from topics.errors import BrokerError


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_live: set[_Stoppable] = set()
_live_lock = threading.Lock()


def _stop_all_live() -> None:
    with _live_lock:
        children = list(_live)
    for child in children:
        child.stop()


atexit.register(_stop_all_live)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def track(child: _Stoppable) -> None:
    """Stop ``child`` at interpreter exit, and make SIGTERM unwind like Ctrl-C.

    The handler is installed from the main thread only, when nobody else handles SIGTERM:
    ``finally`` blocks, context managers and atexit then run.
    """
    with _live_lock:
        _live.add(child)
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def untrack(child: _Stoppable) -> None:
    """``child`` is stopped: nothing left to do at exit."""
    with _live_lock:
        _live.discard(child)


def stop_process(process: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    """Send ``sig`` to a running ``process``, wait up to ``timeout`` s, then SIGKILL it."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


def wait_serving(
    process: subprocess.Popen[bytes], host: str, port: int, timeout: float, *,
    name: str, where: Callable[[], str], need_broker: bool = False, pause: float = 0.05,
) -> None:
    """Block until the broker child on ``host:port`` answers a metadata request.

    ``need_broker``: also wait until the metadata lists a broker (KRaft registers it a
    moment after the port opens). ``where()`` says where its logs are, for the errors.

    Raises:
        BrokerError: the child exited, or ``timeout`` s passed, naming the last failure.

    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    bootstrap = f"{host}:{port}"
    deadline = time.monotonic() + timeout
    admin = None
    last: object = "port closed"
    while True:
        if process.poll() is not None:
            raise BrokerError(f"{name} exited with code {process.returncode} during start-up; "
                              f"see {where()}")
        if time.monotonic() > deadline:
            raise BrokerError(f"{name} on {bootstrap} was not ready within {timeout:g} s "
                              f"({last}); see {where()}")
        if admin is None:
            if not port_answers(host, port, timeout=0.2):
                time.sleep(pause)
                continue
            admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        try:
            if admin.list_topics(timeout=1.0).brokers or not need_broker:
                return
            last = "no broker registered yet"
        except KafkaException as exc:
            last = exc
        time.sleep(pause)
