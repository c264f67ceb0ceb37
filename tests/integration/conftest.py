"""Integration fixtures: one broker per test session, unique topics per test.

With ``KAFKA_BOOTSTRAP_SERVERS`` set, the tests run against that broker instead
of starting the embedded one; with ``FRAUD_TEST_BROKER=kafka`` (``just test-kafka``)
they start a real Apache Kafka (:func:`flowkit.session_broker`).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest

from flowkit import broker_header, check_test_broker, session_broker
from topics.admin import ensure_topics
from topics.settings import KafkaSettings


def pytest_configure(config: pytest.Config) -> None:
    """Refuse an unknown ``FRAUD_TEST_BROKER`` at once."""
    check_test_broker()


def pytest_report_header(config: pytest.Config) -> str:
    """Say which broker the integration tier runs on."""
    return f"integration {broker_header()}"


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    """Settings pointing at the session's broker."""
    with session_broker(tmp_path_factory.mktemp("broker")) as settings:
        yield settings


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
