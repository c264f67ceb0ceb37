"""Running the real scoring flow on the test broker: topic sets, environment, collectors.

Shared by the integration tests that start ``python -m bytewax.run flows.score``
through :class:`~devkit.process.FlowProcess`.

The session broker (:func:`session_broker`) of the integration and chaos tiers is
the embedded Tansu broker; ``FRAUD_TEST_BROKER=kafka`` (what ``just test-kafka``
sets) makes it a real Apache Kafka (:mod:`devkit.apache_kafka`), and
``KAFKA_BOOTSTRAP_SERVERS`` an external one. The variable is removed from this
process's environment when this module is imported: the flow processes inherit
the environment and refuse any ``FRAUD_*`` variable they do not know.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import random
import shutil
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from devkit.apache_kafka import KAFKA_VERSION, ApacheKafka
from devkit.broker import EmbeddedBroker
from devkit.process import FlowProcess
from rules.signing import dev_keys
from topics.contracts import DeadLetter, Label, Prediction, Transaction
from topics.settings import BOOTSTRAP_ENV, KafkaSettings

TEST_BROKER_ENV = "FRAUD_TEST_BROKER"
TEST_BROKERS = ("embedded", "kafka")
#: The tiers' broker: ``embedded`` (Tansu, the default) or ``kafka`` (Apache Kafka).
TEST_BROKER = os.environ.pop(TEST_BROKER_ENV, "").strip().lower() or "embedded"

TIMEOUT = 180
PARTITIONS = 8
#: Test consumers assign partitions themselves (group joins are slow on the embedded broker).
CONSUMER: dict[str, str | int | bool] = {"group.id": "test", "enable.auto.commit": False}


@dataclasses.dataclass
class Outcome:
    """Everything a run published: verdicts by transaction id (all copies), dead letters."""

    verdicts: dict[str, list[Prediction]]
    dead_letters: list[DeadLetter]

    def scores(self) -> dict[str, float]:
        """The (first) score of each transaction."""
        return {tid: vs[0].score for tid, vs in self.verdicts.items()}

    @property
    def duplicates(self) -> int:
        """Verdicts published more than once."""
        return sum(len(vs) - 1 for vs in self.verdicts.values())


def wait_until(
    done: Callable[[], bool], flows: Sequence[FlowProcess], what: str | Callable[[], str],
    timeout: float = TIMEOUT, tick: Callable[[], None] = lambda: None,
) -> None:
    """Call ``tick`` until ``done()``; fail if a flow exits or ``timeout`` passes.

    ``what`` (or what it returns, at the time out) names what was awaited.
    """
    deadline = time.time() + timeout
    while not done():
        for flow in flows:
            flow.check()
        assert time.time() < deadline, (
            f"timed out waiting for {what() if callable(what) else what}")
        tick()
        time.sleep(0.05)


class Collector(threading.Thread):
    """Read predictions and dead letters of one topic set as they arrive."""

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(daemon=True)
        self.settings, self.stopping = settings, threading.Event()
        self.outcome = Outcome(defaultdict(list), [])
        self.versions: set[str] = set()  # model versions seen so far (safe to read meanwhile)
        self.failed: BaseException | None = None

    def run(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # reported by wait_for, not lost in a thread
            self.failed = exc
            raise

    def _read(self) -> None:
        consumer = Consumer(self.settings.client_config(**CONSUMER, **{"fetch.wait.max.ms": 10}))
        topics = (self.settings.topic("predictions"), self.settings.topic("dead-letter"))
        consumer.assign([TopicPartition(t, p, 0) for t in topics for p in range(PARTITIONS)])
        while not self.stopping.is_set():
            for msg in consumer.consume(1000, 0.1):
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                if msg.topic() == topics[0]:
                    p = msgspec.json.decode(value, type=Prediction)
                    self.outcome.verdicts[p.transaction_id].append(p)
                    self.versions.add(p.model_version)
                else:
                    self.outcome.dead_letters.append(msgspec.json.decode(value, type=DeadLetter))
        consumer.close()

    def wait_for(self, n_verdicts: int, flows: Sequence[FlowProcess], n_dead: int = 0,
                 timeout: float = TIMEOUT) -> None:
        """Block until ``n_verdicts`` distinct verdicts and ``n_dead`` dead letters arrived."""

        def alive() -> None:
            assert self.failed is None, f"the collector stopped: {self.failed!r}"

        wait_until(
            lambda: (len(self.outcome.verdicts) >= n_verdicts
                     and len(self.outcome.dead_letters) >= n_dead),
            flows, lambda: (f"{n_verdicts} verdicts and {n_dead} dead letters (have "
                            f"{len(self.outcome.verdicts)} and "
                            f"{len(self.outcome.dead_letters)})"), timeout,
            tick=alive,
        )

    def stop(self) -> Outcome:
        """Stop reading; return what was read."""
        self.stopping.set()
        self.join()
        return self.outcome


def topic_set(kafka: KafkaSettings, name: str) -> KafkaSettings:
    """Settings for a fresh set of registry topics named after ``name`` (not yet created)."""
    prefix = f"{name}-{random.randrange(1 << 30):x}."
    return dataclasses.replace(kafka, topic_prefix=prefix, topic_overrides={})


#: The PAN tokenisation key of the test flows (``FRAUD_PAN_KEY_FILE``): a PAN sent as
#: ``card_id`` is tokenised, as in production, and tests can compute its token.
TEST_PAN_KEY = b"fraudstream test PAN tokenisation key, 32+ bytes"


def pan_key_file(work: Path) -> Path:
    """Write :data:`TEST_PAN_KEY` to ``work/secrets/pan.key`` (mode 0600) and return its path."""
    path = work / "secrets" / "pan.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(TEST_PAN_KEY)
    path.chmod(0o600)
    return path


#: The dev analysts (maker and checker, ``.dev/rules-keys/``, made on first use): the test
#: flows trust them (``FRAUD_RULES_TRUSTED_KEYS``) and tests sign their rules with them.
RULE_KEYS = dev_keys(Path(__file__).resolve().parents[1] / ".dev" / "rules-keys")


def flow_env(settings: KafkaSettings, model_path: Path, work: Path,
             **extra: str) -> dict[str, str]:
    """The flow's ``FRAUD_*`` environment for one topic set; ``extra`` adds or overrides.

    Eight card and eight merchant shards, as a cluster runs (``k8s/``): the tests exercise
    routing over many shards; the demo and the bench run the one-process default. PANs
    sent as ``card_id`` are tokenised with :data:`TEST_PAN_KEY` (written under ``work``).
    """
    return {"KAFKA_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
            "FRAUD_CARD_SHARDS": "8", "FRAUD_MERCHANT_SHARDS": "8",
            "FRAUD_TOPIC_PREFIX": settings.topic_prefix, "FRAUD_STATE_DIR": str(work / "state"),
            "FRAUD_SAMPLE_DIR": str(work / "samples"),
            "FRAUD_MODEL_PATH": str(model_path), "FRAUD_METRICS_PORT": "0",
            "FRAUD_LOG_LEVEL": "WARNING", "FRAUD_PAN_KEY_FILE": str(pan_key_file(work)),
            "FRAUD_RULES_TRUSTED_KEYS": str(RULE_KEYS.trusted), **extra}


def input_positions(settings: KafkaSettings, count: int) -> dict[str, tuple[int, int]]:
    """``(partition, offset)`` of the ``count`` transactions on the set's ``transactions`` topic.

    Counted, not read up to the high watermark: the embedded broker reports watermarks that
    are not record offsets.
    """
    topic = settings.topic("transactions")
    consumer = Consumer(settings.client_config(**CONSUMER))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    positions: dict[str, tuple[int, int]] = {}

    def read() -> None:
        for m in consumer.consume(1000, 0.1):
            if m.error() is None:
                txn = msgspec.json.decode(m.value(), type=Transaction)
                positions[txn.transaction_id] = (m.partition(), m.offset())

    wait_until(lambda: len(positions) >= count, [], f"{count} transactions on {topic}",
               timeout=30, tick=read)
    consumer.close()
    return positions


def offline_scores(events: Sequence[Transaction | Label], model_dirs: Sequence[Path]
                   ) -> dict[str, dict[str, float]]:
    """The event-time answer (what ``just score-file`` computes) for ``events``
    (transactions in production order, labels in theirs) through each model, by version."""
    from export.model import load_model
    from state.replay import replay_matrix

    replayed, X = replay_matrix(list(events))
    ids = [t.transaction_id for t in replayed]
    out = {}
    for d in model_dirs:
        model = load_model(d)
        out[model.version] = dict(zip(ids, model.predict(X).tolist(), strict=True))
    return out


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """The flow's Prometheus samples, keyed by ``(name, labels)``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(value for (n, have), value in samples.items()
               if n == name and set(labels.items()) <= have)


