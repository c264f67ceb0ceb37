"""Memory and disk of the card state at scale: peak RSS and bytes per card (issues 18, 21).

    python bench/state_bench.py --cards 1000000            # 1M cards, defaults below
    python bench/state_bench.py --cards 10000000 --probe-txns 50000
    python bench/run.py --only memory                     # 1M and 10M, one simulated
                                                          # transaction per template card

1. Templates: ``--real-cards`` simulated cards (``training.simulate``, about
   ``--txns-per-card`` transactions each over ``--days``) run through the card
   kernel of the stream (:func:`state.features.card_features`); their encoded states
   (the bytes a card store keeps) are the templates.
2. A fresh child process opens one RocksDB store with the flow's options
   (:class:`state.options.StoreOptions`: the block cache and write-buffer manager
   shared per process), writes ``--cards`` cards (card ``j`` holds template
   ``j % real-cards``; its id is a PAN token ``tok_<32 hex>`` as the stream's card ids
   are, or ``c<j>`` with ``--card-ids plain``; keys as :func:`state.keys.card_key`),
   flushes and compacts. Bytes per card = every file of the store directory / cards;
   the JSON also splits the SST files into keys, values, data blocks (compressed),
   index and filter blocks per card (RocksDB's table properties).
3. Then ``--probe-txns`` transactions on random cards of the whole store, in batches
   of ``--batch``, through the card path as the card store runs it: multi-get, the
   card kernel (decode, features and update, encode), one ``WriteBatch``. Peak RSS (``VmHWM``) is
   reset after the fill (``/proc/self/clear_refs``) so it is the probe's, the
   steady state of a scoring process's card store.

Prints progress on stderr and one JSON object on stdout (what ``bench/run.py`` reads).
Store only: the whole flow process adds the model, Bytewax and the merchant store
(``just bench`` latency/throughput parts measure that process's RSS).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAY_MS = 86_400_000


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def templates(real_cards: int, txns_per_card: int, days: int, probe: int, path: Path
              ) -> dict[str, Any]:
    """Simulate, run the card features, save the encoded states and probe inputs to ``path``."""
    from state.features import card_features
    from state.inputs import FeatureInputs
    from state.replay import reference_amounts
    from training.simulate import SimConfig, simulated_history

    t0 = time.perf_counter()
    history = simulated_history(SimConfig(n_transactions=max(1, real_cards * txns_per_card),
                                          n_cards=real_cards, days=days, seed=9))
    amount_of = reference_amounts()
    txns = history.transactions
    inputs = FeatureInputs.of(txns, [amount_of(t) for t in txns])
    ids: dict[str, int] = {}
    card_of = np.array([ids.setdefault(t.card_id, len(ids)) for t in txns])
    _, states = card_features([None] * len(ids), card_of, inputs)
    rng = np.random.default_rng(1)
    end = int(inputs.event_ms.max())
    picked = rng.integers(0, len(txns), probe) if probe else np.zeros(0, np.int64)
    probes = inputs.take(picked)
    after = np.sort(end + rng.integers(0, DAY_MS, len(picked)))
    np.savez(path, states=np.frombuffer(b"".join(states), np.uint8),
             lengths=np.array([len(s) for s in states]),
             **{f"probe_{f}": getattr(probes, f) for f in FeatureInputs.__slots__},
             probe_times=after)
    sizes = np.array([len(s) for s in states])
    say(f"templates: {len(states):,} cards from {len(txns):,} simulated transactions "
        f"in {time.perf_counter() - t0:.1f} s, mean state {sizes.mean():.0f} B")
    return {"real_cards": len(states), "simulated_txns": len(txns),
            "mean_state_bytes": round(float(sizes.mean()), 1)}


def _rss_mib() -> tuple[float, float]:
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            status[line.split(":")[0]] = int(line.split()[1]) / 1024
    return status.get("VmRSS", 0.0), status.get("VmHWM", 0.0)


def card_id(j: int, kind: str) -> str:
    """Card ``j``'s id: a PAN token (random-looking 128 bits, as tokenised ids are) or plain."""
    if kind == "plain":
        return f"c{j:09d}"
    return "tok_" + hashlib.blake2b(j.to_bytes(8, "little"), digest_size=16).hexdigest()


def sst_split(db: Any, cards: int) -> dict[str, float]:
    """Bytes per card of the SST files by part, from RocksDB's aggregated table properties."""
    text = db.property_value("rocksdb.aggregated-table-properties") or ""
    props = {}
    for item in text.split(";"):
        name, _, value = item.partition("=")
        props[name.strip().split(" (")[0]] = value.strip()
    out = {}
    for name, key in (("raw key size", "sst_raw_key"), ("raw value size", "sst_raw_value"),
                      ("data block size", "sst_data"), ("index block size", "sst_index"),
                      ("filter block size", "sst_filter")):
        with contextlib.suppress(KeyError, ValueError):
            out[f"{key}_bytes_per_card"] = round(int(props[name]) / cards, 1)
    return out


