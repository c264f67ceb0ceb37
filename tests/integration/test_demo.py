"""The demo runs to its summary, and stops everything it started when interrupted or killed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from topics.devbroker import pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _children(pid: int) -> set[int]:
    """All live descendants of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _demo_env(tmp_path: Path, model_dir: Path) -> dict[str, str]:
    """A clean environment (embedded broker, fresh topics) in ``tmp_path`` serving ``model_dir``."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "current").symlink_to(model_dir)
    return {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "FRAUD_"))}


def _start_demo(tmp_path: Path, model_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "demo", "--transactions", "20000", "--duration", "60",
         "--rate", "200"],
        cwd=tmp_path, env=_demo_env(tmp_path, model_dir), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for_broker_and_flow(demo: subprocess.Popen[bytes]) -> set[int]:
    deadline = time.time() + 90
    while time.time() < deadline:
        assert demo.poll() is None, demo.stdout.read().decode() if demo.stdout else ""
        kids = _children(demo.pid)
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in kids
                    if Path(f"/proc/{pid}/cmdline").exists()}
        if (any(b"tansu" in c for c in commands.values())
                and any(b"bytewax.run" in c for c in commands.values())):
            return kids
        time.sleep(0.2)
    raise AssertionError("the demo never started its broker and flow")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_demo_leaves_no_process(
    how: signal.Signals, tmp_path: Path, tiny_model_dir: Path
) -> None:
    demo = _start_demo(tmp_path, tiny_model_dir)
    try:
        kids = _wait_for_broker_and_flow(demo)
        time.sleep(2)
        demo.send_signal(how)
        demo.wait(30)
        deadline = time.time() + 15
        while any(pid_alive(pid) for pid in kids) and time.time() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in kids if pid_alive(pid)], "processes outlived the demo"
    finally:
        if demo.poll() is None:
            demo.kill()


def test_short_demo_publishes_rules_and_ends_with_a_summary_of_their_hits(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "demo", "--transactions", "20000", "--duration", "5",
         "--rate", "500"],
        cwd=tmp_path, env=_demo_env(tmp_path, tiny_model_dir), capture_output=True, text=True,
        timeout=180,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "=== summary ===" in out and "result                  OK" in out, out
    produced = int(re.search(r"transactions produced\s+([\d,]+)", out)[1].replace(",", ""))
    verdicts = int(re.search(r"verdicts\s+([\d,]+) unique", out)[1].replace(",", ""))
    assert produced == verdicts > 19_000
    # the rule set the demo published is the one every verdict names
    rule_set = re.search(r"rule set .* version (rs-\w+) \(verdicts name: (.*)\)", out)
    assert rule_set and rule_set[2] == rule_set[1], out
    hits = int(re.search(r"rule hits\s+([\d,]+) on", out)[1].replace(",", ""))
    per_rule = [int(n.replace(",", "")) for n in re.findall(r"^\s+\S+\s+(?:active|shadow)\s+\w+"
                                                            r"\s+([\d,]+) hits", out, re.M)]
    assert hits > 0 and sum(per_rule) == hits, out
    assert "live latency" in out and "stage latency" in out
    # the live view went to a pipe: plain lines, one a second
    assert re.search(r"^\s*0:0\d live\s+\| produced", out, re.M), out
