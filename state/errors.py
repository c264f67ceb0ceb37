"""Typed errors for the state room; each message says how to fix the problem."""

from topics.errors import FraudStreamError


class StateError(FraudStreamError):
    """Base of every error the state room raises on purpose."""


class StateFormatError(StateError):
    """Stored state was written by an incompatible format or feature-spec version."""


class ReplayGapError(StateError):
    """A replayed offset is older than the retained outputs, so its vector is gone."""


class StoreIOError(StateError):
    """RocksDB could not open or write a partition's state directory."""


class StateIdentityError(StateError):
    """A state store belongs to another topic (or shard, or role) than the one asked for."""


class StaleStateError(StateError):
    """A state store is behind the recovery snapshot the flow resumed from."""
