"""The compact verdict kept per transaction id, so late labels can be joined to it.

>>> r = VerdictRecord(1_700_000_000_000, 0.75, "review", "m1", "decline", "m2")
>>> VerdictRecord.decode(r.encode()) == r
True
"""

from __future__ import annotations

import struct
from typing import NamedTuple

DECISIONS = ("approve", "review", "decline")
_CODE = {d: i for i, d in enumerate(DECISIONS)}
_NONE = 255
_HEAD = struct.Struct("<qfBB")


class VerdictRecord(NamedTuple):
    """What a label needs from a verdict: when, score, decisions and the versions behind them."""

    event_time: int
    score: float
    decision: str
    model_version: str
    shadow_decision: str | None = None
    shadow_model_version: str | None = None

    def encode(self) -> bytes:
        """Bytes for the store (about 30 bytes)."""
        shadow = _CODE[self.shadow_decision] if self.shadow_decision is not None else _NONE
        head = _HEAD.pack(self.event_time, self.score, _CODE[self.decision], shadow)
        return b"%s%s\x00%s" % (
            head, self.model_version.encode(), (self.shadow_model_version or "").encode()
        )

    @classmethod
    def decode(cls, raw: bytes) -> VerdictRecord:
        """Inverse of :meth:`encode`."""
        event_time, score, decision, shadow = _HEAD.unpack_from(raw)
        version, _, shadow_version = raw[_HEAD.size:].decode().partition("\x00")
        return cls(
            event_time, score, DECISIONS[decision], version,
            DECISIONS[shadow] if shadow != _NONE else None,
            shadow_version if shadow != _NONE else None,
        )
