"""The recovery-backup topic on the session's broker: copy, restore, and the command line.

The whole flow's use of it (process 0's volume lost after a SIGKILL of the cluster, and
every score still the offline answer) is in ``test_rescale.py``.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from changelog.recovery import BackupError, RecoveryBackup
from flowkit import topic_set
from topics.admin import ensure_topics
from topics.settings import KafkaSettings

pytestmark = pytest.mark.integration


def _command(settings: KafkaSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers or "",
           "FRAUD_TOPIC_PREFIX": settings.topic_prefix}
    return subprocess.run([sys.executable, "-m", "changelog.recovery", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _epochs(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT snap_epoch FROM snaps ORDER BY snap_epoch")]
    finally:
        db.close()


def test_copies_restore_a_lost_recovery_directory(kafka: KafkaSettings,
                                                  tmp_path: Path) -> None:
    settings = topic_set(kafka, "backup")
    ensure_topics(settings)
    first = _command(settings, "restore", str(tmp_path / "fresh"))  # no topic yet: no copy
    assert first.returncode == 0, first.stderr
    assert "holds no copy: new recovery partitions are needed" in first.stdout
    assert not list((tmp_path / "fresh").glob("*.sqlite3"))

    live = tmp_path / "live"
    live.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(live), "2"], check=True)
    db = sqlite3.connect(live / "part-1.sqlite3")
    backup = RecoveryBackup(settings, settings.topic("transactions"), "")
    backup.ensure()
    for epoch in (1, 2):  # two copies: the second goes to the other slot
        db.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
                   "VALUES ('s', 'k', ?, ?)", (epoch, os.urandom(700_000)))
        db.commit()
        assert backup.upload(live) > 700_000
    db.close()
    copies = backup.read()
    assert sorted(copies) == ["part-0.sqlite3", "part-1.sqlite3"]
    assert copies["part-1.sqlite3"][0].slot == 1 and copies["part-1.sqlite3"][0].chunks >= 2
    assert copies["part-0.sqlite3"][0].slot == 0  # unchanged since the first copy: not re-sent

    lost = tmp_path / "lost"
    done = _command(settings, "restore", str(lost))
    assert done.returncode == 0, done.stderr
    assert "restored part-1.sqlite3" in done.stdout
    assert _epochs(lost / "part-1.sqlite3") == [1, 2]
    again = _command(settings, "restore", str(lost))  # partitions there: left alone
    assert "nothing to restore" in again.stdout
    shown = _command(settings, "show")
    assert "part-0.sqlite3" in shown.stdout and "part-1.sqlite3" in shown.stdout

    other = RecoveryBackup(settings, settings.topic("transactions"), "AAAAAAAAAAAAAAAAAAAAAA")
    other.transactions = ("elsewhere.transactions", "")
    with pytest.raises(BackupError, match="belongs to topic"):
        other.restore(tmp_path / "elsewhere")
