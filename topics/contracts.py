"""Wire contracts: one typed, versioned struct per topic, JSON on the wire.

Each struct is the single source of truth for its topic. The JSON Schemas in
``topics/schemas/`` are generated from these classes (``just schemas``) and a
test fails when they are stale. Times are UTC epoch milliseconds everywhere.

Evolving a contract: any change to a topic's fields bumps ``SCHEMA_VERSION`` of
that topic and gets a new schema file (``topics/schemas/<topic>.v<N>.json``; old
files stay). An added field is optional and omitted when it has its default, so a
message of the previous version decodes unchanged and a record that uses no new
field has the same bytes as before. Versions now: transactions v3 (v2: cardholder
billing amount and currency, amount 0 allowed; v3: ``card_bin``, ``card_last4``),
predictions v3 (v2: rule hits, the model's own decision, reference amount, clamped
event time; v3: ``amount_unrated``, ``rate_table``), dead-letter v3 (v2: bounded
copies with length and SHA-256; v3: card data masked, ``masked``), labels v1, drift v1.

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

#: Absolute guard against garbage, in major units of any currency (far above 1 million EUR
#: in the weakest currency). The real limit is per currency, in the reference currency:
#: ``topics.validation.MAX_REFERENCE_AMOUNT``.
MAX_AMOUNT = 1e13

Channel = Literal["pos", "ecom", "atm", "moto"]
EntryMode = Literal["chip", "contactless", "swipe", "manual", "ecom"]
Decision = Literal["approve", "review", "decline"]
RuleAction = Literal["decline", "review", "approve", "tag"]
RuleMode = Literal["active", "shadow"]
CurrencyCode = Annotated[
    str, msgspec.Meta(pattern="^[A-Z]{3}$", description="ISO 4217 alphabetic code.")
]
AttributeValue = str | int | float | bool | None


def checked_pattern(pattern: str, description: str) -> msgspec.Meta:
    """A string ``pattern`` the JSON Schema states and the decoder checks, not msgspec.

    msgspec runs a ``pattern`` through Python's ``re`` at every decode (about 1.4 µs
    a field, a third of a transaction's decode); ``topics.validation`` checks the
    :attr:`Transaction.PATTERNS` fields itself, remembering values that passed, with
    the same error. The schema is unchanged (``extra_json_schema``).
    """
    return msgspec.Meta(description=description, extra_json_schema={"pattern": pattern})


class Transaction(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """A card transaction, as payment systems publish it to ``transactions`` (key: card id).

    ``amount`` is in major units of ``currency`` (the transaction currency, ISO 8583
    DE4/DE49), with at most that currency's ISO 4217 minor-unit decimals; 0 is a
    zero-value authorisation (account verification), negative is refused.
    ``billing_amount``/``billing_currency`` (ISO 8583 DE6/DE51, both or neither)
    are what the cardholder is billed in the card's currency; when present, amount
    features use them (``topics.currency.reference_amount``).
    ``event_time`` is epoch milliseconds once validated; on the wire an RFC 3339
    string with an offset, or an integral JSON float, is also accepted (see
    ``topics.validation``).

    ``card_id`` is a token, never a card number (PAN): a PAN sent there (13-19
    digits, Luhn-valid, spaces or dashes allowed) is tokenised at decode with a
    keyed hash, or refused without a key (:mod:`topics.pan`). v3: ``card_bin`` and
    ``card_last4`` are the BIN (first 6 digits, or 8 for PANs of 16+ digits) and
    the last 4 digits, for BIN lists and display; sent by a tokenising producer,
    or kept at decode from a PAN.
    """

    transaction_id: Id
    card_id: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=128,
            description="Card token (opaque; never a PAN: a PAN here is tokenised at decode "
            "with HMAC-SHA-256, or refused when no key is configured).",
        ),
    ]
    card_bin: Annotated[
        str,
        checked_pattern("^[0-9]{6,8}$",
                        "BIN/IIN of the card (ISO/IEC 7812-1), 6 or 8 digits (v3)."),
    ] | None = None
    card_last4: Annotated[
        str, checked_pattern("^[0-9]{4}$", "Last 4 digits of the PAN (v3).")
    ] | None = None
    merchant_id: Id
    amount: Annotated[
        float,
        msgspec.Meta(
            ge=0.0,
            le=MAX_AMOUNT,
            description="Amount in major units of `currency` (ISO 8583 DE4); 0 is a "
            "zero-value authorisation; at most the currency's ISO 4217 minor-unit decimals.",
        ),
    ]
    currency: Annotated[
        str,
        checked_pattern("^[A-Z]{3}$", "ISO 4217 alphabetic code (DE49)."),
    ]
    billing_amount: Annotated[
        float,
        msgspec.Meta(
            ge=0.0,
            le=MAX_AMOUNT,
            description="Cardholder billing amount (ISO 8583 DE6), major units of "
            "`billing_currency`; give both billing fields or neither.",
        ),
    ] | None = None
    billing_currency: Annotated[
        str,
        checked_pattern(
            "^[A-Z]{3}$",
            "Cardholder billing currency (ISO 8583 DE51), ISO 4217 alphabetic code.",
        ),
    ] | None = None
    event_time: EpochMs
    mcc: Annotated[
        str, checked_pattern("^[0-9]{4}$", "ISO 18245 merchant category code.")
    ] | None = None
    channel: Channel | None = None
    entry_mode: EntryMode | None = None
    country: Annotated[
        str, checked_pattern("^[A-Z]{2}$", "ISO 3166-1 alpha-2 of the merchant.")
    ] | None = None
    lat: Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)] | None = None
    lon: Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)] | None = None
    device_id: Id | None = None
    ip: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    customer_id: Id | None = None
    attributes: dict[str, AttributeValue] | None = None

    SCHEMA_VERSION = 3
    #: Fields that may arrive as RFC 3339 strings and are normalised to epoch ms.
    WIRE_TIME_FIELDS = ("event_time",)
    #: String fields whose pattern the decoder checks (:func:`checked_pattern`).
    PATTERNS = {"card_bin": "^[0-9]{6,8}$", "card_last4": "^[0-9]{4}$",
                "currency": "^[A-Z]{3}$", "billing_currency": "^[A-Z]{3}$",
                "mcc": "^[0-9]{4}$", "country": "^[A-Z]{2}$"}


class ReasonCode(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One reason a transaction was flagged: a feature and words an analyst understands."""

    feature: str
    text: str


