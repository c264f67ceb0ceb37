"""Train the XGBoost + RandomForest soft-voting ensemble on point-in-time features.

``python -m training.train --data PATH --out DIR`` (``just train DATA=path``):

1. load and validate the history (:mod:`training.history`);
2. replay it through ``state`` for point-in-time float32 features (:mod:`training.features`);
3. split by event time: train | gap | validation | gap | test, each gap equal to the
   label delay (default 7 days). Training labels are those **known at the training
   cut-off** (the start of validation): a fraud whose ``label_time`` is later counts
   as legitimate-so-far, exactly what a bank retraining that day would see.
   Validation and test are scored against every label that eventually arrived;
4. compare class weighting (XGBoost ``scale_pos_weight``, RandomForest
   ``class_weight="balanced_subsample"``) with undersampling the majority class,
   over a small XGBoost grid and three soft-vote weights; keep the best validation AP;
5. choose thresholds on validation: **decline** at the lowest score whose
   precision is >= ``decline_precision`` (0.9); **review** so that the review band
   holds at most ``review_per_day`` transactions per day (capacity);
6. evaluate on the test period and write ``model.pkl`` + the report into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.metadata import Thresholds
from topics.registry import TOPICS
from training.artifact import TrainedModel

DAY_MS = 86_400_000
Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Model sizes, split, imbalance strategies, grid and threshold policy."""

    xgb_estimators: int = 150
    xgb_depth: int = 6
    rf_estimators: int = 60
    rf_depth: int = 10
    label_delay_days: float = 7.0
    val_share: float = 0.2
    test_share: float = 0.2
    strategies: tuple[str, ...] = ("weight", "undersample")
    undersample_ratio: float = 20.0  # legit rows kept per fraud row
    xgb_grid: tuple[dict[str, Any], ...] = (
        {"learning_rate": 0.1, "min_child_weight": 1.0},
        {"learning_rate": 0.05, "min_child_weight": 5.0},
    )
    xgb_weights: tuple[float, ...] = (0.5, 0.65, 0.8)
    decline_precision: float = 0.9
    review_per_day: float = 50.0
    min_decline_support: int = 5
    n_jobs: int = 2
    seed: int = 0
    reference_rows: int = 20_000
    holdout_rows: int = 5_000
    # Merchant features are kept per input partition: replay with the stream's count.
    feature_partitions: int = TOPICS["transactions"].partitions


@dataclass
class Split:
    """Row indices (into the time-sorted history) of each period, and the cut-offs."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    bounds: dict[str, int] = field(default_factory=dict)


def time_split(event_time: np.ndarray, cfg: TrainConfig) -> Split:
    """Train | gap | validation | gap | test by event time (gap = label delay)."""
    t0, t1 = int(event_time.min()), int(event_time.max()) + 1
    span = t1 - t0
    gap = int(cfg.label_delay_days * DAY_MS)
    test_start = t1 - int(cfg.test_share * span)
    val_end = test_start - gap
    val_start = val_end - int(cfg.val_share * span)
    train_end = val_start - gap
    if train_end <= t0 + DAY_MS:
        raise ValueError(
            f"history spans {span / DAY_MS:.1f} days: too short for train | "
            f"{cfg.label_delay_days:g}-day gap | validation | gap | test; use more days "
            "or a shorter --label-delay-days"
        )

    def rows(lo: int, hi: int) -> np.ndarray:
        return np.flatnonzero((event_time >= lo) & (event_time < hi))

    bounds = {"start": t0, "train_end": train_end, "val_start": val_start, "val_end": val_end,
              "test_start": test_start, "end": t1}
    return Split(rows(t0, train_end), rows(val_start, val_end), rows(test_start, t1), bounds)


def _xgb(cfg: TrainConfig, params: dict[str, Any], spw: float) -> Any:
    from xgboost import XGBClassifier

    return XGBClassifier(
        n_estimators=cfg.xgb_estimators, max_depth=cfg.xgb_depth, tree_method="hist",
        subsample=0.8, colsample_bytree=0.8, scale_pos_weight=spw, n_jobs=cfg.n_jobs,
        random_state=cfg.seed, eval_metric="aucpr", **params,
    )


def _rf(cfg: TrainConfig, weighted: bool) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=cfg.rf_estimators, max_depth=cfg.rf_depth, min_samples_leaf=3,
        class_weight="balanced_subsample" if weighted else None, n_jobs=cfg.n_jobs,
        random_state=cfg.seed,
    )


def undersample(y: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Indices keeping every positive and ``ratio`` negatives per positive (sorted)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    keep = min(neg.size, int(ratio * max(pos.size, 1)))
    return np.sort(np.concatenate([pos, rng.choice(neg, keep, replace=False)]))


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """AP (sklearn); 0 without positives."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, s)) if y.any() else 0.0


