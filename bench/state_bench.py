"""State-path bench: µs per transaction by component, compile time, offline replay, disk and RSS.

    python bench/state_bench.py                      # components, before (Python classes)
                                                     # and after (state.kernel), batch 1/32/256
    python bench/state_bench.py --compile            # numba compile time, cold and cache-warm
    python bench/state_bench.py --replay-txns 1000000  # offline replay, classes vs kernel
    python bench/state_bench.py --cards 10000000     # bytes per card on disk and peak RSS
                                                     # (a fresh child process)

Data: the simulator (:func:`training.simulate.simulate`): realistic cards (1 to a few
hundred transactions, median ~12 over 60 days), merchants, currencies (amounts in
EUR through the code's rate table) and late fraud labels.

Components (``--batches``): the stream's second half in batches of B transactions
(and the labels between them), starting from the states its first half left: the
**card** path (decode each distinct card's stored bytes, card features + update per
transaction, encode each card) and the **merchant** path (the same with merchant
states, fraud labels applied between transactions). Before: ``state.card.CardState``
/ ``state.merchant.MerchantState`` (format 4). After: ``state.kernel`` (format 5),
including building its input columns from ``TxnInput`` values. Median of
``--repeat`` passes over the same batches, reported per transaction.

``--cards N``: a realistic population (``--real-cards`` simulated cards, about
``--txns-per-card`` each over ``--days``) is run through the kernel; its format-5
states are the templates. A fresh child process (imports state, numba, rocksdict;
no pandas) writes N cards holding copies of them into one RocksDB (the store's
options: lz4, zstd bottommost, shared block cache), flushes and compacts, then runs
``--probe-txns`` transactions on random cards of the full store through the real
path (multi-get, kernel, WriteBatch). Bytes per card = live SST size / N (card state
only: the stores' per-transaction records depend on traffic, not on cards).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from state.features import TxnInput  # noqa: E402

DAY_MS = 86_400_000


# --- data ----------------------------------------------------------------------------------
class Sim:
    """A simulated history as feature inputs in stream order, with fraud labels."""

    def __init__(self, txns: int, cards: int, days: int, seed: int) -> None:
        from topics.currency import default_rates
        from training.simulate import SimConfig, simulate

        df = simulate(SimConfig(n_transactions=txns, n_cards=cards, days=days, seed=seed))
        df = df.sort_values("event_time", kind="stable").reset_index(drop=True)
        rates = default_rates("EUR").per_reference
        billed = df["billing_amount"].notna().to_numpy() & df["billing_currency"].notna().to_numpy()
        amount = df["amount"].to_numpy(np.float64)
        rate = df["currency"].map(rates).to_numpy(np.float64)
        b_rate = df["billing_currency"].map(lambda c: rates.get(c, math.nan)).to_numpy(np.float64)
        b_amount = df["billing_amount"].to_numpy(np.float64)
        # topics.currency.reference_amount: billing amount when billed, else amount; / rate
        ref = np.where(billed, b_amount / np.where(billed, b_rate, 1.0), amount / rate)
        self.n = len(df)
        self.card = df["card_id"].astype("category").cat.codes.to_numpy(np.int64)
        self.n_cards = int(self.card.max()) + 1
        self.card_ids = [f"c{i:07d}" for i in range(self.n_cards)]
        self.merchant = df["merchant_id"].astype("category").cat.codes.to_numpy(np.int64)
        self.n_merchants = int(self.merchant.max()) + 1
        self.event_time = df["event_time"].to_numpy(np.int64)
        self.amount = ref
        self.fraud = df["is_fraud"].to_numpy(bool)
        self.label_time = df["label_time"].to_numpy(np.int64)
        cols = {c: df[c].tolist() for c in ("merchant_id", "country", "lat", "lon", "channel",
                                            "entry_mode")}
        self.inputs = [
            TxnInput(int(t), float(a), m, _opt(c), _optf(la), _optf(lo), _opt(ch), _opt(en))
            for t, a, m, c, la, lo, ch, en in zip(
                self.event_time.tolist(), ref.tolist(), cols["merchant_id"], cols["country"],
                cols["lat"], cols["lon"], cols["channel"], cols["entry_mode"], strict=True)
        ]


def _opt(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v is np.nan else v


def _optf(v: Any) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


# merchant-stage events: ("t", merchant, txn index) | ("f", merchant, label time)
#                        | ("a", merchant, txn time, label time, familiar)
MEvent = tuple[Any, ...]


def merchant_events(sim: Sim, familiar: np.ndarray, lo: int, hi: int) -> list[MEvent]:
    """Transactions ``lo:hi`` with the fraud labels that became known meanwhile, in time order.

    A label is applied like ``MerchantStore.apply_labels`` does for a scored transaction
    (``add_fraud`` then ``add_aligned_fraud``).
    """
    idx = np.flatnonzero(sim.fraud[:hi])
    idx = idx[(sim.label_time[idx] >= (sim.event_time[lo] if lo else -1))
              & (sim.label_time[idx] < sim.event_time[hi - 1])]
    labels = sorted((int(sim.label_time[i]), int(i)) for i in idx)
    out: list[MEvent] = []
    k = 0
    for i in range(lo, hi):
        t = int(sim.event_time[i])
        while k < len(labels) and labels[k][0] <= t:
            lt, j = labels[k]
            m = int(sim.merchant[j])
            out.append(("f", m, lt))
            out.append(("a", m, int(sim.event_time[j]), lt, bool(familiar[j])))
            k += 1
        out.append(("t", int(sim.merchant[i]), i))
    return out


def batches_of(events: Sequence[MEvent], size: int) -> list[list[MEvent]]:
    """Cut ``events`` after every ``size`` transactions."""
    out: list[list[MEvent]] = [[]]
    count = 0
    for e in events:
        out[-1].append(e)
        if e[0] == "t":
            count += 1
            if count == size:
                out.append([])
                count = 0
    return [b for b in out if b]


# --- components -------------------------------------------------------------------------------
Timer = Callable[[], dict[str, float]]


def _median_runs(run: Timer, repeat: int, txns: int) -> dict[str, float]:
    runs = [run() for _ in range(repeat)]
    out = {k: round(statistics.median(r[k] for r in runs) / txns / 1000.0, 3) for k in runs[0]}
    out["total"] = round(statistics.median(sum(r.values()) for r in runs) / txns / 1000.0, 3)
    return out


def card_components(sim: Sim, half: int, sizes: list[int], repeat: int) -> dict[str, Any]:
    """Card path µs per transaction, classes vs kernel, per batch size."""
    from state.card import CardState
    from state.features import card_step
    from state.kernel import CardKernel, card_columns

    kernel = CardKernel()
    start4: dict[int, bytes] = {}
    warm: dict[int, CardState] = {}
    for i in range(half):  # the classes' states after the first half (format 4)
        c = int(sim.card[i])
        card_step(warm.setdefault(c, CardState()), sim.inputs[i])
    start4 = {c: s.encode() for c, s in warm.items()}
    del warm
    ids = list(range(sim.n_cards))
    rows, states = kernel.run([None] * sim.n_cards, sim.card[:half], sim.inputs[:half])
    start5 = {c: s for c, s in zip(ids, states, strict=True) if s}
    test = list(range(half, sim.n))
    out: dict[str, Any] = {}
    for size in sizes:
        chunks = [test[i:i + size] for i in range(0, len(test), size)]
        if size == 1:
            chunks = chunks[:20_000]
        n = sum(len(c) for c in chunks)

        def before(chunks: list[list[int]] = chunks) -> dict[str, float]:
            stored = dict(start4)
            t = {"decode": 0, "features_update": 0, "encode": 0}
            for chunk in chunks:
                t0 = time.perf_counter_ns()
                cards = {}
                for i in chunk:
                    c = int(sim.card[i])
                    if c not in cards:
                        raw = stored.get(c)
                        cards[c] = CardState.decode(raw) if raw is not None else CardState()
                t1 = time.perf_counter_ns()
                rows = [card_step(cards[int(sim.card[i])], sim.inputs[i]) for i in chunk]
                np.asarray(rows, dtype=np.float32)
                t2 = time.perf_counter_ns()
                for c, s in cards.items():
                    stored[c] = s.encode()
                t3 = time.perf_counter_ns()
                t["decode"] += t1 - t0
                t["features_update"] += t2 - t1
                t["encode"] += t3 - t2
            return t

        def after(chunks: list[list[int]] = chunks) -> dict[str, float]:
            stored = dict(start5)
            t = {"columns": 0, "kernel": 0}
            for chunk in chunks:
                t0 = time.perf_counter_ns()
                slots: dict[int, int] = {}
                slot = [slots.setdefault(int(sim.card[i]), len(slots)) for i in chunk]
                cols = card_columns([sim.inputs[i] for i in chunk])
                prior = [stored.get(c) for c in slots]
                t1 = time.perf_counter_ns()
                _, new = kernel.step_batch(prior, slot, *cols)
                t2 = time.perf_counter_ns()
                stored.update(zip(slots, new, strict=True))
                t["columns"] += t1 - t0
                t["kernel"] += t2 - t1
            return t

        def codec_only(chunks: list[list[int]] = chunks) -> dict[str, float]:
            t = {"decode_encode": 0}
            empty = card_columns([])
            for chunk in chunks:
                prior = [start5.get(int(sim.card[i])) for i in dict.fromkeys(chunk)]
                t0 = time.perf_counter_ns()
                kernel.step_batch(prior, np.empty(0, np.int64), *empty)
                t["decode_encode"] += time.perf_counter_ns() - t0
            return t

        out[str(size)] = {"txns": n, "before": _median_runs(before, repeat, n),
                          "after": _median_runs(after, repeat, n),
                          "after_codec_only": _median_runs(codec_only, repeat, n)}
        say(f"card batch {size}: before {out[str(size)]['before']['total']} µs/txn, after "
            f"{out[str(size)]['after']['total']} µs/txn")
    return out


def merchant_components(sim: Sim, half: int, sizes: list[int], repeat: int) -> dict[str, Any]:
    """Merchant path µs per transaction (labels applied between transactions)."""
    from state.features import merchant_step
    from state.kernel import CardKernel, MerchantEvents, MerchantKernel
    from state.merchant import MerchantState
    from state.spec import INDEX

    rows, _ = CardKernel().run([None] * sim.n_cards, sim.card, sim.inputs, encode=False)
    familiar = rows[:, INDEX["card_new_merchant_30d"]] == 0.0
    kernel = MerchantKernel()
    warm_events = merchant_events(sim, familiar, 0, half)
    warm: dict[int, MerchantState] = {}
    for e in warm_events:
        m = warm.setdefault(e[1], MerchantState())
        if e[0] == "t":
            merchant_step(m, sim.inputs[e[2]])
        elif e[0] == "f":
            m.add_fraud(e[2])
        else:
            m.add_aligned_fraud(e[2], e[3], e[4])
    start4 = {m: s.encode() for m, s in warm.items()}
    del warm
    events = MerchantEvents()
    for e in warm_events:
        _add_event(events, e, e[1], sim)
    _, states = kernel.run([None] * sim.n_merchants, events)
    start5 = {m: s for m, s in enumerate(states) if s}
    test = merchant_events(sim, familiar, half, sim.n)
    out: dict[str, Any] = {}
    for size in sizes:
        chunks = batches_of(test, size)
        if size == 1:
            chunks = chunks[:20_000]
        n = sum(1 for c in chunks for e in c if e[0] == "t")

        def before(chunks: list[list[MEvent]] = chunks) -> dict[str, float]:
            stored = dict(start4)
            t = {"decode": 0, "features_update": 0, "encode": 0}
            for chunk in chunks:
                t0 = time.perf_counter_ns()
                merchants = {}
                for e in chunk:
                    if e[1] not in merchants:
                        raw = stored.get(e[1])
                        merchants[e[1]] = (MerchantState.decode(raw) if raw is not None
                                           else MerchantState())
                t1 = time.perf_counter_ns()
                rows = []
                for e in chunk:
                    m = merchants[e[1]]
                    if e[0] == "t":
                        rows.append(merchant_step(m, sim.inputs[e[2]]))
                    elif e[0] == "f":
                        m.add_fraud(e[2])
                    else:
                        m.add_aligned_fraud(e[2], e[3], e[4])
                np.asarray(rows, dtype=np.float32)
                t2 = time.perf_counter_ns()
                for key, s in merchants.items():
                    stored[key] = s.encode()
                t3 = time.perf_counter_ns()
                t["decode"] += t1 - t0
                t["features_update"] += t2 - t1
                t["encode"] += t3 - t2
            return t

        def after(chunks: list[list[MEvent]] = chunks) -> dict[str, float]:
            stored = dict(start5)
            t = {"columns": 0, "kernel": 0}
            for chunk in chunks:
                t0 = time.perf_counter_ns()
                slots: dict[int, int] = {}
                ev = MerchantEvents()
                for e in chunk:
                    _add_event(ev, e, slots.setdefault(e[1], len(slots)), sim)
                prior = [stored.get(m) for m in slots]
                t1 = time.perf_counter_ns()
                _, new = kernel.run(prior, ev)
                t2 = time.perf_counter_ns()
                stored.update(zip(slots, new, strict=True))
                t["columns"] += t1 - t0
                t["kernel"] += t2 - t1
            return t

        out[str(size)] = {"txns": n, "before": _median_runs(before, repeat, n),
                          "after": _median_runs(after, repeat, n)}
        say(f"merchant batch {size}: before {out[str(size)]['before']['total']} µs/txn, after "
            f"{out[str(size)]['after']['total']} µs/txn")
    return out


def _add_event(events: Any, e: MEvent, slot: int, sim: Sim) -> None:
    if e[0] == "t":
        events.txn(slot, sim.inputs[e[2]])
    elif e[0] == "f":
        events.fraud(slot, e[2])
    else:
        events.aligned(slot, e[2], e[3], e[4])


# --- compile time ----------------------------------------------------------------------------
_COMPILE_PROBE = (
    "import time; t0 = time.perf_counter(); import state.kernel as k; t1 = time.perf_counter();"
    " k.warm(); t2 = time.perf_counter(); print(round(t1 - t0, 3), round(t2 - t1, 3))"
)


def compile_times(repeat: int) -> dict[str, Any]:
    """Fresh processes: import + first batch, with an empty numba cache and a warm one."""
    def run(env: dict[str, str]) -> tuple[float, float]:
        out = subprocess.run([sys.executable, "-c", _COMPILE_PROBE], env=env, cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
        return float(out[0]), float(out[1])

    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        cold = run(env)
        warm = [run(env) for _ in range(repeat)]
    say(f"compile: cold {cold[1]} s, warm {statistics.median(w[1] for w in warm)} s")
    return {"cold_import_s": cold[0], "cold_first_batch_s": cold[1],
            "warm_import_s": statistics.median(w[0] for w in warm),
            "warm_first_batch_s": statistics.median(w[1] for w in warm), "warm_runs": warm}


# --- offline replay --------------------------------------------------------------------------
def replay_times(n: int, repeat: int) -> dict[str, Any]:
    """``state.replay.replay_matrix`` (classes) vs ``state.kernel.replay.replay_matrix``."""
    from state.kernel.replay import replay_matrix as kernel_replay
    from state.replay import replay_matrix
    from training.history import events
    from training.simulate import SimConfig, simulated_history

    history = simulated_history(SimConfig(n_transactions=int(n * 1.02) + 1000,
                                          n_cards=max(1000, n // 50), days=90, seed=5))
    stream = list(events(history))
    txns = [e for e in stream if hasattr(e, "amount")][:n]
    last = txns[-1].event_time
    stream = [e for e in stream if getattr(e, "event_time", getattr(e, "label_time", 0)) <= last]
    kernel_s, classes_s = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        _, got = kernel_replay(stream)
        kernel_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    _, want = replay_matrix(stream)
    classes_s.append(time.perf_counter() - t0)
    same = bool(np.array_equal(got.view(np.uint32), want.view(np.uint32)))
    out = {"transactions": len(got), "events": len(stream),
           "classes_s": round(statistics.median(classes_s), 2),
           "kernel_s": round(statistics.median(kernel_s), 2), "kernel_runs_s": kernel_s,
           "bit_identical": same}
    say(f"replay {len(got):,} txns: classes {out['classes_s']} s, kernel {out['kernel_s']} s, "
        f"identical {same}")
    return out


# --- disk and RSS -----------------------------------------------------------------------------
def templates(real_cards: int, txns_per_card: int, days: int, path: Path,
              probe: int, state_format: int = 5) -> dict[str, Any]:
    """Simulate cards, run them through the kernel, save their states and probe inputs.

    ``state_format`` 4: the stored states are the classes' (for a before figure; no probe).
    """
    from state.kernel import CardKernel, card_columns

    sim = Sim(real_cards * txns_per_card, real_cards, days, seed=9)
    _, states = CardKernel().run([None] * sim.n_cards, sim.card, sim.inputs)
    kept = [s for s in states if s]
    if state_format == 4:
        from state.card import CardState
        from state.features import card_step

        classes: dict[int, CardState] = {}
        for i in range(sim.n):
            card_step(classes.setdefault(int(sim.card[i]), CardState()), sim.inputs[i])
        kept = [s.encode() for s in classes.values()]
        probe = 0
    per_card = np.bincount(sim.card, minlength=sim.n_cards)
    sizes = np.array([len(s) for s in states])
    rng = np.random.default_rng(1)
    pick = rng.integers(0, sim.n, probe) if probe else np.empty(0, np.int64)
    cols = card_columns([sim.inputs[i] for i in pick])
    # probes follow the history: within the day after its end, in time order
    after = np.sort(int(sim.event_time.max()) + rng.integers(0, DAY_MS, probe))
    np.savez(path, states=np.frombuffer(b"".join(kept), np.uint8),
             lengths=np.array([len(s) for s in kept]), event_time=after,
             amount=cols.amount, merchant=cols.merchant, country=cols.country, lat=cols.lat,
             lon=cols.lon)
    format4 = _format4_sample(sim, states, 3000)
    buckets = [(1, 1), (2, 5), (6, 20), (21, 50), (51, 100), (101, 10**9)]
    by_txns = {}
    for lo, hi in buckets:
        sel = (per_card >= lo) & (per_card <= hi)
        if sel.any():
            by_txns[f"{lo}-{hi if hi < 10**9 else 'more'}"] = {
                "cards": int(sel.sum()), "mean_state_bytes": round(float(sizes[sel].mean()), 1)}
    return {"state_format": state_format, "simulated_cards": len(kept),
            "simulated_txns": sim.n, "days": days,
            "txns_per_card_median": float(np.median(per_card[per_card > 0])),
            "txns_per_card_max": int(per_card.max()),
            "mean_state_bytes": round(float(sizes[sizes > 0].mean()), 1),
            "state_bytes_by_txns_per_card": by_txns, **format4}


def _format4_sample(sim: Sim, states: list[bytes], cards: int) -> dict[str, float]:
    """Mean state bytes of the first ``cards`` cards, format 4 (the classes) vs format 5."""
    from state.card import CardState
    from state.features import card_step

    kept: dict[int, CardState] = {}
    for i in np.flatnonzero(sim.card < cards).tolist():
        card_step(kept.setdefault(int(sim.card[i]), CardState()), sim.inputs[i])
    four = [len(s.encode()) for s in kept.values()]
    five = [len(states[c]) for c in kept]
    return {"sample_cards": len(four), "sample_format4_mean_bytes": round(float(np.mean(four)), 1),
            "sample_format5_mean_bytes": round(float(np.mean(five)), 1)}


def _rss_mib() -> tuple[float, float]:
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            status[line.split(":")[0]] = int(line.split()[1]) / 1024
    return status.get("VmRSS", 0.0), status.get("VmHWM", 0.0)


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def store_child(path: Path, cards: int, batch: int, state_dir: Path) -> dict[str, Any]:
    """The fresh process: fill RocksDB with ``cards`` states, compact, probe; measure."""
    import rocksdict

    from state import keys
    from state.kernel import CardKernel, warm
    from state.options import StoreOptions

    warm()
    data = np.load(path)
    blob = data["states"].tobytes()
    ends = np.cumsum(data["lengths"]).tolist()
    states = [blob[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    del blob
    options = StoreOptions()
    db = rocksdict.Rdict(str(state_dir), options.rocksdb())
    t0 = time.perf_counter()
    for start in range(0, cards, 100_000):
        wb = rocksdict.WriteBatch(raw_mode=True)
        for j in range(start, min(cards, start + 100_000)):
            wb.put(keys.card_key(f"c{j:09d}"), states[j % len(states)])
        db.write(wb)
    fill_s = time.perf_counter() - t0
    db.flush()
    db.compact_range(None, None)
    sst = db.property_int_value("rocksdb.total-sst-files-size") or 0
    del states
    rss_filled, peak_fill = _rss_mib()
    _reset_peak()
    kernel = CardKernel()
    rng = np.random.default_rng(2)
    n = len(data["amount"])
    cols = [data[k] for k in ("event_time", "amount", "merchant", "country", "lat", "lon")]
    t0 = time.perf_counter()
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        ids = [keys.card_key(f"c{j:09d}") for j in rng.integers(0, cards, hi - lo).tolist()]
        uniq = list(dict.fromkeys(ids))
        where = {k: s for s, k in enumerate(uniq)}
        prior = db.get(uniq)
        _, new = kernel.step_batch(prior, [where[k] for k in ids], *(c[lo:hi] for c in cols))
        wb = rocksdict.WriteBatch(raw_mode=True)
        for k, v in zip(uniq, new, strict=True):
            wb.put(k, v)
        db.write(wb)
    probe_s = time.perf_counter() - t0
    rss_now, peak_probe = _rss_mib()
    db.flush()
    db.close()
    on_disk = sum(p.stat().st_size for p in state_dir.rglob("*") if p.is_file())
    return {
        "store_cards": cards, "real_cards": int(len(data["lengths"])),
        "fill_s": round(fill_s, 1), "probe_txns": n,
        "store_txn_per_s": round(n / probe_s) if probe_s else 0,
        "sst_bytes_per_card": round(sst / cards, 1),
        "disk_bytes_total": on_disk, "disk_bytes_per_card": round(on_disk / cards, 1),
        "rss_after_fill_mib": round(rss_filled, 1), "peak_rss_fill_mib": round(peak_fill, 1),
        "rss_mib": round(rss_now, 1), "peak_rss_mib": round(peak_probe, 1),
    }


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--txns", type=int, default=300_000,
                        help="simulated transactions of the components bench")
    parser.add_argument("--sim-cards", type=int, default=20_000,
                        help="simulated cards of the components bench")
    parser.add_argument("--batches", default="1,32,256", help="batch sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="passes per measurement (median)")
    parser.add_argument("--skip-components", action="store_true")
    parser.add_argument("--compile", action="store_true", help="measure numba compile times")
    parser.add_argument("--replay-txns", type=int, default=0,
                        help="time an offline replay of this many transactions (0: skip)")
    parser.add_argument("--cards", type=int, default=0,
                        help="cards held in RocksDB for bytes/card and RSS (0: skip)")
    parser.add_argument("--real-cards", type=int, default=100_000,
                        help="simulated cards whose states the --cards store copies")
    parser.add_argument("--txns-per-card", type=int, default=15,
                        help="mean simulated transactions per card (over --days)")
    parser.add_argument("--days", type=int, default=60, help="simulated days")
    parser.add_argument("--probe-txns", type=int, default=100_000,
                        help="real-path transactions on random cards of the full store")
    parser.add_argument("--batch", type=int, default=256, help="probe batch size")
    parser.add_argument("--state-format", type=int, choices=(4, 5), default=5,
                        help="4: store the classes' states instead (bytes/card before; no probe)")
    parser.add_argument("--state-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.batches.split(",") if x]
    except ValueError:
        parser.error("--batches takes comma-separated integers, e.g. 1,32,256")
    if args.child is not None:  # the fresh process of --cards
        print(json.dumps(store_child(args.child, args.cards, args.batch, args.state_dir)))
        return 0
    result: dict[str, Any] = {"load_average": os.getloadavg()}
    from state.kernel import warm

    warm()
    if args.cards:
        result["memory"] = run_store(args)
        print(json.dumps(result["memory"], indent=2))
        return 0
    if not args.skip_components:
        sim = Sim(args.txns, args.sim_cards, args.days, seed=3)
        half = sim.n // 2
        result["cards"] = card_components(sim, half, sizes, args.repeat)
        result["merchants"] = merchant_components(sim, half, sizes, args.repeat)
    if args.compile:
        result["compile"] = compile_times(args.repeat)
    if args.replay_txns:
        result["replay"] = replay_times(args.replay_txns, 1)
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    return 0


def run_store(args: argparse.Namespace) -> dict[str, Any]:
    """--cards: templates here, the store in a fresh child process."""
    work = Path(tempfile.mkdtemp(prefix="state-bench-"))
    try:
        path = work / "templates.npz"
        t0 = time.perf_counter()
        info = templates(args.real_cards, args.txns_per_card, args.days, path, args.probe_txns,
                         args.state_format)
        say(f"templates: {info['simulated_cards']:,} cards, {info['mean_state_bytes']} B/card "
            f"encoded, {time.perf_counter() - t0:.0f} s")
        state_dir = args.state_dir or work / "db"
        cmd = [sys.executable, __file__, "--child", str(path), "--cards", str(args.cards),
               "--batch", str(args.batch), "--state-dir", str(state_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            raise SystemExit(f"state_bench child failed ({proc.returncode}): {proc.stderr[-2000:]}")
        child = json.loads(proc.stdout[proc.stdout.index("{"):])
        say(f"{args.cards:,} cards: {child['sst_bytes_per_card']} B/card SST, peak RSS "
            f"{child['peak_rss_mib']} MiB")
        return {**info, **child, "txns_per_card": args.txns_per_card}
    finally:
        if args.state_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    random.seed(0)
    raise SystemExit(main())
