"""Shared test data: a valid transaction builder and one message per kind of bad input."""

from __future__ import annotations

import json
from dataclasses import dataclass

NOW_MS = 1_700_000_000_000


def txn_json(**overrides: object) -> dict[str, object]:
    """A valid transaction as a JSON-able dict, with fields overridden or removed (None)."""
    base: dict[str, object] = {
        "transaction_id": "t-1",
        "card_id": "c-1",
        "merchant_id": "m-1",
        "amount": 42.5,
        "currency": "EUR",
        "event_time": NOW_MS - 1000,
        "mcc": "5411",
        "channel": "pos",
        "entry_mode": "chip",
        "country": "FR",
        "lat": 48.85,
        "lon": 2.35,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def raw(**overrides: object) -> bytes:
    return json.dumps(txn_json(**overrides)).encode()


@dataclass(frozen=True)
class BadMessage:
    kind: str
    value: bytes
    error_class: str
    reason_contains: str


BAD_MESSAGES = [
    BadMessage("not utf-8", b'{"transaction_id": "\xff\xfe"}', "not_utf8", "byte 0xff"),
    BadMessage("not json", b'{"transaction_id": "t-1",', "not_json", "not valid JSON"),
    BadMessage("json array", b"[1, 2, 3]", "not_object", "got `array`"),
    BadMessage("json string", b'"hello"', "not_object", "got `str`"),
    BadMessage("missing card_id", raw(card_id=None), "missing_field", "`card_id`"),
    BadMessage("missing event_time", raw(event_time=None), "missing_field", "`event_time`"),
    BadMessage("amount wrong type", raw(amount="12.50"), "wrong_type", "amount: expected `float`"),
    BadMessage("card_id wrong type", raw(card_id=123), "wrong_type", "card_id: expected `str`"),
    BadMessage("empty transaction_id", raw(transaction_id=""), "invalid_value", "transaction_id"),
    BadMessage("amount zero", raw(amount=0), "invalid_value", "amount: expected `float` > 0.0"),
    BadMessage("amount negative", raw(amount=-3.2), "invalid_value", "amount: expected `float` > 0"),
    BadMessage("amount NaN", raw().replace(b"42.5", b"NaN"), "invalid_value", "amount: must be a finite"),
    BadMessage(
        "amount Infinity", raw().replace(b"42.5", b"Infinity"), "invalid_value", "amount: must be a finite"
    ),
    BadMessage("amount absurd", raw(amount=5e12), "invalid_value", "amount: expected `float` <="),
    BadMessage("unknown currency", raw(currency="XYZ"), "unknown_currency", "'XYZ'"),
    BadMessage("lowercase currency", raw(currency="eur"), "invalid_value", "currency"),
    BadMessage("event time garbage", raw(event_time="yesterday"), "bad_event_time", "'yesterday'"),
    BadMessage("event time naive", raw(event_time="2023-11-14T22:13:20"), "bad_event_time", "no UTC offset"),
    BadMessage("event time seconds", raw(event_time=NOW_MS // 1000), "bad_event_time", "not seconds"),
    BadMessage("event time future", raw(event_time=NOW_MS + 25 * 3600_000), "future_event_time", "ahead"),
    BadMessage("too large", raw(attributes={"blob": "x" * 70_000}), "too_large", "65536-byte limit"),
    BadMessage("empty value", b"", "empty", "no value"),
    BadMessage("bad country", raw(country="ZZ"), "unknown_country", "'ZZ'"),
    BadMessage("country wrong format", raw(country="FRA"), "invalid_value", "country"),
    BadMessage("lat out of range", raw(lat=91.0), "invalid_value", "lat: expected `float` <= 90.0"),
    BadMessage("lon out of range", raw(lon=-181.0), "invalid_value", "lon: expected `float` >= -180.0"),
    BadMessage("lat without lon", raw(lon=None), "invalid_value", "lat/lon"),
    BadMessage("unknown channel", raw(channel="web"), "invalid_value", "channel: invalid enum value 'web'"),
    BadMessage("bad mcc", raw(mcc="54"), "invalid_value", "mcc"),
    BadMessage("nested attribute", raw(attributes={"a": {"b": 1}}), "wrong_type", "attributes"),
    BadMessage("deeply nested", b'{"x":' * 2000 + b"1" + b"}" * 2000, "not_json", "nested too deeply"),
    BadMessage("event time huge", raw(event_time=10**20), "invalid_value", "event_time"),
]

