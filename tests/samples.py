"""Shared test data: a valid transaction builder, bad and good inputs, the case records."""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

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
    BadMessage("amount negative", raw(amount=-3.2), "invalid_value", "amount: expected `float` >= 0.0 (negative amounts are refused"),
    BadMessage("amount negative zero point one cent", raw(amount=-0.01), "invalid_value", "amount: expected `float` >= 0.0"),
    BadMessage("amount NaN", raw().replace(b"42.5", b"NaN"), "invalid_value", "amount: must be a finite"),
    BadMessage(
        "amount Infinity", raw().replace(b"42.5", b"Infinity"), "invalid_value", "amount: must be a finite"
    ),
    BadMessage("amount absurd", raw(amount=5e13), "invalid_value", "amount: expected `float` <="),
    BadMessage("amount over the reference limit", raw(amount=1_000_000.01), "amount_limit", "over the limit of 1,000,000 EUR"),
    BadMessage("IDR amount over the reference limit", raw(amount=25_000_000_000.0, currency="IDR"), "amount_limit", "IDR is 1,233,035 EUR"),
    BadMessage("EUR cents as a third decimal", raw(amount=12.345), "amount_precision", "12.345 EUR has more decimals than EUR's ISO 4217 minor units (2)"),
    BadMessage("JPY with decimals", raw(amount=4500.5, currency="JPY"), "amount_precision", "JPY's ISO 4217 minor units (0)"),
    BadMessage("amount below the smallest minor unit", raw(amount=1e-12), "amount_precision", "EUR's ISO 4217 minor units (2)"),
    BadMessage("BHD with four decimals", raw(amount=1.2345, currency="BHD"), "amount_precision", "BHD's ISO 4217 minor units (3)"),
    BadMessage("billing amount without currency", raw(billing_amount=40.0), "invalid_value", "billing_amount/billing_currency: give both or neither"),
    BadMessage("billing currency without amount", raw(billing_currency="USD"), "invalid_value", "give both or neither"),
    BadMessage("billing amount negative", raw(billing_amount=-1.0, billing_currency="USD"), "invalid_value", "billing_amount: expected `float` >= 0.0"),
    BadMessage("billing amount precision", raw(billing_amount=40.001, billing_currency="USD"), "amount_precision", "billing_amount: 40.001 USD"),
    BadMessage("billing over the reference limit", raw(billing_amount=2_000_000.0, billing_currency="USD"), "amount_limit", "billing_amount: 2,000,000.00 USD"),
    BadMessage("lowercase currency", raw(currency="eur"), "invalid_value", "currency"),
    BadMessage("event time garbage", raw(event_time="yesterday"), "bad_event_time", "'yesterday'"),
    BadMessage("event time naive", raw(event_time="2023-11-14T22:13:20"), "bad_event_time", "no UTC offset"),
    BadMessage("event time ISO 8601 week date", raw(event_time="2023-W46-2T22:13:20Z"), "bad_event_time", "is ISO 8601 but not RFC 3339"),
    BadMessage("event time ISO 8601 basic format", raw(event_time="20231114T221320Z"), "bad_event_time", "is ISO 8601 but not RFC 3339"),
    BadMessage("event time without seconds", raw(event_time="2023-11-14T22:13Z"), "bad_event_time", "not RFC 3339"),
    BadMessage("event time hour-only offset", raw(event_time="2023-11-14T22:13:20+01"), "bad_event_time", "not RFC 3339"),
    BadMessage("event time decimal comma", raw(event_time="2023-11-14T22:13:20,5Z"), "bad_event_time", "not RFC 3339"),
    BadMessage("event time date only", raw(event_time="2023-11-14"), "bad_event_time", "'2023-11-14'"),
    BadMessage("event time leap second", raw(event_time="2016-12-31T23:59:60Z"), "bad_event_time", "leap second"),
    BadMessage("event time fractional epoch", raw(event_time=1699999999000.123), "bad_event_time", "is not integer epoch milliseconds"),
    BadMessage("event time boolean", raw(event_time=True), "wrong_type", "event_time: expected epoch milliseconds"),
    BadMessage("event time seconds", raw(event_time=NOW_MS // 1000), "bad_event_time", "not seconds"),
    BadMessage("event time future", raw(event_time=NOW_MS + 25 * 3600_000), "future_event_time", "ahead"),
    BadMessage("too large", raw(attributes={"blob": "x" * 70_000}), "too_large", "65536-byte limit"),
    BadMessage("empty value", b"", "empty", "no value"),
    BadMessage("only a BOM", b"\xef\xbb\xbf", "empty", "byte-order mark"),
    BadMessage("UTF-16 BOM", "\ufeff".encode("utf-16-le") + raw(), "not_utf8", "UTF-16 byte-order mark"),
    BadMessage("BOM twice", b"\xef\xbb\xbf\xef\xbb\xbf" + raw(), "not_json", "not valid JSON"),
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



@dataclass(frozen=True)
class GoodMessage:
    kind: str
    value: bytes
    expected: dict[str, object]  # fields of the decoded transaction to check


BOM = b"\xef\xbb\xbf"

GOOD_MESSAGES = [
    GoodMessage("zero-value authorisation", raw(amount=0), {"amount": 0.0}),
    GoodMessage("currency without a rate (scored, amount unrated)", raw(currency="VND", amount=150000.0), {"currency": "VND"}),
    GoodMessage("billing currency without a rate", raw(currency="EUR", billing_amount=1000.0, billing_currency="VND"), {"billing_currency": "VND"}),
    GoodMessage("zero billing amount", raw(amount=0, currency="JPY", billing_amount=0, billing_currency="EUR"), {"billing_amount": 0.0}),
    GoodMessage("UTF-8 BOM (RFC 8259 8.1)", BOM + raw(), {"amount": 42.5}),
    GoodMessage("integral float epoch", raw(event_time=float(NOW_MS - 1000)), {"event_time": NOW_MS - 1000}),
    GoodMessage("integral float epoch in exponent form", raw().replace(str(NOW_MS - 1000).encode(), b"1.699999999e12"), {"event_time": 1_699_999_999_000}),
    GoodMessage("RFC 3339 lowercase t and z", raw(event_time="2023-11-14t22:13:19z"), {"event_time": NOW_MS - 1000}),
    GoodMessage("RFC 3339 space separator (5.6 note)", raw(event_time="2023-11-14 22:13:19Z"), {"event_time": NOW_MS - 1000}),
    GoodMessage("RFC 3339 -00:00 offset", raw(event_time="2023-11-14T22:13:19-00:00"), {"event_time": NOW_MS - 1000}),
    GoodMessage("RFC 3339 nanoseconds truncate to ms", raw(event_time="2023-11-14T22:13:19.999999999Z"), {"event_time": NOW_MS - 1}),
    GoodMessage("JPY whole yen", raw(amount=4500, currency="JPY"), {"amount": 4500.0, "currency": "JPY"}),
    GoodMessage("BHD three decimals", raw(amount=12.345, currency="BHD"), {"amount": 12.345}),
    GoodMessage("EUR cents that are not exact in binary", raw(amount=0.29), {"amount": 0.29}),
    GoodMessage("EUR cents with binary float noise (0.1 + 0.2)", raw(amount=0.1 + 0.2), {"currency": "EUR"}),
    GoodMessage("large EUR amount with cents", raw(amount=999_999.99), {"amount": 999_999.99}),
    GoodMessage("IDR large denomination", raw(amount=50_000_000.0, currency="IDR"), {"amount": 50_000_000.0}),
    GoodMessage("KRW large denomination", raw(amount=1_250_000_000, currency="KRW"), {"currency": "KRW"}),
    GoodMessage("billing in the card currency", raw(amount=4500, currency="JPY", billing_amount=26.32, billing_currency="EUR"), {"billing_currency": "EUR"}),
    GoodMessage("local currency without a rate, billed in EUR", raw(amount=750000, currency="VND", billing_amount=27.1, billing_currency="EUR"), {"currency": "VND"}),
    GoodMessage("withdrawn HRK at its conversion rate", raw(amount=75.35, currency="HRK"), {"currency": "HRK"}),
]


#: Copies of the failing inputs of ``shared/cases/`` (see its README) used by the tests.
CASES_DIR = Path(__file__).parent / "fixtures" / "cases"


@dataclass(frozen=True)
class CaseRecord:
    """One Kafka record of a case file: key, exact value bytes, record timestamp (ms)."""

    key: bytes | None
    value: bytes
    timestamp: int
    partition: int | None = None


def case_records(name: str) -> list[CaseRecord]:
    """The records of ``fixtures/cases/<name>/records.jsonl`` (``value_json`` re-encoded)."""
    records = []
    for line in (CASES_DIR / name / "records.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        value = (base64.b64decode(row["value_b64"]) if "value_b64" in row
                 else json.dumps(row["value_json"]).encode())
        key = row.get("key")
        records.append(CaseRecord(None if key is None else key.encode(), value,
                                  row["timestamp"], row.get("partition")))
    return records


def oversize_message() -> bytes:
    """The 760 KB transaction of ``oversize-message`` (under Kafka's 1 MB default)."""
    return gzip.decompress((CASES_DIR / "oversize-message" / "message.json.gz").read_bytes())
