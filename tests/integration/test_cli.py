from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer

from state.partitioning import murmur2_partition
from topics.contracts import DeadLetter, Label, Prediction, ReasonCode, Transaction
from topics.reader import read_topic
from topics.registry import TOPICS
from topics.settings import BOOTSTRAP_ENV, TOPIC_PREFIX_ENV, KafkaSettings
from training.simulate import transaction_stream

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def env(topics: KafkaSettings) -> dict[str, str]:
    assert topics.bootstrap_servers
    return {
        **os.environ,
        BOOTSTRAP_ENV: topics.bootstrap_servers,
        TOPIC_PREFIX_ENV: topics.topic_prefix,
    }


@pytest.mark.parametrize(
    "module", ["devkit.broker", "devkit.topics", "devkit.produce", "devkit.tail", "devkit.labels"]
)
def test_help_explains_options_and_environment(module: str) -> None:
    done = run([module, "--help"])
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "usage: python -m " + module in text
    assert BOOTSTRAP_ENV in text
    for option in {
        "devkit.broker": ["--port"],
        "devkit.topics": ["--list", "--partitions"],
        "devkit.produce": ["--count", "--cards", "--seed", "--file", "--rate", "--topic",
                           "--duplicates"],
        "devkit.labels": ["FILE", "--format", "--topic", "--fraud-only", "--check", "--rate",
                          "label_time", "is_fraud"],
        "devkit.tail": [
            "--json",
            "--from-beginning",
            "--from-end",
            "--limit",
            "--timeout",
            "--follow",
        ],
    }[module]:
        assert option in text


def test_produce_then_tail_json_gives_the_same_ids(env: dict[str, str]) -> None:
    produced = run(["devkit.produce", "--count", "1000", "--seed", "77", "--cards", "50"], env)
    assert produced.returncode == 0, produced.stderr
    assert "produced 1000 transactions to " + env[TOPIC_PREFIX_ENV] + "transactions" in (
        produced.stderr
    )
    tailed = run(["devkit.tail", "transactions", "--limit", "1000", "--json"], env)
    assert tailed.returncode == 0, tailed.stderr
    lines = tailed.stdout.splitlines()
    decoder = msgspec.json.Decoder(Transaction)
    got = [decoder.decode(line).transaction_id for line in lines]
    expected = [t.transaction_id for t in transaction_stream(1000, seed=77, cards=50)]
    assert len(got) == 1000 and sorted(got) == sorted(expected)


def test_produce_with_duplicates_re_delivers_the_same_bytes(
    topics: KafkaSettings, env: dict[str, str]
) -> None:
    produced = run(["devkit.produce", "--count", "2000", "--seed", "5", "--cards", "50",
                    "--duplicates", "0.1", "--no-progress"], env)
    assert produced.returncode == 0, produced.stderr
    assert "re-delivered " in produced.stderr and "a simulated day later" in produced.stderr
    records = read_topic(topics, topics.topic("transactions"), timeout=10)
    by_id: dict[str, set[bytes]] = {}
    for record in records:
        assert record.value is not None
        txn = msgspec.json.decode(record.value, type=Transaction)
        assert record.key == txn.card_id.encode()
        by_id.setdefault(txn.transaction_id, set()).add(record.value)
    assert len(by_id) == 2000 and all(len(bodies) == 1 for bodies in by_id.values())
    assert 2000 + 100 < len(records) < 2000 + 300  # about 10 % re-delivered
    bad = run(["devkit.produce", "--count", "10", "--duplicates", "1.5"], env)
    assert bad.returncode == 2 and "--duplicates" in bad.stderr


def test_labels_from_a_file_are_keyed_by_transaction_id(
    topics: KafkaSettings, env: dict[str, str], tmp_path: Path
) -> None:
    good = tmp_path / "labels.csv"
    good.write_text(
        "\ufefftransaction_id,card_id,merchant_id,is_fraud,label_time,source,extra\n"
        "t1,c1,m1,true,2025-01-06T08:00:00Z,chargeback,x\n"
        "t2,c2,m1,0,1736150400000,,y\n"
        "t3,c3,m2,yes,1736150400000.0,analyst,z\n"
    )
    done = run(["devkit.labels", str(good), "--no-progress"], env)
    assert done.returncode == 0, done.stderr
    assert "produced 3 labels (2 fraud)" in done.stderr
    records = read_topic(topics, topics.topic("labels"), timeout=10)
    labels = {}
    for record in records:
        assert record.value is not None and record.key is not None
        label = msgspec.json.decode(record.value, type=Label)
        assert record.key == label.transaction_id.encode()
        assert record.partition == murmur2_partition(label.transaction_id, 8)
        labels[label.transaction_id] = label
    assert labels["t1"].is_fraud and labels["t1"].label_time == 1_736_150_400_000
    assert not labels["t2"].is_fraud and labels["t3"].source == "analyst"

    bad = tmp_path / "bad.csv"
    bad.write_text("transaction_id,card_id,merchant_id,is_fraud,label_time\n"
                   "t1,c1,m1,true,1736150400000\n"
                   "t2,c1,m1,maybe,1736150400000\n"
                   "t3,c1,m1,true,1736150400000.5\n")
    refused = run(["devkit.labels", str(bad)], env)
    assert refused.returncode == 2
    assert "line 3: is_fraud: expected `bool`" in refused.stderr
    assert "line 4: label_time:" in refused.stderr and "integer epoch milliseconds" in (
        refused.stderr)
    assert "Traceback" not in refused.stderr
    missing = tmp_path / "missing.csv"
    missing.write_text("transaction_id,card_id,is_fraud\nt1,c1,true\n")
    refused = run(["devkit.labels", str(missing)], env)
    assert refused.returncode == 2 and "missing column(s) merchant_id, label_time" in (
        refused.stderr)


