"""Kafka ACLs for the control topics on a real Apache Kafka broker with SASL/SCRAM.

One broker for the module (:class:`devkit.apache_kafka.ApacheKafka` with
``scram_users``: SASL_PLAINTEXT/SCRAM-SHA-512 only, StandardAuthorizer, no ACL
means no access). The admin (super user) creates the registry topics and grants
the ACL set of ``docs/kafka-acls.md``: the ``publisher`` (``just rules``) reads and
writes ``rules`` and ``lists`` and appends to ``rules-audit``; the ``flow`` reads its
inputs and writes its outputs; the ``analyst`` only reads ``predictions``. The
tests check what each principal can and cannot do, and that the real flow
(``flows.score``) scores under the ``flow`` principal's credentials.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from devkit.apache_kafka import ApacheKafka
from devkit.process import FlowProcess
from flowkit import REAL_KAFKA_MARKS, Collector, close_clients, flow_env, wait_until
from topics.admin import ensure_topics
from topics.contracts import Transaction
from topics.settings import KafkaSettings

pytestmark = REAL_KAFKA_MARKS

USERS = {"publisher": "publisher-secret", "flow": "flow-secret", "analyst": "analyst-secret"}
READ, WRITE, DESCRIBE = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE
#: principal -> logical topic -> operations: the set docs/kafka-acls.md documents.
GRANTS: dict[str, dict[str, tuple[AclOperation, ...]]] = {
    "publisher": {"rules": (READ, WRITE, DESCRIBE), "lists": (READ, WRITE, DESCRIBE),
                  "rules-audit": (WRITE, DESCRIBE)},
    "flow": {**{t: (READ, DESCRIBE) for t in ("transactions", "labels", "rules", "lists")},
             **{t: (WRITE, DESCRIBE) for t in ("predictions", "dead-letter", "drift")}},
    "analyst": {"predictions": (READ, DESCRIBE)},
}
#: Consumer groups each principal may use (READ on the group). The flow and the tools assign
#: partitions and commit nothing, but librdkafka looks up the coordinator of any group.id set
#: (GROUP_AUTHORIZATION_FAILED otherwise): the flow's inputs use ``FRAUD_KAFKA_GROUP_ID``
#: (:data:`FLOW_GROUP`; default ``BYTEWAX_IGNORED``), its input watch ``fraudstream-health``,
#: ``just tail`` ``fraudstream-tail-<pid>``; ``test`` is the tests' own (:data:`flowkit.CONSUMER`).
FLOW_GROUP = "fraud-score"
GROUPS = {"flow": (FLOW_GROUP, "fraudstream-health", "test"),
          "analyst": ("fraudstream-tail-", "test")}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    with ApacheKafka(log_dir=tmp_path_factory.mktemp("kafka-acls"), scram_users=USERS) as kafka:
        yield kafka
        close_clients()


def as_user(broker: ApacheKafka, settings: KafkaSettings, user: str,
            password: str | None = None) -> KafkaSettings:
    """``settings`` logged in as ``user`` (the ``FRAUD_KAFKA_SASL_*`` options the flow reads)."""
    return dataclasses.replace(settings, client_options=broker.client_options(user, password))


def bindings(settings: KafkaSettings) -> list[AclBinding]:
    """:data:`GRANTS` and :data:`GROUPS` as ALLOW bindings (topics by their literal names)."""
    topics = [AclBinding(ResourceType.TOPIC, settings.topic(topic), ResourcePatternType.LITERAL,
                         f"User:{user}", "*", operation, AclPermissionType.ALLOW)
              for user, grants in GRANTS.items() for topic, ops in grants.items()
              for operation in ops]
    groups = [AclBinding(ResourceType.GROUP, group,
                         ResourcePatternType.PREFIXED if group.endswith("-")
                         else ResourcePatternType.LITERAL,
                         f"User:{user}", "*", READ, AclPermissionType.ALLOW)
              for user, names in GROUPS.items() for group in names]
    return topics + groups


@pytest.fixture(scope="module")
def settings(broker: ApacheKafka) -> KafkaSettings:
    """The registry topics, created by the admin, with :data:`GRANTS` in force."""
    plain = KafkaSettings(broker.bootstrap, topic_prefix=f"acl-{uuid.uuid4().hex[:8]}.")
    admin_settings = as_user(broker, plain, "admin")
    ensure_topics(admin_settings)
    admin = AdminClient(dict(admin_settings.client_config()))
    for future in admin.create_acls(bindings(plain)).values():
        future.result(30)
    # the controller has committed them; the broker's authorizer applies them a moment later
    wait_until(lambda: set(_acls(admin)) == set(bindings(plain)), [], "the ACLs", timeout=30)
    return plain


def _acls(admin: AdminClient) -> list[AclBinding]:
    """Every ACL the broker's authorizer holds."""
    any_name: str = None  # type: ignore[assignment]  # None matches any (the stubs say str)
    anything = AclBindingFilter(ResourceType.ANY, any_name, ResourcePatternType.ANY, any_name,
                                any_name, AclOperation.ANY, AclPermissionType.ANY)
    found: list[AclBinding] = admin.describe_acls(anything).result(30)
    return found


