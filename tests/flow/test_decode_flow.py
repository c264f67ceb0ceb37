import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.decode import KeyRule, SkewRule, decode_transactions
from flows.kafka import RawBatch, RawRecord, SinkRecord
from samples import BAD_MESSAGES, NOW_MS, raw
from stages import decoded_rows
from topics.contracts import DeadLetter, Transaction
from topics.deadletter import matches, raw_key
from topics.validation import TransactionDecoder


def test_bad_messages_become_one_dead_letter_each_and_valid_ones_pass() -> None:
    messages = []
    expected_valid = {}
    for i, bad in enumerate(BAD_MESSAGES):
        tid = f"ok-{i}"
        good = raw(transaction_id=tid, amount=10.0 + i)
        expected_valid[tid] = good
        messages.append((good, None))
        messages.append((bad.value, bad))
    source = [
        RawRecord(b"k%d" % n, value, "tx", n % 3, n, NOW_MS + n)
        for n, (value, _) in enumerate(messages)
    ]
    polls = [RawBatch("tx", p, [r for r in source if r.partition == p][i:i + 7])
             for p in range(3) for i in range(0, len(source), 7)]
    worked: list[object] = []
    errs: list[SinkRecord] = []
    flow = Dataflow("decode-test")
    out = decode_transactions(
        "decode", op.input("in", flow, TestingSource([p for p in polls if p.records])),
        TransactionDecoder(), SkewRule(), KeyRule(3), clock=lambda: NOW_MS / 1000)
    op.output("oks", out.oks, TestingSink(worked))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    oks = decoded_rows(worked)

    assert {s.value.transaction_id for s in oks} == set(expected_valid)
    for s in oks:
        assert msgspec.json.encode(s.value) == msgspec.json.encode(
            msgspec.json.decode(expected_valid[s.value.transaction_id], type=Transaction))
        assert s.ingest_ms == NOW_MS + s.offset and s.partition == s.offset % 3

    assert len(errs) == len(BAD_MESSAGES)
    by_offset = {n: bad for n, (_, bad) in enumerate(messages) if bad is not None}
    for msg in errs:
        record = msgspec.json.decode(msg.value, type=DeadLetter)
        bad = by_offset.pop(record.offset)
        assert record.error_class == bad.error_class, (bad.kind, record.reason)
        assert bad.reason_contains in record.reason
        assert matches(record, bad.value)
        assert raw_key(record) == msg.key == b"k%d" % record.offset
        assert record.source_topic == "tx" and record.partition == record.offset % 3
    assert not by_offset


def test_pans_tokenised_at_decode_are_counted_by_field() -> None:
    from prometheus_client import REGISTRY

    from flows.decode import decode_batch
    from topics.pan import CardGuard, PanKey

    def counted(field: str) -> float:
        return REGISTRY.get_sample_value("fraud_pans_tokenised_total", {"field": field}) or 0.0

    before = {f: counted(f) for f in ("card_id", "device_id")}
    decoder = TransactionDecoder(cards=CardGuard(PanKey(b"k" * 32)))
    values = [raw(transaction_id="a", card_id="4111 1111 1111 1111"),
              raw(transaction_id="b", card_id="tok-card-1", device_id="5105105105105100"),
              raw(transaction_id="c", card_id="tok-card-2")]
    records = [RawRecord(b"k", v, "tx", 0, n, NOW_MS) for n, v in enumerate(values)]
    decoded, _, dead = decode_batch(records, decoder, NOW_MS)
    assert len(decoded.values) == 3 and not dead
    assert counted("card_id") - before["card_id"] == 1
    assert counted("device_id") - before["device_id"] == 1
    assert decoder.cards is not None and decoder.cards.tokenised == {}  # handed to the metric
