"""A crash loop still makes progress: repeated kill -9 soon after each start (issue 23).

Bytewax counts the snapshot interval from the start of an execution, so before
:func:`lifecycle.process.first_snapshot` a flow killed 4 s after each start with
``-s 10`` never committed: every restart began again from the first offset, and
after 8 kills 37 s of verdicts were re-emitted. Here live traffic is fed to the
real ``flows.score`` process, which is killed with SIGKILL ``after_output_s``
after each process's first output, ``kills`` times; a last process then scores
everything, runs past its first execution and stops cleanly. Checked per restart:
the verdicts it re-emitted were all first scored at most ``2 x -s + 5 s`` before it
started (the bound the README states), and each process took a snapshot within a
second of its first output (``fraud_last_snapshot_timestamp_seconds``). Checked
overall: every produced transaction has a verdict, every copy is byte-identical.

The full tier runs the issue's acceptance (8 kills, 4 s, ``-s 10``); the quick set,
run by default, 3 kills 2 s after the first output with ``-s 5``.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from chaos.chaoskit import Feed, Launch, exit_of, settle

from devkit.process import FlowProcess
from flowkit import Collector, Outcome, flow_env, metric, scrape, topic_set, wait_until
from tiny_model import tiny_history
from topics.contracts import Transaction
from topics.settings import KafkaSettings
from training.simulate import SimConfig

pytestmark = [pytest.mark.integration]

WORLD = SimConfig(n_transactions=16_000, n_cards=800, days=20, seed=2323, fraud_rate=0.02)
#: Live traffic (tx/s): a process killed 4 s after its first output has scored ~500 verdicts.
RATE = 120.0
#: "within a second of processing its first batch" (issue 23).
FIRST_SNAPSHOT_S = 1.0


@dataclasses.dataclass
class Life:
    """One flow process of the loop and what its restart re-emitted."""

    started: float
    first_output: float = 0.0
    killed: float | None = None
    reemitted: int = 0
    oldest_age_s: float = 0.0
    """How long before this process started the oldest verdict it re-emitted was scored."""
    first_snapshot_s: float | None = None


@pytest.fixture(scope="module")
def txns() -> list[Transaction]:
    return list(tiny_history(WORLD).transactions)


def copies_total(collector: Collector) -> int:
    """Verdict copies read so far (every re-emitted copy counts)."""
    return sum(len(vs) for vs in list(collector.outcome.verdicts.values()))


def first_snapshot(port: int, first_output: float) -> float | None:
    """Seconds from ``first_output`` (wall s) to the flow's first snapshot after it, if any.

    The flow's ``fraud_last_snapshot_timestamp_seconds`` is set when Bytewax asks the
    stateful steps for their snapshot, at the end of an epoch, just before its commit.
    """
    try:
        last = metric(scrape(port), "fraud_last_snapshot_timestamp_seconds")
    except OSError:
        return None
    return last - first_output if last and last > first_output else None


def crash_loop(kafka: KafkaSettings, txns: list[Transaction], model: Path, work: Path,
               launch: Launch, collect: Callable[[KafkaSettings], Collector], *, kills: int,
               snapshot_s: int, after_output_s: float) -> None:
    """Kill ``kills`` processes ``after_output_s`` after their first output; check the replay."""
    bound_s = 2 * snapshot_s + 5
    settings = topic_set(kafka, f"crash-loop-{kills}x{snapshot_s}")
    env = flow_env(settings, model, work, FRAUD_LOG_LEVEL="INFO")
    collector = collect(settings)
    feed = Feed(settings, txns, per_second=RATE)
    feed.start()
    lives: list[Life] = []
    marks: list[dict[str, int]] = [{}]
    try:
        flow = _loop(settings, env, work, launch, collector, feed, lives, marks, kills,
                     snapshot_s, after_output_s)
    finally:
        feed.stopping.set()  # a failed loop must not leave the feed producing
    sent = feed.stop()
    collector.wait_for(sent, [flow])
    time.sleep(2)  # a late re-emitted copy would arrive with the verdicts around it
    flow.check()  # the last process stays up, past its first execution
    assert "running on with the configured snapshot interval" in flow.log_path.read_text()
    flow.proc.send_signal(signal.SIGINT)  # a clean stop
    code, log = exit_of(flow)
    marks.append(settle(collector))
    outcome = collector.stop()
    _check(outcome, lives, marks, sent, txns, kills, snapshot_s, after_output_s, bound_s)
    assert code == 0, log[-3000:]  # the last process stopped cleanly


def _loop(settings: KafkaSettings, env: dict[str, str], work: Path, launch: Launch,
          collector: Collector, feed: Feed, lives: list[Life], marks: list[dict[str, int]],
          kills: int, snapshot_s: int, after_output_s: float) -> FlowProcess:
    """Start, wait for the first output, kill: ``kills`` times; the last process, running."""
    flow: FlowProcess | None = None
    for i in range(kills + 1):
        before = copies_total(collector)
        flow, port = launch(env, work, snapshot_seconds=snapshot_s, log=f"flow-{i}.log")
        life = Life(time.time())
        lives.append(life)
        wait_until(lambda b=before: copies_total(collector) > b, [flow],
                   f"process {i}'s first output")
        life.first_output = time.time()
        deadline = life.first_output + (after_output_s if i < kills else 2 * snapshot_s)
        while time.time() < deadline:
            flow.check()
            if life.first_snapshot_s is None:
                life.first_snapshot_s = first_snapshot(port, life.first_output)
            time.sleep(0.05)
        if i == kills:
            break
        flow.kill()
        life.killed = time.time()
        marks.append(settle(collector))
        assert feed.is_alive(), "the feed ended inside the loop: raise WORLD.n_transactions"
    assert flow is not None
    return flow


def _check(outcome: Outcome, lives: list[Life], marks: list[dict[str, int]], sent: int,
           txns: list[Transaction], kills: int, snapshot_s: int, after_output_s: float,
           bound_s: int) -> None:
    """Measure what each restart re-emitted, print it, and assert the promises."""
    for k in range(1, len(lives)):  # restart k: what it re-emitted of its predecessors' output
        before, after = marks[k], marks[k + 1]
        again = [t for t, n in before.items() if after.get(t, 0) > n]
        lives[k].reemitted = sum(after[t] - before[t] for t in again)
        if again:
            oldest = min(outcome.verdicts[t][0].scored_time for t in again) / 1000
            lives[k].oldest_age_s = lives[k].started - oldest
    rows = [f"  process {k}: first output {life.first_output - life.started:4.1f} s after "
            f"start, a snapshot {life.first_snapshot_s or -1:4.2f} s after it; re-emitted "
            f"{life.reemitted:5d} verdicts, the oldest scored {life.oldest_age_s:5.1f} s "
            f"before it started" for k, life in enumerate(lives)]
    print(f"\ncrash loop, -s {snapshot_s}, {kills} kills {after_output_s:g} s after the first "
          f"output, {sent} transactions at {RATE:g}/s, bound {bound_s} s:\n" + "\n".join(rows))

    # nothing lost, nothing changed
    assert set(outcome.verdicts) == {t.transaction_id for t in txns[:sent]}
    changed = [t for t, vs in outcome.verdicts.items()
               if len({msgspec.json.encode(v) for v in vs}) != 1]
    assert not changed, f"{len(changed)} transactions got different verdicts: {changed[:3]}"
    assert outcome.duplicates > 0, "no verdict was re-emitted: the kills missed the stream"
    # every restart after a kill committed its first snapshot within a second of its first
    # output (the first process starts on a fresh directory: nothing to protect, full speed)
    late = {k: life.first_snapshot_s for k, life in enumerate(lives) if k > 0
            and (life.first_snapshot_s is None or life.first_snapshot_s > FIRST_SNAPSHOT_S)}
    assert not late, f"first snapshot missing or later than {FIRST_SNAPSHOT_S} s: {late}"
    # every restart re-emitted only verdicts of the bound before it
    far = {k: round(life.oldest_age_s, 1) for k, life in enumerate(lives)
           if life.oldest_age_s > bound_s}
    assert not far, f"restarts re-emitted verdicts older than {bound_s} s: {far}"


# In `just chaos` only (about 50 s): the default run checks the first snapshot with a real
# Bytewax flow killed 2.5 s after its output (tests/unit/test_lifecycle.py).
@pytest.mark.slow
def test_a_short_crash_loop_makes_progress_on_every_restart(
    kafka: KafkaSettings, txns: list[Transaction], tiny_model_dir: Path, tmp_path: Path,
    launch: Launch, collect: Callable[[KafkaSettings], Collector],
) -> None:
    crash_loop(kafka, txns, tiny_model_dir, tmp_path, launch, collect, kills=3, snapshot_s=5,
               after_output_s=2.0)


@pytest.mark.slow
def test_eight_kills_4_s_after_each_first_output_with_s_10_stay_within_25_s(
    kafka: KafkaSettings, txns: list[Transaction], tiny_model_dir: Path, tmp_path: Path,
    launch: Launch, collect: Callable[[KafkaSettings], Collector],
) -> None:
    crash_loop(kafka, txns, tiny_model_dir, tmp_path, launch, collect, kills=8,
               snapshot_s=10, after_output_s=4.0)
