"""Validation gates a model must pass before it may become the champion (``models/current``).

Three kinds of check, each a :class:`Check` with its value, limit and outcome:

1. **Minimums** on the model's held-out test period, read from the training report
   (``TrainedModel.metrics["test"]["ensemble"]``, also embedded in the ONNX metadata
   as ``training_metrics``): AUC ROC, average precision, precision and recall at the
   decline threshold, card precision@100 (:mod:`training.report` defines each).
2. **No worse than the champion** on the same rows: the champion's ONNX and the
   candidate's ONNX both score the candidate's held-out rows (:class:`Holdout`:
   features, eventual labels, event times, card ids) and the candidate may trail
   by at most ``max_drop_*`` (absolute) in AP, AUC and card precision@k. Skipped
   (and said so) when there is no champion, when the held-out labels are missing
   (older training artifacts), or when the champion reads another feature spec.
3. **Shadow evidence** (promoting a challenger that rode along in the flow): from
   the ``drift`` topic's snapshots (:class:`topics.contracts.DriftSnapshot`), at
   least ``shadow_min_days`` of event time scored side by side, decision agreement
   at least ``shadow_min_agreement``, at least ``shadow_min_fraud_labels`` fraud
   labels judged, and the shadow's label precision and recall (flagged = review or
   decline) no more than ``shadow_max_*_drop`` below the champion's on the same windows.

Configuration: defaults below, a TOML or JSON file (``--gates FILE``; keys as the
:class:`GateConfig` fields, top level or under ``[gates]``), then ``--gate NAME=VALUE``
flags. Defaults (chosen for the simulated worlds; set them from your champion):

==============================  =======  ==========================================
setting                         default  meaning
==============================  =======  ==========================================
min_auc_roc                     0.80     test-period AUC ROC
min_average_precision           0.30     test-period average precision
min_decline_precision           0.70     precision of score >= decline threshold
min_decline_recall              0.10     recall of score >= decline threshold
min_card_precision_at_100       0.0      daily card precision@100 (capped by fraud volume)
max_drop_average_precision      0.02     vs champion, same rows
max_drop_auc_roc                0.01     vs champion, same rows
max_drop_card_precision         0.02     vs champion, same rows (needs event times, cards)
require_champion_comparison     false    fail instead of skip when it cannot run
shadow_min_days                 7.0      event-time days of side-by-side scoring
shadow_min_agreement            0.90     share of equal decisions
shadow_min_fraud_labels         10       fraud labels judged in those windows
shadow_max_precision_drop       0.05     label precision vs champion
shadow_max_recall_drop          0.05     label recall vs champion
==============================  =======  ==========================================
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import GateError
from export.pseudonym import card_pseudonyms

DAY_MS = 86_400_000
HOLDOUT_FILE = "holdout.parquet"


@dataclass(frozen=True)
class GateConfig:
    """Gate limits; see the module docstring for each default."""

    min_auc_roc: float = 0.80
    min_average_precision: float = 0.30
    min_decline_precision: float = 0.70
    min_decline_recall: float = 0.10
    min_card_precision_at_100: float = 0.0
    max_drop_average_precision: float = 0.02
    max_drop_auc_roc: float = 0.01
    max_drop_card_precision: float = 0.02
    require_champion_comparison: bool = False
    shadow_min_days: float = 7.0
    shadow_min_agreement: float = 0.90
    shadow_min_fraud_labels: int = 10
    shadow_max_precision_drop: float = 0.05
    shadow_max_recall_drop: float = 0.05

    @classmethod
    def load(cls, path: Path | None = None, overrides: Sequence[str] = ()) -> GateConfig:
        """Defaults, then ``path`` (TOML/JSON), then ``NAME=VALUE`` overrides.

        Raises :class:`GateError` naming an unknown setting or a bad value.
        """
        values: dict[str, Any] = {}
        if path is not None:
            try:
                text = Path(path).read_text()
                raw = json.loads(text) if str(path).endswith(".json") else tomllib.loads(text)
            except OSError as exc:
                raise GateError(f"cannot read gate config {path}: {exc.strerror}") from exc
            except (ValueError, tomllib.TOMLDecodeError) as exc:
                raise GateError(f"gate config {path} is not valid TOML/JSON: {exc}") from exc
            values.update(raw.get("gates", raw))
        for item in overrides:
            name, sep, value = item.partition("=")
            if not sep:
                raise GateError(f"--gate {item!r}: expected NAME=VALUE, e.g. min_auc_roc=0.9")
            values[name.strip()] = value.strip()
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> GateConfig:
        """Typed config from loose values (strings from flags are converted)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            if name not in fields:
                raise GateError(
                    f"unknown gate setting {name!r}; known: {', '.join(sorted(fields))}"
                )
            kind = type(getattr(cls(), name))
            try:
                if kind is bool:
                    kwargs[name] = value if isinstance(value, bool) else (
                        str(value).lower() in {"1", "true", "yes", "on"})
                else:
                    kwargs[name] = kind(value)
            except (TypeError, ValueError) as exc:
                raise GateError(f"gate setting {name}={value!r}: expected {kind.__name__}") from exc
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (recorded with every gate report)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Check:
    """One gate: what was measured, against what limit, and whether it passed."""

    name: str
    passed: bool
    value: float | None = None
    limit: float | None = None
    note: str = ""

    def describe(self) -> str:
        """One line, e.g. ``average_precision 0.2500 < min 0.3000``."""
        if self.value is None:
            return f"{self.name}: {self.note}"
        rel = ">=" if self.passed else "<"
        text = f"{self.name} {self.value:.4f}"
        if self.limit is not None:
            text += f" {rel} {self.limit:.4f}"
        return text + (f" ({self.note})" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


@dataclass
class GateReport:
    """The checks of one evaluation of one version."""

    version: str
    checks: list[Check] = field(default_factory=list)
    champion: str | None = None
    evaluated_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every check passed."""
        return all(c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        """One line per failed check."""
        return [c.describe() for c in self.checks if not c.passed]

    def summary(self) -> str:
        """``passed (7 checks)`` or ``failed: <reasons>``."""
        if self.passed:
            return f"passed ({len(self.checks)} checks)"
        return "failed: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``gates.json``, the lifecycle state, MLflow)."""
        return {"version": self.version, "passed": self.passed, "champion": self.champion,
                "evaluated_at": self.evaluated_at, "checks": [c.to_dict() for c in self.checks],
                "reasons": self.reasons, "config": self.config}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateReport:
        """Inverse of :meth:`to_dict`."""
        return cls(str(d["version"]), [Check(**c) for c in d.get("checks", [])],
                   d.get("champion"), str(d.get("evaluated_at", "")), dict(d.get("config", {})))


@dataclass(frozen=True)
class Holdout:
    """Held-out rows with what the comparison needs: float32 features ``[n, F]`` and labels."""

    features: np.ndarray
    is_fraud: np.ndarray
    event_time: np.ndarray | None = None  # int64 epoch ms
    card_ref: np.ndarray | None = None  # object (str): card pseudonyms (export.pseudonym)
    candidate_scores: np.ndarray | None = None
    """The candidate's out-of-sample scores of these rows, when the served model was refitted
    on them (``TrainedModel.holdout_scores``: the selection model's scores); else None and the
    candidate's ONNX scores them."""

    @classmethod
    def from_trained(cls, trained: Any) -> Holdout | None:
        """From a ``TrainedModel``; None when it has no ``holdout_labels`` (older artifacts)."""
        labels = getattr(trained, "holdout_labels", None)
        if labels is None:
            return None
        et = getattr(trained, "holdout_event_time", None)
        cards = getattr(trained, "holdout_card_id", None)
        scores = getattr(trained, "holdout_scores", None)
        return cls(np.ascontiguousarray(trained.holdout_features, dtype=np.float32),
                   np.asarray(labels, dtype=bool),
                   None if et is None else np.asarray(et, dtype=np.int64),
                   None if cards is None else card_pseudonyms(cards),
                   None if scores is None else np.asarray(scores, dtype=np.float32))

    def to_table(self, feature_names: Sequence[str]) -> Any:
        """A ``pyarrow.Table``: the feature columns, ``is_fraud``, ``event_time``, ``card_ref``.

        ``card_ref`` holds card pseudonyms, never card ids (:mod:`export.pseudonym`): a
        published ``holdout.parquet`` carries no card data.
        """
        import pyarrow as pa

        cols: dict[str, Any] = {n: self.features[:, i] for i, n in enumerate(feature_names)}
        cols["is_fraud"] = self.is_fraud
        if self.event_time is not None:
            cols["event_time"] = self.event_time
        if self.card_ref is not None:
            cols["card_ref"] = pa.array(list(card_pseudonyms(self.card_ref)), pa.string())
        if self.candidate_scores is not None:
            cols["candidate_score"] = self.candidate_scores
        return pa.table(cols)

    @classmethod
    def from_table(cls, table: Any, feature_names: Sequence[str]) -> Holdout:
        """Inverse of :meth:`to_table`; raises :class:`GateError` when a column is missing.

        A ``card_id`` column (versions published before ``card_ref``) is pseudonymised as
        it is read, so no card id reaches the gates.
        """
        missing = [n for n in (*feature_names, "is_fraud") if n not in table.column_names]
        if missing:
            raise GateError(f"held-out rows lack column(s) {missing[:3]}; re-export the model")
        feats = np.column_stack([table.column(n).to_numpy() for n in feature_names])
        cols = table.column_names
        refs = (np.asarray(table.column("card_ref").to_pylist(), dtype=object)
                if "card_ref" in cols else card_pseudonyms(table.column("card_id").to_pylist())
                if "card_id" in cols else None)
        return cls(np.ascontiguousarray(feats, dtype=np.float32),
                   table.column("is_fraud").to_numpy().astype(bool),
                   table.column("event_time").to_numpy() if "event_time" in cols else None,
                   refs,
                   table.column("candidate_score").to_numpy().astype(np.float32)
                   if "candidate_score" in cols else None)

    @classmethod
    def read(cls, version_dir: Path, feature_names: Sequence[str]) -> Holdout | None:
        """``holdout.parquet`` of a published version, if it has one."""
        import pyarrow.parquet as pq

        path = Path(version_dir) / HOLDOUT_FILE
        return cls.from_table(pq.read_table(path), feature_names) if path.is_file() else None


def _test_metrics(training_metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    test = training_metrics.get("test", {})
    ens = test.get("ensemble", {}) if isinstance(test, Mapping) else {}
    return ens if isinstance(ens, Mapping) else {}


MINIMUMS = (
    ("auc_roc", "min_auc_roc"),
    ("average_precision", "min_average_precision"),
    ("decline_precision", "min_decline_precision"),
    ("decline_recall", "min_decline_recall"),
    ("card_precision_at_100", "min_card_precision_at_100"),
)


def minimum_checks(training_metrics: Mapping[str, Any], cfg: GateConfig) -> list[Check]:
    """Checks of the test-period metrics of the training report against the minimums."""
    test = _test_metrics(training_metrics)
    checks = []
    for metric, setting in MINIMUMS:
        limit = float(getattr(cfg, setting))
        value = test.get(metric)
        if value is None or not np.isfinite(float(value)):
            checks.append(Check(metric, limit <= 0.0, None, limit,
                                "missing from the training report's test metrics"))
            continue
        checks.append(Check(metric, float(value) >= limit, float(value), limit, "test period"))
    return checks


def _scores_metrics(scores: np.ndarray, holdout: Holdout) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = holdout.is_fraud
    out = {"average_precision": float(average_precision_score(y, scores)) if y.any() else 0.0,
           "auc_roc": float(roc_auc_score(y, scores)) if y.any() and (~y).any() else float("nan")}
    if holdout.event_time is not None and holdout.card_ref is not None:
        from training.report import card_precision_at_k

        out["card_precision_at_100"] = card_precision_at_k(
            scores, y, holdout.event_time, holdout.card_ref, 100)[0]
    return out


def champion_checks(
    candidate: Any, champion: Any | None, holdout: Holdout | None, cfg: GateConfig
) -> list[Check]:
    """Candidate vs champion (both :class:`export.model.ScoringModel`) on ``holdout``."""
    name = "vs_champion"
    skip_ok = not cfg.require_champion_comparison
    if champion is None:
        return [Check(name, True, note="no champion yet: nothing to compare with")]
    if holdout is None:
        return [Check(name, skip_ok, note=f"skipped: no held-out labels to score "
                      f"{champion.version} on (the training artifact predates holdout_labels)")]
    if tuple(champion.feature_names) != tuple(candidate.feature_names):
        return [Check(name, skip_ok, note=f"skipped: champion {champion.version} reads feature "
                      f"spec {champion.feature_spec_version}, the candidate "
                      f"{candidate.feature_spec_version}; the same rows cannot feed both")]
    if not holdout.is_fraud.any():
        return [Check(name, skip_ok, note="skipped: no fraud among the held-out rows")]
    own = holdout.candidate_scores
    mine = _scores_metrics(candidate.predict(holdout.features) if own is None else own, holdout)
    theirs = _scores_metrics(champion.predict(holdout.features), holdout)
    drops = {"average_precision": cfg.max_drop_average_precision,
             "auc_roc": cfg.max_drop_auc_roc,
             "card_precision_at_100": cfg.max_drop_card_precision}
    checks = []
    for metric, drop in drops.items():
        if metric not in mine or not np.isfinite(mine[metric]) or not np.isfinite(theirs[metric]):
            continue
        limit = theirs[metric] - drop
        checks.append(Check(f"{metric}_vs_champion", mine[metric] >= limit, mine[metric], limit,
                            f"champion {champion.version}: {theirs[metric]:.4f} on the same "
                            f"{holdout.features.shape[0]} rows, tolerance {drop:g}"))
    return checks


def evaluate(
    version: str,
    training_metrics: Mapping[str, Any],
    cfg: GateConfig,
    *,
    candidate: Any | None = None,
    champion: Any | None = None,
    holdout: Holdout | None = None,
) -> GateReport:
    """Minimums, and the champion comparison when ``candidate`` (a ScoringModel) is given."""
    checks = minimum_checks(training_metrics, cfg)
    if candidate is not None:
        checks += champion_checks(candidate, champion, holdout, cfg)
    return GateReport(version, checks, None if champion is None else champion.version,
                      config=cfg.to_dict())


def _pooled(feedbacks: Iterable[Any]) -> tuple[int, float | None, float | None]:
    """(fraud labels, precision, recall) of flagged decisions over LabelFeedback records."""
    tp = fn = fp = 0
    for f in feedbacks:
        if f is None:
            continue
        tp += f.fraud_declined + f.fraud_reviewed
        fn += f.fraud_approved
        fp += f.legit_declined + f.legit_reviewed
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    return tp + fn, precision, recall


def shadow_checks(
    snapshots: Sequence[Any], shadow_version: str, champion_version: str | None, cfg: GateConfig
) -> list[Check]:
    """Shadow evidence from drift snapshots (see the module docstring, point 3)."""
    rows = [s for s in snapshots if s.shadow is not None
            and s.shadow.model_version == shadow_version
            and (champion_version is None or s.model_version == champion_version)]
    windows = {(s.window_start, s.window_end) for s in rows if s.shadow.count > 0}
    days = sum(end - start for start, end in windows) / DAY_MS
    checks = [Check("shadow_days", days >= cfg.shadow_min_days, days, cfg.shadow_min_days,
                    f"{len(windows)} drift windows with both models")]
    weighted = [(s.shadow.agreement, s.shadow.count) for s in rows
                if s.shadow.agreement is not None and s.shadow.count > 0]
    total = sum(c for _, c in weighted)
    if total:
        agreement = sum(a * c for a, c in weighted) / total
        checks.append(Check("shadow_agreement", agreement >= cfg.shadow_min_agreement, agreement,
                            cfg.shadow_min_agreement, f"{total} transactions scored by both"))
    else:
        checks.append(Check("shadow_agreement", False, note="no side-by-side decisions on drift"))
    frauds, s_prec, s_rec = _pooled(s.shadow.labels for s in rows)
    _, c_prec, c_rec = _pooled(s.labels for s in rows)
    checks.append(Check("shadow_fraud_labels", frauds >= cfg.shadow_min_fraud_labels,
                        float(frauds), float(cfg.shadow_min_fraud_labels), "label feedback"))
    for metric, mine, theirs, drop in (
        ("shadow_label_precision", s_prec, c_prec, cfg.shadow_max_precision_drop),
        ("shadow_label_recall", s_rec, c_rec, cfg.shadow_max_recall_drop),
    ):
        if mine is None or theirs is None:
            checks.append(Check(metric, False, note="not measurable yet (no labelled flags)"))
            continue
        checks.append(Check(metric, mine >= theirs - drop, mine, theirs - drop,
                            f"champion {theirs:.4f}, tolerance {drop:g}"))
    return checks
