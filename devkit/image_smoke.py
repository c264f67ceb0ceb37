"""The built image, run for real: it scores transactions from a broker and stops cleanly.

:func:`run_smoke` (``python -m devkit.image smoke``, ``just image-smoke``,
``tests/deploy/test_image.py``):

1. starts a broker on ``127.0.0.1``, the embedded one or (``broker="kafka"``) a real
   Apache Kafka 4.1 (:mod:`devkit.apache_kafka`: needs java and mvn), creates the
   registry topics under a fresh prefix; produces ``transactions`` synthetic
   transactions;
2. runs the image's own command (tini, then ``fraud-flow``) with
   ``--network host``, a read-only root file system, the model mounted
   read-only at ``/app/models/current`` (or the one baked into the image: model
   None) and a fresh named volume at ``/data``,
   the snapshot interval longer than the run (``FLOW_SNAPSHOT_SECONDS``);
3. waits until every transaction id has a verdict on ``predictions`` (each
   value decodes as a ``Prediction`` of the id it is keyed by) and nothing
   reached ``dead-letter``;
4. checks ``/ready`` answers 200 (from the host and through the image's own
   ``HEALTHCHECK``), ``/metrics`` counts every verdict, PID 1 is tini and the flow
   runs as the image's user (uid 10001), not root;
5. ``podman stop`` (SIGTERM to PID 1): the container must exit 0 within 30 s,
   having logged the clean stop and no traceback (its warnings go to the report);
6. restarts the image on the same volume and produces ``transactions`` more:
   only the new ones get verdicts. The first run took no periodic snapshot, so
   this holds only if its clean stop wrote the final one.

Every failed check raises :class:`SmokeError` with the container's last log
lines. Timings are in the returned :class:`SmokeReport`.
"""

from __future__ import annotations

import contextlib
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from devkit.broker import EmbeddedBroker, free_port
from devkit.image import DEFAULT_TAG, IMAGE_UID, ROOT, container_args, forwarded_env
from devkit.podman import ImageError, Podman
from topics.admin import ensure_topics
from topics.contracts import Prediction
from topics.reader import iter_topic
from topics.settings import BOOTSTRAP_ENV, KafkaSettings

#: ``podman stop`` waits this long before SIGKILL: Kubernetes' and compose's grace.
STOP_GRACE_S = 30
#: Longer than any smoke run: only the final snapshot of a clean stop is ever taken.
SNAPSHOT_S = 3600
#: What the flow prints on its first SIGTERM (lifecycle/process.py).
CLEAN_STOP_LINE = "SIGTERM received: stopping cleanly"


class SmokeError(ImageError):
    """A check of the running image failed; the message says which, with the container log."""


@dataclass(frozen=True)
class SmokeOptions:
    """What to run: image, transactions per run, model directory, limits in seconds.

    ``model`` None: no mount, the image's own model (built with ``--model``).
    """

    image: str = DEFAULT_TAG
    transactions: int = 300
    model: Path | None = ROOT / "models" / "current"
    verdict_timeout_s: float = 300.0
    restart: bool = True
    broker: str = "embedded"
    changelog: bool = False
    """``FRAUD_CHANGELOG=on`` (the ConfigMap's); the restart then runs on a new, empty
    volume (the first one lost): its recovery partitions are restored from the
    ``recovery-backup`` topic and its stores from their changelogs."""


