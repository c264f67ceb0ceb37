"""Where the scoring flow's time goes: py-spy over ``flows.score`` on a backlog (``just profile``).

    python bench/profile_flow.py [--transactions N] [--broker embedded|kafka] [--out DIR]

Starts a fresh broker, pre-loads ``--transactions`` simulator transactions (the
``just bench`` data), starts the real scoring flow on them and samples it with py-spy
(``py-spy record --format raw``, 200 samples per second, native frames off) until every
verdict arrived. Prints the share of samples per stage and per leaf function, and
writes the collapsed stacks (``profile.txt``, loadable in speedscope.app or
flamegraph.pl) and the summary (``profile.json``) to ``--out`` (default
``runs/profile``). py-spy must be on PATH (``pip install py-spy``); it needs ptrace
rights over the flow process (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import Collector, Env, say  # noqa: E402
from bench.run import ensure_model, fresh_broker, simulate  # noqa: E402
from devkit.produce import produce_transactions  # noqa: E402
from topics.settings import KafkaSettings  # noqa: E402

#: Stages named by the first frame of a stack that lies in one of these files.
STAGES = (("flows/decode.py", "decode + validation"),
          ("flows/card_stage.py", "card stage"),
          ("state/card_store.py", "card stage"),
          ("flows/merchant_stage.py", "merchant stage"),
          ("state/merchant_store.py", "merchant stage"),
          ("flows/scorer.py", "merchant stage"),
          ("flows/kafka.py", "source + sink"),
          ("bytewax/connectors/kafka", "source + sink"),
          ("recovery", "recovery snapshots"))


def stage_of(stack: str) -> str:
    """The stage of one collapsed stack (frames ``;``-separated, outermost first)."""
    for frame in stack.split(";"):
        for needle, stage in STAGES:
            if needle in frame:
                return stage
    return "other (Bytewax, idle, start-up)"


def summarise(collapsed: Path, top: int = 25) -> dict[str, object]:
    """Shares of samples per stage and per leaf function from py-spy's raw output."""
    stages: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        stages[stage_of(stack)] += n
        leaves[stack.split(";")[-1].split(" (")[0] + " " + _where(stack.split(";")[-1])] += n
    share = {k: round(v / max(total, 1), 4) for k, v in stages.most_common()}
    leaf = {k: round(v / max(total, 1), 4) for k, v in leaves.most_common(top)}
    return {"samples": total, "stages": share, "leaves": leaf}


def _where(frame: str) -> str:
    """``(file.py:line)`` of a frame, shortened to the last two path parts."""
    if "(" not in frame:
        return ""
    loc = frame[frame.index("(") + 1:].rstrip(")")
    return "(" + "/".join(loc.split("/")[-2:]) + ")"


def _await_exec(pid: int, timeout: float = 30.0) -> None:
    """Wait until ``pid`` runs ``bytewax.run`` (the launcher execs it: py-spy attached before
    the exec reads the launcher's interpreter and then samples nothing)."""
    deadline = time.monotonic() + timeout
    cmdline = Path(f"/proc/{pid}/cmdline")
    while time.monotonic() < deadline:
        try:
            if b"bytewax.run" in cmdline.read_bytes():
                time.sleep(0.5)  # the new interpreter is up
                return
        except OSError:
            return
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    """Run the profile and print the summary; 0 on success."""
    parser = argparse.ArgumentParser(prog="just profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=200_000,
                        help="backlog to score (default 200,000)")
    parser.add_argument("--broker", choices=("embedded", "kafka"), default="embedded")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "current",
                        help="model directory (default models/current; none there: a tiny "
                        "one is trained, as just bench does)")
    parser.add_argument("--changelog", action="store_true",
                        help="run the flow with FRAUD_CHANGELOG=on (the stores' changelogs)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "profile")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy")
    if spy is None:
        parser.error("py-spy is not on PATH: pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    txns = simulate(args.transactions, max(1000, args.transactions // 20))
    with tempfile.TemporaryDirectory(prefix="fraud-profile-") as tmp, \
            fresh_broker(args.broker, Path(tmp)) as broker:
        model = ensure_model(args.model, Path(tmp))
        env = Env(KafkaSettings(bootstrap_servers=broker.bootstrap), Path(tmp) / "run",
                  model, broker.pid)
        shared = env.topic_set("preload").topic("transactions")
        say(f"pre-loading {len(txns):,} transactions")
        produce_transactions(env.base, shared, txns, progress=False, flush_timeout=120)
        settings = env.topic_set("profile", transactions=shared)
        collector = Collector(settings, settings.topic("predictions"), "count")
        collector.start()
        flow = env.start("flows.score", settings,
                         extra={"FRAUD_CHANGELOG": "on"} if args.changelog else None)
        raw = args.out / "profile.txt"
        _await_exec(flow.proc.pid)
        record = subprocess.Popen([spy, "record", "--pid", str(flow.proc.pid), "--rate", "200",
                                   "--format", "raw", "--output", str(raw), "--nonblocking"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            collector.wait_for(len(txns), 900, flow, stall=30)
        finally:
            record.send_signal(signal.SIGINT)
            record.wait(60)
            flow.stop()
            collector.stop()
    summary = summarise(raw)
    summary["transactions"] = len(txns)
    (args.out / "profile.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(f"{summary['samples']:,} samples over {len(txns):,} transactions; stacks in {raw}")
    for name, share in summary["stages"].items():  # type: ignore[attr-defined]
        print(f"  {share:6.1%}  {name}")
    print("leaf functions:")
    for name, share in summary["leaves"].items():  # type: ignore[attr-defined]
        print(f"  {share:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
