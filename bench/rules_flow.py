"""Analyst rules in the real scoring flow: throughput without rules, with 100, and under attack.

``bench/rules_bench.py`` prices rules in process; this part runs ``flows.score``
over the throughput part's pre-loaded topic (fresh output topics, state and
``rules``/``lists`` topics per run) in three scenarios, interleaved, median of
``runs`` each:

- ``none``: no rules or lists;
- ``rules_100``: the 100 rules and the lists of ``bench/rules_bench.py`` (90 active,
  10 shadow; 18,230 list entries), signed by the bench's own dev analysts
  (:func:`rules.signing.dev_keys` in the work directory, trusted by the flow through
  ``FRAUD_RULES_TRUSTED_KEYS``) and published before the flow starts;
- ``rules_100_hostile``: the same, plus two hostile shadow ``tag`` rules written
  straight to the ``rules`` topic (around the publisher's check), properly signed,
  once :data:`HOSTILE_AT` of the verdicts have arrived: the case
  ``expensive-shadow-rule`` (nested ``exists`` over 99 x 99, which the flow's own
  compile check refuses: ``rule_too_costly``), and :func:`time_bomb`, which passes
  that check (cheap on the reference batch, whose event times are all later) but
  costs about a millisecond per transaction on this traffic: the stream's guard
  (``rules/guard.py``) must disable it.

Rate = verdicts / (last verdict's record timestamp - the flow's first fetch), as in
:mod:`bench.throughput`; the flow's CPU per transaction includes reading and
verifying the rules and lists. Just before each flow stops, its /metrics says
what the rules did (hits, refusals, rules disabled by the guard), so a run whose
rules did not apply is visible. Ratios: ``rules_100`` / ``none`` and
``rules_100_hostile`` / ``rules_100`` (issue 22: within 10%).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import (
    Collector,
    Env,
    first_fetch_s,
    producer,
    say,
    scrape_counters,
    verdict_rate,
)
from bench.rules_bench import list_entries, rule_set
from rules.contracts import ListEntry, Rule, list_key, rule_from_obj
from rules.signing import DevKeys, Signer, dev_keys, sign_record
from topics.producer import produce_waiting
from topics.settings import KafkaSettings

SCENARIOS = ("none", "rules_100", "rules_100_hostile")
#: Share of the verdicts after which the hostile rules are published.
HOSTILE_AT = 0.1
ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "tests" / "fixtures" / "cases" / "expensive-shadow-rule" / "records.jsonl"
METRICS = ("fraud_rule_hits_total", "fraud_rules_disabled_total",
           "fraud_rule_messages_refused_total", "fraud_shadow_rules_skipped_total")
Record = tuple[str, str, bytes]  # (logical topic, key, signed value)


def time_bomb(before_ms: int) -> Rule:
    """A shadow tag rule that passes the compile check but not the stream's guard.

    Before ``before_ms`` (event time) it runs 900 iterations of string building per
    transaction (about 1 ms); the reference batch's rows are all later, so the
    check measures only the cheap comparison. Within the static loop bound (1,000).
    """
    values = "[" + ",".join(str(i) for i in range(900)) + "]"
    return Rule(id="time-bomb", version=1, description="looks harmless", owner="bench",
                expression=f"event_time < {before_ms} && "
                           f"{values}.exists(a, string(a * int(amount) + 7).size() > 40)",
                action="tag", mode="shadow")


def case_rule() -> Rule:
    """The rule of the case ``expensive-shadow-rule`` (its record, unsigned there)."""
    for line in CASE.read_text().splitlines():
        record = json.loads(line)
        if record.get("topic") == "rules":
            return rule_from_obj(record["value_json"])
    raise RuntimeError(f"no rules record in {CASE}")


def _signers(keys: DevKeys, loosens: bool) -> Sequence[Signer]:
    """Maker alone, or maker and checker for what loosens decisions (approve rules, vip list)."""
    return (keys.maker, keys.checker) if loosens else (keys.maker,)


def signed(keys: DevKeys, rules: Sequence[Rule], entries: Sequence[ListEntry]) -> list[Record]:
    """``lists`` then ``rules`` records, signed as the flow requires (rules/book.py)."""
    out: list[Record] = [("lists", list_key(e), sign_record(e, _signers(keys, e.list == "vip")))
                         for e in entries]
    out += [("rules", r.id, sign_record(r, _signers(keys, r.action == "approve")))
            for r in rules]
    return out


def publish(settings: KafkaSettings, records: Sequence[Record]) -> None:
    """Produce ``records`` to the set's ``rules``/``lists`` topics and wait for every ack."""
    prod = producer(settings)
    for logical, key, value in records:
        produce_waiting(prod, settings.topic(logical), value, key.encode())
    remaining = prod.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} rules/lists record(s) not acknowledged")


