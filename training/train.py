"""Train the XGBoost + RandomForest soft-voting ensemble on point-in-time features.

``python -m training.train --data PATH --out DIR`` (``just train DATA=path``):

1. load, validate and de-duplicate the history (:mod:`training.history`; ``--skip-invalid``
   skips bad rows instead of refusing the file);
2. replay it through ``state`` for point-in-time float32 features (:mod:`training.features`);
3. split by event time: train | gap | validation | gap | test, each gap equal to the
   label delay (default 7 days); lengths from ``--validation-days``/``--test-days``
   (default 20% of the span each) or ``--train-share``. Training labels are those
   **known at the training cut-off** (the start of validation): a fraud whose
   ``label_time`` is later counts as legitimate-so-far, exactly what a bank retraining
   that day would see. Validation and test are scored against every label that
   eventually arrived;
4. **selection**: compare class weighting (XGBoost ``scale_pos_weight``, RandomForest
   ``class_weight="balanced_subsample"``) with undersampling the majority class, over a
   small XGBoost grid and three soft-vote weights; keep the best validation AP;
5. thresholds of the selection model, on validation: **decline** at the lowest score
   whose precision is >= ``decline_precision`` (0.9); **review** so that the review
   band holds at most ``review_per_day`` transactions per day (capacity);
6. **holdout test**: the selection model on the test period (the honest figures);
7. optionally (``--protocol prequential``) **prequential** evaluation: the test period
   in ``--blocks`` successive blocks; for each, the selected recipe is fitted on every
   row before the block minus one label delay (labels known at the block's start),
   thresholds recalibrated as in 8, and the block scored: per block and pooled;
8. **refit** (default; ``--no-refit`` serves the selection model): the selected recipe
   fitted on every row up to one label delay before the end of the history, with the
   labels known at the end. The last label-delay days are left out of the fit (most of
   their frauds are not labelled yet) and serve as the **calibration window**, unseen
   by both models. Thresholds are **rank-matched** there (:func:`recalibrate`): the
   refitted model declines as many window transactions as the selection model's
   validated decline threshold does (when that is at least ``min_decline_support``;
   else the validated value is kept), and its review band holds as many as the
   selection model's band there, capped at ``review_per_day`` per day. So capacity holds
   by construction on unseen traffic; decline precision is expected to stay near its
   validated level because the refitted model ranks at least as well at equal volume,
   which is an assumption: ``--protocol prequential`` measures exactly this procedure
   (refit before each block, recalibrate, score the block) and reports it;
9. write ``model.pkl`` (the served model, for notebooks) and the report into ``--out``,
   with the time of each phase; the CLI also writes ``--out/handover/`` (ONNX and
   Parquet, :mod:`export.handover`), the only thing ``just export-onnx`` reads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.metadata import Thresholds
from export.pseudonym import card_pseudonyms
from topics.errors import FraudStreamError
from training.artifact import TrainedModel

DAY_MS = 86_400_000
Progress = Callable[[str], None]
PROTOCOLS = ("holdout", "prequential")


class TrainingError(FraudStreamError, ValueError):
    """The history cannot be trained on as configured; the message says what to change."""


@dataclass(frozen=True)
class TrainConfig:
    """Model sizes, split and protocol, imbalance strategies, grid and threshold policy.

    Split lengths: ``val_days``/``test_days`` (days) when given, else
    ``val_share``/``test_share`` of the span; with ``train_share`` the training period
    is that share of the span and validation and test share the rest (equally, or
    the one not given in days takes the remainder).
    """

    xgb_estimators: int = 150
    xgb_depth: int = 6
    rf_estimators: int = 60
    rf_depth: int = 10
    label_delay_days: float = 7.0
    val_share: float = 0.2
    test_share: float = 0.2
    train_share: float | None = None
    val_days: float | None = None
    test_days: float | None = None
    protocol: str = "holdout"
    blocks: int = 4
    refit: bool = True
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


# --------------------------------------------------------------------------- splits


@dataclass
class Split:
    """Row indices (into the time-sorted history) of each period, and the cut-offs (ms)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    bounds: dict[str, int] = field(default_factory=dict)