def _produce(settings: KafkaSettings, topic: str, key: bytes, value: bytes) -> KafkaError | None:
    """Produce one record; the delivery error (None: acknowledged)."""
    options: dict[str, str | int] = {"acks": "all", "message.timeout.ms": 15_000, "log_level": 0}
    producer = Producer(settings.client_config(**options))
    result: list[KafkaError | None] = []
    producer.produce(topic, key=key, value=value,
                     on_delivery=lambda err, _msg: result.append(err))
    producer.flush(20)
    assert result, "no delivery report within 20 s"
    return result[0]


def _read(settings: KafkaSettings, topic: str, timeout: float = 15) -> list[bytes | None]:
    """The values of partition 0 of ``topic`` from the start; raises on an error."""
    options: dict[str, str | int | bool] = {
        "group.id": "test", "enable.auto.commit": False, "enable.partition.eof": True,
        "log_level": 0}
    consumer = Consumer(settings.client_config(**options))
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes | None] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                return values
            if error is not None:
                raise KafkaException(error)
            values.append(msg.value())
        raise AssertionError(f"no end of {topic} within {timeout} s")
    finally:
        consumer.close()


def test_the_acl_set_is_in_force(broker: ApacheKafka, settings: KafkaSettings) -> None:
    admin = AdminClient(dict(as_user(broker, settings, "admin").client_config()))
    assert set(_acls(admin)) == set(bindings(settings))
    # nobody else may read them (Kafka answers with the ACLs the caller may describe: none)
    flow = AdminClient(dict(as_user(broker, settings, "flow").client_config(log_level=0)))
    assert _acls(flow) == []


def test_the_publisher_can_produce_to_rules_and_lists_and_nothing_else(
    broker: ApacheKafka, settings: KafkaSettings
) -> None:
    publisher = as_user(broker, settings, "publisher")
    assert _produce(publisher, settings.topic("rules"), b"acl-rule", b"{}") is None
    assert _produce(publisher, settings.topic("lists"), b"blocklist/x", b"{}") is None
    assert _produce(publisher, settings.topic("rules-audit"), b"rules/acl-rule", b"{}") is None
    for topic in ("transactions", "predictions"):
        error = _produce(publisher, settings.topic(topic), b"k", b"{}")
        assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, topic


def test_the_flow_cannot_produce_to_rules_but_can_consume_them(
    broker: ApacheKafka, settings: KafkaSettings
) -> None:
    publisher, flow = (as_user(broker, settings, user) for user in ("publisher", "flow"))
    assert _produce(publisher, settings.topic("rules"), b"from-publisher", b"{}") is None
    error = _produce(flow, settings.topic("rules"), b"forged", b'{"id": "forged"}')
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    values = _read(flow, settings.topic("rules"))
    assert b"{}" in values and b'{"id": "forged"}' not in values
    # nor may the flow rewrite the audit trail, and the analysts' tail only reads verdicts
    error = _produce(flow, settings.topic("rules-audit"), b"rules/forged", b"{}")
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    analyst = AdminClient(dict(as_user(broker, settings, "analyst").client_config()))
    seen = {t for t in analyst.list_topics(timeout=10).topics if t.startswith(settings.topic(""))}
    assert seen == {settings.topic("predictions")}  # the others are not even listed


@pytest.mark.parametrize("who", ["anonymous", "wrong-password", "unknown-user"])
def test_an_unauthenticated_client_cannot_connect(
    broker: ApacheKafka, settings: KafkaSettings, who: str
) -> None:
    options = {"anonymous": {},
               "wrong-password": broker.client_options("flow", "not-the-password"),
               "unknown-user": broker.client_options("mallory", "whatever")}[who]
    client = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0, **options})
    with pytest.raises(KafkaException) as failed:
        client.list_topics(timeout=2)
    assert failed.value.args[0].code() == KafkaError._TRANSPORT
    if who != "anonymous":
        return  # a failed SASL handshake fails every request alike
    producer = Producer({"bootstrap.servers": broker.bootstrap, "log_level": 0,
                         "message.timeout.ms": 3000, **options})
    errors: list[KafkaError | None] = []
    producer.produce(settings.topic("rules"), key=b"k", value=b"{}",
                     on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(10)
    assert errors and errors[0] is not None  # never acknowledged


def test_the_flow_scores_under_its_own_principal(
    broker: ApacheKafka, settings: KafkaSettings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    flow = as_user(broker, settings, "flow")
    txn = Transaction(transaction_id="acl-t1", card_id="acl-card", merchant_id="acl-shop",
                      amount=12.5, currency="EUR", event_time=int(time.time() * 1000))
    payments = as_user(broker, settings, "admin")  # the payment systems' own principal
    assert _produce(payments, settings.topic("transactions"), txn.card_id.encode(),
                    msgspec.json.encode(txn)) is None
    collector = Collector(as_user(broker, settings, "analyst"))
    collector.start()
    sasl = {f"FRAUD_KAFKA_{k.upper().replace('.', '_')}": v
            for k, v in {**flow.client_options, "group.id": FLOW_GROUP}.items()}
    process = FlowProcess(flow_env(settings, tiny_model_dir, tmp_path, **sasl),
                          tmp_path / "flow.log")
    try:
        collector.wait_for(1, [process], timeout=90)
    finally:
        process.stop()
        collector.stop()
    assert [v.transaction_id for v in collector.outcome.verdicts["acl-t1"]] == ["acl-t1"]
