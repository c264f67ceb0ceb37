"""Routing tables and the recovery directory's routing (flows/routing.py, issue 25)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from devkit.process import init_recovery
from flows import routing
from topics.errors import ConfigError


def _snap(recovery: Path, key: str) -> None:
    """A shard's snapshot row, as Bytewax writes it (table ``snaps`` of a partition)."""
    (part,) = recovery.glob("*.sqlite3")
    with sqlite3.connect(part) as db:
        db.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
                   "VALUES ('fraud-score.card', ?, 3, NULL)", (key,))


def test_a_v1_recovery_directory_is_refused_by_v2_and_resumed_by_v1(tmp_path: Path) -> None:
    recovery = tmp_path / "recovery"
    init_recovery(recovery)
    routing.check_recovery(recovery, "v2")  # new and empty: any routing
    routing.check_recovery(None, "v2")
    _snap(recovery, routing.ROUTE_KEYS_V1[3])  # what a release before v2 wrote
    _snap(recovery, "0-transactions")  # an input partition's key: no routing's
    assert routing.recovery_routing(recovery) == {"v1"}
    with pytest.raises(ConfigError, match="FRAUD_ROUTING=v1 on every process"):
        routing.check_recovery(recovery, "v2")
    routing.check_recovery(recovery, "v1")


def test_shard_keys_follow_the_configured_table() -> None:
    try:
        routing.configure("v1")
        assert routing.shard_key(5) == routing.ROUTE_KEYS_V1[5]
        assert routing.shard_key(64) == "64"  # beyond v1's table: by hash
        routing.configure("v2")
        assert routing.shard_key(5) == routing.ROUTE_KEYS_V2[5]
        assert routing.shard_key(1023) == routing.ROUTE_KEYS_V2[1023]
        with pytest.raises(ConfigError, match="FRAUD_ROUTING"):
            routing.configure("v3")
    finally:
        routing.configure("v2")


def test_an_unreadable_recovery_partition_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "part-0.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match="cannot read the recovery directory"):
        routing.check_recovery(tmp_path, "v2")


def test_the_key_search_finds_the_shipped_keys() -> None:
    """``python -m devkit.route_keys`` regenerates the tables (first keys, both routings)."""
    from devkit.route_keys import bytewax_hash, find_suffix, siphash13

    assert siphash13(b"") == 0xD1FBA762150C532C  # SipHash-1-3, zero keys, empty input
    assert [find_suffix(s, 64) for s in range(8)] == [
        int(k.split(".")[1]) for k in routing.ROUTE_KEYS_V1[:8]]
    assert [f"{s}.{find_suffix(s, routing.V2_MODULUS)}" for s in range(4)] == list(
        routing.ROUTE_KEYS_V2[:4])
    assert bytewax_hash(routing.ROUTE_KEYS_V2[1000]) % routing.V2_MODULUS == 1000
