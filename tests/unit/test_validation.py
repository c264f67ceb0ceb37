import json
import math
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from samples import (
    BOM,
    GOOD_MESSAGES,
    NOW_MS,
    BadMessage,
    GoodMessage,
    case_records,
    raw,
    txn_json,
)
from topics.contracts import Label, Transaction
from topics.currency import MINOR_UNITS, default_rates, reference_amount
from topics.pan import pan_digits
from topics.validation import (
    MAX_REFERENCE_AMOUNT,
    LabelDecoder,
    Rejection,
    TransactionDecoder,
    parse_time_ms,
)

decoder = TransactionDecoder()
RATES = default_rates()
RATED = sorted(RATES.per_reference)


def test_each_bad_message_is_rejected_with_the_field_and_rule(bad_message: BadMessage) -> None:
    result = decoder.decode(bad_message.value, NOW_MS)
    assert isinstance(result, Rejection), f"{bad_message.kind} was accepted: {result}"
    assert result.error_class == bad_message.error_class, result
    assert bad_message.reason_contains in result.reason, result


def test_valid_message_passes_unchanged() -> None:
    body = txn_json(attributes={"bin": "411111", "3ds": True}, device_id="d-9", ip="10.0.0.1")
    result = decoder.decode(json.dumps(body).encode(), NOW_MS)
    assert isinstance(result, Transaction)
    assert msgspec.to_builtins(result) == body


def test_only_required_fields_is_enough() -> None:
    body = {k: v for k, v in txn_json().items() if k in {
        "transaction_id", "card_id", "merchant_id", "amount", "currency", "event_time"}}
    result = decoder.decode(json.dumps(body).encode(), NOW_MS)
    assert isinstance(result, Transaction)
    assert result.channel is None and result.lat is None and result.country is None


def test_rfc3339_event_time_is_normalised_to_epoch_ms() -> None:
    result = decoder.decode(raw(event_time="2023-11-14T23:13:19+01:00"), NOW_MS)
    assert isinstance(result, Transaction)
    assert result.event_time == NOW_MS - 1000


def test_rfc3339_and_another_error_reports_the_other_error() -> None:
    result = decoder.decode(raw(event_time="2023-11-14T22:13:19Z", amount=-1), NOW_MS)
    assert isinstance(result, Rejection) and result.reason.startswith("amount")


def test_future_limit_is_exactly_24_hours() -> None:
    assert isinstance(decoder.decode(raw(event_time=NOW_MS + 24 * 3600_000), NOW_MS), Transaction)
    assert isinstance(decoder.decode(raw(event_time=NOW_MS + 24 * 3600_000 + 1), NOW_MS), Rejection)


def test_label_time_accepts_rfc3339() -> None:
    body = b'{"transaction_id":"t","card_id":"c","merchant_id":"m","is_fraud":true,' \
           b'"label_time":"2023-11-14T22:13:20Z"}'
    label = LabelDecoder().decode(body, NOW_MS)
    assert isinstance(label, Label) and label.label_time == NOW_MS and label.is_fraud


def test_parse_time_ms_rejects_bool() -> None:
    result = LabelDecoder().decode(
        b'{"transaction_id":"t","card_id":"c","merchant_id":"m","is_fraud":true,"label_time":true}',
        NOW_MS,
    )
    assert isinstance(result, Rejection) and result.error_class == "wrong_type"
    assert parse_time_ms("x", 5) == 5


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = decoder.decode(data, NOW_MS)
    assert isinstance(result, Transaction | Rejection)


ids = st.text(min_size=1, max_size=40)
cents = st.integers(min_value=0, max_value=80_000_000)  # up to 800,000.00: under the limit


#: A card id is a token: one that is a card number (13-19 digits, Luhn-valid, even all
#: zeros) is refused as ``pan_in_clear`` (tests/unit/test_pan.py), so not a valid one here.
card_ids = ids.filter(lambda c: pan_digits(c) is None)


@given(tid=ids, cid=card_ids, minor=cents,
       attrs=st.dictionaries(st.text(max_size=8), st.integers()))
def test_any_valid_transaction_round_trips(tid: str, cid: str, minor: int, attrs: dict) -> None:
    txn = Transaction(transaction_id=tid, card_id=cid, merchant_id="m", amount=minor / 100,
                      currency="GBP", event_time=NOW_MS, attributes=attrs or None)
    result = decoder.decode(msgspec.json.encode(txn), NOW_MS)
    assert result == txn
    assert math.isfinite(result.amount)  # type: ignore[union-attr]