def store_child(path: Path, cards: int, batch: int, state_dir: Path,
                ids: str = "token") -> dict[str, Any]:
    """The fresh process: fill RocksDB with ``cards`` states, compact, probe; measure."""
    import rocksdict

    from state import keys
    from state.features import card_features
    from state.inputs import FeatureInputs
    from state.options import StoreOptions

    data = np.load(path)
    blob = data["states"].tobytes()
    ends = np.cumsum(data["lengths"]).tolist()
    states = [blob[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    probes = FeatureInputs(*(data[f"probe_{f}"] for f in FeatureInputs.__slots__))
    probes = FeatureInputs(**{**{f: getattr(probes, f) for f in FeatureInputs.__slots__},
                              "event_ms": data["probe_times"]})
    del blob
    db = rocksdict.Rdict(str(state_dir), StoreOptions().rocksdb())
    t0 = time.perf_counter()
    step = 200_000
    for start in range(0, cards, step):
        wb = rocksdict.WriteBatch(raw_mode=True)
        for j in range(start, min(cards, start + step)):
            wb.put(keys.card_key(card_id(j, ids)), states[j % len(states)])
        db.write(wb)
        if start // step % 10 == 9:
            say(f"  filled {start + step:,} of {cards:,} cards")
    fill_s = time.perf_counter() - t0
    db.flush()
    db.compact_range(None, None)
    del states
    rss_filled, peak_fill = _rss_mib()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on
    rng = np.random.default_rng(2)
    t0 = time.perf_counter()
    for lo in range(0, len(probes), batch):
        chunk = probes.take(np.arange(lo, min(len(probes), lo + batch)))
        picked = [keys.card_key(card_id(j, ids))
                  for j in rng.integers(0, cards, len(chunk)).tolist()]
        uniq = list(dict.fromkeys(picked))
        index = {k: i for i, k in enumerate(uniq)}
        stored = cast(list[bytes | None], db.get(cast(Any, uniq)))
        _, new = card_features(stored, np.array([index[k] for k in picked]), chunk)
        wb = rocksdict.WriteBatch(raw_mode=True)
        for k, state in zip(uniq, new, strict=True):
            wb.put(k, state)
        db.write(wb)
    probe_s = time.perf_counter() - t0
    rss_now, peak_probe = _rss_mib()
    db.flush()
    split = sst_split(db, cards)
    db.close()
    on_disk = sum(p.stat().st_size for p in state_dir.rglob("*") if p.is_file())
    return {
        "store_cards": cards, "fill_s": round(fill_s, 1), "probe_txns": len(probes),
        "store_txn_per_s": round(len(probes) / probe_s) if probe_s else 0,
        "disk_bytes_total": on_disk, "disk_bytes_per_card": round(on_disk / cards, 1),
        "rss_after_fill_mib": round(rss_filled, 1), "peak_rss_fill_mib": round(peak_fill, 1),
        "rss_mib": round(rss_now, 1), "peak_rss_mib": round(peak_probe, 1),
        "card_ids": ids, **split,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=1_000_000, help="cards in the store")
    parser.add_argument("--real-cards", type=int, default=100_000,
                        help="simulated cards whose states are the templates")
    parser.add_argument("--txns-per-card", type=int, default=15,
                        help="simulated transactions per template card (mean)")
    parser.add_argument("--days", type=int, default=60, help="simulated days")
    parser.add_argument("--probe-txns", type=int, default=50_000,
                        help="transactions on random cards after the fill")
    parser.add_argument("--batch", type=int, default=256, help="probe batch size")
    parser.add_argument("--card-ids", choices=("token", "plain"), default="token",
                        help="card ids: PAN tokens (tok_<32 hex>, as in the stream) or c<j>")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(store_child(args.child, args.cards, args.batch, args.state_dir,
                                     args.card_ids)))
        return 0
    with tempfile.TemporaryDirectory(prefix="state-bench-") as tmp:
        work = Path(tmp)
        fixture = work / "templates.npz"
        out = templates(args.real_cards, args.txns_per_card, args.days, args.probe_txns, fixture)
        say(f"store: {args.cards:,} cards in a fresh process ...")
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(fixture), "--cards", str(args.cards),
             "--batch", str(args.batch), "--state-dir", str(work / "store"),
             "--card-ids", args.card_ids],
            stdout=subprocess.PIPE, text=True, check=True,
        )
        out.update(json.loads(child.stdout.strip().splitlines()[-1]))
    say(f"{args.cards:,} cards: peak RSS {out['peak_rss_mib']} MiB, "
        f"{out['disk_bytes_per_card']} B/card on disk, {out['store_txn_per_s']:,} tx/s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
