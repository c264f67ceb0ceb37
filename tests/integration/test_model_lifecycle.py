"""Model lifecycle in the real flow on the embedded broker: hot reload, refusal, shadow.

The flow serves ``models/current`` of a registry and checks it every second.
The two models are really different (trained on two tiny worlds), so each
verdict is checked against the offline score of the version it names. Model
changes happen while transactions keep arriving: the stream trickles until the
flow shows it saw the change.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgspec
import numpy as np
import onnx
import pytest
from confluent_kafka import Producer

from devkit.broker import free_port
from devkit.process import FlowProcess
from export.model import MODEL_FILE, load_model
from export.registry import CURRENT, ModelRegistry
from flowkit import (
    PARTITIONS,
    Collector,
    Outcome,
    flow_env,
    input_positions,
    metric,
    offline_scores,
    scrape,
    topic_set,
    wait_until,
)
from tiny_model import TINY_WORLD, publish_tiny, tiny_history, train_tiny
from topics.admin import ensure_topics
from topics.producer import PRODUCER_DEFAULTS, produce_waiting
from topics.settings import KafkaSettings
from training.history import History
from training.simulate import SimConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = SimConfig(n_transactions=4_000, n_cards=200, days=20, seed=41, fraud_rate=0.03)
FIRST = 1_000  # scored before any model change
TRICKLE = 5  # transactions per 50 ms while waiting for the flow to see a change

Scores = dict[str, dict[str, float]]


@pytest.fixture(scope="module")
def history() -> History:
    return tiny_history(WORLD)


@pytest.fixture(scope="module")
def challenger_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second real model, trained on another tiny world: another version, other scores."""
    root = tmp_path_factory.mktemp("challenger")
    other = tiny_history(dataclasses.replace(TINY_WORLD, seed=6))
    return publish_tiny(root / "models", train_tiny(root / "run", other))


def offline(history: History, models: Sequence[Path], n: int | None = None) -> Scores:
    """The event-time answer for the first ``n`` transactions, by model version."""
    return offline_scores(history.transactions[:n], models)


def publish_copy(registry: ModelRegistry, source: Path, version: str | None = None,
                 make_current: bool = True, **props: str) -> str:
    """Publish ``source``'s model as ``version``, with metadata ``props`` replaced."""
    proto = onnx.load(str(source / MODEL_FILE))
    meta = {p.key.removeprefix("fraudstream."): p for p in proto.metadata_props}
    for key, value in {**props, **({"model_version": version} if version else {})}.items():
        meta[key].value = value
    version = meta["model_version"].value
    registry.publish(version, proto.SerializeToString(), make_current=make_current)
    return version


class Feeder:
    """Produces a history's transactions (key: card id) to a fresh topic set, a slice at a time."""

    def __init__(self, settings: KafkaSettings, history: History) -> None:
        ensure_topics(settings)
        self.producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
        self.topic = settings.topic("transactions")
        self.ids = [t.transaction_id for t in history.transactions]
        self._txns = history.transactions
        self.sent = 0

    def send(self, n: int | None = None) -> None:
        """Produce the next ``n`` transactions (None: the rest) and wait for the broker."""
        end = len(self._txns) if n is None else self.sent + n
        if end > len(self._txns):
            pytest.fail("the stream ran out before the flow saw the change")
        for txn in self._txns[self.sent:end]:
            produce_waiting(self.producer, self.topic, msgspec.json.encode(txn),
                            txn.card_id.encode())
        assert self.producer.flush(30) == 0
        self.sent = end

    def trickle_until(self, done: Callable[[], bool], flows: Sequence[FlowProcess],
                      what: str) -> None:
        """Keep transactions flowing until ``done()``."""
        wait_until(done, flows, what, tick=lambda: self.send(TRICKLE))


@contextmanager
def scoring(settings: KafkaSettings, env: dict[str, str],
            work: Path) -> Iterator[tuple[FlowProcess, Collector]]:
    """The flow and a collector of its outputs, stopped on exit."""
    collector = Collector(settings)
    collector.start()
    flow = FlowProcess(env, work / "flow.log")
    try:
        yield flow, collector
    finally:
        flow.stop()
        collector.stop()


