"""The live view: a ``rich`` table redrawn in place on a terminal, one plain line a tick otherwise.

Each tick the demo takes a :class:`Frame` (what the tally, the flow's metrics and
the traffic say now) and shows it: throughput, end-to-end latency p50/p99 over the
last :data:`WINDOW_S` seconds and since the live phase started, decisions, fraud
caught and missed against the simulator's truth, dead letters, rule hits, and the
flow's per-stage latency when it exports ``fraud_stage_seconds``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import Counter
from types import TracebackType
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table

from demo.flowmetrics import StageLatency, StageWatch
from demo.verdicts import Tally, percentiles

#: Seconds of the "last seconds" latency columns.
WINDOW_S = 10.0
#: Rules shown in the live table (the most hits first); the summary lists them all.
TOP_RULES = 6


@dataclasses.dataclass(frozen=True)
class Latency:
    """End-to-end latency percentiles (ms) over some verdicts; None when there were none."""

    p50: float | None
    p99: float | None
    count: int

    @classmethod
    def of(cls, values_ms: object) -> Latency:
        """From an array of latencies in ms."""
        import numpy as np

        values = np.asarray(values_ms, dtype=np.float64)
        p50, p99 = percentiles(values, 50, 99)
        return cls(p50, p99, int(values.size))


@dataclasses.dataclass(frozen=True)
class RuleRow:
    """One rule's hits so far; ``fraud`` of them on fraudulent transactions."""

    rule_id: str
    mode: str
    action: str
    hits: int
    fraud: int


@dataclasses.dataclass(frozen=True)
class Frame:
    """What the demo shows at one moment."""

    elapsed: float  # s since the demo started streaming
    phase: str  # warm-up, settling, live, done, draining
    live_elapsed: float | None  # s since the live phase started
    duration: float  # s of live traffic asked for
    offered_rate: float  # live transactions/s asked for
    produced: int
    invalid_sent: int
    verdicts: int
    verdict_rate: float  # verdicts/s since the previous frame
    duplicates: int
    window: Latency  # the last WINDOW_S seconds of live verdicts
    live: Latency  # every live verdict so far
    decisions: Counter[str]
    fraud_caught: int
    fraud_missed: int
    false_alarms: int
    dead_letters: int
    other_dead_letters: int
    rules: list[RuleRow]
    changed_by_rules: int
    stages_window: list[StageLatency]
    stages_live: list[StageLatency]

    @property
    def recall(self) -> float | None:
        """Share of fraudulent transactions flagged (review or decline)."""
        fraud = self.fraud_caught + self.fraud_missed
        return self.fraud_caught / fraud if fraud else None


def take_frame(tally: Tally, watch: StageWatch, *, phase: str, started: float, duration: float,
               offered_rate: float, verdict_rate: float, now: float | None = None) -> Frame:
    """A :class:`Frame` of ``tally`` and the flow's latest metrics at ``now``."""
    now = time.time() if now is None else now
    live_start = tally.live_start or None
    rules = sorted((RuleRow(rule_id, r.mode, r.action, r.hits, r.fraud)
                    for rule_id, r in list(tally.rule_hits.items())),
                   key=lambda r: (-r.hits, r.rule_id))  # fmt: skip
    return Frame(
        elapsed=now - started, phase=phase,
        live_elapsed=None if live_start is None else now - live_start,
        duration=duration, offered_rate=offered_rate,
        produced=tally.produced, invalid_sent=tally.invalid_sent, verdicts=tally.verdicts,
        verdict_rate=verdict_rate, duplicates=tally.duplicates,
        window=Latency.of(tally.latency(since=now - WINDOW_S)),
        live=Latency.of(tally.latency()),
        decisions=Counter(tally.decisions),
        fraud_caught=tally.fraud_caught, fraud_missed=tally.fraud_missed,
        false_alarms=tally.false_alarms,
        dead_letters=tally.transaction_dead_letters, other_dead_letters=tally.other_dead_letters,
        rules=rules, changed_by_rules=tally.changed_by_rules,
        stages_window=watch.last(WINDOW_S), stages_live=watch.since_mark(),
    )  # fmt: skip


def ms(value: float | None) -> str:
    """Milliseconds for a table cell.

    >>> ms(None), ms(0.25), ms(12.345), ms(2500.0)
    ('-', '0.25 ms', '12.3 ms', '2,500 ms')
    """
    if value is None:
        return "-"
    if value < 1:
        return f"{value:.2f} ms"
    if value < 100:
        return f"{value:.1f} ms"
    return f"{value:,.0f} ms"


def clock(seconds: float) -> str:
    """``m:ss``.

    >>> clock(5.2), clock(125)
    ('0:05', '2:05')
    """
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


