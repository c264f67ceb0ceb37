"""The process's lists: one table shared by every rule book of the process (a GlobalKTable).

Every merchant shard keeps its own :class:`~rules.book.RuleBook` (rules, their
approvals, the cost guard), but the lists are the same for all of them, so a
process keeps one :class:`ListTable`: the entry index, the last applied offset of
the ``lists`` topic, the list changes waiting for a second analyst, who signed each
entry, and the lists' part of the rule-set version. Like Kafka Streams' GlobalKTable
the compacted topic is the table's changelog: the flow reads it from the beginning
to its end before scoring begins (:mod:`flows.list_loader`), and no recovery
snapshot holds an entry.

A record is applied **once per process**: the first book to hand it in applies it
(the checks are :meth:`ListTable.apply`'s, with that book's trusted analysts, caps
and rules), every later hand-in of the same offset is ``replayed``, so only the
book that applied it reports it (metric, log, dead letter). A refused record read
at start-up is reported by the first book the flow's source hands it to again
(:meth:`ListTable.defer`), as it would have been before the table existed. One
lock guards the table: apply, and evaluation over it, from several worker threads.

>>> import tempfile
>>> from rules.book import Message, RuleBook
>>> from rules.contracts import ListEntry
>>> from rules.signing import TrustedKeys, dev_keys, sign_record
>>> keys = dev_keys(tempfile.mkdtemp())
>>> trust = TrustedKeys.from_file(keys.trusted)
>>> table = ListTable()
>>> one, two = RuleBook(trust=trust, table=table), RuleBook(trust=trust, table=table)
>>> entry = ListEntry(list="blocked_cards", kind="card_id", value="c1")
>>> record = Message("lists", "blocked_cards/c1", sign_record(entry, [keys.maker]), offset=0)
>>> one.apply(record).change, two.apply(record).change, two.lists.size()
('added', 'replayed', 1)
>>> one.version == two.version
True
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec

from rules.approval import (
    AuthClass,
    Authorised,
    Pending,
    Unauthenticated,
    Waiting,
    authorise,
    entry_loosens,
)
from rules.compile import RefusalClass
from rules.contracts import ContractError, ListEntry, decode_json, entry_from_obj, list_key
from rules.cost import CostBudget
from rules.lists import ListIndex
from rules.signing import TrustedKeys, split_signed
from topics.pan import mask_pan, pan_digits

Topic = Literal["rules", "lists"]
Change = Literal["added", "updated", "removed", "unchanged", "stale", "replayed", "pending"]
_MASK = (1 << 64) - 1
#: Refusals read at start-up kept for their report (beyond: logged as a count only).
DEFERRED_MAX = 10_000


@dataclass(frozen=True)
class Message:
    """One record of the ``rules`` or ``lists`` topic: key, value (None = tombstone), offset."""

    topic: Topic
    key: bytes | str | None
    value: bytes | str | None
    offset: int | None = None


@dataclass(frozen=True)
class Applied:
    """A message was applied, was a no-op or waits for a second analyst.

    No-ops: ``unchanged``, ``stale``, ``replayed``; ``pending``: validly signed,
    waiting for a second analyst, changing nothing yet.
    """

    topic: Topic
    key: str
    change: Change


@dataclass(frozen=True)
class Refused:
    """A message was not applied; ``error_class`` and ``reason`` go to the dead letter."""

    topic: Topic
    key: str
    error_class: RefusalClass | AuthClass
    reason: str


def digest(data: bytes) -> int:
    """A 64-bit digest of one record's content (summed into a version)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Judge(Protocol):
    """What a list record is judged by: the applying book's analysts, caps and rules."""

    trust: TrustedKeys
    budget: CostBudget

    def list_users(self) -> tuple[set[str], set[str]]:
        """Lists named by active approve rules, and by active decline/review rules."""


