"""List membership: the index agrees with trying every entry; BIN and schema checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.contracts import ContractError, ListEntry, entry_from_obj
from rules.lists import ListIndex, brute_member, card_bin

VALUES = ["c1", "c2", "FR", "10.1.2.3", "10.1.9.9", "10.200.0.1", "2001:db8::5", "41111111",
          "52000000", "4", "", "::ffff:10.1.2.3"]  # fmt: skip
ENTRIES = st.one_of(
    st.builds(lambda v: ("card_id", v), st.sampled_from(["c1", "c2", "c9"])),
    st.builds(lambda v: ("country", v), st.sampled_from(["FR", "DE"])),
    st.builds(lambda v: ("ip_range", v), st.sampled_from(
        ["10.1.2.0/24", "10.0.0.0/8", "10.1.2.3", "2001:db8::/32", "10.1.0.0/16", "0.0.0.0/0"]
    )),
    st.builds(lambda v: ("bin_prefix", v), st.sampled_from(["4", "4111", "411111", "52000000"])),
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), ENTRIES,
                  st.none() | st.integers(0, 100), st.none() | st.integers(0, 100)),
        max_size=12,
    ),
    removals=st.lists(st.integers(0, 11), max_size=3),
    times=st.lists(st.integers(0, 100), min_size=len(VALUES), max_size=len(VALUES)),
)  # fmt: skip
def test_index_agrees_with_brute_force(specs, removals, times) -> None:  # type: ignore[no-untyped-def]
    index = ListIndex()
    kept: dict[tuple[str, str], ListEntry] = {}
    for name, (kind, value), start, end in specs:
        if start is not None and end is not None and end <= start:
            end = None
        entry = ListEntry(list=name, kind=kind, value=value, valid_from=start, expires=end)
        index.put(entry)
        kept[(name, value)] = entry
    for r in removals:
        if r < len(specs):
            name, (_, value), *_ = specs[r]
            index.remove(name, value)
            kept.pop((name, value), None)
    entries = list(kept.values())
    t = np.array(times, dtype=np.int64)
    for name in ("a", "b", "missing"):
        got = index.members(name, np.array(VALUES, dtype=object), t)
        pairs = list(zip(VALUES, times, strict=True))
        want = [brute_member(entries, name, v, int(ti)) for v, ti in pairs]
        assert got.tolist() == want
        assert [index.member(name, v, int(ti)) for v, ti in zip(VALUES, times, strict=True)] == want


def test_card_bin() -> None:
    assert card_bin("4111-1111-1111-1111", None) == "41111111"
    assert card_bin("tok_abc", {"bin": "520000"}) == "520000"
    assert card_bin("4111111111111111", {"bin": "12"}) == "41111111"  # too short: PAN wins
    assert card_bin("tok_abc", {"iin": 45717360}) == "45717360"
    assert card_bin("12345", None) == "" and card_bin("tok", {"bin": True}) == ""


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ({"list": "l", "kind": "ip_range", "value": "10.0.0.0/33"}, "not an IP address"),
        ({"list": "l", "kind": "bin_prefix", "value": "41x"}, "BIN prefix"),
        ({"list": "l", "kind": "country", "value": "fr"}, "ISO 3166"),
        ({"list": "L", "kind": "card_id", "value": "c"}, "list"),
        ({"list": "l", "kind": "card_id", "value": "c", "valid_from": 5, "expires": 5}, "later"),
        ({"list": "l", "kind": "card_id", "value": "c", "expires": "yesterday"}, "RFC 3339"),
    ],
)
def test_entry_contract_refuses_bad_values(obj: dict[str, object], words: str) -> None:
    with pytest.raises(ContractError, match=words):
        entry_from_obj(obj)


def test_rules_and_lists_are_registered_topics_with_schemas() -> None:
    from topics.registry import TOPICS
    from topics.schema import schema_path

    for logical in ("rules", "lists"):
        spec = TOPICS[logical]
        assert spec.partitions == 1 and spec.config["cleanup.policy"] == "compact"
        assert schema_path(spec).exists()