def test_each_good_message_is_accepted(good_message: GoodMessage) -> None:
    result = decoder.decode(good_message.value, NOW_MS)
    assert isinstance(result, Transaction), f"{good_message.kind}: {result}"
    for field, expected in good_message.expected.items():
        assert getattr(result, field) == expected, (good_message.kind, field)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "good_message" in metafunc.fixturenames:
        metafunc.parametrize("good_message", GOOD_MESSAGES, ids=[m.kind for m in GOOD_MESSAGES])


# ---- amounts: zero, minor units, per-currency limit in the reference currency


def test_zero_is_valid_and_negative_is_refused_with_a_clear_reason() -> None:
    assert isinstance(decoder.decode(raw(amount=0.0), NOW_MS), Transaction)
    refused = decoder.decode(raw(amount=-0.01), NOW_MS)
    assert isinstance(refused, Rejection) and refused.error_class == "invalid_value"
    assert "negative amounts are refused" in refused.reason


def amount_in(code: str, minor: int) -> float:
    return minor / 10 ** MINOR_UNITS[code]


@given(code=st.sampled_from(RATED), minor=st.integers(min_value=0, max_value=10**9))
def test_amounts_with_the_currencys_minor_units_pass(code: str, minor: int) -> None:
    amount = amount_in(code, minor)
    result = decoder.decode(raw(amount=amount, currency=code), NOW_MS)
    if RATES.to_reference(amount, code) > MAX_REFERENCE_AMOUNT:
        assert isinstance(result, Rejection) and result.error_class == "amount_limit"
    else:
        assert isinstance(result, Transaction) and result.amount == amount, result


@given(code=st.sampled_from(RATED), minor=st.integers(min_value=0, max_value=10**7),
       extra=st.integers(min_value=1, max_value=9))
def test_one_decimal_too_many_is_refused_naming_currency_and_minor_units(
    code: str, minor: int, extra: int
) -> None:
    digits = MINOR_UNITS[code]
    text = f"{minor // 10**digits}.{minor % 10**digits:0{digits}d}{extra}" if digits else (
        f"{minor}.{extra}")
    body = raw(amount=1.0, currency=code).replace(b'"amount": 1.0', b'"amount": ' + text.encode())
    result = decoder.decode(body, NOW_MS)
    assert isinstance(result, Rejection), text
    assert result.error_class == "amount_precision"
    assert f"{code}'s ISO 4217 minor units ({digits})" in result.reason


@given(code=st.sampled_from(RATED), factor=st.floats(min_value=0.5, max_value=1.5))
def test_the_limit_is_the_same_reference_value_in_every_currency(
    code: str, factor: float
) -> None:
    digits = MINOR_UNITS[code]
    amount = round(MAX_REFERENCE_AMOUNT * factor * RATES.per_reference[code], digits)
    result = decoder.decode(raw(amount=amount, currency=code), NOW_MS)
    over = amount / RATES.per_reference[code] > MAX_REFERENCE_AMOUNT
    assert isinstance(result, Rejection) == over, (amount, code, result)
    if over:
        assert isinstance(result, Rejection) and result.error_class == "amount_limit"
        assert f" {code} is " in result.reason and "1,000,000 EUR" in result.reason


def test_large_denominations_pass_that_the_flat_limit_refused() -> None:
    for amount, code in ((50_000_000.0, "IDR"), (1_490_000_000.0, "KRW"), (9_000_000.0, "HUF")):
        assert isinstance(decoder.decode(raw(amount=amount, currency=code), NOW_MS), Transaction)


def test_the_limit_uses_the_billing_amount_when_present() -> None:
    ok = raw(amount=900_000.0, currency="EUR", billing_amount=990_000.0, billing_currency="USD")
    over = raw(amount=900_000.0, currency="EUR", billing_amount=1_200_000.0,
               billing_currency="USD")
    assert isinstance(decoder.decode(ok, NOW_MS), Transaction)
    refused = decoder.decode(over, NOW_MS)
    assert isinstance(refused, Rejection) and refused.reason.startswith("billing_amount:")


def test_another_reference_currency_and_limit() -> None:
    usd = TransactionDecoder(rates=default_rates("USD"), max_reference_amount=1000.0)
    assert isinstance(usd.decode(raw(amount=1000.0, currency="USD"), NOW_MS), Transaction)
    refused = usd.decode(raw(amount=900.0, currency="EUR"), NOW_MS)  # about 1005 USD
    assert isinstance(refused, Rejection) and "over the limit of 1,000 USD" in refused.reason