def _phase(f: Frame) -> str:
    if f.phase == "live" and f.live_elapsed is not None:
        return f"live {clock(f.live_elapsed)} / {clock(f.duration)} at {f.offered_rate:,.0f}/s"
    return {"warm-up": "warm-up (as fast as possible)", "settling": "warm-up: waiting for verdicts",
            "done": "all produced: waiting for the last verdicts"}.get(f.phase, f.phase)


def _decisions(f: Frame) -> str:
    return "  ".join(f"{k} {f.decisions.get(k, 0):,}" for k in ("approve", "review", "decline"))


def _fraud(f: Frame) -> str:
    fraud = f.fraud_caught + f.fraud_missed
    recall = f" ({f.recall:.0%})" if f.recall is not None else ""
    return (f"caught {f.fraud_caught:,} / {fraud:,}{recall}  missed {f.fraud_missed:,}  "
            f"false alarms {f.false_alarms:,}")


def table(f: Frame) -> RenderableType:
    """The live view as ``rich`` tables."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("demo", f"{clock(f.elapsed)}  {_phase(f)}")
    head.add_row("throughput", f"{f.produced:,} produced (+{f.invalid_sent} invalid)  "
                               f"{f.verdicts:,} verdicts  {f.verdict_rate:,.0f}/s")
    head.add_row("decisions", _decisions(f) + (f"  ({f.changed_by_rules:,} changed by rules)"
                                               if f.changed_by_rules else ""))
    head.add_row("fraud", _fraud(f))
    head.add_row("dead letters", f"{f.dead_letters:,} (sent {f.invalid_sent} invalid)"
                 + (f", {f.other_dead_letters} from rules/lists/labels"
                    if f.other_dead_letters else ""))
    lat = Table(title="latency, produce to verdict consumed (live verdicts)", title_justify="left")
    for column in ("", f"last {WINDOW_S:.0f} s p50", "p99", "since live p50", "p99", "samples"):
        lat.add_column(column, justify="right" if column else "left")
    lat.add_row("end to end", ms(f.window.p50), ms(f.window.p99), ms(f.live.p50), ms(f.live.p99),
                f"{f.live.count:,}")
    live = {s.stage: s for s in f.stages_live}
    for s in f.stages_window or f.stages_live:
        whole = live.get(s.stage)
        recent = s if f.stages_window else None
        lat.add_row(f"  stage {s.stage}", ms(recent.p50_ms if recent else None),
                    ms(recent.p99_ms if recent else None),
                    ms(whole.p50_ms if whole else None), ms(whole.p99_ms if whole else None),
                    f"{whole.samples:,}" if whole else "-")  # fmt: skip
    parts: list[RenderableType] = [head, lat]
    if f.rules:
        hits = Table(title=f"rule hits (top {TOP_RULES}; shadow rules never change a decision)",
                     title_justify="left")
        for column in ("rule", "mode", "action", "hits", "on fraud"):
            hits.add_column(column, justify="right" if column in ("hits", "on fraud") else "left")
        for r in f.rules[:TOP_RULES]:
            hits.add_row(r.rule_id, r.mode, r.action, f"{r.hits:,}", f"{r.fraud:,}")
        parts.append(hits)
    else:
        parts.append("rule hits: none yet")
    return Group(*parts)


def line(f: Frame) -> str:
    """The live view as one plain line (stdout is not a terminal)."""
    stages = " ".join(f"{s.stage} {ms(s.p99_ms)}" for s in f.stages_window)
    hits = sum(r.hits for r in f.rules)
    return (
        f"{clock(f.elapsed):>5} {f.phase:<8} | produced {f.produced:>8,} | verdicts "
        f"{f.verdicts:>8,} ({f.verdict_rate:>6,.0f}/s) | p50 {ms(f.window.p50)} p99 "
        f"{ms(f.window.p99)} (last {WINDOW_S:.0f} s) | {_decisions(f)} | fraud {_fraud(f)} | "
        f"dead letters {f.dead_letters} | rule hits {hits:,}"
        + (f" | stage p99 {stages}" if stages else "")
    )


class LiveView:
    """Show frames: redrawn in place on a terminal (``rich.live``), else a line per frame."""

    def __init__(self, stream: TextIO | None = None, *, force_plain: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.rich = not force_plain and self.stream.isatty()
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        if self.rich:
            self._live = Live(console=Console(file=self.stream), refresh_per_second=4,
                              transient=False)  # fmt: skip
            self._live.__enter__()
        return self

    def show(self, frame: Frame) -> None:
        """Draw ``frame``."""
        if self._live is not None:
            self._live.update(table(frame))
        else:
            print(line(frame), file=self.stream, flush=True)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(kind, exc, tb)
            self._live = None
