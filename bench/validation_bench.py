"""Decode + validate cost per message, median of several runs (not a test).

    python bench/validation_bench.py [--runs 7] [--n 200000]

The first two rows are the figures to compare across versions (the same messages
since the first version of this bench); the others cover the v2 rules: 0-, 2-
and 3-decimal currencies with cardholder billing fields, a leading UTF-8 BOM,
RFC 3339 event times (parsed on the slow path) and integral float epochs.
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
    """Median over ``runs`` of the CPU time (this process, µs) per message.

    CPU time rather than wall time: on a shared machine, time spent descheduled
    is not the decoder's cost.
    """
    timings = []
    for _ in range(runs):
        start = time.process_time()
        for message in messages:
            decoder.decode(message, NOW_MS)
        timings.append((time.process_time() - start) / len(messages) * 1e6)
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
    currencies = [("JPY", 4500.0, 26.35), ("BHD", 12.345, 30.12), ("USD", 33.1, 30.02)]
    billed = [
        raw(transaction_id=f"t{i}", amount=amount, currency=code, billing_amount=billing,
            billing_currency="EUR", country=None)
        for i in range(args.n)
        for code, amount, billing in [currencies[i % 3]]
    ]
    bom = [b"\xef\xbb\xbf" + m for m in full[: args.n // 4]]
    rfc3339 = [raw(transaction_id=f"t{i}", event_time="2023-11-14T22:13:19.5+01:00")
               for i in range(args.n // 4)]
    float_epoch = [raw(transaction_id=f"t{i}", event_time=float(NOW_MS - 1000))
                   for i in range(args.n // 4)]
    results = {
        "valid, all optional fields (us/msg)": per_message_us(decoder, full, args.runs),
        "valid, required fields only (us/msg)": per_message_us(decoder, minimal, args.runs),
        "invalid, mixed kinds (us/msg)": per_message_us(decoder, bad, args.runs),
        "valid, JPY/BHD/USD billed in EUR (us/msg)": per_message_us(decoder, billed, args.runs),
        "valid, UTF-8 BOM prefix (us/msg)": per_message_us(decoder, bom, args.runs),
        "valid, RFC 3339 event_time (us/msg)": per_message_us(decoder, rfc3339, args.runs),
        "valid, integral float epoch (us/msg)": per_message_us(decoder, float_epoch, args.runs),
    }
    for name, value in results.items():
        print(f"{name:44s} {value:7.2f}")
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))


if __name__ == "__main__":
    main()
