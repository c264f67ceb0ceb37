"""Decode and validate raw Kafka values into contract structs, or say exactly why not.

Validation is pure: the clock and the rate table are passed in. A message never
raises; it either becomes a struct or a :class:`Rejection` whose ``reason`` names
the field and the rule, ready to become a dead-letter record.

Rules beyond the JSON Schema (``topics/schemas/``), each with its source:

- JSON text is UTF-8; a leading UTF-8 byte-order mark is ignored (RFC 8259 section
  8.1 lets parsers ignore it).
- Times are integer epoch milliseconds (an integral JSON float such as
  ``1795953540000.0`` is the same integer) or RFC 3339 date-times with an offset,
  parsed by ``ciso8601.parse_rfc3339``, which implements RFC 3339 section 5.6
  (plus a guard on the date: ciso8601 2.4 also takes ISO 8601 ordinal dates), so
  none of ``fromisoformat``'s broader ISO 8601 forms (week and ordinal dates, basic
  format, hour-only offsets, decimal commas, missing seconds).
- ``amount`` >= 0 (0 is a zero-value authorisation); amounts have at most the
  ISO 4217 minor units of their currency (JPY 0, EUR 2, BHD 3 decimals), compared
  in integer minor units with a tolerance of a few float64 ulps.
- ``billing_amount``/``billing_currency`` (ISO 8583 DE6/DE51) come together.
- The amount in the reference currency (billing amount when present, see
  :func:`topics.currency.reference_amount`) is at most ``max_reference_amount``:
  one limit for every currency, so 50 million IDR (about 2,500 EUR) passes. A
  currency without a rate is never refused (issue 23: a refused authorisation gets
  no verdict, and the fraud system fails open for a whole country): the limit
  cannot be judged, the transaction is scored with neutral amount features and its
  verdict says so (:func:`topics.currency.reference_amount`).

>>> decoder = TransactionDecoder()
>>> now = 1_700_000_000_000
>>> decoder.decode(b'{"transaction_id":"t1","card_id":"c1","merchant_id":"m1",'
...                b'"amount":-5,"currency":"EUR","event_time":1700000000000}', now).error_class
'invalid_value'
>>> print(decoder.decode(b'{"transaction_id":"t1","card_id":"c1","merchant_id":"m1",'
...                      b'"amount":4500.5,"currency":"JPY","event_time":1700000000000}', now))
amount_precision: amount: 4500.5 JPY has more decimals than JPY's ISO 4217 minor units (0)
>>> decoder.decode(b'[1, 2]', now)
Rejection(error_class='not_object', reason='expected a JSON object, got `array`')
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import ciso8601
import msgspec

from topics.contracts import ErrorClass, Label, Transaction
from topics.currency import MINOR_UNITS, RateTable, default_rates
from topics.iso import COUNTRIES
from topics.pan import CardGuard, PanInClear

#: Default size limit for one message value.
MAX_MESSAGE_BYTES = 64 * 1024
#: How far ahead of the clock an event time may be before it is rejected.
MAX_FUTURE_MS = 24 * 3600 * 1000
#: Event times before 2000-01-01 are almost always seconds sent as milliseconds.
MIN_EVENT_TIME_MS = 946_684_800_000
#: Default per-transaction limit in the reference currency (1 million EUR by default):
#: above it an amount is a unit error (minor units sent as major units) or garbage.
MAX_REFERENCE_AMOUNT = 1_000_000.0
#: The UTF-8 encoding of U+FEFF, which RFC 8259 section 8.1 lets a JSON parser ignore.
UTF8_BOM = b"\xef\xbb\xbf"
#: Tolerance of the minor-units check, relative to the amount in minor units: a decimal
#: with at most the allowed decimals is within 2 ulps (2**-52) of an integer after parsing
#: and scaling in float64; 2**-50 leaves a margin of 4.
MINOR_UNITS_TOLERANCE = 2.0**-50

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MSGSPEC_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.DOTALL)
_BACKTICKED = re.compile(r"`([^`]*)`")
_LEAP_SECOND = re.compile(r"^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:60", re.ASCII)
#: RFC 3339 full-date and separator. ``ciso8601.parse_rfc3339`` 2.4 also takes ISO 8601
#: ordinal dates (``2023-318T...``); this guard keeps them out.
_RFC3339_DATE = re.compile(r"\d{4}-\d\d-\d\d[Tt ]", re.ASCII)
_AMOUNT_FIELDS = ("amount", "billing_amount")

S = TypeVar("S", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was refused: a stable error class and a human-readable reason."""

    error_class: ErrorClass
    reason: str

    def __str__(self) -> str:
        return f"{self.error_class}: {self.reason}"