# --- analyst rules and lists (compacted topics ``rules`` and ``lists``; see the rules room)

RuleId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
        description="Stable rule id: letters, digits, `_.:-`, at most 64 characters.",
    ),
]
ListName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="List name as used in expressions (`lists.<name>`): lower case, digits, `_`.",
    ),
]
ListKind = Literal["card_id", "merchant_id", "device_id", "ip_range", "bin_prefix", "country"]
#: Fields that may arrive as RFC 3339 strings and are normalised to epoch ms.
RULE_TIME_FIELDS = ("valid_from", "valid_until")
ENTRY_TIME_FIELDS = ("valid_from", "expires")


class Rule(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True, gc=False):
    """An analyst rule, published to ``rules`` (key: rule id).

    ``expression`` is CEL (https://cel.dev) over the transaction's fields, the
    features by name, ``score``, ``model_decision`` and ``lists`` (see
    :mod:`rules.names`; compiled and checked by :mod:`rules.compile`). ``action``:
    ``decline``, ``review``, ``approve`` (an allowlist override of the model) or ``tag``
    (recorded only). ``mode``
    ``shadow`` evaluates and counts but never changes a decision. The rule is in
    force for transactions whose event time ``t`` has ``valid_from <= t <
    valid_until`` (either bound optional). A higher ``version`` replaces a lower
    one; ``description`` is the analyst-readable reason shown in verdicts.
    """

    id: RuleId
    version: Annotated[int, msgspec.Meta(ge=1, description="Increases with every change.")]
    description: Annotated[
        str, msgspec.Meta(min_length=1, max_length=500, description="Reason shown to analysts.")
    ]
    owner: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    expression: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    action: RuleAction
    mode: RuleMode = "active"
    priority: Annotated[
        int, msgspec.Meta(description="Higher first when several rules hit; then id.")
    ] = 0
    valid_from: EpochMs | None = None
    valid_until: EpochMs | None = None
    enabled: bool = True
    schema_version: int = 1

    SCHEMA_VERSION = 1
    WIRE_TIME_FIELDS = RULE_TIME_FIELDS


class ListEntry(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True, gc=False):
    """One member of a named list, published to ``lists`` (key: ``<list>/<value>``).

    How ``value`` matches depends on ``kind``: equal text for ``card_id``,
    ``merchant_id``, ``device_id`` and ``country`` (ISO 3166-1 alpha-2); the
    address inside the network for ``ip_range`` (CIDR, RFC 4632; IPv4 or IPv6; a
    bare address is a /32 or /128); a prefix of the card's BIN for
    ``bin_prefix`` (1-8 digits, ISO/IEC 7812). The entry is in force for event
    times ``valid_from <= t < expires`` (either bound optional).
    """

    list: ListName
    kind: ListKind
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    expires: EpochMs | None = None
    valid_from: EpochMs | None = None
    added_by: Annotated[str, msgspec.Meta(max_length=128)] = ""
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""
    schema_version: int = 1

    SCHEMA_VERSION = 1
    WIRE_TIME_FIELDS = ENTRY_TIME_FIELDS


