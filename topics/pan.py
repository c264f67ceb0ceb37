"""Card data protection: find PANs and sensitive authentication data; tokenise, truncate, mask.

``card_id`` is a token (the contract, :class:`topics.contracts.Transaction`). A
producer that sends a PAN instead is caught here, at decode, before anything is
stored, published or logged:

- **PAN** (primary account number, ISO/IEC 7812-1): 13 to 19 digits, spaces,
  dashes or dots allowed between them, whose Luhn check digit (ISO/IEC 7812-1
  annex B) is right. About one random digit string in ten passes Luhn, so a
  13-19 digit id may be taken for a PAN: it is then tokenised too, consistently.
- **Tokenise, don't refuse.** With a key (``FRAUD_PAN_KEY_FILE``) a PAN card id
  becomes ``tok_<32 hex>``: the first 128 bits of HMAC-SHA-256(key, PAN digits)
  (RFC 2104; a keyed hash is what PCI DSS v4.0 req. 3.5.1.1 asks of a hash of a
  PAN). The same card gets the same token whatever its formatting, so the card's
  windows keep working, and the PAN never leaves this module. Refusing instead
  would fail open for the whole class: every transaction of a producer that sends
  PANs would lose its verdict. Without a key a PAN is refused (dead letter with a
  masked copy, reason naming the setting): it is never stored.
- **Truncation kept for rules.** :class:`CardIdentity` keeps the BIN and the last
  4 digits as separate fields (BIN lists, display). The BIN is the first 8 digits
  of a PAN of 16 or more digits (the 8-digit IIN of ISO/IEC 7812-1:2017; PCI SSC
  FAQ 1091 accepts first 8 + last 4 for 16-digit PANs with 8-digit BINs) and the
  first 6 of a shorter one (FAQ 1091's first 6 + last 4 baseline: a 15-digit Amex
  keeps 5 hidden digits).
- **Masking** (PCI DSS v4.0 req. 3.4.1): at most the first 6 and last 4 digits
  of a PAN are shown, the rest become ``*`` (length and separators kept).
- **Sensitive authentication data** (PCI DSS req. 3.3.1: never stored after
  authorisation): card verification codes (CVV/CVC/CVV2/CVC2/CID/CAV2/...),
  full track data (track 1 ``%B<PAN>^NAME^YYMM...``, track 2 ``<PAN>=YYMM...``)
  and PIN blocks. :func:`scrub` masks them in any bytes, JSON or not, whole or
  cut: by field name (``"cvv":"123"``, ``cvv=123``, ``<cvv>123</cvv>``) and, for
  track data, by content.

The standard library's :mod:`hmac` and :mod:`hashlib` do the cryptography (FIPS
180-4 SHA-256, RFC 2104 HMAC; constant-time, maintained with CPython); the
detection is a few regular expressions over bytes, so a cut or invalid value is
masked as well as a valid one. Every mask keeps the input's length.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from topics.errors import ConfigError

#: Shortest and longest PAN (ISO/IEC 7812-1).
PAN_MIN, PAN_MAX = 13, 19
#: Every token starts so.
TOKEN_PREFIX = "tok_"
#: The setting that names the key file (for messages).
KEY_SETTING = "FRAUD_PAN_KEY_FILE"
#: Shortest key accepted (bytes): the output size of SHA-256 (RFC 2104 section 3).
MIN_KEY_BYTES = 32
_DOMAIN = b"fraudstream/card-token/v1\x00"
_MASK = ord("*")
#: ASCII digit -> its Luhn double with the digits summed (0 2 4 6 8 1 3 5 7 9).
_DOUBLED = bytes.maketrans(b"0123456789", bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9]))

#: Runs of 13 digits or more, with single spaces, dashes or dots between groups. (Each
#: pattern starts with a character class, so ``re`` skips ahead fast; the lookbehind
#: after it says the run starts there.)
_RUN = re.compile(rb"[0-9](?<![0-9]{2})(?:[ .\-]?[0-9]){12,}(?![0-9])")
#: Could hold a PAN: 13 digits or more, with separators (a cheap first test).
_MAYBE = re.compile(r"[0-9](?:[ .\-]?[0-9]){12}", re.ASCII)
_GROUP = re.compile(rb"[0-9]+")
#: A run of 13+ digits some of which are JSON escapes (``\u0034`` is "4"): what a producer's
#: encoder (or someone hiding a PAN from a scanner) may write; JSON decoders read it as digits.
_ESCAPED_RUN = re.compile(rb"(?:\\u003[0-9]|[0-9])(?:[ .\-]?(?:\\u003[0-9]|[0-9])){12,}")
#: Track 2 (ISO/IEC 7813): PAN, "=" (or "D" in EMV tag 57), expiry YYMM, service code, data.
_TRACK2 = re.compile(rb"[0-9](?<![0-9]{2})[0-9]{11,18}[=Dd][0-9]{7,}[0-9A-Fa-f]*\??")
#: Track 1 (ISO/IEC 7813): "%B", PAN, "^", name, "^", expiry, service code, data.
_TRACK1 = re.compile(rb"[Bb][0-9 ]{12,23}\^[^^\n\"]{0,30}\^[0-9]{4}[^\"\n?]*\??")
#: Names of fields that hold sensitive authentication data (after camelCase is split).
_SAD_NAME = re.compile(
    r"(?:^|_)(?:c(?:vv|vc|vn|av|sc|vd)2?|cid|icvv|dcvv|cvv_?code|security_?code|"
    r"(?:card_?)?verification_?(?:code|value|number)|"
    r"track(?:_?[123]|_?one|_?two)?(?:_?data)?|trk_?[123]?|mag_?stripe(?:_?data)?|"
    r"pin(?:_?(?:block|data|code|number))?|pinblock|epb|encrypted_?pin(?:_?block)?)$",
    re.ASCII,
)
#: Names of fields that hold a PAN: their digits are masked even with odd separators.
_PAN_NAME = re.compile(
    r"(?:^|_)(?:pan|card|card_?(?:id|number|num|no)|cc_?(?:number|num|no)|ccnum|"
    r"primary_?account_?number|account_?number|acct_?(?:number|num|no))$",
    re.ASCII,
)
#: Lower-case words that every such name contains: found with ``bytes.find`` first.
_KEYWORDS = (b"cv", b"cav", b"cid", b"csc", b"track", b"trk", b"pin", b"epb", b"stripe",
             b"security", b"verification", b"pan", b"card", b"acc", b"cc")
_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
#: Between a name and its value: ``":"``, ``=``, ``: `` (JSON, forms, YAML, logs).
_SEP = re.compile(rb"(?:\\?[\"'])?\s*[:=]\s*")
#: A value: a JSON string (also escaped inside another, or cut), a quoted one, or a bare word.
_VALUE = re.compile(
    rb"\\\"(?:[^\"\\]|\\[^\"])*(?:\\\")?|\"(?:[^\"\\]|\\.)*\"?|'[^']*'?|[^\s,;&}\]\"<]+"
)
_XML_VALUE = re.compile(rb"[^<]*")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


class PanKeyError(ConfigError):
    """The PAN tokenisation key file is missing, unreadable or too short."""


def luhn_ok(digits: str) -> bool:
    """Whether ``digits`` (ASCII digits only) ends in a right Luhn check digit.

    ISO/IEC 7812-1 annex B: from the right, double every second digit, subtract 9
    from doubles over 9; the sum is a multiple of 10.

    >>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
    (True, False)
    """
    raw = digits.encode("ascii")
    odd, even = raw[-1::-2], raw[-2::-2]
    total = sum(odd) - 48 * len(odd) + sum(even.translate(_DOUBLED))
    return total % 10 == 0


def pan_digits(text: str) -> str | None:
    """The PAN's digits when the whole of ``text`` is a PAN (spaces, dashes, dots allowed).

    >>> pan_digits("4111 1111-1111 1111"), pan_digits("4111111111111112"), pan_digits("c-17")
    ('4111111111111111', None, None)
    """
    if not _MAYBE.search(text):
        return None
    digits = text.strip().replace(" ", "").replace("-", "").replace(".", "")
    if PAN_MIN <= len(digits) <= PAN_MAX and digits.isascii() and digits.isdigit() \
            and luhn_ok(digits):
        return digits
    return None


def contains_pan(text: str) -> bool:
    """Whether ``text`` holds a PAN anywhere (whole, or a digit run inside other text)."""
    if not _MAYBE.search(text):
        return False
    return scrub(text.encode("utf-8", "surrogatepass")).pans > 0


def bin_of(digits: str) -> str:
    """The BIN kept for a PAN: 8 digits when it has 16 or more, else 6 (see the module doc).

    >>> bin_of("4111111111111111"), bin_of("378282246310005")
    ('41111111', '378282')
    """
    return digits[:8] if len(digits) >= 16 else digits[:6]


def mask_pan(text: str) -> str:
    """``text`` with every PAN in it masked: first 6 and last 4 digits kept, others ``*``.

    >>> mask_pan("4111 1111 1111 1111"), mask_pan("card c-17")
    ('4111 11** **** 1111', 'card c-17')
    """
    return scrub(text.encode("utf-8", "surrogatepass")).data.decode("utf-8", "surrogatepass")


@dataclass(frozen=True, slots=True)
class Scrubbed:
    """What :func:`scrub` made of some bytes: the masked copy and what it found.

    ``data`` has the input's length; ``pans`` counts masked PANs (and digit runs
    that may hide one), ``sad`` masked sensitive authentication data values.
    """

    data: bytes
    pans: int = 0
    sad: int = 0

    @property
    def changed(self) -> bool:
        """Whether anything was masked."""
        return bool(self.pans or self.sad)


@lru_cache(maxsize=4096)
def _field_kind(name: bytes) -> str | None:
    """``"sad"``, ``"pan"`` or None for a field name (camelCase, ``-`` and ``.`` split)."""
    text = _CAMEL.sub("_", name.decode("ascii")).lower().replace("-", "_").replace(".", "_")
    if _SAD_NAME.search(text):
        return "sad"
    if _PAN_NAME.search(text):
        return "pan"
    return None


def _names(data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of every name-like word in ``data`` that holds a keyword, in order."""
    lower = data.lower()
    found: set[tuple[int, int]] = set()
    for word in _KEYWORDS:
        at = lower.find(word)
        while at >= 0:
            start, end = at, at + len(word)
            while start > 0 and data[start - 1] in _NAME_CHARS and at - start < 64:
                start -= 1
            while end < len(data) and data[end] in _NAME_CHARS and end - at < 64:
                end += 1
            found.add((start, end))
            at = lower.find(word, end)
    return sorted(found)