class _TimeFieldError(ValueError):
    def __init__(self, error_class: ErrorClass, reason: str) -> None:
        super().__init__(reason)
        self.rejection = Rejection(error_class, reason)


def parse_time_ms(field: str, value: Any) -> int:
    """Turn integer epoch ms, an integral float or an RFC 3339 date-time into UTC epoch ms.

    RFC 3339 strings are parsed by ``ciso8601.parse_rfc3339`` (RFC 3339 section 5.6:
    ``T``/``t`` or space, ``Z``/``z`` or ``+hh:mm``); sub-millisecond digits are
    truncated, as epoch milliseconds count whole milliseconds. Raises
    ``ValueError`` (a ``_TimeFieldError`` carrying the :class:`Rejection`) whose
    text names the field and the rule.

    >>> parse_time_ms("event_time", "2023-11-14T22:13:20Z")
    1700000000000
    >>> parse_time_ms("event_time", "2023-11-14T23:13:20.5+01:00")
    1700000000500
    >>> parse_time_ms("event_time", 1795953540000.0)
    1795953540000
    >>> parse_time_ms("event_time", "2023-W46-2T22:13:20Z")
    Traceback (most recent call last):
    ...
    topics.validation._TimeFieldError: event_time: '2023-W46-2T22:13:20Z' is ISO 8601 but not \
RFC 3339; send YYYY-MM-DDThh:mm:ss[.fff] with Z or +hh:mm, or epoch milliseconds
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _TimeFieldError(
            "wrong_type", f"{field}: expected epoch milliseconds or an RFC 3339 string"
        )
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise _TimeFieldError(
            "bad_event_time",
            f"{field}: {value!r} is not integer epoch milliseconds (the rule: a whole number "
            "of milliseconds since 1970-01-01T00:00:00Z; drop the fraction)",
        )
    try:
        if not _RFC3339_DATE.match(value):
            raise ValueError("not an RFC 3339 full-date")
        parsed = ciso8601.parse_rfc3339(value)
    except ValueError:
        raise _TimeFieldError("bad_event_time", _not_rfc3339(field, value)) from None
    return (parsed - _EPOCH) // _MS


def _not_rfc3339(field: str, value: str) -> str:
    """Why ``value`` is not an RFC 3339 date-time, as precisely as can be told."""
    shown = repr(value[:40])
    if _LEAP_SECOND.match(value):
        return (
            f"{field}: {shown} is a leap second, which epoch milliseconds cannot express; "
            "send 23:59:59.999 or epoch milliseconds"
        )
    try:
        loose = ciso8601.parse_datetime(value)  # the broader ISO 8601 profile
    except ValueError:
        return f"{field}: {shown} is not RFC 3339 or epoch milliseconds"
    if loose.tzinfo is None:
        return f"{field}: {shown} has no UTC offset (add Z or +hh:mm, RFC 3339)"
    return (
        f"{field}: {shown} is ISO 8601 but not RFC 3339; send YYYY-MM-DDThh:mm:ss[.fff] "
        "with Z or +hh:mm, or epoch milliseconds"
    )


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
    reason = f"{path or '$'}: {msg[0].lower()}{msg[1:]}"
    if path in _AMOUNT_FIELDS and msg.startswith("Expected `float` >="):
        reason += " (negative amounts are refused; 0 is a zero-value authorisation)"
    return Rejection(error_class, reason)


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


#: Values remembered per pattern-checked field (:class:`PatternCheck`).
PATTERN_MEMORY = 65_536


class PatternCheck:
    """The string patterns of a contract's ``PATTERNS`` (``field -> regex``), checked in Python.

    See :func:`topics.contracts.checked_pattern`. A value that matched once is
    remembered (up to :data:`PATTERN_MEMORY` per field: currencies, countries and
    MCCs are few), so the common case is a set lookup instead of a regular
    expression per field. The whole value must match (a trailing newline does not).
    """

    def __init__(self, patterns: dict[str, str]) -> None:
        self.fields: list[tuple[str, re.Pattern[str], set[str]]] = [
            (name, re.compile(pattern), set()) for name, pattern in patterns.items()]

    def first_unmatched(self, value: Any) -> Rejection | None:
        """The first field of ``value`` that does not match, named as msgspec names it."""
        for name, pattern, seen in self.fields:
            text = getattr(value, name)
            if text is None or text in seen:
                continue
            if pattern.fullmatch(text) is None:
                return Rejection(
                    "invalid_value", f"{name}: expected `str` matching regex '{pattern.pattern}'")
            if len(seen) < PATTERN_MEMORY:
                seen.add(text)
        return None


#: The checks of :attr:`Transaction.PATTERNS` for code that converts rows itself.
TRANSACTION_PATTERNS = PatternCheck(Transaction.PATTERNS)


class ContractDecoder(Generic[S]):
    """Decode one contract type from raw bytes; subclasses add the checks msgspec can't express.

    The struct's ``WIRE_TIME_FIELDS`` may arrive as RFC 3339 strings or integral
    floats and are normalised to epoch ms. A leading UTF-8 BOM is ignored. A struct
    with a ``card_id`` has its card data protected by ``cards`` once valid
    (:meth:`topics.pan.CardGuard.protect`: PANs tokenised, or refused as
    ``pan_in_clear`` when ``cards`` has no key, the default).
    """

    def __init__(self, struct: type[S], max_bytes: int = MAX_MESSAGE_BYTES,
                 cards: CardGuard | None = None) -> None:
        self.struct = struct
        self.cards = cards if cards is not None else CardGuard()
        self._has_card = "card_id" in struct.__struct_fields__
        self.time_fields: tuple[str, ...] = getattr(struct, "WIRE_TIME_FIELDS", ())
        self.max_bytes = max_bytes
        self._decoder = msgspec.json.Decoder(struct)
        self._patterns = PatternCheck(getattr(struct, "PATTERNS", {}))

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
            return Rejection("internal_error", f"undecodable: {type(exc).__name__}: {exc}"[:500])

    def _decode(self, raw: bytes | None, now_ms: int) -> S | Rejection:
        if not raw:
            return Rejection("empty", "message has no value (empty or tombstone)")
        if len(raw) > self.max_bytes:
            return Rejection(
                "too_large", f"message is {len(raw)} bytes, over the {self.max_bytes}-byte limit"
            )
        if raw[0] == 0xEF and raw.startswith(UTF8_BOM):  # index first: most messages are "{"
            raw = raw[len(UTF8_BOM):]
            if not raw:
                return Rejection("empty", "message is only a UTF-8 byte-order mark")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejection("not_utf8", _not_utf8(raw, exc))
        try:
            value = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            value_or_rejection = self._decode_slow(raw, exc)
            if isinstance(value_or_rejection, Rejection):
                return value_or_rejection
            value = value_or_rejection
        except msgspec.DecodeError as exc:
            return self._malformed(raw, exc)
        if self._patterns.fields:
            rejection = self._patterns.first_unmatched(value)
            if rejection is not None:
                return rejection
        checked = self.check(value, now_ms)
        if self._has_card and not isinstance(checked, Rejection):
            try:
                self.cards.protect(checked)
            except PanInClear as exc:
                return Rejection("pan_in_clear", str(exc))
        return checked

    def check(self, value: S, now_ms: int) -> S | Rejection:
        """Rules beyond the struct's own constraints; override per contract."""
        return value


    def _decode_slow(self, raw: bytes, exc: msgspec.ValidationError) -> S | Rejection:
        """Second chance for RFC 3339 or float times; everything else as msgspec said."""
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


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "starts with a UTF-16 byte-order mark; JSON here must be UTF-8 (RFC 8259 8.1)"
    return f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}"


