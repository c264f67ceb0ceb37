"""Card data protection (topics/pan.py): PAN detection, masking, tokenisation, SAD scrubbing,
and how the decode step routes a tokenised card (flows/decode.py)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.decode import DeadLetterRecord, KeyRule, TransactionRouter, decode_batch
from flows.items import CardWork
from flows.kafka import RawRecord
from samples import NOW_MS, case_records, raw
from state.partitioning import murmur2_partition
from topics.errors import ConfigError
from topics.pan import (
    CardGuard,
    PanInClear,
    PanKey,
    PanKeyError,
    bin_of,
    clean_attributes,
    luhn_ok,
    mask_pan,
    pan_digits,
    scrub,
)
from topics.validation import Rejection, TransactionDecoder

KEY = PanKey(b"k" * 32)
OTHER_KEY = PanKey(b"q" * 32)


def reference_luhn(digits: str) -> bool:
    """ISO/IEC 7812-1 annex B, written the long way: the check digit makes the sum 0 mod 10."""
    body, check = digits[:-1], int(digits[-1])
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d // 10 + d % 10
    return (10 - total % 10) % 10 == check


def with_check_digit(body: str) -> str:
    """``body`` + the digit that makes it Luhn-valid."""
    for d in "0123456789":
        if reference_luhn(body + d):
            return body + d
    raise AssertionError("no check digit")


bodies = st.integers(min_value=12, max_value=18).flatmap(
    lambda n: st.text("0123456789", min_size=n, max_size=n))
pans = bodies.map(with_check_digit)
separators = st.sampled_from(["", " ", "-"])


def formatted(pan: str, sep: str, group: int) -> str:
    return sep.join(pan[i:i + group] for i in range(0, len(pan), group))


def not_luhn(digits: str) -> str:
    """``digits`` with its last digit changed so that Luhn fails."""
    fixed = with_check_digit(digits[:-1])
    return fixed[:-1] + str((int(fixed[-1]) + 1) % 10)


# ---- Luhn and detection --------------------------------------------------------------


@given(st.text("0123456789", min_size=2, max_size=25))
def test_luhn_matches_the_reference(digits: str) -> None:
    assert luhn_ok(digits) == reference_luhn(digits)


@given(pan=pans, sep=separators, group=st.sampled_from([4, 5, 6]))
def test_every_generated_pan_is_detected_in_any_formatting(pan: str, sep: str, group: int) -> None:
    assert pan_digits(formatted(pan, sep, group)) == pan


@given(digits=bodies.map(lambda b: not_luhn(b + "0")), sep=separators)
def test_digit_strings_that_fail_luhn_are_left_alone(digits: str, sep: str) -> None:
    """(With separators a run of groups is also searched group by group: ``4111 1111 1111
    1111 123`` hides a PAN; so only the plain string is sure to be left alone.)"""
    assert pan_digits(formatted(digits, sep, 4)) is None
    data = f'{{"id":"{digits}","n":1}}'.encode()
    assert scrub(data).data == data
    assert CardGuard(KEY).identify(digits) is None


@given(pan=pans, sep=separators, prefix=st.text("abcxyz{\":, =", max_size=12),
       suffix=st.text("abcxyz}\":, =&", max_size=12))
def test_every_generated_pan_is_masked_to_first_6_and_last_4(
    pan: str, sep: str, prefix: str, suffix: str
) -> None:
    text = formatted(pan, sep, 4)
    out = scrub((prefix + text + suffix).encode()).data
    assert pan.encode() not in out and text.encode() not in out
    middle = out[len(prefix):len(prefix) + len(text)]
    kept = re.sub(rb"[^0-9]", b"", middle)
    assert kept == pan[:6].encode() + pan[-4:].encode()  # PCI DSS 3.4.1: BIN and last 4 at most
    assert len(out) == len(prefix + text + suffix)


@given(pan=pans, tail=st.text("0123456789", min_size=1, max_size=4))
def test_a_pan_followed_by_other_digit_groups_is_still_masked(pan: str, tail: str) -> None:
    text = formatted(pan, " ", 4)
    out = scrub(f"{text} {tail}".encode()).data.decode()
    positions = [i for i, ch in enumerate(text) if ch.isdigit()]
    assert all(out[i] == "*" for i in positions[6:-4]), out  # the PAN's middle digits
    assert sum(out[i].isdigit() for i in positions) <= 10


def test_a_long_digit_run_that_may_hide_a_pan_is_masked_whole() -> None:
    out = scrub(b'{"ref": 9994111111111111111999}').data
    assert out == b'{"ref": **********************}'
    out = scrub(b"ref 4111111111111111 12345678901234567890123").data
    assert out == b"ref 411111******1111 ***********************"


def test_bin_length_follows_the_pan_length() -> None:
    assert bin_of("4111111111111111") == "41111111"  # 16 digits: 8-digit IIN
    assert bin_of("4111111111111111110") == "41111111"  # 19 digits
    assert bin_of("378282246310005") == "378282"  # Amex, 15 digits: 6 (5 stay hidden)
    assert bin_of("4222222222222") == "422222"  # 13 digits


def test_mask_pan_keeps_separators_and_length() -> None:
    assert mask_pan("5105-1051-0510-5100") == "5105-10**-****-5100"
    assert mask_pan("order 12") == "order 12"


# ---- sensitive authentication data ----------------------------------------------------

SAD_SAMPLES = [
    (b'{"cvv":"123"}', b"123"),
    (b'{"CVV2": "123", "a": 1}', b"123"),
    (b'{"cardCvc":123}', b"123"),
    (b'{"cid":"1234"}', b"1234"),
    (b'{"security_code":"987"}', b"987"),
    (b'cvc2=321&x=1', b"321"),
    (b"<pinBlock>0412AC89ABCDEF01</pinBlock>", b"0412AC89ABCDEF01"),
    (b'{"pin_block":"0412AC89ABCDEF01"}', b"0412AC89ABCDEF01"),
    (b'{"track1":"%B4111111111111111^DOE/JOHN^28101010000000000?"}', b"DOE/JOHN"),
    (b'{"trackData":"5105105105105100=28101011234567890123"}', b"28101011234567890123"),
    (b'{"msg":"{\\"cvv\\":\\"123\\"}"}', b"123"),  # JSON inside a JSON string
    (b'{"amount":"twelve","cvv":"12', b"12"),  # cut in the middle of the value
    (b'{"data":";4111111111111111=28101011234567890123?"}', b"28101011234567890123"),
    (b'{"x":"%B5105105105105100^SMITH/ANN^2810101000?"}', b"SMITH/ANN"),
]


@pytest.mark.parametrize(("data", "secret"), SAD_SAMPLES)
def test_sensitive_authentication_data_is_masked_by_name_or_content(
    data: bytes, secret: bytes
) -> None:
    out = scrub(data)
    assert secret not in out.data, out.data
    assert len(out.data) == len(data) and out.sad >= 1


def test_fields_that_are_not_card_data_are_kept() -> None:
    data = b'{"transaction_id":"t-9","merchant_id":"m-1","amount":12.5,"pinned":true,"x":"abc"}'
    assert scrub(data).data == data


def test_attributes_lose_sad_and_pans_but_keep_the_rest() -> None:
    attrs = {"cvv2": "123", "Track2": "x", "note": "paid with 4111 1111 1111 1111",
             "bin": "411111", "ref": 4111111111111111, "pan": 5105105105105100}
    out = clean_attributes(attrs)
    assert out == {"note": "paid with 4111 11** **** 1111", "bin": "411111",
                   "ref": 4111111111111111,  # a number under a neutral name: an id, kept
                   "pan": "510510******5100"}
    clean = {"bin": "411111", "n": 3}
    assert clean_attributes(clean) is clean


# ---- keys and tokens ------------------------------------------------------------------


@given(pan=pans, sep=separators)
def test_a_pan_gets_one_token_per_key_whatever_its_formatting(pan: str, sep: str) -> None:
    ident = CardGuard(KEY).identify(formatted(pan, sep, 4))
    assert ident is not None
    assert ident == CardGuard(KEY).identify(pan)
    assert re.fullmatch(r"tok_[0-9a-f]{32}", ident.card_id)
    assert ident.bin == bin_of(pan) and ident.last4 == pan[-4:]
    other = CardGuard(OTHER_KEY).identify(pan)
    assert other is not None and other.card_id != ident.card_id


def test_a_card_id_with_a_pan_inside_other_text_is_tokenised_whole() -> None:
    ident = CardGuard(KEY).identify("card:4111111111111111")
    assert ident is not None and ident.card_id.startswith("tok_") and ident.bin is None
    assert CardGuard(KEY).identify("card-000123") is None


def test_without_a_key_a_pan_is_refused_with_a_masked_copy_and_the_remedy() -> None:
    with pytest.raises(PanInClear) as caught:
        CardGuard().identify("4111 1111 1111 1111")
    message = str(caught.value)
    assert "FRAUD_PAN_KEY_FILE" in message and "4111 11** **** 1111" in message
    assert "4111 1111 1111 1111" not in message and "4111111111111111" not in message


def test_the_key_never_shows(tmp_path: Path) -> None:
    secret = b"s3cr3t-" * 6
    path = tmp_path / "pan.key"
    path.write_bytes(secret + b"\n")
    key = PanKey.from_file(path)
    assert key.token("4111111111111111") == PanKey(secret).token("4111111111111111")
    for shown in (repr(key), str(key), repr(CardGuard(key))):
        assert "s3cr3t" not in shown and re.search(r"fingerprint=[0-9a-f]{8}", shown)
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(key)


def test_a_bad_key_file_is_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(PanKeyError, match="FRAUD_PAN_KEY_FILE.*cannot read"):
        PanKey.from_file(tmp_path / "missing")
    short = tmp_path / "short"
    short.write_bytes(b"too short")
    with pytest.raises(ConfigError, match="at least 32"):
        PanKey.from_file(short)


# ---- decode and routing of a tokenised card ----------------------------------------------

PARTITIONS = 8


def record(value: bytes, key: bytes | None, partition: int, offset: int,
           timestamp: int = NOW_MS) -> RawRecord:
    return RawRecord(key, value, "transactions", partition, offset, timestamp)


def route(records: list[RawRecord], router: TransactionRouter, decoder: TransactionDecoder,
          partition: int) -> tuple[list[CardWork], list[DeadLetterRecord]]:
    """Decode and route one poll: the card shards' work with rows, and every dead letter."""
    decoded, kept, dead = decode_batch(records, decoder, NOW_MS)
    out = router.route(partition, decoded, kept)
    letters = [item for item in out if isinstance(item, DeadLetterRecord)]
    work = [item[1] for item in out
            if not isinstance(item, DeadLetterRecord) and item[1].txns is not None]
    return work, [*dead, *letters]


