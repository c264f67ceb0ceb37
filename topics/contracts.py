"""Wire contracts: one typed, versioned struct per topic, JSON on the wire.

Each struct is the single source of truth for its topic. The JSON Schemas in
``topics/schemas/`` are generated from these classes (``just schemas``) and a
test fails when they are stale. Times are UTC epoch milliseconds everywhere.

Evolving a contract: adding an optional field is compatible and keeps the
version; renaming, removing or tightening a field bumps ``SCHEMA_VERSION`` of
that topic and gets a new schema file.

>>> import msgspec
>>> txn = Transaction(transaction_id="t1", card_id="c1", merchant_id="m1",
...                   amount=12.5, currency="EUR", event_time=1700000000000)
>>> msgspec.json.encode(txn)
b'{"transaction_id":"t1","card_id":"c1","merchant_id":"m1","amount":12.5,"currency":"EUR","event_time":1700000000000}'
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, description="Opaque identifier.")]
#: 9999-12-31T23:59:59.999Z: anything later is not a time in milliseconds.
MAX_EPOCH_MS = 253_402_300_799_999
EpochMs = Annotated[
    int,
    msgspec.Meta(ge=0, le=MAX_EPOCH_MS, description="UTC time in ms since the Unix epoch."),
]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

#: Largest amount accepted; anything above is a unit error (cents sent as units) or garbage.
MAX_AMOUNT = 10_000_000.0

Channel = Literal["pos", "ecom", "atm", "moto"]
EntryMode = Literal["chip", "contactless", "swipe", "manual", "ecom"]
Decision = Literal["approve", "review", "decline"]
AttributeValue = str | int | float | bool | None


class Transaction(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """A card transaction, as payment systems publish it to ``transactions`` (key: card id).

    ``event_time`` is epoch milliseconds once validated; on the wire an RFC 3339
    string with an offset is also accepted (see ``topics.validation``).
    """

    transaction_id: Id
    card_id: Id
    merchant_id: Id
    amount: Annotated[
        float,
        msgspec.Meta(gt=0.0, le=MAX_AMOUNT, description="Amount in major units of `currency`."),
    ]
    currency: Annotated[
        str, msgspec.Meta(pattern="^[A-Z]{3}$", description="ISO 4217 alphabetic code.")
    ]
    event_time: EpochMs
    mcc: Annotated[
        str, msgspec.Meta(pattern="^[0-9]{4}$", description="ISO 18245 merchant category code.")
    ] | None = None
    channel: Channel | None = None
    entry_mode: EntryMode | None = None
    country: Annotated[
        str, msgspec.Meta(pattern="^[A-Z]{2}$", description="ISO 3166-1 alpha-2 of the merchant.")
    ] | None = None
    lat: Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)] | None = None
    lon: Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)] | None = None
    device_id: Id | None = None
    ip: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    customer_id: Id | None = None
    attributes: dict[str, AttributeValue] | None = None

    SCHEMA_VERSION = 1
    #: Fields that may arrive as RFC 3339 strings and are normalised to epoch ms.
    WIRE_TIME_FIELDS = ("event_time",)


class ReasonCode(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One reason a transaction was flagged: a feature and words an analyst understands."""

    feature: str
    text: str


class Prediction(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """The verdict on one transaction, published to ``predictions`` (key: transaction id)."""

    transaction_id: Id
    card_id: Id
    event_time: EpochMs
    score: Probability
    decision: Decision
    model_version: str
    feature_spec_version: str
    reasons: list[ReasonCode] = []
    shadow_score: Probability | None = None
    shadow_decision: Decision | None = None
    shadow_model_version: str | None = None
    ingest_time: Annotated[
        int, msgspec.Meta(description="When the transaction reached Kafka (record timestamp, ms).")
    ] = 0
    scored_time: Annotated[
        int, msgspec.Meta(description="When the verdict was computed (ms).")
    ] = 0
    schema_version: int = 1

    SCHEMA_VERSION = 1


class Label(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Ground truth for one transaction, published to ``labels`` (key: transaction id).

    A label is known from ``label_time`` on (chargeback or analyst decision),
    never earlier: features only use labels whose ``label_time`` has passed.
    """

    transaction_id: Id
    card_id: Id
    merchant_id: Id
    is_fraud: bool
    label_time: EpochMs
    source: Literal["chargeback", "analyst", "customer", "other"] | None = None

    SCHEMA_VERSION = 1
    WIRE_TIME_FIELDS = ("label_time",)


class LabelFeedback(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Labels that arrived in a window, joined with the verdicts they judge (one model version).

    ``flagged`` means review or decline. A precision or recall is absent when its
    denominator is zero.
    """

    fraud_declined: int = 0
    fraud_reviewed: int = 0
    fraud_approved: int = 0
    legit_declined: int = 0
    legit_reviewed: int = 0
    legit_approved: int = 0
    precision_flagged: Probability | None = None
    recall_flagged: Probability | None = None
    precision_decline: Probability | None = None
    recall_decline: Probability | None = None


class ShadowSummary(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """How the shadow challenger compared with the champion over a window."""

    model_version: str
    count: Annotated[int, msgspec.Meta(ge=0, description="Transactions scored by both.")]
    agreement: Probability | None = None
    score_correlation: Annotated[
        float | None, msgspec.Meta(description="Pearson, champion vs shadow scores.")
    ] = None
    labels: LabelFeedback | None = None


class DriftSnapshot(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Drift, decisions and label feedback of one model version over one event-time window.

    Published to ``drift`` (key: ``<window_start>/<model_version>``) once every
    input partition has passed the window's end (``complete``), or after a flush
    timeout with the partitions that had (``partitions``). PSI compares the
    window with the reference histograms in the model's metadata; it is absent
    for a window with labels but no transactions scored by that version.
    """

    window_start: EpochMs
    window_end: EpochMs
    model_version: str
    count: Annotated[int, msgspec.Meta(ge=0, description="Transactions scored.")]
    feature_psi: dict[str, float] = {}
    score_psi: float | None = None
    decision_rates: dict[str, float] = {}
    alerts: list[str] = []
    psi_threshold: float = 0.2
    partitions: int = 0
    complete: bool = True
    labels: LabelFeedback | None = None
    labels_unknown: Annotated[
        int, msgspec.Meta(ge=0, description="Labels whose transaction has no stored verdict.")
    ] = 0
    shadow: ShadowSummary | None = None
    schema_version: int = 1

    SCHEMA_VERSION = 1


ErrorClass = Literal[
    "too_large",
    "empty",
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "unknown_currency",
    "unknown_country",
    "bad_event_time",
    "future_event_time",
]


class DeadLetter(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """A message that could not be used, with its exact bytes and why (``dead-letter``)."""

    source_topic: str
    partition: int
    offset: int
    key_b64: str | None = None
    value_b64: str | None = None
    error_class: ErrorClass
    reason: str
    time: EpochMs
    schema_version: int = 1

    SCHEMA_VERSION = 1
