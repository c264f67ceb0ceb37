"""The process's list table at its cap: memory, rule-book snapshot size, load time (issue 22).

    python bench/lists_bench.py                      # 100,000 entries (FRAUD_LISTS_MAX_ENTRIES)
    python bench/lists_bench.py --entries 50000 --shards 8

What the flow does at start-up (:func:`flows.list_loader.fill`), without a broker:
``--entries`` list entries (card tokens, device ids, IP networks over three lists,
each within ``FRAUD_LIST_MAX_ENTRIES``; beyond the default caps they are refused, as
in the flow), each signed by the bench's own dev analyst
(:func:`rules.signing.dev_keys` in a temporary directory) and verified as the flow
verifies it, applied to one :class:`~rules.list_table.ListTable`; then
``--shards`` merchant shards' rule books share it, as ``flows.score`` builds them.
Prints (and with ``--json``, writes) the resident memory the table added (``VmRSS``
before and after, MiB), the size of each book's recovery snapshot (bytes: it holds
no entry) and the seconds and CPU µs per record the load took (most of it the
Ed25519 check, :mod:`rules.signing`).
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

from flows.list_loader import fill
from rules.book import RuleBook
from rules.contracts import ListEntry, list_key
from rules.cost import CostBudget
from rules.list_table import ListTable
from rules.signing import TrustedKeys, dev_keys, sign_record


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def entries(n: int) -> list[ListEntry]:
    """``n`` entries over three lists: half card tokens, a third device ids, the rest networks."""
    cards, devices = n // 2, n // 3
    out = [ListEntry(list="blocked_cards", kind="card_id", value=f"tok_{i:032x}")
           for i in range(cards)]
    out += [ListEntry(list="bad_devices", kind="device_id", value=f"dev-{i:09d}")
            for i in range(devices)]
    out += [ListEntry(list="bad_ips", kind="ip_range",
                      value=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32")
            for i in range(n - cards - devices)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/lists_bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=CostBudget().max_entries,
                        help="list entries (default: the cap, FRAUD_LISTS_MAX_ENTRIES)")
    parser.add_argument("--shards", type=int, default=8, help="merchant shards' books (8)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    budget = CostBudget()  # the flow's default caps: beyond them, entries are refused
    with tempfile.TemporaryDirectory(prefix="fraud-lists-") as tmp:
        keys = dev_keys(tmp)
        trust = TrustedKeys.from_file(keys.trusted)
        print(f"signing {args.entries:,} entries ...", flush=True)
        records = [(i, list_key(e).encode(), sign_record(e, [keys.maker]))
                   for i, e in enumerate(entries(args.entries))]
        gc.collect()
        before = _rss_mib()
        table = ListTable()
        wall, cpu = time.perf_counter(), time.process_time()
        read, refused = fill(table, [], records, trust, budget)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        del records
        gc.collect()
        books = [RuleBook(trust=trust, budget=budget, table=table) for _ in range(args.shards)]
        added = _rss_mib() - before
        snapshots = [len(b.snapshot()) for b in books]
    figures = {"entries": table.index.size(), "records": read, "refused": dict(refused),
               "shards": args.shards, "rss_added_mib": round(added, 1),
               "snapshot_bytes_per_shard": max(snapshots),
               "load_s": round(wall, 2), "load_cpu_us_per_record": round(cpu / max(read, 1) * 1e6)}
    print(f"{figures['entries']:,} entries in one table shared by {args.shards} books: "
          f"+{added:.1f} MiB RSS, a {max(snapshots):,}-byte snapshot per book; loaded in "
          f"{wall:.1f} s ({figures['load_cpu_us_per_record']} µs CPU per record)"
          + (f"; refused {dict(refused)}" if refused else ""))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