class RuleAudit(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True, gc=False):
    """One rule or list change as published, on ``rules-audit`` (append-only, never compacted).

    Written by the publisher (``just rules``) before the change itself, so no change
    takes effect without its entry; the flow's refusals are on ``dead-letter``.
    ``outcome`` is what the publisher expects the flow to do: ``in_force`` (at
    ``valid_from``), or ``pending`` (it loosens decisions, ``loosens`` says how,
    and waits for a second analyst). ``value`` is the exact record published
    (``value_sha256`` its SHA-256), so the history survives a compacted topic.
    """

    time: EpochMs
    analyst: Annotated[str, msgspec.Meta(description="Who signed this publication.")]
    command: Literal["add", "update", "disable", "delete", "approve", "add-entries",
                     "remove-entries"]
    topic: Literal["rules", "lists"]
    key: Annotated[str, msgspec.Meta(description="Rule id or `<list>/<value>`.")]
    version: int | None = None
    outcome: Literal["in_force", "pending"]
    signers: list[str]
    loosens: str = ""
    reason: Annotated[str, msgspec.Meta(max_length=500, description="Why, in the analyst's "
                                        "words (--reason).")] = ""
    value: str
    value_sha256: str
    schema_version: int = 1

    SCHEMA_VERSION = 1


class RuleHit(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, gc=False):
    """One business rule that matched a transaction, and what it did (or would do)."""

    rule_id: Annotated[str, msgspec.Meta(description="Stable id of the rule.")]
    version: Annotated[int, msgspec.Meta(ge=1, description="Version of the rule's text.")]
    action: Annotated[
        RuleAction, msgspec.Meta(description="decline, review, approve, or tag (no decision).")
    ]
    mode: Annotated[
        RuleMode,
        msgspec.Meta(description="active: applied to the decision; shadow: recorded only."),
    ]
    text: Annotated[str, msgspec.Meta(description="Why, in words an analyst understands.")]