class ListTable:
    """Every list entry of the process, with its offset, approvals, signers and version part."""

    def __init__(self) -> None:
        #: Held to apply a record and to evaluate rules over the index (worker threads).
        self.lock = threading.RLock()
        self.index = ListIndex()
        #: The last applied offset of ``lists`` (-1: none).
        self.offset = -1
        #: Signed loosening list changes waiting for a second analyst, by ("lists", key).
        self.pending: dict[tuple[str, str], Pending] = {}
        #: Who signed the entries in force: ``"lists:<key>"`` -> analysts (author first).
        self.signers: dict[str, tuple[str, ...]] = {}
        #: The lists' part of the rule-set version (sum of the entries' digests).
        self.digest = 0
        self._deferred: dict[int, Refused] = {}
        #: Start-up refusals beyond :data:`DEFERRED_MAX`: counted, not kept.
        self.deferred_dropped = 0

    # ---- apply -----------------------------------------------------------------------------

    def apply(self, key: str | None, value: bytes | str | None, offset: int | None,
              judge: Judge) -> Applied | Refused:
        """Apply one ``lists`` record (once per offset); never raises on bad content.

        A record at or below :attr:`offset` is ``replayed``, unless it was refused at
        start-up and not reported yet: then the :class:`Refused` is handed back (once).
        """
        with self.lock:
            if offset is not None and offset <= self.offset:
                late = self._deferred.pop(offset, None)
                return late if late is not None else Applied("lists", key or "", "replayed")
            result = self._apply_entry(key, value, judge)
            if offset is not None:
                self.offset = offset
            return result

    def defer(self, offset: int, refused: Refused) -> None:
        """Keep a refusal read at start-up for the book the flow's source hands it to again."""
        with self.lock:
            if len(self._deferred) < DEFERRED_MAX:
                self._deferred[offset] = refused
            else:
                self.deferred_dropped += 1

    def _apply_entry(self, key: str | None, value: bytes | str | None,
                     judge: Judge) -> Applied | Refused:
        if not key or "/" not in key:
            return Refused("lists", key or "", "list_invalid",
                           "a lists record needs the key <list>/<value>")  # fmt: skip
        name, _, member = key.partition("/")
        if value is None:
            return Refused("lists", key, "list_unauthenticated",
                           f"list entry {key!r}: a tombstone cannot carry a signature and is "
                           "refused (the entry stays); remove entries with `just rules "
                           "remove-entries` (a signed record)")  # fmt: skip
        try:
            content, signatures, retired = split_signed(decode_json(value))
            entry = entry_from_obj(content)
        except ContractError as exc:
            return Refused("lists", key, "list_invalid", f"list entry {key!r}: {exc}")
        if list_key(entry) != key:
            return Refused("lists", key, "list_invalid",
                           f"record key {key!r} differs from {list_key(entry)!r} "
                           "(<list>/<value>)")  # fmt: skip
        if entry.kind == "card_id" and pan_digits(entry.value) is not None:
            return Refused("lists", mask_pan(key), "list_invalid",
                           f"list entry {mask_pan(key)!r} holds a card number in clear: card_id "
                           "entries are tokens, as the flow's card ids are (the token of a "
                           "PAN: FRAUD_PAN_KEY_FILE's HMAC, topics.pan); a PAN would never "
                           "match and must not be stored (PCI DSS req. 3)")  # fmt: skip
        if not retired and self.index.get(name, member) is None:
            full = self.list_full(name, judge.budget)
            if full is not None:
                return Refused("lists", key, "list_full", full)
        decision = authorise(judge.trust, "lists", key, entry, signatures,
                             "retire" if retired else "put",
                             entry_loosens(entry, retired, *judge.list_users()))
        if isinstance(decision, Unauthenticated):
            return Refused("lists", key, decision.error_class, decision.reason)
        if isinstance(decision, Waiting):
            self.pending[("lists", key)] = decision.pending
            return Applied("lists", key, "pending")
        result: Applied
        if retired:
            old = self.index.remove(name, member)
            if old is None:
                result = Applied("lists", key, "unchanged")
            else:
                self.digest = (self.digest - digest(msgspec.json.encode(old))) & _MASK
                result = Applied("lists", key, "removed")
        else:
            result = self.put_entry(entry)
        self._authorised(key, decision, result, lambda p: True)
        return result

    def _authorised(self, key: str, decision: Authorised, result: Applied | Refused,
                    settles: Callable[[Pending], bool]) -> None:
        if isinstance(result, Applied) and result.change in ("added", "updated", "removed"):
            self.signers[f"lists:{key}"] = decision.signers
            waiting = self.pending.get(("lists", key))
            if waiting is not None and settles(waiting):
                del self.pending[("lists", key)]

    def list_full(self, name: str, budget: CostBudget) -> str | None:
        """Why list ``name`` takes no new entry (its cap or the cap of all lists), or None."""
        if self.index.size(name) >= budget.max_list_entries:
            return (f"list {name!r} holds {self.index.size(name):,} entries, its cap "
                    f"(FRAUD_LIST_MAX_ENTRIES={budget.max_list_entries:,}); remove entries "
                    "(`just rules remove-entries`) or raise the cap")
        if self.index.size() >= budget.max_entries:
            return (f"the lists hold {self.index.size():,} entries in all, the cap "
                    f"(FRAUD_LISTS_MAX_ENTRIES={budget.max_entries:,}); remove entries "
                    "(`just rules remove-entries`) or raise the cap")
        return None

    def put_entry(self, entry: ListEntry) -> Applied:
        """Add or replace a decoded list entry."""
        with self.lock:
            key = list_key(entry)
            old = self.index.get(entry.list, entry.value)
            if old == entry:
                return Applied("lists", key, "unchanged")
            if old is not None:
                self.digest = (self.digest - digest(msgspec.json.encode(old))) & _MASK
            self.index.put(entry)
            self.digest = (self.digest + digest(msgspec.json.encode(entry))) & _MASK
            return Applied("lists", key, "added" if old is None else "updated")