@dataclass
class SmokeReport:
    """What the smoke measured. Times in seconds from ``podman run`` unless named otherwise."""

    image: str
    transactions: int
    broker: str = "embedded"
    verdicts: int = 0
    ready_s: float | None = None  # when /ready answered 200 (checked after the verdicts)
    first_verdict_s: float | None = None
    restored: bool | None = None  # changelog: the restart restored the recovery partitions
    all_verdicts_s: float | None = None
    stop_s: float | None = None
    exit_code: int | None = None
    flow_user: str = ""
    pid1: str = ""
    read_only_root: bool = False
    metrics_verdicts: float = 0.0
    healthcheck_ok: bool = False
    restart_first_verdict_s: float | None = None
    restart_verdicts: int = 0
    restart_stop_s: float | None = None
    restart_exit_code: int | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for people: counts and timings."""

        def s(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f} s"

        lines = [
            f"image {self.image} on the {self.broker} broker: {self.verdicts}/"
            f"{self.transactions} verdicts; flow user "
            f"{self.flow_user}, PID 1 {self.pid1!r}, read-only root {self.read_only_root}",
            f"  first verdict {s(self.first_verdict_s)}, all verdicts "
            f"{s(self.all_verdicts_s)} after podman run; then /ready 200 (at "
            f"{s(self.ready_s)}), HEALTHCHECK {'ok' if self.healthcheck_ok else '-'}, "
            f"/metrics counted {self.metrics_verdicts:.0f}",
            f"  podman stop (SIGTERM): exit {self.exit_code} in {s(self.stop_s)}",
        ]
        if self.restart_exit_code is not None or self.restart_verdicts:
            where = ("a new volume (recovery partitions restored from recovery-backup, stores "
                     "from their changelogs)" if self.restored else "the same volume")
            lines.append(
                f"  restart on {where}: {self.restart_verdicts} new verdicts, none "
                f"repeated; first after {s(self.restart_first_verdict_s)}; stop exit "
                f"{self.restart_exit_code} in {s(self.restart_stop_s)}"
            )
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


class _Container:
    """One detached run of the image; :meth:`fail` raises with its log."""

    def __init__(self, podman: Podman, name: str) -> None:
        self.podman = podman
        self.name = name
        self.started = 0.0

    def start(self, image: str, volume: str, env: Mapping[str, str], model: Path | None) -> None:
        args = container_args(image, name=self.name, volume=volume, env_names=sorted(env),
                              model=model, detach=True)  # fmt: skip
        self.started = time.monotonic()
        self.podman.run(*args, env=env, timeout=120)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def state(self) -> tuple[bool, int]:
        out = self.podman.output("inspect", self.name, "--format",
                                 "{{.State.Running}} {{.State.ExitCode}}")  # fmt: skip
        running, code = out.split()
        return running == "true", int(code)

    def logs(self, tail: int = 40) -> str:
        done = self.podman.run("logs", "--tail", str(tail), self.name, check=False)
        return (done.stdout + done.stderr).strip()

    def fail(self, what: str) -> SmokeError:
        return SmokeError(f"{what}\n--- last lines of `podman logs {self.name}` ---\n"
                          f"{self.logs()}")  # fmt: skip

    def check_alive(self, what: str) -> None:
        running, code = self.state()
        if not running:
            raise self.fail(f"the container exited (code {code}) while {what}")

    def stop(self) -> tuple[float, int]:
        start = time.monotonic()
        self.podman.run("stop", "--time", str(STOP_GRACE_S), self.name, timeout=STOP_GRACE_S + 30)
        seconds = time.monotonic() - start
        return seconds, self.state()[1]

    def remove(self) -> None:
        self.podman.run("rm", "--force", "--time", "0", self.name, check=False)


def _get(url: str, timeout: float = 4.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


_VERDICTS_LINE = re.compile(r"^fraud_verdicts_total\{[^}]*\} ([0-9.e+]+)$", re.M)


def verdicts_counted(metrics_text: str) -> float:
    """Sum of ``fraud_verdicts_total`` over its labels in a Prometheus text exposition."""
    return sum(float(v) for v in _VERDICTS_LINE.findall(metrics_text))


def _collect_verdicts(container: _Container, settings: KafkaSettings, expected: set[str],
                      timeout: float) -> tuple[dict[str, int], float | None, float]:
    """Read ``predictions`` until every id in ``expected`` has a verdict.

    Returns (verdict records per transaction id, seconds to the first new verdict,
    seconds to the last), counted from the container's start. Raises :class:`SmokeError`
    if the container exits, a verdict is malformed or keyed by another id, or time is up.
    """
    decode = msgspec.json.Decoder(Prediction).decode
    topic = settings.topic("predictions")
    counts: dict[str, int] = {}
    first: float | None = None
    deadline = time.monotonic() + timeout
    while True:
        seen: dict[str, int] = {}
        for record in iter_topic(settings, topic, follow=True, idle_timeout=1.0):
            key = (record.key or b"").decode()
            try:
                verdict = decode(record.value or b"")
            except msgspec.DecodeError as exc:
                raise container.fail(f"verdict at {topic}[{record.partition}]@{record.offset} "
                                     f"does not decode as a Prediction: {exc}") from exc
            if verdict.transaction_id != key:
                raise container.fail(f"verdict for {verdict.transaction_id!r} keyed {key!r}")
            seen[key] = seen.get(key, 0) + 1
            if first is None and key in expected:
                first = container.elapsed()
        counts = seen
        if expected <= counts.keys():
            return counts, first, container.elapsed()
        container.check_alive(f"waiting for verdicts ({len(expected & counts.keys())}/"
                              f"{len(expected)})")  # fmt: skip
        if time.monotonic() > deadline:
            raise container.fail(f"{len(expected - counts.keys())} of {len(expected)} "
                                 f"transactions without a verdict after {timeout:.0f} s")


def _produce(settings: KafkaSettings, count: int, seed: int, start_ms: int) -> set[str]:
    from devkit.produce import produce_transactions
    from training.simulate import transaction_stream

    batch = list(transaction_stream(count, seed=seed, cards=max(10, count // 5),
                                    start_ms=start_ms))  # fmt: skip
    produce_transactions(settings, settings.topic("transactions"), batch, progress=False)
    return {txn.transaction_id for txn in batch}


#: The brokers :func:`run_smoke` can start.
BROKERS = ("embedded", "kafka")


@contextmanager
def _broker(kind: str, log_dir: Path) -> Iterator[str]:
    """A broker on 127.0.0.1 for the run; yields its bootstrap address."""
    if kind == "kafka":
        from devkit.apache_kafka import ApacheKafka

        with ApacheKafka(log_dir=log_dir) as kafka:
            yield kafka.bootstrap
    elif kind == "embedded":
        with EmbeddedBroker(log_dir=log_dir) as broker:
            yield broker.bootstrap
    else:
        raise SmokeError(f"broker {kind!r}: expected one of {', '.join(BROKERS)}")


@contextmanager
def _volume(podman: Podman, name: str) -> Iterator[str]:
    podman.run("volume", "create", name)
    try:
        yield name
    finally:
        podman.run("volume", "rm", "--force", name, check=False)


def _say(text: str) -> None:
    print(f"smoke: {text}", file=sys.stderr, flush=True)


def run_smoke(podman: Podman, options: SmokeOptions) -> SmokeReport:
    """Run the image against a broker and check it (module docstring); return the report.

    Raises :class:`SmokeError` for a failed check, :class:`~devkit.podman.PodmanError`
    when podman itself fails, :class:`~topics.errors.BrokerError` for the broker.
    """
    if not podman.image_exists(options.image):
        raise SmokeError(f"no image {options.image}: build it first (just image)")
    model = options.model.resolve() if options.model is not None else None
    if model is not None and not (model / "model.onnx").is_file():
        raise SmokeError(f"{options.model}: no model.onnx; publish one first "
                         "(just train && just export-onnx)")  # fmt: skip
    report = SmokeReport(options.image, options.transactions, options.broker)
    run_id = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="image-smoke-") as tmp, \
            _broker(options.broker, Path(tmp)) as bootstrap, \
            _volume(podman, f"fraudstream-smoke-{run_id}") as volume:  # fmt: skip
        settings = KafkaSettings(bootstrap_servers=bootstrap,
                                 topic_prefix=f"smoke-{run_id}.")  # fmt: skip
        ensure_topics(settings)
        start_ms = int(time.time() * 1000) - 3_600_000
        first_ids = _produce(settings, options.transactions, seed=1, start_ms=start_ms)
        _say(f"{options.broker} broker {bootstrap}, {len(first_ids)} transactions on "
             f"{settings.topic('transactions')}")  # fmt: skip
        port = free_port()
        env = forwarded_env({BOOTSTRAP_ENV: bootstrap,
                             "FRAUD_TOPIC_PREFIX": settings.topic_prefix,
                             "FRAUD_METRICS_PORT": str(port),
                             "FLOW_SNAPSHOT_SECONDS": str(SNAPSHOT_S),
                             **({"FRAUD_CHANGELOG": "on"} if options.changelog else {})})
        container = _Container(podman, f"fraudstream-smoke-{run_id}")
        try:
            _first_run(container, options, report, settings, env, volume, model, first_ids, port)
        finally:
            container.remove()
        if options.restart:
            again = _Container(podman, f"fraudstream-smoke-{run_id}-2")
            with contextlib.ExitStack() as lost:
                if options.changelog:  # the first volume is lost
                    volume = lost.enter_context(_volume(podman, f"fraudstream-smoke-{run_id}-2"))
                try:
                    _restart(again, options, report, settings, env, volume, model, first_ids,
                             start_ms)  # fmt: skip
                    if options.changelog:
                        said = again.logs(400)
                        report.restored = "restored part-0.sqlite3" in said
                        if not report.restored:
                            raise again.fail("the new volume's recovery partitions were not "
                                             "restored from recovery-backup")
                finally:
                    again.remove()
    return report


def _first_run(container: _Container, options: SmokeOptions, report: SmokeReport,
               settings: KafkaSettings, env: dict[str, str], volume: str, model: Path | None,
               ids: set[str], port: int) -> None:
    _say(f"podman run {options.image} ({container.name}); waiting for {len(ids)} verdicts")
    container.start(options.image, volume, env, model)
    counts, report.first_verdict_s, report.all_verdicts_s = _collect_verdicts(
        container, settings, ids, options.verdict_timeout_s)
    report.verdicts = len(counts.keys() & ids)
    _say(f"every transaction has a verdict: first {report.first_verdict_s:.1f} s, last "
         f"{report.all_verdicts_s:.1f} s after podman run")  # fmt: skip
    dead = list(iter_topic(settings, settings.topic("dead-letter"), follow=True,
                           idle_timeout=1.0))  # fmt: skip
    if dead:
        raise container.fail(f"{len(dead)} transactions went to dead-letter, e.g. "
                             f"{(dead[0].value or b'')[:300]!r}")  # fmt: skip
    status, body = _get(f"http://127.0.0.1:{port}/ready")
    if status != 200:
        raise container.fail(f"/ready on 127.0.0.1:{port} answered {status}: {body[:300]}")
    report.ready_s = container.elapsed()
    health = container.podman.run("healthcheck", "run", container.name, check=False)
    if health.returncode != 0:
        raise container.fail(f"the image's HEALTHCHECK failed (exit {health.returncode}): "
                             f"{(health.stdout + health.stderr).strip()}")  # fmt: skip
    report.healthcheck_ok = True
    status, body = _get(f"http://127.0.0.1:{port}/metrics")
    report.metrics_verdicts = verdicts_counted(body) if status == 200 else 0.0
    if report.metrics_verdicts != len(ids):
        raise container.fail(f"/metrics (HTTP {status}) counts {report.metrics_verdicts:.0f} "
                             f"verdicts, expected {len(ids)}")  # fmt: skip
    _check_process(container, report)
    report.stop_s, report.exit_code = container.stop()
    _say(f"podman stop: exit {report.exit_code} in {report.stop_s:.1f} s")
    if report.exit_code != 0 or report.stop_s >= STOP_GRACE_S - 1:
        raise container.fail(f"SIGTERM: exit {report.exit_code} after {report.stop_s:.1f} s; "
                             f"expected a clean exit 0 within {STOP_GRACE_S} s")  # fmt: skip
    log = container.logs(tail=500)
    if CLEAN_STOP_LINE not in log:
        raise container.fail(f"exit 0 but no {CLEAN_STOP_LINE!r} in the log: was the signal "
                             "delivered to the flow?")  # fmt: skip
    if "Traceback" in log:
        raise container.fail("a Python traceback in the log of a run that passed its checks")
    report.notes += [line.strip() for line in log.splitlines()
                     if " WARNING " in line or " ERROR " in line]  # fmt: skip


def _check_process(container: _Container, report: SmokeReport) -> None:
    """PID 1 is tini; the flow (python) runs as the image's user, not root; root is read-only."""
    table = container.podman.output("top", container.name, "pid", "user", "huser", "args")
    rows = [line.split(None, 3) for line in table.splitlines()[1:] if line.strip()]
    pid1 = [r for r in rows if r[0] == "1"]
    flow = [r for r in rows if len(r) == 4 and "bytewax.run" in r[3]]
    report.pid1 = pid1[0][3] if pid1 and len(pid1[0]) == 4 else ""
    if "tini" not in report.pid1:
        raise container.fail(f"PID 1 is {report.pid1!r}, not tini:\n{table}")
    if not flow:
        raise container.fail(f"no bytewax.run process in the container:\n{table}")
    report.flow_user = flow[0][1]
    uid = container.podman.output("exec", container.name, "id", "-u")
    if flow[0][1] in ("root", "0") or uid != str(IMAGE_UID):
        raise container.fail(f"the flow runs as {flow[0][1]!r} (exec uid {uid}), expected the "
                             f"image's user {IMAGE_UID}:\n{table}")  # fmt: skip
    report.read_only_root = container.podman.output(
        "inspect", container.name, "--format", "{{.HostConfig.ReadonlyRootfs}}") == "true"
    if not report.read_only_root:
        raise container.fail("the root file system is writable; expected --read-only")


