"""Named lists (blocklists, allowlists) and how a value matches them at an event time.

An entry matches a value by its kind (see :class:`rules.contracts.ListEntry`):
equal text, the address inside a CIDR network (RFC 4632), or a BIN prefix. A
list may mix kinds; a value is a member when any entry in force at the
transaction's event time matches it, so a replay gives the same answer.

:class:`ListIndex` answers by hash lookups (one per distinct prefix length for
networks and BINs); :func:`brute_member` answers the same question by trying
every entry, the reference the tests hold the index to.

>>> index = ListIndex()
>>> index.put(ListEntry(list="bad_ips", kind="ip_range", value="203.0.113.0/24", expires=2000))
>>> index.member("bad_ips", "203.0.113.9", 1000), index.member("bad_ips", "203.0.113.9", 2000)
(True, False)
>>> card_bin("tok_9f2c", None, "41111111"), card_bin("c-17", {"bin": 411111})
('41111111', '411111')
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from socket import AF_INET, inet_pton

import numpy as np

from rules.contracts import ListEntry, list_key

NEVER = math.inf
_PAN = re.compile(r"^[0-9]{12,19}$")
_BIN = re.compile(r"^[0-9]{6,8}$")
#: Attribute keys read for the BIN, in order.
BIN_ATTRIBUTES = ("bin", "card_bin", "iin")


def card_bin(card_id: str, attributes: Mapping[str, object] | None,
             kept: str | None = None) -> str:
    """The card's BIN (issuer identification number, ISO/IEC 7812-1), or ``""``.

    ``card_id`` is a token (:mod:`topics.pan`), so the BIN comes from elsewhere:

    1. ``kept``: the transaction's ``card_bin`` field, kept at decode when a PAN was
       tokenised (first 8 digits of a PAN of 16+ digits, else 6) or sent by a
       tokenising producer;
    2. else ``attributes["bin"]`` (or ``card_bin``, ``iin``) when it is 6-8 digits
       (a string or a non-negative integer);
    3. else, when ``card_id`` (spaces and dashes removed) is PAN-like, 12-19
       digits, its first 8 digits: only for histories recorded before card ids
       were tokenised (the stream never sees one: decode tokenises or refuses it);
    4. else ``""``.
    """
    if kept:
        return kept
    if attributes:
        for key in BIN_ATTRIBUTES:
            value = attributes.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                value = str(value)
            if isinstance(value, str) and _BIN.match(value):
                return value
    digits = card_id.replace(" ", "").replace("-", "")
    return digits[:8] if _PAN.match(digits) else ""


@lru_cache(maxsize=65_536)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def in_force(entry: ListEntry, t: int) -> bool:
    """True when ``valid_from <= t < expires`` (absent bounds are open)."""
    return (entry.valid_from is None or t >= entry.valid_from) and (
        entry.expires is None or t < entry.expires
    )


def entry_matches(entry: ListEntry, value: str) -> bool:
    """True when ``value`` matches ``entry`` by its kind (time is not looked at)."""
    if entry.kind == "ip_range":
        address = _address(value)
        if address is None:
            return False
        network = ipaddress.ip_network(entry.value, strict=False)
        return address.version == network.version and address in network
    if entry.kind == "bin_prefix":
        return value.isascii() and value.isdigit() and value.startswith(entry.value)
    return value == entry.value


@dataclass
class _Window:
    """Event-time bounds of one entry, as floats for fast comparison."""

    start: float
    end: float

    @classmethod
    def of(cls, entry: ListEntry) -> _Window:
        return cls(
            -NEVER if entry.valid_from is None else float(entry.valid_from),
            NEVER if entry.expires is None else float(entry.expires),
        )


@dataclass
class _List:
    """One named list: entries by value, plus lookup tables by kind."""

    entries: dict[str, ListEntry] = field(default_factory=dict)
    exact: dict[str, _Window] = field(default_factory=dict)
    #: (ip version, prefix length) -> network number -> entry value -> window
    networks: dict[tuple[int, int], dict[int, dict[str, _Window]]] = field(default_factory=dict)
    #: prefix length -> prefix -> window
    bins: dict[int, dict[str, _Window]] = field(default_factory=dict)
    bounded: int = 0  # entries with a time bound; 0: membership ignores the time
    _v4_keys: dict[int, np.ndarray] | None = None  # sorted IPv4 network numbers per length

    @property
    def timeless(self) -> bool:
        return self.bounded == 0

    def _slot(self, entry: ListEntry) -> dict[str, _Window]:
        """The table cell holding this entry's window (several values may share a network)."""
        if entry.kind == "ip_range":
            net = ipaddress.ip_network(entry.value, strict=False)
            table = self.networks.setdefault((net.version, net.prefixlen), {})
            number = int(net.network_address) >> (net.max_prefixlen - net.prefixlen)
            return table.setdefault(number, {})
        if entry.kind == "bin_prefix":
            return self.bins.setdefault(len(entry.value), {})
        return self.exact

    def add(self, entry: ListEntry) -> None:
        old = self.entries.get(entry.value)
        if old is not None:
            self.discard(old)
        self.entries[entry.value] = entry
        self._slot(entry)[entry.value] = _Window.of(entry)
        self._v4_keys = None
        self.bounded += entry.valid_from is not None or entry.expires is not None

    def discard(self, entry: ListEntry) -> None:
        if self.entries.pop(entry.value, None) is None:
            return
        self._slot(entry).pop(entry.value, None)
        self._v4_keys = None
        self.bounded -= entry.valid_from is not None or entry.expires is not None
        for table in self.networks.values():
            for number in [k for k, cell in table.items() if not cell]:
                del table[number]
        self.networks = {k: v for k, v in self.networks.items() if v}
        self.bins = {k: v for k, v in self.bins.items() if v}

    def window_hits(self, value: str) -> Iterator[_Window]:
        window = self.exact.get(value)
        if window is not None:
            yield window
        if self.networks:
            address = _address(value)
            if address is not None:
                number, bits = int(address), address.max_prefixlen
                for (version, length), table in self.networks.items():
                    if version == address.version:
                        cell = table.get(number >> (bits - length))
                        if cell is not None:
                            yield from cell.values()
        if self.bins and value.isascii() and value.isdigit():
            for length, prefixes in self.bins.items():
                hit = prefixes.get(value[:length]) if len(value) >= length else None
                if hit is not None:
                    yield hit

    def network_candidates(self, parsed: tuple[np.ndarray, ...]) -> np.ndarray:
        """Rows whose address is inside some network of the list (ignoring time)."""
        is_v4, v4, v6_rows, v6 = parsed
        out = np.zeros(len(is_v4), dtype=bool)
        if self._v4_keys is None:
            self._v4_keys = {
                length: np.sort(np.fromiter(table.keys(), dtype=np.uint64, count=len(table)))
                for (version, length), table in self.networks.items() if version == 4
            }  # fmt: skip
        any_v4 = bool(is_v4.any())
        for (version, length), table in self.networks.items():
            if version == 4 and any_v4:
                keys = self._v4_keys[length]
                shifted = v4 >> np.uint64(32 - length)
                at = np.minimum(np.searchsorted(keys, shifted), len(keys) - 1)
                out |= is_v4 & (keys[at] == shifted)
            elif version == 6:
                for row, number in zip(v6_rows.tolist(), v6.tolist(), strict=True):
                    if (number >> (128 - length)) in table:
                        out[row] = True
        return out

    def member(self, value: str, t: float) -> bool:
        return any(w.start <= t < w.end for w in self.window_hits(value))


