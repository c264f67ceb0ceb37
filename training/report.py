"""Evaluation of the ensemble and each member, PNG plots and an analyst-readable summary.

Metrics per model (ensemble, ``xgb``, ``rf``) on one period:

- ``auc_roc`` and ``average_precision`` per transaction;
- ``card_precision_at_100``: each UTC day, the 100 cards with the highest
  transaction score that day; the share of them with a fraud that day, averaged
  over days. ``card_precision_ceiling`` is the best possible value (days with
  fewer than 100 fraudulent cards cap it);
- ``card_precision_at_100_excl_detected``: the same, but a card found fraudulent
  in an earlier day's top 100 is removed from later days (the investigators have
  already blocked it): the *card precision top-k* of Le Borgne, Siblini, Lebichot
  and Bontempi, "Reproducible Machine Learning for Credit Card Fraud Detection -
  Practical Handbook" (2022), chapter 4.2 (after Dal Pozzolo et al., IEEE TNNLS
  2018); see :func:`card_precision_excl_detected`;
- precision and recall of ``score >= review`` (flagged) and ``score >= decline``;
  members are scored at the ensemble's thresholds, for comparison only;
- ``scenario_recall``: per fraud scenario (the history's ``scenario`` column), the
  share of its transactions flagged (``recall_review``, score >= review) and declined
  (``recall_decline``), including those whose label never arrived.

Which model and protocol each figure comes from is stated in ``metrics.json``
(``protocols``) and in every heading of ``report.md``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.metadata import Thresholds

DAY_MS = 86_400_000
#: Flagged-share targets per scenario at the review threshold (issue 12 acceptance).
SCENARIO_TARGETS = {"compromised_merchant": 0.70}


def _per_card_day(
    scores: np.ndarray, y: np.ndarray, event_time: np.ndarray, card_id: np.ndarray
) -> Any:
    """One row per (UTC day, card): max score, any fraud; sorted by day, score desc, card."""
    import pandas as pd

    df = pd.DataFrame({"day": np.asarray(event_time) // DAY_MS, "card": card_id,
                       "s": np.asarray(scores, dtype=np.float64), "y": np.asarray(y, dtype=bool)})
    per = df.groupby(["day", "card"], sort=False).agg(s=("s", "max"), y=("y", "max"))
    per = per.reset_index()
    return per.sort_values(["day", "s", "card"], ascending=[True, False, True], kind="stable")


def card_precision_at_k(
    scores: np.ndarray, y: np.ndarray, event_time: np.ndarray, card_id: np.ndarray, k: int = 100
) -> tuple[float, float]:
    """(mean daily card precision@k, its ceiling); see module docstring.

    Each UTC day (``event_time`` ms // 86,400,000), cards are ranked by their highest
    transaction score that day; the share of the top ``k`` with a fraud that day is
    averaged over days (denominator ``k`` even on days with fewer cards).
    """
    if np.asarray(scores).size == 0:
        return 0.0, 0.0
    precs, ceils = [], []
    for _, g in _per_card_day(scores, y, event_time, card_id).groupby("day", sort=True):
        precs.append(float(g["y"].iloc[:k].sum()) / k)
        ceils.append(min(k, int(g["y"].sum())) / k)
    return float(np.mean(precs)), float(np.mean(ceils))


@dataclass(frozen=True)
class CardPrecision:
    """Daily card precision@k with already-detected cards removed (see the function)."""

    mean: float
    ceiling: float  # mean over days of min(k, fraudulent cards still undetected) / k
    days: tuple[int, ...]  # UTC day numbers (ms // 86,400,000)
    per_day: tuple[float, ...]
    detected_cards: int


def card_precision_excl_detected(
    scores: np.ndarray, y: np.ndarray, event_time: np.ndarray, card_id: np.ndarray, k: int = 100
) -> CardPrecision:
    """Card precision top-``k`` per day, cards detected on earlier days removed.

    The definition of Le Borgne et al., *Reproducible Machine Learning for Credit Card
    Fraud Detection - Practical Handbook* (2022), section 4.2 (``card_precision_top_k``
    with ``remove_detected_compromised_cards=True``), after Dal Pozzolo et al.,
    "Credit Card Fraud Detection: A Realistic Modeling and a Novel Learning Strategy",
    IEEE TNNLS 29(8), 2018: days are taken in increasing order; on day ``d`` every card
    detected on an earlier day is dropped; each remaining card gets its highest
    transaction score of the day and its label (fraud if any of its transactions that
    day is); ``CP@k(d)`` = fraudulent cards among the top ``k`` / ``k``; those fraudulent
    top-``k`` cards join the detected set. The result is the mean over days. Ties in
    score are broken by card id (the handbook leaves them to the sort).

    Shapes: 1-D arrays of one length; ``event_time`` in epoch ms (UTC days).
    """
    if np.asarray(scores).size == 0:
        return CardPrecision(0.0, 0.0, (), (), 0)
    detected: set[Any] = set()
    days: list[int] = []
    precs: list[float] = []
    ceils: list[float] = []
    for day, g in _per_card_day(scores, y, event_time, card_id).groupby("day", sort=True):
        if detected:
            g = g[~g["card"].isin(detected)]
        top = g.iloc[:k]
        hits = top.loc[top["y"], "card"].tolist()
        days.append(int(day))
        precs.append(len(hits) / k)
        ceils.append(min(k, int(g["y"].sum())) / k)
        detected.update(hits)
    return CardPrecision(float(np.mean(precs)), float(np.mean(ceils)), tuple(days),
                         tuple(precs), len(detected))


def label_informed(X: np.ndarray) -> np.ndarray | None:
    """Rows whose merchant had a fraud label known before them (30 days): bool ``[n]``.

    A scenario whose transactions look legitimate on their own (a compromised point
    of sale: regular purchases, relabelled) can only be caught from its merchant's
    labels, so this share is the most any detector can flag of it.
    """
    from state.spec import INDEX, N_FEATURES

    if X.ndim != 2 or X.shape[1] != N_FEATURES:
        return None  # not a spec matrix (e.g. a test's toy features)
    return np.asarray((X[:, INDEX["merchant_fraud_rate_30d"]] > 0)
                      | (X[:, INDEX["merchant_familiar_fraud_30d"]] > 0))


def model_metrics(
    scores: np.ndarray, y: np.ndarray, event_time: np.ndarray, card_id: np.ndarray,
    scenario: np.ndarray, review: float | np.ndarray, decline: float | np.ndarray,
    daily: bool = False, informed: np.ndarray | None = None,
) -> dict[str, Any]:
    """All metrics of one score vector.

    ``review``/``decline`` are one threshold each, or one per row (prequential
    blocks pooled, each block with its own thresholds). ``daily`` adds the per-day
    card precision with detected cards removed. ``informed`` (:func:`label_informed`)
    adds, per scenario, the share of rows whose merchant had a fraud label known.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y, dtype=bool)
    both = bool(y.any() and (~y).any())
    out: dict[str, Any] = {
        "rows": int(y.size), "frauds": int(y.sum()),
        "auc_roc": float(roc_auc_score(y, scores)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, scores)) if y.any() else 0.0,
    }
    out["card_precision_at_100"], out["card_precision_ceiling"] = card_precision_at_k(
        scores, y, event_time, card_id, 100)
    cp = card_precision_excl_detected(scores, y, event_time, card_id, 100)
    out["card_precision_at_100_excl_detected"] = cp.mean
    out["card_precision_excl_detected_ceiling"] = cp.ceiling
    if daily:
        out["card_precision_excl_detected_per_day"] = {
            dt.datetime.fromtimestamp(d * 86_400, dt.UTC).date().isoformat(): p
            for d, p in zip(cp.days, cp.per_day, strict=True)
        }
    flagged = scores >= review
    declined = scores >= decline
    for name, hit in (("review", flagged), ("decline", declined)):
        tp = int((hit & y).sum())
        out[f"{name}_alerts"] = int(hit.sum())
        out[f"{name}_precision"] = tp / int(hit.sum()) if hit.any() else 0.0
        out[f"{name}_recall"] = tp / int(y.sum()) if y.any() else 0.0
    rec: dict[str, dict[str, float]] = {}
    scen = np.asarray(scenario, dtype=object)
    for name in sorted({s for s in scen.tolist() if s is not None}):
        rows = scen == name
        rec[name] = {
            "rows": int(rows.sum()),
            "recall_review": float(flagged[rows].mean()),
            "recall_decline": float(declined[rows].mean()),
            "mean_score": float(np.asarray(scores)[rows].mean()),
        }
        if informed is not None:
            rec[name]["label_informed"] = float(np.asarray(informed)[rows].mean())
    out["scenario_recall"] = rec
    return out


