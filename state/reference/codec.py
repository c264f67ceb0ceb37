"""Binary layout of a key's state (struct and array only, never pickle).

An encoded state is a run of little-endian 8-byte words: a fixed *head* (the
format version, the owner's scalars, then each aggregate's :meth:`~Part.head`
fields, every one a word) followed by the aggregates' bodies (flat runs of float64
or int64) in the same order; the head says how long each body is. Encoding packs
the head and joins the bodies; decoding unpacks the head and copies each body into
an array. Whole words let the batch kernels (:mod:`state.kernels`) read a state as
one int64 array and its float64 view.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from state.errors import StateFormatError

#: Leading byte of every encoded key state: the kernels' :data:`state.kernels.card.FORMAT`.
STATE_FORMAT_VERSION = 7

Head = tuple[Any, ...]
"""Unpacked head values (ints and floats, as the struct codes say)."""

class Part(Protocol):
    """An aggregate stored as fixed head fields plus a flat body (see :mod:`state.windows`)."""

    @property
    def head_codes(self) -> str:
        """Struct codes of :meth:`head`, one character per field."""
        ...

    def head(self) -> tuple[int | float, ...]:
        """Fixed fields, packed into the owner's head."""
        ...

    def body(self) -> array:
        """Variable part, its length given by the head fields."""
        ...

    def load(self, head: Head, i: int, body: memoryview, pos: int) -> tuple[int, int]:
        """Restore from ``head[i:]`` and ``body[pos:]``; return where the next part starts."""
        ...


def load_array(typecode: str, body: memoryview, pos: int, items: int) -> tuple[array, int]:
    """``items`` values of ``typecode`` from ``body`` at byte ``pos``, and the next position."""
    out = array(typecode)
    end = pos + items * out.itemsize
    out.frombytes(body[pos:end])
    return out, end


def pairs_array(pairs: dict[int, int]) -> array:
    """The body of an int -> int map: its keys, then its values, as int64."""
    return array("q", [*pairs, *pairs.values()])


def load_pairs(body: memoryview, pos: int, k: int) -> tuple[dict[int, int], int]:
    """The ``k``-entry map written by :func:`pairs_array` at byte ``pos``, and the next position."""
    flat, pos = load_array("q", body, pos, 2 * k)
    items = flat.tolist()
    return dict(zip(items[:k], items[k:], strict=True)), pos


class Layout:
    """Encoder and decoder of one kind of state (``what``): scalars, then ``parts``."""

    __slots__ = ("what", "head")

    def __init__(self, what: str, scalar_codes: str, parts: Iterable[Part]) -> None:
        self.what = what
        self.head = struct.Struct("<q" + scalar_codes + "".join(p.head_codes for p in parts))

    def encode(self, scalars: Sequence[int | float], parts: Sequence[Part]) -> bytes:
        """Versioned bytes of ``scalars`` and ``parts`` (in the order given to the layout)."""
        fields: list[int | float] = [STATE_FORMAT_VERSION, *scalars]
        for p in parts:
            fields += p.head()
        return b"".join([self.head.pack(*fields), *[p.body() for p in parts]])

    def decode_head(self, buf: bytes) -> Head:
        """The head values of ``buf`` (version first), after checking the version byte."""
        if not buf or buf[0] != STATE_FORMAT_VERSION:
            found = buf[0] if buf else "empty"
            raise StateFormatError(
                f"{self.what} state format version {found} unsupported (expected "
                f"{STATE_FORMAT_VERSION}): delete the state directory and restart"
            )
        return self.head.unpack_from(buf)

    def load(self, parts: Iterable[Part], values: Head, first: int, buf: bytes) -> None:
        """Restore ``parts`` in order: fields from ``values[first:]``, bodies after the head."""
        body, pos, i = memoryview(buf), self.head.size, first
        for part in parts:
            i, pos = part.load(values, i, body, pos)
        if pos != len(buf):
            raise StateFormatError(
                f"{self.what} state of {len(buf)} bytes ends at byte {pos}, so it is corrupt: "
                "delete the state directory and restart"
            )
