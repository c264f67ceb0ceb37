import msgspec
import pytest

from topics.contracts import DeadLetter, Prediction, ReasonCode
from topics.deadletter import dead_letter, raw_key, raw_value
from topics.errors import ConfigError
from topics.iso import COUNTRIES, CURRENCIES
from topics.registry import TOPICS
from topics.schema import main as schema_main
from topics.settings import KafkaSettings
from topics.validation import Rejection


def test_committed_schemas_are_fresh() -> None:
    assert schema_main(["--check"]) == 0, "run `just schemas` and commit topics/schemas/"


def test_every_topic_has_a_versioned_contract() -> None:
    assert set(TOPICS) == {"transactions", "predictions", "labels", "drift", "dead-letter"}
    for spec in TOPICS.values():
        assert spec.contract.SCHEMA_VERSION >= 1  # type: ignore[attr-defined]
        assert spec.partitions >= 1


def test_iso_lists() -> None:
    assert len(COUNTRIES) == 250  # 249 assigned + XK
    assert {"EUR", "USD", "JPY", "GBP"} <= CURRENCIES and "XXX" not in CURRENCIES


def test_dead_letter_keeps_bytes_exactly() -> None:
    value, key = bytes(range(256)), b"\x00card"
    record = dead_letter(source_topic="tx", partition=1, offset=7, key=key, value=value,
                         rejection=Rejection("not_utf8", "r"), now_ms=5)
    decoded = msgspec.json.decode(msgspec.json.encode(record), type=DeadLetter)
    assert raw_value(decoded) == value and raw_key(decoded) == key
    assert (decoded.partition, decoded.offset, decoded.error_class) == (1, 7, "not_utf8")


def test_prediction_round_trip() -> None:
    pred = Prediction(transaction_id="t", card_id="c", event_time=1, score=0.97, decision="decline",
                      model_version="m1", feature_spec_version="v1",
                      reasons=[ReasonCode(feature="amount_ratio_30d", text="amount 14x average")])
    assert msgspec.json.decode(msgspec.json.encode(pred), type=Prediction) == pred
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(pred).replace(b"0.97", b"1.5"), type=Prediction)


def test_settings_topic_names_and_passthrough() -> None:
    s = KafkaSettings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": "k:9092", "FRAUD_TOPIC_PREFIX": "prod.",
        "FRAUD_TOPIC_DEAD_LETTER": "dlq", "FRAUD_KAFKA_SASL_PASSWORD": "hunter2",
        "KAFKA_PORT": "tcp://10.0.0.1:9092",
    })
    assert s.topic("transactions") == "prod.transactions" and s.topic("dead-letter") == "dlq"
    config = s.client_config()
    assert config["sasl.password"] == "hunter2" and "port" not in config
    assert s.redacted() == {"sasl.password": "***"}


def test_bad_topic_name_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="FRAUD_TOPIC_LABELS"):
        KafkaSettings.from_env({"FRAUD_TOPIC_LABELS": "bad name!"})


def test_missing_bootstrap_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
        KafkaSettings.from_env({}).client_config()
