"""The merchant batch kernel: every merchant of a batch, its operations in order, in one call.

An operation is one of:

* :data:`TXN`: read the merchant group of a transaction's row as of the buckets
  before its own, then count the transaction;
* :data:`FRAUD`: count a fraud label joined to one of the merchant's transactions,
  known from its (effective) label hour: under that hour (with the flag "the card
  was a regular customer") and under its transaction's UTC day (the delay-aligned
  risk);
* :data:`RETRACT`: a later label said "not fraud": the fraud counted from hour
  ``hs`` stops counting from hour ``he`` on (both counts above).

A counted fraud is an interval of label hours ``[hs, he)`` (``he`` = :data:`OPEN`
until retracted), so a transaction reads the labels known, and not yet corrected,
as of its own time, whatever else was read later (:mod:`state.labels` decides
which labels count). Packed map keys (int64, the sort key first, so retention is
one ``drop_below``):

* fraud map: ``hs << 22 | he << 1 | familiar``;
* aligned map: ``txn_day << 42 | hs << 21 | he``.

Same semantics and float operations as the per-transaction reference
(:class:`state.reference.merchant.MerchantState`): anchored, closed windows that
end two buckets before the transaction's own, labels that never move a clock.
The merchant states go in and come out encoded in the reference's byte layout.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# numba's cache (cache=True) is keyed by this file's own timestamp, not by the constants it
# imports: edit this file too when FORMAT changes (7: compact stored card states).
from state.kernels.card import FORMAT
from state.kernels.codec import load_floats, load_pairs, store_floats, store_pairs
from state.kernels.windows import (
    NO_TIME,
    add_count,
    bump,
    count_between,
    drop_below,
    find,
    remove_at,
)
from state.units import DAY_MS, HOUR_MS

TXN, FRAUD, RETRACT = 0, 1, 2
MERCHANT_WIDTH = 12
LABEL_DELAY_DAYS = 7
LATENESS = 2
_GAP = 2
#: Count windows: hours, six-hour quarters, UTC days (bucket ms, buckets read, buckets kept).
WINDOW_MS = np.array([HOUR_MS, 6 * HOUR_MS, DAY_MS], dtype=np.int64)
WINDOW_READ = np.array([24, 28, 30], dtype=np.int64)
_DAY_BUCKETS = LABEL_DELAY_DAYS + 30 + _GAP + LATENESS
WINDOW_KEEP = np.array([24 + _GAP + LATENESS, 28 + _GAP + LATENESS, _DAY_BUCKETS],
                       dtype=np.int64)
_HOUR_KEEP = 720 + _GAP + LATENESS * 24
_HOUR_BITS = 21
#: End hour of a fraud count that no later label has retracted.
OPEN = (1 << _HOUR_BITS) - 1
_HOUR_MASK = OPEN
_FRAUD_SHIFT = _HOUR_BITS + 1
_DAY_SHIFT = 2 * _HOUR_BITS
HEAD_WORDS = 13
#: Words an encoded merchant state can take beyond its two label maps.
FIXED_MAX_WORDS = HEAD_WORDS + 2 * int(WINDOW_KEEP.sum())


@njit(cache=True, inline="always")
def _fraud_key(label_hour: int, end_hour: int, familiar: bool) -> int:  # pragma: no cover
    return (label_hour << _FRAUD_SHIFT) | (end_hour << 1) | (1 if familiar else 0)


@njit(cache=True, inline="always")
def _aligned_key(txn_day: int, label_hour: int, end_hour: int) -> int:  # pragma: no cover
    return (txn_day << _DAY_SHIFT) | (label_hour << _HOUR_BITS) | end_hour


@njit(cache=True, inline="always")
def _move(keys, vals, size, old: int, new: int) -> None:  # type: ignore[no-untyped-def]  # pragma: no cover
    """One count from ``old`` to ``new`` (nothing when ``old`` is not there any more)."""
    n = size[0]
    i = find(keys, n, old)
    if i < 0:
        return
    if vals[i] > 1:
        vals[i] -= 1
    else:
        remove_at(keys, vals, n, i)
        size[0] = n - 1
    bump(keys, vals, size, new)


@njit(cache=True)
def _features(t, row, wmeta, wrec, fk, fv, ak, av, sizes) -> None:  # type: ignore[no-untyped-def]  # pragma: no cover
    counts = np.empty(3, np.float64)
    for w in range(3):
        b = t // WINDOW_MS[w]
        counts[w] = count_between(wmeta[w], wrec[w], 2, b - _GAP - WINDOW_READ[w], b - _GAP)
    c1, c7, c30 = counts[0], counts[1], counts[2]
    h = t // HOUR_MS
    known = h - _GAP
    f1 = f7 = f30 = 0
    familiar7 = familiar30 = 0
    if sizes[0] > 0:
        lo1, lo7, lo30 = known - 24, known - 168, known - 720
        for i in range(sizes[0]):
            key = fk[i]
            k = key >> _FRAUD_SHIFT
            if lo30 < k <= known and (key >> 1) & _HOUR_MASK > known:
                v = fv[i]
                f30 += v
                if key & 1:
                    familiar30 += v
                if k > lo7:
                    f7 += v
                    if key & 1:
                        familiar7 += v
                    if k > lo1:
                        f1 += v
    a1 = a7 = a30 = 0.0
    if sizes[1] > 0:
        end = t // DAY_MS - LABEL_DELAY_DAYS
        s1, s7, s30 = end - 1, end - 7, end - 30
        fr1 = fr7 = fr30 = 0
        for i in range(sizes[1]):
            key = ak[i]
            day = key >> _DAY_SHIFT
            if not s30 < day <= end:
                continue
            if (key >> _HOUR_BITS) & _HOUR_MASK > known or key & _HOUR_MASK <= known:
                continue
            v = av[i]
            fr30 += v
            if day > s7:
                fr7 += v
            if day > s1:
                fr1 += v
        if fr1 != 0 or fr7 != 0 or fr30 != 0:
            t1 = count_between(wmeta[2], wrec[2], 2, s1, end)
            t7 = count_between(wmeta[2], wrec[2], 2, s7, end)
            t30 = count_between(wmeta[2], wrec[2], 2, s30, end)
            a1 = min(1.0, fr1 / t1) if t1 != 0.0 else 0.0
            a7 = min(1.0, fr7 / t7) if t7 != 0.0 else 0.0
            a30 = min(1.0, fr30 / t30) if t30 != 0.0 else 0.0
    row[0] = c1
    row[1] = c7
    row[2] = c30
    row[3] = min(1.0, f1 / c1) if c1 != 0.0 else 0.0
    row[4] = min(1.0, f7 / c7) if c7 != 0.0 else 0.0
    row[5] = min(1.0, f30 / c30) if c30 != 0.0 else 0.0
    row[6] = a1
    row[7] = a7
    row[8] = a30
    row[9] = float(f7)
    row[10] = float(familiar7)
    row[11] = float(familiar30)


@njit(cache=True)
def merchant_batch(words, fwords, state_off, op_off, kind, t1, t2, t3, flag, rows,  # type: ignore[no-untyped-def]
                   features, out, fout, out_off, encode) -> None:  # pragma: no cover - numba
    """Run every merchant of a batch.

    Merchant ``m`` has the encoded state ``words[state_off[m]:state_off[m+1]]`` (int64
    words, ``fwords`` the float64 view; empty: new) and the operations
    ``op_off[m]:op_off[m+1]`` in order: ``kind`` (:data:`TXN`, :data:`FRAUD`,
    :data:`RETRACT`), ``t1`` (event time of a transaction or of the labelled
    transaction, ms), ``t2`` (the time a fraud counts from, ms), ``t3`` (for
    :data:`RETRACT`: the time it stops counting, ms), ``flag`` (regular customer), ``rows``
    (for :data:`TXN`: the row of ``features``, float32 ``[n, 12]``, to fill). Writes
    merchant ``m``'s new state into ``out[out_off[m]:out_off[m+1]]`` (``fout`` its
    float64 view) when ``encode`` (room: :func:`out_capacity` words). Raises
    ``ValueError`` on a corrupt state.
    """
    n_merchants = len(state_off) - 1
    cap = 1
    for m in range(n_merchants):  # room for the largest label maps of the batch
        a, b = state_off[m], state_off[m + 1]
        have = max(words[a + 11], words[a + 12]) if b > a else 0
        cap = max(cap, have + op_off[m + 1] - op_off[m])
    wmeta = np.zeros((3, 2), np.int64)
    wrec = np.zeros((3, 2 * int(WINDOW_KEEP.max())), np.float64)
    wsum = np.zeros((3, 1), np.float64)
    fk = np.zeros(cap, np.int64)
    fv = np.zeros(cap, np.int64)
    ak = np.zeros(cap, np.int64)
    av = np.zeros(cap, np.int64)
    sizes = np.zeros(2, np.int64)
    pos = 0
    for m in range(n_merchants):
        a, b = state_off[m], state_off[m + 1]
        hmax = NO_TIME
        for w in range(3):
            wmeta[w, 0] = NO_TIME
            wmeta[w, 1] = 0
            wsum[w, 0] = 0.0
        sizes[0] = 0
        sizes[1] = 0
        if b > a:
            if words[a] != FORMAT:
                raise ValueError("merchant state format version unsupported")
            hmax = words[a + 1]
            p = a + 2
            for w in range(3):
                wmeta[w, 0] = words[p]
                wmeta[w, 1] = words[p + 1]
                wsum[w, 0] = fwords[p + 2]
                p += 3
            sizes[0] = words[p]
            sizes[1] = words[p + 1]
            p += 2
            for w in range(3):
                p = load_floats(fwords, p, wrec[w], 2 * wmeta[w, 1])
            p = load_pairs(words, p, fk, fv, sizes[0])
            p = load_pairs(words, p, ak, av, sizes[1])
            if p != b:
                raise ValueError("merchant state is corrupt (its length disagrees with its head)")
        for o in range(op_off[m], op_off[m + 1]):
            k = kind[o]
            if k == TXN:
                t = t1[o]
                _features(t, features[rows[o]], wmeta, wrec, fk, fv, ak, av, sizes)
                for w in range(3):
                    add_count(wmeta[w], wrec[w], wsum[w], WINDOW_MS[w], WINDOW_KEEP[w], t)
                h = t // HOUR_MS
                if h > hmax:
                    hmax = h
                    drop_below(fk, fv, sizes[0:1],
                               ((h - _HOUR_KEEP + 1) << _FRAUD_SHIFT) - 1)
                    drop_below(ak, av, sizes[1:2],
                               ((h // 24 - _DAY_BUCKETS + 1) << _DAY_SHIFT) - 1)
            else:
                hs = t2[o] // HOUR_MS
                day = t1[o] // DAY_MS
                familiar = flag[o] != 0
                keep_hour = hmax == NO_TIME or hs > hmax - _HOUR_KEEP
                keep_day = hmax == NO_TIME or day > hmax // 24 - _DAY_BUCKETS
                if k == FRAUD:
                    if keep_hour:
                        bump(fk, fv, sizes[0:1], _fraud_key(hs, OPEN, familiar))
                    if keep_day:
                        bump(ak, av, sizes[1:2], _aligned_key(day, hs, OPEN))
                else:
                    he = t3[o] // HOUR_MS
                    _move(fk, fv, sizes[0:1], _fraud_key(hs, OPEN, familiar),
                          _fraud_key(hs, he, familiar))
                    _move(ak, av, sizes[1:2], _aligned_key(day, hs, OPEN),
                          _aligned_key(day, hs, he))
        if encode:
            out_off[m] = pos
            out[pos] = FORMAT
            out[pos + 1] = hmax
            p = pos + 2
            for w in range(3):
                out[p] = wmeta[w, 0]
                out[p + 1] = wmeta[w, 1]
                fout[p + 2] = wsum[w, 0]
                p += 3
            out[p] = sizes[0]
            out[p + 1] = sizes[1]
            p += 2
            for w in range(3):
                p = store_floats(fout, p, wrec[w], 2 * wmeta[w, 1])
            p = store_pairs(out, p, fk, fv, sizes[0])
            p = store_pairs(out, p, ak, av, sizes[1])
            pos = p
    if encode:
        out_off[n_merchants] = pos


def out_capacity(n_merchants: int, state_words: int, n_ops: int) -> int:
    """Words :func:`merchant_batch` may write for a batch of that many merchants and ops."""
    return n_merchants * FIXED_MAX_WORDS + state_words + 4 * n_ops


@njit(cache=True)
def context_features(t_ms, amount, channel, entry_mode, out) -> None:  # type: ignore[no-untyped-def]  # pragma: no cover
    """The context group of every row into ``out`` (float32 ``[n, 8]``), as the reference.

    ``channel`` and ``entry_mode`` are the spec's codes (float64).
    """
    for i in range(len(t_ms)):
        t = t_ms[i]
        hour = (t // HOUR_MS) % 24
        dow = (t // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        out[i, 0] = amount[i]
        out[i, 1] = math.log1p(amount[i])
        out[i, 2] = float(hour)
        out[i, 3] = float(dow)
        out[i, 4] = 1.0 if dow >= 5 else 0.0
        out[i, 5] = 1.0 if hour < 6 else 0.0
        out[i, 6] = channel[i]
        out[i, 7] = entry_mode[i]
