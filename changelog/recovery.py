"""Bytewax's recovery partitions copied to a compacted topic: pod 0's volume is not the only copy.

Process 0 of a cluster holds Bytewax's recovery partitions (SQLite files,
``docker/fraud-flow.sh``): the input offsets and the stages' snapshots of every
epoch. The stores have their changelogs (:mod:`changelog.kafka`); with
``FRAUD_CHANGELOG=on`` process 0 also copies its partitions, every
``FRAUD_RECOVERY_BACKUP_SECONDS`` (30) and once more after a clean stop, to the
compacted topic ``recovery-backup`` (one partition, under ``FRAUD_TOPIC_PREFIX``).
When process 0 starts on a recovery directory without partitions (a new or lost
volume), ``python -m changelog.recovery restore <dir>`` writes the latest copies
back first; only when the topic holds none are new partitions created.

**Why an older recovery point is safe.** A copy is a consistent image of each
partition (SQLite's online backup), so restoring it is a crash and restart at
that moment: Bytewax resumes from the copy's last committed epoch and reads the
inputs again from its offsets. The stores, rebuilt from their changelogs, are
then ahead of it, and they are idempotent by transaction id (and label id): what
they already applied comes back as a repeat, and its stored verdict is published
again, byte for byte the same (those since the copy's last committed snapshot: up to
the copy interval plus the snapshot interval, more while copies fail). The card
stores keep the rows of their last :attr:`state.options.StoreOptions.recent_rows`
changes (200,000 per store) for that; an interval of minutes is far inside it.
Partitions copied a few milliseconds apart stay consistent with each other as
long as Bytewax keeps old snapshots for at least the interval (its
``backup_interval``, ``python -m bytewax.run -b``): :func:`check_run` refuses a
shorter one when there is more than one partition.

**Records.** Key ``<file>`` holds the manifest (JSON: slot, chunk count, size,
SHA-256, when taken, the ``transactions`` topic and its broker id); keys
``<file>/<slot>/<i>`` hold the image in chunks of :data:`CHUNK_BYTES`. Uploads
alternate between two slots and write the manifest last, so an upload cut short
never spoils the copy the manifest names. A copy made for another ``transactions``
topic (or the same name re-created: another topic id) is refused on restore.

Who may read this topic may read the recovery snapshots (offsets, held
transactions): give it the ACLs of the changelog topics (:doc:`docs/kafka-acls.md`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from changelog.kafka import read_partition
from topics.admin import create_topic, topic_partitions
from topics.errors import BrokerError, ConfigError, FraudStreamError
from topics.producer import PRODUCER_DEFAULTS
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)

#: The topic's logical name (under ``FRAUD_TOPIC_PREFIX``).
TOPIC = "recovery-backup"
#: Compacted (the latest manifest and chunks of each slot); old copies go within minutes.
CONFIG = {"cleanup.policy": "compact", "segment.ms": str(600_000),
          "min.cleanable.dirty.ratio": "0.1", "delete.retention.ms": str(3_600_000)}
#: Largest chunk of an image (the broker's default message limit is 1 MB).
CHUNK_BYTES = 512 << 10
FORMAT = 1
#: Bytewax's partition files (``python -m bytewax.recovery``).
PATTERN = "*.sqlite3"

BACKUP_TIME = Gauge(
    "fraud_recovery_backup_timestamp_seconds",
    "When process 0 last copied its recovery partitions to the recovery-backup topic "
    "(Unix seconds; 0 before the first copy). A pod-0 volume loss rewinds to it.",
)
BACKUP_BYTES = Gauge("fraud_recovery_backup_bytes",
                     "Size of the last copy of the recovery partitions (all partitions).")
BACKUP_FAILURES = Counter(
    "fraud_recovery_backup_failures_total",
    "Copies of the recovery partitions that failed (the broker; retried at the next interval).",
)


class BackupError(FraudStreamError):
    """A recovery backup that cannot be used: incomplete, corrupt, or another topic's."""