def log_has(log: Path, text: str) -> Callable[[], bool]:
    """Whether ``log`` contains ``text`` yet."""
    return lambda: text in log.read_text()


def only_verdicts(outcome: Outcome, ids: list[str]) -> dict[str, str]:
    """Model version of each transaction's verdict; fails unless exactly one per id."""
    assert sorted(outcome.verdicts) == sorted(ids)
    assert outcome.duplicates == 0
    return {tid: vs[0].model_version for tid, vs in outcome.verdicts.items()}


def assert_scored_by_named_version(outcome: Outcome, offline: Scores) -> None:
    """Each score is the offline score, under the model its verdict names."""
    for tid, (v,) in outcome.verdicts.items():
        assert abs(v.score - offline[v.model_version][tid]) <= 1e-6, (tid, v.model_version)


def test_hot_reload_mid_stream_scores_each_transaction_once_by_one_version(
    kafka: KafkaSettings, history: History, tiny_model_dir: Path, challenger_dir: Path,
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(tmp_path / "models")
    old = publish_copy(registry, tiny_model_dir)
    settings = topic_set(kafka, "reload")
    feeder = Feeder(settings, history)
    port = free_port()
    env = flow_env(settings, registry.root / CURRENT, tmp_path, FRAUD_MODEL_RELOAD_SECONDS="1",
                   FRAUD_METRICS_PORT=str(port), FRAUD_LOG_LEVEL="INFO")
    with scoring(settings, env, tmp_path) as (flow, collector):
        feeder.send(FIRST)
        collector.wait_for(FIRST, [flow])
        new = publish_copy(registry, challenger_dir)  # what `just export-onnx` does
        feeder.trickle_until(lambda: new in collector.versions, [flow], f"a verdict by {new}")
        observed = feeder.sent
        feeder.send()
        collector.wait_for(len(history), [flow])
        samples = scrape(port)

    outcome = collector.outcome
    versions = only_verdicts(outcome, feeder.ids)
    assert set(versions.values()) == {old, new}
    scores = offline(history, [tiny_model_dir, challenger_dir])
    differ = sum(abs(scores[old][t] - scores[new][t]) > 1e-4 for t in feeder.ids)
    assert differ > len(feeder.ids) / 2, "the two models must score differently"
    assert_scored_by_named_version(outcome, scores)
    # Per input partition, in offset order: old, then new, switching exactly once.
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for tid, (partition, offset) in input_positions(settings, len(feeder.ids)).items():
        by_partition[partition].append((offset, versions[tid]))
    switch_at = {}
    for partition, seq in sorted(by_partition.items()):
        in_order = [v for _, v in sorted(seq)]
        k = in_order.count(old)
        assert in_order == [old] * k + [new] * (len(in_order) - k), partition
        switch_at[partition] = k
    assert len(switch_at) == PARTITIONS
    # Produced before the swap: old; produced once the flow showed the new version: new.
    assert {versions[t] for t in feeder.ids[:FIRST]} == {old}
    assert {versions[t] for t in feeder.ids[observed:]} == {new}
    # One process, one switch point: every old verdict was scored before every new one.
    times = {v: [vs[0].scored_time for vs in outcome.verdicts.values() if vs[0].model_version == v]
             for v in (old, new)}
    assert max(times[old]) <= min(times[new])
    assert f"champion model {new} now serving (was {old})" in flow.log_path.read_text()
    assert metric(samples, "fraud_model_reloads_total", role="champion", outcome="loaded") == 1
    assert metric(samples, "fraud_model_reloads_total", outcome="refused") == 0
    assert metric(samples, "fraud_model_info", version=new) == 1
    for v in (old, new):
        assert metric(samples, "fraud_verdicts_total", model_version=v) == len(times[v])
    print(f"\n{len(times[old])} verdicts by {old}, then {len(times[new])} by {new}; "
          f"first offset by {new} per partition: {switch_at}")


def test_corrupt_or_mismatched_model_is_refused_while_scoring_continues(
    kafka: KafkaSettings, history: History, tiny_model_dir: Path, tmp_path: Path,
) -> None:
    registry = ModelRegistry(tmp_path / "models")
    old = publish_copy(registry, tiny_model_dir)
    publish_copy(registry, tiny_model_dir, "v-other-spec", make_current=False,
                 feature_spec_version="v0")
    truncated = (tiny_model_dir / MODEL_FILE).read_bytes()
    registry.path("v-truncated").mkdir()  # an interrupted copy: half a real model file
    (registry.path("v-truncated") / MODEL_FILE).write_bytes(truncated[:len(truncated) // 2])
    settings = topic_set(kafka, "refuse")
    feeder = Feeder(settings, history)
    port = free_port()
    current = registry.root / CURRENT
    env = flow_env(settings, current, tmp_path, FRAUD_MODEL_RELOAD_SECONDS="1",
                   FRAUD_METRICS_PORT=str(port))
    refusals = []
    with scoring(settings, env, tmp_path) as (flow, collector):
        feeder.send(FIRST)
        collector.wait_for(FIRST, [flow])
        for version, reason in [("v-truncated", "not a readable ONNX model"),
                                ("v-other-spec", "was trained on feature spec 'v0'")]:
            registry.set_current(version)
            line = (f"champion model at {current} refused, still serving {old}: "
                    f"{registry.path(version).resolve() / MODEL_FILE}: ")
            feeder.trickle_until(log_has(flow.log_path, line), [flow], f"refusal of {version}")
            refusals.append(next(t for t in flow.log_path.read_text().splitlines() if line in t))
            assert reason in refusals[-1]
        feeder.send()
        collector.wait_for(len(history), [flow])
        samples = scrape(port)
        assert flow.alive

    versions = only_verdicts(collector.outcome, feeder.ids)
    assert set(versions.values()) == {old}
    assert_scored_by_named_version(
        collector.outcome, offline(history, [tiny_model_dir]))
    assert metric(samples, "fraud_model_reloads_total", role="champion", outcome="refused") == 2
    assert metric(samples, "fraud_model_reloads_total", outcome="loaded") == 0
    assert metric(samples, "fraud_model_info", version=old) == 1
    print("\n" + "\n".join(refusals))


def test_shadow_challenger_rides_along_without_changing_decisions(
    kafka: KafkaSettings, history: History, tiny_model_dir: Path, challenger_dir: Path,
    tmp_path: Path,
) -> None:
    settings = topic_set(kafka, "shadow")
    feeder = Feeder(settings, history)
    port = free_port()
    env = flow_env(settings, tiny_model_dir, tmp_path, FRAUD_METRICS_PORT=str(port),
                   FRAUD_SHADOW_MODEL_PATH=str(challenger_dir))
    n = 1_500
    with scoring(settings, env, tmp_path) as (flow, collector):
        feeder.send(n)
        collector.wait_for(n, [flow])
        samples = scrape(port)

    champion, shadow = load_model(tiny_model_dir), load_model(challenger_dir)
    assert set(only_verdicts(collector.outcome, feeder.ids[:n]).values()) == {champion.version}
    scores = offline(history, [tiny_model_dir, challenger_dir], n)
    assert_scored_by_named_version(collector.outcome, scores)
    verdicts = [vs[0] for vs in collector.outcome.verdicts.values()]
    assert {v.shadow_model_version for v in verdicts} == {shadow.version}
    for v in verdicts:
        assert v.shadow_score is not None
        assert abs(v.shadow_score - scores[shadow.version][v.transaction_id]) <= 1e-6
    scores = np.array([v.score for v in verdicts], dtype=np.float32)
    shadow_scores = np.array([v.shadow_score for v in verdicts], dtype=np.float32)
    # The champion decides, exactly as it would alone; the shadow's decision only rides along.
    assert [v.decision for v in verdicts] == champion.decide(scores).tolist()
    assert [v.shadow_decision for v in verdicts] == shadow.decide(shadow_scores).tolist()
    agree = sum(v.decision == v.shadow_decision for v in verdicts)
    assert 0 < agree < n, "the two models should disagree on some verdicts"
    assert metric(samples, "fraud_shadow_decisions_total", agree="true") == agree
    assert metric(samples, "fraud_shadow_decisions_total", agree="false") == n - agree