class Prediction(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """The verdict on one transaction, published to ``predictions`` (key: transaction id).

    v2 fields (each omitted when it has its default, so a v1 verdict's bytes are
    unchanged): ``model_decision`` is the model's own decision from ``score``
    before rules (absent: no rule changed it, ``decision`` is the model's);
    ``rule_hits`` are the rules that matched (active ones may have changed
    ``decision``; shadow ones are recorded only); ``rule_set_version`` is the
    rule set that was evaluated; ``event_time_clamped`` is true when the event
    time was ahead of the Kafka record timestamp by more than the allowed skew and
    features used the record timestamp instead; ``amount_reference`` is the
    amount the features used, in ``reference_currency`` (billing amount when the
    transaction had one), converted with the rate table in the model's metadata.

    v3 fields: ``amount_unrated`` is true when no rate converted the amount (no
    billing amount in the reference currency or a rated one, no rate for the
    transaction currency): the transaction was scored with its amount features at
    their neutral values, ``amount_reference`` is absent and a reason
    ``amount_unrated`` names the currency; ``rate_table`` is the version of the rate
    table the flow converted with (the model's, plus the operator's rates file,
    e.g. ``ecb-2026-10-30+pegs.1+treasury-2026-12-07``).
    """

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
    model_decision: Annotated[
        Decision | None,
        msgspec.Meta(description="The model's decision before rules; absent: same as decision."),
    ] = None
    rule_hits: list[RuleHit] = []
    rule_set_version: Annotated[
        str | None, msgspec.Meta(description="Version of the rule set evaluated.")
    ] = None
    event_time_clamped: Annotated[
        bool,
        msgspec.Meta(
            description="Event time was ahead of the record timestamp by more than the "
            "allowed skew; features used the record timestamp."
        ),
    ] = False
    amount_reference: Annotated[
        float | None,
        msgspec.Meta(description="Amount used by the features, in reference_currency."),
    ] = None
    reference_currency: Annotated[
        str, msgspec.Meta(pattern="^[A-Z]{3}$", description="ISO 4217 code of amount_reference.")
    ] | None = None
    amount_unrated: Annotated[
        bool,
        msgspec.Meta(
            description="No rate converted the amount: scored with neutral amount features "
            "(see the reason amount_unrated)."
        ),
    ] = False
    rate_table: Annotated[
        str | None,
        msgspec.Meta(description="Version of the rate table amounts were converted with."),
    ] = None
    schema_version: int = 3

    SCHEMA_VERSION = 3


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


class RuleHits(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """One analyst rule's hits over a window: how often, and how often the model agreed."""

    rule_id: str
    mode: Literal["active", "shadow"]
    hits: Annotated[int, msgspec.Meta(ge=0, description="Transactions the rule hit.")]
    model_flagged: Annotated[int, msgspec.Meta(
        ge=0, description="Of those, the ones the model alone would review or decline.")] = 0


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
    rules: list[RuleHits] = []
    """Analyst rule hits in the window (active and shadow rules), by rule id."""
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
    # v2
    "amount_precision",
    "amount_limit",
    "unknown_rate",
    "duplicate_conflict",
    "mis_keyed",
    "internal_error",
    # rules and lists records the rule book refused
    "rule_invalid",
    "rule_compile",
    "rule_conflict",
    "list_invalid",
    # not signed by a trusted analyst (or a tombstone): docs/rules-security.md
    "rule_unauthenticated",
    "list_unauthenticated",
    # over the rule cost budget, or beyond the cap on rules in force: rules/cost.py
    "rule_too_costly",
    "too_many_rules",
    # a new list entry beyond the cap of its list or of all lists: rules/cost.py
    "list_full",
    # card data (issue 22): a PAN where a token belongs and no key to tokenise it
    "pan_in_clear",
    # a label whose transaction never became known to the merchant stage: state/labels.py
    "label_unjoined",
]
"""Why a record went to the dead-letter topic (a bounded set: it is a metric label).

v2 adds ``amount_precision`` (more decimals than the currency's ISO 4217 minor
units), ``amount_limit`` (above the per-currency limit, expressed in the reference
currency), ``unknown_rate`` (no exchange rate for the currency in the rate table; no
longer raised since predictions v3: such an amount is scored, ``amount_unrated``),
``duplicate_conflict`` (a transaction id already seen with a different body),
``mis_keyed`` (a record on the wrong partition for its card, when routing is
configured to refuse) and ``internal_error`` (a bug met this record; the flow
went on).
"""


class DeadLetter(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """A record that could not be used: where it is, a bounded copy, and why (``dead-letter``).

    The original stays on the source topic at ``partition``/``offset``. The copy is
    a prefix of at most a few KiB (``value_complete`` false when cut), with the full
    length and SHA-256 of the value, so a dead letter always fits the topic whatever
    the input. ``time`` is the source record's Kafka timestamp, so a dead letter
    re-emitted after a replay is byte-identical.

    v3: the copies (key, value, reason) never hold card data in clear: PANs keep at
    most their first 6 and last 4 digits, card verification codes, track and PIN
    data are masked (``*``, same length; :func:`topics.pan.scrub`). ``masked`` says
    so, and ``value_sha256`` is then the hash of the masked value: an unkeyed hash of
    a value holding a PAN could be reversed by trying the hidden digits.
    """

    source_topic: str
    partition: int
    offset: int
    key_b64: Annotated[
        str | None, msgspec.Meta(description="The key (base64), or its prefix if cut.")
    ] = None
    key_len: Annotated[
        int | None, msgspec.Meta(description="Full key length in bytes (v2; absent: no key).")
    ] = None
    key_complete: Annotated[
        bool, msgspec.Meta(description="False when key_b64 holds only a prefix (v2).")
    ] = True
    value_b64: Annotated[
        str | None, msgspec.Meta(description="The value (base64), or its prefix if cut.")
    ] = None
    value_len: Annotated[
        int | None, msgspec.Meta(description="Full value length in bytes (v2; absent: no value).")
    ] = None
    value_sha256: Annotated[
        str | None,
        msgspec.Meta(description="Hex SHA-256 of the full value (v2), as masked (v3)."),
    ] = None
    value_complete: Annotated[
        bool, msgspec.Meta(description="False when value_b64 holds only a prefix (v2).")
    ] = True
    error_class: ErrorClass
    reason: str
    time: Annotated[
        int,
        msgspec.Meta(
            ge=0, le=MAX_EPOCH_MS, description="Kafka timestamp of the source record (ms, v2)."
        ),
    ]
    first_partition: Annotated[
        int | None,
        msgspec.Meta(description="duplicate_conflict: partition where the id was first read."),
    ] = None
    first_offset: Annotated[
        int | None,
        msgspec.Meta(description="duplicate_conflict: offset where the id was first read."),
    ] = None
    expected_partition: Annotated[
        int | None, msgspec.Meta(description="mis_keyed: the card's partition.")
    ] = None
    masked: Annotated[
        bool,
        msgspec.Meta(description="Card data (PAN digits, CVV, track or PIN data) was masked "
                     "in the key, value or reason copies (v3)."),
    ] = False
    schema_version: int = 3

    SCHEMA_VERSION = 3
