"""Labels as card networks send them, on real RocksDB: joins, corrections, repeats, expiry.

Each scenario runs through the card and merchant stores (the stream's path) in a
chosen read order and through the offline replay (the event-time answer), and
compares the merchant features of probe transactions: a probe at the victim
merchant against one at a control merchant with the same history.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from flows.merchant_stage import expired_letters
from state import labels as contract
from state.card_store import CardBatch, CardStore
from state.db import StoreIdentity
from state.features import MERCHANT_COLUMNS
from state.inputs import FeatureInputs
from state.merchant_store import LabelJoin, LabelSource, MerchantBatch, MerchantStore
from state.options import DAY_MS, StoreOptions
from state.records import body_digest
from state.replay import ReplayStats, replay_matrix
from state.spec import INDEX
from topics.contracts import DeadLetter, Label, Transaction

HOUR = 3_600_000
T0 = 1_795_917_600_000
CASES = Path(__file__).parents[2] / "fixtures" / "cases"
CARDS = StoreIdentity("cards", 0, 1, "transactions", "id-1")
MERCHANTS = StoreIdentity("merchants", 0, 1, "transactions", "id-1")
LABELS_7D = INDEX["merchant_fraud_labels_7d"]
RATE_7D = INDEX["merchant_fraud_rate_7d"]
FAMILIAR_7D = INDEX["merchant_familiar_fraud_7d"]

Event = Transaction | Label


def txn(tid: str, merchant: str, t: int, card: str | None = None) -> Transaction:
    return Transaction(transaction_id=tid, card_id=card or f"c-{tid}", merchant_id=merchant,
                       amount=20.0, currency="EUR", event_time=t)


def label(tid: str, merchant: str, t: int, fraud: bool = True) -> Label:
    return Label(transaction_id=tid, card_id=f"c-{tid}", merchant_id=merchant, is_fraud=fraud,
                 label_time=t)


def case(name: str) -> list[Event]:
    """A handed case's records as contract structs, in file order."""
    out: list[Event] = []
    for line in (CASES / name / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        kind = Label if r.get("topic") == "labels" else Transaction
        out.append(msgspec.convert(r["value_json"], kind))
    return out


class Stream:
    """The card and merchant stores fed in a chosen order (the merchant stage's calls)."""

    def __init__(self, root: Path, options: StoreOptions | None = None) -> None:
        self.root, self.options = root, options
        self.cards = CardStore.open(root, CARDS, options)
        self.merchants = MerchantStore.open(root, MERCHANTS, options)
        self.rows: dict[str, np.ndarray] = {}
        self.joins: list[LabelJoin] = []
        self.offset = 0

    def feed(self, events: list[Event]) -> None:
        """Apply ``events`` in this order: runs of labels and runs of transactions."""
        run: list[Event] = []
        for e in [*events, None]:
            if run and (e is None or type(e) is not type(run[0])):
                if isinstance(run[0], Label):
                    self.label_run(run)  # type: ignore[arg-type]
                else:
                    self.txn_run(run)  # type: ignore[arg-type]
                run = []
            if e is not None:
                run.append(e)

    def label_run(self, labels: list[Label]) -> None:
        sources = [LabelSource(0, self.offset + i, lab.label_time) for i, lab in enumerate(labels)]
        self.offset += len(labels)
        self.joins += self.merchants.apply_labels(labels, sources)

    def txn_run(self, ts: list[Transaction]) -> None:
        n = len(ts)
        tids = [t.transaction_id for t in ts]
        body = np.array([body_digest(t) for t in ts], dtype=np.uint64)
        part = np.zeros(n, dtype=np.int32)
        offset = np.arange(self.offset, self.offset + n, dtype=np.int64)
        self.offset += n
        inputs = FeatureInputs.of(ts, [t.amount for t in ts])
        card = self.cards.process(CardBatch(tids, [t.card_id for t in ts], body, part, offset,
                                            inputs))
        outcome, joins = self.merchants.process(
            MerchantBatch(tids, [t.merchant_id for t in ts], body, part, offset, inputs,
                          card.rows, card.has_row),
            lambda _p, matrix: [row.tobytes() for row in matrix])
        self.joins += joins
        for i, tid in enumerate(tids):
            if outcome.has_row[i]:
                self.rows.setdefault(tid, outcome.rows[i].copy())

    def checkpoint(self) -> int:
        self.cards.checkpoint()
        return self.merchants.checkpoint()

    def crash_and_resume(self, snapshot: int) -> None:
        """kill -9 (no close: only the write-ahead log survives), reopen, resume."""
        del self.cards, self.merchants
        gc.collect()
        self.cards = CardStore.open(self.root, CARDS, self.options)
        self.merchants = MerchantStore.open(self.root, MERCHANTS, self.options)
        self.merchants.resume(snapshot)

    def close(self) -> None:
        self.cards.close()
        self.merchants.close()


def merchant_part(row: np.ndarray) -> np.ndarray:
    return row[MERCHANT_COLUMNS]


def offline(events: list[Event], **options: int) -> dict[str, np.ndarray]:
    txns, matrix = replay_matrix(events, amount_of=lambda t: t.amount, **options)  # type: ignore[arg-type]
    return {t.transaction_id: row for t, row in zip(txns, matrix, strict=True)}


def event_time_order(events: list[Event]) -> list[Event]:
    """How the merchant stage's watermark releases a backlog (transactions first on ties)."""
    return sorted(events, key=lambda e: (e.event_time, 0) if isinstance(e, Transaction)
                  else (e.label_time, 1))


def same_as_offline(stream: Stream, events: list[Event], **options: int) -> None:
    expected = offline(events, **options)
    assert set(stream.rows) == set(expected)
    for tid, row in expected.items():
        assert np.array_equal(stream.rows[tid].view(np.uint32), row.view(np.uint32)), tid


# --- labels for transactions that do not exist ----------------------------------------------
@pytest.mark.parametrize("order", ["event-time", "labels-first", "labels-last"])
def test_labels_for_unknown_ids_change_no_merchant_and_wait(tmp_path: Path, order: str) -> None:
    events = case("labels-for-unknown-transactions")
    ghosts = [e for e in events if isinstance(e, Label)]
    assert len(ghosts) == 300 and {g.merchant_id for g in ghosts} == {"m-victim"}
    feed = {"event-time": event_time_order(events),
            "labels-first": ghosts + [e for e in events if isinstance(e, Transaction)],
            "labels-last": [e for e in events if isinstance(e, Transaction)] + ghosts}[order]
    stream = Stream(tmp_path)
    stream.feed(feed)
    victim, control = stream.rows["probe-m-victim"], stream.rows["probe-m-ctl"]
    assert np.array_equal(merchant_part(victim), merchant_part(control))
    assert victim[LABELS_7D] == 0.0 and victim[RATE_7D] == 0.0
    assert stream.merchants.unknown_labels == 300 and stream.merchants.waiting == 300
    assert stream.joins == []
    if order == "event-time":
        same_as_offline(stream, events)
    stats = ReplayStats()
    offline_rows = replay_matrix(events, amount_of=lambda t: t.amount, stats=stats)[1]
    assert stats.labels_unknown == 300
    assert len(offline_rows) == sum(isinstance(e, Transaction) for e in events)
    stream.feed(ghosts[:10])  # re-delivered: counted once
    assert stream.merchants.unknown_labels == 300
    stream.close()


def test_a_waiting_label_joins_its_late_transaction_for_that_merchant(tmp_path: Path) -> None:
    late = txn("t-late", "m-real", T0)
    events: list[Event] = [label("t-late", "m-victim", T0 + 2 * HOUR),  # names the wrong one
                           late,
                           txn("probe-real", "m-real", T0 + 6 * HOUR),
                           txn("probe-victim", "m-victim", T0 + 6 * HOUR)]
    stream = Stream(tmp_path)
    stream.feed(events)
    assert [j.verdict.merchant_id for j in stream.joins] == ["m-real"]
    assert stream.merchants.waiting == 0 and stream.merchants.mismatched_labels == 1
    assert stream.rows["probe-real"][LABELS_7D] == 1.0
    assert stream.rows["probe-victim"][LABELS_7D] == 0.0
    same_as_offline(stream, events)
    stream.close()


def test_a_label_naming_another_merchant_counts_for_its_transactions(tmp_path: Path) -> None:
    events: list[Event] = [txn("t1", "m-a", T0), txn("t0", "m-b", T0),
                           label("t1", "m-b", T0 + HOUR),
                           txn("probe-a", "m-a", T0 + 5 * HOUR),
                           txn("probe-b", "m-b", T0 + 5 * HOUR)]
    stream = Stream(tmp_path)
    stream.feed(events)
    assert stream.rows["probe-a"][LABELS_7D] == 1.0
    assert stream.rows["probe-b"][LABELS_7D] == 0.0
    assert stream.merchants.mismatched_labels == 1 and stream.merchants.unknown_labels == 0
    same_as_offline(stream, events)
    stream.close()


# --- corrections and repeats ----------------------------------------------------------------
@pytest.mark.parametrize("order", ["event-time", "labels-first"])
def test_a_reversed_chargeback_counts_like_its_reversal_alone(tmp_path: Path, order: str) -> None:
    events = case("label-correction")
    labels = [e for e in events if isinstance(e, Label)]
    fraud = next(lab for lab in labels if lab.is_fraud)
    events = [*events[:3], fraud, *events[3:]]  # the chargeback delivered twice
    # after the chargeback, before its reversal: at both merchants
    events += [txn("probe-mid", "m-x", fraud.label_time + 3 * HOUR),
               txn("probe-mid-y", "m-y", fraud.label_time + 3 * HOUR)]
    txns = [e for e in events if isinstance(e, Transaction)]
    feed = (event_time_order(events) if order == "event-time"
            else [*event_time_order(txns)[:2], *[e for e in events if isinstance(e, Label)],
                  *event_time_order(txns)[2:]])
    stream = Stream(tmp_path)
    stream.feed(feed)
    x, y = stream.rows["probe-x"], stream.rows["probe-y"]
    assert np.array_equal(merchant_part(x), merchant_part(y))
    assert x[LABELS_7D] == 0.0
    if order == "event-time":  # in between, the chargeback was known and not yet reversed
        assert stream.rows["probe-mid"][LABELS_7D] == 1.0
        same_as_offline(stream, events)
    # feedback: the chargeback once, then its reversal taking it back
    tx = [(j.label.is_fraud, j.replaces) for j in stream.joins
          if j.label.transaction_id == "t-x"]
    assert tx == [(True, None), (False, True)]
    assert [(j.label.is_fraud, j.replaces) for j in stream.joins
            if j.label.transaction_id == "t-y"] == [(False, None)]
    stream.close()


def test_not_fraud_then_fraud_counts_from_the_later_label(tmp_path: Path) -> None:
    events: list[Event] = [txn("t1", "m", T0), label("t1", "m", T0 + HOUR, fraud=False),
                           txn("before", "m", T0 + 5 * HOUR),
                           label("t1", "m", T0 + 6 * HOUR, fraud=True),
                           txn("after", "m", T0 + 10 * HOUR)]
    stream = Stream(tmp_path)
    stream.feed(events)
    assert stream.rows["before"][LABELS_7D] == 0.0
    assert stream.rows["after"][LABELS_7D] == 1.0
    assert [(j.label.is_fraud, j.replaces) for j in stream.joins] == [(False, None),
                                                                       (True, False)]
    same_as_offline(stream, events)
    stream.close()


@pytest.mark.parametrize("first_fraud", [True, False])
def test_a_tie_of_label_times_is_won_by_fraud_whatever_the_order(tmp_path: Path,
                                                                 first_fraud: bool) -> None:
    a, b = label("t1", "m", T0 + HOUR, first_fraud), label("t1", "m", T0 + HOUR, not first_fraud)
    events: list[Event] = [txn("t1", "m", T0), a, b, txn("probe", "m", T0 + 5 * HOUR)]
    stream = Stream(tmp_path)
    stream.feed(events)
    assert stream.rows["probe"][LABELS_7D] == 1.0
    same_as_offline(stream, events)
    stream.close()


def test_the_same_label_twice_counts_once(tmp_path: Path) -> None:
    chargeback = label("t1", "m", T0 + HOUR)
    events: list[Event] = [txn("t1", "m", T0, card="c"), txn("t2", "m", T0 + 60_000, card="c"),
                           chargeback, chargeback, txn("probe", "m", T0 + 5 * HOUR)]
    stream = Stream(tmp_path)
    stream.feed(events[:2])
    stream.feed([chargeback, chargeback])  # twice in one batch
    stream.feed([chargeback])  # and again later
    stream.feed(events[4:])
    assert stream.rows["probe"][LABELS_7D] == 1.0
    assert len(stream.joins) == 1
    same_as_offline(stream, events)
    stream.close()


def test_an_older_label_read_after_a_newer_one_changes_nothing(tmp_path: Path) -> None:
    stream = Stream(tmp_path)
    stream.feed([txn("t1", "m", T0), label("t1", "m", T0 + 3 * HOUR, fraud=False),
                 label("t1", "m", T0 + HOUR, fraud=True), txn("probe", "m", T0 + 8 * HOUR)])
    assert stream.rows["probe"][LABELS_7D] == 0.0
    assert [j.label.is_fraud for j in stream.joins] == [False]
    stream.close()


def test_a_label_read_before_or_after_its_transaction_gives_the_same_features(
        tmp_path: Path) -> None:
    t1, chargeback = txn("t1", "m", T0, card="c"), label("t1", "m", T0 + HOUR)
    probe = txn("probe", "m", T0 + 5 * HOUR)
    first, second = Stream(tmp_path / "after"), Stream(tmp_path / "before")
    first.feed([t1, chargeback, probe])
    second.feed([chargeback, t1, probe])  # the transaction reached the stage late
    assert first.rows["probe"][LABELS_7D] == second.rows["probe"][LABELS_7D] == 1.0
    assert np.array_equal(merchant_part(first.rows["probe"]), merchant_part(second.rows["probe"]))
    assert len(first.joins) == len(second.joins) == 1
    first.close()
    second.close()


def test_a_correction_replayed_after_a_crash_counts_once(tmp_path: Path) -> None:
    t1, chargeback = txn("t1", "m", T0), label("t1", "m", T0 + HOUR)
    reversal = label("t1", "m", T0 + 2 * HOUR, fraud=False)
    stream = Stream(tmp_path)
    stream.feed([t1, chargeback])
    snapshot = stream.checkpoint()
    stream.feed([reversal])
    state = dict(stream.merchants.db.db.items())
    stream.crash_and_resume(snapshot)
    assert dict(stream.merchants.db.db.items()) == state  # the write-ahead log kept it
    stream.joins = []
    stream.feed([reversal])  # the replay from the snapshot reads it again
    assert [(j.label.is_fraud, j.replay, j.replaces) for j in stream.joins] == [
        (False, True, True)]  # its feedback was lost with the process: counted again
    stream.feed([reversal, chargeback])  # nothing more
    assert len(stream.joins) == 1
    assert {k: v for k, v in stream.merchants.db.db.items() if k[:1] == b"m"} == {
        k: v for k, v in state.items() if k[:1] == b"m"}
    stream.feed([txn("probe", "m", T0 + 6 * HOUR)])
    assert stream.rows["probe"][LABELS_7D] == 0.0
    stream.close()


def test_a_chargeback_and_its_reversal_both_lost_in_a_crash_count_as_the_reversal(
        tmp_path: Path) -> None:
    t1 = txn("t1", "m", T0)
    chargeback, reversal = label("t1", "m", T0 + HOUR), label("t1", "m", T0 + 2 * HOUR, False)
    stream = Stream(tmp_path)
    stream.feed([t1])
    snapshot = stream.checkpoint()
    stream.feed([chargeback, reversal])
    stream.crash_and_resume(snapshot)
    stream.joins = []
    stream.feed([chargeback, reversal])
    # the snapshot's feedback had neither: only the reversal, replacing nothing
    assert [(j.label.is_fraud, j.replay, j.replaces) for j in stream.joins] == [
        (False, True, None)]
    stream.close()


# --- expiry ---------------------------------------------------------------------------------
def test_a_label_that_never_joins_expires_to_a_dead_letter_once_more_after_a_crash(
        tmp_path: Path) -> None:
    options = StoreOptions(txn_horizon_ms=2 * DAY_MS)
    stream = Stream(tmp_path, options)
    ghost = label("ghost-1", "m-victim", T0)
    stream.feed([txn("t0", "m", T0 - HOUR), ghost])
    expired = []
    day = 0
    while not expired and day < 6:
        day += 1
        snapshot = stream.checkpoint()
        stream.feed([txn(f"t{day}", "m", T0 + day * DAY_MS)])
        expired = stream.merchants.take_expired()
    assert [p.label for p in expired] == [ghost] and day >= 2  # not before its wait ended
    assert stream.merchants.waiting == 0
    (letter,) = expired_letters(expired, "fraud.labels", options.txn_horizon_ms)
    dead = msgspec.json.decode(letter.value, type=DeadLetter)
    assert (dead.error_class, dead.source_topic, dead.offset) == ("label_unjoined",
                                                                  "fraud.labels", 1)
    assert "2 days" in dead.reason and letter.key == b"ghost-1"
    # a crash before the dead letter went out: the restart hands it on again
    stream.crash_and_resume(snapshot)
    assert [p.label for p in stream.merchants.take_expired()] == [ghost]
    stream.feed([txn("t9", "m", T0 + 9 * DAY_MS)])  # the restart's first batch
    snapshot = stream.checkpoint()
    stream.feed([txn("t10", "m", T0 + 10 * DAY_MS)])  # after its next snapshot: forgotten
    stream.crash_and_resume(snapshot)
    assert stream.merchants.take_expired() == []
    stream.close()


def test_a_label_past_the_label_horizon_of_its_transaction_is_unknown(tmp_path: Path) -> None:
    short = StoreOptions(label_horizon_ms=40 * DAY_MS)
    events: list[Event] = [txn("t1", "m", T0), *[txn(f"k{d}", "m", T0 + d * DAY_MS)
                                                for d in range(1, 61)],
                           label("t1", "m", T0 + 60 * DAY_MS),
                           txn("probe", "m", T0 + 60 * DAY_MS + 5 * HOUR)]
    stream = Stream(tmp_path, short)
    stream.feed(events)
    assert stream.rows["probe"][LABELS_7D] == 0.0
    assert stream.merchants.unknown_labels == 1 and stream.joins == []
    same_as_offline(stream, events, label_horizon_ms=short.label_horizon_ms)
    stream.close()


@pytest.mark.parametrize("late_days", [60, 120, 179])
def test_a_chargeback_months_late_counts_as_a_prompt_one(tmp_path: Path, late_days: int) -> None:
    """Past the stored verdict (35 days), within the label horizon (180 days by default)."""
    features = {}
    for delay in (7, late_days):
        events: list[Event] = [txn("t1", "m", T0, card="c"), txn("t2", "m", T0 + 1, card="c"),
                               *[txn(f"k{d}", "m", T0 + d * DAY_MS) for d in range(1, delay + 1)],
                               label("t2", "m", T0 + delay * DAY_MS),
                               txn("probe", "m", T0 + delay * DAY_MS + 5 * HOUR)]
        stream = Stream(tmp_path / str(delay))
        for e in events:  # a recovery snapshot a day: expiry runs
            stream.feed([e])
            stream.checkpoint()
        from state.keys import verdicts_key
        from state.records import LabelTarget

        target = LabelTarget.decode(stream.merchants.db.get(b"jt2") or b"")
        verdict_kept = stream.merchants.db.get(verdicts_key(target.rows)) is not None
        assert verdict_kept == (delay < 35)  # the stored verdict itself is long gone
        features[delay] = stream.rows["probe"]
        # label feedback: joined with the verdict's decision and model, long after the verdict
        (join,) = stream.joins
        assert join.verdict.output == stream.rows["t2"].tobytes()
        assert join.verdict.merchant_id == "m" and join.verdict.familiar
        same_as_offline(stream, events)
        stream.close()
    prompt, late = features[7], features[late_days]
    for name in ("merchant_fraud_labels_7d", "merchant_familiar_fraud_7d",
                 "merchant_familiar_fraud_30d"):  # the rates' denominators are the traffic
        assert late[INDEX[name]] == prompt[INDEX[name]], name
    assert late[LABELS_7D] == 1.0 and late[FAMILIAR_7D] == 1.0  # t2's card had paid there


def test_a_label_target_is_small_and_keeps_what_feedback_needs() -> None:
    from state.records import LabelTarget, verdict_gist

    verdict = (b'{"transaction_id":"t-000000001","card_id":"tok_5f2c9a","score":0.8125,'
               b'"decision":"review","model_version":"gbdt-20261201-a1b2c3","reasons":['
               b'{"code":"R01","feature":"card_count_10m","value":7.0}],"rules":[],'
               b'"latency_ms":12.5,"event_time":1795917600000,"amount_reference":42.0}')
    target = LabelTarget(T0, 7, True, "m-000123", verdict_gist(verdict), 5)
    raw = target.encode()
    assert LabelTarget.decode(raw) == target
    assert json.loads(target.gist) == {"score": 0.8125, "decision": "review",
                                       "model_version": "gbdt-20261201-a1b2c3"}
    assert b"tok_5f2c9a" not in raw  # no card token, nor anything else it does not need
    assert len(raw) <= 110, len(raw)


def test_the_label_contract_functions() -> None:
    current, effect = contract.first_label(T0 + HOUR, True, T0)
    assert effect == contract.Effect(contract.COUNT, T0 + HOUR)
    assert contract.resolve(current, T0 + 2 * HOUR, True, T0) == (
        contract.Current(T0 + 2 * HOUR, True, T0 + HOUR), contract.NO_EFFECT)  # confirmation
    # a label before its transaction counts from the transaction on
    assert contract.first_label(T0 - HOUR, True, T0)[1].since == T0
    assert contract.joinable(T0, T0 + 34 * DAY_MS, 35)
    assert not contract.joinable(T0, T0 + 35 * DAY_MS, 35)
    assert contract.still_waiting(T0, T0 + DAY_MS, 2) and not contract.still_waiting(
        T0, T0 + 2 * DAY_MS, 2)


# --- label feedback -------------------------------------------------------------------------
def test_a_correction_replaces_label_feedback_in_metrics_and_drift(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """Through the merchant shard's scorer: the flow's label feedback, not just the store."""
    from prometheus_client import REGISTRY

    from drift.windows import PartitionDrift
    from flows.scorer import MerchantScorer
    from flows.serving import ModelSource

    window = 3_600_000
    stream = Stream(tmp_path)
    verdict = b'{"score":0.91,"decision":"decline","model_version":"tiny-v1","transaction_id":"t1"}'
    stream.feed([txn("t0", "m", T0)])  # opens the store; t1 is scored with a real verdict body
    t1 = txn("t1", "m", T0 + 60_000)
    tids, n = [t1.transaction_id], 1
    inputs = FeatureInputs.of([t1], [t1.amount])
    body = np.array([body_digest(t1)], dtype=np.uint64)
    part, offset = np.zeros(n, np.int32), np.array([99], np.int64)
    card = stream.cards.process(CardBatch(tids, [t1.card_id], body, part, offset, inputs))
    stream.merchants.process(MerchantBatch(tids, ["m"], body, part, offset, inputs, card.rows,
                                           card.has_row), lambda _p, _m: [verdict])
    drift = PartitionDrift(0, window, grace_ms=0)
    champion = ModelSource(tiny_model_dir, thresholds=lambda m: m.thresholds,  # type: ignore[arg-type]
                           interval=0)
    scorer = MerchantScorer(stream.merchants, champion, drift=drift)

    def counted(name: str, truth: str) -> float:
        return REGISTRY.get_sample_value(name, {"model_version": "tiny-v1",
                                                "decision": "decline", "truth": truth}) or 0.0

    names = ("fraud_label_feedback_total", "fraud_label_feedback_retracted_total")
    before = {(m, t): counted(m, t) for m in names for t in ("fraud", "legit")}
    chargeback = label("t1", "m", T0 + 10 * 60_000)
    reversal = label("t1", "m", T0 + 20 * 60_000, fraud=False)  # same drift window: still open
    scorer.apply_labels([chargeback, chargeback])
    scorer.apply_labels([reversal])
    scorer.apply_labels([chargeback])  # older than the reversal: nothing
    delta = {k: counted(*k) - v for k, v in before.items()}
    assert delta == {(names[0], "fraud"): 1.0, (names[0], "legit"): 1.0,
                     (names[1], "fraud"): 1.0, (names[1], "legit"): 0.0}
    counts = drift._open[(T0 // window, "tiny-v1")].labels  # decision x (legit, fraud)
    assert counts.tolist() == [[0, 0], [0, 0], [1, 0]]  # as if only the reversal was sent
    assert drift.retract_label(chargeback.label_time, True, scorer_judged(verdict)) is False
    stream.close()


def scorer_judged(verdict: bytes):  # type: ignore[no-untyped-def]
    from flows.scorer import judged
    from state.records import Verdict

    return judged(Verdict(0, 0, 0, 0, 0, T0, False, "m", verdict))
