"""Ed25519 signatures of rule and list records: only trusted analysts change a decision.

Library: pyca ``cryptography`` (Ed25519, RFC 8032, backed by OpenSSL): the
Python Cryptographic Authority's maintained package, already in the lock through
other dependencies. Ed25519 because signatures are deterministic (no nonce to
get wrong), keys are 32 bytes and there are no parameters to choose; a public
key on the flow's side verifies but cannot sign, so reading the flow's
configuration never lets anyone forge a rule (an HMAC key would).

**Wire.** A ``rules`` or ``lists`` record's value is the rule (or list entry)
JSON with one more field, ``signatures``: ``[{"analyst": "ana", "signature":
"<base64 of 64 bytes>"}, ...]``. The first signer is the record's **author**;
a second, distinct analyst is the **checker** of a change that loosens decisions
(:mod:`rules.book`). A list entry removal is the entry with ``"retired": true``,
signed (a tombstone cannot carry a signature).

**Signed bytes** (:func:`signed_bytes`): ``fraudstream-signed-v1`` NUL ``topic``
NUL ``key`` NUL ``op`` NUL canonical JSON of the decoded record: its fields after
decoding (times as epoch ms), defaults omitted, keys sorted, no whitespace. The
topic, key and operation are inside, so a signature for one record cannot be
replayed as another record, on another topic, or as a removal.

**Keys.** The flow trusts the analysts of a file (``FRAUD_RULES_TRUSTED_KEYS``,
:class:`TrustedKeys`): YAML or JSON ``{"analysts": {"<id>": "<base64 of the
32-byte public key>"}}``. Private keys stay with analysts (PKCS#8 PEM, mode
0600, :class:`Signer`); the only ones on disk here are the generated dev/test
keys under ``.dev/rules-keys/`` (:func:`dev_keys`).

>>> import tempfile
>>> keys = dev_keys(Path(tempfile.mkdtemp()) / "keys")
>>> trusted = TrustedKeys.from_file(keys.trusted)
>>> sig = keys.maker.sign(b"message")
>>> trusted.verify(b"message", [sig]).valid, trusted.verify(b"other", [sig]).valid
(('dev-maker',), ())
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from rules.contracts import ContractError
from topics.errors import ConfigError, InputError

#: Signed-bytes format; a new canonical form gets a new tag (old signatures stay verifiable).
DOMAIN = b"fraudstream-signed-v1"
Op = Literal["put", "retire"]
#: Where the dev/test key pairs and their trusted-keys file are made on first use.
DEV_KEYS_DIR = Path(".dev/rules-keys")
DEV_MAKER = "dev-maker"
DEV_CHECKER = "dev-checker"
_ANALYST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class TrustedKeysError(ConfigError):
    """The trusted-keys file is unreadable or malformed; the message names the entry."""


class SigningKeyError(InputError):
    """An analyst's private key file cannot be used; the message says how to make one."""


class Signature(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One analyst's signature of a record: ``analyst`` id, ``signature`` base64 (64 bytes)."""

    analyst: str
    signature: str


@dataclass(frozen=True)
class Verification:
    """Which analysts' signatures are valid, and why the others are not (analyst words)."""

    valid: tuple[str, ...]
    problems: tuple[str, ...]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64") from None
    if len(raw) != size:
        raise ValueError(f"{what} has {len(raw)} bytes, expected {size}")
    return raw


def fingerprint(key: Ed25519PublicKey) -> str:
    """A short, loggable id of a public key: ``ed25519:`` + 16 hex of its SHA-256."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def public_b64(key: Ed25519PublicKey) -> str:
    """The base64 of a public key's 32 raw bytes (the trusted-keys file's format)."""
    return _b64(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def signed_bytes(topic: str, key: str, content: msgspec.Struct, op: Op = "put") -> bytes:
    """The bytes an analyst signs for record ``key`` of ``topic`` holding ``content``.

    ``content`` is the decoded :class:`~rules.contracts.Rule` or ``ListEntry``;
    its canonical JSON has defaults omitted and keys sorted, so the same record
    gives the same bytes whatever the field order or time format on the wire.
    """
    body = msgspec.json.encode(msgspec.to_builtins(content), order="sorted")
    return b"\0".join((DOMAIN, topic.encode(), key.encode(), op.encode(), body))


def split_signed(obj: Any) -> tuple[Any, tuple[Signature, ...], bool]:
    """``(content, signatures, retired)`` of a decoded record value.

    ``content`` is the object without ``signatures`` and ``retired``; raises
    :class:`~rules.contracts.ContractError` when those two fields are malformed.
    """
    if not isinstance(obj, dict) or ("signatures" not in obj and "retired" not in obj):
        return obj, (), False
    content = dict(obj)
    raw = content.pop("signatures", [])
    retired = content.pop("retired", False)
    if not isinstance(retired, bool):
        raise ContractError("retired: expected true or false")
    try:
        signatures = tuple(msgspec.convert(raw, list[Signature], strict=True))
    except msgspec.ValidationError as exc:
        raise ContractError(
            f"signatures: {exc}; expected [{{\"analyst\": id, \"signature\": base64}}]"
        ) from None
    return content, signatures, retired


def attach(content: msgspec.Struct, signatures: Sequence[Signature], *,
           retired: bool = False) -> bytes:
    """A record value: ``content``'s JSON plus ``signatures`` (and ``retired`` when true)."""
    obj: dict[str, Any] = msgspec.to_builtins(content)
    if retired:
        obj["retired"] = True
    obj["signatures"] = [msgspec.to_builtins(s) for s in signatures]
    return msgspec.json.encode(obj)


