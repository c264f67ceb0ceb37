"""The fraud-scoring job written as a Quix Streams application, for ``bench/quix/compare.py``.

    .venv-quix/bin/python bench/quix/app.py --broker HOST:PORT --input TOPIC --output TOPIC \\
        --model models/current --state-dir DIR --group GROUP --mode batched|per-message

What a Python team would write with Quix Streams' recommended patterns, for the
job our Bytewax flow does (``flows/score.py``):

1. ``transactions`` (our JSON contract, key: card id) into a ``StreamingDataFrame``;
2. a stateful ``apply`` keyed by card: the 23 card features of the model (feature
   spec v2, ``state/spec.py``) from bucketed event-time windows kept as one JSON value
   per card in Quix's RocksDB state (one ``get`` and one ``set`` per transaction;
   every change also goes to Quix's changelog topic, its default);
3. ``sdf.group_by("merchant_id")``: Quix repartitions through an internal topic so one
   consumer owns each merchant; a stateful ``apply`` keeps the merchant counts over
   1, 7 and 30 days (1-hour, 6-hour and 1-day buckets, closed two buckets before the
   transaction's own, as ours). The merchant label features
   (fraud rates, aligned risk, familiar fraud) are 0: the benchmark publishes no
   labels, so our flow computes 0 for them too;
4. the 8 context features, then the ONNX model (the same file, read with
   onnxruntime, one intra-op thread as ``export/model.py``) and its thresholds from
   the model's metadata; one verdict (JSON, key: transaction id) per transaction to
   ``--output``, its record timestamp the moment it was scored.

Scoring, two variants (``--mode``):

- ``per-message``: one ``InferenceSession.run`` per message, a plain ``apply``;
- ``batched``: an ``apply(..., expand=True)`` keeps the feature rows in a buffer and
  runs the model once per ``--batch-size`` messages (default 256), or on the first
  message that arrives ``--max-wait-ms`` (100) after the buffer's oldest, emitting
  the buffered verdicts as several messages. Quix hands an application one message
  per poll and has no per-poll or timer hook for a ``StreamingDataFrame``, so this is
  how batching is written in Quix; the last messages of a quiet stream stay in the
  buffer until the next message arrives (at most ``--batch-size`` - 1 of them), and a
  checkpoint may commit the offsets of buffered messages before their verdicts
  are produced (a crash can lose those verdicts).

Features are computed the way ``state/reference/card.py`` does, approximately: the same
windows and buckets, exact distinct merchants and countries, but JSON values instead
of a fixed binary layout, no late-event handling beyond "the window ends at the newest
event time seen", and no validation, dead letters, reason codes, rules or drift.
Runs in ``.venv-quix`` (``bench/quix/requirements.txt``) and imports nothing of ours; the
feature functions import without quixstreams, and ``tests/unit/test_quix_bench.py`` checks
them against our offline replay (``state/replay.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:  # imported when the app runs (main), so the features load without Quix
    from quixstreams import Application, State

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
#: Card windows: name -> (bucket ms, buckets). Rows are [bucket, count, sum, extra]:
#: extra is the small-amount count (m1), the zero-amount count (m15), 0 (h6), the sum of
#: squares (d1).
CARD_WINDOWS = {"m1": (MINUTE, 60), "m15": (15 * MINUTE, 96), "h6": (6 * HOUR, 28),
                "d1": (DAY, 30)}
#: Merchant windows: 1 d in 1-h buckets, 7 d in 6-h buckets, 30 d in 1-day buckets.
MERCHANT_WINDOWS = {"h1": (HOUR, 24), "h6": (6 * HOUR, 28), "d1": (DAY, 30)}
#: A merchant window ends this many buckets before the transaction's own; buckets are kept
#: this many more for late transactions.
MERCHANT_GAP, MERCHANT_LATENESS = 2, 2
IDLE_EVICT_MS = 31 * DAY
NO_HISTORY_SECONDS = 2_592_000.0
SMALL_AMOUNT = 5.0
MAX_MERCHANTS, MAX_COUNTRIES = 64, 16
N_MERCHANT_LABEL_FEATURES = 9
CHANNELS = {"pos": 1.0, "ecom": 2.0, "atm": 3.0, "moto": 4.0}
ENTRY_MODES = {"chip": 1.0, "contactless": 2.0, "swipe": 3.0, "manual": 4.0, "ecom": 5.0}
EARTH_KM = 6371.0088


class Model:
    """The ONNX model and what its metadata says: feature names, thresholds, rates."""

    def __init__(self, path: Path) -> None:
        file = path / "model.onnx" if path.is_dir() else path
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.input = meta.get("fraudstream.input_name", "features")
        self.output = meta.get("fraudstream.output_name", "probabilities")
        self.version = meta["fraudstream.model_version"]
        self.spec_version = meta["fraudstream.feature_spec_version"]
        self.n_features = len(json.loads(meta["fraudstream.feature_names"]))
        thresholds = json.loads(meta["fraudstream.thresholds"])
        self.decline, self.review = thresholds["decline"], thresholds["review"]
        rates = json.loads(meta["fraudstream.feature_context"])["rate_table"]
        self.reference, self.rates = rates["reference"], rates["per_reference"]

    def scores(self, rows: list[list[float]]) -> list[float]:
        """Fraud probability of each feature row."""
        x = np.asarray(rows, dtype=np.float32)
        out = self.session.run([self.output], {self.input: x})[0]
        return [float(p) for p in out[:, 1]]

    def decision(self, score: float) -> str:
        """decline / review / approve by the model's thresholds."""
        return ("decline" if score >= self.decline else
                "review" if score >= self.review else "approve")

    def reference_amount(self, txn: dict[str, Any]) -> float:
        """Amount in the reference currency (billing amount first, as topics/currency.py)."""
        billed, currency = txn.get("billing_amount"), txn.get("billing_currency")
        if billed is not None and currency is not None:
            if currency == self.reference:
                return float(billed)
            if currency in self.rates:
                return float(billed) / self.rates[currency]
        rate = self.rates.get(txn["currency"])
        if rate is not None:
            return float(txn["amount"]) / rate
        return 0.0