def test_labels_check_reads_parquet_and_json_lines_without_a_broker(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "transaction_id": ["t1", "t2", "t3"], "card_id": ["c1", "c2", "c3"],
        "merchant_id": ["m1", "m1", "m2"], "is_fraud": [True, False, True],
        "label_time": pa.array([1_736_150_400_000] * 3, pa.timestamp("ms", "UTC")),
        "amount": [1.0, 2.0, 3.0],  # other columns (a simulated history's) are ignored
    })
    pq.write_table(table, tmp_path / "labels.parquet")
    done = run(["devkit.labels", str(tmp_path / "labels.parquet"), "--check", "--fraud-only"])
    assert done.returncode == 0 and "2 valid labels (2 fraud)" in done.stderr, done.stderr
    lines = tmp_path / "labels.jsonl"
    lines.write_bytes(b'\xef\xbb\xbf{"transaction_id":"t1","card_id":"c","merchant_id":"m",'
                      b'"is_fraud":true,"label_time":"2025-01-06T08:00:00Z"}\n\n'
                      b'{"transaction_id":"t2","card_id":"c","merchant_id":"m",'
                      b'"is_fraud":"no","label_time":1736150400000}\n')
    refused = run(["devkit.labels", str(lines), "--check"])
    assert refused.returncode == 2 and "line 3: is_fraud: expected `bool`" in refused.stderr


def test_tail_pretty_prints_each_topic_type(topics: KafkaSettings, env: dict[str, str]) -> None:
    assert topics.bootstrap_servers
    producer = Producer({"bootstrap.servers": topics.bootstrap_servers})
    raw = b'{"amount": "lots"}'
    dead = DeadLetter(
        source_topic="transactions",
        partition=3,
        offset=41,
        value_b64=base64.b64encode(raw).decode(),
        error_class="wrong_type",
        reason="amount: expected `float`, got `str`",
        time=1,
    )
    prediction = Prediction(
        transaction_id="tx-1",
        card_id="card-9",
        event_time=1_700_000_000_000,
        score=0.97,
        decision="decline",
        model_version="m7",
        feature_spec_version="f1",
        reasons=[ReasonCode(feature="amount_z", text="amount far above usual")],
    )
    producer.produce(topics.topic("dead-letter"), msgspec.json.encode(dead), b"k1")
    producer.produce(topics.topic("predictions"), msgspec.json.encode(prediction), b"tx-1")
    producer.produce(topics.topic("predictions"), b"not json", b"tx-2")
    assert producer.flush(10) == 0

    dl = run(["devkit.tail", "dead-letter"], env)
    assert dl.returncode == 0, dl.stderr
    assert "key=k1 wrong_type: amount: expected `float`, got `str` [from transactions p3@41]" in (
        dl.stdout
    )
    assert "lots" in dl.stdout
    pred = run(["devkit.tail", topics.topic("predictions"), "--timeout", "1"], env)
    assert pred.returncode == 0, pred.stderr
    first, second = sorted(pred.stdout.splitlines(), key=lambda line: "not json" in line)
    assert "tx-1 card=card-9 DECLINE score=0.970 model=m7 reasons=amount_z" in first
    assert "key=tx-2 (not a valid Prediction" in second


def test_malformed_csv_row_fails_with_row_number_and_field(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "history.csv"
    bad.write_text(
        "transaction_id,card_id,merchant_id,amount,currency,event_time,lat,lon\n"
        "t1,c1,m1,10.5,EUR,1700000000000,,\n"
        "t2,c1,m1,12,EUR,1700000000001,48.8,2.3\n"
        "t3,c2,m1,7.25,EURO,1700000000002,,\n"
    )
    done = run(["devkit.produce", "--file", str(bad), "--no-progress"], env)
    assert done.returncode == 1
    assert f"{bad} row 3 (line 4): currency:" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_admin_creates_then_reports_existing(env: dict[str, str]) -> None:
    env = {**env, TOPIC_PREFIX_ENV: env[TOPIC_PREFIX_ENV] + "admin."}
    first = run(["devkit.topics"], env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(" created") == len(TOPICS)
    listed = run(["devkit.topics", "--list"], env)
    assert listed.stdout.count(" present") == len(TOPICS)
    second = run(["devkit.topics"], env)
    assert second.stdout.count(" exists") == len(TOPICS)


def test_tail_with_a_timeout_waits_for_records_on_an_empty_topic(
        topics: KafkaSettings, env: dict[str, str]) -> None:
    """``tail --timeout N`` (no --follow) waits for a record that arrives after it started."""
    tail = subprocess.Popen([sys.executable, "-m", "devkit.tail", "labels", "--timeout", "20",
                             "--limit", "1"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # the topic is empty: without the wait, tail has ended by now
        assert tail.poll() is None, tail.communicate()
        producer = Producer(topics.client_config())
        label = Label(transaction_id="tx-late", card_id="c1", merchant_id="m1", is_fraud=True,
                      label_time=1_700_000_000_000)
        producer.produce(topics.topic("labels"), msgspec.json.encode(label), b"tx-late")
        assert producer.flush(10) == 0
        out, err = tail.communicate(timeout=30)
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    assert "tx-late" in out


def test_tail_unknown_topic_is_a_clear_error(env: dict[str, str]) -> None:
    done = run(["devkit.tail", "no-such-topic-here", "--timeout", "2"], env)
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