def _rows(event_time: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.flatnonzero((event_time >= lo) & (event_time < hi))


def _lengths(span: int, gap: int, cfg: TrainConfig) -> tuple[int, int]:
    """(validation, test) lengths in ms; see :class:`TrainConfig`."""
    if cfg.train_share is None:
        val = cfg.val_days * DAY_MS if cfg.val_days is not None else cfg.val_share * span
        test = cfg.test_days * DAY_MS if cfg.test_days is not None else cfg.test_share * span
        return int(val), int(test)
    if cfg.val_days is not None and cfg.test_days is not None:
        raise TrainingError("give at most two of --train-share, --validation-days and "
                            "--test-days (the third follows from the history's span)")
    rest = span - cfg.train_share * span - 2 * gap
    if cfg.val_days is not None:
        val = cfg.val_days * DAY_MS
        test = rest - val
    elif cfg.test_days is not None:
        test = cfg.test_days * DAY_MS
        val = rest - test
    else:
        val = test = rest / 2
    if val < DAY_MS or test < DAY_MS:
        raise TrainingError(
            f"--train-share {cfg.train_share:g} leaves {rest / DAY_MS:.1f} days for validation "
            f"and test after two {cfg.label_delay_days:g}-day gaps; use a smaller --train-share "
            "or shorter --validation-days/--test-days")
    return int(val), int(test)


def time_split(event_time: np.ndarray, cfg: TrainConfig) -> Split:
    """Train | gap | validation | gap | test by event time (gap = label delay).

    Raises :class:`TrainingError` when the history is too short for the lengths asked.
    """
    t0, t1 = int(event_time.min()), int(event_time.max()) + 1
    span = t1 - t0
    gap = int(cfg.label_delay_days * DAY_MS)
    val_len, test_len = _lengths(span, gap, cfg)
    test_start = t1 - test_len
    val_end = test_start - gap
    val_start = val_end - val_len
    train_end = val_start - gap
    if train_end <= t0 + DAY_MS or val_len <= 0 or test_len <= 0:
        raise TrainingError(
            f"history spans {span / DAY_MS:.1f} days: too short for train | "
            f"{cfg.label_delay_days:g}-day gap | validation ({val_len / DAY_MS:.1f} d) | gap | "
            f"test ({test_len / DAY_MS:.1f} d); use more days, shorter --validation-days/"
            "--test-days or a shorter --label-delay-days"
        )
    bounds = {"start": t0, "train_end": train_end, "val_start": val_start, "val_end": val_end,
              "test_start": test_start, "end": t1}
    return Split(_rows(event_time, t0, train_end), _rows(event_time, val_start, val_end),
                 _rows(event_time, test_start, t1), bounds)


@dataclass(frozen=True)
class Block:
    """One prequential block: fit on ``train`` (event time < ``train_end``), test on ``test``.

    ``train_end`` is ``start`` minus the label delay; labels are those known at
    ``start``; ``calib`` ([``train_end``, ``start``)) is seen by neither the block's
    model nor the selection model and recalibrates the thresholds.
    """

    index: int
    start: int
    end: int
    train_end: int
    train: np.ndarray
    calib: np.ndarray
    test: np.ndarray


def prequential_blocks(event_time: np.ndarray, split: Split, cfg: TrainConfig) -> list[Block]:
    """The test period cut into ``cfg.blocks`` successive blocks of equal length."""
    t0, start, end = split.bounds["start"], split.bounds["test_start"], split.bounds["end"]
    gap = int(cfg.label_delay_days * DAY_MS)
    edges = np.linspace(start, end, cfg.blocks + 1).round().astype(np.int64)
    edges[-1] = end
    out = []
    for b in range(cfg.blocks):
        lo, hi = int(edges[b]), int(edges[b + 1])
        out.append(Block(b + 1, lo, hi, lo - gap, _rows(event_time, t0, lo - gap),
                         _rows(event_time, lo - gap, lo), _rows(event_time, lo, hi)))
    return out


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Recipe:
    """What selection chooses: imbalance strategy, XGBoost parameters, XGBoost vote weight."""

    strategy: str
    xgb_params: dict[str, Any]
    xgb_weight: float


class Blend:
    """Soft vote of fitted members, computed as ``VotingClassifier(voting="soft")`` does.

    Used for the models that are evaluated but never exported (selection, prequential),
    so they need no second fit inside a ``VotingClassifier``.
    """

    def __init__(self, members: dict[str, Any], weights: Sequence[float]) -> None:
        self.named_estimators_ = dict(members)
        self.weights = np.asarray(weights, dtype=float)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``[n, 2]`` class probabilities (weighted mean of the members')."""
        probas = [est.predict_proba(X) for est in self.named_estimators_.values()]
        return np.average(np.stack(probas), axis=0, weights=self.weights)


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
    raise TrainingError(f"unknown imbalance strategy {strategy!r} (weight, undersample)")


def select(
    X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
    cfg: TrainConfig, say: Progress,
) -> tuple[Recipe, Blend, dict[str, Any]]:
    """Grid over strategy x XGB params x vote weight on validation AP.

    Returns the winning recipe, the selection model (its members as fitted in the grid)
    and ``{"selected", "trials", "train_rows_used"}``.
    """
    trials: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_members: dict[str, Any] = {}
    for strategy in cfg.strategies:
        rows, spw = _rows_and_weight(y_train, strategy, cfg)
        rf = _rf(cfg, strategy == "weight").fit(X_train[rows], y_train[rows])
        pr = rf.predict_proba(X_val)[:, 1]
        for params in cfg.xgb_grid:
            t0 = time.perf_counter()
            xgb = _xgb(cfg, params, spw).fit(X_train[rows], y_train[rows])
            px = xgb.predict_proba(X_val)[:, 1]
            for w in cfg.xgb_weights:
                ap = average_precision(y_val, w * px + (1 - w) * pr)
                trial = {"strategy": strategy, "xgb_params": params, "xgb_weight": w,
                         "val_ap": ap, "val_ap_xgb": average_precision(y_val, px),
                         "val_ap_rf": average_precision(y_val, pr), "rows": int(rows.size)}
                trials.append(trial)
                if best is None or ap > best["val_ap"]:
                    best, best_members = trial, {"xgb": xgb, "rf": rf}
            say(f"  {strategy:<11} xgb {params}: val AP xgb {trials[-1]['val_ap_xgb']:.4f}, "
                f"rf {trials[-1]['val_ap_rf']:.4f}, best blend "
                f"{max(t['val_ap'] for t in trials[-len(cfg.xgb_weights):]):.4f} "
                f"({time.perf_counter() - t0:.1f}s)")
    assert best is not None
    recipe = Recipe(best["strategy"], dict(best["xgb_params"]), float(best["xgb_weight"]))
    say(f"selected: {recipe.strategy}, xgb {recipe.xgb_params}, xgb weight "
        f"{recipe.xgb_weight} (val AP {best['val_ap']:.4f})")
    blend = Blend(best_members, [recipe.xgb_weight, 1.0 - recipe.xgb_weight])
    return recipe, blend, {"selected": {k: v for k, v in best.items() if k != "rows"},
                           "trials": trials, "train_rows_used": best["rows"]}


def fit_blend(X: np.ndarray, y: np.ndarray, recipe: Recipe, cfg: TrainConfig) -> Blend:
    """Fit the recipe's members on ``X, y`` (for evaluation only)."""
    rows, spw = _rows_and_weight(y, recipe.strategy, cfg)
    xgb = _xgb(cfg, recipe.xgb_params, spw).fit(X[rows], y[rows])
    rf = _rf(cfg, recipe.strategy == "weight").fit(X[rows], y[rows])
    return Blend({"xgb": xgb, "rf": rf}, [recipe.xgb_weight, 1.0 - recipe.xgb_weight])


def fit_ensemble(X: np.ndarray, y: np.ndarray, recipe: Recipe, cfg: TrainConfig) -> Any:
    """Fit the recipe as the ``VotingClassifier`` that export converts (skl2onnx)."""
    from sklearn.ensemble import VotingClassifier

    rows, spw = _rows_and_weight(y, recipe.strategy, cfg)
    w = recipe.xgb_weight
    ensemble = VotingClassifier(
        [("xgb", _xgb(cfg, recipe.xgb_params, spw)),
         ("rf", _rf(cfg, recipe.strategy == "weight"))],
        voting="soft", weights=np.array([w, 1.0 - w]), flatten_transform=False,
    )
    ensemble.fit(X[rows], y[rows].astype(np.int64))
    return ensemble


# --------------------------------------------------------------------------- thresholds


def _snap(sorted_desc: np.ndarray, k: int) -> float:
    """Threshold keeping exactly the top ``k`` scores: midway to the next lower distinct score."""
    if k <= 0:
        return float(np.nextafter(np.float32(sorted_desc[0]), np.float32(np.inf))) \
            if sorted_desc.size else 1.0
    if k >= sorted_desc.size:
        return 0.0
    hi, lo = float(sorted_desc[k - 1]), float(sorted_desc[k])
    return (hi + lo) / 2.0 if hi > lo else hi


def _untie(s: np.ndarray, k: int) -> int:
    """Largest ``k' <= k`` that does not cut a group of tied scores (``s`` descending)."""
    while 0 < k < s.size and s[k - 1] == s[k]:
        k -= 1
    return k


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
    k_review = _untie(s, k_decline + int(cfg.review_per_day * days))
    decline = _snap(s, k_decline)
    review = min(_snap(s, max(k_review, k_decline)), decline)
    policy = (f"decline: {note}; review: at most {cfg.review_per_day:g} transactions/day in "
              "the review band on validation")
    info = {"k_decline": k_decline, "k_review": k_review, "val_days": days,
            "val_precision_at_decline": float(prec[k_decline - 1]) if s.size else 0.0}
    return Thresholds(review=review, decline=decline, policy=policy), info


def recalibrate(
    validated: Thresholds, selection_scores: np.ndarray, new_scores: np.ndarray,
    window_days: float, cfg: TrainConfig,
) -> tuple[Thresholds, dict[str, Any]]:
    """Thresholds for a model fitted after selection, rank-matched on an unseen window.

    ``selection_scores`` and ``new_scores`` score the same transactions (a window that
    neither model trained on, ``window_days`` long). The new **decline** threshold
    declines as many of them as ``validated.decline`` does with the selection model
    (if that is at least ``cfg.min_decline_support``; otherwise ``validated.decline`` is
    kept as it is); the new **review** band holds as many as the selection model's band,
    capped at ``cfg.review_per_day`` per day. Cuts never split tied scores and sit
    between distinct scores (see :func:`choose_thresholds`). Without a window (label
    delay 0) the validated thresholds are kept.
    """
    s_new = np.sort(np.asarray(new_scores, dtype=np.float64))[::-1]
    sel = np.asarray(selection_scores, dtype=np.float64)
    cap = int(cfg.review_per_day * window_days)
    if s_new.size == 0 or window_days <= 0:
        kept = Thresholds(validated.review, validated.decline,
                          "as validated on the selection model (no calibration window)")
        return kept, {"method": "kept", "window_rows": 0}
    k_dec_sel = int((sel >= validated.decline).sum())
    band_sel = int((sel >= validated.review).sum()) - k_dec_sel
    if k_dec_sel >= cfg.min_decline_support:
        k_dec = _untie(s_new, k_dec_sel)
        decline = min(_snap(s_new, k_dec), 1.0)
        how = (f"decline rank-matched ({k_dec_sel} of {sel.size} window transactions, as the "
               "validated selection threshold)")
    else:
        decline = validated.decline
        k_dec = int((s_new >= decline).sum())
        how = (f"decline kept at the validated value (the selection model declines only "
               f"{k_dec_sel} window transactions, < {cfg.min_decline_support})")
    k_rev = _untie(s_new, k_dec + min(band_sel, cap))
    review = min(_snap(s_new, max(k_rev, k_dec)) if k_rev > k_dec else decline, decline)
    policy = (f"refit, rank-matched to the validated selection model on the last "
              f"{window_days:g} days (unseen by both): {how}; review band as the selection "
              f"model's there, at most {cfg.review_per_day:g}/day")
    return Thresholds(review=review, decline=decline, policy=policy), {
        "method": "rank_matched" if k_dec_sel >= cfg.min_decline_support else "decline_kept",
        "window_rows": int(s_new.size), "selection_declines": k_dec_sel,
        "selection_band": band_sel, "band_cap": cap,
    }


def _window_stats(
    sel: np.ndarray, new: np.ndarray, th_sel: Thresholds, th_new: Thresholds,
    y_known: np.ndarray, y_file: np.ndarray, days: float, cfg: TrainConfig,
) -> dict[str, Any]:
    """Decision volumes per day and decline precision of both models on the window.

    Precision with the labels known at the end of the history (a lower bound), and
    with every label in the file (simulated histories carry labels dated later).
    """
    def prec(s: np.ndarray, thr: float, y: np.ndarray = y_known) -> float | None:
        hit = s >= thr
        return float(y[hit].mean()) if hit.any() else None

    per = max(days, 1e-9)
    return {
        "days": days, "rows": int(sel.size), "review_capacity_per_day": cfg.review_per_day,
        "selection_declines_per_day": float((sel >= th_sel.decline).sum()) / per,
        "refit_declines_per_day": float((new >= th_new.decline).sum()) / per,
        "selection_band_per_day": float(((sel >= th_sel.review) & (sel < th_sel.decline)).sum())
        / per,
        "refit_band_per_day": float(((new >= th_new.review) & (new < th_new.decline)).sum())
        / per,
        "selection_decline_precision_known": prec(sel, th_sel.decline),
        "refit_decline_precision_known": prec(new, th_new.decline),
        "selection_decline_precision_file": prec(sel, th_sel.decline, y_file),
        "refit_decline_precision_file": prec(new, th_new.decline, y_file),
    }


# --------------------------------------------------------------------------- protocols


class Stopwatch:
    """Wall-clock and CPU seconds (every thread of this process) per phase, in order."""

    def __init__(self, wall: dict[str, float] | None = None) -> None:
        self.wall: dict[str, float] = dict(wall or {})
        self.cpu: dict[str, float] = {}
        self.restart()

    def restart(self) -> None:
        """Start timing the next phase."""
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        """Record the phase since the last lap/restart as ``name`` and start the next one."""
        self.wall[name] = time.perf_counter() - self._wall0
        self.cpu[name] = time.process_time() - self._cpu0
        self.restart()

    def totals(self) -> None:
        """Add ``total`` (sum of the phases) to both tables."""
        for table in (self.wall, self.cpu):
            table.pop("total", None)
            table["total"] = sum(table.values())


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="minutes")


def run_prequential(
    X: np.ndarray, is_fraud: np.ndarray, label_time: np.ndarray, event_time: np.ndarray,
    card_id: np.ndarray, scen: np.ndarray, split: Split, recipe: Recipe, selection: Blend,
    validated: Thresholds, cfg: TrainConfig, say: Progress,
) -> dict[str, Any]:
    """Fit, recalibrate and score each block (see module docstring); per block and pooled."""
    from training.report import label_informed, model_metrics

    gap_days = cfg.label_delay_days
    blocks_out: list[dict[str, Any]] = []
    pooled: dict[str, list[np.ndarray]] = {k: [] for k in ("rows", "s", "rev", "dec")}
    for block in prequential_blocks(event_time, split, cfg):
        t0 = time.perf_counter()
        y_b = is_fraud & (label_time <= block.start)
        if block.test.size == 0 or y_b[block.train].sum() < 2:
            say(f"  block {block.index}: skipped (no rows or < 2 fraud labels to train on)")
            continue
        model = fit_blend(X[block.train], y_b[block.train], recipe, cfg)
        sel_c = selection.predict_proba(X[block.calib])[:, 1] if block.calib.size else \
            np.empty(0)
        new_c = model.predict_proba(X[block.calib])[:, 1] if block.calib.size else np.empty(0)
        th, info = recalibrate(validated, sel_c, new_c, gap_days, cfg)
        s = model.predict_proba(X[block.test])[:, 1]
        te = block.test
        m = model_metrics(s, is_fraud[te], event_time[te], card_id[te], scen[te], th.review,
                          th.decline)
        blocks_out.append({
            "index": block.index, "start_utc": _utc(block.start), "end_utc": _utc(block.end),
            "train_end_utc": _utc(block.train_end), "labels_known_at_utc": _utc(block.start),
            "train_rows": int(block.train.size),
            "train_last_event_utc": _utc(int(event_time[block.train].max())),
            "fraud_labels_known": int(y_b[block.train].sum()), "test_rows": int(te.size),
            "thresholds": {"review": th.review, "decline": th.decline, **info}, "metrics": m,
        })
        pooled["rows"].append(te)
        pooled["s"].append(s)
        pooled["rev"].append(np.full(te.size, th.review))
        pooled["dec"].append(np.full(te.size, th.decline))
        say(f"  block {block.index} ({_utc(block.start)} to {_utc(block.end)}, trained on "
            f"{block.train.size} rows): AUC {m['auc_roc']:.4f}, AP {m['average_precision']:.4f},"
            f" card precision@100 {m['card_precision_at_100']:.4f} "
            f"({time.perf_counter() - t0:.1f}s)")
    if not blocks_out:
        raise TrainingError("prequential: no block had rows and fraud labels to train on; use "
                            "fewer --blocks or a longer --test-days")
    rows = np.concatenate(pooled["rows"])
    pooled_m = model_metrics(
        np.concatenate(pooled["s"]), is_fraud[rows], event_time[rows], card_id[rows], scen[rows],
        np.concatenate(pooled["rev"]), np.concatenate(pooled["dec"]), daily=True,
        informed=label_informed(X[rows]))
    say(f"prequential pooled: AUC {pooled_m['auc_roc']:.4f}, AP "
        f"{pooled_m['average_precision']:.4f}, card precision@100 "
        f"{pooled_m['card_precision_at_100']:.4f}")
    return {"blocks": blocks_out, "pooled": pooled_m}


def _protocols(
    cfg: TrainConfig, split: Split, refit: bool, refit_end: int
) -> dict[str, dict[str, str]]:
    b = {k: _utc(v) for k, v in split.bounds.items()}
    out = {
        "validation": {"figures": "metrics.validation, thresholds, trials",
                       "protocol": "holdout validation (model selection)",
                       "model": "selection model",
                       "period": f"{b['val_start']} to {b['val_end']}"},
        "test": {"figures": "metrics.test (headline), plots",
                 "protocol": "holdout test", "model": "selection model, validation thresholds",
                 "period": f"{b['test_start']} to {b['end']}"},
    }
    if cfg.protocol == "prequential":
        out["prequential"] = {
            "figures": "metrics.prequential (per block, pooled)",
            "protocol": f"prequential, {cfg.blocks} blocks",
            "model": "selected recipe refitted before each block, thresholds recalibrated",
            "period": f"{b['test_start']} to {b['end']}"}
    out["refit"] = {
        "figures": "metrics.refit (decision volumes only)",
        "protocol": "none: not evaluated on data it saw" if refit else "no refit (--no-refit)",
        "model": "served model" if refit else "served model = selection model",
        "period": f"{b['start']} to {_utc(refit_end)}" if refit else "-"}
    return out


# --------------------------------------------------------------------------- training


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
    *,
    feature_context: dict[str, Any] | None = None,
    history_hygiene: dict[str, Any] | None = None,
    timings: Stopwatch | dict[str, float] | None = None,
) -> TrainedModel:
    """Split, select, evaluate, refit, recalibrate; write model + report into ``out_dir``.

    Inputs are one row per transaction, sorted by ``event_time`` (int64 ms);
    ``X`` float32 ``[n, F]``. ``feature_context`` defaults to
    ``training.features.feature_context()``; ``timings`` (seconds per phase already
    spent, e.g. load and features, or a :class:`Stopwatch`) is completed and reported
    (wall clock and CPU). Raises
    :class:`TrainingError` when the split or labels do not allow training.
    """
    from training.report import (
        evaluate_scores,
        label_informed,
        member_scores,
        write_report,
        write_text,
    )

    cfg = cfg or TrainConfig()
    if cfg.protocol not in PROTOCOLS:
        raise TrainingError(f"unknown protocol {cfg.protocol!r}; use one of {PROTOCOLS}")
    say = progress or (lambda _m: None)
    watch = timings if isinstance(timings, Stopwatch) else Stopwatch(timings)
    watch.restart()
    if feature_context is None:
        from training.features import feature_context as _context

        feature_context = _context()
    X = np.ascontiguousarray(X, dtype=np.float32)
    is_fraud = np.asarray(is_fraud, dtype=bool)
    split = time_split(event_time, cfg)
    cutoff = split.bounds["val_start"]
    y_known = is_fraud & (label_time <= cutoff)
    tr, va, te = split.train, split.val, split.test
    say(f"split: train {tr.size} rows ({int(y_known[tr].sum())} fraud labels known at cut-off, "
        f"{int(is_fraud[tr].sum()) - int(y_known[tr].sum())} not yet), val {va.size} "
        f"({int(is_fraud[va].sum())} fraud), test {te.size} ({int(is_fraud[te].sum())} fraud)")
    if y_known[tr].sum() < 2 or is_fraud[va].sum() < 1:
        raise TrainingError("too few fraud labels in the training or validation period to "
                            "train; use a longer history or longer --validation-days")
    recipe, selection_model, selection = select(X[tr], y_known[tr], X[va], is_fraud[va], cfg,
                                                say)
    val_scores = selection_model.predict_proba(X[va])[:, 1]
    val_days = (split.bounds["val_end"] - split.bounds["val_start"]) / DAY_MS
    th_sel, th_info = choose_thresholds(val_scores, is_fraud[va], val_days, cfg)
    say(f"selection thresholds (validation): review {th_sel.review:.4f}, decline "
        f"{th_sel.decline:.4f}")

    scen = np.array(scenario, dtype=object)
    informed = label_informed(X)
    test_scores = member_scores(selection_model, X[te])
    metrics: dict[str, Any] = {
        "validation": evaluate_scores(member_scores(selection_model, X[va]), is_fraud[va],
                                      event_time[va], card_id[va], scen[va], th_sel,
                                      informed[va] if informed is not None else None),
        "test": evaluate_scores(test_scores, is_fraud[te], event_time[te], card_id[te],
                                scen[te], th_sel,
                                informed[te] if informed is not None else None),
    }
    ens_test = metrics["test"]["ensemble"]
    say(f"holdout test (selection model): AUC {ens_test['auc_roc']:.4f}, AP "
        f"{ens_test['average_precision']:.4f}, card precision@100 "
        f"{ens_test['card_precision_at_100']:.4f}")
    watch.lap("selection")

    if cfg.protocol == "prequential":
        say(f"prequential: {cfg.blocks} blocks over the test period")
        metrics["prequential"] = run_prequential(
            X, is_fraud, label_time, event_time, card_id, scen, split, recipe, selection_model,
            th_sel, cfg, say)
        watch.lap("prequential")

    rng = np.random.default_rng(cfg.seed)
    gap = int(cfg.label_delay_days * DAY_MS)
    end = split.bounds["end"]
    if cfg.refit:
        fit_rows = _rows(event_time, split.bounds["start"], end - gap)
        y_fit = is_fraud & (label_time <= end)
        window = _rows(event_time, end - gap, end)
        say(f"refit: {fit_rows.size} rows up to {_utc(end - gap)} with "
            f"{int(y_fit[fit_rows].sum())} fraud labels known at {_utc(end)}; calibration "
            f"window {window.size} rows")
        ensemble = fit_ensemble(X[fit_rows], y_fit[fit_rows], recipe, cfg)
        sel_w, new_w = np.empty(0), np.empty(0)
        if window.size:
            sel_w = selection_model.predict_proba(X[window])[:, 1]
            new_w = ensemble.predict_proba(X[window])[:, 1]
        thresholds, rc_info = recalibrate(th_sel, sel_w, new_w, cfg.label_delay_days, cfg)
        metrics["refit"] = {
            "enabled": True, "rows": int(fit_rows.size), "start_utc": _utc(split.bounds["start"]),
            "train_end_utc": _utc(end - gap), "labels_known_at_utc": _utc(end),
            "fraud_labels_known": int(y_fit[fit_rows].sum()),
            "rows_after_validation": int((event_time[fit_rows] >= split.bounds["val_end"]).sum()),
            "window_days": cfg.label_delay_days, "window_rows": int(window.size),
            "threshold_method": thresholds.policy, "recalibration": rc_info,
            "window": _window_stats(sel_w, new_w, th_sel, thresholds, y_fit[window],
                                    is_fraud[window], cfg.label_delay_days, cfg)
            if window.size else {},
        }
        ref_pool = fit_rows
        # the refitted model's scores on rows it did not see (in-sample only without a window)
        ref_scores = new_w if window.size >= 100 else ensemble.predict_proba(X[va])[:, 1]
    else:
        say("no refit: fitting the selection model as the exported VotingClassifier")
        ensemble = fit_ensemble(X[tr], y_known[tr], recipe, cfg)
        thresholds = th_sel
        metrics["refit"] = {"enabled": False, "threshold_method": th_sel.policy}
        ref_pool, ref_scores = tr, val_scores
    say(f"served thresholds: review {thresholds.review:.4f}, decline {thresholds.decline:.4f}")
    watch.lap("refit")

    version, names = feature_spec
    ref = ref_pool if ref_pool.size <= cfg.reference_rows else np.sort(
        rng.choice(ref_pool, cfg.reference_rows, replace=False))
    hold = te if te.size <= cfg.holdout_rows else np.sort(
        rng.choice(te, cfg.holdout_rows, replace=False))
    metrics["protocols"] = _protocols(cfg, split, cfg.refit, end - gap)
    metrics["data"] = {
        **(data_info or {}),
        "rows": int(X.shape[0]),
        "fraud_rows": int(is_fraud.sum()),
        "split_utc": {k: _utc(v) for k, v in split.bounds.items()},
        "train_rows": int(tr.size), "val_rows": int(va.size), "test_rows": int(te.size),
        "train_labels_policy": "fraud labels with label_time <= val_start; later ones = legit",
    }
    if history_hygiene is not None:
        metrics["history"] = history_hygiene
    metrics["selection"] = {k: v for k, v in selection.items() if k != "trials"}
    metrics["trials"] = selection["trials"]
    metrics["selection_thresholds"] = {**th_sel.to_dict(), **th_info}
    metrics["thresholds"] = thresholds.to_dict()
    metrics["feature_context"] = feature_context
    metrics["config"] = {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in asdict(cfg).items()}
    metrics["timings_s"] = watch.wall
    metrics["cpu_s"] = watch.cpu
    model_version = f"{version}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    trained = TrainedModel(
        ensemble=ensemble, feature_spec_version=version, feature_names=tuple(names),
        thresholds=thresholds, metrics=metrics, reference_features=X[ref],
        reference_scores=np.asarray(ref_scores, dtype=np.float32), holdout_features=X[hold],
        model_version=model_version, params=metrics["config"], reference_labels=is_fraud[ref],
        feature_context=dict(feature_context), holdout_labels=is_fraud[hold],
        holdout_event_time=np.asarray(event_time[hold], dtype=np.int64),
        holdout_card_id=card_pseudonyms(card_id[hold]),  # no card id in the artifact
        holdout_scores=(test_scores["ensemble"][np.searchsorted(te, hold)].astype(np.float32)
                        if cfg.refit else None),
    )
    plots = write_report(trained, out_dir, test_scores, is_fraud[te], th_sel)
    watch.lap("report")
    watch.totals()
    write_text(trained, out_dir, plots)
    trained.save(out_dir)
    say("time (s, wall/cpu): " + ", ".join(
        f"{k} {v:.1f}/{watch.cpu.get(k, float('nan')):.1f}" for k, v in watch.wall.items()))
    say(f"wrote {out_dir}/model.pkl and the report (report.md, metrics.json, *.png)")
    return trained


