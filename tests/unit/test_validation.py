import json
import math

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from samples import NOW_MS, BadMessage, raw, txn_json
from topics.contracts import Label, Transaction
from topics.validation import LabelDecoder, Rejection, TransactionDecoder, parse_time_ms

decoder = TransactionDecoder()


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


amounts = st.floats(min_value=0.01, max_value=1e7, allow_nan=False)
ids = st.text(min_size=1, max_size=40)


@given(tid=ids, cid=ids, amount=amounts, attrs=st.dictionaries(st.text(max_size=8), st.integers()))
def test_any_valid_transaction_round_trips(tid: str, cid: str, amount: float, attrs: dict) -> None:
    txn = Transaction(transaction_id=tid, card_id=cid, merchant_id="m", amount=amount,
                      currency="USD", event_time=NOW_MS, attributes=attrs or None)
    result = decoder.decode(msgspec.json.encode(txn), NOW_MS)
    assert result == txn
    assert math.isfinite(result.amount)  # type: ignore[union-attr]