@dataclass(frozen=True)
class TrustedKeys:
    """The analysts whose signatures the flow accepts: analyst id -> Ed25519 public key."""

    analysts: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    source: str = "(no trusted keys)"

    @classmethod
    def from_file(cls, path: str | Path) -> TrustedKeys:
        """Read ``path`` (YAML/JSON ``{"analysts": {id: base64 public key}}``).

        Raises :class:`TrustedKeysError` for an unreadable file, a bad id or key,
        or one key listed under two ids (that would let one person be maker and
        checker).
        """
        import yaml

        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise TrustedKeysError(
                f"trusted keys {path}: cannot read ({exc.strerror}); set FRAUD_RULES_TRUSTED_KEYS "
                "to the file of analyst public keys (`just rules keygen ID` prints an entry)"
            ) from None
        except yaml.YAMLError as exc:
            raise TrustedKeysError(f"trusted keys {path}: not valid YAML/JSON: {exc}") from None
        analysts = doc.get("analysts") if isinstance(doc, dict) else None
        if not isinstance(analysts, dict):
            raise TrustedKeysError(
                f"trusted keys {path}: expected a mapping `analysts: {{<id>: <base64 public "
                "key>}}`"
            )
        keys: dict[str, Ed25519PublicKey] = {}
        seen: dict[bytes, str] = {}
        for analyst, text in analysts.items():
            if not isinstance(analyst, str) or not _ANALYST.match(analyst):
                raise TrustedKeysError(f"trusted keys {path}: analyst id {analyst!r} is not "
                                       "letters, digits and `_.@-` (at most 64)")
            try:
                raw = _unb64(str(text), 32, f"the key of {analyst!r}")
            except ValueError as exc:
                raise TrustedKeysError(f"trusted keys {path}: {exc} (an Ed25519 public key is "
                                       "32 bytes, base64)") from None
            if raw in seen:
                raise TrustedKeysError(f"trusted keys {path}: {analyst!r} and {seen[raw]!r} have "
                                       "the same key; each analyst needs their own")
            seen[raw] = analyst
            keys[analyst] = Ed25519PublicKey.from_public_bytes(raw)
        return cls(keys, str(path))

    def describe(self) -> str:
        """Loggable: the trusted analysts and their key fingerprints (no secret here)."""
        if not self.analysts:
            return f"no analyst keys ({self.source}): every rule and list record is refused"
        return f"{self.source}: " + ", ".join(
            f"{a} {fingerprint(k)}" for a, k in sorted(self.analysts.items()))

    def verify(self, message: bytes, signatures: Iterable[Signature]) -> Verification:
        """The distinct trusted analysts whose signature of ``message`` is valid."""
        valid: list[str] = []
        problems: list[str] = []
        for sig in signatures:
            key = self.analysts.get(sig.analyst)
            if key is None:
                problems.append(f"{sig.analyst!r} is not a trusted analyst")
                continue
            try:
                key.verify(_unb64(sig.signature, 64, "signature"), message)
            except (ValueError, InvalidSignature):
                problems.append(f"the signature of {sig.analyst!r} does not match the record")
                continue
            if sig.analyst not in valid:
                valid.append(sig.analyst)
        return Verification(tuple(valid), tuple(problems))


@dataclass(frozen=True)
class Signer:
    """An analyst and their private key (never in ``repr`` or logs)."""

    analyst: str
    key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_file(cls, path: str | Path, analyst: str | None = None) -> Signer:
        """Load a PKCS#8 PEM Ed25519 key; ``analyst`` defaults to the file's stem.

        Raises :class:`SigningKeyError` (missing, not Ed25519, encrypted) with the remedy.
        """
        path = Path(path)
        analyst = analyst or path.stem
        if not _ANALYST.match(analyst):
            raise SigningKeyError(f"analyst id {analyst!r}: letters, digits and `_.@-` only")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise SigningKeyError(f"signing key {path}: cannot read ({exc.strerror}); make one "
                                  "with `just rules keygen <analyst>`") from None
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"signing key {path}: not an unencrypted PEM private key "
                                  f"({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"signing key {path}: not an Ed25519 key; make one with "
                                  "`just rules keygen <analyst>`")
        return cls(analyst, key)

    @property
    def public(self) -> Ed25519PublicKey:
        """The public half, for the trusted-keys file."""
        return self.key.public_key()

    def sign(self, message: bytes) -> Signature:
        """The analyst's signature of ``message`` (from :func:`signed_bytes`)."""
        return Signature(self.analyst, _b64(self.key.sign(message)))


