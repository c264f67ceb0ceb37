"""Cost of analyst rules per transaction: 1, 10 and 100 active rules over 256-row batches.

    python bench/rules_bench.py [--batch 256] [--batches 40] [--rounds 5] [--json]

Each batch holds synthetic transactions (training.simulate.transaction_stream) with a random
feature matrix of the running spec, model scores and decisions; the book holds
typical lists (10,000 blocked cards, 1,000 IP ranges, 200 BIN prefixes, 30
countries, 5,000 devices, some with expiry). The rule set mixes the common
policies (velocity, amount, geography, BIN, device, blocklists, allowlists,
model-score bands, attributes) with varied thresholds. Reported: µs per
transaction for ``RuleBook.evaluate`` (fast path + policy + hit assembly, under the
cost guard), the best of ``--rounds``; the 100 rules again in batches of 16 and 64
rows (each rule pays a fixed cost per batch, and the flow's batches are often that
small: ``bench/rules_flow.py`` measures rules in the flow); and, for reference, the
CEL library evaluating row by row.

Bounded rule cost (issue 22): ``refuse_ms_*``, how long the compile-time check
takes to refuse the two known hostile forms (nested ``exists`` and nested ``map``
over 99 x 99); and ``rules_100_hostile_us_per_txn``, 100 rules plus a rule that
passes the check but loops over ``attributes`` (applied around the publisher),
on traffic whose every fourth transaction carries 1,000 attributes: the stream's
guard disables it (``hostile_batches_until_disabled``, ``hostile_ms_until_disabled``),
after which the cost must stay within 10% of ``rules_100_us_per_txn``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import msgspec
import numpy as np

from rules.batch import RuleBatch
from rules.book import Applied, Refused, RuleBook
from rules.contracts import ListEntry, Rule
from state.spec import FEATURE_NAMES
from training.simulate import transaction_stream

TEMPLATES = [
    ('channel == "ecom" && amount_reference > {a}.0 && card_country_changed > 0.5 '
     '&& card_count_10m > {k}.0', "decline"),
    ("amount_reference > {a}.0 && card_amount_ratio_30d > {k}.0", "review"),
    ("country in lists.risky_countries && card_cross_border > 0.5 && score > 0.{k}", "review"),
    ('bin in lists.risky_bins && channel == "ecom" && amount_reference > {a}.0', "review"),
    ("device_id in lists.bad_devices || ip in lists.bad_ips", "decline"),
    ("card_id in lists.blocked_cards", "decline"),
    ("customer_id in lists.vip && score > 0.{k}", "approve"),
    ("score > 0.{k} && merchant_fraud_rate_7d > 0.0{k}", "review"),
    ("card_small_count_10m > {k}.0 && card_distinct_merchants_1h > 2.0", "decline"),
    ('has(attributes.bin) && attributes.bin in lists.risky_bins && mcc in ["5967", "7995"]',
     "tag"),
    ('card_travel_speed_kmh > {a}.0 && entry_mode != "chip"', "review"),
    ("card_seconds_since_prev < 0.00{k} && amount_reference > {a}.0", "review"),
]


def rule_set(count: int) -> list[Rule]:
    """``count`` distinct rules from the templates, thresholds varied."""
    rules = []
    for i, (text, action) in zip(range(count), itertools.cycle(TEMPLATES)):
        k, a = 1 + i % 8, 200 + 37 * i
        rules.append(Rule(
            id=f"bench-{i:03d}", version=1, description=f"bench rule {i}", owner="bench",
            expression=text.format(k=k, a=a), action=action,  # type: ignore[arg-type]
            mode="shadow" if i % 10 == 9 else "active", priority=i % 3,
        ))  # fmt: skip
    return rules


def list_entries(rng: np.random.Generator, cards: list[str]) -> list[ListEntry]:
    """Typical list sizes; a tenth of the entries expire within the batch's time span."""
    entries = []
    for i in range(10_000):
        value = cards[i] if i < 50 else f"blocked-{i}"
        entries.append(ListEntry(list="blocked_cards", kind="card_id", value=value,
                                 expires=1_700_000_600_000 if i % 10 == 0 else None))
    for i in range(1_000):
        entries.append(ListEntry(list="bad_ips", kind="ip_range",
                                 value=f"100.{64 + i % 64}.{i // 64 * 8}.0/{21 + i % 4}"))
    for i in range(200):
        entries.append(ListEntry(list="risky_bins", kind="bin_prefix", value=str(400000 + i * 7)))
    for c in ["NG", "RU", "BR", "ID", "VN", "PK", "UA", "RO", "BG", "TR"] * 3:
        entries.append(ListEntry(list="risky_countries", kind="country", value=c))
    for i in range(5_000):
        entries.append(ListEntry(list="bad_devices", kind="device_id", value=f"dev-{i}"))
    for i in range(2_000):
        entries.append(ListEntry(list="vip", kind="card_id", value=f"cust-{i}"))
    del rng
    return entries


