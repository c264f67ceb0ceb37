"""Export, gate and publish one trained model: what ``just export-onnx`` and ``just retrain`` run.

1. convert to ONNX with probe rows, check parity (:func:`export.onnx.export_trained`):
   ``just retrain`` in memory; ``just train`` already did it and ``just export-onnx``
   reads its hand-over (:mod:`export.handover`: ONNX and Parquet, never a pickle);
2. evaluate the gates (:mod:`export.gates`): minimums on the training report's test
   period, and the champion (``models/current``) against the candidate on the
   candidate's held-out rows;
3. publish ``models/<version>/`` (with ``holdout.parquet`` and ``gates.json``) and
   record it as ``candidate`` or, when a gate failed, ``rejected`` (audited);
4. mirror it to MLflow when ``MLFLOW_TRACKING_URI`` is set (:mod:`export.mlflow_sync`);
5. when the gates passed and ``make_current``: promote it (``models/current`` moves
   atomically; the previous champion is retired). A rejected version never moves it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.gates import GateConfig, GateReport, evaluate
from export.handover import HANDOVER_DIR, Handover
from export.lifecycle import Lifecycle
from export.mlflow_sync import MlflowSync, read_run_id
from export.parity import ParityReport

KEY_METRICS = ("auc_roc", "average_precision", "decline_precision", "decline_recall",
               "card_precision_at_100")


@dataclass
class Release:
    """What :func:`release` did."""

    version: str
    target: Path
    state: str
    gates: GateReport
    parity: ParityReport
    previous_champion: str | None = None
    mlflow_version: str | None = None
    warnings: list[str] = field(default_factory=list)


def key_metrics(training_metrics: dict[str, Any]) -> dict[str, float]:
    """The test-period headline metrics shown by ``just models``."""
    test = training_metrics.get("test", {}).get("ensemble", {})
    return {k: float(test[k]) for k in KEY_METRICS if isinstance(test.get(k), int | float)}


def load_champion(lifecycle: Lifecycle) -> Any | None:
    """The serving champion as a ScoringModel, or None (no champion, or it does not load)."""
    from export.model import load_model
    from topics.errors import FraudStreamError

    current = lifecycle.champion()
    if current is None:
        return None
    try:
        return load_model(lifecycle.registry.path(current), expected_feature_spec=None)
    except FraudStreamError:
        return None


def release(
    trained: Any | Handover,
    models_dir: Path,
    *,
    version: str | None = None,
    gates: GateConfig | None = None,
    make_current: bool = True,
    report_dir: Path | None = None,
    reason: str = "",
    sync: MlflowSync | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> Release:
    """Steps 1-5 of the module docstring. Raises ExportError/RegistryError subclasses.

    ``trained``: a fitted ``training.artifact.TrainedModel`` (converted here) or a
    :class:`export.handover.Handover` read from disk (already converted by training).
    """
    from export.model import ScoringModel

    cfg = gates or GateConfig()
    lifecycle = Lifecycle(models_dir, listeners=[sync.listener] if sync else [])
    if isinstance(trained, Handover):
        handover = trained.with_version(version) if version else trained
        version = handover.metadata.model_version
        lifecycle.registry.check_new(version)
        say(f"read the training hand-over of {version} (converted and parity-checked by "
            "training)")
    else:
        version = version or trained.model_version
        lifecycle.registry.check_new(version)
        say(f"converting {version} ({len(trained.feature_names)} features)...")
        handover = Handover.from_trained(trained, version)
    data, parity, holdout = handover.onnx_bytes, handover.parity, handover.holdout
    say(f"parity ok on {parity.rows} held-out rows: max |diff| {parity.max_abs_diff:.2e}, "
        "decisions identical; probe rows stored")
    candidate = ScoringModel.from_bytes(data, "<candidate>", None)
    metadata = candidate.metadata
    metrics = dict(metadata.training_metrics)
    champion = load_champion(lifecycle)
    report = evaluate(version, metrics, cfg, candidate=candidate, champion=champion,
                      holdout=holdout)
    state = "candidate" if report.passed else "rejected"
    for check in report.checks:
        say(f"  gate {'ok  ' if check.passed else 'FAIL'} {check.describe()}")
    target = lifecycle.registry.publish(
        version, data, report_dir=report_dir, parity=parity, make_current=False,
        reference=handover.reference,
        holdout=None if holdout is None else holdout.to_table(metadata.feature_names),
        gates=report.to_dict(),
    )
    lifecycle.record_published(version, state, report, key_metrics(metrics),
                               reason=reason or "export")
    result = Release(version, target, state, report, parity)
    if sync is not None:
        try:
            run_id = read_run_id(report_dir) if report_dir is not None else None
            result.mlflow_version = sync.log_export(version, target, state, run_id)
            say(f"MLflow: registered {sync.model_name} version {result.mlflow_version} "
                f"({sync.uri})")
        except Exception as exc:  # the local registry stays authoritative
            result.warnings.append(f"MLflow export failed: {type(exc).__name__}: {exc}")
    if report.passed and make_current:
        result.previous_champion = lifecycle.promote(
            version, report, reason=reason or "export: gates passed")
        result.state = "champion"
    result.warnings += lifecycle.warnings
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: export the training artifact, gate it and publish it as a new registry version.

    Exit codes: 0 published (and current unless ``--no-current``), 1 export or registry
    error, 2 bad input, 3 published as **rejected** by a gate (``models/current`` unchanged).
    """
    from export.errors import ExportError, GateError
    from export.handover import load

    parser = argparse.ArgumentParser(
        prog="python -m export.release", description=(__doc__ or "").split("\n")[0],
        epilog="Gates: see `python -m export.cli gates --help` and export/gates.py. With "
               "MLFLOW_TRACKING_URI set, the version is also registered in MLflow. Exit codes: "
               "0 published, 1 error, 2 bad input, 3 rejected by a gate.",
    )
    parser.add_argument("--model", type=Path, default=Path("runs/train"),
                        help="training output directory, or its handover/ (default: runs/train); "
                             "model.pkl is never loaded")
    parser.add_argument("--models-dir", type=Path, default=Path("models"),
                        help="registry root (default: models)")
    parser.add_argument("--version", default=None,
                        help="model version (default: the one training chose)")
    parser.add_argument("--no-current", action="store_true",
                        help="publish as a candidate without pointing models/current at it")
    parser.add_argument("--gates", type=Path, default=None, metavar="FILE",
                        help="gate limits (TOML or JSON; default: the built-in minimums)")
    parser.add_argument("--gate", action="append", default=[], metavar="NAME=VALUE",
                        help="override one gate limit, e.g. --gate min_auc_roc=0.9 (repeatable)")
    parser.add_argument("--reason", default="", help="why, for the audit log")
    args = parser.parse_args(argv)

    try:
        cfg = GateConfig.load(args.gates, args.gate)
    except GateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        handover = load(args.model)  # ONNX + Parquet + JSON: never unpickles
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model_dir = args.model if args.model.is_dir() else args.model.parent
    if model_dir.name == HANDOVER_DIR:
        model_dir = model_dir.parent  # the report files are in the training output
    try:
        result = release(
            handover, args.models_dir, version=args.version, gates=cfg,
            make_current=not args.no_current, report_dir=model_dir, reason=args.reason,
            sync=MlflowSync.from_env(), say=lambda m: print(f"[export] {m}", flush=True),
        )
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for warning in result.warnings:
        print(f"[export] warning: {warning}", file=sys.stderr)
    if result.state == "rejected":
        print(f"[export] published {result.target} as REJECTED: "
              f"{'; '.join(result.gates.reasons)}; models/current unchanged "
              f"({result.gates.champion or 'none'})")
        return 3
    where = " (models/current)" if result.state == "champion" else " (candidate)"
    print(f"[export] published {result.target}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
