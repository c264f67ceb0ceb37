"""Kafka connection and topic-name settings, read once from the environment.

``KAFKA_BOOTSTRAP_SERVERS`` selects the broker (unset: development commands
start the embedded one). Any librdkafka client property can be passed as
``FRAUD_KAFKA_<PROPERTY>`` with dots written as underscores, for example
``FRAUD_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` or ``FRAUD_KAFKA_SASL_PASSWORD``.
(Not ``KAFKA_*``: Kubernetes injects ``KAFKA_PORT`` and friends for a Service
named ``kafka``.) Topic names are ``FRAUD_TOPIC_PREFIX`` + the default name,
each overridable with ``FRAUD_TOPIC_<NAME>``.

Secrets. A client option can instead be read from a file, the way Docker and
Kubernetes mount secrets: ``FRAUD_KAFKA_SASL_PASSWORD_FILE=/run/secrets/kafka/password``
sets ``sasl.password`` to the file's text (one trailing newline dropped). Setting
both ``X`` and ``X_FILE`` is a :class:`ConfigError`, as is a file that cannot be
read or is empty (the message names the variable and the path, never the value).
Options whose name holds one of :data:`SECRET_WORDS` are secrets: ``repr()``,
``str()`` and :meth:`KafkaSettings.redacted` show them as ``***``, so logging the
settings object (or the flow's settings, which hold it) never prints them.

>>> s = KafkaSettings.from_env({"FRAUD_KAFKA_SASL_PASSWORD": "hunter2"})
>>> "hunter2" in repr(s), s.client_options["sasl.password"]
(False, 'hunter2')

>>> s = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "FRAUD_TOPIC_PREFIX": "dev."})
>>> s.topic("transactions"), s.topic("dead-letter")
('dev.transactions', 'dev.dead-letter')
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from topics.errors import ConfigError

ENV_PREFIX = "FRAUD_"
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
CLIENT_OPTION_PREFIX = ENV_PREFIX + "KAFKA_"
TOPIC_PREFIX_ENV = ENV_PREFIX + "TOPIC_PREFIX"
#: A client option whose name contains one of these is a secret (redacted in repr and logs).
SECRET_WORDS = ("password", "secret", "key", "token", "jaas", "credential")
#: ``FRAUD_KAFKA_<PROPERTY>_FILE``: read the property's value from this file (mounted secrets).
FILE_SUFFIX = "_FILE"
REDACTED = "***"

ConfigValue = str | int | float | bool

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def is_secret(option: str) -> bool:
    """True when the librdkafka option ``option`` (e.g. ``sasl.password``) holds a secret."""
    name = option.lower()
    return any(word in name for word in SECRET_WORDS)


def read_secret_file(var: str, path: str) -> str:
    """The text of the secret file named by ``var``, without its trailing newline.

    Raises :class:`ConfigError` naming ``var`` and ``path`` (never the content) when the
    file cannot be read, is not UTF-8 or is empty.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"{var}={path!r}: cannot read the secret file ({why}); mount the secret "
            f"there or unset {var}"
        ) from None
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        raise ConfigError(f"{var}={path!r}: the secret file is empty; write the secret into it")
    return value


def _client_options(env: Mapping[str, str]) -> dict[str, str]:
    """``FRAUD_KAFKA_*`` as librdkafka options, ``*_FILE`` variables read from their files."""
    options: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(CLIENT_OPTION_PREFIX):
            continue
        if name.endswith(FILE_SUFFIX):
            direct = name.removesuffix(FILE_SUFFIX)
            if len(direct) <= len(CLIENT_OPTION_PREFIX):
                raise ConfigError(f"{name}: name the option, e.g. {CLIENT_OPTION_PREFIX}"
                                  f"SASL_PASSWORD{FILE_SUFFIX}")
            if direct in env:
                raise ConfigError(
                    f"both {direct} and {name} are set; keep one (the file is for mounted secrets)"
                )
            name, value = direct, read_secret_file(name, value)
        options[name[len(CLIENT_OPTION_PREFIX):].lower().replace("_", ".")] = value
    return options


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
        options = _client_options(env)
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

    @classmethod
    def required_from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSettings:
        """:meth:`from_env` for a command that needs a broker: :class:`ConfigError` without one."""
        settings = cls.from_env(env)
        if settings.bootstrap_servers is None:
            raise ConfigError(f"{BOOTSTRAP_ENV} is not set; point it at your Kafka "
                              "(for development: `just broker` prints the address)")
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
        """Client options safe to log: secrets (see :func:`is_secret`) replaced by ``***``."""
        return {k: (REDACTED if is_secret(k) else v) for k, v in self.client_options.items()}

    def __repr__(self) -> str:
        """Like the dataclass repr, with secret client options shown as ``***``."""
        return (
            f"KafkaSettings(bootstrap_servers={self.bootstrap_servers!r}, "
            f"client_options={self.redacted()!r}, topic_prefix={self.topic_prefix!r}, "
            f"topic_overrides={dict(self.topic_overrides)!r})"
        )

    __str__ = __repr__
