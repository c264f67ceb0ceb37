"""Our scoring flow side by side with the same job written in Quix Streams (``just bench-quix``).

    python bench/quix/compare.py [--transactions N] [--rounds R] [--broker embedded|kafka]

Issue 21's comparison: on one broker, over the same pre-loaded topic of simulated
transactions (``bench.run.simulate``, 1 card per 5 transactions, 8 partitions) and
with the same ONNX model, three consumers run one after the other, interleaved for
``--rounds`` rounds so drift in a busy machine hits each alike:

- ``ours``: ``flows.score``, exactly as ``just bench`` runs it
  (``bench.throughput.throughput_once``: fresh output topics, state and recovery);
- ``quix-batched``: ``bench/quix/app.py --mode batched``, the Quix Streams application
  (per-card state in Quix's RocksDB state, merchant counts behind
  ``sdf.group_by("merchant_id")``, one ONNX call per 256 buffered messages);
- ``quix-per-message``: the same application with one ONNX call per message.

Each run reads the topic from the beginning with a fresh output topic, state
directory and consumer group. Rate of ours as ``just bench`` measures it: verdicts /
span from the flow's first fetch to the last verdict's record timestamp (our merchant
stage holds verdicts back at first in a backlog, so a span from the first verdict
would be short); rate of a Quix variant: (verdicts - 1) / span between the record
timestamps of its first and last verdict (it holds nothing back beyond its ONNX
buffer of ``QUIX_BATCH`` messages). Start-up (imports, model load, the
consumer-group join) is excluded from both; CPU per transaction is the consumer process's
user + system time from its start to its last verdict (start-up included, as
``just bench``: it weighs on small runs), and the broker's beside it. The batched
variant's run ends at ``n - 255`` verdicts (its buffer's tail waits for a next
message that never comes). Ratios are
ours / quix-batched and ours / quix-per-message of the medians (issue 21: at least
3x the batched variant). The Quix side runs in its own virtualenv ``.venv-quix``,
created here on first use from ``bench/quix/requirements.txt`` (a pinned
quixstreams; never installed into ``.venv``). Load averages are recorded before and
after: on a busy machine read the ratios, not the rates.

Not alike by design: Quix writes every state change to a changelog topic and
repartitions through a topic (more broker work on the same cores), keeps JSON state
per input partition, and skips what our flow does beyond scoring (validation and
dead letters, event-time reordering, reason codes, rules, drift, recovery snapshots).

Writes ``<out>/results.json`` and ``<out>/RESULTS.md`` (default ``bench/quix/``) and
prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import Collector, CpuMeter, Env, Phases, say  # noqa: E402
from devkit.deathsig import orphan_safe  # noqa: E402

HERE = ROOT / "bench" / "quix"
QUIX_VENV = ROOT / ".venv-quix"
REQUIREMENTS = HERE / "requirements.txt"
VARIANTS = ("ours", "quix-batched", "quix-per-message")
BROKERS = ("embedded", "kafka")
#: Quix's batched variant: rows per ONNX call (bench/quix/app.py --batch-size).
QUIX_BATCH = 256
#: How long the Quix app may take to its first verdict.
STARTUP_TIMEOUT_S = 180
#: Keys of one run's result that get a median.
MEASURES = ("tx_per_s", "cpu_us_per_tx", "broker_cpu_us_per_tx", "startup_s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--help`` prints the module docstring)."""
    parser = argparse.ArgumentParser(prog="python bench/quix/compare.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=300_000,
                        help="pre-loaded transactions, read in full by every run "
                             "(default 300000, as the measurement issue 21 quotes)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the three variants; medians over them "
                             "(default 3)")
    parser.add_argument("--broker", choices=BROKERS, default="embedded",
                        help="the embedded Tansu broker (default) or a real Apache Kafka 4.1 "
                             "started for the run (devkit/apache_kafka.py: needs java, mvn)")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "current",
                        help="ONNX model both sides score with (default models/current; a "
                             "tiny one is trained if missing)")
    parser.add_argument("--only", default=",".join(VARIANTS),
                        help=f"comma-separated variants to run (default: all of "
                             f"{', '.join(VARIANTS)})")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="directory for results.json and RESULTS.md (default bench/quix/)")
    parser.add_argument("--quix-venv", type=Path, default=QUIX_VENV,
                        help="virtualenv of the Quix side, created and filled from "
                             "bench/quix/requirements.txt when missing or stale "
                             "(default .venv-quix)")
    args = parser.parse_args(argv)
    if args.transactions < 1000:
        parser.error("--transactions: at least 1000")
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    only = tuple(v for v in args.only.split(",") if v)
    unknown = sorted(set(only) - set(VARIANTS))
    if unknown or not only:
        parser.error(f"--only: choose from {', '.join(VARIANTS)} (got {args.only!r})")
    args.only = tuple(v for v in VARIANTS if v in only)
    return args


