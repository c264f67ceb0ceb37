"""Little-endian binary packing helpers for state objects (struct only, never pickle)."""

from __future__ import annotations

import struct

from state.errors import StateFormatError

#: Leading byte of every encoded key state; bump when the layout changes.
STATE_FORMAT_VERSION = 2

_HEADER = struct.Struct("<B")


class Reader:
    """Sequential reader over one encoded state value."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: struct.Struct) -> tuple[object, ...]:
        """Read one fixed-size record."""
        out = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return out

    def unpack_fmt(self, fmt: str) -> tuple[object, ...]:
        """Read one variable-size record described by a struct format string."""
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return out


def header() -> bytes:
    """The version byte every encoded state starts with."""
    return _HEADER.pack(STATE_FORMAT_VERSION)


def open_reader(buf: bytes, what: str) -> Reader:
    """Check the version byte of ``buf`` and return a reader positioned after it."""
    if not buf or buf[0] != STATE_FORMAT_VERSION:
        found = buf[0] if buf else "empty"
        raise StateFormatError(
            f"{what} state format version {found} unsupported (expected "
            f"{STATE_FORMAT_VERSION}): delete the state directory and restart"
        )
    reader = Reader(buf)
    reader.pos = 1
    return reader
