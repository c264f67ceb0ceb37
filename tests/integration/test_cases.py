"""The failing inputs from real payment traffic (``tests/fixtures/cases``), on the real flow.

Each case folder holds Kafka records (key, value, record timestamp, maybe a
partition) with a *case* card, disturbed the way payment traffic disturbs it,
and a *control* card with the same history minus the disturbance. Every case is
produced to the embedded broker and scored by the real ``flows.score`` process
(one run for all cases); each test then compares its case card with its control
card, on the verdicts and on the feature vectors the flow sampled (sample rate 1).
The cases are found by kind, not by file: other inputs of the same kinds can be
dropped in (``FRAUD_CASES_DIR`` points at another folder of cases).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from devkit.broker import free_port
from devkit.process import FlowProcess
from flowkit import (
    RULE_KEYS,
    Collector,
    Outcome,
    flow_env,
    metric,
    scrape,
    topic_set,
    wait_until,
)
from rules.signing import sign_json
from state.partitioning import murmur2_partition
from state.spec import FEATURE_NAMES
from topics.admin import ensure_topics
from topics.contracts import Transaction
from topics.deadletter import raw_value
from topics.producer import PRODUCER_DEFAULTS
from topics.settings import KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES = Path(os.environ.get("FRAUD_CASES_DIR") or Path(__file__).parent.parent / "fixtures/cases")
PARTITIONS = 8
VELOCITY = ("card_count_10m", "card_count_1h", "card_count_24h", "card_small_count_10m",
            "card_distinct_merchants_1h", "card_zero_count_24h")


@dataclass
class Record:
    key: bytes | None
    value: bytes
    timestamp: int
    partition: int | None
    case: str
    topic: str = "transactions"

    @property
    def json(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.value.decode("utf-8-sig"))  # type: ignore[no-any-return]
        except ValueError:
            return None


def load_case(folder: Path) -> list[Record]:
    """The records of one case folder (``records.jsonl``, or a gzipped single message)."""
    records = []
    jsonl = folder / "records.jsonl"
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            value = (base64.b64decode(r["value_b64"]) if "value_b64" in r
                     else json.dumps(r["value_json"]).encode())
            key = r.get("key")
            records.append(Record(key.encode() if key is not None else None, value,
                                  int(r["timestamp"]), r.get("partition"), folder.name,
                                  r.get("topic") or "transactions"))
    for gz in sorted(folder.glob("*.json.gz")):
        value = gzip.decompress(gz.read_bytes())
        card = json.loads(value)["card_id"]
        records.append(Record(card.encode(), value, int(time.time() * 1000), None, folder.name))
    return records


@dataclass
class Run:
    """One flow run over every case."""

    records: dict[str, list[Record]]
    outcome: Outcome
    features: dict[str, dict[str, float]]
    metrics: dict[Any, float]
    work: Path
    extra_txn: str = "case-after-oversize"
    dead_by_offset: dict[tuple[int, int], Any] = field(default_factory=dict)


def _partition(r: Record) -> int:
    if r.topic != "transactions":
        return 0 if r.partition is None else int(r.partition)  # rules, lists, labels: one order
    if r.partition is not None:
        return int(r.partition)
    if r.key is not None:
        return murmur2_partition(r.key.decode(), PARTITIONS)
    return 0


#: Case kinds whose rule records are signed by a trusted analyst before they are produced:
#: what they test is not authentication (an unsigned record is refused before its cost is
#: measured) but what a signed rule may still do.
SIGNED_KINDS = ("expensive-",)


def _signed(r: Record) -> bytes:
    if r.topic == "rules" and r.case.startswith(SIGNED_KINDS):
        return sign_json("rules", json.loads(r.value), [RULE_KEYS.maker])
    return r.value


@pytest.fixture(scope="module")
def run(kafka: KafkaSettings, tiny_model_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Run:
    settings = topic_set(kafka, "cases")
    ensure_topics(settings)
    cases = {d.name: load_case(d) for d in sorted(CASES.iterdir()) if d.is_dir()}
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))
    topic = settings.topic("transactions")
    for records in cases.values():
        for r in records:
            producer.produce(settings.topic(r.topic), key=r.key, value=_signed(r),
                             partition=_partition(r), timestamp=r.timestamp)
        producer.flush(30)
    # a valid transaction after everything: the flow kept going past every bad input
    after = Transaction(transaction_id="case-after-oversize", card_id="card-after",
                        merchant_id="m-after", amount=12.0, currency="EUR",
                        event_time=int(time.time() * 1000) - 1000)
    producer.produce(topic, key=b"card-after", value=msgspec.json.encode(after),
                     partition=murmur2_partition("card-after", PARTITIONS))
    assert producer.flush(30) == 0
    work = tmp_path_factory.mktemp("cases")
    port = free_port()
    collector = Collector(settings)
    collector.start()
    flow = FlowProcess(
        flow_env(settings, tiny_model_dir, work, FRAUD_SAMPLE_RATE="1",
                 FRAUD_METRICS_PORT=str(port)),
        work / "flow.log", recovery_dir=work / "recovery")
    try:
        wait_until(lambda: "case-after-oversize" in collector.outcome.verdicts, [flow],
                   "the transaction after every case")
        time.sleep(2)  # late verdicts of other partitions
        samples = scrape(port)
    finally:
        flow.stop()
        collector.stop()
    features: dict[str, dict[str, float]] = {}
    for path in (work / "samples").rglob("*.parquet"):
        for row in pq.read_table(path).to_pylist():
            features[row["transaction_id"]] = {n: row[n] for n in FEATURE_NAMES}
    return Run(cases, collector.outcome, features, samples, work)


def _txns(records: list[Record]) -> list[dict[str, Any]]:
    return [j for r in records
            if r.topic == "transactions" and (j := r.json) is not None and "transaction_id" in j]


def _final(records: list[Record], card: str) -> str:
    """The card's last transaction as produced (the one whose features the case is about)."""
    mine = [j for j in _txns(records) if j["card_id"] == card]
    return str(mine[-1]["transaction_id"])


