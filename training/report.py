"""Evaluation of the ensemble and each member, PNG plots and an analyst-readable summary.

Metrics per model (ensemble, ``xgb``, ``rf``) on one period:

- ``auc_roc`` and ``average_precision`` per transaction;
- ``card_precision_at_100``: each UTC day, the 100 cards with the highest
  transaction score that day; the share of them with a fraud that day, averaged
  over days. ``card_precision_ceiling`` is the best possible value (days with
  fewer than 100 fraudulent cards cap it);
- precision and recall of ``score >= review`` (flagged) and ``score >= decline``;
  members are scored at the ensemble's thresholds, for comparison only;
- ``scenario_recall``: per fraud scenario (simulated data), the share of its
  transactions flagged, including those whose label never arrived.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.metadata import Thresholds

DAY_MS = 86_400_000


def card_precision_at_k(
    scores: np.ndarray, y: np.ndarray, event_time: np.ndarray, card_id: np.ndarray, k: int = 100
) -> tuple[float, float]:
    """(mean daily card precision@k, its ceiling); see module docstring."""
    import pandas as pd

    if scores.size == 0:
        return 0.0, 0.0
    df = pd.DataFrame({"day": event_time // DAY_MS, "card": card_id, "s": scores, "y": y})
    per_card = df.groupby(["day", "card"], sort=False).agg(s=("s", "max"), y=("y", "max"))
    precs, ceils = [], []
    for _, g in per_card.groupby(level="day"):
        top = g.nlargest(k, "s")
        precs.append(float(top["y"].sum()) / k)
        ceils.append(min(k, int(g["y"].sum())) / k)
    return float(np.mean(precs)), float(np.mean(ceils))


def model_metrics(
    scores: np.ndarray, y: np.ndarray, event_time: np.ndarray, card_id: np.ndarray,
    scenario: np.ndarray, thresholds: Thresholds,
) -> dict[str, Any]:
    """All metrics of one score vector."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    both = bool(y.any() and (~y).any())
    out: dict[str, Any] = {
        "rows": int(y.size), "frauds": int(y.sum()),
        "auc_roc": float(roc_auc_score(y, scores)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, scores)) if y.any() else 0.0,
    }
    out["card_precision_at_100"], out["card_precision_ceiling"] = card_precision_at_k(
        scores, y, event_time, card_id, 100)
    for name, thr in (("review", thresholds.review), ("decline", thresholds.decline)):
        hit = scores >= thr
        tp = int((hit & y).sum())
        out[f"{name}_alerts"] = int(hit.sum())
        out[f"{name}_precision"] = tp / int(hit.sum()) if hit.any() else 0.0
        out[f"{name}_recall"] = tp / int(y.sum()) if y.any() else 0.0
    rec: dict[str, dict[str, float]] = {}
    for scen in sorted({s for s in scenario.tolist() if s is not None}):
        rows = scenario == scen
        rec[scen] = {
            "rows": int(rows.sum()),
            "recall_review": float((scores[rows] >= thresholds.review).mean()),
            "recall_decline": float((scores[rows] >= thresholds.decline).mean()),
            "mean_score": float(scores[rows].mean()),
        }
    out["scenario_recall"] = rec
    return out


def member_scores(ensemble: Any, X: np.ndarray) -> dict[str, np.ndarray]:
    """Fraud probability of the ensemble and of each fitted member."""
    out = {"ensemble": ensemble.predict_proba(X)[:, 1]}
    for name, est in ensemble.named_estimators_.items():
        out[name] = est.predict_proba(X)[:, 1]
    return out


def evaluate(
    ensemble: Any, X: np.ndarray, y: np.ndarray, event_time: np.ndarray, card_id: np.ndarray,
    scenario: np.ndarray, thresholds: Thresholds,
) -> dict[str, Any]:
    """Metrics for the ensemble and each member on one period."""
    scen = np.asarray(scenario, dtype=object)
    return {name: model_metrics(s, y, event_time, card_id, scen, thresholds)
            for name, s in member_scores(ensemble, X).items()}