def close_clients() -> int:
    """Close every Kafka producer the tests left open; call before their broker stops.

    A producer nobody closed lives until the garbage collector finds it, and until then
    librdkafka keeps reconnecting to the stopped broker and logs each attempt (noise at
    the end of a run). What is still queued is dropped: its test is over. Returns how
    many were closed.
    """
    gc.collect()
    closed = 0
    for obj in gc.get_objects():
        if isinstance(obj, Producer):
            try:
                obj.purge()
                obj.close()
            except RuntimeError:  # already closed
                continue
            closed += 1
    return closed


def on_kafka() -> bool:
    """True when the session broker is Apache Kafka (``FRAUD_TEST_BROKER=kafka``)."""
    return TEST_BROKER == "kafka" and not os.environ.get(BOOTSTRAP_ENV, "").strip()


def broker_header() -> str:
    """The line the pytest report header shows for the session broker."""
    external = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if external:
        return f"broker: external, {BOOTSTRAP_ENV}={external}"
    if TEST_BROKER == "kafka":
        return f"broker: Apache Kafka {KAFKA_VERSION} (devkit/apache_kafka.py, {TEST_BROKER_ENV})"
    return f"broker: embedded Tansu ({TEST_BROKER_ENV}=kafka runs on Apache Kafka)"


