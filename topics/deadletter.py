"""Build dead-letter records: the exact bytes of a refused message, where it came from, and why."""

from __future__ import annotations

import base64

from topics.contracts import DeadLetter
from topics.validation import Rejection


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def dead_letter(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    rejection: Rejection,
    now_ms: int,
) -> DeadLetter:
    r"""The dead-letter record for one refused message; key and value are kept byte for byte.

    >>> from topics.validation import Rejection
    >>> d = dead_letter(source_topic="transactions", partition=3, offset=42, key=b"c1",
    ...                 value=b"\xff", rejection=Rejection("not_utf8", "bad byte"), now_ms=1)
    >>> d.value_b64, raw_value(d)
    ('/w==', b'\xff')
    """
    return DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key_b64=_b64(key),
        value_b64=_b64(value),
        error_class=rejection.error_class,
        reason=rejection.reason,
        time=now_ms,
    )


def raw_value(record: DeadLetter) -> bytes | None:
    """The original message value, exactly as it was consumed."""
    return None if record.value_b64 is None else base64.b64decode(record.value_b64)


def raw_key(record: DeadLetter) -> bytes | None:
    """The original message key, exactly as it was consumed."""
    return None if record.key_b64 is None else base64.b64decode(record.key_b64)