def _value_span(data: bytes, name_start: int, name_end: int) -> tuple[int, int] | None:
    """Where the value of the field named at ``data[name_start:name_end]`` is, quotes excluded.

    ``name: value`` and ``name=value`` in any quoting, or ``<name>value``; None when the
    word is not followed by a value.
    """
    if name_start > 0 and data[name_start - 1:name_start] == b"<" and (
            data[name_end:name_end + 1] == b">"):
        m = _XML_VALUE.match(data, name_end + 1)
        assert m is not None  # matches the empty string
        return m.span()
    sep = _SEP.match(data, name_end)
    if sep is None:
        return None
    m = _VALUE.match(data, sep.end())
    if m is None:
        return None
    start, end = m.span()
    value = m[0]
    lead = 2 if value[:2] == b'\\"' else 1 if value[:1] in (b'"', b"'") else 0
    tail = lead if lead and len(value) > lead and value[-1:] == value[lead - 1:lead] else 0
    return start + lead, end - tail


def _mask_span(out: bytearray, start: int, end: int, digits_only: bool = False) -> None:
    for i in range(start, end):
        if not digits_only or 48 <= out[i] <= 57:
            out[i] = _MASK


def _mask_middle(out: bytearray, start: int, end: int, keep_head: int = 6,
                 keep_tail: int = 4) -> None:
    """Mask the digits of ``out[start:end]`` but the first ``keep_head`` and last ``keep_tail``."""
    where = [i for i in range(start, end) if 48 <= out[i] <= 57]
    for i in where[keep_head:len(where) - keep_tail]:
        out[i] = _MASK


