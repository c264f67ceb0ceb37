"""Retrain from the stream's own history in one go: history, train, export, gates, promotion.

``python -m training.retrain`` (``just retrain``) runs, with progress:

1. **history**: :mod:`training.history_export` over ``--from``/``--to`` (or
   ``--history FILE`` to use an existing file) into ``WORK/history.parquet``;
2. **train**: :func:`training.train.train_history_file` into ``WORK/train``
   (``--quick``: class weighting, one XGBoost setting, one vote weight), logged to
   MLflow when ``MLFLOW_TRACKING_URI`` is set (:mod:`training.tracking`);
3. **export + gates**: :func:`export.release.release`: ONNX with probe rows, parity,
   the gates of :mod:`export.gates` (minimums, champion comparison), publication;
4. **promotion**: a version that passed becomes the champion (``models/current``
   moves, the running flow hot-reloads) unless ``--no-promote`` (then it stays a
   candidate for ``just shadow`` / ``just promote``); a version that failed is
   published as **rejected** and the champion keeps serving.

Triggers: a weekly Kubernetes CronJob (``k8s/base/cronjob-retrain.yaml``), or on
drift (the ``FraudScoreDrift`` alert on ``fraud_drift_score_psi``: run
``kubectl create job --from=cronjob/fraud-retrain retrain-$(date +%s)``).
Exit codes: 0 published (champion or candidate), 1 error, 2 bad input, 3 rejected.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from export.gates import GateConfig
from topics.errors import FraudStreamError


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see module docstring)."""
    from rich.console import Console

    from export.errors import GateError
    from training.history_export import HistoryExportError, add_arguments, bounds

    p = argparse.ArgumentParser(prog="python -m training.retrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--history", type=Path, default=None, metavar="FILE",
                   help="train on this history file instead of exporting the topics")
    p.add_argument("--work", type=Path, default=None,
                   help="working directory (default runs/retrain-<UTC time>)")
    p.add_argument("--models-dir", type=Path, default=Path("models"),
                   help="registry root (default models)")
    p.add_argument("--gates", type=Path, default=None, metavar="FILE",
                   help="gate limits, TOML or JSON (default: export/gates.py)")
    p.add_argument("--gate", action="append", default=[], metavar="NAME=VALUE",
                   help="override one gate limit (repeatable)")
    p.add_argument("--quick", action="store_true", help="small training grid (minutes less)")
    p.add_argument("--no-promote", action="store_true",
                   help="publish a passing model as a candidate; do not move models/current")
    p.add_argument("--label-delay-days", type=float, default=7.0,
                   help="training's label delay and split gap (default 7)")
    args = p.parse_args(argv)
    console = Console(stderr=True)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        console.print(f"[retrain {time.perf_counter() - t0:6.1f}s] {msg}", markup=False,
                      highlight=False, soft_wrap=True)

    try:
        cfg_gates = GateConfig.load(args.gates, args.gate)
        start, end, as_of = bounds(args)
    except (GateError, HistoryExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    work = args.work or Path("runs") / f"retrain-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    try:
        return _run(args, work, start, end, as_of, cfg_gates, say)
    except HistoryExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FraudStreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, work: Path, start: int, end: int, as_of: int | None,
         gates: GateConfig, say: Callable[[str], None]) -> int:
    from export.mlflow_sync import MlflowSync
    from export.release import release
    from training.history import HistoryError
    from training.history_export import export_history, resolve_settings
    from training.tracking import log_training_run
    from training.train import TrainConfig, train_history_file

    history = args.history
    if history is None:
        say("1/4 history: exporting the transactions and labels topics")
        history = work / "history.parquet"
        stats = export_history(resolve_settings(), history, start, end, as_of,
                               args.legit_delay_days, say)
        for line in stats.lines():
            say("  " + line)
    else:
        say(f"1/4 history: using {history}")
    cfg = TrainConfig(label_delay_days=args.label_delay_days)
    if args.quick:
        cfg = TrainConfig(**{**asdict(cfg), "strategies": ("weight",),
                             "xgb_grid": cfg.xgb_grid[:1], "xgb_weights": (0.65,)})
    say("2/4 train" + (" (--quick)" if args.quick else ""))
    train_dir = work / "train"
    try:
        trained = train_history_file(history, train_dir, cfg, lambda m: say("  " + m))
    except (HistoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_id = log_training_run(trained, train_dir)
    if run_id:
        say(f"  MLflow run {run_id}")
    say("3/4 export, parity and gates")
    result = release(trained, args.models_dir, gates=gates, make_current=not args.no_promote,
                     report_dir=train_dir, reason="retrain", sync=MlflowSync.from_env(),
                     say=lambda m: say("  " + m))
    for warning in result.warnings:
        say(f"  warning: {warning}")
    if result.state == "rejected":
        say(f"4/4 REJECTED {result.version}: {'; '.join(result.gates.reasons)}; the champion "
            f"{result.gates.champion or '(none)'} keeps serving")
        return 3
    if result.state == "champion":
        say(f"4/4 promoted {result.version} to champion (was "
            f"{result.previous_champion or 'none'}); models/current moved, the flow reloads it")
    else:
        say(f"4/4 {result.version} published as a candidate; `just shadow {result.version}` or "
            f"`just promote {result.version}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
