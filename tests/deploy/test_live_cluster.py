"""The image's entrypoint (docker/fraud-flow.sh) as a 2-process cluster on the embedded broker.

Runs what compose and the StatefulSet run, minus the container: two processes with
their own data directories, recovery partitions created by process 0 only, metrics
on their own ports. Checks that both serve ``/metrics``, that every metric the
Grafana dashboard and the alert rules query is really exported (labels and a later
wave of transactions make drift windows with label feedback close), that verdicts
come out, and that the cluster resumes from recovery after a restart.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer

from deploy.manifests import run_seed
from deploy.queries import PENDING_LIVE, ROOT, alert_rules, dashboard_queries, metric_names
from devkit.broker import EmbeddedBroker, free_port
from export.registry import CURRENT
from topics.admin import ensure_topics
from topics.contracts import Label, Transaction
from topics.producer import PRODUCER_DEFAULTS
from topics.settings import KafkaSettings
from training.simulate import transaction_stream

pytestmark = [pytest.mark.integration]

ENTRYPOINT = ROOT / "docker" / "fraud-flow.sh"
N_TRANSACTIONS = 400
TIMEOUT = 60


@dataclasses.dataclass
class Cluster:
    procs: list[subprocess.Popen[bytes]]
    metrics_ports: list[int]
    logs: list[Path]

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in self.logs if p.exists())

    def check(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise AssertionError(f"a flow process exited ({proc.returncode}):\n"
                                     f"{self.log_tail()}")

    def scrape(self, i: int) -> str | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_ports[i]}/metrics", timeout=2
            ) as resp:
                return resp.read().decode()
        except OSError:
            return None

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(2)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_cluster(settings: KafkaSettings, model_dir: Path, work: Path) -> Cluster:
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    ports = [free_port(), free_port()]
    procs, logs = [], []
    for i in range(2):
        data = work / f"flow-{i}"
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "KAFKA_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
            "FRAUD_TOPIC_PREFIX": settings.topic_prefix,
            "FRAUD_MODEL_PATH": str(model_dir),
            "FRAUD_STATE_DIR": str(data / "state"),
            "FRAUD_METRICS_PORT": str(ports[i]),
            "FRAUD_LOG_LEVEL": "WARNING",
            "FRAUD_SAMPLE_DIR": str(data / "samples"),
            # the dev analysts `just rules add` signs with (publish_rules)
            "FRAUD_RULES_TRUSTED_KEYS": str(ROOT / ".dev" / "rules-keys" / "trusted.yaml"),
            # short drift windows, and every labelled verdict flagged: precision exists
            "FRAUD_DRIFT_WINDOW_SECONDS": "5", "FRAUD_DRIFT_GRACE_SECONDS": "0",
            "FRAUD_DRIFT_FLUSH_SECONDS": "2", "FRAUD_REVIEW_THRESHOLD": "0",
            "FLOW_PROCESS_ID": str(i),
            "FLOW_ADDRESSES": addresses,
            "FLOW_RECOVERY_DIR": str(data / "recovery"),
            "FLOW_SNAPSHOT_SECONDS": "1",
            # as the ConfigMap: changelogs, and process 0's recovery partitions copied
            "FRAUD_CHANGELOG": "on", "FRAUD_RECOVERY_BACKUP_SECONDS": "2",
        }
        log = work / f"flow-{i}.log"
        logs.append(log)
        with log.open("ab") as out:
            procs.append(subprocess.Popen(
                ["sh", str(ENTRYPOINT)], env=env, stdout=out, stderr=subprocess.STDOUT,
            ))  # stopped in the test's finally blocks
    return Cluster(procs, ports, logs)


def restarted(settings: KafkaSettings, model_dir: Path, work: Path, seed: int) -> list[str]:
    """Produce more traffic, start the cluster on ``work``, scrape both once it is scored."""
    produce(settings, seed=seed)
    cluster = start_cluster(settings, model_dir, work)
    try:
        wait_for(cluster, N_TRANSACTIONS, set())
        time.sleep(2)
        return [t for t in (cluster.scrape(i) for i in range(2)) if t]
    finally:
        cluster.stop()


def publish_rules(settings: KafkaSettings) -> None:
    """Publish the example rule book as an analyst would (``just rules add``)."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
           "FRAUD_TOPIC_PREFIX": settings.topic_prefix}
    result = subprocess.run(
        [sys.executable, "-m", "rules.cli", "add", str(ROOT / "rules/examples/policies.yaml"),
         "--effective-in", "0"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def sample_value(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (any labels) in a Prometheus text exposition."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


def exported(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


@pytest.fixture(scope="module")
def topics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    with EmbeddedBroker(log_dir=tmp_path_factory.mktemp("broker")) as broker:
        settings = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                                           "FRAUD_TOPIC_PREFIX": f"deploy-{uuid.uuid4().hex[:8]}."})
        ensure_topics(settings)
        yield settings


def produce(
    settings: KafkaSettings, seed: int, count: int = N_TRANSACTIONS, start_ms: int | None = None
) -> list[Transaction]:
    """``count`` synthetic transactions and one invalid message."""
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    topic = settings.topic("transactions")
    txns = list(transaction_stream(count, seed=seed, cards=100, start_ms=start_ms))
    for txn in txns:
        producer.produce(topic, key=txn.card_id.encode(), value=msgspec.json.encode(txn))
    producer.produce(topic, key=b"card-x", value=b'{"transaction_id": "broken"}')
    assert producer.flush(30) == 0
    return txns


def produce_labels(settings: KafkaSettings, txns: list[Transaction], at_ms: int) -> None:
    """A label for every transaction, every other one fraud, all known at ``at_ms``."""
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    for i, txn in enumerate(txns):
        label = Label(transaction_id=txn.transaction_id, card_id=txn.card_id,
                      merchant_id=txn.merchant_id, is_fraud=i % 2 == 0, label_time=at_ms)
        producer.produce(settings.topic("labels"), key=txn.transaction_id.encode(),
                         value=msgspec.json.encode(label))
    assert producer.flush(30) == 0


def wait_for(
    cluster: Cluster, verdicts: int, needed: set[str], counter: str = "fraud_verdicts_total"
) -> list[str]:
    """Scrape both processes until ``counter`` reaches ``verdicts`` and ``needed`` are exported."""
    deadline = time.time() + TIMEOUT
    found: set[str] = set()
    while True:
        cluster.check()
        texts = [cluster.scrape(i) for i in range(2)]
        if all(texts):
            scraped = [t for t in texts if t]
            total = sum(sample_value(t, counter) for t in scraped)
            found = set().union(*(exported(t) for t in scraped))
            if total >= verdicts and needed <= found:
                return scraped
        assert time.time() < deadline, (
            f"no {verdicts} {counter} and {sorted(needed - found)} within {TIMEOUT}s\n"
            f"{cluster.log_tail()}")
        time.sleep(0.5)


@pytest.fixture()
def seeded_current(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """``/models/current`` as the StatefulSet's seed-models step leaves it on a new volume."""
    registry = tmp_path / "models"
    registry.mkdir()
    result = run_seed(tiny_model_dir, registry)
    assert result.returncode == 0, result.stdout + result.stderr
    return registry / CURRENT


def test_two_process_cluster_from_the_entrypoint_exports_every_queried_metric(
    topics: KafkaSettings, seeded_current: Path, tmp_path: Path
) -> None:
    queried = {m for q in dashboard_queries() for m in metric_names(q)}
    queried |= {m for rule in alert_rules() for m in metric_names(rule["expr"])}
    queried.discard("up")  # Prometheus's own series for every target
    queried -= set(PENDING_LIVE)  # not wired into flows.score yet (checked below)
    version = Path(os.readlink(seeded_current)).name
    publish_rules(topics)  # the rule series exist from the moment a rule is in force
    txns = produce(topics, seed=1)
    # FRAUD_MODEL_PATH=<registry>/current, as in the StatefulSet (configmap.yaml)
    cluster = start_cluster(topics, seeded_current, tmp_path)
    try:
        wait_for(cluster, N_TRANSACTIONS, set())
        end = max(t.event_time for t in txns)
        produce_labels(topics, txns, at_ms=end)
        wait_for(cluster, N_TRANSACTIONS, set(), counter="fraud_labels_total")
        produce(topics, seed=3, count=200, start_ms=end + 60_000)  # closes the drift windows
        texts = wait_for(cluster, N_TRANSACTIONS + 200, queried)
        # both processes serve metrics, and the model the seed step made current
        assert all(f'version="{version}"' in t for t in texts if "fraud_model_info{" in t)
        assert all("fraud_model_info{" in t for t in texts)
        wired = set(PENDING_LIVE) & set().union(*(exported(t) for t in texts))
        assert not wired, f"{sorted(wired)} are exported now: delete them from PENDING_LIVE"
        assert sum(sample_value(t, "fraud_dead_letters_total") for t in texts) == 2
    finally:
        cluster.stop()
    # Process 0 created the recovery partition; process 1 has none of its own.
    assert list((tmp_path / "flow-0" / "recovery").iterdir())
    assert not list((tmp_path / "flow-1" / "recovery").iterdir())

    # Restart from recovery with more traffic: it resumes, it does not start over.
    texts = restarted(topics, seeded_current, tmp_path, seed=2)
    total = sum(sample_value(t, "fraud_verdicts_total") for t in texts)
    replayed = sum(sample_value(t, "fraud_replayed_verdicts_total") for t in texts)
    # Only the second batch is new; at most the last epoch of the first is replayed.
    assert N_TRANSACTIONS <= total < 2 * N_TRANSACTIONS, total
    assert replayed < N_TRANSACTIONS, replayed
    assert sample_value(texts[0], "fraud_recovery_backup_timestamp_seconds") > 0

    # Process 0's volume lost: the entrypoint restores its recovery partitions from the
    # recovery-backup topic (the copy after the clean stop) and its stores from their
    # changelogs, so the cluster resumes rather than starting over.
    shutil.rmtree(tmp_path / "flow-0")
    texts = restarted(topics, seeded_current, tmp_path, seed=4)
    replayed = sum(sample_value(t, "fraud_replayed_verdicts_total") for t in texts)
    assert replayed < N_TRANSACTIONS, replayed  # not every earlier verdict again
    restores = sum(sample_value(t, "fraud_changelog_restores_total") for t in texts)
    assert restores >= 1  # process 0's stores, rebuilt
    said = (tmp_path / "flow-0.log").read_text()
    assert "holds no copy: new recovery partitions are needed" in said  # the first start
    assert "restored part-0.sqlite3" in said, said[-3000:]