def ensure_quix_venv(venv: Path, requirements: Path = REQUIREMENTS) -> Path:
    """The Python of ``venv``, created and installed from ``requirements`` when needed.

    A stamp file in the virtualenv keeps the requirements it was filled from; when they
    change, it is filled again.
    """
    python = venv / "bin" / "python"
    stamp = venv / ".fraudstream-requirements"
    wanted = requirements.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    if not python.exists():
        say(f"creating {venv} (Quix Streams side)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    say(f"installing {requirements.relative_to(ROOT)} into {venv.name}")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(requirements)], check=True)
    stamp.write_text(wanted)
    return python


def versions(python: Path) -> dict[str, str]:
    """Versions of the packages that matter on both sides."""
    names = ("quixstreams", "confluent-kafka", "rocksdict", "onnxruntime", "numpy", "orjson")
    code = ("import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) "
            f"for n in {names!r}}} | {{'python': sys.version.split()[0]}}))")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    quix: dict[str, str] = json.loads(done.stdout)
    import importlib.metadata as meta

    ours = {n: meta.version(n) for n in ("bytewax", "confluent-kafka", "rocksdict",
                                         "onnxruntime", "numpy", "msgspec")}
    ours["python"] = sys.version.split()[0]
    return {f"quix:{k}": v for k, v in quix.items()} | {f"ours:{k}": v for k, v in ours.items()}


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


class QuixProcess:
    """``bench/quix/app.py`` as a child process (killed with this one), output to a log."""

    def __init__(self, python: Path, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                orphan_safe([str(python), str(HERE / "app.py"), *args]), cwd=ROOT,
                stdout=log, stderr=subprocess.STDOUT)

    def check(self) -> None:
        """Raise with the log tail if the process has exited."""
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the Quix app exited ({self.proc.returncode}):\n{tail}")

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (Quix stops cleanly on it); SIGKILL after ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def quix_once(env: Env, python: Path, shared: str, n: int, mode: str) -> dict[str, float]:
    """One Quix app process over the pre-loaded topic, stopped once its verdicts arrived.

    The batched variant may keep its last ``QUIX_BATCH`` - 1 rows buffered at the end
    (nothing follows to flush them): it is done at ``n - QUIX_BATCH + 1`` verdicts.
    """
    settings = env.topic_set(f"quix-{mode}")
    output = settings.topic("predictions")
    collector = Collector(settings, output, "count")
    collector.start()
    run = env.work / f"quix-{mode}-{env.counter}"
    args = ["--broker", str(settings.bootstrap_servers), "--input", shared, "--output", output,
            "--model", str(env.model), "--state-dir", str(run / "state"),
            "--group", f"bench-quix-{mode}-{env.counter}-{os.getpid()}", "--mode", mode,
            "--batch-size", str(QUIX_BATCH)]
    started = time.time()
    app = QuixProcess(python, args, run / "app.log")
    cpu = CpuMeter(env.broker_pid, app.proc.pid)
    need = n - QUIX_BATCH + 1 if mode == "batched" else n
    try:
        # Start-up (imports, model, topic creation, the group join) may take long on a busy
        # machine; after the first verdict, a 30 s stall ends the run as in throughput_once.
        collector.wait_for(1, STARTUP_TIMEOUT_S, app)  # type: ignore[arg-type]
        collector.wait_for(need, 900, app, stall=30)  # type: ignore[arg-type]
        if collector.count < 0.95 * need:
            tail = app.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"quix {mode}: only {collector.count}/{need} verdicts; the "
                               f"end of its log:\n{tail}")
        used = cpu.take()
    finally:
        app.stop()
        collector.stop()
    span = max(1, collector.last_ts - collector.first_ts) / 1000
    return {"tx_per_s": (collector.count - 1) / span,
            "startup_s": collector.first_local - started,
            "cpu_us_per_tx": used["flow"] / collector.count * 1e6,
            "broker_cpu_us_per_tx": used["broker"] / collector.count * 1e6,
            "verdicts": collector.count}


