"""State throughput, bytes per card on disk and RSS with many cards held (not a test).

    python bench/state_bench.py [--cards 1000000] [--replay-txns 500000] [--batch 512]

Reports, on one core:
  * offline replay (training path): state update + feature vector, txn/s;
  * streaming path (PartitionStore over RocksDB, process_batch): txn/s;
  * bytes per card on disk after a flush, and process RSS with --cards distinct
    cards held in the store (state lives on disk; RSS is block cache + memtables).

Driver: the first ``--real-cards`` cards (each card exactly once per round) go
through the real streaming path. Beyond that, the other cards' states are bulk
copies of those real encoded states (same sizes and variety, new keys), written
straight into the partition's RocksDB; then ``--probe-txns`` transactions on
random cards among all of them go through the real path again (multi-gets that
hit the full store, writes, compactions). Per-transaction records (stored
outputs, verdict index) therefore exist only for the real transactions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import rocksdict

from state import keys
from state.options import StoreOptions
from state.replay import replay_matrix
from state.store import PartitionStore, partition_path
from topics.contracts import Label, Transaction

T0 = 1_700_000_000_000
COUNTRIES = ["FR", "DE", "ES", "IT", "NL", "US", "GB"]


def card_id(card: int) -> str:
    """The id of synthetic card number ``card``."""
    return f"card-{card:08d}"


def transactions(
    n: int, cards: int, merchants: int, span_ms: int, seed: int, labels: float = 0.0,
    *, every_card: bool = False, t0: int = T0, first: int = 0,
) -> Iterator[Transaction | Label]:
    """A time-ordered synthetic stream; a ``labels`` share of transactions gets a label later.

    Cards are drawn at random, or in turn (``every_card``: each card once per round).
    """
    rng = random.Random(seed)
    step = span_ms / max(n, 1)
    pending: list[Label] = []
    for i in range(n):
        t = t0 + int(i * step)
        while pending and pending[0].label_time <= t:
            yield pending.pop(0)
        card = i % cards if every_card else rng.randrange(cards)
        txn = Transaction(
            transaction_id=f"t{first + i}",
            card_id=card_id(card),
            merchant_id=f"merchant-{rng.randrange(merchants):06d}",
            amount=round(rng.lognormvariate(3.0, 1.2), 2) + 0.01,
            currency="EUR",
            event_time=t,
            country=COUNTRIES[card % 5] if rng.random() < 0.9 else rng.choice(COUNTRIES),
            lat=48.0 + rng.random(),
            lon=2.0 + rng.random(),
            channel=rng.choice(["pos", "ecom", "atm"]),
            entry_mode=rng.choice(["chip", "contactless", "ecom"]),
        )
        if rng.random() < labels:
            pending.append(Label(transaction_id=txn.transaction_id, card_id=txn.card_id,
                                 merchant_id=txn.merchant_id, is_fraud=rng.random() < 0.5,
                                 label_time=t + 3_600_000))
        yield txn


def rss_mib() -> tuple[float, float]:
    """Current and peak resident set size of this process in MiB (VmRSS, VmHWM).

    Not ``ru_maxrss``: on Linux it survives fork and exec, so a child started by a
    large parent (bench/run.py) would report the parent's peak.
    """
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            status[line.split(":")[0]] = int(line.split()[1]) / 1024
    return status.get("VmRSS", 0.0), status.get("VmHWM", 0.0)


def reset_peak_rss() -> None:
    """Start VmHWM afresh from the current RSS (Linux ``clear_refs``), if allowed."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def bench_replay(n: int, cards: int) -> dict[str, float]:
    events = list(transactions(n, cards, merchants=max(1, cards // 10), span_ms=30 * 86_400_000,
                               seed=1, labels=0.01))
    start = time.perf_counter()
    txns, _ = replay_matrix(events)
    elapsed = time.perf_counter() - start
    return {"replay_txn": len(txns), "replay_cards": cards,
            "replay_txn_per_s": round(len(txns) / elapsed)}


def feed(store: PartitionStore, stream: Iterator[Transaction | Label], first_offset: int,
         batch: int) -> tuple[int, float]:
    """Process ``stream`` in batches from ``first_offset``; (transactions, seconds in the store)."""
    elapsed, done, buf = 0.0, 0, []
    for offset, event in enumerate(stream, first_offset):
        assert isinstance(event, Transaction)
        buf.append((offset, event))
        if len(buf) == batch:
            elapsed += _timed_batch(store, buf)
            done, buf = done + len(buf), []
    if buf:
        elapsed += _timed_batch(store, buf)
        done += len(buf)
    return done, elapsed


def _timed_batch(store: PartitionStore, buf: list[tuple[int, Transaction]]) -> float:
    start = time.perf_counter()  # time the store only, not the data generator
    store.process_batch(buf)
    return time.perf_counter() - start


def copy_cards(state_dir: Path, real: int, cards: int, options: StoreOptions) -> None:
    """Give cards ``real``..``cards - 1`` copies of the real cards' encoded states."""
    db = rocksdict.Rdict(str(partition_path(state_dir, 0)), options.rocksdb())
    try:
        templates = cast(list[bytes], db.get([keys.card_key(card_id(i)) for i in range(real)]))
        for start in range(real, cards, 100_000):
            batch = rocksdict.WriteBatch(raw_mode=True)
            for j in range(start, min(cards, start + 100_000)):
                batch.put(keys.card_key(card_id(j)), templates[j % real])
            db.write(batch)
    finally:
        db.close()


def bench_store(cards: int, txns_per_card: int, batch: int, state_dir: Path,
                real_cards: int, probe_txns: int) -> dict[str, float]:
    options = StoreOptions()
    real = min(cards, real_cards)
    merchants = max(1, min(cards // 10, 50_000))
    store = PartitionStore.open(state_dir, 0, options)
    n = real * txns_per_card
    span = 7 * 86_400_000
    done, elapsed = feed(store, transactions(n, real, merchants, span, seed=2, every_card=True),
                         0, batch)
    real_peak = rss_mib()[1]
    if cards > real:
        store.close()
        copy_cards(state_dir, real, cards, options)
        reset_peak_rss()  # the copy's own peak is not the store's: real phase and probe count
        store = PartitionStore.open(state_dir, 0, options)
        probe = transactions(probe_txns, cards, merchants, 3_600_000, seed=3, t0=T0 + span,
                             first=n)
        more, seconds = feed(store, probe, n, batch)
        done, elapsed = done + more, elapsed + seconds
    store.flush()
    store.compact()
    rss_now, rss_peak = rss_mib()
    rss_peak = max(rss_peak, real_peak)
    sst = store.approximate_disk_bytes()
    store.close()
    on_disk = sum(p.stat().st_size for p in state_dir.rglob("*") if p.is_file())
    # each offset also keeps its output (bounded by output_retention) and verdict record
    return {
        "store_txn": done,
        "store_txn_per_s": round(done / elapsed),
        "store_cards": cards,
        "real_cards": real,
        "disk_bytes_total": on_disk,
        "sst_bytes_per_card": round(sst / cards, 1),
        "disk_bytes_per_card": round(on_disk / cards, 1),
        "rss_mib": round(rss_now, 1),
        "peak_rss_mib": round(rss_peak, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cards", type=int, default=1_000_000,
                        help="distinct cards streamed through the RocksDB store")
    parser.add_argument("--txns-per-card", type=int, default=2, help="store transactions per card")
    parser.add_argument("--batch", type=int, default=512, help="process_batch size")
    parser.add_argument("--real-cards", type=int, default=100_000,
                        help="cards fed through the real path; the others are copies of them")
    parser.add_argument("--probe-txns", type=int, default=50_000,
                        help="real-path transactions on random cards after the copies")
    parser.add_argument("--replay-txns", type=int, default=500_000, help="replay transactions")
    parser.add_argument("--replay-cards", type=int, default=25_000, help="replay distinct cards")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where to put the store (default: a temporary directory, removed)")
    args = parser.parse_args()
    result: dict[str, float] = {}
    if args.replay_txns:
        result |= bench_replay(args.replay_txns, args.replay_cards)
    if args.cards:
        state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="state-bench-"))
        try:
            result |= bench_store(args.cards, args.txns_per_card, args.batch, state_dir,
                                  args.real_cards, args.probe_txns)
        finally:
            if args.state_dir is None:
                shutil.rmtree(state_dir, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