def train_history_file(
    data: Path, out_dir: Path, cfg: TrainConfig | None = None, progress: Progress | None = None,
    skip_invalid: bool = False,
) -> TrainedModel:
    """Load a history file, replay features through ``state``, train and report.

    Raises :class:`training.history.HistoryError` (unusable file or rows),
    :class:`TrainingError` (split or labels).
    """
    from training.features import feature_context, feature_spec, point_in_time_features
    from training.history import load_history

    cfg = cfg or TrainConfig()
    say = progress or (lambda _m: None)
    watch = Stopwatch()
    say(f"loading {data}")
    history = load_history(data, label_delay_days=cfg.label_delay_days,
                           skip_invalid=skip_invalid)
    h = history.hygiene
    hygiene = h.to_dict() if h is not None else None
    if h is not None and (h.duplicates or h.skipped):
        say(f"{h.rows_read} rows read: {h.duplicates} exact repeats dropped, {h.skipped} "
            f"skipped ({', '.join(f'{k} {v}' for k, v in h.skipped_by_rule.items()) or '-'})")
    watch.lap("load")
    say(f"{len(history)} transactions, {int(history.is_fraud.sum())} fraud labels; replaying "
        "through state for point-in-time features")
    X = point_in_time_features(history, lambda n: say(f"  replayed {n} transactions"))
    watch.lap("features")
    return train_on_features(
        X, history.is_fraud, history.label_time, history.event_time, history.card_id,
        history.scenario, feature_spec(), out_dir, cfg, say, {"source": str(data)},
        feature_context=feature_context(), history_hygiene=hygiene, timings=watch,
    )