@pytest.mark.parametrize("policy", ["route", "refuse"])
def test_a_pan_keyed_card_is_home_on_the_partition_of_its_pan(policy: str) -> None:
    """The producer keyed by the PAN: its records sit on murmur2(PAN); none is mis-keyed,
    all go to the shard of the token (one shard for the card's state)."""
    guard = CardGuard(KEY)
    decoder = TransactionDecoder(cards=guard)
    pan = "4111111111111111"
    q = murmur2_partition(pan, PARTITIONS)
    router = TransactionRouter(KeyRule(PARTITIONS, policy), cards=guard)
    msgs = [record(raw(transaction_id=f"t{i}", card_id=pan), pan.encode(), q, i)
            for i in range(5)]
    work, letters = route(msgs, router, decoder, q)
    assert letters == []
    token = guard.identify(pan)
    assert token is not None
    (shard,) = {w.shard for w in work}
    assert shard == murmur2_partition(token.card_id, PARTITIONS)
    assert [t.card_id for w in work if w.txns for t in w.txns.values] == [token.card_id] * 5


def test_a_tokenised_card_without_its_key_is_mis_keyed_and_the_reason_names_no_card() -> None:
    guard = CardGuard(KEY)
    decoder = TransactionDecoder(cards=guard)
    pan = "5105105105105100"
    token = guard.identify(pan)
    assert token is not None
    home = murmur2_partition(pan, PARTITIONS)
    q = next(p for p in range(PARTITIONS)
             if p != murmur2_partition(token.card_id, PARTITIONS) and p != home)
    router = TransactionRouter(KeyRule(PARTITIONS, "refuse"), cards=guard)
    work, letters = route([record(raw(card_id=pan), None, q, 0)], router, decoder, q)
    assert work == []
    (letter,) = letters
    body = letter.value
    assert b'"error_class":"mis_keyed"' in body and b"not keyed by its card_id" in body
    assert pan.encode() not in body and token.card_id.encode() not in body
    assert b"expected_partition" not in body


