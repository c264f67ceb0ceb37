"""Decode and validate raw Kafka values into contract structs, or say exactly why not.

Validation is pure: the clock is passed in. A message never raises; it either
becomes a struct or a :class:`Rejection` whose ``reason`` names the field and
the rule, ready to become a dead-letter record.

>>> decoder = TransactionDecoder()
>>> now = 1_700_000_000_000
>>> decoder.decode(b'{"transaction_id":"t1","card_id":"c1","merchant_id":"m1",'
...                b'"amount":-5,"currency":"EUR","event_time":1700000000000}', now)
Rejection(error_class='invalid_value', reason='amount: expected `float` > 0.0')
>>> decoder.decode(b'[1, 2]', now)
Rejection(error_class='not_object', reason='expected a JSON object, got `array`')
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec

from topics.contracts import ErrorClass, Label, Transaction
from topics.iso import COUNTRIES, CURRENCIES

#: Default size limit for one message value.
MAX_MESSAGE_BYTES = 64 * 1024
#: How far ahead of the clock an event time may be before it is rejected.
MAX_FUTURE_MS = 24 * 3600 * 1000
#: Event times before 2000-01-01 are almost always seconds sent as milliseconds.
MIN_EVENT_TIME_MS = 946_684_800_000

_MSGSPEC_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.DOTALL)
_BACKTICKED = re.compile(r"`([^`]*)`")

S = TypeVar("S", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was refused: a stable error class and a human-readable reason."""

    error_class: ErrorClass
    reason: str


class _TimeFieldError(ValueError):
    def __init__(self, error_class: ErrorClass, reason: str) -> None:
        super().__init__(reason)
        self.rejection = Rejection(error_class, reason)


def parse_time_ms(field: str, value: Any) -> int:
    """Turn epoch milliseconds or an RFC 3339 string with an offset into UTC epoch ms.

    >>> parse_time_ms("event_time", "2023-11-14T22:13:20Z")
    1700000000000
    >>> parse_time_ms("event_time", "2023-11-14T23:13:20.5+01:00")
    1700000000500
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _TimeFieldError(
            "wrong_type", f"{field}: expected epoch milliseconds or an RFC 3339 string"
        )
    if isinstance(value, int):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _TimeFieldError(
            "bad_event_time", f"{field}: {value[:40]!r} is not RFC 3339 or epoch milliseconds"
        ) from None
    if parsed.tzinfo is None:
        raise _TimeFieldError(
            "bad_event_time", f"{field}: {value[:40]!r} has no UTC offset (add Z or +hh:mm)"
        )
    return round(parsed.timestamp() * 1000)


def _reject_from_validation_error(exc: msgspec.ValidationError) -> Rejection:
    match = _MSGSPEC_PATH.match(str(exc))
    assert match is not None  # the pattern matches every string
    msg, path = match["msg"], match["path"]
    if msg.startswith("Object missing required field"):
        missing = _BACKTICKED.search(msg)
        name = missing.group(1) if missing else "?"
        field = f"{path}.{name}" if path else name
        return Rejection("missing_field", f"missing required field `{field}`")
    if not path and msg.startswith("Expected `object`"):
        got = msg.split("got ", 1)[-1]
        return Rejection("not_object", f"expected a JSON object, got {got}")
    error_class: ErrorClass = "wrong_type" if ", got `" in msg else "invalid_value"
    return Rejection(error_class, f"{path or '$'}: {msg[0].lower()}{msg[1:]}")


def _first_non_finite(obj: Any, path: str = "") -> str | None:
    """Path of the first NaN or Infinity in a decoded JSON value, if any."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path or "$"
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = _first_non_finite(value, f"{path}.{key}" if path else str(key))
            if found:
                return found
    if isinstance(obj, list):
        for i, value in enumerate(obj):
            found = _first_non_finite(value, f"{path}[{i}]")
            if found:
                return found
    return None