def check_test_broker() -> None:
    """Refuse an unknown :data:`TEST_BROKER_ENV` value (call from ``pytest_configure``)."""
    if TEST_BROKER not in TEST_BROKERS:
        raise pytest.UsageError(
            f"{TEST_BROKER_ENV}={TEST_BROKER!r}: expected one of {', '.join(TEST_BROKERS)}")


@contextlib.contextmanager
def session_broker(log_dir: Path) -> Iterator[KafkaSettings]:
    """Settings pointing at a tier's broker, started here (logs under ``log_dir``).

    ``KAFKA_BOOTSTRAP_SERVERS`` set: that broker, nothing started. Otherwise the
    embedded broker, or Apache Kafka when ``FRAUD_TEST_BROKER=kafka``.
    """
    if os.environ.get(BOOTSTRAP_ENV, "").strip():
        yield KafkaSettings.from_env()
        return
    broker = ApacheKafka(log_dir=log_dir) if TEST_BROKER == "kafka" else EmbeddedBroker(
        log_dir=log_dir)
    with broker:
        yield KafkaSettings.from_env({**os.environ, BOOTSTRAP_ENV: broker.bootstrap})
        close_clients()


#: The marks of a module that starts Apache Kafka itself (skipped, saying why, without a JDK
#: or Maven).
REAL_KAFKA_MARKS = [
    pytest.mark.integration,
    pytest.mark.kafka,
    pytest.mark.skipif(shutil.which("java") is None, reason="no `java` on PATH: Kafka needs a JDK"),
    pytest.mark.skipif(
        shutil.which("mvn") is None, reason="no `mvn` on PATH: the Kafka jars come from Maven"
    ),
]
