"""`python -m rules.cli` on the embedded broker: publish signed, approve, list, refuse, audit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import yaml

from rules.book import Message, RuleBook
from rules.contracts import decode_rule
from rules.signing import TrustedKeys
from topics.contracts import RuleAudit
from topics.reader import read_topic
from topics.settings import BOOTSTRAP_ENV, TOPIC_PREFIX_ENV, KafkaSettings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "rules" / "examples" / "policies.yaml"
RULE_KEYS_DIR = REPO / ".dev" / "rules-keys"  # the dev analysts the CLI signs with by default


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rules.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.fixture
def env(kafka: KafkaSettings, topic_prefix: str) -> dict[str, str]:
    assert kafka.bootstrap_servers
    return {**os.environ, BOOTSTRAP_ENV: kafka.bootstrap_servers, TOPIC_PREFIX_ENV: topic_prefix,
            "COLUMNS": "300"}


def test_publish_list_update_disable_and_refuse(
    env: dict[str, str], kafka: KafkaSettings, topic_prefix: str, tmp_path: Path
) -> None:
    added = run(["add", str(EXAMPLES), "--effective-in", "0"], env)
    assert added.returncode == 0, added.stderr
    assert "published 16 signed record(s)" in added.stderr and "as dev-maker" in added.stderr
    assert "allow-known-good: pending" in added.stderr  # an approve rule needs a checker

    settings = KafkaSettings.from_env({BOOTSTRAP_ENV: env[BOOTSTRAP_ENV],
                                       TOPIC_PREFIX_ENV: topic_prefix})  # fmt: skip
    records = read_topic(settings, topic_prefix + "rules", timeout=5)
    assert {r.key for r in records} == {
        k.encode() for k in (rule["id"] for rule in yaml.safe_load(EXAMPLES.read_text())["rules"])
    }
    rule = decode_rule(next(r.value for r in records if r.key == b"card-blocklist"))
    assert rule.version == 1 and rule.valid_from is None  # --effective-in 0

    listed = run(["list", "--entries"], env)
    assert listed.returncode == 0, listed.stderr
    assert "velocity-ecom-new-country" in listed.stdout and "203.0.113.0/24" in listed.stdout
    assert "pending" in listed.stdout and "allow-known-good" in listed.stdout
    maker_key = str(RULE_KEYS_DIR / "dev-maker.pem")
    self_check = run(["approve", "allow-known-good", "--key", maker_key], env)
    assert self_check.returncode == 2 and "distinct analyst" in self_check.stderr
    approved = run(["approve", "allow-known-good", "--reason", "VIP programme"], env)
    assert approved.returncode == 0 and "as dev-checker" in approved.stderr, approved.stderr
    assert "nothing pending" in run(["approve", "allow-known-good"], env).stderr
    published = len(read_topic(settings, topic_prefix + "rules", timeout=5))
    assert published == len(records) + 1  # the approved record, with both signatures

    again = run(["add", str(EXAMPLES)], env)
    assert again.returncode == 2 and "use `update`" in again.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rules": [
        {"id": "card-blocklist", "description": "typo", "owner": "ana",
         "expression": "card_idd in lists.blocked_cards", "action": "decline"}]}))
    refused = run(["update", str(bad)], env)
    assert refused.returncode == 2
    assert "undeclared reference to 'card_idd'" in refused.stderr
    assert len(read_topic(settings, topic_prefix + "rules", timeout=5)) == published

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"rules": [
        {"id": "card-blocklist", "description": "card on the blocklist", "owner": "ana",
         "expression": "card_id in lists.blocked_cards || device_id in lists.bad_devices",
         "action": "decline"}]}))
    assert run(["update", str(good)], env).returncode == 0  # a changed decline condition
    assert run(["approve", "card-blocklist"], env).returncode == 0
    assert run(["disable", "amount-spike"], env).returncode == 0  # shadow: one analyst
    assert run(["delete", "tag-high-score-new-merchant"], env).returncode == 0
    remove = tmp_path / "remove.yaml"
    remove.write_text(yaml.safe_dump({"lists": [{"list": "bad_ips", "value": "203.0.113.0/24"}]}))
    assert run(["remove-entries", str(remove)], env).returncode == 0  # a blocklist: two
    assert run(["approve", "bad_ips/203.0.113.0/24"], env).returncode == 0

    book = RuleBook(trust=TrustedKeys.from_file(RULE_KEYS_DIR / "trusted.yaml"))
    for topic in ("rules", "lists"):
        for r in read_topic(settings, topic_prefix + topic, timeout=5):
            book.apply(Message(topic, r.key, r.value))  # type: ignore[arg-type]
    by_id = {r.id: r for r in book.rules()}
    assert by_id["card-blocklist"].version == 2 and by_id["card-blocklist"].valid_from
    assert by_id["amount-spike"].enabled is False and by_id["amount-spike"].version == 2
    assert by_id["tag-high-score-new-merchant"].enabled is False  # retired, not a tombstone
    in_force = {c.rule.id for c in book.compiled()}
    assert "amount-spike" not in in_force and "allow-known-good" in in_force
    assert book.lists.get("bad_ips", "203.0.113.0/24") is None and book.pending == {}
    assert book.signers["rules:allow-known-good"] == ("dev-maker", "dev-checker")
    assert all(r.value is not None for r in read_topic(settings, topic_prefix + "rules",
                                                       timeout=5))  # no tombstone
    audit = [msgspec.json.decode(r.value, type=RuleAudit)  # type: ignore[arg-type]
             for r in read_topic(settings, topic_prefix + "rules-audit", timeout=5)]
    trail = [(a.command, a.key, a.outcome, a.signers) for a in audit]
    assert len(audit) == 16 + 7  # add; approve, update, approve, disable, delete, remove, approve
    assert ("add", "allow-known-good", "pending", ["dev-maker"]) in trail
    assert ("approve", "allow-known-good", "in_force", ["dev-maker", "dev-checker"]) in trail
    assert ("remove-entries", "bad_ips/203.0.113.0/24", "pending", ["dev-maker"]) in trail
    assert next(a.reason for a in audit if a.command == "approve") == "VIP programme"
    assert msgspec.json.decode(
        next(r.value for r in records if r.key == b"card-blocklist")
    )["owner"] == "fraud-ops"


def test_help_and_bad_usage() -> None:
    done = subprocess.run([sys.executable, "-m", "rules.cli", "--help"], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and BOOTSTRAP_ENV in done.stdout
    bad = subprocess.run([sys.executable, "-m", "rules.cli", "frobnicate"], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2