def _pair(records: list[Record], disturbed: Any) -> tuple[str, str]:
    """(case card, control card): the card with a disturbed record, and the other one."""
    cards: dict[str, bool] = {}
    for r in records:
        j = r.json
        if r.topic != "transactions" or j is None or "card_id" not in j:
            continue
        cards[j["card_id"]] = cards.get(j["card_id"], False) or bool(disturbed(r, j))
    case = [c for c, d in cards.items() if d]
    control = [c for c, d in cards.items() if not d]
    assert len(case) == 1 and len(control) == 1, cards
    return case[0], control[0]


def _velocity(run: Run, tid: str) -> dict[str, float]:
    assert tid in run.features, f"no sampled feature vector for {tid}"
    return {k: run.features[tid][k] for k in VELOCITY}


def _records(run: Run, kind: str) -> list[Record]:
    found = [r for name, rs in run.records.items() if name.startswith(kind) for r in rs]
    if not found:
        pytest.skip(f"no case of kind {kind!r} in {CASES}")
    return found


def test_duplicate_delivery(run: Run) -> None:
    """A re-delivered transaction re-emits its verdict and changes no card state."""
    records = _records(run, "duplicate-delivery")
    ids = [j["transaction_id"] for j in _txns(records)]
    repeated = {t for t in ids if ids.count(t) > 1}
    case, control = _pair(records, lambda r, j: j["transaction_id"] in repeated)
    for tid in set(ids):
        bodies = {msgspec.json.encode(v) for v in run.outcome.verdicts[tid]}
        assert len(bodies) == 1, tid  # one verdict value per transaction id
    a, b = _final(records, case), _final(records, control)
    assert _velocity(run, a) == _velocity(run, b)
    assert run.outcome.verdicts[a][0].score == pytest.approx(
        run.outcome.verdicts[b][0].score, abs=1e-6)
    assert metric(run.metrics, "fraud_duplicate_transactions_total", kind="redelivery") >= len(
        repeated)


def test_zero_amount_verification(run: Run) -> None:
    """Zero-value authorisations are scored and count in the card's velocity."""
    records = _records(run, "zero-amount")
    case, control = _pair(records, lambda r, j: float(j.get("amount", 1)) == 0.0)
    zeros = [j["transaction_id"] for j in _txns(records) if float(j["amount"]) == 0.0]
    assert zeros and all(t in run.outcome.verdicts for t in zeros)  # scored, not dead-lettered
    a, b = _final(records, case), _final(records, control)
    va, vb = _velocity(run, a), _velocity(run, b)
    assert va["card_count_10m"] == vb["card_count_10m"] > 0
    assert va["card_small_count_10m"] == vb["card_small_count_10m"]
    assert va["card_zero_count_24h"] == len(zeros)
    assert run.outcome.verdicts[a][0].decision == run.outcome.verdicts[b][0].decision


