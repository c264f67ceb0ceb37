from __future__ import annotations

import json
import math

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
    with pytest.raises(UnknownRateError):
        reference_amount(txn(currency="VND", amount=1000.0), RATES)


def test_cli_summary_lists_every_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert currency.main([]) == 0
    out = capsys.readouterr().out
    assert RATES.version in out and "BHD" in out and "(3 decimals)" in out
    assert len([line for line in out.splitlines() if line.startswith("  ")]) == len(CODES)