def batches(count: int, size: int, seed: int = 7) -> list[RuleBatch]:
    rng = np.random.default_rng(seed)
    txns = list(transaction_stream(count * size, seed=seed, cards=5_000))
    names = tuple(FEATURE_NAMES)
    out = []
    for b in range(count):
        chunk = txns[b * size:(b + 1) * size]
        chunk = [
            msgspec.structs.replace(t, ip=f"{(j * 37) % 223 + 1}.{j % 256}.{j % 7}.{j % 200}",
                                    device_id=f"dev-{j * 7919 % 1_000_000}",
                                    attributes={"bin": str(400000 + j % 2000)} if j % 4 == 0
                                    else t.attributes)
            for j, t in enumerate(chunk)
        ]  # fmt: skip
        # Mostly quiet traffic: each rule hits a small share of the rows, as in production.
        features = rng.gamma(0.5, 0.6, size=(size, len(names))).astype(np.float32)
        scores = rng.beta(1, 30, size).astype(np.float32)
        decisions = np.where(scores > 0.6, "decline", np.where(scores > 0.3, "review", "approve"))
        out.append(RuleBatch.from_transactions(chunk, features, names, scores, decisions))
    return out


def build_book(rules: list[Rule], entries: list[ListEntry]) -> RuleBook:
    """A book holding ``rules`` and ``entries`` (checked content: no signatures needed)."""
    book = RuleBook()
    for e in entries:
        book.put_entry(e)
    for r in rules:
        result = book.put_rule(r)
        assert isinstance(result, Applied), result
    return book


#: Batch sizes the 100 rules are also measured at (rows per scoring batch).
SMALL_BATCHES = (16, 64)
NINETY_NINE = "[" + ",".join(str(i) for i in range(99)) + "]"
HOSTILE = {
    "nested_exists": f"{NINETY_NINE}.exists(a, {NINETY_NINE}.exists(b, "
                     "string(a * b + int(amount)).size() > 9))",
    "nested_map": f"{NINETY_NINE}.map(a, {NINETY_NINE}.map(b, string(a) + '-' + string(b) + "
                  "'-' + currency + '-' + merchant_id)).size() > 0",
}
#: Passes the compile check (the reference batch has at most 64 attributes a row).
ATTRIBUTE_LOOP = 'attributes.all(k, k != "zz")'


def refuse_ms(expression: str) -> float:
    """Wall ms the compile-time check takes to refuse ``expression`` (asserts it refuses)."""
    book = RuleBook()
    started = time.perf_counter()
    result = book.put_rule(Rule(id="hostile", version=1, description="hostile", owner="bench",
                                expression=expression, action="tag", mode="shadow"))
    elapsed = (time.perf_counter() - started) * 1000
    assert isinstance(result, Refused) and result.error_class == "rule_too_costly", result
    return elapsed


def with_payload(data: list[RuleBatch], keys: int) -> list[RuleBatch]:
    """Every fourth row of each batch carries ``keys`` attributes (a hostile payload)."""
    attrs = {f"k{j}": j for j in range(keys)}
    return [RuleBatch(b.event_time, b.text, b.amount, b.amount_reference,
                      [attrs if i % 4 == 0 else a for i, a in enumerate(b.attributes)],
                      b.features, b.feature_names, b.score, b.model_decision) for b in data]


