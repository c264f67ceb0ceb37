import json

import msgspec
import pytest

from topics.contracts import DeadLetter, Prediction, ReasonCode, RuleHit
from topics.deadletter import dead_letter, raw_key, raw_value
from topics.errors import ConfigError
from topics.iso import COUNTRIES, CURRENCIES
from topics.registry import TOPICS
from topics.schema import SCHEMA_DIR, schema_path
from topics.schema import main as schema_main
from topics.settings import KafkaSettings
from topics.validation import Rejection


def test_committed_schemas_are_fresh() -> None:
    assert schema_main(["--check"]) == 0, "run `just schemas` and commit topics/schemas/"


def test_version_bumps_keep_the_old_schema_files() -> None:
    versions = {name: spec.contract.SCHEMA_VERSION  # type: ignore[attr-defined]
                for name, spec in TOPICS.items()}
    assert versions == {"transactions": 3, "predictions": 3, "dead-letter": 3, "labels": 1,
                        "drift": 1, "rules": 1, "lists": 1, "rules-audit": 1}
    for name, version in versions.items():
        for v in range(1, version + 1):
            assert (SCHEMA_DIR / f"{name}.v{v}.json").is_file()
    tx = json.loads(schema_path(TOPICS["transactions"]).read_text())["$defs"]["Transaction"]
    assert tx["properties"]["amount"]["minimum"] == 0.0
    assert {"billing_amount", "billing_currency"} <= set(tx["properties"])
    assert "exclusiveMinimum" not in tx["properties"]["amount"]


V1_MESSAGES = {
    "transactions": (b'{"transaction_id":"t1","card_id":"c1","merchant_id":"m1","amount":12.5,'
                     b'"currency":"EUR","event_time":1700000000000,"mcc":"5411","channel":"pos",'
                     b'"country":"FR","lat":48.8,"lon":2.3,"attributes":{"bin":"411111"}}'),
    "predictions": (b'{"transaction_id":"t","card_id":"c","event_time":1,"score":0.5,'
                    b'"decision":"review","model_version":"m","feature_spec_version":"v1",'
                    b'"reasons":[{"feature":"f","text":"x"}],"ingest_time":3}'),
    "dead-letter": (b'{"source_topic":"tx","partition":1,"offset":7,"value_b64":"/w==",'
                    b'"error_class":"not_utf8","reason":"r","time":5}'),
}


@pytest.mark.parametrize("topic", sorted(V1_MESSAGES))
def test_v1_messages_decode_unchanged_with_the_v2_contracts(topic: str) -> None:
    """A message valid under the committed v1 schema decodes in v2 and re-encodes to its bytes."""
    jsonschema = pytest.importorskip("jsonschema")
    message = V1_MESSAGES[topic]
    v1_schema = json.loads((SCHEMA_DIR / f"{topic}.v1.json").read_text())
    jsonschema.validate(json.loads(message), v1_schema)
    contract = TOPICS[topic].contract
    assert msgspec.json.encode(msgspec.json.decode(message, type=contract)) == message
    v2_schema = json.loads(schema_path(TOPICS[topic]).read_text())
    jsonschema.validate(json.loads(message), v2_schema)


def test_prediction_v2_fields_round_trip_and_are_omitted_when_default() -> None:
    base = dict(transaction_id="t", card_id="c", event_time=1, score=0.97, decision="decline",
                model_version="m2", feature_spec_version="v2")
    plain = Prediction(**base)  # type: ignore[arg-type]
    assert b"rule" not in msgspec.json.encode(plain) and b"clamped" not in (
        msgspec.json.encode(plain))
    full = Prediction(
        **base,  # type: ignore[arg-type]
        model_decision="review",
        rule_hits=[RuleHit(rule_id="r-velocity", version=3, action="decline", mode="active",
                           text="8 zero-value authorisations in 10 minutes"),
                   RuleHit(rule_id="r-new", version=1, action="tag", mode="shadow", text="t")],
        rule_set_version="rules-7", event_time_clamped=True, amount_reference=25.61,
        reference_currency="EUR",
    )
    assert msgspec.json.decode(msgspec.json.encode(full), type=Prediction) == full
    for bad in (b'"action":"decline"', b'"mode":"active"', b'"reference_currency":"EUR"'):
        broken = msgspec.json.encode(full).replace(bad, bad.replace(b'":"', b'":"x'))
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(broken, type=Prediction)


def test_every_topic_has_a_versioned_contract() -> None:
    assert set(TOPICS) == {"transactions", "predictions", "labels", "drift", "dead-letter",
                           "rules", "lists", "rules-audit"}
    for spec in TOPICS.values():
        assert spec.contract.SCHEMA_VERSION >= 1  # type: ignore[attr-defined]
        assert spec.partitions >= 1


def test_iso_lists() -> None:
    assert len(COUNTRIES) == 250  # 249 assigned + XK
    assert {"EUR", "USD", "JPY", "GBP"} <= CURRENCIES and "XXX" not in CURRENCIES


def test_dead_letter_keeps_small_values_byte_for_byte() -> None:
    value, key = bytes(range(256)), b"\x00card"
    record = dead_letter(source_topic="tx", partition=1, offset=7, key=key, value=value,
                         rejection=Rejection("not_utf8", "r"), record_time_ms=5)
    decoded = msgspec.json.decode(msgspec.json.encode(record), type=DeadLetter)
    assert raw_value(decoded) == value and raw_key(decoded) == key and decoded.value_complete
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


def test_the_decoder_checks_exactly_the_patterns_the_transaction_schema_states() -> None:
    """Patterns moved out of msgspec (topics.contracts.checked_pattern) stay in the schema,
    and the decoder checks every one of them, also for values it has seen pass before."""
    import msgspec

    from samples import NOW_MS, raw
    from topics.contracts import Transaction
    from topics.validation import Rejection, TransactionDecoder

    props = msgspec.json.schema(Transaction)["$defs"]["Transaction"]["properties"]

    def pattern_of(spec: dict) -> str | None:
        for option in spec.get("anyOf", [spec]):
            if "pattern" in option:
                return option["pattern"]
        return None

    stated = {name: p for name, spec in props.items() if (p := pattern_of(spec)) is not None}
    assert stated == Transaction.PATTERNS
    decoder = TransactionDecoder()
    for _ in range(2):  # the second time, the good values are remembered
        assert not isinstance(decoder.decode(raw(mcc="5411", country="FR"), NOW_MS), Rejection)
        for field, bad in (("mcc", "541"), ("country", "FRA"), ("currency", "EUR\n")):
            out = decoder.decode(raw(**{field: bad}), NOW_MS)
            assert isinstance(out, Rejection) and out.error_class == "invalid_value"
            assert out.reason.startswith(f"{field}: expected `str` matching regex")
