"""Typed errors for the topics room; each message says how to fix the problem."""


class FraudStreamError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(FraudStreamError):
    """A setting is missing or malformed; the message names the variable and what it expects."""


class BrokerError(FraudStreamError):
    """The Kafka-compatible broker could not be reached, started or used."""


class InputError(FraudStreamError):
    """An input file or row does not match its contract; the message names the row and field."""