def _rows_and_weight(y: np.ndarray, strategy: str, cfg: TrainConfig) -> tuple[np.ndarray, float]:
    """Training rows and XGBoost ``scale_pos_weight`` for one imbalance strategy."""
    if strategy == "undersample":
        return undersample(y, cfg.undersample_ratio, cfg.seed), 1.0
    if strategy == "weight":
        return np.arange(y.size), float((~y).sum() / max(int(y.sum()), 1))
    raise ValueError(f"unknown imbalance strategy {strategy!r} (weight, undersample)")


def select_and_fit(
    X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
    cfg: TrainConfig, say: Progress,
) -> tuple[Any, dict[str, Any]]:
    """Grid over strategy x XGB params x vote weight on validation AP; return the fitted ensemble.

    The winning members are fitted once more inside a ``VotingClassifier`` (same seeds and
    data, so the same trees) because that is what skl2onnx converts.
    """
    from sklearn.ensemble import VotingClassifier

    trials: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for strategy in cfg.strategies:
        rows, spw = _rows_and_weight(y_train, strategy, cfg)
        rf = _rf(cfg, strategy == "weight").fit(X_train[rows], y_train[rows])
        for params in cfg.xgb_grid:
            t0 = time.perf_counter()
            xgb = _xgb(cfg, params, spw).fit(X_train[rows], y_train[rows])
            px, pr = xgb.predict_proba(X_val)[:, 1], rf.predict_proba(X_val)[:, 1]
            for w in cfg.xgb_weights:
                ap = average_precision(y_val, w * px + (1 - w) * pr)
                trial = {"strategy": strategy, "xgb_params": params, "xgb_weight": w,
                         "val_ap": ap, "val_ap_xgb": average_precision(y_val, px),
                         "val_ap_rf": average_precision(y_val, pr)}
                trials.append(trial)
                if best is None or ap > best["val_ap"]:
                    best = trial
            say(f"  {strategy:<11} xgb {params}: val AP xgb {trials[-1]['val_ap_xgb']:.4f}, "
                f"rf {trials[-1]['val_ap_rf']:.4f}, best blend "
                f"{max(t['val_ap'] for t in trials[-len(cfg.xgb_weights):]):.4f} "
                f"({time.perf_counter() - t0:.1f}s)")
    assert best is not None
    say(f"selected: {best['strategy']}, xgb {best['xgb_params']}, xgb weight "
        f"{best['xgb_weight']} (val AP {best['val_ap']:.4f}); refitting the VotingClassifier")
    strategy = best["strategy"]
    rows, spw = _rows_and_weight(y_train, strategy, cfg)
    weighted = strategy == "weight"
    w = best["xgb_weight"]
    ensemble = VotingClassifier(
        [("xgb", _xgb(cfg, best["xgb_params"], spw)), ("rf", _rf(cfg, weighted))],
        voting="soft", weights=np.array([w, 1.0 - w]), flatten_transform=False,
    )
    ensemble.fit(X_train[rows], y_train[rows].astype(np.int64))
    return ensemble, {"selected": best, "trials": trials, "train_rows_used": int(rows.size)}


def _snap(sorted_desc: np.ndarray, k: int) -> float:
    """Threshold keeping exactly the top ``k`` scores: midway to the next lower distinct score."""
    if k <= 0:
        return float(np.nextafter(np.float32(sorted_desc[0]), np.float32(np.inf))) \
            if sorted_desc.size else 1.0
    if k >= sorted_desc.size:
        return 0.0
    hi, lo = float(sorted_desc[k - 1]), float(sorted_desc[k])
    return (hi + lo) / 2.0 if hi > lo else hi


