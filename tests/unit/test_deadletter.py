from __future__ import annotations

import hashlib
import re

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from samples import NOW_MS, case_records, oversize_message
from topics.contracts import DeadLetter
from topics.deadletter import (
    MAX_KEY_BYTES,
    MAX_REASON_CHARS,
    MAX_VALUE_BYTES,
    dead_letter,
    masked_prefix,
    matches,
    raw_key,
    raw_value,
    record_key,
)
from topics.pan import luhn_ok, scrub
from topics.validation import Rejection, TransactionDecoder

#: Kafka's default max.message.bytes (1 MB) and what a dead letter may use at most.
KAFKA_DEFAULT_MAX = 1_048_588
BOUND = 10_000


def letter(value: bytes | None, key: bytes | None = b"card-1", **kw: object) -> DeadLetter:
    args: dict[str, object] = dict(source_topic="transactions", partition=2, offset=41, key=key,
                                   value=value, rejection=Rejection("not_json", "bad"),
                                   record_time_ms=NOW_MS)
    return dead_letter(**{**args, **kw})  # type: ignore[arg-type]


def test_oversize_case_dead_letter_is_far_below_the_topic_limit() -> None:
    message = oversize_message()
    assert len(message) > 700_000
    rejection = TransactionDecoder().decode(message, NOW_MS)
    assert isinstance(rejection, Rejection) and rejection.error_class == "too_large"
    record = letter(message, rejection=rejection)
    encoded = msgspec.json.encode(record)
    assert len(encoded) < BOUND < KAFKA_DEFAULT_MAX // 100
    decoded = msgspec.json.decode(encoded, type=DeadLetter)
    assert decoded.value_len == len(message) and not decoded.value_complete
    assert decoded.value_sha256 == hashlib.sha256(message).hexdigest()
    assert raw_value(decoded) == message[:MAX_VALUE_BYTES]
    assert matches(decoded, message) and not matches(decoded, message[:-1])
    assert (decoded.source_topic, decoded.partition, decoded.offset) == ("transactions", 2, 41)


@given(value=st.binary(max_size=20_000) | st.none(), key=st.binary(max_size=3000) | st.none(),
       reason=st.text(max_size=3000), limit=st.integers(min_value=0, max_value=8192))
def test_every_dead_letter_is_bounded_and_says_what_it_kept(
    value: bytes | None, key: bytes | None, reason: str, limit: int
) -> None:
    record = letter(value, key, rejection=Rejection("not_json", reason), max_value_bytes=limit)
    encoded = msgspec.json.encode(record)
    assert len(encoded) <= 4 * (limit + MAX_KEY_BYTES) // 3 + 4 * MAX_REASON_CHARS + 1000
    decoded = msgspec.json.decode(encoded, type=DeadLetter)
    assert len(decoded.reason) <= MAX_REASON_CHARS
    if value is None:
        assert decoded.value_b64 is None and decoded.value_len is None
    else:  # card data masked (length kept): the copy is the masked prefix
        kept = raw_value(decoded)
        assert kept == masked_prefix(value, limit) and decoded.value_len == len(value)
        assert decoded.value_complete == (len(value) <= limit)
        assert matches(decoded, value)
    if key is None:
        assert decoded.key_b64 is None and decoded.key_len is None
    else:
        assert raw_key(decoded) == masked_prefix(key, MAX_KEY_BYTES)
        assert decoded.key_len == len(key)
        assert decoded.key_complete == (len(key) <= MAX_KEY_BYTES)


def test_re_emitted_after_a_replay_it_is_byte_identical() -> None:
    first = msgspec.json.encode(letter(b"x" * 9000))
    again = msgspec.json.encode(letter(b"x" * 9000))
    assert first == again
    assert msgspec.json.decode(first, type=DeadLetter).time == NOW_MS


def test_time_is_the_record_timestamp_and_the_old_name_still_works() -> None:
    assert letter(b"v", record_time_ms=123).time == 123
    assert dead_letter(source_topic="t", partition=0, offset=0, key=None, value=b"v",
                       rejection=Rejection("empty", "r"), now_ms=77).time == 77
    assert letter(b"v", record_time_ms=-1).time == 0  # librdkafka: no timestamp


def test_a_complete_copy_has_no_completeness_flags_on_the_wire() -> None:
    encoded = msgspec.json.encode(letter(b'{"a":1}'))
    assert b"complete" not in encoded
    assert b'"value_len":7' in encoded and b'"schema_version"' not in encoded