def rules_flow_once(env: Env, shared: str, n: int, scenario: str, keys: DevKeys,
                    records: Sequence[Record], hostile: Sequence[Record]) -> dict[str, Any]:
    """One ``flows.score`` process over the pre-loaded topic in ``scenario``."""
    from devkit.broker import free_port

    settings = env.topic_set(f"rules-{scenario}", transactions=shared)
    if scenario != "none":
        publish(settings, records)
    collector = Collector(settings, settings.topic("predictions"), "count")
    collector.start()
    port = free_port()
    started = time.time()
    flow = env.start("flows.score", settings, port,
                     extra={"FRAUD_RULES_TRUSTED_KEYS": str(keys.trusted)})
    cpu = env.cpu(flow)
    published_after = disabled_after_s = None
    try:
        collector.wait_for(1, 900, flow)  # no stall limit: a cold numba cache compiles first
        before = cpu.take()  # start-up: imports, model, the rules and lists read so far
        if scenario == "rules_100_hostile":
            collector.wait_for(int(n * HOSTILE_AT), 900, flow, stall=30)
            publish(settings, hostile)
            published_after, published_at = collector.count, time.monotonic()
            deadline = published_at + 120
            while (disabled_after_s is None and time.monotonic() < deadline
                   and not collector.wait_for(n, 0.25, flow)):
                if _disabled(port):
                    disabled_after_s = time.monotonic() - published_at
        collector.wait_for(n, 900, flow, stall=30)
        if collector.count < 0.95 * n:
            raise RuntimeError(f"rules flow {scenario}: only {collector.count}/{n} verdicts")
        used = cpu.take()
        metrics = scrape_counters(port, METRICS)
        fetched = first_fetch_s(port, shared)
    finally:
        flow.stop()
        collector.stop()
    rate, from_first = verdict_rate(collector, fetched)  # as bench/throughput.py
    hits = metrics["fraud_rule_hits_total"]
    return {"tx_per_s": rate,
            "tx_per_s_from_first_verdict": from_first,
            "startup_s": collector.first_local - started,
            "flow_cpu_us_per_tx": (before["flow"] + used["flow"]) / n * 1e6,
            "scoring_cpu_us_per_tx": used["flow"] / n * 1e6,
            "verdicts": collector.count,
            "rule_hits": sum(hits.values()),
            "rules_hit": sum(1 for v in hits.values() if v > 0),
            "refused": {_refusal(k): v for k, v in
                        metrics["fraud_rule_messages_refused_total"].items() if v > 0},
            "disabled": sorted(k.removeprefix("rule_id=") for k, v in
                               metrics["fraud_rules_disabled_total"].items() if v > 0),
            "shadow_skipped": sum(metrics["fraud_shadow_rules_skipped_total"].values()),
            "hostile_published_after": published_after,
            "hostile_disabled_after_s": disabled_after_s}


def _refusal(labels: str) -> str:
    """``topic=rules,error_class=x`` (any order) as ``rules:x``."""
    parts = dict(p.split("=", 1) for p in labels.split(",") if "=" in p)
    return f"{parts.get('topic', '?')}:{parts.get('error_class', '?')}"


def _disabled(port: int) -> bool:
    """Whether the flow's guard has disabled a rule (its /metrics)."""
    try:
        found = scrape_counters(port, ("fraud_rules_disabled_total",))
    except OSError:
        return False
    return any(v > 0 for v in found["fraud_rules_disabled_total"].values())


def rules_flow(env: Env, shared: str, txns_cards: Sequence[str], n: int,
               runs: int) -> dict[str, Any]:
    """Median of ``runs`` interleaved runs per scenario; ratios; what the rules did.

    ``txns_cards``: card ids of the pre-loaded transactions (a few go on the blocklist,
    so the rules hit).
    """
    import numpy as np

    from rules.cost import reference_batch
    from rules.names import vocabulary

    keys = dev_keys(env.work / "rules-keys")
    rules = rule_set(100)
    entries = list_entries(np.random.default_rng(1), sorted(set(txns_cards)))
    records = signed(keys, rules, entries)
    bomb = time_bomb(int(reference_batch(vocabulary()).event_time.min()))
    hostile = signed(keys, [case_rule(), bomb], [])
    say(f"rules flow: {len(rules)} rules, {len(entries):,} list entries signed; hostile: "
        f"{', '.join(r.id for r in (case_rule(), bomb))}")
    per: dict[str, list[dict[str, Any]]] = {s: [] for s in SCENARIOS}
    for r in range(runs):
        for scenario in SCENARIOS:
            start = time.monotonic()
            res = rules_flow_once(env, shared, n, scenario, keys, records, hostile)
            say(f"rules flow {r + 1}/{runs} {scenario}: {res['tx_per_s']:,.0f} tx/s, flow CPU "
                f"{res['flow_cpu_us_per_tx']:.1f} us/tx ({res['scoring_cpu_us_per_tx']:.1f} "
                f"after the first verdict), {res['rule_hits']:,.0f} rule hits, "
                f"refused {res['refused'] or '-'}, disabled {res['disabled'] or '-'}"
                + (f" {res['hostile_disabled_after_s']:.2f} s after publishing"
                   if res["hostile_disabled_after_s"] is not None else "") + ", "
                f"{time.monotonic() - start:.0f} s")
            per[scenario].append(res)
    out: dict[str, Any] = {}
    for scenario, results in per.items():
        out[scenario] = {key: statistics.median(x[key] for x in results)
                         for key in ("tx_per_s", "startup_s", "flow_cpu_us_per_tx",
                                     "scoring_cpu_us_per_tx", "rule_hits")}
        out[scenario]["runs"] = [round(x["tx_per_s"]) for x in results]
        out[scenario]["refused"] = results[-1]["refused"]
        out[scenario]["disabled_each_run"] = [x["disabled"] for x in results]
        out[scenario]["shadow_skipped"] = results[-1]["shadow_skipped"]
        out[scenario]["disabled_after_s"] = [
            None if x["hostile_disabled_after_s"] is None
            else round(x["hostile_disabled_after_s"], 2) for x in results]
    out["ratio_rules_to_none"] = out["rules_100"]["tx_per_s"] / out["none"]["tx_per_s"]
    out["ratio_hostile_to_rules"] = (out["rules_100_hostile"]["tx_per_s"]
                                     / out["rules_100"]["tx_per_s"])
    out["hostile_rules"] = {"case": case_rule().id, "time_bomb": bomb.id,
                            "published_after_share": HOSTILE_AT}
    out["transactions"] = n
    out["list_entries"] = len(entries)
    return out
