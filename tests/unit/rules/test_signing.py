"""Ed25519 signatures of rule and list records: canonical bytes, trust file, keys."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import msgspec
import pytest
from unit.rules.rulekit import KEYS, TRUST

from rules.contracts import ContractError, Rule, rule_from_obj
from rules.signing import (
    Signature,
    Signer,
    SigningKeyError,
    TrustedKeys,
    TrustedKeysError,
    attach,
    dev_keys,
    load_trusted,
    public_b64,
    sign_record,
    signed_bytes,
    split_signed,
    write_key,
)

RULE = Rule(id="vip-allow", version=1, description="let our best customers through",
            owner="fraud-ops", expression="amount >= 0.0", action="approve",
            valid_from=1795867200000)


def test_a_signature_verifies_only_the_exact_record_topic_key_and_operation() -> None:
    message = signed_bytes("rules", RULE.id, RULE)
    sig = KEYS.maker.sign(message)
    assert TRUST.verify(message, [sig]).valid == ("dev-maker",)
    changed = msgspec.structs.replace(RULE, expression="amount >= 1.0")
    for other in (signed_bytes("rules", RULE.id, changed),        # another body
                  signed_bytes("rules", "other-id", RULE),        # another key
                  signed_bytes("lists", RULE.id, RULE),           # another topic
                  signed_bytes("rules", RULE.id, RULE, "retire")):  # a removal
        check = TRUST.verify(other, [sig])
        assert check.valid == () and "does not match" in check.problems[0]


def test_canonical_bytes_do_not_depend_on_field_order_or_time_format() -> None:
    wire = msgspec.json.decode(sign_record(RULE, [KEYS.maker]))
    content, signatures, retired = split_signed(wire)
    reordered = dict(reversed(list(content.items())))
    reordered["valid_from"] = "2026-11-28T13:00:00+01:00"  # = 1795867200000 ms
    again = rule_from_obj(reordered)
    assert TRUST.verify(signed_bytes("rules", again.id, again), signatures).valid == ("dev-maker",)
    assert retired is False


def test_forged_untrusted_and_malformed_signatures_are_named() -> None:
    message = signed_bytes("rules", RULE.id, RULE)
    forged = Signature("dev-maker", base64.b64encode(os.urandom(64)).decode())
    stranger = Signer("mallory", KEYS.maker.key)  # a real key under an id nobody trusts
    short = Signature("dev-checker", "AAAA")
    check = TRUST.verify(message, [forged, stranger.sign(message), short])
    assert check.valid == ()
    assert check.problems == ("the signature of 'dev-maker' does not match the record",
                              "'mallory' is not a trusted analyst",
                              "the signature of 'dev-checker' does not match the record")


def test_one_analyst_signing_twice_counts_once() -> None:
    message = signed_bytes("rules", RULE.id, RULE)
    sig = KEYS.maker.sign(message)
    assert TRUST.verify(message, [sig, sig]).valid == ("dev-maker",)


def test_malformed_signatures_field_is_a_contract_error() -> None:
    for bad in ({"signatures": "abc"}, {"signatures": [{"analyst": "a"}]},
                {"signatures": [], "retired": "yes"}):
        with pytest.raises(ContractError):
            split_signed({"id": "x", **bad})


def test_attach_and_split_round_trip() -> None:
    sig = Signature("dev-maker", "c2ln")
    content, signatures, retired = split_signed(msgspec.json.decode(
        attach(RULE, [sig], retired=True)))
    assert signatures == (sig,) and retired is True
    assert msgspec.convert(content, Rule) == RULE


def test_trusted_keys_file_errors_name_the_entry(tmp_path: Path) -> None:
    public = TRUST.analysts["dev-maker"]

    cases = {
        "same key twice": (f"analysts:\n  a: {public_b64(public)}\n  b: {public_b64(public)}\n",
                           "same key"),
        "short key": ("analysts:\n  a: AAAA\n", "3 bytes, expected 32"),
        "bad id": (f"analysts:\n  'a b': {public_b64(public)}\n", "analyst id"),
        "no mapping": ("- a\n", "expected a mapping"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        with pytest.raises(TrustedKeysError, match=message):
            TrustedKeys.from_file(path)
    with pytest.raises(TrustedKeysError, match="cannot read"):
        load_trusted(tmp_path / "missing.yaml")


def test_the_missing_default_file_trusts_nobody(tmp_path: Path) -> None:
    default = tmp_path / "trusted.yaml"
    trust = load_trusted(default, default=default)
    assert trust.analysts == {} and "every rule and list record is refused" in trust.describe()


def test_private_keys_stay_out_of_repr_and_files_are_private(tmp_path: Path) -> None:
    path, public = write_key("ana", tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    signer = Signer.from_file(path)
    pem = path.read_text()
    assert signer.analyst == "ana" and "key" not in repr(signer) and pem not in repr(signer)
    assert "PRIVATE" not in TrustedKeys({"ana": signer.public}).describe()
    with pytest.raises(SigningKeyError, match="never overwritten"):
        write_key("ana", tmp_path)
    with pytest.raises(SigningKeyError, match="keygen"):
        Signer.from_file(tmp_path / "nobody.pem")
    assert len(base64.b64decode(public)) == 32


def test_dev_keys_are_made_once_and_reused(tmp_path: Path) -> None:
    first = dev_keys(tmp_path / "k")
    again = dev_keys(tmp_path / "k")
    assert first.trusted == again.trusted
    assert set(TrustedKeys.from_file(first.trusted).analysts) == {"dev-maker", "dev-checker"}
    message = b"x"
    assert TrustedKeys.from_file(again.trusted).verify(
        message, [first.maker.sign(message), first.checker.sign(message)]).valid == (
        "dev-maker", "dev-checker")