def test_conflict_and_mis_keyed_name_their_other_location() -> None:
    conflict = letter(b"{}", rejection=Rejection("duplicate_conflict", "same id, other body"),
                      first_partition=2, first_offset=7)
    keyed = letter(b"{}", rejection=Rejection("mis_keyed", "wrong partition"),
                   expected_partition=5)
    for record in (conflict, keyed):
        assert msgspec.json.decode(msgspec.json.encode(record), type=DeadLetter) == record
    assert (conflict.first_partition, conflict.first_offset, keyed.expected_partition) == (
        2, 7, 5)


def test_a_v1_dead_letter_still_decodes_as_a_complete_copy() -> None:
    v1 = (b'{"source_topic":"tx","partition":1,"offset":7,"key_b64":"YzE=","value_b64":"/w==",'
          b'"error_class":"not_utf8","reason":"r","time":5}')
    record = msgspec.json.decode(v1, type=DeadLetter)
    assert record.value_complete and raw_value(record) == b"\xff" and raw_key(record) == b"c1"
    assert matches(record, b"\xff")
    assert msgspec.json.encode(record) == v1  # re-encoded unchanged


def test_negative_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_value_bytes"):
        letter(b"v", max_value_bytes=-1)


# ---- card data (issue 22): no PAN, CVV, track or PIN data in a dead letter ---------------

def test_the_case_bad_record_leaves_no_pan_cvv_or_track_data() -> None:
    (bad,) = [r for r in case_records("pan-as-card-id") if b"twelve" in r.value]
    rejection = TransactionDecoder().decode(bad.value, bad.timestamp)
    assert isinstance(rejection, Rejection) and rejection.error_class == "wrong_type"
    record = letter(bad.value, bad.key, rejection=rejection)
    encoded = msgspec.json.encode(record)
    kept, key = raw_value(record) or b"", raw_key(record) or b""
    for blob in (encoded, kept, key, record.reason.encode()):
        assert b"5105105105105100" not in blob
        assert b"28101011234567890123" not in blob and b"=2810" not in blob
    assert not re.search(rb'"cvv"\s*:\s*"123"', kept)
    assert key == b"510510******5100" and record_key(bad.key) == key
    assert b'"card_id": "510510******5100"' in kept  # PCI DSS 3.4.1: BIN and last 4
    assert b'"transaction_id": "pan-bad"' in kept and b'"amount": "twelve"' in kept
    assert record.masked and len(kept) == len(bad.value) == record.value_len
    # the hash is of the masked value, never of the PAN-bearing one
    assert record.value_sha256 == hashlib.sha256(kept).hexdigest()
    assert record.value_sha256 != hashlib.sha256(bad.value).hexdigest()
    assert matches(record, bad.value) and not matches(record, bad.value.replace(b"EUR", b"USD"))


def test_a_reason_that_quotes_a_pan_is_masked() -> None:
    record = letter(b"{}", rejection=Rejection(
        "bad_event_time", "event_time: '4111 1111 1111 1111' is not RFC 3339"))
    assert "4111 11** **** 1111" in record.reason and record.masked


def test_a_value_without_card_data_is_kept_and_hashed_as_it_is() -> None:
    value = b'{"transaction_id":"t","amount":"x","event_time":1795953540000}'
    record = letter(value)
    assert raw_value(record) == value and not record.masked
    assert record.value_sha256 == hashlib.sha256(value).hexdigest()
    assert b"masked" not in msgspec.json.encode(record)


@given(body=st.integers(min_value=12, max_value=18).flatmap(
           lambda n: st.text("0123456789", min_size=n, max_size=n)),
       sep=st.sampled_from(["", " ", "-"]), at=st.integers(min_value=0, max_value=300),
       limit=st.integers(min_value=0, max_value=400),
       filler=st.binary(max_size=300).map(lambda b: re.sub(rb"[0-9]", b"x", b)))
def test_a_pan_anywhere_even_across_the_cut_is_never_kept(
    body: str, sep: str, at: int, limit: int, filler: bytes
) -> None:
    pan = next(body + d for d in "0123456789" if luhn_ok(body + d))
    shown = sep.join(pan[i:i + 4] for i in range(0, len(pan), 4)).encode()
    value = filler[:at] + b" " + shown + b" " + filler[at:]
    record = letter(value, key=shown, max_value_bytes=limit)
    for blob in (raw_value(record) or b"", raw_key(record) or b""):
        assert pan.encode() not in re.sub(rb"[ -]", b"", blob)
        digits = [m.group() for m in re.finditer(rb"[0-9]+", re.sub(rb"[ -]", b"", blob))]
        assert all(len(d) <= 6 for d in digits)  # at most the BIN-side 6 in one piece
    assert record.value_sha256 == hashlib.sha256(scrub(value).data).hexdigest()
