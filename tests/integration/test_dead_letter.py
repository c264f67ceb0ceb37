import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from confluent_kafka import Message, Producer

from flows import kafka
from flows.decode import KeyRule, SkewRule, decode_transactions
from samples import BAD_MESSAGES, NOW_MS, oversize_message, raw
from stages import Src, decoded_rows
from topics.admin import partition_count
from topics.contracts import DeadLetter, Transaction
from topics.deadletter import MAX_VALUE_BYTES, matches, raw_key, raw_value
from topics.pan import scrub
from topics.reader import read_topic
from topics.settings import KafkaSettings
from topics.validation import TransactionDecoder

#: A dead letter's size bound with the default copy limits (value 4 KiB, key 1 KiB).
DEAD_LETTER_BOUND = 10_000


def _decode_all(topics: KafkaSettings, name: str) -> list[Src]:
    """Read ``transactions`` to its end through the decode step; dead letters to the topic."""
    worked: list[object] = []
    flow = Dataflow(name)
    polls = op.input("in", flow, kafka.source(topics, "transactions", tail=False))
    parts = partition_count(topics, topics.topic("transactions"))
    decoded = decode_transactions("decode", polls, TransactionDecoder(), SkewRule(),
                                  KeyRule(parts))
    op.output("oks", decoded.oks, TestingSink(worked))
    kafka.write("dead-letter", decoded.errs, topics, "dead-letter")
    run_main(flow)
    return decoded_rows(worked)


@pytest.mark.integration
def test_bad_messages_reach_the_dead_letter_topic_bounded(topics: KafkaSettings) -> None:
    producer = Producer(topics.client_config())
    sent_valid = {}
    where: dict[bytes, tuple[int, int]] = {}  # value -> (partition, offset) from delivery

    def delivered(err: object, msg: Message) -> None:
        assert err is None
        where[msg.value()] = (msg.partition(), msg.offset())

    for i, bad in enumerate(BAD_MESSAGES):
        good = raw(transaction_id=f"ok-{i}")
        sent_valid[f"ok-{i}"] = good
        # Same key, so each bad message sits between two valid ones in its partition.
        # Time rules are judged against the record timestamp: pin it to the samples' clock.
        for value in (good, bad.value):
            producer.produce(topics.topic("transactions"), key=f"card-{i}".encode(),
                             value=value, timestamp=NOW_MS, on_delivery=delivered)
    sent_valid["ok-last"] = raw(transaction_id="ok-last")
    producer.produce(topics.topic("transactions"), key=b"card-last", value=sent_valid["ok-last"],
                     timestamp=NOW_MS)
    assert producer.flush(10) == 0
    del producer

    oks = _decode_all(topics, "dead-letter-test")

    assert sorted(s.value.transaction_id for s in oks) == sorted(sent_valid)
    for s in oks:
        expected = msgspec.json.decode(sent_valid[s.value.transaction_id], type=Transaction)
        assert s.value == expected

    records = read_topic(topics, topics.topic("dead-letter"), timeout=10)
    assert len(records) == len(BAD_MESSAGES)
    by_value = {bad.value: bad for bad in BAD_MESSAGES}
    for record in records:
        assert record.value is not None and len(record.value) < DEAD_LETTER_BOUND
        letter = msgspec.json.decode(record.value, type=DeadLetter)
        [bad] = [b for b in by_value.values() if matches(letter, b.value)]
        del by_value[bad.value]
        assert letter.error_class == bad.error_class, (bad.kind, letter.reason)
        assert bad.reason_contains in letter.reason
        assert letter.source_topic == topics.topic("transactions")
        assert raw_key(letter) == record.key
        assert (letter.partition, letter.offset) == where[bad.value]
        assert letter.time == NOW_MS  # the record's timestamp, not the wall clock
        # a digit run that may be a PAN (13-19 digits, Luhn-valid) is kept masked
        kept = scrub(bad.value).data if letter.masked else bad.value
        assert raw_value(letter) == kept[:MAX_VALUE_BYTES]
        assert letter.value_complete == (len(bad.value) <= MAX_VALUE_BYTES)
    assert not by_value, f"never dead-lettered: {[b.kind for b in by_value.values()]}"


@pytest.mark.integration
def test_oversize_message_case_dead_letter_fits_and_the_flow_goes_on(
    topics: KafkaSettings,
) -> None:
    """shared/cases/oversize-message: a 760 KB transaction under Kafka's 1 MB default."""
    big = oversize_message()
    producer = Producer(topics.client_config())
    topic = topics.topic("transactions")
    for value in (big, raw(transaction_id="after-big")):
        producer.produce(topic, key=b"card-big", value=value, timestamp=NOW_MS)
    assert producer.flush(10) == 0
    del producer

    def run_once() -> tuple[list[Src], list[bytes]]:
        oks = _decode_all(topics, "oversize-test")
        return oks, [r.value for r in read_topic(topics, topics.topic("dead-letter"), timeout=10)
                     if r.value is not None]

    oks, letters = run_once()
    assert [s.value.transaction_id for s in oks] == ["after-big"]
    [encoded] = letters
    assert len(encoded) < DEAD_LETTER_BOUND
    letter = msgspec.json.decode(encoded, type=DeadLetter)
    assert letter.error_class == "too_large" and not letter.value_complete
    assert letter.value_len == len(big) and matches(letter, big)
    # a replay of the same input re-emits the same dead letter, byte for byte
    _, again = run_once()
    assert again == [encoded, encoded]
