"""Typed errors of the rules room; each message says what to do."""

from __future__ import annotations

from topics.errors import FraudStreamError, InputError


class RuleError(FraudStreamError):
    """Base of the rules room's errors."""


class RuleCompileError(RuleError):
    """An expression could not be compiled; the flow turns this into a refusal, never a crash."""


class RulesFileError(InputError):
    """A rules or lists file (YAML/JSON) is unreadable or invalid; the message names the entry."""


class SnapshotError(RuleError):
    """A rule book snapshot cannot be restored; rebuild the book from the rules/lists topics."""
