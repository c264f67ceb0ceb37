"""The stored card state (format 7, issue 21) and card keys: golden bytes, size, refusals.

A change to these bytes is a change of the store format: bump
:data:`state.kernels.card.FORMAT` (old state directories are then refused with the
remedy, :func:`state.db.check_state_dir`) and update the golden value here.
"""

from __future__ import annotations

import numpy as np
import pytest

from state import keys
from state.errors import StateFormatError
from state.features import card_features
from state.inputs import FeatureInputs, TxnInput
from state.kernels.card import FORMAT, transcode
from state.reference.card import CardState
from state.reference.steps import card_step
from topics.contracts import Transaction

T0 = 1_700_000_000_000
MINUTE = 60_000


def _txn(i: int, amount: float, minutes: int, merchant: str = "m1",
         located: bool = True) -> Transaction:
    return Transaction(transaction_id=f"t{i}", card_id="c", merchant_id=merchant,
                       amount=amount, currency="EUR", event_time=T0 + minutes * MINUTE,
                       country="FR", lat=48.8566 if located else None,
                       lon=2.3522 if located else None, channel="pos")


def _stored(txns: list[Transaction], state: bytes | None = None) -> bytes:
    inputs = FeatureInputs.of(txns, [t.amount for t in txns])
    _, (new,) = card_features([state], np.zeros(len(txns), np.int64), inputs)
    return new


ONE = [_txn(0, 12.5, 0)]
#: The stored state of a card after ``ONE`` (the word layout of format 6 took 576 bytes).
ONE_GOLDEN = "".join([
    "07", "80a0abfef962", "01", "01",  # format, last time, location time (= last), located
    "76e09c11a56d4840", "a835cd3b4ed10240",  # lat, lon (float64)
    "01", "a49902",  # country time (= last), country
    "0001", "000104", "0000000000002940", "00",  # 30 d window: one bucket, 12.5; sums derived
    "0001", "00010600", "00",  # 7 d: one bucket, its total that of the 30 d window's first
    "0001", "00010600", "00",  # 24 h
    "0001", "00010600", "00",  # 1 h
    "010101", "a49902",  # merchants, countries, home countries; the home country
    "000000",  # zero-value window: empty
    "d11f79d4b490b654", "01",  # merchant hash, last seen (= last)
    "a49902", "01", "a49902", "02",  # country, last seen; home country, count (zigzag 1)
    "000000000000",  # zero bytes to a whole number of 8-byte words
])


def test_a_one_transaction_card_is_stored_in_96_bytes() -> None:
    stored = _stored(ONE)
    assert stored[0] == FORMAT == 7
    assert stored.hex() == ONE_GOLDEN and len(stored) == 96


def test_stored_states_widen_to_the_reference_layout_and_back() -> None:
    txns = [_txn(0, 12.5, 0), _txn(1, 4.0, 0), _txn(2, -0.0, 1, "m2"),
            _txn(3, 1e300, 2, "m3", located=False), _txn(4, 0.1, 2), _txn(5, 0.2, 2),
            _txn(6, 0.0, 90), _txn(7, 7.25, 60 * 30)]
    card = CardState()
    for t in txns:
        card_step(card, TxnInput(t.event_time, t.amount, t.merchant_id, t.country, t.lat,
                                 t.lon, t.channel, t.entry_mode))
    stored = _stored(txns[:3])
    stored = _stored(txns[3:], stored)
    assert transcode([stored], to_wide=True) == [card.encode()]
    assert transcode([card.encode()], to_wide=False) == [stored]
    assert len(stored) < len(card.encode()) / 3


@pytest.mark.parametrize("damage", [
    lambda b: b[:-8],  # cut short
    lambda b: b + bytes(8),  # a word too many
    lambda b: b[:-1] + b"\x01",  # padding that is not zero
    lambda b: b[:3] + b"\xff" * (len(b) - 3),  # garbage
])
def test_a_damaged_state_is_refused_with_the_remedy(damage) -> None:  # type: ignore[no-untyped-def]
    stored = _stored(ONE)
    with pytest.raises(StateFormatError, match="corrupt.*delete the state"):
        _stored([_txn(1, 1.0, 5)], damage(stored))


def test_a_format_6_state_is_refused() -> None:
    wide = CardState()
    card_step(wide, TxnInput(T0, 1.0, "m", None, None, None, None, None))
    old = b"\x06" + wide.encode()[1:]  # the word layout, as format 6 stored it
    with pytest.raises(StateFormatError, match="format version unsupported.*delete the state"):
        _stored(ONE, old)


TOKEN = "tok_00112233445566778899aabbccddeeff"


def test_token_card_ids_pack_into_16_bytes_and_other_ids_stay_as_they_are() -> None:
    assert keys.card_key(TOKEN) == b"t" + bytes.fromhex("00112233445566778899aabbccddeeff")
    assert keys.card_id(keys.card_key(TOKEN)) == TOKEN
    for other in ["card-7", "tok_00112233445566778899AABBCCDDEEFF", TOKEN + "0", TOKEN[:-1],
                  "tok_00112233445566778899aabbccddeefg", "tok_0011 2233445566778899aabbccddeef",
                  " " + TOKEN[1:], "", "tok_", "\u0660" * 36]:
        assert keys.card_key(other) == b"c" + other.encode()
        assert keys.card_id(keys.card_key(other)) == other


def test_distinct_card_ids_never_share_a_key() -> None:
    ids = [TOKEN, TOKEN.upper(), "tok_" + TOKEN[4:].upper(), "t" + TOKEN, "c" + TOKEN,
           "t" + bytes.fromhex(TOKEN[4:]).decode("latin-1"), "card-1", "tcard-1"]
    assert len({keys.card_key(i) for i in ids}) == len(ids)
    assert keys.card_keys(ids) == [keys.card_key(i) for i in ids]
