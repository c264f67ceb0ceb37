"""The card batch kernel: every card of a batch, its transactions in order, in one call.

:func:`card_batch` reads each card's encoded state (the layout of
:class:`state.reference.card.CardState`), runs the card's transactions of the
batch through the feature read and the update exactly as the per-transaction
reference does (same windows, same float operations in the same order), and
writes the new encoded state. Cards are independent: each is decoded into one
scratch slot, advanced through its transactions and encoded again, so the
working set stays in cache whatever the batch holds.

Bucket granularity and semantics: see :mod:`state.reference.card` (spec v2).
Inputs are columns; outputs the float32 card group of every row
(:data:`state.features.CARD_COLUMNS`) and the cards' new state bytes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from state.kernels.codec import (
    get_f64,
    get_varint,
    load_floats,
    load_pairs,
    put_f64,
    put_varint,
    same_bits,
    store_floats,
    store_pairs,
    unzigzag,
    zigzag,
)
from state.kernels.windows import (
    NO_TIME,
    add_amount,
    add_count,
    add_unrated,
    advance,
    count_after,
    find,
    last_seen_add,
    remove_at,
)
from state.units import DAY_MS, HOUR_MS, MINUTE_MS

FORMAT = 7
"""Leading byte of an encoded card or merchant state (the store format's version).

6: merchant label counts as intervals (corrections), label marks and pending labels;
card bucket windows keep a ``rated`` count per record (:data:`STRIDE`): unrated
transactions count in velocity, not in amount means (issue 23).
7: a stored card state is a compact byte record (:func:`_encode`: varints, times relative
to the card's last transaction, floats the decoder recomputes bit for bit left out),
about 80 bytes for a card with one transaction instead of 576 (issue 21). The kernels
still work on the word layout of :class:`state.reference.card.CardState`
(:func:`card_transcode` converts)."""

LONGEST_WINDOW_MS = 30 * DAY_MS
IDLE_EVICT_MS = LONGEST_WINDOW_MS + DAY_MS
SMALL_AMOUNT = 5.0
NO_HISTORY_SECONDS = 2_592_000.0
CARD_WIDTH = 23
#: Bucket windows (1 h, 24 h, 7 d, 30 d) then the zero-value count window (24 h).
BUCKET_MS = np.array([MINUTE_MS, 15 * MINUTE_MS, 6 * HOUR_MS, DAY_MS, 15 * MINUTE_MS],
                     dtype=np.int64)
N_BUCKETS = np.array([60, 96, 28, 30, 96], dtype=np.int64)
MERCHANTS_CAP, COUNTRIES_CAP, HOME_CAP = 64, 16, 16
#: Head size and the largest card state in the word layout, in 8-byte words.
HEAD_WORDS = 42
#: Values per record of the four bucket windows: bucket, count, total, total_sq, small, rated
#: (``count`` every transaction, ``rated`` those with an amount: issue 23).
STRIDE = 6
WIDE_STATE_WORDS = (HEAD_WORDS + STRIDE * int(N_BUCKETS[:4].sum()) + 2 * int(N_BUCKETS[4])
                    + 2 * (MERCHANTS_CAP + COUNTRIES_CAP + HOME_CAP))
_VARINT = 10  # the longest varint of a 64-bit value
#: The largest stored (compact) card state, in 8-byte words: every field at its widest.
MAX_STATE_WORDS = (1 + 4 * _VARINT + 1 + 16                          # head
                   + 4 * (2 * _VARINT + 1 + 8 * (STRIDE - 1))        # window heads, sums
                   + int(N_BUCKETS[:4].sum()) * (4 * _VARINT + 16)   # their buckets
                   + 4 * _VARINT + 2 * _VARINT + 9 + int(N_BUCKETS[4]) * 2 * _VARINT
                   + (MERCHANTS_CAP + COUNTRIES_CAP + HOME_CAP) * 2 * _VARINT + 7) // 8 + 1
_MIN_TRAVEL_HOURS = 1.0 / 60.0
_EARTH_KM = 6371.0088
_VAR_EPS = 1e-12
_DEG = math.pi / 180.0  # CPython's math.radians multiplies by this constant
_W_HEAD = 7  # first window head word


@njit(cache=True)
def _scratch() -> tuple[np.ndarray, ...]:  # pragma: no cover - numba
    ints = np.zeros(4, np.int64)  # last_time, loc_time, ctry_time, ctry
    floats = np.zeros(2, np.float64)  # lat, lon
    wmeta = np.zeros((5, 2), np.int64)
    wrec = np.zeros((5, 96 * STRIDE), np.float64)
    wsum = np.zeros((5, STRIDE - 1), np.float64)
    mk = np.zeros(MERCHANTS_CAP + 1, np.int64)
    mv = np.zeros(MERCHANTS_CAP + 1, np.int64)
    ck = np.zeros(COUNTRIES_CAP + 1, np.int64)
    cv = np.zeros(COUNTRIES_CAP + 1, np.int64)
    hk = np.zeros(HOME_CAP + 1, np.int64)
    hv = np.zeros(HOME_CAP + 1, np.int64)
    sizes = np.zeros(4, np.int64)  # merchants, countries, home, home mode
    return ints, floats, wmeta, wrec, wsum, mk, mv, ck, cv, hk, hv, sizes


@njit(cache=True, inline="always")
def _reset(ints, floats, wmeta, wsum, sizes) -> None:  # type: ignore[no-untyped-def]  # pragma: no cover
    ints[0] = NO_TIME
    ints[1] = NO_TIME
    ints[2] = NO_TIME
    ints[3] = 0
    floats[0] = 0.0
    floats[1] = 0.0
    for w in range(5):
        wmeta[w, 0] = NO_TIME
        wmeta[w, 1] = 0
        for f in range(STRIDE - 1):
            wsum[w, f] = 0.0
    for k in range(4):
        sizes[k] = 0


@njit(cache=True)
def _decode_wide(words, fwords, start, end, ints, floats, wmeta, wrec, wsum, mk, mv, ck, cv,  # type: ignore[no-untyped-def]
            hk, hv, sizes) -> None:  # pragma: no cover - numba
    _reset(ints, floats, wmeta, wsum, sizes)
    if end == start:
        return
    if words[start] != FORMAT:
        raise ValueError("card state format version unsupported")
    ints[0] = words[start + 1]
    ints[1] = words[start + 2]
    floats[0] = fwords[start + 3]
    floats[1] = fwords[start + 4]
    ints[2] = words[start + 5]
    ints[3] = words[start + 6]
    pos = start + _W_HEAD
    for w in range(4):
        wmeta[w, 0] = words[pos]
        wmeta[w, 1] = words[pos + 1]
        for f in range(STRIDE - 1):
            wsum[w, f] = fwords[pos + 2 + f]
        pos += STRIDE + 1
    sizes[0] = words[pos]
    sizes[1] = words[pos + 1]
    sizes[2] = words[pos + 2]
    sizes[3] = words[pos + 3]
    wmeta[4, 0] = words[pos + 4]
    wmeta[4, 1] = words[pos + 5]
    wsum[4, 0] = fwords[pos + 6]
    pos += 7
    for w in range(4):
        pos = load_floats(fwords, pos, wrec[w], STRIDE * wmeta[w, 1])
    pos = load_pairs(words, pos, mk, mv, sizes[0])
    pos = load_pairs(words, pos, ck, cv, sizes[1])
    pos = load_pairs(words, pos, hk, hv, sizes[2])
    pos = load_floats(fwords, pos, wrec[4], 2 * wmeta[4, 1])
    if pos != end:
        raise ValueError("card state is corrupt (its length disagrees with its head)")


@njit(cache=True)
def _encode_wide(words, fwords, pos, ints, floats, wmeta, wrec, wsum, mk, mv, ck, cv, hk, hv,  # type: ignore[no-untyped-def]
            sizes) -> int:  # pragma: no cover - numba
    words[pos] = FORMAT
    words[pos + 1] = ints[0]
    words[pos + 2] = ints[1]
    fwords[pos + 3] = floats[0]
    fwords[pos + 4] = floats[1]
    words[pos + 5] = ints[2]
    words[pos + 6] = ints[3]
    p = pos + _W_HEAD
    for w in range(4):
        words[p] = wmeta[w, 0]
        words[p + 1] = wmeta[w, 1]
        for f in range(STRIDE - 1):
            fwords[p + 2 + f] = wsum[w, f]
        p += STRIDE + 1
    words[p] = sizes[0]
    words[p + 1] = sizes[1]
    words[p + 2] = sizes[2]
    words[p + 3] = sizes[3] if sizes[2] > 0 else 0
    words[p + 4] = wmeta[4, 0]
    words[p + 5] = wmeta[4, 1]
    fwords[p + 6] = wsum[4, 0]
    p += 7
    for w in range(4):
        p = store_floats(fwords, p, wrec[w], STRIDE * wmeta[w, 1])
    p = store_pairs(words, p, mk, mv, sizes[0])
    p = store_pairs(words, p, ck, cv, sizes[1])
    p = store_pairs(words, p, hk, hv, sizes[2])
    p = store_floats(fwords, p, wrec[4], 2 * wmeta[4, 1])
    return p


# --- the stored (compact) record -------------------------------------------------------
@njit(cache=True, inline="always")
def _put_time(buf, pos, t, last) -> int:  # type: ignore[no-untyped-def]  # pragma: no cover
    """A time as 0 (:data:`NO_TIME`) or 1 + zigzag(``last`` - t) (small: times trail ``last``)."""
    if t == NO_TIME:
        return put_varint(buf, pos, np.uint64(0))
    return put_varint(buf, pos, zigzag(last - t) + np.uint64(1))


@njit(cache=True, inline="always")
def _get_time(buf, pos, limit, last):  # type: ignore[no-untyped-def]  # pragma: no cover
    u, pos = get_varint(buf, pos, limit)
    if u == np.uint64(0):
        return NO_TIME, pos
    return last - unzigzag(u - np.uint64(1)), pos


@njit(cache=True, inline="always")
def _whole(x: float) -> np.uint64:  # pragma: no cover - numba
    """A count (a float holding a whole number >= 0) as an unsigned integer."""
    if not (x >= 0.0 and x < 9.0e15) or float(np.int64(x)) != x:
        raise ValueError("card state cannot be encoded (a count is not a whole number)")
    return np.uint64(np.int64(x))


@njit(cache=True, inline="always")
def _bucket(x: float) -> np.int64:  # pragma: no cover - numba
    """A bucket index (a float holding a whole number) as an integer."""
    if not abs(x) < 9.0e15 or float(np.int64(x)) != x:
        raise ValueError("card state cannot be encoded (a bucket is not a whole number)")
    return np.int64(x)


@njit(cache=True, inline="always")
def _get_count(buf, pos, limit, cap):  # type: ignore[no-untyped-def]  # pragma: no cover
    u, pos = get_varint(buf, pos, limit)
    if u > np.uint64(cap):
        raise ValueError("card state is corrupt (a size exceeds its capacity)")
    return np.int64(u), pos


@njit(cache=True)
def _encode(buf, pos, ints, floats, wmeta, wrec, wsum, mk, mv, ck, cv, hk, hv, sizes,  # type: ignore[no-untyped-def]
            bits, ibits, bbits) -> int:  # pragma: no cover - numba
    """Write the compact record (see :data:`FORMAT`) at byte ``pos``; the next byte position.

    Whole-number floats (bucket indices, counts) are varints, times are varints relative to
    the last transaction, and a float that the decoder can recompute bit for bit (a bucket's
    sum of squares and small count when it holds one amount, a window total equal to the
    left-to-right sum of its buckets, a bucket total equal to that of the coarser window's
    bucket holding it) is not written. Padded with zero bytes to whole 8-byte words.
    """
    buf[pos] = FORMAT
    pos += 1
    last = ints[0]
    pos = put_varint(buf, pos, zigzag(last))
    pos = _put_time(buf, pos, ints[1], last)
    located = (ints[1] != NO_TIME or not same_bits(floats[0], 0.0, bits, ibits)
               or not same_bits(floats[1], 0.0, bits, ibits))
    buf[pos] = 1 if located else 0
    pos += 1
    if located:
        pos = put_f64(buf, pos, floats[0], bits, bbits)
        pos = put_f64(buf, pos, floats[1], bits, bbits)
    pos = _put_time(buf, pos, ints[2], last)
    pos = put_varint(buf, pos, zigzag(ints[3]))
    for w in range(3, -1, -1):  # coarse to fine: a finer bucket may repeat a coarser total
        endb = wmeta[w, 0]
        n = wmeta[w, 1]
        rec = wrec[w]
        n_prev = wmeta[w + 1, 1] if w < 3 else 0
        prev = wrec[w + 1] if w < 3 else rec
        pos = put_varint(buf, pos, zigzag(last // BUCKET_MS[w] - endb))
        pos = put_varint(buf, pos, np.uint64(n))
        j = 0  # the coarser window's bucket holding this one (records ascend, mostly)
        for i in range(n):
            b = i * STRIDE
            bucket = _bucket(rec[b])
            pos = put_varint(buf, pos, zigzag(endb - bucket))
            pos = put_varint(buf, pos, _whole(rec[b + 1]))
            rated = _whole(rec[b + 5])
            total = rec[b + 2]
            sq = rec[b + 3]
            small = rec[b + 4]
            mode = 1
            if rated == np.uint64(0):
                if (same_bits(total, 0.0, bits, ibits) and same_bits(sq, 0.0, bits, ibits)
                        and same_bits(small, 0.0, bits, ibits)):
                    mode = 0
            elif rated == np.uint64(1) and (
                    same_bits(sq, total * total, bits, ibits)
                    and same_bits(small, 1.0 if total < SMALL_AMOUNT else 0.0, bits, ibits)):
                mode = 0
            ref = -1
            if mode == 0 and rated == np.uint64(1) and w < 3:
                coarse = float((bucket * BUCKET_MS[w]) // BUCKET_MS[w + 1])
                while j < n_prev and prev[j * STRIDE] < coarse:
                    j += 1
                if (j < n_prev and prev[j * STRIDE] == coarse
                        and same_bits(prev[j * STRIDE + 2], total, bits, ibits)):
                    ref = j
                    mode = 2
            pos = put_varint(buf, pos, rated * np.uint64(4) + np.uint64(mode))
            if mode == 2:
                pos = put_varint(buf, pos, np.uint64(ref))
            elif mode == 1:
                pos = put_f64(buf, pos, total, bits, bbits)
                pos = put_f64(buf, pos, sq, bits, bbits)
                pos = put_varint(buf, pos, _whole(small))
            elif rated == np.uint64(1):
                pos = put_f64(buf, pos, total, bits, bbits)
        flag_at = pos
        pos += 1
        flags = 0
        for f in range(STRIDE - 1):
            acc = 0.0
            for i in range(n):
                acc += rec[i * STRIDE + f + 1]
            if not same_bits(acc, wsum[w, f], bits, ibits):
                flags |= 1 << f
                pos = put_f64(buf, pos, wsum[w, f], bits, bbits)
        buf[flag_at] = flags
    pos = put_varint(buf, pos, np.uint64(sizes[0]))
    pos = put_varint(buf, pos, np.uint64(sizes[1]))
    pos = put_varint(buf, pos, np.uint64(sizes[2]))
    pos = put_varint(buf, pos, zigzag(sizes[3] if sizes[2] > 0 else 0))
    endb = wmeta[4, 0]
    n = wmeta[4, 1]
    rec = wrec[4]
    pos = put_varint(buf, pos, zigzag(last // BUCKET_MS[4] - endb))
    pos = put_varint(buf, pos, np.uint64(n))
    acc = 0.0
    for i in range(n):
        pos = put_varint(buf, pos, zigzag(endb - _bucket(rec[2 * i])))
        pos = put_varint(buf, pos, _whole(rec[2 * i + 1]))
        acc += rec[2 * i + 1]
    if same_bits(acc, wsum[4, 0], bits, ibits):
        buf[pos] = 0
        pos += 1
    else:
        buf[pos] = 1
        pos = put_f64(buf, pos + 1, wsum[4, 0], bits, bbits)
    for i in range(sizes[0]):
        ibits[0] = mk[i]
        for j in range(8):
            buf[pos + j] = bbits[j]
        pos = _put_time(buf, pos + 8, mv[i], last)
    for i in range(sizes[1]):
        pos = put_varint(buf, pos, zigzag(ck[i]))
        pos = _put_time(buf, pos, cv[i], last)
    for i in range(sizes[2]):
        pos = put_varint(buf, pos, zigzag(hk[i]))
        pos = put_varint(buf, pos, zigzag(hv[i]))
    while pos & 7:
        buf[pos] = 0
        pos += 1
    return pos


@njit(cache=True)
def _decode(buf, start, end, ints, floats, wmeta, wrec, wsum, mk, mv, ck, cv, hk, hv,  # type: ignore[no-untyped-def]
            sizes, bits, ibits, bbits) -> None:  # pragma: no cover - numba
    """Inverse of :func:`_encode`: the record in ``buf[start:end]`` (bytes) into the scratch."""
    _reset(ints, floats, wmeta, wsum, sizes)
    if end == start:
        return
    if buf[start] != FORMAT:
        raise ValueError("card state format version unsupported")
    pos = start + 1
    u, pos = get_varint(buf, pos, end)
    last = unzigzag(u)
    ints[0] = last
    t, pos = _get_time(buf, pos, end, last)
    ints[1] = t
    if pos >= end:
        raise ValueError("card state is corrupt (it ends early)")
    located = buf[pos]
    pos += 1
    if located == 1:
        floats[0] = get_f64(buf, pos, end, bits, bbits)
        floats[1] = get_f64(buf, pos + 8, end, bits, bbits)
        pos += 16
    elif located != 0:
        raise ValueError("card state is corrupt (a bad flag)")
    t, pos = _get_time(buf, pos, end, last)
    ints[2] = t
    u, pos = get_varint(buf, pos, end)
    ints[3] = unzigzag(u)
    for w in range(3, -1, -1):
        u, pos = get_varint(buf, pos, end)
        endb = last // BUCKET_MS[w] - unzigzag(u)
        n, pos = _get_count(buf, pos, end, N_BUCKETS[w])
        wmeta[w, 0] = endb
        wmeta[w, 1] = n
        rec = wrec[w]
        n_prev = wmeta[w + 1, 1] if w < 3 else 0
        prev = wrec[w + 1] if w < 3 else rec
        for i in range(n):
            b = i * STRIDE
            u, pos = get_varint(buf, pos, end)
            rec[b] = float(endb - unzigzag(u))
            u, pos = get_varint(buf, pos, end)
            rec[b + 1] = float(u)
            code, pos = get_varint(buf, pos, end)
            rated = code >> np.uint64(2)
            mode = code & np.uint64(3)
            rec[b + 5] = float(rated)
            if mode == np.uint64(1):
                rec[b + 2] = get_f64(buf, pos, end, bits, bbits)
                rec[b + 3] = get_f64(buf, pos + 8, end, bits, bbits)
                u, pos = get_varint(buf, pos + 16, end)
                rec[b + 4] = float(u)
                continue
            if rated == np.uint64(0) and mode == np.uint64(0):
                rec[b + 2] = 0.0
                rec[b + 3] = 0.0
                rec[b + 4] = 0.0
                continue
            if rated != np.uint64(1) or mode == np.uint64(3):
                raise ValueError("card state is corrupt (a bad bucket code)")
            if mode == np.uint64(2):
                u, pos = get_varint(buf, pos, end)
                k = np.int64(u)
                if u >= np.uint64(n_prev):
                    raise ValueError("card state is corrupt (a bad bucket reference)")
                total = prev[k * STRIDE + 2]
            else:
                total = get_f64(buf, pos, end, bits, bbits)
                pos += 8
            rec[b + 2] = total
            rec[b + 3] = total * total
            rec[b + 4] = 1.0 if total < SMALL_AMOUNT else 0.0
        if pos >= end:
            raise ValueError("card state is corrupt (it ends early)")
        flags = buf[pos]
        pos += 1
        for f in range(STRIDE - 1):
            if flags & (1 << f):
                wsum[w, f] = get_f64(buf, pos, end, bits, bbits)
                pos += 8
            else:
                acc = 0.0
                for i in range(n):
                    acc += rec[i * STRIDE + f + 1]
                wsum[w, f] = acc
    k, pos = _get_count(buf, pos, end, MERCHANTS_CAP)
    sizes[0] = k
    k, pos = _get_count(buf, pos, end, COUNTRIES_CAP)
    sizes[1] = k
    k, pos = _get_count(buf, pos, end, HOME_CAP)
    sizes[2] = k
    u, pos = get_varint(buf, pos, end)
    sizes[3] = unzigzag(u)
    u, pos = get_varint(buf, pos, end)
    endb = last // BUCKET_MS[4] - unzigzag(u)
    n, pos = _get_count(buf, pos, end, N_BUCKETS[4])
    wmeta[4, 0] = endb
    wmeta[4, 1] = n
    rec = wrec[4]
    acc = 0.0
    for i in range(n):
        u, pos = get_varint(buf, pos, end)
        rec[2 * i] = float(endb - unzigzag(u))
        u, pos = get_varint(buf, pos, end)
        rec[2 * i + 1] = float(u)
        acc += rec[2 * i + 1]
    if pos >= end:
        raise ValueError("card state is corrupt (it ends early)")
    if buf[pos] == 1:
        wsum[4, 0] = get_f64(buf, pos + 1, end, bits, bbits)
        pos += 9
    elif buf[pos] == 0:
        wsum[4, 0] = acc
        pos += 1
    else:
        raise ValueError("card state is corrupt (a bad flag)")
    for i in range(sizes[0]):
        if pos + 8 > end:
            raise ValueError("card state is corrupt (it ends early)")
        for j in range(8):
            bbits[j] = buf[pos + j]
        mk[i] = ibits[0]
        t, pos = _get_time(buf, pos + 8, end, last)
        mv[i] = t
    for i in range(sizes[1]):
        u, pos = get_varint(buf, pos, end)
        ck[i] = unzigzag(u)
        t, pos = _get_time(buf, pos, end, last)
        cv[i] = t
    for i in range(sizes[2]):
        u, pos = get_varint(buf, pos, end)
        hk[i] = unzigzag(u)
        u, pos = get_varint(buf, pos, end)
        hv[i] = unzigzag(u)
    if pos > end or end - pos >= 8:
        raise ValueError("card state is corrupt (its length disagrees with its contents)")
    while pos < end:
        if buf[pos] != 0:
            raise ValueError("card state is corrupt (its length disagrees with its contents)")
        pos += 1


@njit(cache=True, inline="always")
def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:  # pragma: no cover
    p1 = lat1 * _DEG
    p2 = lat2 * _DEG
    dp = p2 - p1
    dl = (lon2 - lon1) * _DEG
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * _EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


@njit(cache=True)
def _step(t, amount, mhash, country, lat, lon, row, ints, floats, wmeta, wrec, wsum,  # type: ignore[no-untyped-def]
          mk, mv, ck, cv, hk, hv, sizes) -> None:  # pragma: no cover - numba
    """The card group of one transaction into ``row``, then the transaction into the state."""
    # --- expire an idle card, advance the windows -------------------------------------
    if ints[0] != NO_TIME and t - ints[0] > IDLE_EVICT_MS:
        _reset(ints, floats, wmeta, wsum, sizes)
    for w in range(5):
        if t // BUCKET_MS[w] > wmeta[w, 0]:
            advance(wmeta[w], wrec[w], wsum[w], STRIDE if w < 4 else 2, BUCKET_MS[w],
                    N_BUCKETS[w], t)
    last = ints[0]
    ref = t if t > last else last
    # 10-min figures: the last 10 of the 1-h window's 1-minute buckets
    since_bucket = wmeta[0, 0] - 10
    n10m = 0.0
    small10m = 0.0
    rec1 = wrec[0]
    for i in range(wmeta[0, 1]):
        if rec1[i * STRIDE] > since_bucket:
            n10m += rec1[i * STRIDE + 1]
            small10m += rec1[i * STRIDE + 4]
    n1h = wsum[0, 0]
    sum1h = wsum[0, 1]
    n24 = wsum[1, 0]
    sum24 = wsum[1, 1]
    n7 = wsum[2, 0]
    sum7 = wsum[2, 1]
    n30 = wsum[3, 0]
    sum30 = wsum[3, 1]
    sq30 = wsum[3, 2]
    r24 = wsum[1, 4]  # transactions with an amount: the means' denominators (issue 23)
    r7 = wsum[2, 4]
    r30 = wsum[3, 4]
    m1h = count_after(mv, sizes[0], ref - HOUR_MS)
    m24h = count_after(mv, sizes[0], ref - DAY_MS)
    mean24 = sum24 / r24 if r24 != 0.0 else 0.0
    mean7 = sum7 / r7 if r7 != 0.0 else 0.0
    mean30 = sum30 / r30 if r30 != 0.0 else 0.0
    var30 = sq30 / r30 - mean30 * mean30 if r30 != 0.0 else 0.0
    std30 = math.sqrt(var30) if var30 > _VAR_EPS * max(1.0, mean30 * mean30) else 0.0
    since = NO_HISTORY_SECONDS if last == NO_TIME else max(0, t - last) / 1000.0
    mi = find(mk, sizes[0], mhash)
    m_last = mv[mi] if mi >= 0 else NO_TIME
    new_merchant = 1.0 if m_last <= ref - LONGEST_WINDOW_MS else 0.0
    located = not (math.isnan(lat) or math.isnan(lon))
    speed = 0.0
    if located and ints[1] != NO_TIME:
        hours = max(abs(t - ints[1]) / HOUR_MS, _MIN_TRAVEL_HOURS)
        speed = _haversine_km(floats[0], floats[1], lat, lon) / hours
    changed = 0.0
    cross = 0.0
    if country >= 0:
        changed = 1.0 if ints[2] != NO_TIME and ints[3] != country else 0.0
        cross = 1.0 if sizes[2] > 0 and sizes[3] != country else 0.0
    row[0] = n10m
    row[1] = n1h
    row[2] = n24
    row[3] = n7
    row[4] = n30
    row[5] = sum1h
    row[6] = sum24
    row[7] = mean24
    row[8] = mean7
    row[9] = mean30
    row[10] = std30
    rated = not math.isnan(amount)  # NaN: no rate converted it (state.inputs, unrated)
    if not rated:
        row[11] = 1.0  # the spec neutrals: "the card's usual amount"
        row[12] = 0.0
    elif mean30 > 0.0:
        row[11] = amount / mean30
    elif r30 != 0.0:
        row[11] = 1.0 + amount
    else:
        row[11] = 1.0
    if rated:
        row[12] = (amount - mean30) / std30 if std30 != 0.0 else 0.0
    row[13] = since
    row[14] = float(m1h)
    row[15] = float(m24h)
    row[16] = float(count_after(cv, sizes[1], ref - DAY_MS))
    row[17] = new_merchant
    row[18] = small10m
    row[19] = speed
    row[20] = changed
    row[21] = cross
    row[22] = wsum[4, 0]
    # --- update --------------------------------------------------------------------------
    if t > ints[0]:
        ints[0] = t
    if rated:
        small = 1.0 if amount < SMALL_AMOUNT else 0.0
        for w in range(4):
            add_amount(wmeta[w], wrec[w], wsum[w], BUCKET_MS[w], N_BUCKETS[w], t, amount, small)
    else:  # unrated: counted (velocity), but the windows learn no amount from it
        for w in range(4):
            add_unrated(wmeta[w], wrec[w], wsum[w], BUCKET_MS[w], N_BUCKETS[w], t)
    if amount == 0.0:
        add_count(wmeta[4], wrec[4], wsum[4], BUCKET_MS[4], N_BUCKETS[4], t)
    ref = ints[0]
    msz = sizes[0:1]
    last_seen_add(mk, mv, msz, MERCHANTS_CAP, LONGEST_WINDOW_MS, mhash, t, ref)
    if country >= 0:
        csz = sizes[1:2]
        last_seen_add(ck, cv, csz, COUNTRIES_CAP, DAY_MS, country, t, ref)
        _home_add(hk, hv, sizes, country)
        if t >= ints[2]:
            ints[2] = t
            ints[3] = country
    if located and t >= ints[1]:
        ints[1] = t
        floats[0] = lat
        floats[1] = lon


@njit(cache=True, inline="always")
def _home_add(hk, hv, sizes, value) -> None:  # type: ignore[no-untyped-def]  # pragma: no cover
    """The reference's ``TopCounts.add``: the card's most frequent country (ties: smallest)."""
    n = sizes[2]
    had = n > 0
    i = find(hk, n, value)
    if i >= 0:
        hv[i] += 1
        count = hv[i]
    else:
        if n >= HOME_CAP:  # the rarest (then smallest) value goes; the mode is recomputed
            worst = 0
            for k in range(1, n):
                if hv[k] < hv[worst] or (hv[k] == hv[worst] and hk[k] < hk[worst]):
                    worst = k
            remove_at(hk, hv, n, worst)
            n -= 1
            best = 0
            for k in range(1, n):  # max by (count, -value)
                if hv[k] > hv[best] or (hv[k] == hv[best] and hk[k] < hk[best]):
                    best = k
            sizes[3] = hk[best]
        hk[n] = value
        hv[n] = 1
        n += 1
        sizes[2] = n
        count = 1
    if not had:
        sizes[3] = value
        return
    bi = find(hk, n, sizes[3])
    best_count = hv[bi] if bi >= 0 else 0
    if count > best_count or (count == best_count and value < sizes[3]):
        sizes[3] = value


@njit(cache=True)
def card_batch(words, fwords, state_off, txn_off, rows, t_ms, amount, mhash, country, lat, lon,  # type: ignore[no-untyped-def]
               features, out, fout, out_off, encode) -> None:  # pragma: no cover - numba
    """Run every card of a batch.

    Card ``c`` has the encoded state ``words[state_off[c]:state_off[c+1]]`` (int64 words,
    ``fwords`` the float64 view of the same memory; empty: a new card) and the
    transactions ``rows[txn_off[c]:txn_off[c+1]]`` (row indices, in the order to apply).
    Per row: ``t_ms`` (int64 epoch ms), ``amount`` (float64, reference currency; NaN:
    unrated, see :mod:`state.inputs`: ratio and z-score at their neutrals 1 and 0, the
    bucket windows count it but learn no amount, everything else updates as usual),
    ``mhash`` (int64 stable hash of the merchant id), ``country`` (int64 code, -1
    absent), ``lat``/``lon`` (float64, NaN absent). Writes the card group of every row
    into ``features`` (float32 ``[n, 23]``) and, when ``encode``, card ``c``'s new state
    into ``out[out_off[c]:out_off[c+1]]`` (``fout`` its float64 view; room for
    :data:`MAX_STATE_WORDS` per card). Raises ``ValueError`` on a corrupt state.
    """
    ints, floats, wmeta, wrec, wsum, mk, mv, ck, cv, hk, hv, sizes = _scratch()
    bits = np.zeros(1, np.float64)
    ibits = bits.view(np.int64)
    bbits = bits.view(np.uint8)
    buf = words.view(np.uint8)
    obuf = out.view(np.uint8)
    pos = 0
    n_cards = len(state_off) - 1
    for c in range(n_cards):
        _decode(buf, 8 * state_off[c], 8 * state_off[c + 1], ints, floats, wmeta, wrec,
                wsum, mk, mv, ck, cv, hk, hv, sizes, bits, ibits, bbits)
        for k in range(txn_off[c], txn_off[c + 1]):
            r = rows[k]
            _step(t_ms[r], amount[r], mhash[r], country[r], lat[r], lon[r], features[r],
                  ints, floats, wmeta, wrec, wsum, mk, mv, ck, cv, hk, hv, sizes)
        if encode:
            out_off[c] = pos
            pos = _encode(obuf, 8 * pos, ints, floats, wmeta, wrec, wsum, mk, mv, ck, cv,
                          hk, hv, sizes, bits, ibits, bbits) // 8
    if encode:
        out_off[n_cards] = pos


@njit(cache=True)
def card_transcode(words, fwords, state_off, out, fout, out_off, to_wide) -> None:  # type: ignore[no-untyped-def]  # pragma: no cover
    """Stored card states to the word layout (``to_wide``) or back.

    The word layout is :class:`state.reference.card.CardState`'s: the reference
    comparisons and golden tests read both.
    """
    ints, floats, wmeta, wrec, wsum, mk, mv, ck, cv, hk, hv, sizes = _scratch()
    bits = np.zeros(1, np.float64)
    ibits = bits.view(np.int64)
    bbits = bits.view(np.uint8)
    buf = words.view(np.uint8)
    obuf = out.view(np.uint8)
    pos = 0
    for c in range(len(state_off) - 1):
        if to_wide:
            _decode(buf, 8 * state_off[c], 8 * state_off[c + 1], ints, floats, wmeta, wrec,
                    wsum, mk, mv, ck, cv, hk, hv, sizes, bits, ibits, bbits)
        else:
            _decode_wide(words, fwords, state_off[c], state_off[c + 1], ints, floats, wmeta,
                         wrec, wsum, mk, mv, ck, cv, hk, hv, sizes)
        out_off[c] = pos
        if to_wide:
            pos = _encode_wide(out, fout, pos, ints, floats, wmeta, wrec, wsum, mk, mv, ck,
                               cv, hk, hv, sizes)
        else:
            pos = _encode(obuf, 8 * pos, ints, floats, wmeta, wrec, wsum, mk, mv, ck, cv,
                          hk, hv, sizes, bits, ibits, bbits) // 8
    out_off[len(state_off) - 1] = pos


def transcode(states: list[bytes], to_wide: bool) -> list[bytes]:
    """Stored card states in the word layout (``to_wide``), or word-layout states as stored.

    The word layout is :class:`state.reference.card.CardState`'s (for tests and inspection).
    """
    blob = b"".join(states)
    words = np.frombuffer(blob, dtype=np.int64)
    offsets = np.cumsum([0, *(len(s) // 8 for s in states)]).astype(np.int64)
    size = (WIDE_STATE_WORDS if to_wide else MAX_STATE_WORDS) * len(states)
    out = np.zeros(size, dtype=np.int64)
    out_off = np.zeros(len(states) + 1, dtype=np.int64)
    card_transcode(words, words.view(np.float64), offsets, out, out.view(np.float64), out_off,
                   to_wide)
    raw = out[: out_off[-1]].tobytes()
    ends = (out_off * 8).tolist()
    return [raw[a:b] for a, b in zip(ends, ends[1:], strict=False)]