def choose_thresholds(
    scores: np.ndarray, y: np.ndarray, days: float, cfg: TrainConfig
) -> tuple[Thresholds, dict[str, Any]]:
    """Decline at precision >= target, review up to capacity per day (see module docstring).

    Thresholds sit halfway between distinct validation scores so that float32 rounding in
    ONNX cannot flip a validation decision.
    """
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order].astype(np.float64), y[order]
    # only cut between distinct scores: cumulative precision at the last row of each tie group
    last_of_group = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(t)
    k_all = np.arange(1, s.size + 1)
    prec = tp / k_all
    ok = last_of_group & (prec >= cfg.decline_precision) & (tp >= cfg.min_decline_support)
    if ok.any():
        k_decline = int(k_all[ok].max())
        note = f"precision >= {cfg.decline_precision:g} on validation"
    else:
        k_decline = max(1, int(round(0.0005 * s.size)))
        note = (f"precision {cfg.decline_precision:g} unreachable on validation; top 0.05% "
                "of scores")
    k_review = k_decline + int(cfg.review_per_day * days)
    while k_review < s.size and k_review > 0 and s[k_review - 1] == s[k_review]:
        k_review -= 1
    decline = _snap(s, k_decline)
    review = min(_snap(s, max(k_review, k_decline)), decline)
    policy = (f"decline: {note}; review: at most {cfg.review_per_day:g} transactions/day in "
              "the review band on validation")
    info = {"k_decline": k_decline, "k_review": k_review, "val_days": days,
            "val_precision_at_decline": float(prec[k_decline - 1]) if s.size else 0.0}
    return Thresholds(review=review, decline=decline, policy=policy), info


def train_on_features(
    X: np.ndarray,
    is_fraud: np.ndarray,
    label_time: np.ndarray,
    event_time: np.ndarray,
    card_id: np.ndarray,
    scenario: Sequence[str | None],
    feature_spec: tuple[str, tuple[str, ...]],
    out_dir: Path,
    cfg: TrainConfig | None = None,
    progress: Progress | None = None,
    data_info: dict[str, Any] | None = None,
) -> TrainedModel:
    """Split, select, fit, choose thresholds, evaluate, write model + report into ``out_dir``."""
    from training.report import evaluate, write_report

    cfg = cfg or TrainConfig()
    say = progress or (lambda _m: None)
    X = np.ascontiguousarray(X, dtype=np.float32)
    split = time_split(event_time, cfg)
    cutoff = split.bounds["val_start"]
    y_known = is_fraud & (label_time <= cutoff)
    y_true = is_fraud.astype(bool)
    tr, va, te = split.train, split.val, split.test
    say(f"split: train {tr.size} rows ({int(y_known[tr].sum())} fraud labels known at cut-off, "
        f"{int(y_true[tr].sum()) - int(y_known[tr].sum())} not yet), val {va.size} "
        f"({int(y_true[va].sum())} fraud), test {te.size} ({int(y_true[te].sum())} fraud)")
    if y_known[tr].sum() < 2 or y_true[va].sum() < 1:
        raise ValueError("too few fraud labels in the training or validation period to train")
    ensemble, selection = select_and_fit(X[tr], y_known[tr], X[va], y_true[va], cfg, say)

    val_scores = ensemble.predict_proba(X[va])[:, 1]
    val_days = (split.bounds["val_end"] - split.bounds["val_start"]) / DAY_MS
    thresholds, th_info = choose_thresholds(val_scores, y_true[va], val_days, cfg)
    say(f"thresholds: review {thresholds.review:.4f}, decline {thresholds.decline:.4f}")

    scen = np.array(scenario, dtype=object)
    metrics: dict[str, Any] = {}
    for name, rows in (("validation", va), ("test", te)):
        metrics[name] = evaluate(ensemble, X[rows], y_true[rows], event_time[rows],
                                 card_id[rows], scen[rows], thresholds)
    ens_test = metrics["test"]["ensemble"]
    say(f"test: AUC {ens_test['auc_roc']:.4f}, AP {ens_test['average_precision']:.4f}, "
        f"card precision@100 {ens_test['card_precision_at_100']:.4f}")
    version, names = feature_spec
    rng = np.random.default_rng(cfg.seed)
    ref = tr if tr.size <= cfg.reference_rows else np.sort(rng.choice(tr, cfg.reference_rows,
                                                                       replace=False))
    hold = te if te.size <= cfg.holdout_rows else np.sort(rng.choice(te, cfg.holdout_rows,
                                                                     replace=False))
    metrics["data"] = {
        **(data_info or {}),
        "rows": int(X.shape[0]),
        "fraud_rows": int(y_true.sum()),
        "split_utc": {k: dt.datetime.fromtimestamp(v / 1000, dt.UTC).isoformat(timespec="minutes")
                      for k, v in split.bounds.items()},
        "train_rows": int(tr.size), "val_rows": int(va.size), "test_rows": int(te.size),
        "train_labels_policy": "fraud labels with label_time <= val_start; later ones = legit",
    }
    metrics["selection"] = {k: v for k, v in selection.items() if k != "trials"}
    metrics["trials"] = selection["trials"]
    metrics["thresholds"] = {**thresholds.to_dict(), **th_info}
    metrics["config"] = {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in asdict(cfg).items()}
    model_version = f"{version}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    trained = TrainedModel(
        ensemble=ensemble, feature_spec_version=version, feature_names=tuple(names),
        thresholds=thresholds, metrics=metrics, reference_features=X[ref],
        reference_scores=val_scores.astype(np.float32), holdout_features=X[hold],
        model_version=model_version, params=metrics["config"], reference_labels=y_true[ref],
    )
    trained.save(out_dir)
    write_report(trained, out_dir, X_test=X[te], y_test=y_true[te])
    say(f"wrote {out_dir}/model.pkl and the report (report.md, metrics.json, *.png)")
    return trained


