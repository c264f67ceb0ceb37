"""The copies of Bytewax's recovery partitions (changelog/recovery.py), without a broker.

Real SQLite partitions made by ``python -m bytewax.recovery``, written to while they are
copied, as Bytewax does; the topic is stood in for by a list of records read back with
Kafka's compaction (the last value of each key).
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from changelog.recovery import (
    CHUNK_BYTES,
    BackupError,
    BackupThread,
    Manifest,
    check_identity,
    check_run,
    copy_partition,
    images,
    latest,
    records,
    write_partitions,
)
from topics.errors import BrokerError, ConfigError

TOPIC, TOPIC_ID = "p.transactions", "AAAAAAAAAAAAAAAAAAAAAA"


def _partitions(directory: Path, count: int = 1) -> list[Path]:
    directory.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(directory), str(count)],
                   check=True, capture_output=True)
    return sorted(directory.glob("*.sqlite3"))


def _snap(db: sqlite3.Connection, epoch: int, size: int) -> None:
    db.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES "
               "('fraud-score.merchant', 'm0', ?, ?)", (epoch, bytes([epoch % 251]) * size))
    db.commit()


def _rows(path: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT step_id, state_key, snap_epoch, ser_change FROM snaps "
                          "ORDER BY snap_epoch").fetchall()
    finally:
        db.close()


def _copy(path: Path, slot: int) -> tuple[Manifest, bytes]:
    image = copy_partition(path)
    return Manifest(path.name, slot, max(1, -(-len(image) // CHUNK_BYTES)), len(image),
                    hashlib.sha256(image).hexdigest(), 1, TOPIC, TOPIC_ID), image


def test_a_copy_of_a_live_partition_restores_to_the_same_snapshots(tmp_path: Path) -> None:
    (part,) = _partitions(tmp_path / "live")
    live = sqlite3.connect(part)  # Bytewax's connection, open (WAL) while we copy
    for epoch in range(1, 4):
        _snap(live, epoch, CHUNK_BYTES // 2)  # the image spans several chunks
    manifest, image = _copy(part, 0)
    _snap(live, 4, 10)  # written after the copy: not in it
    topic = records(manifest, image)
    assert manifest.chunks > 1 and topic[-1][0] == b"part-0.sqlite3"  # the manifest last
    copies = images(latest(topic))
    write_partitions(tmp_path / "restored", copies)
    assert [r[2] for r in _rows(tmp_path / "restored" / "part-0.sqlite3")] == [1, 2, 3]
    assert _rows(tmp_path / "restored" / "part-0.sqlite3") == _rows(part)[:3]
    live.close()


def test_an_upload_cut_short_leaves_the_last_complete_copy(tmp_path: Path) -> None:
    (part,) = _partitions(tmp_path / "live")
    live = sqlite3.connect(part)
    _snap(live, 1, 1000)
    first = records(*_copy(part, 0))
    _snap(live, 2, 3 * CHUNK_BYTES)
    second = records(*_copy(part, 1))  # the other slot
    cut = second[:-2]  # died before its last chunk and its manifest
    copies = images(latest([*first, *cut]))
    write_partitions(tmp_path / "restored", copies)
    assert [r[2] for r in _rows(tmp_path / "restored" / "part-0.sqlite3")] == [1]
    copies = images(latest([*first, *second]))  # complete: the newer one
    assert copies["part-0.sqlite3"][0].slot == 1
    live.close()


def test_a_corrupt_copy_or_another_topics_copy_is_refused(tmp_path: Path) -> None:
    (part,) = _partitions(tmp_path / "live")
    manifest, image = _copy(part, 0)
    topic = records(manifest, image)
    spoiled = [(k, v[:-1] + b"x") if k.endswith(b"/0/0") else (k, v) for k, v in topic]
    with pytest.raises(BackupError, match="incomplete or corrupt"):
        images(latest(spoiled))
    copies = images(latest(topic))
    check_identity(copies, TOPIC, TOPIC_ID)
    with pytest.raises(BackupError, match="re-created"):
        check_identity(copies, TOPIC, "BBBBBBBBBBBBBBBBBBBBBB")
    with pytest.raises(BackupError, match="not 'q.transactions'"):
        check_identity(copies, "q.transactions", TOPIC_ID)
    evil = {"../x.sqlite3": copies["part-0.sqlite3"]}
    with pytest.raises(BackupError, match="refused"):
        write_partitions(tmp_path / "restored", evil)
    with pytest.raises(BackupError, match="unreadable"):
        latest([(b"part-0.sqlite3", b"{not json")])


def test_a_deleted_key_is_gone_as_compaction_leaves_it() -> None:
    found = latest([(b"a/0/0", b"x"), (b"a/0/0", None), (b"a/0/1", b"y")])
    assert found == {"a/0/1": b"y"}
    assert images(found) == {}  # chunks without a manifest: no copy


def test_several_partitions_need_bytewax_to_keep_snapshots_as_long(tmp_path: Path) -> None:
    _partitions(tmp_path / "one", 1)
    check_run(30, 0, tmp_path / "one")  # one partition: its copy is consistent alone
    _partitions(tmp_path / "two", 2)
    check_run(30, 30, tmp_path / "two")
    with pytest.raises(ConfigError, match="-b 30"):
        check_run(30, 0, tmp_path / "two")


class _Failing:
    topic = "p.recovery-backup"

    def upload(self, recovery_dir: Path) -> int:
        raise BrokerError("broker down")


def test_a_failed_copy_is_counted_and_tried_again(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from changelog.recovery import BACKUP_FAILURES

    thread = BackupThread(_Failing(), tmp_path, 30)  # type: ignore[arg-type]
    before = BACKUP_FAILURES._value.get()
    assert thread.once() is False
    assert BACKUP_FAILURES._value.get() == before + 1
    assert "recovery backup failed (retried in 30 s): broker down" in caplog.text
