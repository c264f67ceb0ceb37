from __future__ import annotations

import hashlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from samples import NOW_MS, oversize_message
from topics.contracts import DeadLetter
from topics.deadletter import (
    MAX_KEY_BYTES,
    MAX_REASON_CHARS,
    MAX_VALUE_BYTES,
    dead_letter,
    matches,
    raw_key,
    raw_value,
)
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
    else:
        kept = raw_value(decoded)
        assert kept == value[:limit] and decoded.value_len == len(value)
        assert decoded.value_complete == (len(value) <= limit)
        assert matches(decoded, value)
    if key is None:
        assert decoded.key_b64 is None and decoded.key_len is None
    else:
        assert raw_key(decoded) == key[:MAX_KEY_BYTES] and decoded.key_len == len(key)
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