def member_scores(model: Any, X: np.ndarray) -> dict[str, np.ndarray]:
    """Fraud probability of the ensemble and of each fitted member (``named_estimators_``)."""
    out = {"ensemble": model.predict_proba(X)[:, 1]}
    for name, est in model.named_estimators_.items():
        out[name] = est.predict_proba(X)[:, 1]
    return out


def evaluate_scores(
    scores: dict[str, np.ndarray], y: np.ndarray, event_time: np.ndarray, card_id: np.ndarray,
    scenario: np.ndarray, thresholds: Thresholds, informed: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics for the ensemble (with per-day card precision) and each member on one period."""
    return {name: model_metrics(s, y, event_time, card_id, scenario, thresholds.review,
                                thresholds.decline, daily=name == "ensemble",
                                informed=informed if name == "ensemble" else None)
            for name, s in scores.items()}


def evaluate(
    model: Any, X: np.ndarray, y: np.ndarray, event_time: np.ndarray, card_id: np.ndarray,
    scenario: np.ndarray, thresholds: Thresholds,
) -> dict[str, Any]:
    """Metrics for the ensemble and each member of ``model`` on one period."""
    return evaluate_scores(member_scores(model, X), y, event_time, card_id, scenario, thresholds)


def _plots(trained: Any, out_dir: Path, scores: dict[str, np.ndarray], y: np.ndarray,
           thresholds: Thresholds) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    where = "holdout test, selection model"
    files = []
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, s in scores.items():
        p, r, _ = precision_recall_curve(y, s)
        ax.plot(r, p, label=name)
    ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall ({where})")
    ax.legend()
    fig.savefig(out_dir / "pr.png", dpi=90)
    files.append("pr.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({where})")
    ax.legend()
    fig.savefig(out_dir / "roc.png", dpi=90)
    files.append("roc.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    s = scores["ensemble"]
    bins = np.linspace(0, 1, 51).tolist()
    ax.hist(s[~y], bins=bins, alpha=0.6, density=True, label="legitimate", log=True)
    ax.hist(s[y], bins=bins, alpha=0.6, density=True, label="fraud", log=True)
    for name, thr in (("review", thresholds.review), ("decline", thresholds.decline)):
        ax.axvline(thr, ls="--", c="k", lw=0.8)
        ax.text(thr, ax.get_ylim()[1], name, rotation=90, va="top", fontsize=8)
    ax.set(xlabel="ensemble score", ylabel="density (log)", title=f"Score by class ({where})")
    ax.legend()
    fig.savefig(out_dir / "scores.png", dpi=90)
    files.append("scores.png")
    plt.close(fig)

    names = list(trained.feature_names)
    imp = {n: est.feature_importances_ for n, est in trained.ensemble.named_estimators_.items()}
    combined = sum(v / max(v.sum(), 1e-12) for v in imp.values())
    top = np.argsort(combined)[::-1][:20][::-1]
    fig, ax = plt.subplots(figsize=(7, 6))
    h = 0.4
    for j, (n, v) in enumerate(imp.items()):
        ax.barh(np.arange(top.size) + j * h, (v / max(v.sum(), 1e-12))[top], h, label=n)
    ax.set_yticks(np.arange(top.size) + h / 2, [names[i] for i in top], fontsize=8)
    ax.set(xlabel="normalised importance (xgb gain, rf impurity)",
           title="Feature importance (served model)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "importance.png", dpi=90)
    files.append("importance.png")
    plt.close(fig)
    return files


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _headline_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = [
        "| model | AUC ROC | AP | card precision@100/day (ceiling) | same, detected cards "
        "removed (ceiling) | review precision / recall | decline precision / recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['auc_roc']:.4f} | {r['average_precision']:.4f} | "
            f"{r['card_precision_at_100']:.4f} ({r['card_precision_ceiling']:.4f}) | "
            f"{r['card_precision_at_100_excl_detected']:.4f} "
            f"({r['card_precision_excl_detected_ceiling']:.4f}) | "
            f"{r['review_precision']:.3f} / {r['review_recall']:.3f} | "
            f"{r['decline_precision']:.3f} / {r['decline_recall']:.3f} |")
    return lines


def _scenario_table(scen: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| scenario | transactions | flagged (>= review) | declined (>= decline) "
             "| mean score | merchant label known before | target (flagged) |",
             "|---|---|---|---|---|---|---|"]
    for k, v in sorted(scen.items(), key=lambda kv: kv[1]["recall_review"]):
        target = SCENARIO_TARGETS.get(k)
        mark = "" if target is None else (
            f">= {target:.2f} {'met' if v['recall_review'] >= target else '**not met**'}")
        informed = f"{v['label_informed']:.3f}" if "label_informed" in v else "-"
        lines.append(f"| {k} | {v['rows']} | {v['recall_review']:.3f} | "
                     f"{v['recall_decline']:.3f} | {v['mean_score']:.3f} | {informed} | {mark} |")
    lines += ["", "*merchant label known before*: share of the scenario's transactions whose "
              "merchant had a fraud label known (two hours or more) before them. A scenario "
              "that looks legitimate on its own, such as a compromised point of sale whose "
              "regular purchases are relabelled, cannot be flagged above this share by any "
              "detector that learns from labels."]
    return lines


def _hygiene_lines(h: dict[str, Any]) -> list[str]:
    lines = ["## History hygiene (loading)", "",
             f"{h.get('rows_read')} rows read from `{h.get('source')}`, {h.get('rows_kept')} kept; "
             f"{h.get('duplicates_dropped', 0)} exact repeats of a transaction id dropped (as the "
             "stream does: it re-emits the stored verdict and leaves state alone); "
             f"{h.get('skipped', 0)} rows skipped as invalid or conflicting "
             "(`--skip-invalid`).", ""]
    if h.get("skipped_by_rule"):
        lines += ["| column: rule | rows skipped |", "|---|---|"]
        lines += [f"| {rule} | {n} |" for rule, n in h["skipped_by_rule"].items()]
        lines += ["", f"First {len(h.get('skipped_examples', []))} skipped rows:", ""]
        lines += [f"- {p['where']}: {p['message']} (`{p['rule']}`)"
                  for p in h.get("skipped_examples", [])]
        lines.append("")
    if h.get("duplicate_examples"):
        lines += [f"First {len(h['duplicate_examples'])} exact repeats:", ""]
        lines += [f"- {d}" for d in h["duplicate_examples"]]
        lines.append("")
    return lines


def summary_markdown(trained: Any, plots: Sequence[str]) -> str:
    """Markdown summary for a fraud analyst: every section names its protocol and model."""
    m = trained.metrics
    th = trained.thresholds
    d = m.get("data", {})
    split = d.get("split_utc", {})
    sel = m["selection"]["selected"]
    sel_th = m.get("selection_thresholds", m.get("thresholds", {}))
    refit = m.get("refit", {})
    lines = [f"# Evaluation report: {trained.model_version}", ""]
    lines += ["## Where each figure comes from", "",
              "| figures | protocol | model | period |", "|---|---|---|---|"]
    for key in ("validation", "test", "prequential", "refit"):
        p = m.get("protocols", {}).get(key)
        if p:
            lines.append(f"| {p['figures']} | {p['protocol']} | {p['model']} | {p['period']} |")
    lines += [
        "",
        f"Selection model: trained on {d.get('train_rows')} transactions ({split.get('start')} "
        f"to {split.get('train_end')}) with the labels known on {split.get('val_start')}; "
        f"imbalance handling **{sel['strategy']}**, XGBoost {sel['xgb_params']}, vote weights "
        f"xgb {sel['xgb_weight']:g} / rf {1 - sel['xgb_weight']:g}, chosen on "
        f"{d.get('val_rows')} validation transactions ({split.get('val_start')} to "
        f"{split.get('val_end')}); thresholds chosen there: review >= "
        f"{sel_th.get('review', float('nan')):.4f}, decline >= "
        f"{sel_th.get('decline', float('nan')):.4f} ({sel_th.get('policy', '')}).",
        "",
    ]
    if refit.get("enabled"):
        lines += [
            f"**Served model: refitted** on {refit['rows']} transactions ({refit['start_utc']} "
            f"to {refit['train_end_utc']}, {refit['fraud_labels_known']} fraud labels known on "
            f"{refit['labels_known_at_utc']}; a later label counts as legitimate so far). It is "
            "not evaluated on data it saw: no figure below comes from it, except the decision "
            f"volumes on the last {refit['window_days']:g} days ({refit['window_rows']} "
            "transactions), which it did not train on because most of their labels were not "
            "known yet.",
            "",
            f"Served thresholds: review >= {th.review:.4f}, decline >= {th.decline:.4f}; "
            f"method: {refit.get('threshold_method', '')}.",
            "",
        ]
        w = refit.get("window", {})
        if w:
            lines += [
                "| on the last days (unseen by both models) | selection model | refitted model |",
                "|---|---|---|",
                f"| declined per day | {w['selection_declines_per_day']:.1f} | "
                f"{w['refit_declines_per_day']:.1f} |",
                f"| review band per day (capacity {w['review_capacity_per_day']:g}) | "
                f"{w['selection_band_per_day']:.1f} | {w['refit_band_per_day']:.1f} |",
                f"| decline precision, labels known at the end (lower bound) | "
                f"{_opt(w['selection_decline_precision_known'])} | "
                f"{_opt(w['refit_decline_precision_known'])} |",
                f"| decline precision, every label in the file | "
                f"{_opt(w.get('selection_decline_precision_file'))} | "
                f"{_opt(w.get('refit_decline_precision_file'))} |",
                "",
            ]
    else:
        lines += ["**Served model: the selection model** (`--no-refit`): the holdout figures "
                  "below are the served model's.", "",
                  f"Served thresholds: review >= {th.review:.4f}, decline >= {th.decline:.4f} "
                  f"({th.policy}).", ""]
    test = m["test"]
    lines += [f"## Holdout test: selection model ({d.get('test_rows')} transactions from "
              f"{split.get('test_start')}, every label that eventually arrived, thresholds "
              "from validation)", ""]
    lines += _headline_table(list(test.items()))
    scen = test["ensemble"]["scenario_recall"]
    if scen:
        lines += ["", "### Per fraud scenario (ensemble, holdout test)", ""]
        lines += _scenario_table(scen)
        weakest = min(scen.items(), key=lambda kv: kv[1]["recall_review"])
        lines += ["", f"Weakest scenario: **{weakest[0]}** ({weakest[1]['recall_review']:.1%} "
                  "flagged)."]
    pq = m.get("prequential")
    if pq:
        lines += ["", f"## Prequential: {len(pq['blocks'])} successive blocks (each model "
                  "trained on everything before its block minus the label delay, labels known "
                  "at the block's start; thresholds recalibrated as for the refitted model)", "",
                  "| block | from | to | trained on | AUC ROC | AP | card precision@100 "
                  "(detected removed) | review / decline | decline precision |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for b in pq["blocks"]:
            r = b["metrics"]
            lines.append(
                f"| {b['index']} | {b['start_utc']} | {b['end_utc']} | {b['train_rows']} | "
                f"{r['auc_roc']:.4f} | {r['average_precision']:.4f} | "
                f"{r['card_precision_at_100']:.4f} ({r['card_precision_at_100_excl_detected']:.4f})"
                f" | {b['thresholds']['review']:.4f} / {b['thresholds']['decline']:.4f} | "
                f"{r['decline_precision']:.3f} |")
        pooled = pq["pooled"]
        lines += ["", "Pooled over the blocks:", ""]
        lines += _headline_table([("ensemble", pooled)])
        if pooled["scenario_recall"]:
            lines += ["", "### Per fraud scenario (ensemble, prequential pooled)", ""]
            lines += _scenario_table(pooled["scenario_recall"])
    if m.get("history"):
        lines += [""] + _hygiene_lines(m["history"])[:-1]
    lines += ["", "## Imbalance strategy comparison (validation AP, best blend)", "",
              "| strategy | xgb params | xgb weight | AP ensemble | AP xgb | AP rf |",
              "|---|---|---|---|---|---|"]
    for t in m.get("trials", []):
        lines.append(f"| {t['strategy']} | {t['xgb_params']} | {t['xgb_weight']:g} | "
                     f"{t['val_ap']:.4f} | {t['val_ap_xgb']:.4f} | {t['val_ap_rf']:.4f} |")
    timings = m.get("timings_s", {})
    if timings:
        cpu = m.get("cpu_s", {})
        lines += ["", "## Training time (seconds)", "",
                  "| | " + " | ".join(timings) + " |", "|---|" + "---|" * len(timings),
                  "| wall clock | " + " | ".join(f"{v:.1f}" for v in timings.values()) + " |"]
        if cpu:
            lines.append("| CPU (all threads) | " + " | ".join(
                f"{cpu[k]:.1f}" if k in cpu else "-" for k in timings) + " |")
    if m.get("feature_context"):
        lines += ["", f"Feature context: `{json.dumps(m['feature_context'], sort_keys=True)}`"]
    lines += ["", "## Plots (holdout test, selection model; importance: served model)", ""]
    lines += [f"![{p}]({p})" for p in plots]
    lines += ["", "Members are shown at the ensemble's thresholds for comparison; their scores "
              "are on different scales. Card precision@100 is capped by the number of "
              "fraudulent cards per day (ceiling); with detected cards removed, a card found "
              "in an earlier day's top 100 no longer counts (Le Borgne et al., Reproducible "
              "Machine Learning for Credit Card Fraud Detection, ch. 4.2).", ""]
    return "\n".join(lines)


def _opt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_report(
    trained: Any, out_dir: Path, test_scores: dict[str, np.ndarray], y_test: np.ndarray,
    test_thresholds: Thresholds | None = None,
) -> list[str]:
    """Write the PNG plots, ``report.md`` and ``metrics.json`` into ``out_dir``.

    ``test_scores`` are the holdout-test scores of the selection model (ensemble and
    members) that the PR, ROC and score plots show, at ``test_thresholds`` (default:
    the served thresholds); importance comes from the served model. Returns the plot
    file names (for :func:`write_text` after the metrics changed).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y_test, dtype=bool)
    plots = (_plots(trained, out_dir, test_scores, y, test_thresholds or trained.thresholds)
             if y.any() and (~y).any() else [])
    write_text(trained, out_dir, plots)
    return plots


def write_text(trained: Any, out_dir: Path, plots: Sequence[str]) -> None:
    """(Re)write ``report.md`` and ``metrics.json`` from ``trained.metrics``."""
    (out_dir / "report.md").write_text(summary_markdown(trained, plots))
    (out_dir / "metrics.json").write_text(json.dumps(trained.metrics, indent=2, default=_fmt))