@dataclass(frozen=True)
class Manifest:
    """What one copy of one partition is: where its chunks are and how to check them."""

    file: str
    slot: int
    chunks: int
    size: int
    sha256: str
    taken_ms: int
    topic: str
    topic_id: str

    def encode(self) -> bytes:
        """JSON bytes (the manifest record's value)."""
        return json.dumps({"format": FORMAT, **self.__dict__}, sort_keys=True).encode()

    @classmethod
    def decode(cls, value: bytes) -> Manifest:
        """Parse a manifest record; :class:`BackupError` if it is not one we can read."""
        try:
            fields = json.loads(value)
            if fields.pop("format") != FORMAT:
                raise ValueError("another format")
            return cls(**fields)
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupError(f"unreadable recovery backup manifest: {exc}") from exc

    def describe(self) -> str:
        """``part-0.sqlite3 (123,456 bytes, taken 2026-12-07T19:00:00Z)``."""
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.taken_ms / 1000))
        return f"{self.file} ({self.size:,} bytes, taken {at})"


def partitions(recovery_dir: Path) -> list[Path]:
    """Bytewax's partition files in ``recovery_dir``, sorted."""
    return sorted(Path(recovery_dir).glob(PATTERN))


#: Run in a child process by :func:`copy_partition`: the path in ``argv[1]``, the image out.
_COPY = """
import sqlite3, sys
source = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=30)
target = sqlite3.connect(":memory:")
source.backup(target)
source.close()
target.execute("VACUUM")  # Bytewax's deleted snapshots leave half the pages free
sys.stdout.buffer.write(target.serialize())
"""


def copy_partition(path: Path, timeout: float = 120.0) -> bytes:
    """A consistent image of one SQLite partition while Bytewax writes it (online backup).

    Made in a child process, never in the flow's: Bytewax links its own SQLite, and two
    SQLite libraries in one process break each other's POSIX locks on the same file
    (closing one's descriptor drops the other's locks; sqlite.org/howtocorrupt.html
    2.2.1). In the flow's process this crashed it with SIGBUS. Raises ``OSError``.
    """
    done = subprocess.run([sys.executable, "-c", _COPY, str(path)], capture_output=True,
                          timeout=timeout, check=False)
    if done.returncode != 0 or not done.stdout:
        raise OSError(f"cannot copy {path}: {done.stderr.decode(errors='replace')[-500:]}")
    return done.stdout


def records(manifest: Manifest, image: bytes) -> list[tuple[bytes, bytes]]:
    """The records of one copy: its chunks, then its manifest (which must come last)."""
    chunks = [image[i:i + CHUNK_BYTES] for i in range(0, len(image), CHUNK_BYTES)] or [b""]
    assert len(chunks) == manifest.chunks
    out = [(f"{manifest.file}/{manifest.slot}/{i}".encode(), chunk)
           for i, chunk in enumerate(chunks)]
    return [*out, (manifest.file.encode(), manifest.encode())]


def latest(stream: Iterable[tuple[bytes, bytes | None]]) -> dict[str, Manifest | bytes]:
    """What compaction keeps of the topic's records: the last value of each key.

    Manifests (keys without ``/``) are decoded; chunks are kept as bytes.
    """
    found: dict[str, Manifest | bytes] = {}
    for key, value in stream:
        name = key.decode()
        if value is None:
            found.pop(name, None)
        else:
            found[name] = value if "/" in name else Manifest.decode(value)
    return found


def images(found: dict[str, Manifest | bytes]) -> dict[str, tuple[Manifest, bytes]]:
    """Each partition's latest complete copy, checked; :class:`BackupError` when one is not."""
    out: dict[str, tuple[Manifest, bytes]] = {}
    for name, manifest in sorted(found.items()):
        if not isinstance(manifest, Manifest):
            continue
        parts = [found.get(f"{name}/{manifest.slot}/{i}") for i in range(manifest.chunks)]
        image = b"".join(p for p in parts if isinstance(p, bytes))
        if (any(not isinstance(p, bytes) for p in parts) or len(image) != manifest.size
                or hashlib.sha256(image).hexdigest() != manifest.sha256):
            raise BackupError(f"the recovery backup of {manifest.describe()} is incomplete "
                              "or corrupt (its chunks do not match its manifest)")
        out[name] = (manifest, image)
    return out


