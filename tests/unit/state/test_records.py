"""The merchant store's records: a batch's label targets and verdicts blob, expiry key lists."""

from __future__ import annotations

import numpy as np

from state.records import (
    LabelTarget,
    Verdict,
    encode_targets,
    encode_verdicts,
    scored,
    verdict_entry,
)


def test_a_batch_of_label_targets_encodes_as_one_at_a_time_and_finds_its_verdicts() -> None:
    """A batch's ``j`` records (one pass) and its verdicts blob give each row's Verdict back."""
    merchants = ["m-1", "café-ünï", "", "m" * 300]  # UTF-8 lengths, an empty and a long id
    outputs = [b'{"score":0.5}', b"", b"x" * 1000, b"\x00\xff"]
    gists = [b'{"s":1}', b"{}", b"", b"g"]
    body = np.array([1, 2**64 - 1, 0, 12345], dtype=np.uint64)
    partition = np.array([0, 7, 2**31 - 1, 3], dtype=np.int32)
    offset = np.array([5, 2**62, 0, 9], dtype=np.int64)
    event = np.array([1_700_000_000_000, 0, -1, 2**40], dtype=np.int64)
    familiar = np.array([True, False, True, False])
    first = 1_000
    raw = [m.encode() for m in merchants]
    targets = [LabelTarget(int(event[k]), first + k, bool(familiar[k]), merchants[k], gists[k],
                           first) for k in range(4)]
    encoded = encode_targets(first, event, familiar, raw, gists)
    assert encoded == [t.encode() for t in targets]
    assert [LabelTarget.decode(b) for b in encoded] == targets
    blob = encode_verdicts(body, partition, offset, outputs)
    assert [scored(t, blob) for t in targets] == [
        Verdict(int(body[k]), first + k, int(partition[k]), int(offset[k]), first,
                int(event[k]), bool(familiar[k]), merchants[k], outputs[k]) for k in range(4)]
    assert verdict_entry(blob, 4) is None and verdict_entry(blob, -1) is None
    assert scored(targets[0], None) is None  # the blob expired: the id counts as new
    assert verdict_entry(encode_verdicts(body[:0], partition[:0], offset[:0], []), 0) is None


def test_packed_key_lists_unpack_to_the_keys_whatever_their_lengths() -> None:
    """Expiry index records: equal-length keys take numpy's path, any others the loop."""
    import struct

    from state.keys import pack_keys, unpack_keys

    def plain(key_list: list[bytes]) -> bytes:
        return b"".join(struct.pack(">H", len(k)) + k for k in key_list)

    ids = [b"s" + f"{i:036d}".encode() for i in range(600)]
    for key_list in (ids, ids[:7], ids[:8], [], [b""] * 10, [b"ab", b"cdef"] * 6,
                     [b"abc", b"de", b"f", b"ghi", b"", b"jklm", b"n", b"opq"],
                     [b"x" * 1000] * 9):
        assert pack_keys(key_list) == plain(key_list)
        assert unpack_keys(pack_keys(key_list)) == key_list
