"""kill -9 at random points of a 100,000-transaction stream with labels (issue 14, items 5-6).

One simulated world (about 100,000 transactions over 20 days, fraud and a tenth
of the legitimate transactions labelled, labels produced where their
``label_time`` falls) is scored twice by the real ``flows.score`` process on the
embedded broker: once without faults, once killed with SIGKILL at ten random
points and resumed from recovery each time. The killed run must lose no
verdict, change none (every re-emitted copy byte-identical), score exactly as
offline replay of its own merchant order, and publish the same drift windows as
the fault-free run: the same counts, each window's decisions and label feedback
exactly what that run's verdicts and the labels imply, the same histograms of
the order-independent features, every window complete and published with one
content. The integration test (tests/integration/test_score_flow.py) kills a
20,000-transaction stream 3 times; this one is the long version with labels and drift.

The replay each kill causes is measured: verdicts re-emitted, the input offsets
they span and how long before the kill the oldest of them was scored. The
printed ``replay bound`` line is the figure the README quotes;
``CHAOS_SNAPSHOT_SECONDS`` (default 1) sets the flow's ``-s``.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from chaos.chaoskit import (
    DAY,
    DriftReader,
    LabelledStream,
    drift_table,
    implied_drift,
    labelled_stream,
    percentile,
    produce,
    settle,
    snapshot_age,
    start,
)

from devkit.process import FlowProcess
from flowkit import (
    Collector,
    Outcome,
    flow_env,
    input_positions,
    offline_scores,
    topic_set,
)
from state.spec import FEATURE_NAMES
from tiny_model import tiny_history
from topics.contracts import DriftSnapshot
from topics.settings import KafkaSettings
from training.simulate import SimConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: ``CHAOS_TRANSACTIONS`` shrinks the world (and the card count with it) for a quicker look.
SIZE = int(os.environ.get("CHAOS_TRANSACTIONS", "100000"))
WORLD = SimConfig(n_transactions=SIZE, n_cards=max(200, SIZE // 50), days=20, seed=14,
                  fraud_rate=0.02)
KILLS = 10
SNAPSHOT_SECONDS = int(os.environ.get("CHAOS_SNAPSHOT_SECONDS", "1"))
DRIFT_ENV = {"FRAUD_DRIFT_WINDOW_SECONDS": str(DAY // 1000), "FRAUD_DRIFT_GRACE_SECONDS": "0",
             "FRAUD_DRIFT_FLUSH_SECONDS": "3600", "FRAUD_SAMPLE_RATE": "0"}
#: Features whose histograms do not depend on the order the merchant stage saw merchants in:
#: the card group (one card's records, in offset order) and the transaction's own fields.
ORDER_FREE = tuple(n for n in FEATURE_NAMES if not n.startswith("merchant_"))
TIMEOUT = 900


@dataclasses.dataclass
class Kill:
    """One SIGKILL and the replay its restart caused."""

    at_verdicts: int
    at: float
    snapshot_age_s: float | None
    reemitted: int = 0
    span_offsets: int = 0
    replayed_s: float = 0.0


@dataclasses.dataclass
class Run:
    """What one run of the stream published."""

    outcome: Outcome
    drift: list[DriftSnapshot]
    state_dir: Path
    kills: list[Kill]
    seconds: float


@pytest.fixture(scope="module")
def stream() -> LabelledStream:
    return labelled_stream(tiny_history(WORLD))


def _run(kafka: KafkaSettings, stream: LabelledStream, model: Path, work: Path, name: str,
         kill_points: list[int]) -> Run:
    """Produce the stream to a fresh topic set and score it, killing at ``kill_points``."""
    settings = topic_set(kafka, name)
    produce(settings, stream.events)
    env = flow_env(settings, model, work, **DRIFT_ENV)
    collector, drift = Collector(settings), DriftReader(settings)
    collector.start()
    drift.start()
    kills: list[Kill] = []
    marks: list[dict[str, int]] = []
    started = time.time()
    deadline = started + TIMEOUT

    def wait(done: Callable[[], bool], flow: FlowProcess, what: str) -> None:
        while not done():
            flow.check()
            assert time.time() < deadline, f"{name}: timed out waiting for {what}"
            time.sleep(0.05)

    try:
        for point in kill_points:
            flow, port = start(env, work, snapshot_seconds=SNAPSHOT_SECONDS)
            # each run makes progress of its own before it dies, wherever the last one got
            target = min(len(stream.txns), max(point, len(collector.outcome.verdicts) + 300))
            wait(lambda t=target: len(collector.outcome.verdicts) >= t, flow, f"{target} verdicts")
            age = snapshot_age(port)
            flow.kill()
            kills.append(Kill(len(collector.outcome.verdicts), time.time(), age))
            marks.append(settle(collector))
            print(f"{name}: killed at {kills[-1].at_verdicts} verdicts "
                  f"({sum(marks[-1].values())} copies), {time.time() - started:.0f} s")
        flow, _ = start(env, work, snapshot_seconds=SNAPSHOT_SECONDS)
        wait(lambda: len(collector.outcome.verdicts) >= len(stream.txns), flow, "every verdict")
        wait(lambda: drift.has_window(stream.last_window), flow, "the last drift window")
        time.sleep(2)  # late copies
        flow.stop(timeout=30)
        marks.append(settle(collector))
    finally:
        collector.stop()
        snapshots = drift.stop()
    seconds = time.time() - started
    _measure(settings, collector.outcome, kills, marks)
    return Run(collector.outcome, snapshots, work / "state", kills, seconds)


def _measure(settings: KafkaSettings, outcome: Outcome, kills: list[Kill],
             marks: list[dict[str, int]]) -> None:
    """Per kill: the verdicts its restart re-emitted, their offsets and age."""
    if not kills:
        return
    positions = input_positions(settings, len(outcome.verdicts))
    for i, kill in enumerate(kills):
        before, after = marks[i], marks[i + 1]
        again = [t for t, n in before.items() if after.get(t, 0) > n]
        kill.reemitted = sum(after[t] - before[t] for t in again)
        by_partition: dict[int, list[int]] = defaultdict(list)
        for t in again:
            if t in positions:
                p, offset = positions[t]
                by_partition[p].append(offset)
        kill.span_offsets = sum(max(o) - min(o) + 1 for o in by_partition.values())
        if again:
            oldest = min(outcome.verdicts[t][0].scored_time for t in again) / 1000
            kill.replayed_s = max(0.0, kill.at - oldest)


@pytest.fixture(scope="module")
def fault_free(kafka: KafkaSettings, stream: LabelledStream, tiny_model_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Run:
    work = tmp_path_factory.mktemp("fault-free")
    return _run(kafka, stream, tiny_model_dir, work, "chaos-fault-free", [])


def test_kill_9_at_ten_random_points_changes_no_verdict_no_drift_window_no_label_join(
    kafka: KafkaSettings, stream: LabelledStream, tiny_model_dir: Path, fault_free: Run,
    tmp_path: Path, record_property: pytest.RecordProperty,
) -> None:
    n = len(stream.txns)
    rng = random.Random(1414)
    points = sorted(rng.sample(range(n // 50, n * 19 // 20), KILLS))
    run = _run(kafka, stream, tiny_model_dir, tmp_path, "chaos-kill9", points)
    ids = {t.transaction_id for t in stream.txns}

    # 0 lost, 0 changed, equal to offline replay in the order this run's merchants saw them
    assert set(run.outcome.verdicts) == ids == set(fault_free.outcome.verdicts)
    assert fault_free.outcome.duplicates == 0
    changed = [t for t, vs in run.outcome.verdicts.items()
               if len({msgspec.json.encode(v) for v in vs}) != 1]
    assert not changed, f"{len(changed)} transactions got different verdicts, e.g. {changed[:3]}"
    for result in (fault_free, run):
        (offline,) = offline_scores(stream.events, [tiny_model_dir]).values()
        off = {t: (vs[0].score, offline[t]) for t, vs in result.outcome.verdicts.items()
               if abs(vs[0].score - offline[t]) > 1e-6}
        assert not off, (f"{'fault-free' if result is fault_free else 'killed'} run: {len(off)} "
                         f"scores differ from offline replay (stream, replay): "
                         f"{sorted(off.items())[:5]}")
    assert run.outcome.duplicates > 0, "no verdict was re-emitted: recovery did not run"
    assert sum(k.reemitted for k in run.kills) == run.outcome.duplicates

    # drift: every window complete, published with one content, the counts of a fault-free run
    table, published = drift_table(run.drift, ORDER_FREE)
    expected_table, _ = drift_table(fault_free.drift, ORDER_FREE)
    assert set(table) == set(expected_table)
    assert all(f["complete"] and f["partitions"] == 8 for f in table.values())
    for facts_of, result in ((table, run), (expected_table, fault_free)):
        decision = {t: vs[0].decision for t, vs in result.outcome.verdicts.items()}
        implied = implied_drift(stream, decision)
        for (window, _), facts in facts_of.items():
            count, decisions, matrix = implied.pop(window, (0, {}, {}))
            assert facts["count"] == count, window
            assert facts["decisions"] == decisions, window
            assert facts["labels"] == {k: v for k, v in matrix.items() if v}, window
            assert facts["labels_unknown"] == 0, window
        assert not implied, f"windows never published: {sorted(implied)}"
    for key, facts in table.items():
        assert facts["count"] == expected_table[key]["count"], key
        assert facts["psi"] == expected_table[key]["psi"], key  # same rows counted
    decided_apart = sum(vs[0].decision != fault_free.outcome.verdicts[t][0].decision
                        for t, vs in run.outcome.verdicts.items())

    # the replay each kill caused
    rows = [f"  kill {i + 1:2d} at {k.at_verdicts:6d} verdicts: re-emitted {k.reemitted:6d} "
            f"verdicts over {k.span_offsets:6d} offsets, oldest scored {k.replayed_s:5.1f} s "
            f"before the kill (snapshot age metric {k.snapshot_age_s or 0:.1f} s)"
            for i, k in enumerate(run.kills)]
    worst_n = max(k.reemitted for k in run.kills)
    worst_s = max(k.replayed_s for k in run.kills)
    summary = (f"replay bound (-s {SNAPSHOT_SECONDS}, {n} transactions, {KILLS} kills): at most "
               f"{worst_n} verdicts re-emitted per kill (p50 "
               f"{percentile([k.reemitted for k in run.kills], 0.5):.0f}), from at most "
               f"{worst_s:.1f} s before the kill (p50 "
               f"{percentile([k.replayed_s for k in run.kills], 0.5):.1f} s); "
               f"{run.outcome.duplicates} duplicates in all; drift windows republished: "
               f"{sum(v - 1 for v in published.values())}; decisions apart from the fault-free "
               f"run (merchant order): {decided_apart}; fault-free {fault_free.seconds:.0f} s, "
               f"killed run {run.seconds:.0f} s")
    print("\n" + "\n".join(rows) + "\n" + summary)
    record_property("replay_bound", summary)
    record_property("kills", [dataclasses.asdict(k) for k in run.kills])
