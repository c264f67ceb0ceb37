"""The chaos tier: which tests run, and its own broker.

``FRAUD_CHAOS=full`` (what ``just chaos`` sets) runs every chaos test; unset (or
``quick``) runs only the quick set, the tests marked with :func:`chaos.chaoskit.quick`,
so the default ``pytest`` run and CI stay inside their time budget. The variable is
removed from this process's environment as soon as it is read: the flow processes
inherit the environment and refuse any ``FRAUD_*`` variable they do not know.

The tier starts its own embedded broker (Apache Kafka with ``FRAUD_TEST_BROKER=kafka``,
or uses ``KAFKA_BOOTSTRAP_SERVERS``: :func:`flowkit.session_broker`), so
the heavy streams here do not slow the integration tests' broker; the broker
scenarios start further brokers of their own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos.chaoskit import QUICK, Launch, start

from devkit.process import FlowProcess
from flowkit import Collector, broker_header, check_test_broker, session_broker
from topics.settings import KafkaSettings

CHAOS_ENV = "FRAUD_CHAOS"
MODES = ("quick", "full")
_MODE = os.environ.pop(CHAOS_ENV, "").strip().lower() or "quick"
HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    """Refuse an unknown tier name at once."""
    if _MODE not in MODES:
        raise pytest.UsageError(f"{CHAOS_ENV}={_MODE!r}: expected one of {', '.join(MODES)}")
    check_test_broker()


def pytest_report_header(config: pytest.Config) -> str:
    """Say which chaos set runs."""
    return f"chaos tier: {_MODE} ({CHAOS_ENV}=full runs every scenario); {broker_header()}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside ``FRAUD_CHAOS=full``, skip the chaos tests that are not in the quick set."""
    if _MODE == "full":
        return
    skip = pytest.mark.skip(reason="full chaos tier: run `just chaos`")
    for item in items:
        if HERE not in Path(item.path).parents:
            continue
        if not getattr(getattr(item, "function", None), QUICK, False):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    """Settings pointing at the chaos tier's broker."""
    with session_broker(tmp_path_factory.mktemp("chaos-broker")) as settings:
        yield settings


@pytest.fixture
def launch() -> Iterator[Launch]:
    """:func:`chaos.chaoskit.start`, with every process it started killed at teardown."""
    started: list[FlowProcess] = []

    def _launch(*args: object, **kwargs: object) -> tuple[FlowProcess, int]:
        flow, port = start(*args, **kwargs)  # type: ignore[arg-type]
        started.append(flow)
        return flow, port

    yield _launch
    for flow in started:
        flow.kill()


@pytest.fixture
def collect() -> Iterator[Callable[[KafkaSettings], Collector]]:
    """Start a :class:`~flowkit.Collector` of a topic set; stopped at teardown."""
    running: list[Collector] = []

    def _collect(settings: KafkaSettings) -> Collector:
        collector = Collector(settings)
        collector.start()
        running.append(collector)
        return collector

    yield _collect
    for collector in running:
        if collector.is_alive():
            collector.stop()