def _pans_in_run(run: bytes) -> list[tuple[int, int, bool]]:
    """Where, in a digit run with separators, PANs may be: ``(start, end, is_pan)`` spans.

    A run whose digits are a PAN is one. Else every sequence of whole groups
    (between separators) whose digits are a PAN counts (``4111 1111 1111 1111 123``
    hides one), and the span from the first to the last of them is returned, so
    that masking its middle hides the middle of each. A group of 20 or more digits
    may hide a PAN anywhere: ``is_pan`` False, the whole group is to be masked.
    """
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(run)]
    total = sum(e - s for s, e in groups)
    if total < PAN_MIN:
        return []
    if total <= PAN_MAX and luhn_ok(b"".join(run[s:e] for s, e in groups).decode("ascii")):
        return [(0, len(run), True)]
    found: list[tuple[int, int, bool]] = []
    span: tuple[int, int] | None = None
    for i in range(len(groups)):
        count = 0
        for j in range(i, len(groups)):
            count += groups[j][1] - groups[j][0]
            if count > PAN_MAX:
                if i == j:
                    found.append((groups[i][0], groups[i][1], False))
                break
            if count >= PAN_MIN and luhn_ok(
                    b"".join(run[s:e] for s, e in groups[i:j + 1]).decode("ascii")):
                span = (groups[i][0] if span is None else span[0],
                        max(groups[j][1], 0 if span is None else span[1]))
    if span is not None:
        found.append((span[0], span[1], True))
    return found


