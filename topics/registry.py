"""The topic registry: every topic's logical name, key, partitions and configs, in one place.

``just topics`` (``python -m devkit.topics``) creates them idempotently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import msgspec

from topics.contracts import (
    DeadLetter,
    DriftSnapshot,
    Label,
    ListEntry,
    Prediction,
    Rule,
    RuleAudit,
    Transaction,
)

DAY_MS = 24 * 3600 * 1000
DEFAULT_PARTITIONS = 8


@dataclass(frozen=True)
class TopicSpec:
    """One topic: what it carries, how it is keyed and how the broker keeps it."""

    logical: str
    contract: type[msgspec.Struct]
    key: str
    partitions: int = DEFAULT_PARTITIONS
    config: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""


def _config(**values: str) -> MappingProxyType[str, str]:
    return MappingProxyType({k.replace("_", "."): v for k, v in values.items()})


#: Compacted, deletes (tombstones) kept a week so every reader sees them.
_COMPACT = _config(cleanup_policy="compact", min_compaction_lag_ms="0",
                   delete_retention_ms=str(7 * DAY_MS))


TOPICS: MappingProxyType[str, TopicSpec] = MappingProxyType(
    {
        spec.logical: spec
        for spec in (
            TopicSpec(
                "transactions",
                Transaction,
                key="card_id",
                config=_config(retention_ms=str(7 * DAY_MS)),
                description="Card transactions from the payment systems.",
            ),
            TopicSpec(
                "predictions",
                Prediction,
                key="transaction_id",
                config=_config(retention_ms=str(7 * DAY_MS)),
                description="One verdict per transaction.",
            ),
            TopicSpec(
                "labels",
                Label,
                key="transaction_id",
                # Compacted: the latest label per transaction is what matters.
                config=_config(cleanup_policy="compact", min_compaction_lag_ms=str(DAY_MS)),
                description="Fraud / not-fraud ground truth, known from label_time on.",
            ),
            TopicSpec(
                "drift",
                DriftSnapshot,
                key="<window_start>/<model_version>",
                partitions=1,
                config=_config(retention_ms=str(30 * DAY_MS)),
                description="Per-window data-drift snapshots.",
            ),
            TopicSpec(
                "dead-letter",
                DeadLetter,
                key="original message key",
                config=_config(retention_ms=str(30 * DAY_MS)),
                description="Records that could not be used: a bounded copy, where, and why.",
            ),
            TopicSpec(
                "rules",
                Rule,
                key="rule id",
                partitions=1,  # one order for every reader
                config=_COMPACT,
                description="Analyst rules (CEL), compacted: the latest version per rule id.",
            ),
            TopicSpec(
                "lists",
                ListEntry,
                key="<list>/<value>",
                partitions=1,
                config=_COMPACT,
                description="Analyst list entries (blocklists, allowlists), compacted.",
            ),
            TopicSpec(
                "rules-audit",
                RuleAudit,
                key="<topic>/<rule id or list key>",
                partitions=1,  # one order: the history of every change
                # append-only and kept (never compacted): who changed what, when, why
                config=_config(cleanup_policy="delete", retention_ms="-1"),
                description="Every rule and list change the publisher made (audit trail).",
            ),
        )
    }
)