def test_a_currency_without_a_rate_is_accepted_never_refused() -> None:
    # issue 23: a refused authorisation gets no verdict; it is scored, amount unrated
    accepted = decoder.decode(raw(amount=250_000.0, currency="VND"), NOW_MS)
    assert isinstance(accepted, Transaction) and accepted.currency == "VND"
    assert math.isnan(reference_amount(accepted, RATES))


# ---- parsing per the standards: BOM, RFC 3339, integer epoch milliseconds


@given(minor=cents, tid=ids)
def test_a_leading_bom_changes_nothing(minor: int, tid: str) -> None:
    body = raw(transaction_id=tid, amount=minor / 100)
    assert decoder.decode(BOM + body, NOW_MS) == decoder.decode(body, NOW_MS)


offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda m: timezone(timedelta(minutes=m)))
instants = st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30))


@given(instant=instants, tz=offsets, sep=st.sampled_from("Tt "), digits=st.integers(0, 9))
def test_rfc3339_times_parse_to_exact_epoch_ms(
    instant: datetime, tz: timezone, sep: str, digits: int
) -> None:
    local = instant.replace(tzinfo=UTC).astimezone(tz)
    text = local.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits:
        text += "." + f"{local.microsecond:06d}000"[:digits]
    offset = local.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    text += "Z" if minutes == 0 else f"{'+' if minutes > 0 else '-'}{abs(minutes) // 60:02d}:" \
        f"{abs(minutes) % 60:02d}"
    micro = int(f"{local.microsecond:06d}000"[:digits].ljust(9, "0")[:6]) if digits else 0
    whole = instant.replace(tzinfo=UTC, microsecond=0)
    expected = int(whole.timestamp()) * 1000 + micro // 1000
    assert parse_time_ms("event_time", text) == expected, text


@pytest.mark.parametrize("text", [
    "2023-W46-2T22:13:20Z", "20231114T221320Z", "2023-11-14T22:13Z", "2023-11-14T22:13:20+01",
    "2023-11-14T22:13:20+0100", "2023-11-14T22:13:20,5Z", "2023-11-14T22:13:20.Z", "2023-11-14",
    "2023-318T22:13:20Z",
])
def test_iso_8601_forms_that_are_not_rfc_3339_are_refused(text: str) -> None:
    result = decoder.decode(raw(event_time=text), NOW_MS)
    assert isinstance(result, Rejection) and result.error_class == "bad_event_time", text
    assert "RFC 3339" in result.reason


@given(ms=st.integers(min_value=946_684_800_000, max_value=NOW_MS))
def test_integral_float_epochs_are_the_same_integer(ms: int) -> None:
    as_int = decoder.decode(raw(event_time=ms), NOW_MS)
    as_float = decoder.decode(raw(event_time=float(ms)), NOW_MS)
    assert isinstance(as_float, Transaction) and as_float == as_int


@given(ms=st.integers(min_value=946_684_800_000, max_value=NOW_MS),
       frac=st.sampled_from([".5", ".123", ".001", ".999"]))
def test_fractional_epochs_are_refused_naming_the_rule(ms: int, frac: str) -> None:
    body = raw(event_time=ms).replace(str(ms).encode(), f"{ms}{frac}".encode())
    result = decoder.decode(body, NOW_MS)
    assert isinstance(result, Rejection) and result.error_class == "bad_event_time"
    assert "is not integer epoch milliseconds" in result.reason


def test_label_decoder_accepts_bom_and_integral_float_label_time() -> None:
    body = b'{"transaction_id":"t","card_id":"c","merchant_id":"m","is_fraud":false,' \
           b'"label_time":1699999999000.0}'
    label = LabelDecoder().decode(BOM + body, NOW_MS)
    assert isinstance(label, Label) and label.label_time == NOW_MS - 1000


# ---- the cases of shared/cases/ (copies in tests/fixtures/cases/)


def decode_case(name: str) -> list[Transaction | Rejection]:
    return [decoder.decode(r.value, r.timestamp) for r in case_records(name)]


def test_case_bom_prefixed_json_decodes_like_its_control() -> None:
    bom, control = decode_case("bom-prefixed-json")
    assert isinstance(bom, Transaction) and isinstance(control, Transaction)
    assert msgspec.structs.replace(bom, transaction_id="x") == msgspec.structs.replace(
        control, transaction_id="x")


def test_case_epoch_ms_float() -> None:
    fractional, integral_float, integer = decode_case("epoch-ms-float")
    assert isinstance(fractional, Rejection) and fractional.error_class == "bad_event_time"
    assert "1795953540000.123 is not integer epoch milliseconds" in fractional.reason
    assert isinstance(integral_float, Transaction) and isinstance(integer, Transaction)
    assert integral_float.event_time == integer.event_time == 1_795_953_540_000


