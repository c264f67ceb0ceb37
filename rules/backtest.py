"""Backtest a rule set on a labelled history, through the model's own feature path.

    python -m rules.backtest RULES_FILE --data history.parquet [--model DIR | --no-model]
                             [--out reports/rules-backtest] [--honour-validity]

The history (``training.history`` format) is replayed through
``training.features.point_in_time_features``, the offline replay the model
trains on, so every rule sees the feature values the stream would have given.
The model (``--model``, by default ``models/current``, the one the flow serves)
scores every row (``export.model.load_model``) and its decisions come from its
thresholds; with ``--no-model``, ``score`` is 0 and the model approves
everything (no default model and no ``--no-model``: exit 2, saying so). The
file's list entries are loaded first. Rules are evaluated with
:meth:`rules.book.RuleBook.rule_hits` (the streaming code path), by default
ignoring ``valid_from``/``valid_until`` (a rule is backtested before it is
switched on); shadow rules are reported like active ones.

Per rule: hits, fraud hits, precision, recall (share of all fraud), fraud amount
caught (reference currency), false positives per day, and with a model the
share of its hits the model already flagged (review or decline) and the fraud
it adds (caught by the rule, approved by the model). Also the policy's effect:
model alone vs model and active rules (:mod:`rules.policy`). Output: a ``rich``
table, and ``report.md``, ``rules.csv`` and two plots in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rules.batch import RuleBatch
from rules.book import Refused, RuleBook
from rules.contracts import ListEntry, Rule
from scoring.policy import combine
from topics.csvsafe import neutralise_row
from topics.errors import FraudStreamError

DAY_MS = 86_400_000
#: The model the backtest scores with unless told otherwise (what the flow serves).
DEFAULT_MODEL = Path("models/current")


@dataclass(frozen=True)
class RuleFigures:
    """One rule's backtest figures (``None`` where a denominator is zero or no model)."""

    rule_id: str
    action: str
    mode: str
    hits: int
    fraud_hits: int
    precision: float | None
    recall: float | None
    fraud_amount: float
    false_positives_per_day: float
    model_overlap: float | None
    fraud_added: int | None
    errors: int


@dataclass(frozen=True)
class PolicyFigures:
    """Flagged (review or decline) counts, precision and recall of a decision column."""

    name: str
    flagged: int
    declined: int
    precision: float | None
    recall: float | None


@dataclass
class Backtest:
    """Everything a backtest found."""

    rows: int
    frauds: int
    days: float
    rules: list[RuleFigures]
    policies: list[PolicyFigures]
    daily_hits: dict[str, np.ndarray]  # rule id -> hits per day
    ruleset_version: str
    refused: list[Refused]


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _policy(name: str, decisions: np.ndarray, fraud: np.ndarray) -> PolicyFigures:
    flagged = decisions != "approve"
    tp = int((flagged & fraud).sum())
    return PolicyFigures(name, int(flagged.sum()), int((decisions == "decline").sum()),
                         _ratio(tp, int(flagged.sum())), _ratio(tp, int(fraud.sum())))  # fmt: skip


