"""Kafka connection and topic-name settings, read once from the environment.

``KAFKA_BOOTSTRAP_SERVERS`` selects the broker (unset: development commands
start the embedded one). Any librdkafka client property can be passed as
``FRAUD_KAFKA_<PROPERTY>`` with dots written as underscores, for example
``FRAUD_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` or ``FRAUD_KAFKA_SASL_PASSWORD``.
(Not ``KAFKA_*``: Kubernetes injects ``KAFKA_PORT`` and friends for a Service
named ``kafka``.) Topic names are ``FRAUD_TOPIC_PREFIX`` + the default name,
each overridable with ``FRAUD_TOPIC_<NAME>``.

>>> s = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "FRAUD_TOPIC_PREFIX": "dev."})
>>> s.topic("transactions"), s.topic("dead-letter")
('dev.transactions', 'dev.dead-letter')
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from topics.errors import ConfigError

ENV_PREFIX = "FRAUD_"
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
CLIENT_OPTION_PREFIX = ENV_PREFIX + "KAFKA_"
TOPIC_PREFIX_ENV = ENV_PREFIX + "TOPIC_PREFIX"
SECRET_WORDS = ("password", "secret", "key", "token", "jaas")

ConfigValue = str | int | float | bool

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def topic_env_var(logical: str) -> str:
    """Environment variable that overrides one topic's name, e.g. ``FRAUD_TOPIC_DEAD_LETTER``."""
    return f"{ENV_PREFIX}TOPIC_{logical.upper().replace('-', '_')}"


@dataclass(frozen=True)
class KafkaSettings:
    """Where the broker is, how to talk to it, and what the topics are called."""

    bootstrap_servers: str | None
    client_options: Mapping[str, str] = field(default_factory=dict)
    topic_prefix: str = ""
    topic_overrides: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSettings:
        """Read the settings; raise :class:`ConfigError` naming the variable that is wrong."""
        env = os.environ if env is None else env
        from topics.registry import TOPICS  # registry imports nothing from here at import time

        bootstrap = env.get(BOOTSTRAP_ENV, "").strip() or None
        options = {
            name[len(CLIENT_OPTION_PREFIX):].lower().replace("_", "."): value
            for name, value in env.items()
            if name.startswith(CLIENT_OPTION_PREFIX)
        }
        prefix = env.get(TOPIC_PREFIX_ENV, "")
        overrides = {}
        for logical in TOPICS:
            var = topic_env_var(logical)
            if var in env:
                overrides[logical] = env[var]
        settings = cls(bootstrap, options, prefix, overrides)
        for logical in TOPICS:
            name = settings.topic(logical)
            if not _TOPIC_NAME.match(name):
                var = topic_env_var(logical) if logical in overrides else TOPIC_PREFIX_ENV
                raise ConfigError(
                    f"{var}: topic name {name!r} is invalid; use 1-249 characters "
                    "from letters, digits, '.', '_' and '-'"
                )
        return settings

    def topic(self, logical: str) -> str:
        """The real topic name for a logical topic (``transactions``, ``predictions``, ...)."""
        return self.topic_overrides.get(logical, self.topic_prefix + logical)

    def with_bootstrap(self, bootstrap_servers: str) -> KafkaSettings:
        """A copy pointing at another broker (used when the embedded broker starts)."""
        return KafkaSettings(
            bootstrap_servers, self.client_options, self.topic_prefix, self.topic_overrides
        )

    def client_config(self, **extra: ConfigValue) -> dict[str, ConfigValue]:
        """Config for librdkafka: bootstrap servers, pass-through options, then ``extra``."""
        if self.bootstrap_servers is None:
            raise ConfigError(
                f"{BOOTSTRAP_ENV} is not set and no embedded broker was started; "
                "set it to host:port of your Kafka, or run `just broker`"
            )
        config: dict[str, ConfigValue] = {"bootstrap.servers": self.bootstrap_servers}
        config.update(self.client_options)
        config.update(extra)
        return config

    def redacted(self) -> dict[str, str]:
        """Client options safe to log: secrets replaced by ``***``."""
        return {
            k: ("***" if any(word in k for word in SECRET_WORDS) else v)
            for k, v in self.client_options.items()
        }