def test_case_zero_amount_verification_is_valid_traffic() -> None:
    decoded = decode_case("zero-amount-verification")
    assert all(isinstance(t, Transaction) for t in decoded), decoded
    zero = [t for t in decoded if isinstance(t, Transaction) and t.amount == 0.0]
    assert len(zero) == 8 and {t.card_id for t in zero} == {"card-zero"}
    assert len({t.merchant_id for t in zero}) == 8


def test_case_jpy_amount_is_about_the_control_in_the_reference_currency() -> None:
    decoded = decode_case("jpy-amount-vs-eur-history")
    assert all(isinstance(t, Transaction) for t in decoded), decoded
    final = {t.card_id: t for t in decoded if isinstance(t, Transaction)
             and t.transaction_id.endswith("-final")}
    jpy, eur = final["card-jpy"], final["card-eurjp"]
    assert (jpy.amount, jpy.currency) == (4500.0, "JPY")
    ratio = reference_amount(jpy, RATES) / reference_amount(eur, RATES)
    assert 0.8 < ratio < 1.2, ratio  # the same purchase, not a 100x spike


# ---- issue 23: every well-formed authorisation is accepted whatever its currency


@pytest.mark.parametrize("code", sorted(set(MINOR_UNITS) - set(RATES.per_reference)))
def test_every_iso_currency_without_a_rate_is_accepted(code: str) -> None:
    amount = 12_000_000.0 if MINOR_UNITS[code] == 0 else 1_000.0
    accepted = decoder.decode(raw(amount=amount, currency=code), NOW_MS)
    assert isinstance(accepted, Transaction), accepted
    assert math.isnan(reference_amount(accepted, RATES))


def test_a_rated_billing_amount_is_used_for_the_limit_when_the_currency_has_no_rate() -> None:
    billed = decoder.decode(raw(amount=2_600_000.0, currency="VND", billing_amount=94.1,
                                billing_currency="EUR"), NOW_MS)
    assert isinstance(billed, Transaction) and reference_amount(billed, RATES) == 94.1
    over = decoder.decode(raw(amount=2_600_000.0, currency="VND", billing_amount=1_500_000.0,
                              billing_currency="EUR"), NOW_MS)
    assert isinstance(over, Rejection) and over.error_class == "amount_limit"
    assert over.reason.startswith("billing_amount:")


def test_an_unrated_billing_currency_falls_back_to_the_rated_amount_for_the_limit() -> None:
    ok = decoder.decode(raw(amount=50.0, currency="USD", billing_amount=1_300_000.0,
                            billing_currency="VND"), NOW_MS)
    assert isinstance(ok, Transaction)
    over = decoder.decode(raw(amount=2_000_000.0, currency="USD", billing_amount=1.0,
                              billing_currency="VND"), NOW_MS)
    assert isinstance(over, Rejection) and over.reason.startswith("amount:")
    assert "USD" in over.reason


def test_the_billing_fields_rules_still_hold_for_unrated_currencies() -> None:
    half = decoder.decode(raw(amount=2_600_000.0, currency="VND", billing_amount=94.1),
                          NOW_MS)
    assert isinstance(half, Rejection) and "give both or neither" in half.reason
    cents = decoder.decode(raw(amount=2_600_000.5, currency="VND"), NOW_MS)
    assert isinstance(cents, Rejection) and cents.error_class == "amount_precision"


def test_an_operator_rate_makes_the_limit_apply_to_that_currency() -> None:
    served = RATES.supplemented(type(RATES)("ops-1", "EUR", {"EUR": 1.0, "VND": 28_000.0}))
    with_rate = TransactionDecoder(rates=served)
    assert isinstance(with_rate.decode(raw(amount=2_600_000.0, currency="VND"), NOW_MS),
                      Transaction)
    over = with_rate.decode(raw(amount=30_000_000_000.0, currency="VND"), NOW_MS)
    assert isinstance(over, Rejection) and over.error_class == "amount_limit"


def test_case_currency_without_rate_both_accepted() -> None:
    vnd, eur = decode_case("currency-without-rate")
    assert isinstance(vnd, Transaction) and isinstance(eur, Transaction)
    assert math.isnan(reference_amount(vnd, RATES)) and reference_amount(eur, RATES) == 95.0


# ---- card data at decode (issue 22): a PAN as card_id is tokenised, or refused ----------


def _pan_decoder(key: bytes | None = b"k" * 32) -> TransactionDecoder:
    from topics.pan import CardGuard, PanKey

    return TransactionDecoder(cards=CardGuard(PanKey(key) if key else None))


