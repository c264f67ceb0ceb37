from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from topics import currency
from topics.contracts import Transaction
from topics.currency import (
    MINOR_UNITS,
    PEGS,
    RateTable,
    RateTableError,
    UnknownRateError,
    default_rates,
    reference_amount,
)
from topics.errors import FraudStreamError

RATES = default_rates()
CODES = sorted(RATES.per_reference)


def txn(**kw: object) -> Transaction:
    base: dict[str, object] = dict(transaction_id="t", card_id="c", merchant_id="m", amount=10.0,
                                   currency="EUR", event_time=1_700_000_000_000)
    return Transaction(**{**base, **kw})  # type: ignore[arg-type]


def test_minor_units_are_iso_4217() -> None:
    assert (MINOR_UNITS["JPY"], MINOR_UNITS["KRW"], MINOR_UNITS["ISK"]) == (0, 0, 0)
    assert (MINOR_UNITS["EUR"], MINOR_UNITS["USD"], MINOR_UNITS["IDR"]) == (2, 2, 2)
    assert {c for c, d in MINOR_UNITS.items() if d == 3} == {
        "BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
    # funds codes, metals, testing codes and units of account are not card currencies
    assert not {"CLF", "UYW", "XAU", "XTS", "XXX", "XDR", "USN"} & set(MINOR_UNITS)
    # withdrawn codes still seen in card history are kept, with their minor units
    assert MINOR_UNITS["HRK"] == 2 and MINOR_UNITS["BGN"] == 2


def test_iso_table_matches_the_package_it_was_generated_from() -> None:
    iso4217 = pytest.importorskip("iso4217")
    committed = json.loads(currency.ISO_FILE.read_text())
    if committed["published"] != iso4217.__published__.isoformat():
        pytest.skip("installed iso4217 is another edition; run python -m topics.currency "
                    "--generate to move to it")
    assert currency.generate_iso_table() == committed


def test_rate_table_is_the_committed_ecb_day_regenerated_exactly() -> None:
    pytest.importorskip("currency_converter")
    pytest.importorskip("iso4217")
    assert currency.main(["--check"]) == 0


def test_rate_table_shape_version_and_coverage() -> None:
    data = json.loads(currency.RATES_FILE.read_text())
    expected = f"ecb-{data['ecb_date']}+pegs.{currency.PEGS_VERSION}"
    assert RATES.version == data["version"] == expected
    assert RATES.reference == "EUR" and RATES.per_reference["EUR"] == 1.0
    assert set(CODES) <= set(MINOR_UNITS)
    decimals = [MINOR_UNITS[c] for c in CODES]
    assert decimals.count(0) >= 1 and decimals.count(3) >= 2 and decimals.count(2) >= 20
    # the ECB quotes these; the supplement holds only pegs, each with its public source
    assert {"USD", "JPY", "GBP", "IDR", "KRW"} <= set(CODES)
    assert set(data["supplement"]) <= set(PEGS)
    assert all(entry["source"] for entry in data["supplement"].values())


def test_supplement_never_overrides_an_ecb_rate() -> None:
    pytest.importorskip("currency_converter")
    data = json.loads(currency.RATES_FILE.read_text())
    _, ecb = currency.ecb_rates(data["ecb_date"])
    assert not set(ecb) & set(data["supplement"])
    assert all(RATES.per_reference[c] == r for c, r in ecb.items())


def test_pegs_are_crossed_with_the_ecb_rate_of_their_anchor() -> None:
    usd = RATES.per_reference["USD"]
    for code in ("BHD", "OMR", "JOD", "AED", "SAR"):
        assert RATES.per_reference[code] == PEGS[code].units * usd
    assert RATES.per_reference["XOF"] == 655.957
    assert RATES.to_reference(0.376, "BHD") == pytest.approx(1 / usd, rel=1e-15)


def test_to_reference_is_plain_float64_division() -> None:
    assert RATES.to_reference(4500.0, "JPY") == 4500.0 / RATES.per_reference["JPY"]
    assert RATES.to_reference(0.0, "JPY") == 0.0
    assert RATES.to_reference(12.5, "EUR") == 12.5


def test_unknown_currency_names_the_table_version_and_the_remedy() -> None:
    with pytest.raises(UnknownRateError) as info:
        RATES.to_reference(1.0, "VND")
    assert isinstance(info.value, FraudStreamError)
    assert RATES.version in str(info.value) and "'VND'" in str(info.value)
    assert "python -m topics.currency --generate" in str(info.value)
    with pytest.raises(UnknownRateError):
        RATES.with_reference("KWD")


@given(st.sampled_from(CODES), st.sampled_from(CODES),
       st.integers(min_value=0, max_value=10**9))
def test_any_reference_gives_the_same_value_up_to_float_rounding(
    ref: str, cur: str, minor: int
) -> None:
    amount = minor / 10 ** MINOR_UNITS[cur]
    rebased = RATES.with_reference(ref)
    assert rebased.reference == ref and rebased.per_reference[ref] == 1.0
    assert rebased.version == RATES.version
    expected = RATES.to_reference(amount, cur) * RATES.per_reference[ref]
    assert math.isclose(rebased.to_reference(amount, cur), expected, rel_tol=1e-12, abs_tol=0)


def test_default_rates_is_cached_per_reference() -> None:
    assert default_rates() is default_rates("EUR")
    assert default_rates("USD") is default_rates("USD")
    assert default_rates("USD").to_reference(1.0, "USD") == 1.0


def test_to_dict_from_dict_round_trip_is_exact_through_json() -> None:
    data = json.loads(json.dumps(RATES.with_reference("JPY").to_dict()))
    again = RateTable.from_dict(data)
    assert again == RATES.with_reference("JPY")
    assert again.to_reference(1234.0, "BHD") == RATES.with_reference("JPY").to_reference(
        1234.0, "BHD")


@pytest.mark.parametrize("bad", [
    {"reference": "EUR", "per_reference": {"EUR": 1.0}},
    {"version": "v", "reference": "EUR", "per_reference": {"EUR": "x"}},
    {"version": "v", "reference": "USD", "per_reference": {"EUR": 1.0}},
    {"version": "v", "reference": "EUR", "per_reference": {"EUR": 1.0, "JPY": 0.0}},
    {"version": "v", "reference": "EUR", "per_reference": {"EUR": 1.0, "JPY": float("inf")}},
    {"version": 3, "reference": "EUR", "per_reference": {"EUR": 1.0}},
])
def test_malformed_tables_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(RateTableError):
        RateTable.from_dict(bad)


def test_reference_amount_prefers_the_cardholder_billing_amount() -> None:
    local = txn(amount=4500.0, currency="JPY")
    billed = txn(amount=4500.0, currency="JPY", billing_amount=26.32, billing_currency="EUR")
    assert reference_amount(local, RATES) == 4500.0 / RATES.per_reference["JPY"]
    assert reference_amount(billed, RATES) == 26.32
    usd = RATES.with_reference("USD")
    assert reference_amount(billed, usd) == 26.32 / usd.per_reference["EUR"]


def test_cli_summary_lists_every_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert currency.main([]) == 0
    out = capsys.readouterr().out
    assert RATES.version in out and "BHD" in out and "(3 decimals)" in out
    assert len([line for line in out.splitlines() if line.startswith("  ")]) == len(CODES)


# ---- issue 23: every currency gets a verdict (conversion order, operator rates file)

VND = dict(amount=2_600_000.0, currency="VND")


def test_conversion_order_billing_amount_then_rate_table_then_unrated() -> None:
    assert "VND" not in RATES.per_reference and "COP" not in RATES.per_reference
    # 1. billing amount in the reference currency: as it is, whatever the currency
    assert reference_amount(txn(**VND, billing_amount=94.1, billing_currency="EUR"),
                            RATES) == 94.1
    # 1b. billing amount in another rated currency: through the table
    assert reference_amount(txn(**VND, billing_amount=110.0, billing_currency="USD"),
                            RATES) == 110.0 / RATES.per_reference["USD"]
    # 2. billing currency without a rate: the transaction amount through the table
    assert reference_amount(txn(amount=50.0, currency="USD", billing_amount=1_300_000.0,
                                billing_currency="VND"), RATES) == 50.0 / RATES.per_reference[
        "USD"]
    # 3. nothing rated: UNRATED (NaN), and the currency it names
    for unrated in (txn(**VND), txn(amount=12_000_000.0, currency="COP"),
                    txn(**VND, billing_amount=1_000_000.0, billing_currency="COP")):
        assert math.isnan(reference_amount(unrated, RATES))
        assert currency.unrated_currency(unrated, RATES) == unrated.currency
    assert currency.unrated_currency(txn(**VND, billing_amount=94.1, billing_currency="EUR"),
                                     RATES) is None
    # a zero-value authorisation is 0 in every currency: never unrated
    assert reference_amount(txn(amount=0.0, currency="VND"), RATES) == 0.0


def _rates_file(tmp_path: Path, **data: object) -> Path:
    body: dict[str, object] = {"version": "treasury-2026-12-07", "reference": "USD",
                               "as_of": "2026-12-07", "source": "test fixing",
                               "per_reference": {"EUR": 0.8951, "VND": 26210.0, "COP": 3890.5,
                                                 "USD": 1.0, "JPY": 150.0}}
    body.update(data)
    path = tmp_path / "rates.json"
    path.write_text(json.dumps(body))
    return path


def test_operator_rates_file_fills_gaps_crossed_into_the_reference_and_versioned(
        tmp_path: Path) -> None:
    operator = currency.load_rates_file(_rates_file(tmp_path))
    assert operator.version == "treasury-2026-12-07" and operator.reference == "USD"
    served = currency.serving_rates(RATES, operator)
    assert served.version == f"{RATES.version}+treasury-2026-12-07"
    assert served.reference == "EUR"
    # VND per EUR = VND per USD / EUR per USD (the file's own cross)
    assert served.per_reference["VND"] == 26210.0 / 0.8951
    assert reference_amount(txn(**VND), served) == 2_600_000.0 / (26210.0 / 0.8951)
    # the model's table wins where both quote a currency (its amounts keep their scale)
    assert served.per_reference["JPY"] == RATES.per_reference["JPY"]
    assert served.per_reference["USD"] == RATES.per_reference["USD"]
    # a file that adds nothing changes nothing, not even the version
    same = currency.load_rates_file(_rates_file(tmp_path, per_reference={"EUR": 0.9}))
    assert currency.serving_rates(RATES, same) is RATES


def test_the_next_days_file_gives_the_next_version(tmp_path: Path) -> None:
    monday = currency.serving_rates(RATES, currency.load_rates_file(_rates_file(tmp_path)))
    tuesday = currency.serving_rates(RATES, currency.load_rates_file(
        _rates_file(tmp_path, version="treasury-2026-12-08",
                    per_reference={"EUR": 0.8951, "VND": 26300.0})))
    assert tuesday.version.endswith("+treasury-2026-12-08") and tuesday != monday
    assert tuesday.per_reference["VND"] == 26300.0 / 0.8951


@pytest.mark.parametrize(("change", "expected"), [
    ({"version": "treasury 7 Dec"}, "version 'treasury 7 Dec'"),
    ({"version": None}, "version None"),
    ({"reference": "XYZ"}, "'XYZ' is not an ISO 4217"),
    ({"per_reference": {"EUR": 0.9, "ABC": 3.0}}, "'ABC' is not an ISO 4217"),
    ({"per_reference": {"EUR": 0.9, "VND": -26210.0}}, "rate of 'VND' must be a positive"),
    ({"per_reference": {"EUR": 0.9, "VND": 0}}, "rate of 'VND' must be a positive"),
    ({"per_reference": {"EUR": 0.9, "VND": "26210"}}, "rate of 'VND' must be a positive"),
    ({"per_reference": {"EUR": 0.9, "VND": True}}, "rate of 'VND' must be a positive"),
    ({"per_reference": {"EUR": 0.9, "USD": 1.1}}, "must have rate 1"),
    ({"per_reference": {}}, "per_reference must be"),
])
def test_a_bad_rates_file_is_refused_naming_the_file_and_the_problem(
        tmp_path: Path, change: dict[str, object], expected: str) -> None:
    path = _rates_file(tmp_path, **change)
    with pytest.raises(RateTableError, match="rates file") as err:
        currency.load_rates_file(path)
    assert str(path) in str(err.value) and expected in str(err.value)
    assert isinstance(err.value, FraudStreamError)


def test_unreadable_rates_files_are_refused(tmp_path: Path) -> None:
    for text in ("{not json", "[1, 2]", '{"version": "v1", "reference": "USD", '
                 '"per_reference": {"VND": NaN}}'):
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(RateTableError, match=str(path)):
            currency.load_rates_file(path)
    with pytest.raises(RateTableError, match="cannot read"):
        currency.load_rates_file(tmp_path / "missing.json")


def test_a_file_without_the_reference_currency_cannot_be_crossed(tmp_path: Path) -> None:
    operator = currency.load_rates_file(
        _rates_file(tmp_path, per_reference={"VND": 26210.0, "COP": 3890.5}))
    with pytest.raises(RateTableError, match="no rate for EUR"):
        currency.serving_rates(RATES, operator)


def test_serving_rates_add_the_committed_table_to_an_older_model_table() -> None:
    older = RateTable("ecb-2020-01-02", "EUR", {"EUR": 1.0, "USD": 1.12})
    served = currency.serving_rates(older)
    assert served.per_reference["USD"] == 1.12  # the model's own rate stays
    assert served.per_reference["JPY"] == RATES.per_reference["JPY"]
    assert served.version == f"ecb-2020-01-02+{RATES.version}"
    assert currency.serving_rates(RATES) is RATES  # the committed model: nothing to add


def test_cli_checks_an_operator_rates_file(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    good = _rates_file(tmp_path)
    assert currency.main(["--check-rates-file", str(good)]) == 0
    out = capsys.readouterr().out
    assert "treasury-2026-12-07" in out and "VND" in out
    bad = _rates_file(tmp_path, per_reference={"EUR": 0.9, "VND": -1})
    assert currency.main(["--check-rates-file", str(bad)]) == 1
    assert "rate of 'VND'" in capsys.readouterr().err
