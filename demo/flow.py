"""The scoring flow as the demo runs it: one child process with recovery, on the demo's topics.

``python -m bytewax.run flows.score`` through :class:`devkit.process.FlowProcess`
(it dies with the demo), its state and recovery in a temporary directory, its
log in ``.dev/demo-flow.log``, its metrics on a free port that the live view
reads. Drift windows are one simulated day (the stream runs through weeks of
event time in minutes); the vector sample for ``just drift-report`` goes to
:data:`SAMPLE_DIR`, emptied first.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from demo.flowmetrics import StageWatch
from devkit.broker import free_port
from devkit.process import FlowProcess
from topics.devbroker import dev_dir
from topics.errors import FraudStreamError
from topics.settings import KafkaSettings

SAMPLE_DIR = Path(".dev/samples/demo")
LOG_NAME = "demo-flow.log"


class FlowStopped(FraudStreamError):
    """The flow exited while the demo ran; the message holds the end of its log."""


def log_path() -> Path:
    """Where the flow's output goes."""
    return dev_dir() / LOG_NAME


def start_flow(settings: KafkaSettings, work: Path, model: Path) -> tuple[FlowProcess, int]:
    """Start the flow on ``settings``' topics serving ``model``; return it and its metrics port."""
    shutil.rmtree(SAMPLE_DIR, ignore_errors=True)
    port = free_port()
    env = {"KAFKA_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
           "FRAUD_TOPIC_PREFIX": settings.topic_prefix,
           "FRAUD_STATE_DIR": str(work / "state"),
           "FRAUD_MODEL_PATH": str(model),
           "FRAUD_METRICS_PORT": str(port),
           "FRAUD_DRIFT_WINDOW_SECONDS": "86400", "FRAUD_DRIFT_FLUSH_SECONDS": "10",
           # The demo plays 90 days in minutes: a second of wall time is about ten hours of
           # event time, so the watermark's wall-clock settings shrink to match. A labels
           # partition that got no label for 50 ms has skipped half an hour of it and would
           # otherwise hold the merchant stage's watermark back; a second of grace after a
           # wake-up would hold it ten hours.
           "FRAUD_INPUT_IDLE_MS": "50", "FRAUD_IDLE_GRACE_MS": "20", "FRAUD_ALIGN_MS": "3300000",
           "FRAUD_SAMPLE_DIR": str(SAMPLE_DIR)}  # fmt: skip
    log = log_path()
    log.unlink(missing_ok=True)
    return FlowProcess(env, log, recovery_dir=work / "recovery"), port


def check(flow: FlowProcess) -> None:
    """Raise :class:`FlowStopped` with the log's tail if the flow has exited."""
    if not flow.alive:
        raise FlowStopped(f"the flow exited ({flow.proc.returncode}); the end of "
                          f"{flow.log_path}:\n{flow.log_tail()}")  # fmt: skip


def wait_for_rule_set(flow: FlowProcess, watch: StageWatch, version: str,
                      timeout: float = 30.0) -> bool:
    """Wait until the flow reports rule set ``version`` in force; False after ``timeout`` s.

    The flow reads the ``rules`` and ``lists`` topics beside ``transactions``; waiting
    for it means the first transaction is already judged by the demo's rules.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check(flow)
        got = watch.poll()
        if got is not None and got.rule_set == version:
            return True
        time.sleep(0.2)
    return False