def _plots(trained: Any, out_dir: Path, X: np.ndarray, y: np.ndarray) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    scores = member_scores(trained.ensemble, X)
    files = []
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, s in scores.items():
        p, r, _ = precision_recall_curve(y, s)
        ax.plot(r, p, label=name)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)")
    ax.legend()
    fig.savefig(out_dir / "pr.png", dpi=90)
    files.append("pr.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.legend()
    fig.savefig(out_dir / "roc.png", dpi=90)
    files.append("roc.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    s = scores["ensemble"]
    bins = np.linspace(0, 1, 51).tolist()
    ax.hist(s[~y], bins=bins, alpha=0.6, density=True, label="legitimate", log=True)
    ax.hist(s[y], bins=bins, alpha=0.6, density=True, label="fraud", log=True)
    for name, thr in (("review", trained.thresholds.review),
                      ("decline", trained.thresholds.decline)):
        ax.axvline(thr, ls="--", c="k", lw=0.8)
        ax.text(thr, ax.get_ylim()[1], name, rotation=90, va="top", fontsize=8)
    ax.set(xlabel="ensemble score", ylabel="density (log)", title="Score by class (test)")
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
    ax.set(xlabel="normalised importance (xgb gain, rf impurity)", title="Feature importance")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "importance.png", dpi=90)
    files.append("importance.png")
    plt.close(fig)
    return files


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def summary_markdown(trained: Any, plots: Sequence[str]) -> str:
    """Markdown summary for a fraud analyst."""
    m = trained.metrics
    th = trained.thresholds
    test = m["test"]
    lines = [f"# Evaluation report: {trained.model_version}", ""]
    d = m.get("data", {})
    split = d.get("split_utc", {})
    lines += [
        f"Trained on {d.get('train_rows')} transactions ({split.get('start')} to "
        f"{split.get('train_end')}), labels as known on {split.get('val_start')}; thresholds "
        f"chosen on {d.get('val_rows')} validation transactions; evaluated on "
        f"{d.get('test_rows')} test transactions from {split.get('test_start')} against every "
        "label that eventually arrived.",
        "",
        f"Selected: imbalance handling **{m['selection']['selected']['strategy']}**, XGBoost "
        f"{m['selection']['selected']['xgb_params']}, vote weights xgb "
        f"{m['selection']['selected']['xgb_weight']:g} / rf "
        f"{1 - m['selection']['selected']['xgb_weight']:g}.",
        "",
        f"Thresholds: review at score >= {th.review:.4f}, decline at >= {th.decline:.4f} "
        f"({th.policy}).",
        "",
        "## Headline (test period)",
        "",
        "| model | AUC ROC | AP | card precision@100/day (ceiling) | review precision / recall "
        "| decline precision / recall |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in test.items():
        lines.append(
            f"| {name} | {r['auc_roc']:.4f} | {r['average_precision']:.4f} | "
            f"{r['card_precision_at_100']:.4f} ({r['card_precision_ceiling']:.4f}) | "
            f"{r['review_precision']:.3f} / {r['review_recall']:.3f} | "
            f"{r['decline_precision']:.3f} / {r['decline_recall']:.3f} |")
    scen = test["ensemble"]["scenario_recall"]
    if scen:
        lines += ["", "## Recall per fraud scenario (ensemble, test)", "",
                  "| scenario | transactions | flagged (>= review) | declined | mean score |",
                  "|---|---|---|---|---|"]
        for k, v in sorted(scen.items(), key=lambda kv: kv[1]["recall_review"]):
            lines.append(f"| {k} | {v['rows']} | {v['recall_review']:.3f} | "
                         f"{v['recall_decline']:.3f} | {v['mean_score']:.3f} |")
        weakest = min(scen.items(), key=lambda kv: kv[1]["recall_review"])
        lines += ["", f"Weakest scenario: **{weakest[0]}** ({weakest[1]['recall_review']:.1%} "
                  "flagged)."]
    lines += ["", "## Imbalance strategy comparison (validation AP, best blend)", "",
              "| strategy | xgb params | xgb weight | AP ensemble | AP xgb | AP rf |",
              "|---|---|---|---|---|---|"]
    for t in m.get("trials", []):
        lines.append(f"| {t['strategy']} | {t['xgb_params']} | {t['xgb_weight']:g} | "
                     f"{t['val_ap']:.4f} | {t['val_ap_xgb']:.4f} | {t['val_ap_rf']:.4f} |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "Members are shown at the ensemble's thresholds for comparison; their scores "
              "are on different scales. Card precision@100 is capped by the number of "
              "fraudulent cards per day (ceiling).", ""]
    return "\n".join(lines)


def write_report(trained: Any, out_dir: Path, X_test: np.ndarray, y_test: np.ndarray) -> None:
    """Write ``metrics.json``, the PNG plots and ``report.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(trained.metrics, indent=2, default=_fmt))
    plots = _plots(trained, out_dir, X_test, y_test) if y_test.any() and (~y_test).any() else []
    (out_dir / "report.md").write_text(summary_markdown(trained, plots))