def test_the_case_records_are_tokenised_and_the_bad_one_is_masked() -> None:
    guard = CardGuard(KEY)
    decoder = TransactionDecoder(cards=guard)
    records = case_records("pan-as-card-id")
    msgs = [record(r.value, r.key, murmur2_partition(r.key.decode(), PARTITIONS), i,
                   r.timestamp) for i, r in enumerate(records) if r.key is not None]
    decoded, kept, dead = decode_batch(msgs, decoder, records[0].timestamp)
    assert len(decoded) == 6 and len(dead) == 1
    token = guard.identify("4111111111111111")
    assert token is not None and {t.card_id for t in decoded.values} == {token.card_id}
    assert {(t.card_bin, t.card_last4) for t in decoded.values} == {("41111111", "1111")}
    letter = dead[0]
    assert letter.key == b"510510******5100"
    for secret in (b"5105105105105100", b'"cvv": "123"', b"=28101011234567890123"):
        assert secret not in letter.value


def test_bin_lists_match_a_tokenised_card_by_its_kept_bin() -> None:
    """The rules' ``bin`` of a PAN sent as card_id is the BIN kept at decode, not the token."""
    from rules.batch import RuleBatch
    from rules.lists import card_bin

    txn = TransactionDecoder(cards=CardGuard(KEY)).decode(raw(card_id="4111111111111111"),
                                                          NOW_MS)
    assert not isinstance(txn, Rejection) and txn.card_id.startswith("tok_")
    assert card_bin(txn.card_id, txn.attributes) == ""  # the token alone says nothing
    batch = RuleBatch.from_transactions([txn], np.zeros((1, 1), np.float32), ["f"],
                                        np.zeros(1), ["approve"])
    assert list(batch.bins) == ["41111111"]