class ListIndex:
    """Every named list, indexed for membership at an event time."""

    def __init__(self) -> None:
        self._lists: dict[str, _List] = {}

    def put(self, entry: ListEntry) -> None:
        """Add or replace the entry with the same ``<list>/<value>`` key."""
        self._lists.setdefault(entry.list, _List()).add(entry)

    def remove(self, name: str, value: str) -> ListEntry | None:
        """Remove one entry; return it, or None when there was none."""
        lst = self._lists.get(name)
        if lst is None:
            return None
        entry = lst.entries.get(value)
        if entry is not None:
            lst.discard(entry)
        if not lst.entries:
            del self._lists[name]
        return entry

    def size(self, name: str | None = None) -> int:
        """Entries of list ``name``, or of every list (None)."""
        if name is not None:
            lst = self._lists.get(name)
            return 0 if lst is None else len(lst.entries)
        return sum(len(lst.entries) for lst in self._lists.values())

    def get(self, name: str, value: str) -> ListEntry | None:
        """The entry stored under ``<name>/<value>``, if any."""
        lst = self._lists.get(name)
        return None if lst is None else lst.entries.get(value)

    def entries(self) -> list[ListEntry]:
        """Every entry, sorted by key."""
        return sorted(
            (e for lst in self._lists.values() for e in lst.entries.values()), key=list_key
        )

    def names(self) -> list[str]:
        """Names of the lists that have entries."""
        return sorted(self._lists)

    def member(self, name: str, value: str, t: int) -> bool:
        """Is ``value`` in list ``name`` at event time ``t`` (ms)? Unknown lists are empty."""
        lst = self._lists.get(name)
        return lst is not None and lst.member(value, float(t))

    def members(
        self,
        name: str,
        values: Sequence[object] | np.ndarray,
        t: np.ndarray,
        memo: dict[str, object] | None = None,
    ) -> np.ndarray:
        """Bool ``[n]``: membership of each value (non-text values: False) at its time ``t[i]``.

        ``memo`` caches the parsed column (IP numbers, digit flags) across lists
        tested against the same values; pass one dict per column and batch.
        """
        n = len(values)
        lst = self._lists.get(name)
        if lst is None or n == 0:
            return np.zeros(n, dtype=bool)
        memo = {} if memo is None else memo
        candidate = np.zeros(n, dtype=bool)
        if lst.exact:
            exact = lst.exact
            candidate |= np.fromiter(
                (isinstance(v, str) and v in exact for v in values), dtype=bool, count=n
            )
        if lst.networks:
            candidate |= lst.network_candidates(_parsed_ips(values, memo))
        if lst.bins:
            digits: np.ndarray | None = memo.get("digits")  # type: ignore[assignment]
            if digits is None:
                digits = np.fromiter(
                    (isinstance(v, str) and v.isascii() and v.isdigit() for v in values),
                    dtype=bool, count=n,
                )  # fmt: skip
                memo["digits"] = digits
            rows = np.flatnonzero(digits)
            for length, prefixes in lst.bins.items():
                for i in rows.tolist():
                    v = values[i]
                    if len(v) >= length and v[:length] in prefixes:  # type: ignore[arg-type,index]
                        candidate[i] = True
        if lst.timeless or not candidate.any():
            return candidate
        out = np.zeros(n, dtype=bool)
        times = t.tolist()
        for i in np.flatnonzero(candidate).tolist():
            out[i] = lst.member(values[i], float(times[i]))  # type: ignore[arg-type]
        return out


