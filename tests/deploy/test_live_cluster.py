"""The image's entrypoint (docker/fraud-flow.sh) as a 2-process cluster on the embedded broker.

Runs what compose and the StatefulSet run, minus the container: two processes with
their own data directories, recovery partitions created by process 0 only, metrics
on their own ports. Checks that both serve ``/metrics``, that every metric the
Grafana dashboard and the alert rules query is really exported, that verdicts come
out, and that the cluster resumes from recovery after a restart.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from deploy.queries import ROOT, alert_rules, dashboard_queries, metric_names
from topics.admin import ensure_topics
from topics.broker import EmbeddedBroker, free_port
from topics.produce import PRODUCER_DEFAULTS
from topics.settings import KafkaSettings
from topics.synthetic import synthetic_transactions

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
            "FLOW_PROCESS_ID": str(i),
            "FLOW_ADDRESSES": addresses,
            "FLOW_RECOVERY_DIR": str(data / "recovery"),
            "FLOW_SNAPSHOT_SECONDS": "1",
        }
        log = work / f"flow-{i}.log"
        logs.append(log)
        with log.open("ab") as out:
            procs.append(subprocess.Popen(
                ["sh", str(ENTRYPOINT)], env=env, stdout=out, stderr=subprocess.STDOUT,
            ))  # stopped in the test's finally blocks
    return Cluster(procs, ports, logs)


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


def produce(settings: KafkaSettings, seed: int) -> None:
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    topic = settings.topic("transactions")
    import msgspec

    for txn in synthetic_transactions(N_TRANSACTIONS, seed=seed, cards=100):
        producer.produce(topic, key=txn.card_id.encode(), value=msgspec.json.encode(txn))
    producer.produce(topic, key=b"card-x", value=b'{"transaction_id": "broken"}')
    assert producer.flush(30) == 0


def wait_for(cluster: Cluster, verdicts: int, needed: set[str]) -> list[str]:
    """Scrape both processes until they report ``verdicts`` in all and export ``needed``."""
    deadline = time.time() + TIMEOUT
    while True:
        cluster.check()
        texts = [cluster.scrape(i) for i in range(2)]
        if all(texts):
            scraped = [t for t in texts if t]
            total = sum(sample_value(t, "fraud_verdicts_total") for t in scraped)
            found = set().union(*(exported(t) for t in scraped))
            if total >= verdicts and needed <= found:
                return scraped
        assert time.time() < deadline, (
            f"no {verdicts} verdicts and {sorted(needed)} within {TIMEOUT}s\n{cluster.log_tail()}")
        time.sleep(0.5)


def test_two_process_cluster_from_the_entrypoint_exports_every_queried_metric(
    topics: KafkaSettings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    queried = {m for q in dashboard_queries() for m in metric_names(q)}
    queried |= {m for rule in alert_rules() for m in metric_names(rule["expr"])}
    queried.discard("up")  # Prometheus's own series for every target
    produce(topics, seed=1)
    cluster = start_cluster(topics, tiny_model_dir, tmp_path)
    try:
        texts = wait_for(cluster, N_TRANSACTIONS, queried)
        assert all("fraud_model_info{" in t for t in texts)  # both processes serve metrics
        assert sum(sample_value(t, "fraud_dead_letters_total") for t in texts) == 1
    finally:
        cluster.stop()
    # Process 0 created the recovery partition; process 1 has none of its own.
    assert list((tmp_path / "flow-0" / "recovery").iterdir())
    assert not list((tmp_path / "flow-1" / "recovery").iterdir())

    # Restart from recovery with more traffic: it resumes, it does not start over.
    produce(topics, seed=2)
    cluster = start_cluster(topics, tiny_model_dir, tmp_path)
    try:
        texts = wait_for(cluster, N_TRANSACTIONS, set())
        time.sleep(2)
        texts = [t for t in (cluster.scrape(i) for i in range(2)) if t]
        total = sum(sample_value(t, "fraud_verdicts_total") for t in texts)
        replayed = sum(sample_value(t, "fraud_replayed_verdicts_total") for t in texts)
        # Only the second batch is new; at most the last epoch of the first is replayed.
        assert N_TRANSACTIONS <= total < 2 * N_TRANSACTIONS, total
        assert replayed < N_TRANSACTIONS, replayed
    finally:
        cluster.stop()