def check_identity(copies: dict[str, tuple[Manifest, bytes]], topic: str,
                   topic_id: str) -> None:
    """Refuse copies made for another ``transactions`` topic (:class:`BackupError`)."""
    for manifest, _ in copies.values():
        if manifest.topic != topic or (manifest.topic_id and topic_id
                                       and manifest.topic_id != topic_id):
            raise BackupError(
                f"the recovery backup {manifest.describe()} belongs to topic "
                f"{manifest.topic!r} (id {manifest.topic_id or 'unknown'}), not {topic!r} "
                f"(id {topic_id or 'unknown'}): the topic was re-created or the prefix is "
                "shared. Delete the recovery-backup and changelog topics to start over"
            )


def write_partitions(recovery_dir: Path, copies: dict[str, tuple[Manifest, bytes]]) -> None:
    """Write the copies as partition files (each through a temporary file and a rename)."""
    recovery_dir.mkdir(parents=True, exist_ok=True)
    for name, (_, image) in copies.items():
        if Path(name).name != name or not name.endswith(".sqlite3"):
            raise BackupError(f"a recovery backup names the file {name!r}: refused")
        temporary = recovery_dir / f".{name}.restoring"
        with temporary.open("wb") as out:
            out.write(image)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, recovery_dir / name)


class RecoveryBackup:
    """The ``recovery-backup`` topic of one ``transactions`` topic: copy, read, restore."""

    def __init__(self, settings: KafkaSettings, topic: str, topic_id: str) -> None:
        self.settings = settings
        self.topic = settings.topic(TOPIC)
        self.transactions = (topic, topic_id)
        self._slots: dict[str, int] = {}
        self._sent: dict[str, str] = {}
        """SHA-256 of each partition's image this process last delivered (not sent again)."""
        self._producer: Any = None

    def __repr__(self) -> str:
        return f"RecoveryBackup({self.topic!r})"

    def ensure(self) -> None:
        """Create the topic if it is missing."""
        create_topic(self.settings, self.topic, 1, CONFIG)

    def read(self) -> dict[str, tuple[Manifest, bytes]]:
        """The latest complete copy of each partition (empty: none yet)."""
        copies = images(latest(read_partition(self.settings, self.topic, 0)))
        check_identity(copies, *self.transactions)
        return copies

    def restore(self, recovery_dir: Path) -> list[Manifest]:
        """Write the latest copies into ``recovery_dir`` if it holds no partition; what was.

        Does nothing (returns ``[]``) when the directory already has partitions or the
        topic holds no copy. Raises :class:`BackupError` or :class:`BrokerError`.
        """
        if partitions(recovery_dir):
            return []
        copies = self.read()
        write_partitions(recovery_dir, copies)
        return [manifest for manifest, _ in copies.values()]

    def upload(self, recovery_dir: Path) -> int:
        """Copy every partition of ``recovery_dir`` to the topic; the bytes of the copy.

        A partition whose image is the one this process last delivered (an idle flow's)
        is not sent again. Waits for the broker's acknowledgement. Raises
        :class:`BrokerError`, or ``OSError`` when a partition cannot be read.
        """
        from confluent_kafka import Producer

        if self._producer is None:
            if not self._slots:  # the slot the last manifest names is not written over
                self._slots = {name: m.slot for name, (m, _) in self.read().items()}
            self._producer = Producer({**self.settings.client_config(**PRODUCER_DEFAULTS),
                                       "log_level": 4})
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        total = 0
        for path in partitions(recovery_dir):
            image = copy_partition(path)
            total += len(image)
            digest = hashlib.sha256(image).hexdigest()
            if self._sent.get(path.name) == digest:
                continue
            slot = 1 - self._slots.get(path.name, 1)
            manifest = Manifest(path.name, slot, max(1, -(-len(image) // CHUNK_BYTES)),
                                len(image), digest, int(time.time() * 1000),
                                *self.transactions)
            for key, value in records(manifest, image):
                self._producer.produce(self.topic, value, key, 0, on_delivery=delivered)
            if self._producer.flush(30.0) or failures:
                raise BrokerError(f"the recovery backup of {path.name} was not delivered to "
                                  f"{self.topic!r}: {failures[:1] or 'timed out'}")
            self._slots[path.name] = slot
            self._sent[path.name] = digest
        return total

    def close(self) -> None:
        """Drop the producer (after a flush: nothing is left in it)."""
        self._producer = None


class BackupThread(threading.Thread):
    """Process 0's copies of its recovery partitions, every ``seconds`` and once at the end."""

    def __init__(self, backup: RecoveryBackup, recovery_dir: Path, seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name="recovery-backup", daemon=True)
        self.backup = backup
        self.recovery_dir = Path(recovery_dir)
        self.seconds = seconds
        self._clock = clock
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        """Copy every ``seconds`` until :meth:`final`."""
        while not self._stop_event.wait(self.seconds):
            self.once()

    def once(self) -> bool:
        """Copy now; False (logged, counted, retried next time) when it failed."""
        with self._lock:
            started = self._clock()
            try:
                size = self.backup.upload(self.recovery_dir)
            except (FraudStreamError, OSError, subprocess.SubprocessError) as exc:
                BACKUP_FAILURES.inc()
                log.warning("recovery backup failed (retried in %s s): %s", self.seconds, exc)
                return False
            BACKUP_TIME.set(started)
            BACKUP_BYTES.set(size)
            log.debug("recovery partitions copied to %s: %d bytes in %.2f s",
                      self.backup.topic, size, self._clock() - started)
            return True

    def final(self) -> None:
        """After a clean stop (Bytewax's final snapshot committed): stop, and copy once more."""
        self._stop_event.set()
        if self.once():
            log.info("recovery partitions copied to %s after the final snapshot",
                     self.backup.topic)


def check_run(seconds: float, backup_interval_s: float | None, recovery_dir: Path) -> None:
    """Refuse a Bytewax ``-b`` shorter than the copy interval when there are several partitions.

    Partitions are copied one after another; Bytewax must keep the snapshots each copy
    may still need for that long (``RecoveryConfig.backup_interval``). Raises
    :class:`ConfigError`.
    """
    if len(partitions(recovery_dir)) > 1 and (backup_interval_s or 0) < seconds:
        raise ConfigError(
            f"{len(partitions(recovery_dir))} recovery partitions are copied every {seconds:g} s "
            f"(FRAUD_RECOVERY_BACKUP_SECONDS), but Bytewax deletes old snapshots after "
            f"{backup_interval_s or 0:g} s: start python -m bytewax.run with -b {seconds:g} "
            "or more (docker/fraud-flow.sh does)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m changelog.recovery restore|show <recovery dir>``; exit 0, 1 (refused)."""
    from health.watch import topic_identity

    parser = argparse.ArgumentParser(
        prog="python -m changelog.recovery",
        description="Bytewax's recovery partitions, copied by process 0 to the compacted "
        "topic recovery-backup (FRAUD_CHANGELOG=on). `restore` writes the latest copies into "
        "a recovery directory that holds no partition (a new or lost volume of process 0) "
        "and does nothing otherwise; `show` lists the copies. Reads KAFKA_BOOTSTRAP_SERVERS, "
        "FRAUD_TOPIC_PREFIX and the other Kafka settings from the environment.",
    )
    parser.add_argument("command", choices=("restore", "show"))
    parser.add_argument("recovery_dir", type=Path, nargs="?",
                        help="the recovery directory (restore)")
    args = parser.parse_args(argv)
    try:
        settings = KafkaSettings.required_from_env()
        transactions = settings.topic("transactions")
        identity = topic_identity(settings, transactions)
        backup = RecoveryBackup(settings, transactions, identity.topic_id or "")
        if args.command == "show":
            if backup.topic not in topic_partitions(settings):
                print(f"{backup.topic} does not exist: no copy yet (FRAUD_CHANGELOG=on "
                      "makes process 0 write it)")
                return 0
            copies = backup.read()
            for manifest, _ in copies.values():
                print(manifest.describe())
            if not copies:
                print(f"{backup.topic}: no copy yet")
            return 0
        if args.recovery_dir is None:
            parser.error("restore needs the recovery directory")
        if partitions(args.recovery_dir):
            print(f"{args.recovery_dir} has its recovery partitions: nothing to restore")
            return 0
        backup.ensure()  # a first start: no topic yet, so no copy
        restored = backup.restore(args.recovery_dir)
        for manifest in restored:
            print(f"restored {manifest.describe()} from {backup.topic} into "
                  f"{args.recovery_dir}")
        if not restored:
            print(f"{backup.topic} holds no copy: new recovery partitions are needed")
        return 0
    except (FraudStreamError, OSError) as exc:
        print(f"changelog.recovery: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
