"""The scoring flow's settings: one frozen object, read once at start-up from ``FRAUD_*``.

A wrong value raises :class:`~topics.errors.ConfigError` naming the variable
and what it expects. Kafka connection and topic names come from
:class:`~topics.settings.KafkaSettings` (``KAFKA_BOOTSTRAP_SERVERS``,
``FRAUD_KAFKA_*``, ``FRAUD_TOPIC_*``).

>>> s = ScoringSettings.from_env({"FRAUD_BATCH_MAX": "256", "FRAUD_DECLINE_THRESHOLD": "0.9"})
>>> s.batch_max, s.decline_threshold, s.review_threshold
(256, 0.9, None)
>>> ScoringSettings.from_env({"FRAUD_BATCH_MAX": "lots"})
Traceback (most recent call last):
...
topics.errors.ConfigError: FRAUD_BATCH_MAX='lots': expected an integer from 1 to 100000
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rules.cost import DEFAULT_BUDGET, CostBudget
from state.spec import FEATURE_NAMES, FEATURE_SPEC_VERSION
from topics.errors import ConfigError
from topics.settings import ENV_PREFIX, KafkaSettings
from topics.validation import MAX_MESSAGE_BYTES

#: Calendar features: a short window always differs from the all-hours reference.
SEASONAL_FEATURES = ("hour_of_day", "day_of_week", "is_weekend", "is_night")

#: Every variable this object reads, its default and its meaning (the README table).
VARIABLES: dict[str, tuple[str, str]] = {
    "FRAUD_MODEL_PATH": ("models/current", "ONNX model file, or a directory holding model.onnx"),
    "FRAUD_SHADOW_MODEL_PATH": ("", "challenger scored alongside; never decides (unset: none)"),
    "FRAUD_RATES_FILE": (
        "", "operator's rates of the day (JSON, versioned) for currencies the model's rate "
        "table lacks (unset: none)"),
    "FRAUD_MODEL_RELOAD_SECONDS": ("5", "how often to check for a new model file; 0 disables"),
    "FRAUD_STATE_DIR": (".dev/state", "RocksDB state: cards/<shard>/ and merchants/<shard>/"),
    "FRAUD_CARD_SHARDS": (
        "1", "card shards (a card's: murmur2(card_id) mod this); at least the flow's process "
        "count to scale out (fixed for a state dir)"
    ),
    "FRAUD_MERCHANT_SHARDS": (
        "1", "merchant shards over all traffic; at least the flow's process count to scale "
        "out (fixed for a state dir)"
    ),
    "FRAUD_CHANGELOG": (
        "off", "on: every card and merchant store also writes its changes to a compacted "
        "topic (cards-changelog, merchants-changelog; one partition per shard) and a store "
        "that is missing, behind or not closed cleanly is rebuilt from it (state/changelog.py)"
    ),
    "FRAUD_RECOVERY_BACKUP_SECONDS": (
        "30", "with FRAUD_CHANGELOG=on, process 0 copies Bytewax's recovery partitions this "
        "often (and after a clean stop) to the compacted topic recovery-backup; a process 0 "
        "without partitions restores them (python -m changelog.recovery); 0: never. With "
        "several partitions, run bytewax.run with -b at least this"
    ),
    "FRAUD_ROUTING": (
        "v2", "Bytewax routing keys of the shards: v2 spreads them evenly over 1-16 processes, "
        "v1 (before 2026-12) over 1, 2, 4, 8 or 16; fixed for a recovery dir"
    ),
    "FRAUD_BATCH_MAX": ("1000", "most messages read per partition poll = largest scoring batch"),
    "FRAUD_REVIEW_THRESHOLD": ("model's", "override the model's review threshold (0-1)"),
    "FRAUD_DECLINE_THRESHOLD": ("model's", "override the model's decline threshold (0-1)"),
    "FRAUD_REASON_CODES": ("3", "reason codes per review/decline verdict (0-5)"),
    "FRAUD_RULE_COST_US": (
        f"{DEFAULT_BUDGET.row_us:g}", "most µs of CPU a rule may cost per transaction: measured "
        "when it is published and applied (refused above: rule_too_costly), guarded in the stream"
    ),
    "FRAUD_RULES_MAX": (
        str(DEFAULT_BUDGET.max_rules), "most enabled rules (active and shadow) in force; beyond, "
        "a rule is refused (too_many_rules)"
    ),
    "FRAUD_RULE_OVERRUN_BATCHES": (
        str(DEFAULT_BUDGET.overrun_batches), "consecutive batches a rule may cost over twice its "
        "budget before the stream disables it (at once over ten times)"
    ),
    "FRAUD_LIST_MAX_ENTRIES": (
        f"{DEFAULT_BUDGET.max_list_entries}", "most entries in one list; a new entry beyond "
        "is refused (dead letter list_full)"
    ),
    "FRAUD_LISTS_MAX_ENTRIES": (
        f"{DEFAULT_BUDGET.max_entries}", "most entries in all lists together; a new entry "
        "beyond is refused (dead letter list_full)"
    ),
    "FRAUD_SHADOW_RULES_COST_US": (
        f"{DEFAULT_BUDGET.shadow_row_us:g}", "µs per transaction all shadow rules of a batch may "
        "spend together, after the live rules; the rest are skipped (counted)"
    ),
    "FRAUD_MAX_MESSAGE_BYTES": (str(MAX_MESSAGE_BYTES), "larger messages are dead-lettered"),
    "FRAUD_MAX_SKEW_SECONDS": (
        "300", "event time allowed ahead of the record's Kafka timestamp (clock skew)"
    ),
    "FRAUD_SKEW_POLICY": (
        "clamp", "beyond the skew: clamp (score at the record timestamp) or dead-letter"
    ),
    "FRAUD_MISKEYED": (
        "route", "record on another partition than its card's: route (to its card) or refuse"
    ),
    "FRAUD_MISKEYED_HOLD_MS": (
        "250", "routed mis-keyed records wait at least this long for their card's stragglers, "
        "and until every input partition has passed them in event time (0: no hold)"
    ),
    "FRAUD_INPUT_LINGER_MS": (
        "5", "the transactions consumer is drained at most this often, all partitions at "
        "once: fewer, larger batches (less CPU per transaction in live traffic); 0: at once"
    ),
    "FRAUD_INPUT_IDLE_MS": (
        "2000", "an input partition read to its end with nothing new this long no longer "
        "holds the merchant stage's event-time watermark back"
    ),
    "FRAUD_IDLE_GRACE_MS": (
        "1000", "when an idle input partition wakes up, the others idle less than an hour of "
        "event time hold the watermark this long again (a burst after a quiet spell reaches "
        "the partitions ms apart)"
    ),
    "FRAUD_ALIGN_MS": (
        "1800000", "a transactions partition this far ahead of the watermark in event time "
        "is paused until the others catch up (0: never)"
    ),
    "FRAUD_REORDER_MAX": (
        "200000", "transactions a merchant shard holds for the watermark; beyond, the oldest "
        "are scored anyway (counted)"
    ),
    "FRAUD_DRIFT_WINDOW_SECONDS": ("300", "event-time window of a drift snapshot"),
    "FRAUD_DRIFT_GRACE_SECONDS": ("60", "event-time lateness a partition waits before closing one"),
    "FRAUD_DRIFT_FLUSH_SECONDS": ("60", "publish a window without idle partitions after this"),
    "FRAUD_DRIFT_PSI_THRESHOLD": ("0.2", "a feature (or the score) above this PSI raises an alert"),
    "FRAUD_DRIFT_MIN_COUNT": ("100", "no PSI alerts in a window with fewer transactions"),
    "FRAUD_DRIFT_IGNORE": (
        ",".join(SEASONAL_FEATURES),
        "features (or score) whose PSI is reported but never alerts (default: calendar ones)",
    ),
    "FRAUD_VERDICT_HORIZON_DAYS": (
        "35", "transaction ids remembered: re-deliveries, stored verdicts, label feedback"
    ),
    "FRAUD_LABEL_HORIZON_DAYS": (
        "180", "days after its transaction a label (chargeback) still joins it (state/labels.py)"
    ),
    "FRAUD_SAMPLE_DIR": (".dev/samples", "Parquet sample of scored vectors (just drift-report)"),
    "FRAUD_SAMPLE_RATE": ("0.02", "share of transactions sampled there (by id); 0 disables"),
    "FRAUD_METRICS_PORT": ("9100", "Prometheus port (a 2nd process on the host: next free); 0 off"),
    "FRAUD_METRICS_BIND": (
        "127.0.0.1", "IP address /metrics and /ready listen on: the loopback for development; "
        "0.0.0.0 in pods and compose, where Prometheus scrapes (k8s: with the NetworkPolicy)"
    ),
    "FRAUD_RULES_TRUSTED_KEYS": (
        ".dev/rules-keys/trusted.yaml", "analysts whose Ed25519 signatures make rules and list "
        "entries take effect (docs/rules-security.md); the default is the dev keys' file "
        "(missing: no analyst trusted, every rules/lists record refused); another path must exist"
    ),
    "FRAUD_LOG_LEVEL": ("INFO", "DEBUG, INFO, WARNING or ERROR"),
    "FRAUD_STOP_GRACE_SECONDS": ("25", "on SIGTERM/SIGINT: drain and stop within this, else exit"),
    "FRAUD_INPUT_CHECK_SECONDS": ("5", "how often the input topics are checked (deleted, ...)"),
    "FRAUD_BROKER_UNREACHABLE_SECONDS": ("120", "stop when the broker has not answered this long"),
    "FRAUD_DEBUG_LOG": ("next to the state dir", "full tracebacks of failures (stderr: one line)"),
    "FRAUD_PAN_KEY_FILE": (
        "", "file holding the HMAC-SHA-256 key (32+ bytes; a mounted secret) that tokenises a "
        "card number (PAN) sent as card_id at decode (topics/pan.py); unset: such records "
        "are dead-lettered (pan_in_clear), never stored"
    ),
    "FRAUD_TRACING": (
        "off", "on: continue a W3C traceparent header of a transaction into its verdict's "
        "headers and export spans of its steps over OTLP (OTEL_EXPORTER_OTLP_*; tracing/)"
    ),
    "FRAUD_TRACE_SAMPLE_RATE": (
        "0", "with tracing on, share of transactions without a traceparent that start a new "
        "trace (0-1); a traceparent's own sampled flag always decides for its transaction"
    ),
}


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _int(env: Mapping[str, str], name: str, low: int, high: int) -> int:
    text = _raw(env, name) or VARIABLES[name][0]
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(f"{name}={text!r}: expected an integer from {low} to {high}")
    return value


def _probability(env: Mapping[str, str], name: str) -> float | None:
    text = _raw(env, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={text!r}: expected a probability between 0 and 1")
    return value


def _float(env: Mapping[str, str], name: str, low: float, high: float) -> float:
    text = _raw(env, name) or VARIABLES[name][0]
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ConfigError(f"{name}={text!r}: expected a number from {low} to {high}")
    return value


def _choice(env: Mapping[str, str], name: str, options: tuple[str, ...]) -> str:
    text = (_raw(env, name) or VARIABLES[name][0]).lower()
    if text not in options:
        raise ConfigError(f"{name}={text!r}: expected one of {', '.join(options)}")
    return text


def _ip_address(env: Mapping[str, str], name: str) -> str:
    text = _raw(env, name) or VARIABLES[name][0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(
            f"{name}={text!r}: expected an IP address, e.g. 127.0.0.1 (this host only) or "
            "0.0.0.0 (every interface: pods, where Prometheus scrapes)"
        ) from None


def _features(env: Mapping[str, str], name: str) -> frozenset[str]:
    text = env.get(name, VARIABLES[name][0])
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - {*FEATURE_NAMES, "score"})
    if unknown:
        raise ConfigError(
            f"{name}: unknown feature {unknown[0]!r}; features are listed in the README "
            f"(spec {FEATURE_SPEC_VERSION}), e.g. {', '.join(FEATURE_NAMES[:3])}"
        )
    return names


def rule_budget(env: Mapping[str, str]) -> CostBudget:
    """The rule cost limits (``FRAUD_RULE_COST_US``, ``FRAUD_RULES_MAX``, ...; rules/cost.py).

    Also read by the publisher (``just rules``), so that it refuses what the flow refuses.
    """
    return CostBudget(
        row_us=_float(env, "FRAUD_RULE_COST_US", 1.0, 100_000.0),
        max_rules=_int(env, "FRAUD_RULES_MAX", 1, 10_000),
        overrun_batches=_int(env, "FRAUD_RULE_OVERRUN_BATCHES", 1, 1_000),
        shadow_row_us=_float(env, "FRAUD_SHADOW_RULES_COST_US", 1.0, 100_000.0),
        max_list_entries=_int(env, "FRAUD_LIST_MAX_ENTRIES", 1, 10_000_000),
        max_entries=_int(env, "FRAUD_LISTS_MAX_ENTRIES", 1, 10_000_000),
    )


@dataclass(frozen=True)
class DriftSettings:
    """Drift snapshots, label feedback and the sample for ``just drift-report``."""

    window_ms: int
    grace_ms: int
    flush_seconds: int
    psi_threshold: float
    min_count: int
    ignore: frozenset[str]
    verdict_horizon_ms: int
    label_horizon_ms: int
    sample_dir: Path
    sample_rate: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DriftSettings:
        """Read and validate the ``FRAUD_DRIFT_*``, verdict and sample variables."""
        return cls(
            window_ms=_int(env, "FRAUD_DRIFT_WINDOW_SECONDS", 1, 7 * 86_400) * 1000,
            grace_ms=_int(env, "FRAUD_DRIFT_GRACE_SECONDS", 0, 86_400) * 1000,
            flush_seconds=_int(env, "FRAUD_DRIFT_FLUSH_SECONDS", 1, 86_400),
            psi_threshold=_float(env, "FRAUD_DRIFT_PSI_THRESHOLD", 0.0, 100.0),
            min_count=_int(env, "FRAUD_DRIFT_MIN_COUNT", 0, 10**9),
            ignore=_features(env, "FRAUD_DRIFT_IGNORE"),
            verdict_horizon_ms=_int(env, "FRAUD_VERDICT_HORIZON_DAYS", 1, 3650) * 86_400_000,
            label_horizon_ms=_int(env, "FRAUD_LABEL_HORIZON_DAYS", 1, 3650) * 86_400_000,
            sample_dir=Path(_raw(env, "FRAUD_SAMPLE_DIR") or VARIABLES["FRAUD_SAMPLE_DIR"][0]),
            sample_rate=_float(env, "FRAUD_SAMPLE_RATE", 0.0, 1.0),
        )


@dataclass(frozen=True)
class ScoringSettings:
    """Everything the scoring flow needs, validated."""

    kafka: KafkaSettings
    model_path: Path
    shadow_model_path: Path | None
    model_reload_seconds: int
    state_dir: Path
    card_shards: int
    merchant_shards: int
    routing: str
    batch_max: int
    review_threshold: float | None
    decline_threshold: float | None
    reason_codes: int
    rule_budget: CostBudget
    max_message_bytes: int
    max_skew_ms: int
    skew_policy: str
    miskeyed: str
    miskeyed_hold_ms: int
    input_linger_ms: int
    input_idle_ms: int
    idle_grace_ms: int
    align_ms: int
    reorder_max: int
    metrics_port: int
    metrics_bind: str
    rules_trusted_keys: Path
    log_level: str
    stop_grace_seconds: int
    input_check_seconds: int
    broker_unreachable_seconds: int
    debug_log: Path | None
    drift: DriftSettings
    rates_file: Path | None = None
    """The operator's rates file (:func:`topics.currency.load_rates_file`); read at start-up."""
    pan_key_file: Path | None = None
    """The PAN tokenisation key's file (:meth:`topics.pan.PanKey.from_file`); only its path
    is kept here, the key is read once at start-up and never logged."""
    tracing: bool = False
    """W3C trace context continued and spans exported (:mod:`tracing`)."""
    trace_sample_rate: float = 0.0
    """Probability that a transaction without a ``traceparent`` starts a trace (0-1)."""
    changelog: bool = False
    recovery_backup_seconds: int = 30
    """With :attr:`changelog`: how often process 0 copies its recovery partitions (0: never)."""
    """The stores log their changes to compacted topics and are restored from them."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ScoringSettings:
        """Read and validate every ``FRAUD_*`` variable of the flow."""
        env = os.environ if env is None else env
        unknown = sorted(
            name
            for name in env
            if name.startswith(ENV_PREFIX)
            and name not in VARIABLES
            and not name.startswith((ENV_PREFIX + "KAFKA_", ENV_PREFIX + "TOPIC_"))
        )
        if unknown:
            raise ConfigError(
                f"unknown setting {unknown[0]}; known: {', '.join(sorted(VARIABLES))}, "
                "FRAUD_KAFKA_<librdkafka property>, FRAUD_TOPIC_<topic>"
            )
        review = _probability(env, "FRAUD_REVIEW_THRESHOLD")
        decline = _probability(env, "FRAUD_DECLINE_THRESHOLD")
        if review is not None and decline is not None and review > decline:
            raise ConfigError(
                f"FRAUD_REVIEW_THRESHOLD={review} is above FRAUD_DECLINE_THRESHOLD={decline}; "
                "review must be the lower threshold"
            )
        level = (_raw(env, "FRAUD_LOG_LEVEL") or "INFO").upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"FRAUD_LOG_LEVEL={level!r}: expected DEBUG, INFO, WARNING or ERROR")
        shadow = _raw(env, "FRAUD_SHADOW_MODEL_PATH")
        return cls(
            kafka=KafkaSettings.from_env(env),
            model_path=Path(_raw(env, "FRAUD_MODEL_PATH") or VARIABLES["FRAUD_MODEL_PATH"][0]),
            shadow_model_path=Path(shadow) if shadow else None,
            model_reload_seconds=_int(env, "FRAUD_MODEL_RELOAD_SECONDS", 0, 3600),
            state_dir=Path(_raw(env, "FRAUD_STATE_DIR") or VARIABLES["FRAUD_STATE_DIR"][0]),
            card_shards=_int(env, "FRAUD_CARD_SHARDS", 1, 1024),
            merchant_shards=_int(env, "FRAUD_MERCHANT_SHARDS", 1, 1024),
            routing=_choice(env, "FRAUD_ROUTING", ("v1", "v2")),
            batch_max=_int(env, "FRAUD_BATCH_MAX", 1, 100_000),
            review_threshold=review,
            decline_threshold=decline,
            reason_codes=_int(env, "FRAUD_REASON_CODES", 0, 5),
            rule_budget=rule_budget(env),
            max_message_bytes=_int(env, "FRAUD_MAX_MESSAGE_BYTES", 1024, 16 * 1024 * 1024),
            max_skew_ms=_int(env, "FRAUD_MAX_SKEW_SECONDS", 0, 7 * 86_400) * 1000,
            skew_policy=_choice(env, "FRAUD_SKEW_POLICY", ("clamp", "dead-letter")),
            miskeyed=_choice(env, "FRAUD_MISKEYED", ("route", "refuse")),
            miskeyed_hold_ms=_int(env, "FRAUD_MISKEYED_HOLD_MS", 0, 60_000),
            input_linger_ms=_int(env, "FRAUD_INPUT_LINGER_MS", 0, 1000),
            input_idle_ms=_int(env, "FRAUD_INPUT_IDLE_MS", 10, 3_600_000),
            idle_grace_ms=_int(env, "FRAUD_IDLE_GRACE_MS", 0, 60_000),
            align_ms=_int(env, "FRAUD_ALIGN_MS", 0, 3_600_000),
            reorder_max=_int(env, "FRAUD_REORDER_MAX", 1000, 10_000_000),
            metrics_port=_int(env, "FRAUD_METRICS_PORT", 0, 65_535),
            metrics_bind=_ip_address(env, "FRAUD_METRICS_BIND"),
            rules_trusted_keys=Path(_raw(env, "FRAUD_RULES_TRUSTED_KEYS")
                                    or VARIABLES["FRAUD_RULES_TRUSTED_KEYS"][0]),
            log_level=level,
            stop_grace_seconds=_int(env, "FRAUD_STOP_GRACE_SECONDS", 1, 3600),
            input_check_seconds=_int(env, "FRAUD_INPUT_CHECK_SECONDS", 1, 3600),
            broker_unreachable_seconds=_int(env, "FRAUD_BROKER_UNREACHABLE_SECONDS", 10, 86_400),
            debug_log=Path(debug) if (debug := _raw(env, "FRAUD_DEBUG_LOG")) else None,
            drift=DriftSettings.from_env(env),
            rates_file=Path(rates) if (rates := _raw(env, "FRAUD_RATES_FILE")) else None,
            pan_key_file=Path(key) if (key := _raw(env, "FRAUD_PAN_KEY_FILE")) else None,
            tracing=_choice(env, "FRAUD_TRACING", ("off", "on")) == "on",
            trace_sample_rate=_float(env, "FRAUD_TRACE_SAMPLE_RATE", 0.0, 1.0),
            changelog=_choice(env, "FRAUD_CHANGELOG", ("off", "on")) == "on",
            recovery_backup_seconds=_int(env, "FRAUD_RECOVERY_BACKUP_SECONDS", 0, 3600),
        )
