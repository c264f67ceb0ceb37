"""The backtest's figures match a brute-force evaluation of the same rules on the same features."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from rules import reference
from rules.backtest import main
from rules.batch import RuleBatch
from rules.book import RuleBook
from rules.files import read_rules_file
from rules.lists import brute_member
from training.features import feature_spec, point_in_time_features
from training.simulate import SimConfig, simulate

RULES = {
    "rules": [
        {"id": "velocity", "description": "burst", "owner": "t", "action": "review",
         "expression": "card_count_10m > 1.0"},
        {"id": "big-ecom", "description": "big online", "owner": "t", "action": "decline",
         "expression": 'amount_reference > 300.0 && channel == "ecom"'},
        {"id": "blocked", "description": "blocked card", "owner": "t", "action": "decline",
         "expression": "card_id in lists.blocked_cards", "mode": "shadow"},
        {"id": "country", "description": "country list", "owner": "t", "action": "review",
         "expression": "country in lists.watch && hour_of_day < 6.0"},
        {"id": "library", "description": "comprehension", "owner": "t", "action": "tag",
         "expression": "[250.0, 500.0].exists(x, amount_reference > x)",
         "valid_from": "2100-01-01T00:00:00Z"},
        {"id": "off", "description": "disabled", "owner": "t", "action": "decline",
         "expression": "true", "enabled": False},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def history_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = simulate(SimConfig(n_transactions=6_000, n_cards=200, days=20, seed=11,
                               fraud_rate=0.05))  # fmt: skip
    path = tmp_path_factory.mktemp("history") / "history.parquet"
    frame.to_parquet(path)
    return path


def test_backtest_matches_brute_force(history_file: Path, tmp_path: Path) -> None:
    from training.history import load_history

    history = load_history(history_file)
    pairs = zip(history.transactions, history.is_fraud, strict=True)
    fraud_cards = sorted({t.card_id for t, f in pairs if f})
    countries = sorted({t.country for t in history.transactions if t.country})[:3]
    doc = dict(RULES)
    doc["lists"] = [{"list": "blocked_cards", "kind": "card_id", "value": c}
                    for c in fraud_cards[:5]] + [
                   {"list": "watch", "kind": "country", "value": c} for c in countries]
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(doc))
    out = tmp_path / "report"
    assert main([str(rules_file), "--data", str(history_file), "--out", str(out),
                 "--no-model"]) == 0
    assert {p.name for p in out.iterdir()} == {
        "report.md", "rules.csv", "precision_recall.png", "hits_per_day.png"
    }
    with open(out / "rules.csv") as f:
        got = {row["rule_id"]: row for row in csv.DictReader(f)}
    assert set(got) == {"velocity", "big-ecom", "blocked", "country", "library"}  # not "off"

    # Brute force: the CEL library row by row, lists by trying every entry, plain loops.
    features = point_in_time_features(history)
    _, names = feature_spec()
    n = len(history)
    batch = RuleBatch.from_transactions(history.transactions, features, names,
                                        np.zeros(n, np.float32), np.full(n, "approve"))
    parsed = read_rules_file(rules_file)
    book = RuleBook(names)
    entries = parsed.entry_objects()
    for e in entries:
        book.put_entry(e)
    for r in parsed.rule_objects():
        book.put_rule(r)
    member = lambda name, value, t: brute_member(entries, name, value, t)  # noqa: E731
    times = [t.event_time for t in history.transactions]
    days = max(1.0, (max(times) - min(times)) / 86_400_000)
    total_fraud = int(history.is_fraud.sum())
    for c in book.compiled():
        hit, _ = reference.evaluate(c, batch, book.vocab, member)
        rows = [i for i in range(n) if hit[i]]
        frauds = [i for i in rows if history.is_fraud[i]]
        row = got[c.rule.id]
        assert int(row["hits"]) == len(rows) > 0, c.rule.id
        assert int(row["fraud_hits"]) == len(frauds)
        if rows:
            assert float(row["precision"]) == pytest.approx(len(frauds) / len(rows))
        assert float(row["recall"]) == pytest.approx(len(frauds) / total_fraud)
        assert float(row["fraud_amount"]) == pytest.approx(
            sum(float(batch.amount_reference[i]) for i in frauds), rel=1e-9)
        assert float(row["false_positives_per_day"]) == pytest.approx(
            (len(rows) - len(frauds)) / days)
    report = (out / "report.md").read_text()
    assert "| velocity | review | active |" in report and "model + active rules" in report


def test_backtest_scores_with_the_served_model_by_default(
        history_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    """Without --model the backtest uses models/current (the model the flow serves)."""
    import rules.backtest as backtest

    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(RULES))
    checkout = tiny_model_dir.parent.parent  # holds models/current, as a checkout does
    monkeypatch.chdir(checkout)
    assert backtest.DEFAULT_MODEL.exists()
    assert main([str(rules_file), "--data", str(history_file), "--out", str(tmp_path / "o")]) == 0
    out, err = capsys.readouterr()
    assert "model: models/current (" in err
    flagged = int(out.split("model alone: flagged ")[1].split(" ")[0].replace(",", ""))
    assert flagged > 0  # the model flags some of the 5% fraud; with no model it would be 0
    monkeypatch.chdir(tmp_path)  # no models/current here: a clear error, not a silent 0
    assert main([str(rules_file), "--data", str(history_file), "--out", str(tmp_path / "p")]) == 2
    assert "--no-model" in capsys.readouterr().err


def test_backtest_refuses_a_bad_rules_file(history_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rules": [{"id": "x", "description": "d", "owner": "o",
                                              "expression": "true", "action": "block"}]}))
    assert main([str(bad), "--data", str(history_file), "--out", str(tmp_path / "o")]) == 2
