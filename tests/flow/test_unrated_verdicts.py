"""Issue 23: an authorisation in a currency without a rate gets a verdict, flagged and explained.

Real parts: the flow's card and merchant stages over real RocksDB (:class:`stages.Stages`),
a real ONNX model trained and published by our code (``tiny_model_dir``), and the offline
paths (``state.replay``, ``just score-file``) held to the same scores.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
from prometheus_client import REGISTRY

from export.model import load_model
from flows.decode import count_unrated
from flows.serving import ModelSource, model_rates
from scoring.decide import decide
from scoring.render import UNRATED_REASON, render, unrated_reasons
from stages import Stages, sourced
from state.inputs import NEUTRAL_WHEN_UNRATED
from state.replay import replay_matrix
from topics.contracts import Prediction, ReasonCode, Transaction
from topics.currency import RateTable, default_rates, reference_amount, serving_rates
from training.history import load_history
from training.score_file import score_history

T0 = 1_795_953_300_000
MIN = 60_000


def _txn(tid: str, card: str, amount: float, currency: str, minutes: int,
         merchant: str = "m-hanoi", **kw: object) -> Transaction:
    return Transaction(transaction_id=tid, card_id=card, merchant_id=merchant, amount=amount,
                       currency=currency, event_time=T0 + minutes * MIN, channel="pos",
                       country="VN", **kw)  # type: ignore[arg-type]


STREAM = [
    *[_txn(f"tx-h{i}", "card-vnd", 20.0 + 7 * i, "EUR", i, merchant=f"m-{i}")
      for i in range(6)],
    _txn("tx-vnd", "card-vnd", 2_600_000.0, "VND", 10),
    _txn("tx-eurvn", "card-eurvn", 95.0, "EUR", 10),
    _txn("tx-billed", "card-billed", 2_600_000.0, "VND", 11, billing_amount=94.1,
         billing_currency="EUR"),
    _txn("tx-cop", "card-cop", 12_000_000.0, "COP", 12),
    _txn("tx-xyz", "card-xyz", 120.0, "XYZ", 12),  # a code ISO 4217 does not list
    _txn("tx-after", "card-vnd", 40.0, "EUR", 13),
]


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
             ) -> dict[str, Prediction]:
    source = ModelSource(tiny_model_dir, thresholds=lambda m: m.thresholds, interval=0)
    stages = Stages(tmp_path_factory.mktemp("unrated"), source)
    stages.feed(sourced(STREAM, stages.parts))
    return {v.transaction_id: v for v in stages.verdicts()}


def test_every_currency_gets_a_verdict_and_unrated_ones_say_so(
        streamed: dict[str, Prediction]) -> None:
    assert set(streamed) == {t.transaction_id for t in STREAM}
    for tid, code in (("tx-vnd", "VND"), ("tx-cop", "COP"), ("tx-xyz", "XYZ")):
        v = streamed[tid]
        assert v.amount_unrated and v.amount_reference is None
        assert v.reasons[0].feature == UNRATED_REASON and code in v.reasons[0].text
        assert "EUR" in v.reasons[0].text
        assert not {r.feature for r in v.reasons} & NEUTRAL_WHEN_UNRATED
    control, billed = streamed["tx-eurvn"], streamed["tx-billed"]
    assert not control.amount_unrated and control.amount_reference == 95.0
    assert not billed.amount_unrated and billed.amount_reference == 94.1  # DE6 first
    assert all(r.feature != UNRATED_REASON for r in control.reasons + billed.reasons)


def test_stream_scores_equal_the_offline_replay_for_unrated_rows(
        streamed: dict[str, Prediction], tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    txns, X = replay_matrix(STREAM)
    offline = dict(zip((t.transaction_id for t in txns), model.predict(X).tolist(),
                       strict=True))
    assert {tid: v.score for tid, v in streamed.items()} == pytest.approx(offline, abs=1e-6)
    vnd = X[[t.transaction_id for t in txns].index("tx-vnd")]
    assert np.isfinite(X).all()
    names = list(model.feature_names)
    assert vnd[names.index("amount")] == 0.0 and vnd[names.index("log_amount")] == 0.0
    assert vnd[names.index("card_amount_ratio_30d")] == 1.0
    assert vnd[names.index("card_amount_zscore_30d")] == 0.0
    # the card counted it (velocity) but learnt no amount from it: the next EUR purchase
    # sees 7 transactions in the hour and the EUR amounts only
    after = X[[t.transaction_id for t in txns].index("tx-after")]
    assert after[names.index("card_count_1h")] == 7
    assert after[names.index("card_amount_mean_30d")] == pytest.approx(
        np.mean([20.0 + 7 * i for i in range(6)]), rel=1e-6)


def test_score_file_flags_the_same_rows_with_the_same_scores(
        streamed: dict[str, Prediction], tmp_path: Path, tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    path = tmp_path / "history.csv"
    fields = ("transaction_id", "card_id", "merchant_id", "amount", "currency",
              "billing_amount", "billing_currency", "event_time", "channel", "country")
    rows = [",".join("" if getattr(t, f) is None else str(getattr(t, f)) for f in fields)
            + ",false" for t in STREAM]
    path.write_text(",".join((*fields, "is_fraud")) + "\n" + "\n".join(rows) + "\n")
    columns = score_history(load_history(path), model)
    by_id = dict(zip(columns["transaction_id"], range(len(STREAM)), strict=True))
    for tid, v in streamed.items():
        i = by_id[tid]
        assert columns["amount_unrated"][i] == v.amount_unrated
        assert float(columns["score"][i]) == pytest.approx(v.score, abs=1e-6)
    assert columns["reason_features"][by_id["tx-vnd"]].startswith(UNRATED_REASON)


def test_the_verdict_names_the_serving_rate_table(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    serving = ModelSource(tiny_model_dir, thresholds=lambda m: m.thresholds, interval=0).current
    operator = RateTable("treasury-2026-12-07", "EUR", {"EUR": 1.0, "VND": 28_000.0})
    rates = serving_rates(model_rates(model), operator)
    txns, X = replay_matrix(STREAM[:8], amount_of=lambda t: reference_amount(t, rates))
    amounts = np.array([reference_amount(t, rates) for t in txns])
    decided = decide(X, txns, amounts, serving)
    n = len(txns)
    out = [msgspec.json.decode(b, type=Prediction) for b in render(
        decided, txns, np.zeros(n, np.int64), np.zeros(n, bool), amounts, "EUR", 1,
        rates.version)]
    vnd = next(v for v in out if v.transaction_id == "tx-vnd")
    # the model's table, the operator's day, then the committed table's extra parities
    extra = ("" if model_rates(model).version == default_rates().version
             else f"+{default_rates().version}")  # a model trained on an older table
    assert rates.version == f"{model_rates(model).version}+treasury-2026-12-07{extra}"
    assert rates.per_reference["BND"] == default_rates().per_reference["BND"]
    assert all(v.rate_table == rates.version for v in out)
    assert not vnd.amount_unrated and vnd.amount_reference == pytest.approx(2_600_000 / 28_000)


def test_the_unrated_metric_counts_by_currency() -> None:
    def count(code: str) -> float:
        return REGISTRY.get_sample_value("fraud_amount_unrated_total", {"currency": code}) or 0.0

    before = count("VND"), count("COP"), count("unlisted"), count("EUR")
    assert count_unrated(STREAM, default_rates()) == 3
    assert (count("VND"), count("COP"), count("unlisted"), count("EUR")) == (
        before[0] + 1, before[1] + 1, before[2] + 1, before[3])  # XYZ: a bounded label


def test_a_bad_rates_file_stops_the_flow_at_start_up_naming_the_file(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    from flows.score import build_flow
    from flows.settings import ScoringSettings
    from topics.currency import RateTableError

    bad = tmp_path / "rates-2026-12-07.json"
    bad.write_text('{"version": "treasury-2026-12-07", "reference": "USD", '
                   '"per_reference": {"EUR": 0.8951, "VND": -26210}}')
    settings = ScoringSettings.from_env({"FRAUD_MODEL_PATH": str(tiny_model_dir),
                                         "FRAUD_RATES_FILE": str(bad),
                                         "FRAUD_STATE_DIR": str(tmp_path / "state")})
    assert settings.rates_file == bad
    with pytest.raises(RateTableError, match="rate of 'VND' must be a positive") as err:
        build_flow(settings, n_partitions=1)  # before any broker call
    assert str(bad) in str(err.value)
    assert ScoringSettings.from_env({}).rates_file is None


def test_an_unrated_verdict_never_explains_itself_by_a_neutral_placeholder() -> None:
    vnd = STREAM[6]
    model = [ReasonCode(feature="amount", text="amount 0.00 EUR"),
             ReasonCode(feature="card_count_10m", text="7 card transactions in 10 minutes"),
             ReasonCode(feature="card_amount_ratio_30d", text="amount 1x the card's average")]
    reasons = unrated_reasons(vnd, model, "EUR", "ecb-2026-10-30+pegs.1")
    assert [r.feature for r in reasons] == [UNRATED_REASON, "card_count_10m"]
    assert reasons[0].text == ("amount in VND not converted to EUR: no exchange rate in rate "
                               "table ecb-2026-10-30+pegs.1; amount features scored at neutral "
                               "values")


@pytest.mark.parametrize("with_shadow", [False, True])
def test_the_gists_stored_for_labels_equal_those_read_from_the_verdicts(
        tiny_model_dir: Path, with_shadow: bool) -> None:
    """The merchant store keeps each verdict's gist for label feedback; the flow hands it
    the gists made from the decided arrays (``gists``): byte for byte what decoding the
    published verdict gives (``verdict_gist``), unrated rows, flagged rows and shadow too."""
    from scoring.render import gists
    from state.records import verdict_gist

    serving = ModelSource(tiny_model_dir, thresholds=lambda m: m.thresholds, interval=0).current
    rates = model_rates(load_model(tiny_model_dir))
    txns, X = replay_matrix(STREAM, amount_of=lambda t: reference_amount(t, rates))
    amounts = np.array([reference_amount(t, rates) for t in txns])
    decided = decide(X, txns, amounts, serving, serving if with_shadow else None)
    n = len(txns)
    out = render(decided, txns, np.zeros(n, np.int64), np.zeros(n, bool), amounts, "EUR", 1)
    assert any(a != a for a in amounts.tolist())  # an unrated row is among them
    assert gists(decided) == [verdict_gist(v) for v in out]
    assert all(b"shadow_score" in g for g in gists(decided)) == with_shadow