def _sums(rows: list[list[float]], lo: int) -> tuple[float, float, float]:
    """count, sum and extra over the rows of buckets >= ``lo``."""
    n = s = x = 0.0
    for row in rows:
        if row[0] >= lo:
            n += row[1]
            s += row[2]
            x += row[3]
    return n, s, x


def _add(rows: list[list[float]], bucket_ms: int, buckets: int, t: int, ref: int,
         amount: float, extra: float, lo: int | None = None) -> list[list[float]]:
    """``rows`` with the event added to its bucket and buckets before ``lo`` dropped.

    ``lo`` defaults to the first bucket of the window of ``buckets`` ending at ``ref``.
    """
    if lo is None:
        lo = ref // bucket_ms - buckets + 1
    b = t // bucket_ms
    kept = [row for row in rows if row[0] >= lo]
    if b >= lo:
        for row in kept:
            if row[0] == b:
                row[1] += 1
                row[2] += amount
                row[3] += extra
                break
        else:
            kept.append([b, 1, amount, extra])
    return kept


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


def _new_card() -> dict[str, Any]:
    return {"t": None, "m1": [], "m15": [], "h6": [], "d1": [], "merchants": {},
            "countries": {}, "home": {}, "loc": None, "country": None}


def card_features(card: dict[str, Any], txn: dict[str, Any], amount: float) -> list[float]:
    """The 23 card features of spec v2, in order, as of just before ``txn``."""
    t, last = txn["event_time"], card["t"]
    ref = t if last is None or t > last else last
    m1, m15, h6, d1 = (card[name] for name in CARD_WINDOWS)
    n10, _, small10 = _sums(m1, ref // MINUTE - 9)
    n1h, sum1h, _ = _sums(m1, ref // MINUTE - 59)
    n24, sum24, zero24 = _sums(m15, ref // (15 * MINUTE) - 95)
    n7, sum7, _ = _sums(h6, ref // (6 * HOUR) - 27)
    n30, sum30, sq30 = _sums(d1, ref // DAY - 29)
    mean24 = sum24 / n24 if n24 else 0.0
    mean7 = sum7 / n7 if n7 else 0.0
    mean30 = sum30 / n30 if n30 else 0.0
    var30 = sq30 / n30 - mean30 * mean30 if n30 else 0.0
    std30 = math.sqrt(var30) if var30 > 1e-12 * max(1.0, mean30 * mean30) else 0.0
    ratio = amount / mean30 if mean30 > 0 else (1.0 + amount if n30 else 1.0)
    zscore = (amount - mean30) / std30 if std30 else 0.0
    since = NO_HISTORY_SECONDS if last is None else max(0, t - last) / 1000.0
    merchants, countries = card["merchants"], card["countries"]
    m1h = sum(1 for seen in merchants.values() if seen > ref - HOUR)
    m24h = sum(1 for seen in merchants.values() if seen > ref - DAY)
    c24h = sum(1 for seen in countries.values() if seen > ref - DAY)
    new_merchant = 1.0 if merchants.get(txn["merchant_id"], -1) <= ref - 30 * DAY else 0.0
    speed = 0.0
    lat, lon = txn.get("lat"), txn.get("lon")
    if lat is not None and lon is not None and card["loc"] is not None:
        seen, lat0, lon0 = card["loc"]
        hours = max(abs(t - seen) / HOUR, 1 / 60)
        speed = _haversine_km(lat0, lon0, lat, lon) / hours
    changed = cross = 0.0
    country = txn.get("country")
    if country is not None:
        changed = 1.0 if card["country"] not in (None, country) else 0.0
        counts = card["home"]  # most frequent country so far (ties: the smallest)
        home = min(counts, key=lambda c: (-counts[c], c)) if counts else None
        cross = 1.0 if home not in (None, country) else 0.0
    return [n10, n1h, n24, n7, n30, sum1h, sum24, mean24, mean7, mean30, std30, ratio,
            zscore, since, float(m1h), float(m24h), float(c24h), new_merchant, small10, speed,
            changed, cross, zero24]


def card_update(card: dict[str, Any], txn: dict[str, Any], amount: float) -> None:
    """Add ``txn`` to the card's state."""
    t = txn["event_time"]
    if card["t"] is None or t > card["t"]:
        card["t"] = t
    ref = card["t"]
    extras = {"m1": 1.0 if amount < SMALL_AMOUNT else 0.0, "m15": 1.0 if amount == 0 else 0.0,
              "h6": 0.0, "d1": amount * amount}
    for name, (bucket_ms, buckets) in CARD_WINDOWS.items():
        card[name] = _add(card[name], bucket_ms, buckets, t, ref, amount, extras[name])
    card["merchants"] = _last_seen(card["merchants"], txn["merchant_id"], t, ref - 30 * DAY,
                                   MAX_MERCHANTS)
    country = txn.get("country")
    if country is not None:
        card["countries"] = _last_seen(card["countries"], country, t, ref - DAY, MAX_COUNTRIES)
        card["home"][country] = card["home"].get(country, 0) + 1
        card["country"] = country
    if txn.get("lat") is not None and txn.get("lon") is not None:
        card["loc"] = [t, txn["lat"], txn["lon"]]


def _last_seen(seen: dict[str, int], value: str, t: int, horizon: int,
               cap: int) -> dict[str, int]:
    seen[value] = max(t, seen.get(value, t))
    kept = {k: v for k, v in seen.items() if v > horizon}
    if len(kept) > cap:
        kept = dict(sorted(kept.items(), key=lambda kv: kv[1])[-cap:])
    return kept


def merchant_features(merchant: dict[str, Any], t: int) -> list[float]:
    """merchant_count_1d, _7d, _30d of a transaction at ``t``: anchored, closed windows.

    As ``state/reference/merchant.py``: the buckets ending :data:`MERCHANT_GAP` buckets
    before the transaction's own, so the order the partitions arrive in does not matter.
    """
    counts = []
    for name, (bucket_ms, buckets) in MERCHANT_WINDOWS.items():
        hi = t // bucket_ms - MERCHANT_GAP
        counts.append(sum(row[1] for row in merchant[name] if hi - buckets < row[0] <= hi))
    return counts


def merchant_update(merchant: dict[str, Any], t: int) -> None:
    """Count a transaction at ``t``; drop buckets no window can read any more."""
    if merchant["t"] is None or t > merchant["t"]:
        merchant["t"] = t
    for name, (bucket_ms, buckets) in MERCHANT_WINDOWS.items():
        lo = merchant["t"] // bucket_ms - MERCHANT_GAP - buckets - MERCHANT_LATENESS
        merchant[name] = _add(merchant[name], bucket_ms, 0, t, 0, 0.0, 0.0, lo=lo)


def card_step(card: dict[str, Any] | None, txn: dict[str, Any],
              amount: float) -> tuple[dict[str, Any], list[float]]:
    """The card's features for ``txn`` and its state after it (new state for ``None``)."""
    if card is None or (card["t"] is not None
                        and txn["event_time"] - card["t"] > IDLE_EVICT_MS):
        card = _new_card()
    features = card_features(card, txn, amount)
    card_update(card, txn, amount)
    return card, features


def merchant_step(merchant: dict[str, Any] | None, txn: dict[str, Any],
                  amount: float) -> tuple[dict[str, Any], list[float]]:
    """The merchant, label and context features of ``txn``, and the merchant's state after."""
    if merchant is None:
        merchant = {"t": None, **{name: [] for name in MERCHANT_WINDOWS}}
    t = txn["event_time"]
    features = merchant_features(merchant, t)
    features += [0.0] * N_MERCHANT_LABEL_FEATURES  # no labels in the benchmark
    features += context_features(txn, amount)
    merchant_update(merchant, t)
    return merchant, features


def context_features(txn: dict[str, Any], amount: float) -> list[float]:
    """amount, log_amount, hour, day of week, weekend, night, channel, entry mode."""
    t = txn["event_time"]
    hour = (t // HOUR) % 24
    dow = (t // DAY + 3) % 7  # 1970-01-01 was a Thursday
    return [amount, math.log1p(amount), float(hour), float(dow), 1.0 if dow >= 5 else 0.0,
            1.0 if hour < 6 else 0.0, CHANNELS.get(txn.get("channel") or "", 0.0),
            ENTRY_MODES.get(txn.get("entry_mode") or "", 0.0)]


def build(app: Application, model: Model, args: argparse.Namespace) -> None:
    """The dataframe: card state, group_by merchant, merchant state, ONNX, verdicts topic."""
    transactions = app.topic(args.input, value_deserializer="json", key_deserializer="str")
    verdicts = app.topic(args.output, value_serializer="json", key_serializer="str")

    def with_card_features(txn: dict[str, Any], state: State) -> dict[str, Any]:
        amount = model.reference_amount(txn)
        card, txn["features"] = card_step(state.get("card"), txn, amount)
        state.set("card", card)
        txn["amount_reference"] = amount
        return txn

    def with_merchant_features(txn: dict[str, Any], state: State) -> dict[str, Any]:
        merchant, features = merchant_step(state.get("merchant"), txn, txn["amount_reference"])
        state.set("merchant", merchant)
        txn["features"] += features
        return txn

    def verdict(txn: dict[str, Any], score: float) -> dict[str, Any]:
        return {"transaction_id": txn["transaction_id"], "card_id": txn["card_id"],
                "event_time": txn["event_time"], "score": score,
                "decision": model.decision(score), "model_version": model.version,
                "feature_spec_version": model.spec_version,
                "scored_time": int(time.time() * 1000),
                "amount_reference": txn["amount_reference"],
                "reference_currency": model.reference, "schema_version": 3}

    def score_one(txn: dict[str, Any]) -> dict[str, Any]:
        return verdict(txn, model.scores([txn["features"]])[0])

    buffer: list[dict[str, Any]] = []
    oldest = [0.0]

    def score_batched(txn: dict[str, Any]) -> list[dict[str, Any]]:
        now = time.monotonic()
        if not buffer:
            oldest[0] = now
        buffer.append(txn)
        if len(buffer) < args.batch_size and (now - oldest[0]) * 1000 < args.max_wait_ms:
            return []
        scores = model.scores([b["features"] for b in buffer])
        out = [verdict(b, s) for b, s in zip(buffer, scores, strict=True)]
        buffer.clear()
        return out

    sdf = app.dataframe(transactions)
    sdf = sdf.apply(with_card_features, stateful=True)
    sdf = sdf.group_by("merchant_id")
    sdf = sdf.apply(with_merchant_features, stateful=True)
    sdf = (sdf.apply(score_batched, expand=True) if args.mode == "batched"
           else sdf.apply(score_one))
    # Quix produces with the input record's timestamp; a verdict's is when it was scored
    # (as our flow's, whose producer stamps the time of produce).
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: value["scored_time"])
    sdf.to_topic(verdicts, key=lambda v: v["transaction_id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/quix/app.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True, help="bootstrap servers, host:port")
    parser.add_argument("--input", required=True, help="transactions topic")
    parser.add_argument("--output", required=True, help="verdicts topic")
    parser.add_argument("--model", type=Path, required=True, help="model dir or .onnx file")
    parser.add_argument("--state-dir", type=Path, required=True, help="Quix state directory")
    parser.add_argument("--group", required=True, help="consumer group (fresh per run)")
    parser.add_argument("--mode", choices=("batched", "per-message"), default="batched")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="batched: rows per ONNX call (default 256)")
    parser.add_argument("--max-wait-ms", type=float, default=100.0,
                        help="batched: score the buffer on the first message this long after "
                             "its oldest (default 100)")
    parser.add_argument("--session-timeout-ms", type=int, default=6000,
                        help="consumer session.timeout.ms (default 6000: a group join on the "
                             "embedded broker takes about half of it)")
    args = parser.parse_args(argv)
    from quixstreams import Application

    model = Model(args.model)
    app = Application(
        broker_address=args.broker,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
        consumer_extra_config={"session.timeout.ms": args.session_timeout_ms,
                               "heartbeat.interval.ms": max(100, args.session_timeout_ms // 6)},
    )
    build(app, model, args)
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