def train_history_file(
    data: Path, out_dir: Path, cfg: TrainConfig | None = None, progress: Progress | None = None
) -> TrainedModel:
    """Load a history file, replay features through ``state``, train and report."""
    from training.features import feature_spec, point_in_time_features
    from training.history import load_history

    cfg = cfg or TrainConfig()
    say = progress or (lambda _m: None)
    say(f"loading {data}")
    history = load_history(data, label_delay_days=cfg.label_delay_days)
    say(f"{len(history)} transactions, {int(history.is_fraud.sum())} fraud labels; replaying "
        "through state for point-in-time features")
    X = point_in_time_features(
        history, lambda n: say(f"  replayed {n} transactions"), n_partitions=cfg.feature_partitions
    )
    return train_on_features(
        X, history.is_fraud, history.label_time, history.event_time, history.card_id,
        history.scenario, feature_spec(), out_dir, cfg, say, {"source": str(data)},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m training.train",
                                description="Train the fraud ensemble on a labelled history.")
    p.add_argument("--data", type=Path, required=True, help="history file (.parquet or .csv)")
    p.add_argument("--out", type=Path, default=Path("runs/train"),
                   help="output directory (default runs/train)")
    p.add_argument("--xgb-estimators", type=int, default=150)
    p.add_argument("--xgb-depth", type=int, default=6)
    p.add_argument("--rf-estimators", type=int, default=60)
    p.add_argument("--rf-depth", type=int, default=10)
    p.add_argument("--label-delay-days", type=float, default=7.0,
                   help="default label delay and the split gap (default 7)")
    p.add_argument("--review-per-day", type=float, default=50.0,
                   help="review capacity: transactions per day (default 50)")
    p.add_argument("--decline-precision", type=float, default=0.9)
    p.add_argument("--quick", action="store_true",
                   help="no grid: class weighting, one XGB setting, one vote weight")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = TrainConfig(
        xgb_estimators=args.xgb_estimators, xgb_depth=args.xgb_depth,
        rf_estimators=args.rf_estimators, rf_depth=args.rf_depth,
        label_delay_days=args.label_delay_days, review_per_day=args.review_per_day,
        decline_precision=args.decline_precision, seed=args.seed,
    )
    if args.quick:
        cfg = TrainConfig(**{**asdict(cfg), "strategies": ("weight",),
                             "xgb_grid": cfg.xgb_grid[:1], "xgb_weights": (0.65,)})
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[train {time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    from training.history import HistoryError

    try:
        train_history_file(args.data, args.out, cfg, say)
    except HistoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}; simulate one with `python -m training.simulate`", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