def scrub(data: bytes) -> Scrubbed:
    r"""Mask every PAN and sensitive authentication data value in ``data`` (any bytes).

    Values of fields named like a card verification code, track data or PIN
    block become ``*`` (quotes kept); track 1 and track 2 data are masked
    wherever they are; PANs keep at most their first 6 and last 4 digits, and a
    run of 20 or more digits (which may hide one) is masked whole. Length-preserving,
    so a prefix of the result is the result of a prefix as long as the cut is not
    inside a PAN or a field (callers scrub a margin past their cut).

    >>> scrub(b'{"card_id":"5105105105105100","cvv":"123","amount":"twelve"}').data
    b'{"card_id":"510510******5100","cvv":"***","amount":"twelve"}'
    >>> scrub(b"track2=5105105105105100=28101011234567890123&pin=1234").data
    b'track2=*************************************&pin=****'
    """
    if not data:
        return Scrubbed(data)
    out = bytearray(data)
    sad = pans = 0
    if b"\\u003" in out:  # digits written as JSON escapes: the whole run goes
        for m in _ESCAPED_RUN.finditer(bytes(out)):
            if b"\\u" in m[0]:
                _mask_span(out, *m.span())
                pans += 1
    for name_start, name_end in _names(data):
        kind = _field_kind(data[name_start:name_end])
        if kind is None:
            continue
        span = _value_span(data, name_start, name_end)
        if span is None:
            continue
        start, end = span
        if kind == "sad":
            _mask_span(out, start, end)
            sad += 1
        elif sum(48 <= b <= 57 for b in data[start:end]) >= PAN_MIN - 1:
            _mask_middle(out, start, end)
            pans += 1
    for pattern in (_TRACK1, _TRACK2):
        for m in pattern.finditer(bytes(out)):
            _mask_span(out, *m.span())
            sad += 1
    for m in _RUN.finditer(bytes(out)):
        for s, e, is_pan in _pans_in_run(m[0]):
            if is_pan:
                _mask_middle(out, m.start() + s, m.start() + e)
            else:
                _mask_span(out, m.start() + s, m.start() + e)
            pans += 1
    return Scrubbed(bytes(out), pans, sad)


@dataclass(frozen=True, slots=True)
class CardIdentity:
    """A card id as the flow keeps it: the token, and the BIN and last 4 when it was a PAN."""

    card_id: str
    bin: str | None = None
    last4: str | None = None