def _too_precise(amount: float, scale: float) -> bool:
    """True if ``amount`` has more decimals than ``scale = 10**minor_units`` allows.

    Compared in integer minor units: a decimal with at most the allowed decimals
    lands within :data:`MINOR_UNITS_TOLERANCE` (relative) of an integer.

    >>> _too_precise(0.29, 100.0), _too_precise(12.345, 100.0), _too_precise(4500.0, 1.0)
    (False, True, False)
    """
    frac = (amount * scale) % 1.0
    return bool(frac) and min(frac, 1.0 - frac) > amount * scale * MINOR_UNITS_TOLERANCE


class TransactionDecoder(ContractDecoder[Transaction]):
    """Decoder for the ``transactions`` topic.

    ``rates`` (default: :func:`topics.currency.default_rates`) converts amounts
    to its reference currency for the ``max_reference_amount`` limit; pass the
    table the model was trained with.
    """

    def __init__(
        self,
        max_bytes: int = MAX_MESSAGE_BYTES,
        max_future_ms: int = MAX_FUTURE_MS,
        *,
        rates: RateTable | None = None,
        max_reference_amount: float = MAX_REFERENCE_AMOUNT,
        cards: CardGuard | None = None,
    ) -> None:
        super().__init__(Transaction, max_bytes, cards)
        self.max_future_ms = max_future_ms
        self.rates = rates if rates is not None else default_rates()
        self.max_reference_amount = max_reference_amount
        per = self.rates.per_reference
        #: currency -> (10**minor_units, minor_units, units per reference unit or None)
        self._money: dict[str, tuple[float, int, float | None]] = {
            code: (10.0**units, units, per.get(code)) for code, units in MINOR_UNITS.items()
        }

    def check(self, value: Transaction, now_ms: int) -> Transaction | Rejection:
        """Currency, country, minor units, amount limit, event time plausibility."""
        money = self._money.get(value.currency)
        if money is None:
            # three capital letters (the contract's pattern) that ISO 4217 does not list (a
            # new code, a network's private one): scored with neutral amount features, like
            # a currency without a rate, never refused (topics.currency.reference_amount)
            money = _UNLISTED
        if value.country is not None and value.country not in COUNTRIES:
            return Rejection(
                "unknown_country", f"country: {value.country!r} is not an ISO 3166-1 alpha-2 code"
            )
        rejection = _time_rejection("event_time", value.event_time, now_ms, self.max_future_ms)
        if rejection is not None:
            return rejection
        if (value.lat is None) != (value.lon is None):
            return Rejection("invalid_value", "lat/lon: give both or neither")
        amount, currency, billed = value.amount, value.currency, False
        scale, digits, rate = money
        frac = (amount * scale) % 1.0  # inline _too_precise: this is the hot path
        if frac and min(frac, 1.0 - frac) > amount * scale * MINOR_UNITS_TOLERANCE:
            return _precision("amount", amount, currency, digits)
        if value.billing_amount is not None or value.billing_currency is not None:
            rejection = self._billing(value)
            if rejection is not None:
                return rejection
            _, billing_digits, billing_rate = self._money.get(
                value.billing_currency, _UNLISTED)  # type: ignore[arg-type]
            if billing_rate is not None:  # else the transaction amount, as reference_amount
                amount, currency = value.billing_amount, value.billing_currency  # type: ignore[assignment]
                digits, rate, billed = billing_digits, billing_rate, True
        if rate is None:  # no rate: scored with neutral amount features, never refused
            return value
        if amount / rate > self.max_reference_amount:
            field = "billing_amount" if billed else "amount"
            ref = self.rates.reference
            return Rejection(
                "amount_limit",
                f"{field}: {amount:,.{digits}f} {currency} is {amount / rate:,.0f} {ref}, over "
                f"the limit of {self.max_reference_amount:,.0f} {ref} per transaction (minor "
                "units sent as major units?)",
            )
        return value

    def _billing(self, value: Transaction) -> Rejection | None:
        """Both billing fields or neither; a listed currency; its minor units."""
        if value.billing_amount is None or value.billing_currency is None:
            return Rejection(
                "invalid_value", "billing_amount/billing_currency: give both or neither"
            )
        money = self._money.get(value.billing_currency, _UNLISTED)  # unlisted: no rate
        if _too_precise(value.billing_amount, money[0]):
            return _precision(
                "billing_amount", value.billing_amount, value.billing_currency, money[1]
            )
        return None


#: The money of a currency code ISO 4217 does not list: any decimals up to 1/10,000 (the
#: finest minor unit ISO 4217 has, CLF and UYW), no rate.
_UNLISTED: tuple[float, int, float | None] = (10_000.0, 4, None)


def _precision(field: str, amount: float, currency: str, minor_units: int) -> Rejection:
    return Rejection(
        "amount_precision",
        f"{field}: {amount!r} {currency} has more decimals than {currency}'s ISO 4217 "
        f"minor units ({minor_units})",
    )


class LabelDecoder(ContractDecoder[Label]):
    """Decoder for the ``labels`` topic."""

    def __init__(
        self, max_bytes: int = MAX_MESSAGE_BYTES, max_future_ms: int = MAX_FUTURE_MS,
        cards: CardGuard | None = None,
    ) -> None:
        super().__init__(Label, max_bytes, cards)
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