# --------------------------------------------------------------------------- CLI


def _positive(kind: type[float] | type[int]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value
    return parse


def _share(text: str) -> float:
    value = _positive(float)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a share between 0 and 1")
    return float(value)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m training.train``."""
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train the fraud ensemble (XGBoost + RandomForest) on a labelled history: "
                    "select on validation, report the holdout test (and optionally prequential "
                    "blocks), refit on all labelled history, write runs/train/.",
        epilog="History format: training/history.py. Example: python -m training.train --data "
               "data/history.parquet --protocol prequential --blocks 4",
    )
    io = p.add_argument_group("input and output")
    io.add_argument("--data", type=Path, required=True, metavar="PATH",
                    help="labelled history file (.parquet or .csv)")
    io.add_argument("--out", type=Path, default=Path("runs/train"), metavar="DIR",
                    help="output directory for model.pkl, report.md, metrics.json and plots "
                         "(default runs/train)")
    io.add_argument("--skip-invalid", action="store_true",
                    help="skip invalid or conflicting rows (counted per rule and listed in the "
                         "report) instead of refusing the file")
    sp = p.add_argument_group("split and protocol (by event time: train | gap | validation | "
                              "gap | test, gap = label delay)")
    sp.add_argument("--protocol", choices=PROTOCOLS, default="holdout",
                    help="holdout: report the selection model on the test period; prequential: "
                         "also refit before each of --blocks test blocks and report each block "
                         "and all pooled (slower) (default holdout)")
    sp.add_argument("--blocks", type=_positive(int), default=4, metavar="K",
                    help="prequential blocks the test period is cut into (default 4)")
    sp.add_argument("--train-share", type=_share, default=None, metavar="SHARE",
                    help="share of the span for the training period; validation and test "
                         "share the rest (default: whatever validation and test leave)")
    sp.add_argument("--validation-days", type=_positive(float), default=None, metavar="DAYS",
                    help="validation length in days (default 20%% of the span)")
    sp.add_argument("--test-days", type=_positive(float), default=None, metavar="DAYS",
                    help="test length in days (default 20%% of the span)")
    sp.add_argument("--label-delay-days", type=float, default=7.0, metavar="DAYS",
                    help="default label delay, the split gaps and the refit's calibration "
                         "window (default 7)")
    sp.add_argument("--no-refit", action="store_true",
                    help="serve the selection model (trained on the oldest part only, "
                         "thresholds from validation) instead of refitting on all labelled "
                         "history (thresholds then rank-matched on the last label-delay days)")
    th = p.add_argument_group("thresholds")
    th.add_argument("--review-per-day", type=_positive(float), default=50.0, metavar="N",
                    help="review capacity: transactions per day in the review band (default 50)")
    th.add_argument("--decline-precision", type=_share, default=0.9, metavar="P",
                    help="precision the decline threshold must reach on validation (default 0.9)")
    md = p.add_argument_group("model")
    md.add_argument("--xgb-estimators", type=_positive(int), default=150, metavar="N",
                    help="XGBoost trees (default 150)")
    md.add_argument("--xgb-depth", type=_positive(int), default=6, metavar="N",
                    help="XGBoost max depth (default 6)")
    md.add_argument("--rf-estimators", type=_positive(int), default=60, metavar="N",
                    help="RandomForest trees (default 60)")
    md.add_argument("--rf-depth", type=_positive(int), default=10, metavar="N",
                    help="RandomForest max depth (default 10)")
    md.add_argument("--quick", action="store_true",
                    help="no grid: class weighting, one XGBoost setting, one vote weight")
    md.add_argument("--jobs", type=_positive(int), default=2, metavar="N",
                    help="threads per model fit (default 2)")
    md.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` the parsed command line asks for."""
    cfg = TrainConfig(
        xgb_estimators=args.xgb_estimators, xgb_depth=args.xgb_depth,
        rf_estimators=args.rf_estimators, rf_depth=args.rf_depth,
        label_delay_days=args.label_delay_days, review_per_day=args.review_per_day,
        decline_precision=args.decline_precision, seed=args.seed, n_jobs=args.jobs,
        protocol=args.protocol, blocks=args.blocks, refit=not args.no_refit,
        train_share=args.train_share, val_days=args.validation_days, test_days=args.test_days,
    )
    if args.quick:
        cfg = TrainConfig(**{**asdict(cfg), "strategies": ("weight",),
                             "xgb_grid": cfg.xgb_grid[:1], "xgb_weights": (0.65,)})
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; exit 2 with a one-line error (and the rows at fault) on bad input."""
    p = parser()
    args = p.parse_args(argv)
    if args.label_delay_days < 0:
        p.error("--label-delay-days must be >= 0")
    if args.train_share is not None and args.validation_days and args.test_days:
        p.error("give at most two of --train-share, --validation-days and --test-days")
    cfg = config_from_args(args)
    # OpenMP threads (XGBoost) sleep instead of spinning while they wait: on a busy
    # 2-core machine spinning threads starve each other (measured: an XGBoost fit 3-10x
    # slower); idle machines lose microseconds. libgomp reads it when xgboost loads; it
    # is put back afterwards so that processes started later (the demo's) do not inherit it.
    wait_policy = os.environ.get("OMP_WAIT_POLICY")
    os.environ["OMP_WAIT_POLICY"] = wait_policy or "PASSIVE"
    try:
        return _run(args, cfg)
    finally:
        if wait_policy is None:
            os.environ.pop("OMP_WAIT_POLICY", None)


def _run(args: argparse.Namespace, cfg: TrainConfig) -> int:
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[train {time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    from training.history import HistoryError

    try:
        trained = train_history_file(args.data, args.out, cfg, say, skip_invalid=args.skip_invalid)
    except HistoryError as exc:
        print(f"error: {exc.headline}", file=sys.stderr)
        if len(exc.problems) > 1:
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
        return 2
    except FraudStreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from export.handover import Handover

    try:  # ONNX + Parquet for `just export-onnx`, which never unpickles model.pkl
        where = Handover.from_trained(trained).save(args.out)
    except FraudStreamError as exc:
        print(f"error: trained, but cannot hand the model over to export: {exc}", file=sys.stderr)
        return 1
    say(f"wrote {where}/ (ONNX, parity-checked; what `just export-onnx` reads)")
    from training.tracking import log_training_run

    run_id = log_training_run(trained, args.out)  # only with MLFLOW_TRACKING_URI set
    if run_id:
        say(f"MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
