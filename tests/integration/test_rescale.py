"""Rescale and a lost volume, with changelogs: nothing lost, no score changed (issue 25).

A labelled history (transactions and fraud labels at their label times) is scored by
a cluster of 2 processes; the cluster is stopped and started as 3, then as 4
processes, each time every process on a fresh, empty state volume (Bytewax's
recovery partitions stay on process 0's, as in ``k8s/``); then one process's volume
is deleted and the cluster restarted; then the whole cluster is killed (SIGKILL) and
restarted as 3 processes without process 0's volume (its state and its recovery
partitions: they are restored from the ``recovery-backup`` topic, a copy up to
``FRAUD_RECOVERY_BACKUP_SECONDS`` old, and the inputs are read again from there).
Each start is handed the next part of the history. Every store a process now owns is
rebuilt from its changelog (``FRAUD_CHANGELOG=on``). Every transaction must get one
verdict value, equal to the event-time answer of offline replay (what ``just score-file`` computes).

The quick set (CI) scores 6,000 transactions on the session's broker;
``just rescale`` scores 100,000 on Apache Kafka (``FRAUD_RESCALE=full``).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer

from devkit.broker import free_port
from devkit.process import FlowProcess
from flowkit import Collector, flow_env, offline_scores, topic_set
from tiny_model import tiny_history
from topics.admin import ensure_topics
from topics.contracts import Label, Transaction
from topics.producer import PRODUCER_DEFAULTS, produce_waiting
from topics.settings import KafkaSettings
from training.history import events
from training.simulate import SimConfig

pytestmark = pytest.mark.integration

FULL = os.environ.pop("FRAUD_RESCALE", "").strip().lower() == "full"  # not for the flow
WORLD = (SimConfig(n_transactions=100_000, n_cards=4_000, days=60, seed=26, fraud_rate=0.02)
         if FULL else
         SimConfig(n_transactions=6_000, n_cards=300, days=20, seed=26, fraud_rate=0.03))
TIMEOUT = 900 if FULL else 180
#: ``(processes, volumes lost before the start)`` of each start, one part of the history each;
#: "zero" is process 0's volume, recovery partitions included, after a SIGKILL of every process.
STARTS = ((2, "none"), (3, "all"), (4, "all"), (4, "one"), (3, "zero"))


def _publish(settings: KafkaSettings, part: list[Transaction | Label]) -> None:
    ensure_topics(settings)
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    encode = msgspec.json.encode
    for event in part:
        if isinstance(event, Transaction):
            produce_waiting(producer, settings.topic("transactions"), encode(event),
                            event.card_id.encode())
        else:
            produce_waiting(producer, settings.topic("labels"), encode(event),
                            event.transaction_id.encode())
    assert producer.flush(120) == 0


def _stop(flows: list[FlowProcess]) -> None:
    """Stop the cluster as a whole: SIGINT to every process, then wait for each."""
    for flow in flows:
        if flow.alive:
            flow.proc.send_signal(signal.SIGINT)
    for flow in flows:
        flow.stop(timeout=30)


def test_rescaled_and_restored_clusters_change_no_score(
    kafka: KafkaSettings, tiny_model_dir: Path, tmp_path: Path,
) -> None:
    history = tiny_history(WORLD)
    every = list(events(history))
    txns = [e for e in every if isinstance(e, Transaction)]
    assert sum(isinstance(e, Label) for e in every) > 50
    settings = topic_set(kafka, "rescale")
    cuts = [round(len(every) * k / len(STARTS)) for k in range(len(STARTS) + 1)]
    collector = Collector(settings)
    collector.start()
    volumes = tmp_path / "volumes"
    recovery = tmp_path / "recovery"  # process 0's recovery partitions
    try:
        for run, (processes, lost) in enumerate(STARTS):
            part = every[cuts[run]:cuts[run + 1]]
            _publish(settings, part)
            if lost == "all":
                shutil.rmtree(volumes, ignore_errors=True)
            elif lost == "one":
                shutil.rmtree(volumes / "p1")
            elif lost == "zero":
                shutil.rmtree(volumes / "p0")
                shutil.rmtree(recovery)
            addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
            flows = [FlowProcess(flow_env(settings, tiny_model_dir, volumes / f"p{i}",
                                          FRAUD_CHANGELOG="on", FRAUD_LOG_LEVEL="INFO",
                                          FRAUD_RECOVERY_BACKUP_SECONDS="3"),
                                 tmp_path / f"run{run}-p{i}.log",
                                 recovery_dir=recovery if i == 0 else tmp_path / f"rec{i}",
                                 snapshot_seconds=1, process_id=i, addresses=addresses)
                     for i in range(processes)]
            scored = sum(isinstance(e, Transaction) for e in every[:cuts[run + 1]])
            killed = run + 1 < len(STARTS) and STARTS[run + 1][1] == "zero"
            try:
                collector.wait_for(scored, flows, timeout=TIMEOUT)
                # a snapshot past the last verdict; before the kill, only past the changelog's
                # linger (200 ms), so the recovery backup (every 3 s) is most likely older than
                # the last verdicts. (Killed within the linger, process 0's last changes would
                # be lost with its volume, and its stores would score those transactions again:
                # same scores, a new scored_time. README, Known limitations.)
                time.sleep(1.0 if killed else 2.5)
            finally:
                if killed:
                    for flow in flows:
                        flow.kill()
                _stop(flows)
    finally:
        collector.stop()
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("run*-p*.log")))
    assert "because it is missing" in logs  # the fresh volumes were rebuilt
    restored = (tmp_path / f"run{len(STARTS) - 1}-p0.log").read_text()
    assert "restored part-0.sqlite3" in restored, restored[-2000:]
    outcome = collector.outcome
    assert set(outcome.verdicts) == {t.transaction_id for t in txns}
    (offline,) = offline_scores(every, [tiny_model_dir]).values()
    changed = [tid for tid, copies in outcome.verdicts.items()
               if len({msgspec.json.encode(c) for c in copies}) != 1]  # re-emitted unchanged
    assert not changed, f"{len(changed)} verdicts re-emitted with other bytes, e.g. {changed[:5]}"
    # process 0's lost volume rewound to the backup (taken in the run before), not to the
    # topics' beginning: no verdict of an earlier part was published twice
    early = {e.transaction_id for e in every[:cuts[len(STARTS) - 2]] if isinstance(e, Transaction)}
    again = [tid for tid in early if len(outcome.verdicts[tid]) > 1]
    assert not again, f"{len(again)} verdicts of earlier parts published again, e.g. {again[:3]}"
    run_of = {e.transaction_id: run for run in range(len(STARTS))
              for e in every[cuts[run]:cuts[run + 1]] if isinstance(e, Transaction)}
    wrong = sorted((run_of[tid], tid) for tid, copies in outcome.verdicts.items()
                   if abs(copies[0].score - offline[tid]) > 1e-6)  # the event-time answer
    if wrong:  # where they fall: hours after the first transaction of their part
        at = {t.transaction_id: t.event_time for t in txns}
        first = {run: min(at[e.transaction_id] for e in every[cuts[run]:cuts[run + 1]]
                          if isinstance(e, Transaction)) for run in range(len(STARTS))}
        hours = sorted(round((at[tid] - first[run]) / 3.6e6, 1) for run, tid in wrong)
        wrong = [*wrong[:10], f"hours into their part: {hours[:5]} ... {hours[-5:]}"]
    assert not wrong, f"{len(wrong)} scores differ from offline replay (run, id): {wrong[:10]}"