def write_key(analyst: str, directory: str | Path) -> tuple[Path, str]:
    """Make a key pair: ``<directory>/<analyst>.pem`` (0600) and its public key's base64.

    Raises :class:`SigningKeyError` when the file exists (never overwrites a key).
    """
    if not _ANALYST.match(analyst):
        raise SigningKeyError(f"analyst id {analyst!r}: letters, digits and `_.@-` only")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{analyst}.pem"
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SigningKeyError(f"{path} exists; keys are never overwritten (remove it first "
                              "if you mean to replace it, and re-trust the new key)") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return path, public_b64(key.public_key())


@dataclass(frozen=True)
class DevKeys:
    """The dev/test analysts (a maker and a checker) and the file that trusts both."""

    trusted: Path
    maker: Signer
    checker: Signer


def dev_keys(directory: str | Path = DEV_KEYS_DIR) -> DevKeys:
    """The dev key pairs under ``directory``, made on first use (safe under concurrency).

    Only the dev stack and the tests trust them (``FRAUD_RULES_TRUSTED_KEYS`` set to
    ``<directory>/trusted.yaml``); a production flow trusts its analysts' keys only.
    """
    directory = Path(directory)
    trusted = directory / "trusted.yaml"
    if not trusted.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".pending-{os.getpid()}-{os.urandom(4).hex()}"
        tmp.mkdir()
        lines = ["# dev/test analysts: trusted by the dev flow only (rules/signing.py)",
                 "analysts:"]
        for analyst in (DEV_MAKER, DEV_CHECKER):
            _, public = write_key(analyst, tmp)
            lines.append(f"  {analyst}: {public}")
        (tmp / "trusted.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:  # the first process to rename its trio wins; the others use the winner's
            for name in (f"{DEV_MAKER}.pem", f"{DEV_CHECKER}.pem"):
                os.link(tmp / name, directory / name)
            os.link(tmp / "trusted.yaml", trusted)
        except FileExistsError:
            pass
        finally:
            for item in tmp.iterdir():
                item.unlink()
            tmp.rmdir()
    for _ in range(100):  # a concurrent first use may still be linking its trio
        if trusted.exists():
            break


        time.sleep(0.02)
    return DevKeys(trusted, Signer.from_file(directory / f"{DEV_MAKER}.pem"),
                   Signer.from_file(directory / f"{DEV_CHECKER}.pem"))


def sign_record(content: msgspec.Struct, signers: Sequence[Signer], *,
                retired: bool = False, key: str | None = None) -> bytes:
    """A ``rules``/``lists`` record value of ``content`` signed by each of ``signers``.

    ``key`` defaults to the record's natural key (rule id, ``<list>/<value>``).
    """
    topic, natural = _topic_key(content)
    key = key or natural
    message = signed_bytes(topic, key, content, "retire" if retired else "put")
    return attach(content, [s.sign(message) for s in signers], retired=retired)


def _topic_key(content: msgspec.Struct) -> tuple[str, str]:
    from topics.contracts import ListEntry, Rule

    if isinstance(content, Rule):
        return "rules", content.id
    if isinstance(content, ListEntry):
        return "lists", f"{content.list}/{content.value}"
    raise TypeError(f"cannot sign a {type(content).__name__}: a Rule or a ListEntry")


def load_trusted(path: str | Path, *, default: str | Path = DEV_KEYS_DIR / "trusted.yaml"
                 ) -> TrustedKeys:
    """The flow's trusted analysts from ``path`` (``FRAUD_RULES_TRUSTED_KEYS``).

    At the default (dev) path a missing file trusts nobody: every rules/lists
    record is refused, visibly (dead letters, ``fraud_rule_changes_total``); any
    other path must exist. Raises :class:`TrustedKeysError`.
    """
    path = Path(path)
    if not path.exists() and path == Path(default):
        return TrustedKeys(source=f"{path} (missing)")
    return TrustedKeys.from_file(path)


def sign_json(topic: str, obj: Any, signers: Sequence[Signer], *, retired: bool = False
              ) -> bytes:
    """Sign a decoded JSON rule (``topic="rules"``) or list entry (``"lists"``).

    Raises :class:`~rules.contracts.ContractError` when ``obj`` breaks its contract.
    """
    from rules.contracts import entry_from_obj, rule_from_obj

    content = rule_from_obj(obj) if topic == "rules" else entry_from_obj(obj)
    return sign_record(content, signers, retired=retired)
