from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer

from topics.contracts import DeadLetter, Prediction, ReasonCode, Transaction
from topics.settings import BOOTSTRAP_ENV, TOPIC_PREFIX_ENV, KafkaSettings
from topics.synthetic import synthetic_transactions

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
    "module", ["topics.broker", "topics.admin", "topics.produce", "topics.tail"]
)
def test_help_explains_options_and_environment(module: str) -> None:
    done = run([module, "--help"])
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "usage: python -m " + module in text
    assert BOOTSTRAP_ENV in text
    for option in {
        "topics.broker": ["--port"],
        "topics.admin": ["--list", "--partitions"],
        "topics.produce": ["--count", "--cards", "--seed", "--file", "--rate", "--topic"],
        "topics.tail": [
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
    produced = run(["topics.produce", "--count", "1000", "--seed", "77", "--cards", "50"], env)
    assert produced.returncode == 0, produced.stderr
    assert "produced 1000 transactions to " + env[TOPIC_PREFIX_ENV] + "transactions" in (
        produced.stderr
    )
    tailed = run(["topics.tail", "transactions", "--limit", "1000", "--json"], env)
    assert tailed.returncode == 0, tailed.stderr
    lines = tailed.stdout.splitlines()
    decoder = msgspec.json.Decoder(Transaction)
    got = [decoder.decode(line).transaction_id for line in lines]
    expected = [t.transaction_id for t in synthetic_transactions(1000, seed=77, cards=50)]
    assert len(got) == 1000 and sorted(got) == sorted(expected)


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

    dl = run(["topics.tail", "dead-letter"], env)
    assert dl.returncode == 0, dl.stderr
    assert "key=k1 wrong_type: amount: expected `float`, got `str` [from transactions p3@41]" in (
        dl.stdout
    )
    assert "lots" in dl.stdout
    pred = run(["topics.tail", topics.topic("predictions"), "--timeout", "5"], env)
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
    done = run(["topics.produce", "--file", str(bad), "--no-progress"], env)
    assert done.returncode == 1
    assert f"{bad} row 3 (line 4): currency:" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_admin_creates_then_reports_existing(env: dict[str, str]) -> None:
    env = {**env, TOPIC_PREFIX_ENV: env[TOPIC_PREFIX_ENV] + "admin."}
    first = run(["topics.admin"], env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(" created") == 5
    listed = run(["topics.admin", "--list"], env)
    assert listed.stdout.count(" present") == 5
    second = run(["topics.admin"], env)
    assert second.stdout.count(" exists") == 5


def test_tail_unknown_topic_is_a_clear_error(env: dict[str, str]) -> None:
    done = run(["topics.tail", "no-such-topic-here", "--timeout", "2"], env)
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
