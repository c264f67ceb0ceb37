"""Model governance commands: list, gate, promote, roll back and shadow published models.

``python -m export.cli models`` (``just models``) lists every version with its state,
gate outcome and test metrics; ``promote VERSION`` makes a version the champion
after its gates (re-evaluated now, against the serving champion; a shadow
challenger also needs its evidence from the ``drift`` topic), ``rollback`` goes back
to the previous champion, ``shadow VERSION`` makes a version the challenger
(``models/shadow``), ``gates VERSION`` only evaluates, ``audit`` prints the log.
Every change is audited (:mod:`export.lifecycle`) and mirrored to MLflow when
``MLFLOW_TRACKING_URI`` is set. Exit codes: 0 done, 1 refused or failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from export.errors import GateError, ModelLoadError, RegistryError
from export.gates import GateConfig, GateReport, Holdout, evaluate, shadow_checks
from export.lifecycle import Lifecycle
from export.mlflow_sync import MlflowSync
from export.release import load_champion
from topics.errors import FraudStreamError

STYLE = {"champion": "bold green", "shadow": "cyan", "candidate": "", "retired": "dim",
         "rejected": "red"}


def _lifecycle(args: argparse.Namespace) -> Lifecycle:
    sync = MlflowSync.from_env()
    return Lifecycle(args.models_dir, listeners=[sync.listener] if sync else [])


def _metadata(lifecycle: Lifecycle, version: str) -> Any:
    from export.model import load_model

    return load_model(lifecycle.registry.path(version), expected_feature_spec=None)


def read_drift_snapshots(path: Path | None) -> list[Any]:
    """Drift snapshots from a JSON-lines file, or from the ``drift`` topic of the broker.

    The topic is read by assignment (no consumer group) with :func:`topics.reader.read_topic`.
    Raises :class:`FraudStreamError` when no broker is configured.
    """
    import msgspec

    from topics.contracts import DriftSnapshot

    if path is not None:
        lines = Path(path).read_text().splitlines()
        return [msgspec.json.decode(line, type=DriftSnapshot) for line in lines if line.strip()]
    from topics.devbroker import running_dev_broker
    from topics.reader import read_topic
    from topics.settings import KafkaSettings

    settings = KafkaSettings.from_env()
    if not settings.bootstrap_servers:
        dev = running_dev_broker()
        if dev is None:
            raise GateError(
                "shadow evidence is read from the drift topic: set KAFKA_BOOTSTRAP_SERVERS (and "
                "FRAUD_TOPIC_PREFIX), run `just broker`, or pass --drift-file (lines of "
                "`just tail drift --json`)"
            )
        settings = settings.with_bootstrap(dev.bootstrap)
    records = read_topic(settings, settings.topic("drift"), timeout=3.0)
    return [msgspec.json.decode(r.value, type=DriftSnapshot) for r in records if r.value]


def gate_report(lifecycle: Lifecycle, version: str, cfg: GateConfig,
                drift_file: Path | None = None, shadow: bool | None = None) -> GateReport:
    """Gates of a published ``version`` now: minimums, vs the champion, shadow evidence."""
    lifecycle.require(version)
    candidate = _metadata(lifecycle, version)
    champion = load_champion(lifecycle)
    if champion is not None and champion.version == version:
        champion = None
    holdout = Holdout.read(lifecycle.registry.path(version), candidate.feature_names)
    report = evaluate(version, candidate.metadata.training_metrics, cfg, candidate=candidate,
                      champion=champion, holdout=holdout)
    if shadow if shadow is not None else lifecycle.shadow() == version:
        snaps = read_drift_snapshots(drift_file)
        report.checks += shadow_checks(snaps, version, lifecycle.champion(), cfg)
    return report


def _print_report(report: GateReport) -> None:
    for check in report.checks:
        print(f"  {'ok  ' if check.passed else 'FAIL'} {check.describe()}")


def cmd_models(args: argparse.Namespace) -> None:
    """The versions table."""
    from rich.table import Table

    from devkit.cli import table_console

    lifecycle = Lifecycle(args.models_dir)
    records = lifecycle.records()
    rows = []
    for version, rec in records.items():
        created = rec.created
        if not created:
            try:
                created = _metadata(lifecycle, version).metadata.created_at
            except FraudStreamError:
                created = "?"
        rows.append((created, version, rec))
    rows.sort(key=lambda r: (r[0], r[1]))
    if args.json:
        print(json.dumps([{"version": v, "created": c, **rec.to_dict()} for c, v, rec in rows],
                         indent=2))
        return
    table = Table(title=f"models in {lifecycle.root}", title_justify="left")
    for col in ("version", "created (UTC)", "state", "gates", "AUC", "AP", "decline P/R"):
        table.add_column(col, no_wrap=col != "gates")
    for created, version, rec in rows:
        m = rec.metrics
        gates = "-"
        if rec.gates:
            failed = [c["name"] for c in rec.gates.get("checks", []) if not c.get("passed")]
            gates = "passed" if rec.gates.get("passed") else "FAILED " + ", ".join(failed)
        pr = (f"{m['decline_precision']:.2f}/{m['decline_recall']:.2f}"
              if "decline_precision" in m and "decline_recall" in m else "-")
        table.add_row(version, created[:19].replace("T", " "), rec.state, gates,
                      f"{m['auc_roc']:.4f}" if "auc_roc" in m else "-",
                      f"{m['average_precision']:.4f}" if "average_precision" in m else "-",
                      pr, style=STYLE.get(rec.state, ""))
    console = table_console(args.width)
    if not rows:
        console.print(f"no models in {lifecycle.root}; publish one with `just export-onnx`")
        return
    console.print(table)
    console.print(f"champion: {lifecycle.champion() or '-'}   shadow: {lifecycle.shadow() or '-'}"
                  f"   rollback target: {(lifecycle.champion_history()[-2:-1] or ['-'])[0]}")


def cmd_gates(args: argparse.Namespace) -> None:
    """Evaluate and print; record the result."""
    lifecycle = _lifecycle(args)
    cfg = GateConfig.load(args.gates, args.gate)
    report = gate_report(lifecycle, args.version, cfg, args.drift_file, args.shadow or None)
    _print_report(report)
    lifecycle.record_gates(args.version, report)
    print(f"{args.version}: gates {report.summary()}")
    if not report.passed:
        raise SystemExit(1)


def cmd_promote(args: argparse.Namespace) -> None:
    """Gate, then move ``models/current``."""
    lifecycle = _lifecycle(args)
    cfg = GateConfig.load(args.gates, args.gate)
    if args.shadow_days is not None:
        cfg = GateConfig.from_mapping({**cfg.to_dict(), "shadow_min_days": args.shadow_days})
    report = gate_report(lifecycle, args.version, cfg, args.drift_file)
    _print_report(report)
    previous = lifecycle.promote(args.version, report, reason=args.reason, force=args.force)
    forced = " (FORCED past failed gates)" if not report.passed else ""
    print(f"promoted {args.version} to champion{forced}; was {previous or 'none'}; "
          f"{lifecycle.root}/current -> {args.version}")
    _warn(lifecycle)


def cmd_rollback(args: argparse.Namespace) -> None:
    """Back to the previous champion."""
    lifecycle = _lifecycle(args)
    old, new = lifecycle.rollback(reason=args.reason)
    print(f"rolled back: {old} retired, {new} is champion again; {lifecycle.root}/current -> {new}")
    _warn(lifecycle)


def cmd_shadow(args: argparse.Namespace) -> None:
    """Set or clear the challenger."""
    lifecycle = _lifecycle(args)
    if args.clear:
        gone = lifecycle.clear_shadow(reason=args.reason)
        print(f"no challenger now (was {gone or 'none'}); {lifecycle.root}/shadow removed")
    else:
        if args.version is None:
            raise GateError("shadow: give a VERSION, or --clear")
        previous = lifecycle.set_shadow(args.version, reason=args.reason)
        print(f"{args.version} is the challenger (was {previous or 'none'}); "
              f"{lifecycle.root}/shadow -> {args.version}. Score it beside the champion with "
              f"FRAUD_SHADOW_MODEL_PATH={lifecycle.root}/shadow")
    _warn(lifecycle)


def cmd_audit(args: argparse.Namespace) -> None:
    """The audit log, newest last."""
    for rec in Lifecycle(args.models_dir).audit()[-args.limit:]:
        print(json.dumps(rec, sort_keys=True) if args.json else
              f"{rec['time']} {rec['user']}@{rec['host']} {rec['action']} {rec['version']} "
              f"{rec.get('from_state') or '-'}->{rec.get('to_state') or '-'}"
              + (f" reason={rec['reason']!r}" if rec.get("reason") else "")
              + (" FORCED" if rec.get("forced") else ""))


def _warn(lifecycle: Lifecycle) -> None:
    for w in lifecycle.warnings:
        print(f"warning: MLflow not updated: {w}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` explains every command)."""
    p = argparse.ArgumentParser(prog="python -m export.cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", type=Path, default=Path("models"),
                   help="registry root (default: models)")
    # also accepted after the command (`just models --models-dir X`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", type=Path, default=argparse.SUPPRESS,
                        help="registry root (default: models)")
    sub = p.add_subparsers(dest="command", required=True)

    def gate_flags(q: argparse.ArgumentParser) -> None:
        q.add_argument("--gates", type=Path, default=None, metavar="FILE",
                       help="gate limits, TOML or JSON (see export/gates.py for the defaults)")
        q.add_argument("--gate", action="append", default=[], metavar="NAME=VALUE",
                       help="override one gate limit (repeatable)")
        q.add_argument("--drift-file", type=Path, default=None, metavar="FILE",
                       help="shadow evidence from this JSON-lines file (`just tail drift --json`) "
                            "instead of the drift topic")

    q = sub.add_parser("models", parents=[common],
                       help="list versions: state, gates, test metrics")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--width", type=int, default=None,
                   help="table width (default: the terminal's; 160 when not a terminal)")
    q.set_defaults(func=cmd_models)

    q = sub.add_parser("gates", parents=[common],
                       help="evaluate a version's gates now (no state change)")
    q.add_argument("version")
    q.add_argument("--shadow", action="store_true",
                   help="include shadow evidence even if the version is not the shadow")
    gate_flags(q)
    q.set_defaults(func=cmd_gates)

    q = sub.add_parser("promote", parents=[common],
                       help="make VERSION the champion after its gates")
    q.add_argument("version")
    q.add_argument("--force", action="store_true",
                   help="promote although a gate failed (needs --reason; audited)")
    q.add_argument("--reason", default="", help="why (written to the audit log)")
    q.add_argument("--shadow-days", type=float, default=None,
                   help="days of shadow evidence required for a challenger (default: the gate "
                        "config's shadow_min_days, 7)")
    gate_flags(q)
    q.set_defaults(func=cmd_promote)

    q = sub.add_parser("rollback", parents=[common],
                       help="make the previous champion current again")
    q.add_argument("--reason", default="", help="why (written to the audit log)")
    q.set_defaults(func=cmd_rollback)

    q = sub.add_parser("shadow", parents=[common],
                       help="make VERSION the challenger (models/shadow)")
    q.add_argument("version", nargs="?")
    q.add_argument("--clear", action="store_true", help="remove the challenger")
    q.add_argument("--reason", default="", help="why (written to the audit log)")
    q.set_defaults(func=cmd_shadow)

    q = sub.add_parser("audit", parents=[common],
                       help="print the audit log")
    q.add_argument("--limit", type=int, default=50, help="last N records (default 50)")
    q.add_argument("--json", action="store_true", help="raw JSON lines")
    q.set_defaults(func=cmd_audit)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit 0 done, 1 refused/failed, 2 bad input."""
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except GateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RegistryError, ModelLoadError, FraudStreamError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