def run_backtest(
    batch: RuleBatch,
    is_fraud: np.ndarray,
    rules: Sequence[Rule],
    entries: Sequence[ListEntry] = (),
    *,
    has_model: bool = False,
    honour_validity: bool = False,
    chunk: int = 8192,
) -> Backtest:
    """Figures of ``rules`` over ``batch`` (the whole history as one batch of columns).

    ``is_fraud`` bool ``[n]``. Rules are evaluated in chunks of ``chunk`` rows.
    Disabled rules are skipped; refused ones are listed in ``refused``.
    """
    book = RuleBook(batch.feature_names)
    for entry in entries:
        book.put_entry(entry)
    refused = []
    for rule in rules:
        if not rule.enabled:
            continue
        result = book.put_rule(rule)
        if isinstance(result, Refused):
            refused.append(result)
    n = len(batch)
    hits = {c.rule.id: np.zeros(n, bool) for c in book.compiled()}
    errors = {c.rule.id: 0 for c in book.compiled()}
    for start in range(0, n, chunk):
        part = _slice(batch, start, min(n, start + chunk))
        got, err, _ = book.rule_hits(part, honour_validity=honour_validity)
        for rule_id, mask in got.items():
            hits[rule_id][start:start + len(part)] = mask
            errors[rule_id] += int(err[rule_id].sum())
    fraud = np.asarray(is_fraud, dtype=bool)
    t = batch.event_time
    days = max(1.0, float(t.max() - t.min()) / DAY_MS) if n else 1.0
    day_index = ((t - t.min()) // DAY_MS).astype(np.int64) if n else np.zeros(0, np.int64)
    n_days = int(day_index.max()) + 1 if n else 0
    flagged = batch.model_decision != "approve"
    amount = batch.amount_reference
    figures = []
    daily = {}
    for c in book.compiled():
        mask = hits[c.rule.id]
        tp = mask & fraud
        figures.append(RuleFigures(
            rule_id=c.rule.id, action=c.rule.action, mode=c.rule.mode,
            hits=int(mask.sum()), fraud_hits=int(tp.sum()),
            precision=_ratio(int(tp.sum()), int(mask.sum())),
            recall=_ratio(int(tp.sum()), int(fraud.sum())),
            fraud_amount=float(amount[tp].sum()),
            false_positives_per_day=float((mask & ~fraud).sum()) / days,
            model_overlap=_ratio(int((mask & flagged).sum()), int(mask.sum())) if has_model
            else None,
            fraud_added=int((tp & ~flagged).sum()) if has_model else None,
            errors=errors[c.rule.id],
        ))  # fmt: skip
        daily[c.rule.id] = np.bincount(day_index[mask], minlength=n_days)
    active = {a: np.zeros(n, bool) for a in ("decline", "review", "approve")}
    for c in book.compiled():
        if c.rule.mode == "active" and c.rule.action in active:
            active[c.rule.action] |= hits[c.rule.id]
    with_rules = combine(batch.model_decision, decline=active["decline"],
                         review=active["review"], approve=active["approve"])  # fmt: skip
    policies = [_policy("model alone", batch.model_decision, fraud),
                _policy("model + active rules", with_rules, fraud)]  # fmt: skip
    return Backtest(n, int(fraud.sum()), days, figures, policies, daily, book.version, refused)


def _slice(batch: RuleBatch, a: int, b: int) -> RuleBatch:
    return RuleBatch(
        event_time=batch.event_time[a:b], text={k: v[a:b] for k, v in batch.text.items()},
        amount=batch.amount[a:b], amount_reference=batch.amount_reference[a:b],
        attributes=batch.attributes[a:b], features=batch.features[a:b],
        feature_names=batch.feature_names, score=batch.score[a:b],
        model_decision=batch.model_decision[a:b],
    )  # fmt: skip


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def table_rows(result: Backtest) -> list[list[str]]:
    """The per-rule table as text cells (terminal and Markdown)."""
    return [
        [f.rule_id, f.action, f.mode, f"{f.hits:,}", f"{f.fraud_hits:,}", _pct(f.precision),
         _pct(f.recall), f"{f.fraud_amount:,.2f}", f"{f.false_positives_per_day:.1f}",
         _pct(f.model_overlap), "-" if f.fraud_added is None else f"{f.fraud_added:,}"]
        for f in result.rules
    ]  # fmt: skip


HEADER = ["rule", "action", "mode", "hits", "fraud hits", "precision", "recall",
          "fraud amount", "FP/day", "model overlap", "fraud added"]  # fmt: skip


def write_report(result: Backtest, out: Path, title: str) -> list[Path]:
    """``report.md``, ``rules.csv``, ``precision_recall.png``, ``hits_per_day.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with open(out / "rules.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(result.rules[0]))
                                if result.rules else ["rule_id"])  # fmt: skip
        writer.writeheader()
        for figure in result.rules:
            writer.writerow(neutralise_row(asdict(figure)))  # rule ids are analysts' text
    written.append(out / "rules.csv")
    ids = [f.rule_id for f in result.rules]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(ids) + 2), 4))
    x = np.arange(len(ids))
    ax.bar(x - 0.2, [f.precision or 0 for f in result.rules], 0.4, label="precision")
    ax.bar(x + 0.2, [f.recall or 0 for f in result.rules], 0.4, label="recall")
    ax.set_xticks(x, ids, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Precision and recall per rule")
    fig.tight_layout()
    fig.savefig(out / "precision_recall.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4))
    for rule_id, series in result.daily_hits.items():
        ax.plot(np.arange(len(series)), series, label=rule_id)
    ax.set_xlabel("day of history")
    ax.set_ylabel("hits")
    ax.set_title("Hits per day")
    if result.daily_hits:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "hits_per_day.png", dpi=100)
    plt.close(fig)
    written += [out / "precision_recall.png", out / "hits_per_day.png"]
    lines = [
        f"# Rules backtest: {title}", "",
        f"{result.rows:,} transactions over {result.days:.1f} days, {result.frauds:,} fraud; "
        f"rule set {result.ruleset_version}.", "",
        "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER),
        *("| " + " | ".join(r) + " |" for r in table_rows(result)), "",
        "| decisions | flagged | declined | precision | recall |", "|---|---|---|---|---|",
        *(f"| {p.name} | {p.flagged:,} | {p.declined:,} | {_pct(p.precision)} | "
          f"{_pct(p.recall)} |" for p in result.policies), "",
        "![precision and recall](precision_recall.png)", "", "![hits per day](hits_per_day.png)",
    ]  # fmt: skip
    if result.refused:
        lines += ["", "## Refused rules", "", *(f"- {r.reason}" for r in result.refused)]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    written.append(out / "report.md")
    return written


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rules.backtest",
        description=(
            "Run a rule set (YAML/JSON, the format of `python -m rules.cli`) over a labelled "
            "history through the model's feature path and report, per rule: hits, precision, "
            "recall, fraud amount caught, false positives per day and overlap with the model."
        ),
        epilog="Exit codes: 0 ok, 1 error, 2 bad input (unreadable file, refused rule).",
    )
    parser.add_argument("rules_file", metavar="RULES_FILE", type=Path,
                        help="rules (and optional `lists:`) in YAML or JSON")
    parser.add_argument("--data", type=Path, required=True,
                        help="labelled history, Parquet or CSV (training/history.py format)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", type=Path, default=None,
                       help="model directory: scores and decisions (default: models/current "
                       "when it exists)")
    model.add_argument("--no-model", dest="no_model", action="store_true",
                       help="rules alone: every row scores 0 and the model approves it")
    parser.add_argument("--out", type=Path, default=Path("reports/rules-backtest"),
                        help="output directory for report.md, rules.csv and plots")
    parser.add_argument("--honour-validity", action="store_true",
                        help="apply valid_from/valid_until (default: ignore them)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rules.backtest``."""
    from rich.console import Console
    from rich.table import Table

    from devkit.cli import table_console
    from rules.errors import RulesFileError
    from rules.files import read_rules_file

    args = _parse_args(argv)
    console = Console(stderr=True)
    if args.model is None and not args.no_model:
        if not DEFAULT_MODEL.exists():
            print(f"error: no model at {DEFAULT_MODEL}: give --model DIR, or --no-model for "
                  "the rules alone (train and publish one with `just train` and "
                  "`just export-onnx`)", file=sys.stderr)
            return 2
        args.model = DEFAULT_MODEL
        print(f"model: {DEFAULT_MODEL} ({DEFAULT_MODEL.resolve().name})", file=sys.stderr)
    try:
        doc = read_rules_file(args.rules_file)
        rules, entries = doc.rule_objects(), doc.entry_objects()
    except RulesFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        from training.features import point_in_time_features
        from training.history import load_history

        with console.status("loading history"):
            history = load_history(args.data)
        with console.status(f"replaying {len(history):,} transactions through the features"):
            features = point_in_time_features(history)
        from training.features import feature_spec

        _, names = feature_spec()
        scores = np.zeros(len(history), np.float32)
        decisions = np.full(len(history), "approve", dtype="<U7")
        if args.model is not None:
            from export.model import load_model

            model = load_model(args.model)
            with console.status("scoring"):
                scores = model.predict(features)
            decisions = model.decide(scores)
        batch = RuleBatch.from_transactions(history.transactions, features, names, scores,
                                            decisions)  # fmt: skip
        result = run_backtest(batch, history.is_fraud, rules, entries,
                              has_model=args.model is not None,
                              honour_validity=args.honour_validity)  # fmt: skip
    except FraudStreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for refusal in result.refused:
        print(f"refused: {refusal.reason}", file=sys.stderr)
    table = Table(title=f"{args.rules_file.name} on {args.data.name}: {result.rows:,} txns, "
                        f"{result.frauds:,} fraud, {result.days:.0f} days")  # fmt: skip
    for name in HEADER:
        table.add_column(name, justify="left" if name in ("rule", "action", "mode") else "right")
    for row in table_rows(result):
        table.add_row(*row)
    table_console().print(table)
    for p in result.policies:
        print(f"{p.name}: flagged {p.flagged:,} (declined {p.declined:,}), precision "
              f"{_pct(p.precision)}, recall {_pct(p.recall)}")  # fmt: skip
    written = write_report(result, args.out, f"{args.rules_file.name} on {args.data.name}")
    print(f"report: {written[-1]}", file=sys.stderr)
    return 2 if result.refused else 0


if __name__ == "__main__":
    sys.exit(main())