class PanKey:
    """The HMAC-SHA-256 key that turns PANs into card tokens; never shown.

    Read once from a file (``FRAUD_PAN_KEY_FILE``): its bytes, a trailing newline
    dropped, at least :data:`MIN_KEY_BYTES` (e.g. ``head -c 32 /dev/urandom | base64``).
    ``repr`` and ``str`` show only a fingerprint (the first 8 hex digits of the
    token of a fixed non-PAN text), so two processes can be checked to share a key.
    A new key is a new token space: every tokenised card starts with empty windows.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise PanKeyError(
                f"{KEY_SETTING}: the key has {len(key)} bytes, at least {MIN_KEY_BYTES} are "
                "needed; write one with `head -c 32 /dev/urandom | base64 > FILE`"
            )
        self._key = key

    @classmethod
    def from_file(cls, path: Path) -> PanKey:
        """Read the key; raises :class:`PanKeyError` (a ``ConfigError``) naming the file."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PanKeyError(
                f"{KEY_SETTING}={str(path)!r}: cannot read the key file ({exc.strerror}); "
                "mount the secret there or unset the setting (PANs are then refused)"
            ) from None
        return cls(raw.rstrip(b"\r\n"))

    def token(self, text: str) -> str:
        """``tok_`` + hex of the first 128 bits of HMAC-SHA-256(key, domain + text)."""
        mac = hmac.digest(self._key, _DOMAIN + text.encode("utf-8", "surrogatepass"), "sha256")
        return TOKEN_PREFIX + mac[:16].hex()

    @property
    def fingerprint(self) -> str:
        """Names the key without revealing it (8 hex digits of a keyed hash of a constant)."""
        return hmac.digest(self._key, _DOMAIN + b"fingerprint", "sha256")[:4].hex()

    def __repr__(self) -> str:
        return f"PanKey(fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a PanKey is not pickled (it would leave the key in a snapshot)")


class PanInClear(ValueError):
    """A field holds a PAN and no key is configured to tokenise it.

    ``field`` names it; the message shows the PAN masked (first 6, last 4) and the remedy.
    """

    def __init__(self, field: str, masked: str) -> None:
        super().__init__(
            f"{field}: holds a card number (PAN, Luhn-valid: {masked}); {field} must be a "
            f"token. Send tokens, or set {KEY_SETTING} to a key file so that PANs are "
            "tokenised at decode"
        )
        self.field = field


@lru_cache(maxsize=4096)
def _attribute_kind(name: str) -> str | None:
    return _field_kind(name.encode("ascii", "replace"))


#: Other identifiers that a confused producer may fill with a PAN (tokenised like card_id).
_OTHER_IDS = ("device_id", "customer_id")


def clean_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """``attributes`` without card data: SAD dropped (by name), PANs in values masked.

    Masked values keep the first 6 and last 4 digits; text values are searched, and
    numbers only under a PAN-like name (``pan``, ``card_number``...): a random 64-bit
    id is Luhn-valid one time in ten. The same dict when nothing is found.

    >>> clean_attributes({"cvv2": "123", "note": "card 4111111111111111", "bin": "411111"})
    {'note': 'card 411111******1111', 'bin': '411111'}
    """
    out: dict[str, Any] | None = None
    for name, item in attributes.items():
        kind = _attribute_kind(name)
        if kind is None and not (isinstance(item, str) and _MAYBE.search(item)):
            continue  # the common case: two dict lookups and a type check
        if kind == "sad":
            out = out if out is not None else dict(attributes)
            del out[name]
            continue
        text = item if isinstance(item, str) else str(item) if (
            kind == "pan" and isinstance(item, int) and not isinstance(item, bool)) else None
        if text is not None and _MAYBE.search(text):
            masked = mask_pan(text)
            if masked != text:
                out = out if out is not None else dict(attributes)
                out[name] = masked
    return attributes if out is None else out


