"""Integration fixtures: one broker per test session, unique topics per test.

With ``KAFKA_BOOTSTRAP_SERVERS`` set, the tests run against that broker instead
of starting the embedded one.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator

import pytest

from devkit.broker import EmbeddedBroker
from flowkit import close_clients
from topics.admin import ensure_topics
from topics.settings import BOOTSTRAP_ENV, KafkaSettings


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    """Settings pointing at the session's broker."""
    if os.environ.get(BOOTSTRAP_ENV, "").strip():
        yield KafkaSettings.from_env()
        return
    with EmbeddedBroker(log_dir=tmp_path_factory.mktemp("broker")) as broker:
        yield KafkaSettings.from_env({**os.environ, BOOTSTRAP_ENV: broker.bootstrap})
        close_clients()


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test uses, so every test gets its own topics."""
    return f"test-{uuid.uuid4().hex[:12]}."


@pytest.fixture
def topics(kafka: KafkaSettings, topic_prefix: str) -> KafkaSettings:
    """Settings whose registry topics are fresh (unique names) and created with their partitions."""
    settings = dataclasses.replace(kafka, topic_prefix=topic_prefix, topic_overrides={})
    ensure_topics(settings)
    return settings