class ContractDecoder(Generic[S]):
    """Decode one contract type from raw bytes; subclasses add the checks msgspec can't express.

    The struct's ``WIRE_TIME_FIELDS`` may arrive as RFC 3339 strings and are
    normalised to epoch ms.
    """

    def __init__(self, struct: type[S], max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.struct = struct
        self.time_fields: tuple[str, ...] = getattr(struct, "WIRE_TIME_FIELDS", ())
        self.max_bytes = max_bytes
        self._decoder = msgspec.json.Decoder(struct)

    def decode(self, raw: bytes | None, now_ms: int) -> S | Rejection:
        """Return the struct, or the first rule the message breaks; never raises.

        ``now_ms`` is the clock the time rules are judged against. The flow passes
        the message's Kafka timestamp, so a message gets the same answer on every
        replay.
        """
        try:
            return self._decode(raw, now_ms)
        except RecursionError:
            return Rejection("not_json", "JSON nested too deeply to decode")
        except Exception as exc:  # a decoder bug must not stop the stream: dead-letter it
            return Rejection("not_json", f"undecodable: {type(exc).__name__}: {exc}")

    def _decode(self, raw: bytes | None, now_ms: int) -> S | Rejection:
        if not raw:
            return Rejection("empty", "message has no value (empty or tombstone)")
        if len(raw) > self.max_bytes:
            return Rejection(
                "too_large", f"message is {len(raw)} bytes, over the {self.max_bytes}-byte limit"
            )
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejection(
                "not_utf8", f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
            )
        try:
            value = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            value_or_rejection = self._decode_slow(raw, exc)
            if isinstance(value_or_rejection, Rejection):
                return value_or_rejection
            value = value_or_rejection
        except msgspec.DecodeError as exc:
            return self._malformed(raw, exc)
        return self.check(value, now_ms)

    def check(self, value: S, now_ms: int) -> S | Rejection:
        """Rules beyond the struct's own constraints; override per contract."""
        return value

    def _decode_slow(self, raw: bytes, exc: msgspec.ValidationError) -> S | Rejection:
        """Second chance for RFC 3339 times; everything else is rejected as msgspec said."""
        if not any(f"`$.{name}`" in str(exc) for name in self.time_fields):
            return _reject_from_validation_error(exc)
        obj = msgspec.json.decode(raw)
        try:
            for name in self.time_fields:
                if name in obj:
                    obj[name] = parse_time_ms(name, obj[name])
        except _TimeFieldError as time_exc:
            return time_exc.rejection
        try:
            return msgspec.convert(obj, self.struct)
        except msgspec.ValidationError as again:
            return _reject_from_validation_error(again)

    @staticmethod
    def _malformed(raw: bytes, exc: msgspec.DecodeError) -> Rejection:
        """Name the field when the only problem is a NaN or Infinity literal."""
        try:
            loose = json.loads(raw)
        except ValueError:
            return Rejection("not_json", f"not valid JSON: {str(exc).removeprefix('JSON is ')}")
        where = _first_non_finite(loose)
        if where is not None:
            return Rejection("invalid_value", f"{where}: must be a finite number, not NaN/Infinity")
        return Rejection("not_json", f"not valid JSON: {exc}")


class TransactionDecoder(ContractDecoder[Transaction]):
    """Decoder for the ``transactions`` topic."""

    def __init__(
        self, max_bytes: int = MAX_MESSAGE_BYTES, max_future_ms: int = MAX_FUTURE_MS
    ) -> None:
        super().__init__(Transaction, max_bytes)
        self.max_future_ms = max_future_ms

    def check(self, value: Transaction, now_ms: int) -> Transaction | Rejection:
        """Currency and country lists, event time plausibility."""
        if value.currency not in CURRENCIES:
            return Rejection(
                "unknown_currency", f"currency: {value.currency!r} is not an ISO 4217 code"
            )
        if value.country is not None and value.country not in COUNTRIES:
            return Rejection(
                "unknown_country", f"country: {value.country!r} is not an ISO 3166-1 alpha-2 code"
            )
        rejection = _time_rejection("event_time", value.event_time, now_ms, self.max_future_ms)
        if rejection is not None:
            return rejection
        if (value.lat is None) != (value.lon is None):
            return Rejection("invalid_value", "lat/lon: give both or neither")
        return value


class LabelDecoder(ContractDecoder[Label]):
    """Decoder for the ``labels`` topic."""

    def __init__(
        self, max_bytes: int = MAX_MESSAGE_BYTES, max_future_ms: int = MAX_FUTURE_MS
    ) -> None:
        super().__init__(Label, max_bytes)
        self.max_future_ms = max_future_ms

    def check(self, value: Label, now_ms: int) -> Label | Rejection:
        """Label time plausibility, as for transactions' event time."""
        return _time_rejection("label_time", value.label_time, now_ms, self.max_future_ms) or value


def _time_rejection(field: str, ms: int, now_ms: int, max_future_ms: int) -> Rejection | None:
    """Refuse times in seconds (before 2000) and times too far ahead of ``now_ms``."""
    if ms < MIN_EVENT_TIME_MS:
        return Rejection(
            "bad_event_time", f"{field}: {ms} is before 2000-01-01; send milliseconds, not seconds"
        )
    ahead = ms - now_ms
    if ahead > max_future_ms:
        return Rejection(
            "future_event_time",
            f"{field}: {ahead / 3_600_000:.1f} h ahead of the clock "
            f"(limit {max_future_ms / 3_600_000:g} h)",
        )
    return None