def test_foreign_currency_is_compared_in_the_reference_currency(run: Run) -> None:
    """An amount in another currency is converted, never read as an amount spike."""
    records = _records(run, "jpy-amount")
    case, control = _pair(records, lambda r, j: j.get("currency") != "EUR")
    a, b = _final(records, case), _final(records, control)
    va, vb = run.outcome.verdicts[a][0], run.outcome.verdicts[b][0]
    assert va.reference_currency == "EUR"
    assert va.amount_reference == pytest.approx(vb.amount_reference, rel=0.25)
    ratio_a = run.features[a]["card_amount_ratio_30d"]
    assert ratio_a == pytest.approx(run.features[b]["card_amount_ratio_30d"], rel=0.25)
    assert not any("average" in r.text and r.feature.startswith("card_amount")
                   and ratio_a < 3 for r in va.reasons)
    assert va.decision == vb.decision


def test_future_stamped_event_does_not_blind_velocity(run: Run) -> None:
    """An event time far ahead of its record timestamp never moves the card's clock.

    Every case folder of this kind (``future-stamped*``, e.g.
    ``future-stamped-event-blinds-velocity``).
    """
    records = _records(run, "future-stamped")
    skew = 5 * 60_000
    ahead = [j["transaction_id"] for r in records if (j := r.json) is not None
             and j["event_time"] > r.timestamp + skew]
    case, control = _pair(records, lambda r, j: j["transaction_id"] in ahead)
    a, b = _final(records, case), _final(records, control)
    assert run.features[a]["card_count_10m"] >= run.features[b]["card_count_10m"] > 1
    assert run.features[a]["card_count_1h"] >= run.features[b]["card_count_1h"] - 1
    for tid in ahead:  # scored at the record timestamp, and said so
        assert run.outcome.verdicts[tid][0].event_time_clamped
    assert metric(run.metrics, "fraud_event_time_clamped_total") >= len(ahead)


def test_null_key_records_are_routed_to_their_card(run: Run) -> None:
    """Records produced without a key reach their card's state: no split velocity.

    Every case folder of this kind (``null-key*``, e.g. ``null-key-partition-split``).
    """
    records = _records(run, "null-key")
    case, control = _pair(records, lambda r, j: r.key is None)
    a, b = _final(records, case), _final(records, control)
    assert _velocity(run, a) == _velocity(run, b)
    assert run.features[a]["card_count_30d"] == run.features[b]["card_count_30d"]
    assert metric(run.metrics, "fraud_miskeyed_transactions_total", action="route") > 0


def test_bom_prefixed_json_is_accepted(run: Run) -> None:
    records = _records(run, "bom-prefixed")
    ids = [j["transaction_id"] for j in _txns(records)]
    assert all(t in run.outcome.verdicts for t in ids)
    assert any(r.value.startswith(b"\xef\xbb\xbf") for r in records)


def test_epoch_ms_float(run: Run) -> None:
    """An integral float epoch is accepted; a fractional one is refused naming the rule."""
    records = _records(run, "epoch-ms-float")
    for j in _txns(records):
        t = j["event_time"]
        if isinstance(t, float) and not t.is_integer():
            assert j["transaction_id"] not in run.outcome.verdicts
            (letter,) = [d for d in run.outcome.dead_letters
                         if raw_value(d) and j["transaction_id"].encode() in raw_value(d)]
            assert letter.error_class in ("bad_event_time", "wrong_type", "invalid_value")
            assert "millisecond" in letter.reason
        else:
            assert j["transaction_id"] in run.outcome.verdicts


def test_oversize_message_fits_the_dead_letter_topic(run: Run) -> None:
    """A message far over the limit becomes a bounded dead letter; the flow goes on."""
    records = _records(run, "oversize")
    big = max(records, key=lambda r: len(r.value))
    letters = [d for d in run.outcome.dead_letters if d.value_len == len(big.value)]
    assert letters, "no dead letter for the oversize message"
    letter = letters[0]
    assert letter.error_class == "too_large" and not letter.value_complete
    assert len(msgspec.json.encode(letter)) < 64 * 1024
    import hashlib

    assert letter.value_sha256 == hashlib.sha256(big.value).hexdigest()
    assert run.extra_txn in run.outcome.verdicts  # the flow kept scoring


# ---- security, labels and money (issues 22 and 23) ----------------------------------

