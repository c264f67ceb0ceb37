"""Per-card behavioural state: event-time windows, distinct counters, last location.

Bucket granularity (part of the feature spec): 10 min and 1 h windows use
1-minute buckets (10-min figures are the newest 10 buckets of the 1-h window),
24 h uses 15-minute buckets, 7 d uses 6-hour buckets and
30 d uses UTC-day buckets. A window of n buckets ending at bucket B holds the
events of buckets B-n+1..B, where B is the bucket of the newest event time the
card has seen (see :mod:`state.windows` for late events). Distinct merchants
and countries are exact in event time (latest time per value, at most 64
merchants / 16 countries per card). "Previous" location and country are those
of the card's newest located / country-bearing transaction. A card idle for
more than :data:`IDLE_EVICT_MS` starts again from empty state, in memory and on
disk alike (so a swept card and a stale one give the same features).

Amounts are reference-currency amounts (:class:`~state.features.TxnInput`), so a
card paying in several currencies has one consistent history. An unrated
transaction (amount NaN: no rate, issue 23) counts in every window's count but adds
no amount: the amount means divide by the windows' ``rated`` counts; its own ratio
and z-score are the spec neutrals 1 and 0. Zero-value
authorisations count in every window like any transaction; they are also counted
on their own over 24 h (15-minute buckets), the card-testing signal.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from state.inputs import country_code, stable_hash
from state.reference.codec import Layout, Part
from state.reference.windows import NO_TIME, BucketWindow, CountWindow, LastSeen, TopCounts
from state.units import DAY_MS, HOUR_MS, MINUTE_MS

if TYPE_CHECKING:
    from state.inputs import TxnInput

LONGEST_WINDOW_MS = 30 * DAY_MS
#: Idle time after which a key's state is dropped: the longest window plus one bucket.
IDLE_EVICT_MS = LONGEST_WINDOW_MS + DAY_MS
SMALL_AMOUNT = 5.0
TEN_MINUTE_BUCKETS = 10
NO_HISTORY_SECONDS = 2_592_000.0
_MIN_TRAVEL_HOURS = 1.0 / 60.0
_EARTH_KM = 6371.0088
_VAR_EPS = 1e-12


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * _EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


class CardState:
    """Everything kept per card: ``features`` reads before a transaction, ``update`` adds it."""

    __slots__ = (
        "last_time", "w1h", "w24h", "w7d", "w30d", "merchants", "countries", "home",
        "loc_time", "lat", "lon", "ctry_time", "ctry", "zero24h",
    )

    def __init__(self) -> None:
        self.last_time = NO_TIME
        self.w1h = BucketWindow(MINUTE_MS, 60)
        self.w24h = BucketWindow(15 * MINUTE_MS, 96)
        self.w7d = BucketWindow(6 * HOUR_MS, 28)
        self.w30d = BucketWindow(DAY_MS, 30)
        self.merchants = LastSeen(64, LONGEST_WINDOW_MS)
        self.countries = LastSeen(16, DAY_MS)
        self.home = TopCounts(16)
        self.loc_time = NO_TIME
        self.lat = 0.0
        self.lon = 0.0
        self.ctry_time = NO_TIME
        self.ctry = 0
        self.zero24h = CountWindow(15 * MINUTE_MS, 96)

    def _parts(self) -> tuple[Part, ...]:
        return (self.w1h, self.w24h, self.w7d, self.w30d, self.merchants, self.countries,
                self.home, self.zero24h)

    def expire(self, t_ms: int) -> None:
        """Forget everything if the card was idle for longer than :data:`IDLE_EVICT_MS`."""
        if self.last_time != NO_TIME and t_ms - self.last_time > IDLE_EVICT_MS:
            self.__init__()  # type: ignore[misc]

    def features(self, txn: TxnInput) -> list[float]:
        """Card features of the spec (in order) as of just before ``txn``."""
        t = txn.event_time
        self.expire(t)
        w1, w24, w7, w30, z24 = self.w1h, self.w24h, self.w7d, self.w30d, self.zero24h
        for w in (w1, w24, w7, w30, z24):
            if t // w.bucket_ms > w.bmax:
                w.advance(t)
        last = self.last_time
        ref = t if t > last else last
        # 10-min figures: the last 10 of the 1-h window's 1-minute buckets
        n10m, small10m = w1.since(w1.bmax - TEN_MINUTE_BUCKETS)
        n1h, sum1h = w1.count, w1.total
        n24, sum24 = w24.count, w24.total
        n7, sum7 = w7.count, w7.total
        n30, sum30, sq30 = w30.count, w30.total, w30.total_sq
        r24, r7, r30 = w24.rated, w7.rated, w30.rated  # amounts known (issue 23)
        m1h, m24h = self.merchants.count_since2(ref - HOUR_MS, ref - DAY_MS)
        amount = txn.amount
        mean24 = sum24 / r24 if r24 else 0.0
        mean7 = sum7 / r7 if r7 else 0.0
        mean30 = sum30 / r30 if r30 else 0.0
        var30 = sq30 / r30 - mean30 * mean30 if r30 else 0.0
        std30 = math.sqrt(var30) if var30 > _VAR_EPS * max(1.0, mean30 * mean30) else 0.0
        since = NO_HISTORY_SECONDS if last == NO_TIME else max(0, t - last) / 1000.0
        m = stable_hash(txn.merchant_id)
        new_merchant = 1.0 if self.merchants.last(m) <= ref - LONGEST_WINDOW_MS else 0.0
        speed = 0.0
        if txn.lat is not None and txn.lon is not None and self.loc_time != NO_TIME:
            hours = max(abs(t - self.loc_time) / HOUR_MS, _MIN_TRAVEL_HOURS)
            speed = haversine_km(self.lat, self.lon, txn.lat, txn.lon) / hours
        changed = cross = 0.0
        if txn.country is not None:
            code = country_code(txn.country)
            changed = 1.0 if self.ctry_time != NO_TIME and self.ctry != code else 0.0
            home = self.home.mode()
            cross = 1.0 if home is not None and home != code else 0.0
        return [
            n10m,
            n1h,
            n24,
            n7,
            n30,
            sum1h,
            sum24,
            mean24,
            mean7,
            mean30,
            std30,
            # NaN amount (unrated, state.inputs): the spec neutrals 1 and 0
            1.0 if math.isnan(amount) else
            amount / mean30 if mean30 > 0.0 else (1.0 + amount if r30 else 1.0),
            0.0 if math.isnan(amount) else (amount - mean30) / std30 if std30 else 0.0,
            since,
            float(m1h),
            float(m24h),
            float(self.countries.count_since(ref - DAY_MS)),
            new_merchant,
            small10m,
            speed,
            changed,
            cross,
            z24.count,
        ]

    def update(self, txn: TxnInput) -> None:
        """Add ``txn`` to the card's state."""
        t = txn.event_time
        self.expire(t)
        if t > self.last_time:
            self.last_time = t
        amount = txn.amount
        if math.isnan(amount):  # unrated (issue 23): counted, but no amount is learnt
            for w in (self.w1h, self.w24h, self.w7d, self.w30d):
                w.add_unrated(t)
        else:
            small = 1.0 if amount < SMALL_AMOUNT else 0.0
            self.w1h.add(t, amount, small)
            self.w24h.add(t, amount, small)
            self.w7d.add(t, amount, small)
            self.w30d.add(t, amount, small)
        if amount == 0.0:
            self.zero24h.add(t)
        ref = self.last_time
        self.merchants.add(stable_hash(txn.merchant_id), t, ref)
        if txn.country is not None:
            code = country_code(txn.country)
            self.countries.add(code, t, ref)
            self.home.add(code)
            if t >= self.ctry_time:
                self.ctry_time, self.ctry = t, code
        if txn.lat is not None and txn.lon is not None and t >= self.loc_time:
            self.loc_time, self.lat, self.lon = t, txn.lat, txn.lon

    def encode(self) -> bytes:
        """Versioned compact bytes of this state (see :mod:`state.codec`)."""
        scalars = (self.last_time, self.loc_time, self.lat, self.lon, self.ctry_time, self.ctry)
        return _LAYOUT.encode(scalars, self._parts())

    @classmethod
    def decode(cls, buf: bytes) -> CardState:
        """Rebuild a state from :meth:`encode` bytes."""
        values = _LAYOUT.decode_head(buf)
        state = cls()
        (state.last_time, state.loc_time, state.lat, state.lon, state.ctry_time,
         state.ctry) = values[1:7]
        _LAYOUT.load(state._parts(), values, 7, buf)
        return state


_LAYOUT = Layout("card", "qqddqq", CardState()._parts())

