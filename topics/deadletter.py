"""Build dead-letter records: where a refused record is, a bounded copy of it, and why.

A dead letter must always fit the dead-letter topic, whatever the input (a 760 KB
value is under Kafka's 1 MB default but its base64 copy plus the reason is not),
and must be byte-identical when re-emitted after a replay. So a record keeps:

- the source topic, partition and offset: the original stays on the input topic
  (within its retention) and is the full copy;
- at most ``max_value_bytes`` of the value (default 4 KiB) and ``max_key_bytes``
  of the key (default 1 KiB), base64, with their full lengths, a SHA-256 of the
  full value, and ``value_complete``/``key_complete``;
- the error class and a reason of at most :data:`MAX_REASON_CHARS` characters;
- ``time``: the source record's Kafka timestamp (passed in, never the wall clock).

No copy holds card data in clear (PCI DSS v4.0 req. 3.3.1 forbids keeping card
verification codes, track and PIN data after authorisation at all; req. 3.4.1
allows at most the first 6 and last 4 digits of a PAN to be seen). The key, the
value and the reason are masked by :func:`topics.pan.scrub`, on bytes, so a value
that is not JSON, not UTF-8 or cut short is masked too; the prefix is masked with
a margin past the cut, so a PAN straddling the cut is seen whole. Masking keeps
lengths; ``masked`` says it happened.

``value_sha256`` is the SHA-256 of the *masked* full value. The hash of the raw
value would undo the masking: with the first 6 and last 4 digits and the rest of
the message in the copy, 10^5 Luhn-valid candidates for the hidden PAN digits (and
10^3 for a CVV) are tried in seconds. A keyed hash (HMAC with the tokenisation key)
would hide it too, but would make every reader of dead letters a key holder; the
masked hash still identifies the record (with the partition and offset) and
:func:`matches` re-checks a re-read value by masking it the same way.

The largest dead letter is therefore about 4/3 x (value + key bounds) plus the
reason and the topic name: under 10 KB with the defaults.
"""

from __future__ import annotations

import base64
import hashlib

from topics.contracts import MAX_EPOCH_MS, DeadLetter
from topics.pan import PAN_MAX, scrub
from topics.validation import Rejection

#: Default bound of the value copy (bytes before base64).
MAX_VALUE_BYTES = 4096
#: Default bound of the key copy (bytes before base64).
MAX_KEY_BYTES = 1024
#: Longest reason kept (characters); longer ones are cut with an ellipsis.
MAX_REASON_CHARS = 1024
#: Bytes masked past a cut, so that a PAN (with separators) or a short field straddling
#: it is seen whole.
MASK_MARGIN = 4 * PAN_MAX + 64


def masked_prefix(data: bytes, limit: int) -> bytes:
    """The first ``limit`` bytes of ``data``, card data masked (:func:`topics.pan.scrub`)."""
    return scrub(data[: limit + MASK_MARGIN]).data[:limit]


def record_key(key: bytes | None) -> bytes | None:
    """The Kafka key of a dead letter for a record keyed ``key``: bounded and masked.

    >>> record_key(b"4111 1111 1111 1111"), record_key(None)
    (b'4111 11** **** 1111', None)
    """
    return None if key is None else masked_prefix(key, MAX_KEY_BYTES)


def masked_text(text: str) -> str:
    """``text`` with card data masked (a reason, a log line).

    >>> masked_text("card 5105105105105100 refused")
    'card 510510******5100 refused'
    """
    return scrub(text.encode("utf-8", "surrogatepass")).data.decode("utf-8", "replace")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def dead_letter(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    rejection: Rejection,
    record_time_ms: int | None = None,
    now_ms: int | None = None,
    max_value_bytes: int = MAX_VALUE_BYTES,
    max_key_bytes: int = MAX_KEY_BYTES,
    first_partition: int | None = None,
    first_offset: int | None = None,
    expected_partition: int | None = None,
) -> DeadLetter:
    r"""The dead-letter record for one refused record; bounded whatever the input.

    ``record_time_ms`` is the source record's Kafka timestamp (ms; a missing
    timestamp, -1, becomes 0). ``now_ms`` is its former name, accepted until every
    caller passes ``record_time_ms``. ``first_partition``/``first_offset`` name the
    first record with the same transaction id (``duplicate_conflict``);
    ``expected_partition`` the card's partition (``mis_keyed``). Raises
    ``ValueError`` when a bound is negative. Card data in the key, the value and the
    reason is masked (module docstring); the whole value is read once to mask it for
    ``value_sha256`` (about 60 ms for 1 MB on one core, a dead letter's cost only).

    >>> from topics.validation import Rejection
    >>> d = dead_letter(source_topic="transactions", partition=3, offset=42, key=b"c1",
    ...                 value=b"\xff", rejection=Rejection("not_utf8", "bad byte"),
    ...                 record_time_ms=1)
    >>> d.value_b64, raw_value(d), d.value_complete, d.value_len
    ('/w==', b'\xff', True, 1)
    >>> big = dead_letter(source_topic="t", partition=0, offset=0, key=None, value=b"x" * 10**6,
    ...                   rejection=Rejection("too_large", "big"), record_time_ms=1)
    >>> len(raw_value(big)), big.value_len, big.value_complete
    (4096, 1000000, False)
    """
    if max_value_bytes < 0 or max_key_bytes < 0:
        raise ValueError("max_value_bytes and max_key_bytes must be >= 0")
    stamp = record_time_ms if record_time_ms is not None else now_ms
    time_ms = min(max(stamp or 0, 0), MAX_EPOCH_MS)
    reason = masked_text(rejection.reason)
    masked = reason != rejection.reason
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    record = DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        error_class=rejection.error_class,
        reason=reason,
        time=time_ms,
        first_partition=first_partition,
        first_offset=first_offset,
        expected_partition=expected_partition,
    )
    if key is not None:
        kept = masked_prefix(key, max_key_bytes)
        masked |= kept != key[:max_key_bytes]
        record.key_b64 = _b64(kept)
        record.key_len = len(key)
        record.key_complete = len(key) <= max_key_bytes
    if value is not None:
        clean = scrub(value).data
        masked |= clean != value
        record.value_b64 = _b64(clean[:max_value_bytes])
        record.value_len = len(value)
        record.value_sha256 = hashlib.sha256(clean).hexdigest()
        record.value_complete = len(value) <= max_value_bytes
    record.masked = masked
    return record


def raw_value(record: DeadLetter) -> bytes | None:
    """The value copy as kept: the full value when ``record.value_complete``, else a prefix."""
    return None if record.value_b64 is None else base64.b64decode(record.value_b64)


def raw_key(record: DeadLetter) -> bytes | None:
    """The key copy as kept: the full key when ``record.key_complete``, else a prefix."""
    return None if record.key_b64 is None else base64.b64decode(record.key_b64)


def matches(record: DeadLetter, value: bytes | None) -> bool:
    """Whether ``value`` (e.g. re-read from the source topic) is the value this record names.

    Checks length and SHA-256 (v2 records; of the value masked the same way when the
    record says ``masked``, v3), or the bytes themselves (v1 records).
    """
    if value is None or record.value_b64 is None:
        return value is None and record.value_b64 is None
    if record.value_sha256 is None:
        return raw_value(record) == value
    hashed = scrub(value).data if record.masked else value
    return len(value) == record.value_len and hashlib.sha256(hashed).hexdigest() == (
        record.value_sha256
    )