def _restart(container: _Container, options: SmokeOptions, report: SmokeReport,
             settings: KafkaSettings, env: dict[str, str], volume: str, model: Path | None,
             first_ids: set[str], start_ms: int) -> None:
    """Same volume, new transactions: the first run's verdicts must not come again."""
    new_ids = _produce(settings, options.transactions, seed=2,
                       start_ms=start_ms + 1_800_000)  # fmt: skip
    _say(f"restart on volume {volume} with {len(new_ids)} new transactions")
    container.start(options.image, volume, env, model)
    counts, report.restart_first_verdict_s, _ = _collect_verdicts(
        container, settings, new_ids, options.verdict_timeout_s)
    repeated = sorted(k for k in first_ids if counts.get(k, 0) > 1)
    if repeated:
        raise container.fail(
            f"{len(repeated)} verdicts of the first run were published again after the "
            f"restart (e.g. {repeated[0]}): the clean stop did not write its final snapshot")
    report.restart_verdicts = len(counts.keys() & new_ids)
    report.restart_stop_s, report.restart_exit_code = container.stop()
    if report.restart_exit_code != 0:
        raise container.fail(f"second SIGTERM: exit {report.restart_exit_code}")
    _say(f"restart: {report.restart_verdicts} new verdicts, none repeated; stop exit "
         f"{report.restart_exit_code} in {report.restart_stop_s:.1f} s")  # fmt: skip