def _parsed_ips(
    values: Sequence[object] | np.ndarray, memo: dict[str, object]
) -> tuple[np.ndarray, ...]:
    """``(is_v4, v4 numbers uint64, v6 rows, v6 numbers)`` of a column, cached in ``memo``."""
    cached = memo.get("ips")
    if cached is None:
        n = len(values)
        is_v4 = np.zeros(n, dtype=bool)
        v4 = np.zeros(n, dtype=np.uint64)
        v6_rows: list[int] = []
        v6: list[int] = []
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v:
                continue
            try:  # dotted quad: inet_pton accepts exactly what ipaddress does (no leading 0s)
                v4[i] = int.from_bytes(inet_pton(AF_INET, v), "big")
                is_v4[i] = True
                continue
            except OSError:
                pass
            address = _address(v)
            if address is None:
                continue
            if address.version == 4:
                is_v4[i] = True
                v4[i] = int(address)
            else:
                v6_rows.append(i)
                v6.append(int(address))
        cached = (is_v4, v4, np.array(v6_rows, dtype=np.int64), np.array(v6, dtype=object))
        memo["ips"] = cached
    return cached  # type: ignore[return-value]


def brute_member(entries: Sequence[ListEntry], name: str, value: str, t: int) -> bool:
    """Reference membership: try every entry of ``name`` (slow; for tests and audits)."""
    return any(
        e.list == name and in_force(e, t) and entry_matches(e, value) for e in entries
    )
