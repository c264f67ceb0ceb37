"""Topic administration: create the registry's topics idempotently, read partition counts.

Every topic in :data:`topics.registry.TOPICS` is created with its partition
count and configs. A topic that already exists is left alone; if it has fewer
partitions than the registry asks for, that is reported (key-to-partition
mapping would change if partitions were added, so we never add them silently).
The command line over these functions is ``just topics`` (:mod:`devkit.topics`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from topics.errors import BrokerError, ConfigError
from topics.registry import TOPICS
from topics.settings import BOOTSTRAP_ENV, KafkaSettings

log = logging.getLogger(__name__)

Status = Literal["created", "exists"]

#: Kafka error code for TOPIC_ALREADY_EXISTS.
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicState:
    """One registry topic as found (or made) on the broker."""

    logical: str
    name: str
    status: Status
    wanted_partitions: int
    partitions: int

    @property
    def note(self) -> str:
        """A warning for the operator, or ``""``."""
        if self.partitions < self.wanted_partitions:
            return (
                f"has {self.partitions} partitions, the registry wants {self.wanted_partitions}: "
                "parallelism is capped; recreate the topic to change it"
            )
        if self.partitions > self.wanted_partitions:
            return f"has {self.partitions} partitions, more than {self.wanted_partitions} wanted"
        return ""


def _admin(settings: KafkaSettings) -> Any:
    from confluent_kafka.admin import AdminClient

    config: dict[str, str | int | float | bool] = {**settings.client_config()}
    return AdminClient(config)


def topic_partitions(settings: KafkaSettings, timeout: float = 10.0) -> dict[str, int]:
    """Every topic on the broker and its partition count."""
    from confluent_kafka import KafkaException

    try:
        metadata = _admin(settings).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(
            f"cannot list topics on {settings.bootstrap_servers}: {exc}; "
            f"check {BOOTSTRAP_ENV} and that the broker is running"
        ) from exc
    return {name: len(meta.partitions) for name, meta in metadata.topics.items()}


def partition_count(settings: KafkaSettings, topic: str) -> int:
    """Partitions of ``topic`` (a real name); stop with a remedy if it does not exist."""
    found = topic_partitions(settings).get(topic, 0)
    if not found:
        raise ConfigError(
            f"topic {topic!r} does not exist on {settings.bootstrap_servers}; "
            "create the topics with `just topics` (python -m devkit.topics)"
        )
    return found


def ensure_topic_states(
    settings: KafkaSettings, partitions_override: int | None = None, timeout: float = 30.0
) -> list[TopicState]:
    """Create missing registry topics; describe every registry topic afterwards."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin = _admin(settings)
    wanted = {
        logical: (settings.topic(logical), partitions_override or spec.partitions, spec)
        for logical, spec in TOPICS.items()
    }
    existing = topic_partitions(settings, timeout)
    new = [
        NewTopic(name, num_partitions=partitions, config=dict(spec.config))
        for name, partitions, spec in wanted.values()
        if name not in existing
    ]
    created: set[str] = set()
    if new:
        for name, future in admin.create_topics(new, request_timeout=timeout).items():
            try:
                future.result(timeout)
                created.add(name)
            except KafkaException as exc:
                if exc.args[0].code() != _TOPIC_ALREADY_EXISTS:  # lost a race: fine
                    raise BrokerError(f"cannot create topic {name!r}: {exc}") from exc
    after = topic_partitions(settings, timeout)
    states = []
    for logical, (name, partitions, _) in wanted.items():
        state = TopicState(
            logical,
            name,
            "created" if name in created else "exists",
            partitions,
            after.get(name, partitions),
        )
        if state.note:
            log.warning("topic %s %s", name, state.note)
        states.append(state)
    return states


def ensure_topics(
    settings: KafkaSettings, partitions_override: int | None = None, timeout: float = 30.0
) -> dict[str, Status]:
    """Create every registry topic that is missing; map real topic name to what happened.

    Idempotent. A pre-existing topic with fewer partitions than wanted is logged
    as a warning (``topics.admin`` logger), never an error.
    """
    return {
        s.name: s.status for s in ensure_topic_states(settings, partitions_override, timeout)
    }


def create_topic(settings: KafkaSettings, name: str, partitions: int,
                 config: dict[str, str], timeout: float = 30.0) -> int:
    """Create ``name`` (a real name) if it is missing; its partition count once it is visible.

    For the flow's own topics outside the registry (the stores' changelogs, the
    recovery backup), which another process of the cluster may be creating at the
    same moment: losing that race is fine. Waits for the new topic's metadata (a
    topic just made may first show no partitions). Raises :class:`BrokerError`.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin = _admin(settings)
    try:
        found = admin.list_topics(timeout=timeout).topics.get(name)
        if found is None or found.error is not None:
            futures = admin.create_topics(
                [NewTopic(name, num_partitions=partitions, config=config)],
                request_timeout=timeout)
            for future in futures.values():
                try:
                    future.result(timeout)
                except KafkaException as exc:
                    if exc.args[0].code() != _TOPIC_ALREADY_EXISTS:  # lost a race: fine
                        raise BrokerError(f"cannot create topic {name!r}: {exc}") from exc
            deadline = time.monotonic() + timeout
            while True:
                found = admin.list_topics(name, timeout=timeout).topics.get(name)
                if (found is not None and found.error is None and found.partitions
                        or time.monotonic() > deadline):
                    break
                time.sleep(0.2)
    except KafkaException as exc:
        raise BrokerError(
            f"cannot reach {settings.bootstrap_servers} to create topic {name!r}: {exc}"
        ) from exc
    return len(found.partitions) if found is not None else 0


def delete_topics(settings: KafkaSettings, names: list[str], timeout: float = 30.0) -> list[str]:
    """Delete the topics ``names`` (real names) that exist; the ones deleted, in order.

    Raises :class:`BrokerError` when the broker refuses (an ACL, topic deletion disabled).
    """
    from confluent_kafka import KafkaException

    admin = _admin(settings)
    existing = set(topic_partitions(settings, timeout))
    doomed = [name for name in names if name in existing]
    if not doomed:
        return []
    for name, future in admin.delete_topics(doomed, operation_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            raise BrokerError(f"cannot delete topic {name!r}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while set(doomed) & set(topic_partitions(settings, timeout)):
        if time.monotonic() > deadline:
            raise BrokerError(f"topics {doomed} still listed {timeout:g} s after deletion")
        time.sleep(0.2)
    return doomed