_DIGIT_RUN = re.compile(rb"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
#: Field names of sensitive authentication data (PCI DSS 3.3.1: never stored after
#: authorisation): card verification codes, track data, PIN blocks.
_SAD_NAME = re.compile(r"cvv|cvc|cid|cav|track|pin", re.IGNORECASE)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _strings(obj: Any) -> list[str]:
    """Every string of a decoded JSON value (numbers such as epoch times are not card data)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (k, *_strings(v))]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def _pans(records: list[Record]) -> set[bytes]:
    """Every PAN-like number (13-19 digits, Luhn-valid) in the records' keys and text values."""
    found: set[bytes] = set()
    for r in records:
        j = r.json
        texts = [r.key or b"", *(s.encode() for s in _strings(j))] if j is not None else [
            r.key or b"", r.value]
        for blob in texts:
            for m in _DIGIT_RUN.finditer(blob):
                digits = re.sub(rb"[ -]", b"", m.group())
                if 13 <= len(digits) <= 19 and _luhn(digits.decode()):
                    found |= {digits, m.group()}
    return found


def _sad_values(records: list[Record]) -> list[tuple[str, str]]:
    """(field, value) of sensitive authentication data in the records' JSON values."""
    out: list[tuple[str, str]] = []
    for r in records:
        j = r.json
        if isinstance(j, dict):
            out += [(k, str(v)) for k, v in j.items() if _SAD_NAME.search(k) and str(v)]
    return out


def _state_blobs(run: Run) -> list[tuple[str, bytes]]:
    """Every key and value of every RocksDB store of the run, and every other file's bytes
    under the state, recovery and sample directories (SST files are read through RocksDB:
    their blocks may be compressed)."""
    import rocksdict

    out: list[tuple[str, bytes]] = []
    for current in (run.work / "state").rglob("CURRENT"):
        db = rocksdict.Rdict(str(current.parent), rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())
        try:
            for k, v in db.items():
                out.append((f"{current.parent} key", k))
                out.append((f"{current.parent} value of {k[:24]!r}", v))
        finally:
            db.close()
    for path in run.work.rglob("*"):
        if path.is_file() and path.suffix not in (".sst", ".parquet"):
            out.append((str(path), path.read_bytes()))
    for path in run.work.rglob("*.parquet"):
        for column in pq.read_table(path).columns:
            if column.type == "string":
                out.append((f"{path}:{column._name}", "\n".join(
                    str(x) for x in column.to_pylist()).encode()))
    return out


def test_pan_as_card_id_is_never_kept_or_published_in_clear(run: Run) -> None:
    """No PAN downstream of decode; no CVV, track or PIN data in any dead letter.

    Every case folder of this kind (``pan-*``): the PANs are found in the records
    (13-19 digits, Luhn-valid, with or without separators), not listed by hand.
    """
    records = _records(run, "pan-")
    pans = _pans(records)
    assert pans, "the case holds no PAN-like number"
    published = [(f"verdict {tid}", msgspec.json.encode(v))
                 for tid, vs in run.outcome.verdicts.items() for v in vs]
    letters = [(f"dead letter {d.error_class}", msgspec.json.encode(d))
               for d in run.outcome.dead_letters]
    letters += [(f"dead letter raw {d.error_class}", raw_value(d) or b"")
                for d in run.outcome.dead_letters]
    for where, blob in published + letters + _state_blobs(run):
        for pan in pans:
            assert pan not in blob, f"a PAN in clear in {where}"
    for field_name, value in _sad_values(records):
        pattern = re.compile(
            rb'"' + re.escape(field_name.encode()) + rb'"\s*:\s*"?' + re.escape(value.encode()))
        for where, blob in letters:
            assert not pattern.search(blob), f"{field_name} kept in {where}"
            if len(value) >= 8:
                assert value.encode() not in blob, f"{field_name}'s value kept in {where}"
    # nothing lost: every transaction of the case got a verdict or a dead letter
    for j in _txns(records):
        tid = j["transaction_id"]
        if tid in run.outcome.verdicts:
            assert run.outcome.verdicts[tid][0].card_id.encode() not in pans
        else:
            assert any(tid.encode() in (raw_value(d) or b"") or tid in d.reason
                       for d in run.outcome.dead_letters), f"{tid}: no verdict, no dead letter"


def _rule_records(records: list[Record]) -> dict[str, dict[str, Any]]:
    """The case's rule records by rule id (as written to ``rules``)."""
    return {j["id"]: j for r in records if r.topic == "rules" and (j := r.json) is not None}


def _refusals(run: Run, rule_id: str) -> list[Any]:
    """Dead letters of ``rules`` records naming ``rule_id``."""
    return [d for d in run.outcome.dead_letters
            if d.source_topic.endswith("rules") and rule_id in d.reason]


def test_unsigned_loosening_rule_changes_no_verdict(run: Run) -> None:
    """A rule written straight to ``rules`` without an analyst's signature never applies.

    Every case folder of this kind (``unsigned-*``): each of its rule records is refused
    (dead letter naming the rule, counted), and no transaction's decision is changed by it.
    """
    records = _records(run, "unsigned-")
    rules = _rule_records(records)
    assert rules
    for rule_id in rules:
        assert _refusals(run, rule_id), f"no dead letter for the refused rule {rule_id}"
    for j in _txns(records):
        (verdict, *_) = run.outcome.verdicts[j["transaction_id"]]
        assert not [h for h in verdict.rule_hits if h.rule_id in rules]
        assert verdict.model_decision in (None, verdict.decision)  # the model's own decision
    assert metric(run.metrics, "fraud_rule_messages_refused_total") >= len(rules)


def test_expensive_rule_is_refused_and_scoring_goes_on(run: Run) -> None:
    """A rule over the cost budget never runs on the stream, even signed by a trusted analyst:
    refused with its measured cost; its transactions are scored."""
    records = _records(run, "expensive-")
    rules = _rule_records(records)
    assert rules
    for rule_id in rules:
        refusals = _refusals(run, rule_id)
        assert refusals, f"no dead letter for the refused rule {rule_id}"
        assert {d.error_class for d in refusals} == {"rule_too_costly"}, refusals
        assert all("µs per transaction" in d.reason for d in refusals), refusals
    for j in _txns(records):
        (verdict, *_) = run.outcome.verdicts[j["transaction_id"]]
        assert not [h for h in verdict.rule_hits if h.rule_id in rules]


_MERCHANT_FRAUD = [n for n in FEATURE_NAMES
                   if n.startswith("merchant_") and ("fraud" in n or "risk" in n)]


def _probes(records: list[Record]) -> dict[str, str]:
    """merchant id -> the transaction id of its last transaction (the probe)."""
    last: dict[str, str] = {}
    for j in _txns(records):
        last[j["merchant_id"]] = j["transaction_id"]
    return last


def test_labels_for_unknown_transactions_change_no_merchant_feature(run: Run) -> None:
    """Labels of transaction ids the flow never saw leave the merchant they name untouched."""
    records = _records(run, "labels-for-unknown")
    known = {j["transaction_id"] for j in _txns(records)}
    ghosts = [j for r in records if r.topic == "labels" and (j := r.json) is not None
              and j["transaction_id"] not in known]
    assert ghosts
    victims = {g["merchant_id"] for g in ghosts}
    probes = _probes(records)
    controls = [m for m in probes if m not in victims]
    assert controls and victims <= set(probes)
    for victim in victims:
        for control in controls:
            a, b = run.features[probes[victim]], run.features[probes[control]]
            assert {n: a[n] for n in _MERCHANT_FRAUD} == {n: b[n] for n in _MERCHANT_FRAUD}
    assert metric(run.metrics, "fraud_labels_unknown_total") >= len(ghosts)


def test_the_latest_label_of_a_transaction_wins(run: Run) -> None:
    """A chargeback reversed later counts as not fraud, like a transaction only ever cleared."""
    records = _records(run, "label-correction")
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        j = r.json
        if r.topic == "labels" and j is not None:
            old = latest.get(j["transaction_id"])
            if old is None or j["label_time"] >= old["label_time"]:
                latest[j["transaction_id"]] = j
    merchant_of = {j["transaction_id"]: j["merchant_id"] for j in _txns(records)}
    cleared = {merchant_of[t] for t, j in latest.items() if not j["is_fraud"]}
    probes = _probes(records)
    rows = [{n: run.features[probes[m]][n] for n in _MERCHANT_FRAUD} for m in sorted(cleared)]
    assert len(rows) >= 2 and all(row == rows[0] for row in rows), rows


def test_every_currency_gets_a_verdict(run: Run) -> None:
    """A well-formed authorisation in a currency without a rate is scored, and says so."""
    records = _records(run, "currency-without-rate")
    unrated = 0
    for j in _txns(records):
        (verdict, *_) = run.outcome.verdicts[j["transaction_id"]]
        if verdict.amount_unrated:
            unrated += 1
            assert any(j["currency"] in r.text for r in verdict.reasons), verdict.reasons
    assert unrated >= 1
    assert metric(run.metrics, "fraud_amount_unrated_total") >= unrated