def measure(book: RuleBook, data: list[RuleBatch], rounds: int, library: bool = False) -> float:
    """Best-of-rounds µs per transaction over every batch."""
    rows = sum(len(b) for b in data)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for batch in data:
            book.evaluate(batch, use_library=library)
        best = min(best, time.perf_counter() - started)
    return best / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    data = batches(args.batches, args.batch)
    cards = sorted({c for b in data for c in b.text["card_id"]})
    entries = list_entries(np.random.default_rng(1), cards)
    results: dict[str, float] = {}
    for count in (1, 10, 100):
        book = build_book(rule_set(count), entries)
        fast = sum(c.fast is not None for c in book.compiled())
        results[f"rules_{count}_us_per_txn"] = round(measure(book, data, args.rounds), 2)
        results[f"rules_{count}_fast_path"] = fast
        hits = sum(sum(book.evaluate(b).counts.values()) for b in data[:5])
        results[f"rules_{count}_hits_per_1k"] = round(hits / (5 * args.batch) * 1000, 1)
        if count == 100 and not args.json:
            per_rule: dict[str, int] = {}
            for b in data[:5]:
                for (rule_id, _), n in book.evaluate(b).counts.items():
                    per_rule[rule_id] = per_rule.get(rule_id, 0) + n
            top = sorted(per_rule.items(), key=lambda kv: -kv[1])[:5]
            print("most hits (5 batches):", ", ".join(f"{k}={v}" for k, v in top))
    # The flow's scoring batches are often far smaller than 256 rows (FRAUD_INPUT_LINGER_MS):
    # each rule pays a fixed cost per batch, so the cost per transaction grows as batches shrink.
    book100 = build_book(rule_set(100), entries)
    for size in SMALL_BATCHES:
        small = batches(args.batches, size, seed=8)
        results[f"rules_100_us_per_txn_batch_{size}"] = round(
            measure(book100, small, args.rounds), 2)
    book10 = build_book(rule_set(10), entries)
    results["library_10_rules_us_per_txn"] = round(measure(book10, data[:2], 1, library=True), 1)
    for name, expression in HOSTILE.items():
        results[f"refuse_ms_{name}"] = round(refuse_ms(expression), 1)
    payload = with_payload(data, 1_000)
    hostile = build_book(rule_set(100) + [Rule(
        id="attr-loop", version=1, description="hostile payload loop", owner="bench",
        expression=ATTRIBUTE_LOOP, action="tag", mode="shadow")], entries)
    started = time.perf_counter()
    for count, batch in enumerate(itertools.cycle(payload), start=1):
        if hostile.evaluate(batch).disabled or count > 100:
            break
    assert "attr-loop" in hostile.guard.disabled, "the guard did not disable the costly rule"
    results["hostile_batches_until_disabled"] = count
    results["hostile_ms_until_disabled"] = round((time.perf_counter() - started) * 1000, 1)
    results["rules_100_hostile_us_per_txn"] = round(measure(hostile, payload, args.rounds), 2)
    results["hostile_vs_100_ratio"] = round(
        results["rules_100_hostile_us_per_txn"] / results["rules_100_us_per_txn"], 3)
    if args.json:
        print(json.dumps(results))
        return
    print(f"batches of {args.batch} rows, {args.batches} batches, best of {args.rounds}")
    for count in (1, 10, 100):
        print(f"{count:>4} rules: {results[f'rules_{count}_us_per_txn']:7.2f} µs/txn "
              f"({results[f'rules_{count}_fast_path']}/{count} on the fast path, "
              f"{results[f'rules_{count}_hits_per_1k']} hits per 1,000 txns)")
    print(" 100 rules in smaller batches: " + ", ".join(
        f"{size} rows {results[f'rules_100_us_per_txn_batch_{size}']:.2f} µs/txn"
        for size in SMALL_BATCHES))
    print(f"  10 rules, CEL library row by row: {results['library_10_rules_us_per_txn']} µs/txn")
    print("hostile rules refused at compile in "
          + ", ".join(f"{k} {results[f'refuse_ms_{k}']} ms" for k in HOSTILE))
    print(f" 100 rules + a costly attributes loop (disabled by the guard after "
          f"{results['hostile_batches_until_disabled']} batches, "
          f"{results['hostile_ms_until_disabled']} ms): "
          f"{results['rules_100_hostile_us_per_txn']:7.2f} µs/txn "
          f"({results['hostile_vs_100_ratio']:.2f}x the 100 rules)")


if __name__ == "__main__":
    main()