@pytest.mark.parametrize("shown", ["4111111111111111", "4111 1111 1111 1111",
                                   "4111-1111-1111-1111"])
def test_a_pan_card_id_is_tokenised_deterministically_keeping_bin_and_last4(
    shown: str,
) -> None:
    first = _pan_decoder().decode(raw(card_id=shown), NOW_MS)
    again = _pan_decoder().decode(raw(card_id="4111111111111111"), NOW_MS)
    other_key = _pan_decoder(b"q" * 32).decode(raw(card_id=shown), NOW_MS)
    assert isinstance(first, Transaction) and isinstance(again, Transaction)
    assert isinstance(other_key, Transaction)
    assert first.card_id == again.card_id != other_key.card_id
    assert len(first.card_id) == 36 and first.card_id.startswith("tok_")
    assert (first.card_bin, first.card_last4) == ("41111111", "1111")
    assert b"4111111111111111" not in msgspec.json.encode(first)


def test_a_token_card_id_is_left_as_sent_with_the_producers_bin() -> None:
    txn = _pan_decoder().decode(raw(card_id="tok-card-77", card_bin="520000",
                                    card_last4="0004"), NOW_MS)
    assert isinstance(txn, Transaction)
    assert (txn.card_id, txn.card_bin, txn.card_last4) == ("tok-card-77", "520000", "0004")
    bad = decoder.decode(raw(card_bin="52"), NOW_MS)
    assert isinstance(bad, Rejection) and "card_bin" in bad.reason


def test_without_a_key_a_pan_card_id_is_refused_naming_the_setting() -> None:
    result = decoder.decode(raw(card_id="5105105105105100"), NOW_MS)
    assert isinstance(result, Rejection) and result.error_class == "pan_in_clear"
    assert "FRAUD_PAN_KEY_FILE" in result.reason and "510510******5100" in result.reason
    assert "5105105105105100" not in result.reason
    label = LabelDecoder().decode(
        b'{"transaction_id":"t","card_id":"5105105105105100","merchant_id":"m",'
        b'"is_fraud":true,"label_time":1699999999000}', NOW_MS)
    assert isinstance(label, Rejection) and label.error_class == "pan_in_clear"


def test_a_label_gets_the_token_of_its_transaction() -> None:
    from topics.pan import CardGuard, PanKey

    guard = CardGuard(PanKey(b"k" * 32))
    label = LabelDecoder(cards=guard).decode(
        b'{"transaction_id":"t","card_id":"4111 1111 1111 1111","merchant_id":"m",'
        b'"is_fraud":true,"label_time":1699999999000}', NOW_MS)
    txn = _pan_decoder().decode(raw(card_id="4111111111111111"), NOW_MS)
    assert isinstance(label, Label) and isinstance(txn, Transaction)
    assert label.card_id == txn.card_id


def test_pans_in_other_ids_and_attributes_are_not_kept() -> None:
    txn = _pan_decoder().decode(raw(device_id="4111111111111111", customer_id="c-9",
                                    attributes={"cvv": "123", "track2": "x", "bin": "411111",
                                                "memo": "4111 1111 1111 1111"}), NOW_MS)
    assert isinstance(txn, Transaction)
    assert txn.device_id is not None and txn.device_id.startswith("tok_")
    assert txn.customer_id == "c-9"
    assert txn.attributes == {"bin": "411111", "memo": "4111 11** **** 1111"}


def test_a_currency_code_iso_4217_does_not_list_is_scored_unrated_not_refused() -> None:
    """Three capital letters that no table knows still get a verdict (neutral amounts)."""
    import math

    from topics.currency import default_rates, metric_currency, reference_amount

    decoder = TransactionDecoder()
    for fields in ({"currency": "XYZ"}, {"currency": "XYZ", "amount": 12.3456},
                   {"billing_amount": 40.0, "billing_currency": "QQQ"}):
        got = decoder.decode(raw(**fields), NOW_MS)
        assert isinstance(got, Transaction), (fields, got)
    xyz = decoder.decode(raw(currency="XYZ"), NOW_MS)
    assert isinstance(xyz, Transaction)
    assert math.isnan(reference_amount(xyz, default_rates()))
    assert metric_currency("XYZ") == "unlisted" and metric_currency("VND") == "VND"
    billed = decoder.decode(raw(billing_amount=40.0, billing_currency="QQQ"), NOW_MS)
    assert isinstance(billed, Transaction)
    assert not math.isnan(reference_amount(billed, default_rates()))  # DE4 in EUR still counts
    assert not isinstance(decoder.decode(raw(currency="eur"), NOW_MS), Transaction)
