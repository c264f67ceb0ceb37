"""The end-to-end demo (``just demo``, ``python -m demo``): a fraud team's stream on one machine.

1. a broker: ``KAFKA_BOOTSTRAP_SERVERS``, a running ``just broker``, or an embedded one;
2. fresh topics under a unique prefix (``demo-<time>.``), so runs never mix;
3. a model: ``models/current``, or a small one simulated, trained and exported now
   (if a validation gate rejects it, the demo stops and says how to go on);
4. analyst rules and lists, published to the ``rules`` and ``lists`` topics before
   anything else: the common fraud policies of ``rules/examples/policies.yaml``
   (``--rules``) and a blocklist of the cards whose holders report them stolen
   during the live part (in force from the report's event time on);
5. the scoring flow (``python -m bytewax.run flows.score`` with recovery) as a child
   process that dies with the demo, waited for until the rule set is in force;
6. a simulated world the model has never seen (another seed): its first days are
   replayed as fast as possible to build card and merchant state (warm-up), the
   rest is offered at ``--rate`` transactions per second for ``--duration`` seconds,
   with labels at their label time and a few invalid messages mixed in;
7. a live view (a table redrawn in place on a terminal, a line a second otherwise):
   throughput, end-to-end latency p50/p99 over the last 10 s and since the live
   phase started, the flow's per-stage latency, decisions, fraud caught and missed
   against the simulator's truth, dead letters and rule hits; then a summary, and
   everything stops.

Exit codes: 0 every transaction got exactly one verdict, 1 it did not (or the
flow, the broker or the model bootstrap failed), 2 bad options or rules file,
130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from demo import ruleset
from demo.flow import SAMPLE_DIR, FlowStopped, check, log_path, start_flow, wait_for_rule_set
from demo.flowmetrics import StageWatch
from demo.model import ensure_model
from demo.summary import drift_lines, lines, ok
from demo.traffic import Traffic
from demo.verdicts import Tally, VerdictReader
from demo.view import Frame, LiveView, take_frame
from demo.world import DemoWorld, reported_cards, unseen_world, write_truth
from devkit.broker import connect
from devkit.process import FlowProcess
from rules.cli import Refusals
from rules.errors import RulesFileError
from topics.admin import ensure_topics
from topics.errors import FraudStreamError
from topics.settings import KafkaSettings

#: Longest wait for the last verdicts once everything is produced (s).
DRAIN_S = 60.0


def say(text: str) -> None:
    """A demo progress line on stderr."""
    print(f"[demo] {text}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Run:
    """The parts of one demo run that the drive loop needs."""

    args: argparse.Namespace
    settings: KafkaSettings
    world: DemoWorld
    rule_set: ruleset.RuleSet
    flow: FlowProcess
    watch: StageWatch
    tally: Tally
    reader: VerdictReader
    traffic: Traffic


def run(args: argparse.Namespace) -> int:
    """The demo; returns the exit code."""
    model = ensure_model(say)
    live_count = int(args.rate * args.duration)
    world = unseen_world(args.transactions, live_count)
    cfg = world.config
    say(f"simulated an unseen world: {len(world.history):,} transactions, {cfg.n_cards:,} "
        f"cards, {cfg.days} days (seed {cfg.seed})")  # fmt: skip
    write_truth(world)
    try:
        rule_set = ruleset.load(args.rules, reported_cards(world))
    except (RulesFileError, Refusals) as exc:
        say(f"error: {exc}")
        return 2
    prefix = os.environ.get("FRAUD_TOPIC_PREFIX") or f"demo-{time.strftime('%Y%m%d-%H%M%S')}."
    base = dataclasses.replace(KafkaSettings.from_env(), topic_prefix=prefix)
    with connect(base) as settings, tempfile.TemporaryDirectory(prefix="fraud-demo-") as tmp:
        ensure_topics(settings)
        ruleset.publish_rule_set(settings, rule_set)
        say(f"topics {prefix}*; published {len(rule_set.rules)} rules and "
            f"{len(rule_set.entries)} list entries (rule set {rule_set.version}); starting "
            f"the flow (log: {log_path()})")  # fmt: skip
        flow, port = start_flow(settings, Path(tmp), model)
        tally = Tally()
        reader = VerdictReader(settings, world.truth, tally)
        demo = Run(args, settings, world, rule_set, flow, StageWatch(port), tally, reader,
                   Traffic(settings, world, args.rate, tally))  # fmt: skip
        reader.start()
        try:
            return _drive(demo)
        finally:
            demo.traffic.stopping.set()
            reader.stopping.set()
            flow.stop()
            reader.join(5)
            say("flow stopped, broker stopping")


def _drive(demo: Run) -> int:
    args, tally, watch = demo.args, demo.tally, demo.watch
    if wait_for_rule_set(demo.flow, watch, demo.rule_set.version):
        say(f"the flow has rule set {demo.rule_set.version} in force")
    else:
        say(f"warning: the flow did not report rule set {demo.rule_set.version} within 30 s; "
            "going on (the first transactions may be judged without it)")
    world = demo.world
    say(f"warm-up: replaying {world.live_from:,} transactions as fast as possible to build "
        f"state, then {world.live_count:,} live at {args.rate:,.0f}/s")  # fmt: skip
    demo.traffic.start()
    started = time.time()
    live_end = 0.0
    with LiveView(force_plain=args.plain) as view:
        frame = _watch(demo, view, started, until=lambda: not demo.traffic.is_alive())
        if demo.traffic.error is not None:
            raise demo.traffic.error
        live_end = time.time()
        frame = _watch(demo, view, started, phase="draining",
                       until=lambda: tally.verdicts >= tally.produced, limit=DRAIN_S)
    watch.poll()
    live_seconds = (live_end - tally.live_start) if tally.live_start else 0.0
    drift = drift_lines(demo.settings, str(SAMPLE_DIR))
    for text in lines(frame, tally, demo.rule_set, live_seconds, watch.since_mark(), drift):
        print(text)
    return 0 if ok(tally) else 1


def _watch(demo: Run, view: LiveView, started: float, *, until: Callable[[], bool],
           phase: str | None = None, limit: float | None = None) -> Frame:
    """Tick the live view every ``--view-every`` s until ``until()`` holds (or ``limit`` s)."""
    args, tally, traffic = demo.args, demo.tally, demo.traffic
    deadline = None if limit is None else time.monotonic() + limit
    last_at, last_verdicts = time.time(), tally.verdicts
    seen_phase = traffic.phase
    frame: Frame | None = None
    while True:
        check(demo.flow)
        if demo.reader.error is not None:
            raise FlowStopped(f"the demo's verdict reader failed: {demo.reader.error}")
        if traffic.phase != seen_phase:
            seen_phase = traffic.phase
            _announce(demo, seen_phase)
        done = until() or (deadline is not None and time.monotonic() > deadline)
        now = time.time()
        if done or now - last_at >= args.view_every or frame is None:
            demo.watch.poll()
            rate = (tally.verdicts - last_verdicts) / max(now - last_at, 1e-9)
            last_at, last_verdicts = now, tally.verdicts
            frame = take_frame(tally, demo.watch, phase=phase or traffic.phase, started=started,
                               duration=args.duration, offered_rate=args.rate,
                               verdict_rate=rate, now=now)  # fmt: skip
            view.show(frame)
        if done:
            return frame
        time.sleep(0.05)


def _announce(demo: Run, phase: str) -> None:
    if phase == "settling":
        say("warm-up produced; waiting for its verdicts")
    elif phase == "live":
        demo.watch.set_mark()
        missing = demo.traffic.warm_up_verdicts_missing
        say("warm-up done; live traffic from now on" + (
            f" ({missing:,} warm-up verdicts still missing)" if missing else ""))
    elif phase == "done":
        say("all transactions produced; waiting for the last verdicts")


def _rules_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such rules file: {text}")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``python -m demo --help``); exits 2 on bad options."""
    parser = argparse.ArgumentParser(
        prog="python -m demo", description=(__doc__ or "").replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="environment: KAFKA_BOOTSTRAP_SERVERS=host:port uses that broker (unset: the "
               "dev broker of `just broker`, else an embedded one for the demo only); "
               "FRAUD_TOPIC_PREFIX reuses a topic prefix instead of a fresh one.",
    )
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="live transactions per second offered (default 1000: what one "
                             "2-core machine sustains with broker, flow and demo on it)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of live traffic after the warm-up (default 30)")
    parser.add_argument("--transactions", type=int, default=200_000,
                        help="size of the simulated world streamed, warm-up included "
                             "(default 200000; at least 1000)")
    parser.add_argument("--rules", type=_rules_file, default=ruleset.DEFAULT_RULES,
                        metavar="FILE",
                        help="rules and lists published at start, YAML or JSON as for "
                             "`python -m rules.cli add` (default: rules/examples/policies.yaml)")
    parser.add_argument("--view-every", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between live-view updates (default 1)")
    parser.add_argument("--plain", action="store_true",
                        help="plain lines instead of the live table, also on a terminal")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.view_every <= 0:
        parser.error("--rate, --duration and --view-every must be positive")
    if args.transactions < 1_000:
        parser.error("--transactions must be at least 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m demo``."""
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except FraudStreamError as exc:  # the model bootstrap, the broker, the flow stopping
        say(f"error: {exc}")
        return 1
