from __future__ import annotations

import csv
import time
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devkit.broker import free_port
from devkit.produce import produce_transactions, read_transactions
from topics.contracts import Transaction
from topics.errors import BrokerError, InputError
from topics.reader import read_topic
from topics.settings import KafkaSettings
from training.simulate import transaction_stream

START = 1_700_000_000_000


@pytest.mark.integration
@pytest.mark.slow
def test_100k_transactions_in_exactly_100k_out(topics: KafkaSettings) -> None:
    sent = {
        t.transaction_id: t
        for t in transaction_stream(100_000, seed=11, cards=5000, start_ms=START)
    }
    topic = topics.topic("transactions")

    t0 = time.perf_counter()
    assert produce_transactions(topics, topic, sent.values(), progress=False) == 100_000
    t1 = time.perf_counter()
    records = read_topic(topics, topic, timeout=10)
    t2 = time.perf_counter()
    print(
        f"\nproduce {100_000 / (t1 - t0):,.0f} msg/s, consume {len(records) / (t2 - t1):,.0f} msg/s"
    )

    decoder = msgspec.json.Decoder(Transaction)
    received = {}
    partition_of_card: dict[str, int] = {}
    for record in records:
        assert record.value is not None
        txn = decoder.decode(record.value)
        assert txn.transaction_id not in received, f"duplicate {txn.transaction_id}"
        received[txn.transaction_id] = txn
        assert record.key == txn.card_id.encode()
        # Keyed by card: one card, one partition.
        assert partition_of_card.setdefault(txn.card_id, record.partition) == record.partition
    assert len(records) == 100_000
    assert received.keys() == sent.keys()  # none lost, none invented
    assert all(received[i] == sent[i] for i in sent)
    assert len(set(partition_of_card.values())) == 8


@pytest.mark.integration
def test_rate_limit_is_respected(topics: KafkaSettings) -> None:
    txns = transaction_stream(600, seed=1, start_ms=START)
    t0 = time.perf_counter()
    produce_transactions(topics, topics.topic("transactions"), txns, rate=2000, progress=False)
    elapsed = time.perf_counter() - t0
    assert 0.2 < elapsed < 1.5, elapsed


def test_delivery_failure_is_loud() -> None:
    nowhere = KafkaSettings(f"127.0.0.1:{free_port()}")  # nothing listens there
    txns = transaction_stream(10, seed=1, start_ms=START)
    with pytest.raises(
        BrokerError, match=r"10 message\(s\) .* not delivered; first error: .*timed out"
    ):
        produce_transactions(
            nowhere,
            "transactions",
            txns,
            progress=False,
            config={"message.timeout.ms": 1000, "log_level": 0},
            flush_timeout=10,
        )


def _sample() -> list[Transaction]:
    return list(transaction_stream(300, seed=4, cards=30, start_ms=START))


def test_jsonl_csv_parquet_files_replay_exactly(tmp_path: Path) -> None:
    txns = _sample()
    rows = [msgspec.to_builtins(t) for t in txns]

    jsonl = tmp_path / "t.jsonl"
    jsonl.write_bytes(b"\n".join(msgspec.json.encode(t) for t in txns) + b"\n\n")

    columns = list(Transaction.__struct_fields__)
    csv_path = tmp_path / "t.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row in rows:
            if "attributes" in row:
                row = {**row, "attributes": msgspec.json.encode(row["attributes"]).decode()}
            writer.writerow(row)

    parquet = tmp_path / "t.parquet"
    table = pa.table({c: [row.get(c) for row in rows] for c in columns})
    pq.write_table(table, parquet)

    for path in (jsonl, csv_path, parquet):
        assert list(read_transactions(path)) == txns, path


def test_rfc3339_event_times_and_parquet_timestamps(tmp_path: Path) -> None:
    line = (
        b'{"transaction_id":"t1","card_id":"c1","merchant_id":"m1","amount":3,'
        b'"currency":"EUR","event_time":"2023-11-14T22:13:20Z"}'
    )
    (tmp_path / "a.ndjson").write_bytes(line)
    [txn] = read_transactions(tmp_path / "a.ndjson")
    assert txn.event_time == START and txn.amount == 3.0

    table = pa.table(
        {
            "transaction_id": ["t1"],
            "card_id": ["c1"],
            "merchant_id": ["m1"],
            "amount": [3.0],
            "currency": ["EUR"],
            "event_time": pa.array([START], type=pa.timestamp("ms", tz="UTC")),
        }
    )
    pq.write_table(table, tmp_path / "a.parquet")
    [txn] = read_transactions(tmp_path / "a.parquet")
    assert txn.event_time == START


def test_bad_rows_name_the_row_and_field(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.jsonl"
    good = msgspec.json.encode(_sample()[0])
    bad_json.write_bytes(good + b"\n" + good.replace(b'"currency"', b'"curr"') + b"\n")
    with pytest.raises(InputError, match=r"bad.jsonl line 2: missing required field `currency`"):
        list(read_transactions(bad_json))

    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text(
        "transaction_id,card_id,merchant_id,amount,currency,event_time\n"
        "t1,c1,m1,10.5,EUR,1700000000000\n"
        "t2,c1,m1,ten,EUR,1700000000001\n"
    )
    with pytest.raises(InputError, match=r"bad.csv row 2 \(line 3\): amount: expected `float`"):
        list(read_transactions(bad_csv))
    unknown = tmp_path / "bad.txt"
    unknown.write_text("x")
    with pytest.raises(InputError, match="--format"):
        read_transactions(unknown)