class CardGuard:
    """Turns PAN-bearing card ids into tokens at decode, or refuses them without a key.

    ``key`` None: :meth:`identify` raises :class:`PanInClear` for a PAN. A card id
    with no PAN in it is returned as it is (the cheap common case: one regular
    expression that fails on the first characters of a token).
    """

    __slots__ = ("key", "tokenised")

    def __init__(self, key: PanKey | None = None) -> None:
        self.key = key
        #: PANs replaced by tokens since the last :meth:`take_tokenised`, by field.
        self.tokenised: dict[str, int] = {}

    def take_tokenised(self) -> dict[str, int]:
        """The counts of :attr:`tokenised` (field -> PANs tokenised), reset to none."""
        counts, self.tokenised = self.tokenised, {}
        return counts

    def __repr__(self) -> str:
        return f"CardGuard(key={self.key!r})"

    def identify(self, card_id: str, field: str = "card_id") -> CardIdentity | None:
        """The identity to keep for ``card_id``, or None when it holds no PAN.

        A whole PAN keeps its BIN and last 4; a PAN inside other text is tokenised as
        a whole (no BIN). Raises :class:`PanInClear` when no key is configured.
        """
        if not _MAYBE.search(card_id):
            return None
        digits = pan_digits(card_id)
        if digits is None and not contains_pan(card_id):
            return None
        if self.key is None:
            raise PanInClear(field, mask_pan(card_id)[:40])
        if digits is not None:
            return CardIdentity(self.key.token(digits), bin_of(digits), digits[-4:])
        return CardIdentity(self.key.token(card_id))

    def protect(self, value: Any) -> None:
        """Tokenise, in place, the card data of a decoded record (a Transaction or a Label).

        ``card_id`` (and ``device_id``, ``customer_id`` when they hold a PAN) become
        tokens; a PAN ``card_id`` sets ``card_bin``/``card_last4`` where the record has
        them. In ``attributes``, sensitive authentication data (by name) is dropped
        and PANs are masked. Raises :class:`PanInClear` when a PAN is found and no key
        is configured (nothing is changed then).
        """
        found = self.identify(value.card_id)
        others = [(name, self.identify(text, name)) for name in _OTHER_IDS
                  if isinstance(text := getattr(value, name, None), str) and _MAYBE.search(text)]
        counts = self.tokenised
        if found is not None:
            value.card_id = found.card_id
            if found.bin is not None and hasattr(value, "card_bin"):
                value.card_bin, value.card_last4 = found.bin, found.last4
            counts["card_id"] = counts.get("card_id", 0) + 1
        for name, other in others:
            if other is not None:
                setattr(value, name, other.card_id)
                counts[name] = counts.get(name, 0) + 1
        attributes = getattr(value, "attributes", None)
        if attributes:
            value.attributes = clean_attributes(attributes)

    def same_card(self, key: bytes | None, card_id: str) -> bool:
        """Whether a record ``key`` (as produced) is the PAN whose token is ``card_id``."""
        if key is None or self.key is None or not card_id.startswith(TOKEN_PREFIX):
            return False
        try:
            digits = pan_digits(key.decode("ascii"))
        except UnicodeDecodeError:
            return False
        return digits is not None and hmac.compare_digest(self.key.token(digits), card_id)


def main(argv: list[str] | None = None) -> int:
    """``python -m topics.pan --key-file FILE``: the card token of each PAN read on stdin.

    For an analyst who must put a card on a ``card_id`` list (lists hold tokens): one
    PAN a line in, ``<masked PAN> <token>`` out. Exit 2 on a bad key or a line that is
    not a PAN (named by its line number, masked).
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m topics.pan",
        description="Print the card token (tok_...) of each PAN read on stdin, one a line, "
        "with the key the flow tokenises with (FRAUD_PAN_KEY_FILE): what a card_id list "
        "entry must hold. Output: the masked PAN and its token.")
    parser.add_argument("--key-file", type=Path, required=True,
                        help=f"the HMAC key file ({KEY_SETTING} of the flow)")
    args = parser.parse_args(argv)
    try:
        key = PanKey.from_file(args.key_file)
    except PanKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line_no, line in enumerate(sys.stdin, 1):
        text = line.strip()
        if not text:
            continue
        digits = pan_digits(text)
        if digits is None:
            print(f"error: line {line_no}: {mask_pan(text)!r} is not a PAN (13-19 digits, "
                  "Luhn-valid)", file=sys.stderr)
            return 2
        print(f"{mask_pan(text)} {key.token(digits)}")
    return 0


__all__ = ["CardGuard", "CardIdentity", "PanInClear", "PanKey", "PanKeyError", "Scrubbed",
           "bin_of", "contains_pan", "luhn_ok", "mask_pan", "pan_digits", "scrub"]


if __name__ == "__main__":
    raise SystemExit(main())
