"""bench/quix: options and report of compare.py, and the Quix app's features, without Quix."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.quix import app as quix_app  # noqa: E402
from bench.quix import compare  # noqa: E402


def test_defaults_are_the_measurement_of_issue_21() -> None:
    args = compare.parse_args([])
    assert (args.transactions, args.rounds, args.broker) == (300_000, 3, "embedded")
    assert args.only == compare.VARIANTS
    assert args.out == ROOT / "bench" / "quix"
    assert args.quix_venv == ROOT / ".venv-quix"


def test_options_are_parsed_and_variants_kept_in_run_order() -> None:
    args = compare.parse_args(["--transactions", "30000", "--rounds", "1", "--broker", "kafka",
                               "--only", "quix-per-message,ours"])
    assert (args.transactions, args.rounds, args.broker) == (30_000, 1, "kafka")
    assert args.only == ("ours", "quix-per-message")


@pytest.mark.parametrize("argv", [["--broker", "redpanda"], ["--only", "ours,flink"],
                                  ["--rounds", "0"], ["--transactions", "10"]])
def test_bad_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        compare.parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_help_explains_the_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        compare.parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for words in ("Quix Streams", "group_by", "--transactions", "--rounds", "--broker",
                  ".venv-quix", "record"):
        assert words in text, words


def test_quix_requirements_pin_every_package() -> None:
    lines = [line.split("#")[0].strip() for line in compare.REQUIREMENTS.read_text().splitlines()]
    pins = [line for line in lines if line]
    assert any(p.startswith("quixstreams==") for p in pins)
    assert all("==" in p for p in pins), pins


def _runs(rate: float, cpu: float, n: int = 3) -> list[dict[str, float]]:
    return [{"tx_per_s": rate * (1 + i / 10), "cpu_us_per_tx": cpu, "broker_cpu_us_per_tx": 10.0,
             "startup_s": 2.0} for i in range(n)]


def test_summary_takes_medians_and_ratios_of_ours_to_each_quix_variant() -> None:
    summary = compare.summarize({"ours": _runs(9000, 100), "quix-batched": _runs(2000, 400),
                                 "quix-per-message": _runs(1000, 800)})
    assert summary["variants"]["ours"]["tx_per_s"] == 9900.0  # median of 9000, 9900, 10800
    assert summary["variants"]["ours"]["runs"] == [9000, 9900, 10800]
    assert summary["ratios"] == {"ours/quix-batched": 4.5, "cpu quix-batched/ours": 4.0,
                                 "ours/quix-per-message": 9.0, "cpu quix-per-message/ours": 8.0}


def _results(ours: float, batched: float, load: float) -> dict[str, object]:
    runs = {"ours": _runs(ours, 100, 1), "quix-batched": _runs(batched, 300, 1),
            "quix-per-message": _runs(batched / 3, 900, 1)}
    return {"date": "2026-12-07 07:00 UTC", "versions": {"quix:quixstreams": "3.28.1"},
            "load_before": [load, 1.0, 1.0], "load_after": [load, 1.0, 1.0],
            "config": {"transactions": 30_000, "rounds": 1, "broker": "embedded",
                       "model": "models/current", "cores": 2},
            "summary": compare.summarize(runs), "runs": runs}


def test_report_says_whether_issue_21_is_met_and_when_the_machine_was_busy() -> None:
    met = compare.markdown(_results(9000, 2000, load=0.5))
    assert "| ours | 9,000 |" in met and "| quix-batched | 2,000 |" in met
    assert "ours / quix-batched: **4.50x**" in met and "**met**" in met
    assert "busy" not in met and "quixstreams 3.28.1" in met
    busy = compare.markdown(_results(5000, 2500, load=7.5))
    assert "**2.00x**" in busy and "**not met**" in busy
    assert "7.50 / 1.00 / 1.00" in busy and "busy" in busy
    json.dumps(_results(1, 1, 1))  # results.json is plain JSON


def test_the_quix_app_loads_without_quixstreams_and_scores_with_the_model() -> None:
    assert "quixstreams" not in sys.modules
    if not (ROOT / "models" / "current" / "model.onnx").exists():
        pytest.skip("no published model (models/ is not in git)")
    model = quix_app.Model(ROOT / "models" / "current")
    assert model.n_features == 43
    scores = model.scores([[0.0] * 43, [1.0] * 43])
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert model.decision(1.0) == "decline" and model.decision(0.0) == "approve"


def test_the_quix_app_computes_the_features_of_our_offline_replay() -> None:
    """Card state per card, merchant state per merchant, JSON round-trips as in Quix's store."""
    from bench.run import simulate
    from state.replay import reference_amounts, replay_matrix

    txns = simulate(2000, 400)
    ordered, ours = replay_matrix(txns)
    amount_of = reference_amounts()
    cards: dict[str, Any] = {}
    merchants: dict[str, Any] = {}
    rows = []
    for txn in ordered:
        value = json.loads(json.dumps({f: getattr(txn, f) for f in txn.__struct_fields__}))
        amount = float(amount_of(txn))
        card, f = quix_app.card_step(cards.get(txn.card_id), value, amount)
        merchant, g = quix_app.merchant_step(merchants.get(txn.merchant_id), value, amount)
        cards[txn.card_id] = json.loads(json.dumps(card))
        merchants[txn.merchant_id] = json.loads(json.dumps(merchant))
        rows.append(f + g)
    quix = np.asarray(rows, dtype=np.float32)
    assert quix.shape == ours.shape
    assert np.allclose(quix, ours, rtol=1e-3, atol=1e-3)
    assert quix[:, :23].any() and quix[:, 23:26].any()  # card and merchant features non-trivial
