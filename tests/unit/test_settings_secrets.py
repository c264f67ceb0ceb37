"""Secrets in the settings: never in repr, str or logs; readable from mounted files.

Also the metrics bind address (``FRAUD_METRICS_BIND``): loopback unless asked.
"""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path

import pytest

from flows.settings import ScoringSettings
from health.watch import close_server, start_http_server
from topics.errors import ConfigError
from topics.settings import KafkaSettings, is_secret

SECRET = "s3cr3t-Pa55word-0xdeadbeef"


def _every_rendering(obj: object) -> str:
    return "\n".join([repr(obj), str(obj), f"{obj}", f"{obj!r}", "%s" % (obj,)])  # noqa: UP031


def test_repr_and_str_of_the_settings_redact_every_secret_option() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
        "FRAUD_KAFKA_SASL_USERNAME": "fraud-score",
        "FRAUD_KAFKA_SASL_PASSWORD": SECRET,
        "FRAUD_KAFKA_SSL_KEY_PASSWORD": SECRET + "-key",
        "FRAUD_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": SECRET + "-oauth",
    }
    kafka = KafkaSettings.from_env(env)
    flow = ScoringSettings.from_env(env)
    for obj in (kafka, flow):
        text = _every_rendering(obj)
        assert SECRET not in text
        assert "fraud-score" in text  # not a secret: still shown, so the repr stays useful
        assert "'sasl.password': '***'" in text
    # the client still gets the real values
    config = flow.kafka.client_config()
    assert config["sasl.password"] == SECRET
    assert config["sasl.oauthbearer.client.secret"] == SECRET + "-oauth"


def test_logging_the_settings_never_writes_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    flow = ScoringSettings.from_env({"FRAUD_KAFKA_SASL_PASSWORD": SECRET})
    log = logging.getLogger("test.settings")
    with caplog.at_level(logging.DEBUG, logger="test.settings"):
        log.info("settings %s", flow)
        log.info("settings %r", flow)
        log.info("kafka %s options %s", flow.kafka, flow.kafka.redacted())
    assert caplog.records and SECRET not in caplog.text
    assert "***" in caplog.text


@pytest.mark.parametrize(("option", "secret"), [
    ("sasl.password", True), ("ssl.key.password", True), ("sasl.jaas.config", True),
    ("sasl.oauthbearer.client.secret", True), ("ssl.keystore.password", True),
    ("sasl.username", False), ("security.protocol", False), ("bootstrap.servers", False),
])
def test_which_options_are_secrets(option: str, secret: bool) -> None:
    assert is_secret(option) is secret


def test_a_secret_can_be_read_from_a_mounted_file(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text(SECRET + "\n")  # `kubectl create secret --from-file` keeps the newline
    s = KafkaSettings.from_env({"FRAUD_KAFKA_SASL_PASSWORD_FILE": str(path)})
    assert s.client_options == {"sasl.password": SECRET}
    assert SECRET not in _every_rendering(s)


def test_a_secret_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text(SECRET)
    env = {"FRAUD_KAFKA_SASL_PASSWORD_FILE": str(path), "FRAUD_KAFKA_SASL_PASSWORD": "other"}
    with pytest.raises(ConfigError, match="FRAUD_KAFKA_SASL_PASSWORD and "
                                          "FRAUD_KAFKA_SASL_PASSWORD_FILE"):
        KafkaSettings.from_env(env)


def test_a_missing_or_empty_secret_file_stops_start_up_naming_the_variable(
    tmp_path: Path
) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=r"FRAUD_KAFKA_SASL_PASSWORD_FILE='.*nope'.*cannot read"):
        ScoringSettings.from_env({"FRAUD_KAFKA_SASL_PASSWORD_FILE": str(missing)})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        KafkaSettings.from_env({"FRAUD_KAFKA_SASL_PASSWORD_FILE": str(empty)})
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(ConfigError, match="not UTF-8") as err:
        KafkaSettings.from_env({"FRAUD_KAFKA_SASL_PASSWORD_FILE": str(binary)})
    assert SECRET not in str(err.value)  # the message names the file, never its content


def test_metrics_bind_defaults_to_the_loopback_and_is_validated() -> None:
    assert ScoringSettings.from_env({}).metrics_bind == "127.0.0.1"
    assert ScoringSettings.from_env({"FRAUD_METRICS_BIND": "0.0.0.0"}).metrics_bind == "0.0.0.0"
    assert ScoringSettings.from_env({"FRAUD_METRICS_BIND": "::"}).metrics_bind == "::"
    with pytest.raises(ConfigError, match="FRAUD_METRICS_BIND='localhost': expected an IP"):
        ScoringSettings.from_env({"FRAUD_METRICS_BIND": "localhost"})


def test_the_health_server_listens_on_the_loopback_unless_told_otherwise() -> None:
    server = start_http_server(0, lambda: (True, "ok"))
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
            assert resp.status == 200 and resp.read() == b"ready\n"
    finally:
        close_server(server)
    server = start_http_server(0, lambda: (True, "ok"), addr="0.0.0.0")
    try:
        assert server.server_address[0] == "0.0.0.0"
    finally:
        close_server(server)