def ours_once(env: Env, shared: str, n: int) -> dict[str, float]:
    """``flows.score`` as ``just bench`` measures it (:func:`bench.throughput.throughput_once`)."""
    from bench.throughput import throughput_once

    res = throughput_once(env, "flows.score", shared, n)
    return {"tx_per_s": res["tx_per_s"], "startup_s": res["startup_s"],
            "cpu_us_per_tx": res["flow_cpu_us_per_tx"],
            "broker_cpu_us_per_tx": res["broker_cpu_us_per_tx"], "verdicts": res["verdicts"]}


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians per variant over its runs, and the ratios of ours to each Quix variant.

    >>> s = summarize({"ours": [{"tx_per_s": 9000.0, "cpu_us_per_tx": 90.0}],
    ...                "quix-batched": [{"tx_per_s": 3000.0, "cpu_us_per_tx": 300.0}]})
    >>> s["ratios"]["ours/quix-batched"], s["ratios"]["cpu quix-batched/ours"]
    (3.0, 3.33)
    """
    out: dict[str, Any] = {}
    for name, results in runs.items():
        if not results:
            continue
        med: dict[str, Any] = {key: round(statistics.median(r[key] for r in results), 2)
                               for key in MEASURES if all(key in r for r in results)}
        med["runs"] = [round(r["tx_per_s"]) for r in results]
        out[name] = med
    ratios: dict[str, float] = {}
    ours = out.get("ours")
    for name in ("quix-batched", "quix-per-message"):
        quix = out.get(name)
        if ours is None or quix is None:
            continue
        ratios[f"ours/{name}"] = round(ours["tx_per_s"] / quix["tx_per_s"], 2)
        if ours.get("cpu_us_per_tx") and quix.get("cpu_us_per_tx"):
            ratios[f"cpu {name}/ours"] = round(quix["cpu_us_per_tx"] / ours["cpu_us_per_tx"], 2)
    return {"variants": out, "ratios": ratios}


#: Issue 21's acceptance: ours at least this many times Quix's batched variant.
TARGET_RATIO = 3.0


def markdown(res: dict[str, Any]) -> str:
    """RESULTS.md: the comparison table, ratios, target, load and versions."""
    cfg, summary = res["config"], res["summary"]
    busy = res["load_before"][0] > cfg["cores"] or res["load_after"][0] > cfg["cores"]
    lines = [
        "# Scoring flow vs Quix Streams (`just bench-quix`)",
        "",
        f"Run of {res['date']} on the {cfg['broker']} broker: {cfg['transactions']:,} "
        f"pre-loaded transactions, {cfg['rounds']} interleaved round(s), model "
        f"`{cfg['model']}`, {cfg['cores']} cores. Written by `bench/quix/compare.py`; see its "
        "`--help` and `bench/quix/app.py` for what each side does.",
        "",
        f"Load average (1/5/15 min) before: {_load(res['load_before'])}; after: "
        f"{_load(res['load_after'])}."
        + (" **The machine was busy (load above its cores): the rates are noisy; read the "
           "ratios, and re-run on a quiet machine for figures to quote.**" if busy else ""),
        "",
        f"quix-batched: one ONNX call per {cfg.get('quix_batch_size', QUIX_BATCH)} buffered "
        "messages (or the first message 100 ms after the oldest); quix-per-message: one call "
        "per message. Rate: ours from the flow's first fetch to the last verdict's record "
        "timestamp (as `just bench`), Quix's between its first and last verdict's (start-up "
        "excluded from both); CPU per transaction: the consumer process's user + system time "
        "from its start (start-up included, as `just bench`), and the broker's.",
        "",
        "| variant | tx/s (median) | runs | consumer CPU µs/tx | broker CPU µs/tx | start-up s |",
        "|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        v = summary["variants"].get(name)
        if v is None:
            continue
        runs = " / ".join(f"{r:,}" for r in v["runs"])
        lines.append(f"| {name} | {v['tx_per_s']:,.0f} | {runs} | {v['cpu_us_per_tx']:.1f} | "
                     f"{v['broker_cpu_us_per_tx']:.1f} | {v['startup_s']:.1f} |")
    lines.append("")
    ratios = summary["ratios"]
    for name in ("quix-batched", "quix-per-message"):
        if f"ours/{name}" in ratios:
            cpu = ratios.get(f"cpu {name}/ours")
            lines.append(f"- ours / {name}: **{ratios[f'ours/{name}']:.2f}x** the rate"
                         + (f"; {name} uses {cpu:.2f}x our CPU per transaction" if cpu else ""))
    if "ours/quix-batched" in ratios:
        met = ratios["ours/quix-batched"] >= TARGET_RATIO
        lines.append(f"- target (issue 21): ours >= {TARGET_RATIO:g}x quix-batched: "
                     f"**{'met' if met else 'not met'}**")
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()), ""]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _load(values: list[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)  # the flow processes import flows.score from here
    from bench.run import ensure_model, fresh_broker, simulate
    from devkit.produce import produce_transactions
    from topics.settings import KafkaSettings

    python = ensure_quix_venv(args.quix_venv)
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "versions": versions(python), "load_before": load_average()}
    n, phase = args.transactions, Phases()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in args.only}
    with tempfile.TemporaryDirectory(prefix="fraud-bench-quix-") as tmp:
        work = Path(tmp)
        model = ensure_model(args.model, work)
        with phase(f"simulate {n:,} transactions, {n // 5:,} cards"):
            txns = simulate(n, n // 5)
        with fresh_broker(args.broker, work) as broker:
            env = Env(KafkaSettings(bootstrap_servers=broker.bootstrap), work, model, broker.pid)
            with phase("preload"):
                shared = env.topic_set("preload").topic("transactions")
                produce_transactions(env.base, shared, txns, progress=False, flush_timeout=120)
            del txns
            for r in range(args.rounds):
                for name in args.only:
                    start = time.monotonic()
                    with phase(f"round {r + 1}/{args.rounds} {name}"):
                        one = (ours_once(env, shared, n) if name == "ours" else
                               quix_once(env, python, shared, n, name.removeprefix("quix-")))
                    say(f"{name}: {one['tx_per_s']:,.0f} tx/s, CPU {one['cpu_us_per_tx']:.1f} "
                        f"us/tx, start-up {one['startup_s']:.1f} s, "
                        f"{time.monotonic() - start:.0f} s")
                    runs[name].append(one)
    res["load_after"] = load_average()
    res["config"] = {"transactions": n, "cards": n // 5, "rounds": args.rounds,
                     "broker": args.broker, "model": _shown(args.model), "cores": os.cpu_count(),
                     "quix_batch_size": QUIX_BATCH, "variants": list(args.only),
                     "phases_s": phase.seconds, "elapsed_s": round(phase.elapsed(), 1)}
    res["summary"] = summarize(runs)
    res["runs"] = runs
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res)
    (args.out / "RESULTS.md").write_text(text)
    say(f"done in {phase.elapsed():.0f} s: {args.out / 'RESULTS.md'}")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
