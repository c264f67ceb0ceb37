"""``python -m changelog delete [--yes]``: delete the flow's changelog and recovery-backup topics.

The step of a shard-count change (README, "Changing the shard counts") or of starting a
deployment over: the topics hold the stores' contents and the copies of the recovery
partitions, made with the shard counts they were made with. Stop every flow process
first, and delete the state and recovery volumes too, or the flow refuses to start.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from changelog.kafka import CHANGELOGS
from changelog.recovery import TOPIC as RECOVERY_BACKUP
from topics.admin import delete_topics
from topics.errors import FraudStreamError
from topics.settings import KafkaSettings


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 (deleted, or nothing to delete), 1 (the broker refused), 2 (no ``--yes``)."""
    parser = argparse.ArgumentParser(
        prog="python -m changelog",
        description="Delete the stores' changelog topics (cards-changelog, merchants-changelog) "
        "and the recovery-backup topic, under FRAUD_TOPIC_PREFIX: the step of a change of "
        "FRAUD_CARD_SHARDS or FRAUD_MERCHANT_SHARDS, after the flow is stopped and before it "
        "starts on empty state and recovery volumes (it then rebuilds from the topics). Reads "
        "KAFKA_BOOTSTRAP_SERVERS and the other Kafka settings from the environment.",
    )
    parser.add_argument("command", choices=("delete",))
    parser.add_argument("--yes", action="store_true",
                        help="really delete (without it: say what would be deleted)")
    args = parser.parse_args(argv)
    try:
        settings = KafkaSettings.required_from_env()
        names = [settings.topic(t) for t in (*CHANGELOGS.values(), RECOVERY_BACKUP)]
        if not args.yes:
            print(f"would delete {', '.join(names)} on {settings.bootstrap_servers}: the "
                  "stores' changelogs and the copies of the recovery partitions. Stop every "
                  "flow process first; add --yes to delete", file=sys.stderr)
            return 2
        deleted = delete_topics(settings, names)
        print(f"deleted {', '.join(deleted)}" if deleted else f"none of {', '.join(names)} exists")
        return 0
    except FraudStreamError as exc:
        print(f"python -m changelog: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
