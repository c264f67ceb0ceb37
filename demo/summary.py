"""The summary the demo prints at the end: counts, quality, latency, rules, stages and drift.

The run is OK when every transaction produced has exactly one verdict and
every invalid message sent has its dead letter.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from demo.flowmetrics import StageLatency
from demo.ruleset import RuleSet
from demo.verdicts import Tally, percentiles
from demo.view import Frame, ms
from demo.world import TRUTH_FILE
from topics.contracts import DriftSnapshot
from topics.reader import read_topic
from topics.settings import KafkaSettings

#: Seconds at each end of the live phase compared for latency drift (issue: p99 stays flat).
EDGE_S = 10.0
_W = 24  # label column width


def row(label: str, text: str) -> str:
    """One summary line: the label in a fixed-width column.

    >>> row("verdicts", "10")
    'verdicts                10'
    """
    return f"{label:<{_W}}{text}"


def ok(tally: Tally) -> bool:
    """Every transaction has exactly one verdict; every invalid message one dead letter."""
    return (tally.verdicts == tally.produced
            and tally.transaction_dead_letters == tally.invalid_sent)  # fmt: skip


def lines(frame: Frame, tally: Tally, rule_set: RuleSet | None, live_seconds: float,
          stages: list[StageLatency], drift: list[str]) -> Iterator[str]:
    """The summary, line by line (``frame`` is the last live-view frame)."""
    t = tally
    yield ""
    yield "=== summary ==="
    yield row("transactions produced", f"{t.produced:,} (+{t.invalid_sent} invalid)")
    yield row("verdicts", f"{t.verdicts:,} unique, {t.duplicates} duplicates")
    yield row("missing verdicts", f"{t.produced - t.verdicts:,}")
    by_reason = ", ".join(f"{k} {v}" for k, v in t.dead_letters.most_common())
    yield row("dead letters", f"{t.transaction_dead_letters} (sent {t.invalid_sent} invalid)"
              + (f": {by_reason}" if by_reason else ""))  # fmt: skip
    if t.other_dead_letters:
        yield row("other dead letters", f"{t.other_dead_letters} (rules, lists or labels refused)")
    yield row("decisions", ", ".join(f"{k} {v:,}" for k, v in sorted(t.decisions.items())))
    fraud = t.fraud_caught + t.fraud_missed
    yield row("fraud caught / missed", f"{t.fraud_caught} / {t.fraud_missed}"
              + (f" ({t.fraud_caught / fraud:.0%} recall)" if fraud else ""))  # fmt: skip
    yield row("false alarms", f"{t.false_alarms:,} legitimate transactions flagged")
    yield from _rules(t, rule_set)
    yield from _latency(frame, t, live_seconds)
    yield from _stages(stages)
    yield from drift
    yield row("result", "OK: every transaction has exactly one verdict" if ok(t)
              else "INCOMPLETE: see the counts above")  # fmt: skip


def _rules(t: Tally, rule_set: RuleSet | None) -> Iterator[str]:
    if rule_set is not None:
        versions = ", ".join(sorted(t.rule_set_versions)) or "none seen"
        yield row("rule set", f"{len(rule_set.rules)} rules, {len(rule_set.entries)} list "
                  f"entries from {rule_set.source.name} + demo blocklist; version "
                  f"{rule_set.version} (verdicts name: {versions})")  # fmt: skip
    total = sum(r.hits for r in t.rule_hits.values())
    yield row("rule hits", f"{total:,} on {t.verdicts:,} verdicts; {t.changed_by_rules:,} "
              "decisions changed by a rule")  # fmt: skip
    for rule_id, r in sorted(t.rule_hits.items(), key=lambda kv: (-kv[1].hits, kv[0])):
        share = f" ({r.fraud / r.hits:.0%})" if r.hits else ""
        yield row("", f"{rule_id:<32} {r.mode:<6} {r.action:<8} {r.hits:>7,} hits, "
                  f"{r.fraud:,} on fraud{share}")  # fmt: skip
    if rule_set is not None:
        silent = sorted(set(rule_set.modes) - set(t.rule_hits))
        if silent:
            yield row("", "no hits: " + ", ".join(silent))


def _latency(frame: Frame, t: Tally, live_seconds: float) -> Iterator[str]:
    lat = t.latency()
    if not lat.size:
        return
    p50, p99, p999 = percentiles(lat, 50, 99, 99.9)
    yield row("live latency", f"p50 {ms(p50)}, p99 {ms(p99)}, p99.9 {ms(p999)}, max "
              f"{ms(float(lat.max()))} (produce -> verdict consumed, {lat.size:,} live "
              "verdicts)")  # fmt: skip
    start = t.live_start
    first = t.latency(since=start, until=start + EDGE_S)
    end = t.live_seen_at[-1] if t.live_seen_at else start
    last = t.latency(since=end - EDGE_S)
    if live_seconds >= 2 * EDGE_S and first.size and last.size:
        (p99_first,), (p99_last,) = percentiles(first, 99), percentiles(last, 99)
        assert p99_first is not None and p99_last is not None
        yield row("latency flat?", f"p99 first {EDGE_S:.0f} s {ms(p99_first)}, last "
                  f"{EDGE_S:.0f} s {ms(p99_last)} ({p99_last / max(p99_first, 1e-9):.2f}x)")
    yield row("live throughput", f"{lat.size / max(live_seconds, 1e-9):,.0f} verdicts/s, "
              f"offered {frame.offered_rate:,.0f}/s")  # fmt: skip


def _stages(stages: list[StageLatency]) -> Iterator[str]:
    if not stages:
        yield row("stage latency", "not exported by this flow (fraud_stage_seconds)")
        return
    yield row("stage latency", "p50 / p99 since the live phase (flow's fraud_stage_seconds, "
              "sampled)")  # fmt: skip
    for s in stages:
        yield row("", f"{s.stage:<9} {ms(s.p50_ms):>10} / {ms(s.p99_ms):>10}  "
                  f"({s.samples:,} samples)")  # fmt: skip


def read_drift(settings: KafkaSettings, quiet_seconds: float = 2.0) -> list[DriftSnapshot]:
    """Every snapshot on the ``drift`` topic so far."""
    records = read_topic(settings, settings.topic("drift"), timeout=quiet_seconds)
    return [msgspec.json.decode(r.value, type=DriftSnapshot) for r in records if r.value]


def drift_lines(settings: KafkaSettings, sample_dir: str) -> list[str]:
    """Summary lines of the drift snapshots: windows, alerts, label feedback."""
    from collections import Counter

    snaps = read_drift(settings)
    if not snaps:
        return [row("drift snapshots", "none yet (a window closes a simulated day after it)")]
    alerted = Counter(a for s in snaps for a in s.alerts)
    out = [row("drift snapshots", f"{len(snaps)} daily windows on {settings.topic('drift')}; "
               "PSI alerts: " + (", ".join(f"{k} in {v}" for k, v in alerted.most_common(4))
                                 or "none"))]  # fmt: skip
    caught = sum(s.labels.fraud_declined + s.labels.fraud_reviewed for s in snaps if s.labels)
    missed = sum(s.labels.fraud_approved for s in snaps if s.labels)
    if caught + missed:
        out.append(row("label feedback", f"{caught} labelled frauds flagged, {missed} missed "
                       f"({caught / (caught + missed):.0%} recall, from the labels topic); "
                       "precision needs legit labels too"))  # fmt: skip
    out.append(row("drift report", f"just drift-report --labels {TRUTH_FILE} "
                   f"(sample in {sample_dir})"))  # fmt: skip
    return out
