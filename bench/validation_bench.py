"""Decode + validate cost per message, median of several runs (not a test).

    python bench/validation_bench.py [--runs 7] [--n 200000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from samples import BAD_MESSAGES, NOW_MS, raw  # noqa: E402
from topics.validation import TransactionDecoder  # noqa: E402


def per_message_us(decoder: TransactionDecoder, messages: list[bytes], runs: int) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        for message in messages:
            decoder.decode(message, NOW_MS)
        timings.append((time.perf_counter() - start) / len(messages) * 1e6)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7, help="repetitions; the median is reported")
    parser.add_argument("--n", type=int, default=200_000, help="messages per run")
    args = parser.parse_args()
    decoder = TransactionDecoder()
    full = [raw(transaction_id=f"t{i}", amount=1.0 + i % 500) for i in range(args.n)]
    minimal = [
        json.dumps({"transaction_id": f"t{i}", "card_id": "c", "merchant_id": "m", "amount": 3.5,
                    "currency": "USD", "event_time": NOW_MS}).encode()
        for i in range(args.n)
    ]
    bad = [m.value for m in BAD_MESSAGES] * max(1, args.n // (10 * len(BAD_MESSAGES)))
    results = {
        "valid, all optional fields (us/msg)": per_message_us(decoder, full, args.runs),
        "valid, required fields only (us/msg)": per_message_us(decoder, minimal, args.runs),
        "invalid, mixed kinds (us/msg)": per_message_us(decoder, bad, args.runs),
    }
    for name, value in results.items():
        print(f"{name:40s} {value:7.2f}")
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))


if __name__ == "__main__":
    main()