def test_the_token_cli_gives_the_token_decode_gives(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m topics.pan`` prints what a card_id list entry must hold for a PAN."""
    import io

    from topics.pan import CardGuard, main

    key_file = tmp_path / "pan.key"
    key_file.write_bytes(b"k" * 32 + b"\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("4111-1111-1111-1111\n\n"))
    assert main(["--key-file", str(key_file)]) == 0
    masked, token = capsys.readouterr().out.split()
    identity = CardGuard(KEY).identify("4111111111111111")
    assert identity is not None and token == identity.card_id
    assert masked == "4111-11**-****-1111"
    monkeypatch.setattr("sys.stdin", io.StringIO("c-17\n"))
    assert main(["--key-file", str(key_file)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_a_pan_written_with_json_escapes_is_masked_in_raw_bytes_and_refused_decoded() -> None:
    """``\\u0034`` is "4" to every JSON decoder: a PAN spelt with escapes is still a PAN."""
    from samples import NOW_MS
    from topics.validation import TransactionDecoder

    escaped = "".join(f"\\u{ord(c):04x}" if i % 3 == 0 else c
                      for i, c in enumerate("5105105105105100"))
    for body in (f'{{"card_id":"{escaped}"}}', f'{{"note":"card {escaped} ok"}}'):
        out = scrub(body.encode())
        assert out.pans >= 1 and b"\\u" not in out.data.split(b'"')[3], out
    raw = (f'{{"transaction_id":"t","card_id":"{escaped}","merchant_id":"m","amount":1.0,'
           f'"currency":"EUR","event_time":{NOW_MS}}}').encode()
    refused = TransactionDecoder().decode(raw, NOW_MS)
    assert getattr(refused, "error_class", None) == "pan_in_clear"
