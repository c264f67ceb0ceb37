"""The one feature path: batch kernels over columns, for the stream and the offline replay.

The stream's stores (:mod:`state.card_store`, :mod:`state.merchant_store`) and the
offline replay (:mod:`state.replay`) call these functions, so a transaction gets the
same row bit for bit for the same history in the same order. Each call runs a
whole batch in one compiled kernel (:mod:`state.kernels`); the per-transaction
reference they are held to lives in :mod:`state.reference`.

A row has three groups (:data:`CARD_COLUMNS`, :data:`MERCHANT_COLUMNS`,
:data:`CONTEXT_COLUMNS`): the card stage computes the first, the merchant stage
the second and third.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import accumulate

import numpy as np

from state.errors import StateFormatError
from state.inputs import FeatureInputs
from state.kernels import card as card_kernel
from state.kernels import merchant as merchant_kernel
from state.kernels.windows import group as group_kernel
from state.labels import COUNT, RETRACT, Effect
from state.spec import FEATURE_NAMES, N_FEATURES

__all__ = ["gc_paused", "group", "card_features", "MerchantOps", "merchant_features",
           "context_features", "CARD_COLUMNS", "MERCHANT_COLUMNS", "CONTEXT_COLUMNS",
           "MERCHANT_STAGE_WIDTH", "CARD_WIDTH"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch churns (it makes no cycles)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _group_width(prefix: str) -> int:
    names = [n.startswith(prefix) for n in FEATURE_NAMES]
    start, width = names.index(True), sum(names)
    if not all(names[start : start + width]):
        raise AssertionError(f"spec group {prefix!r} is not contiguous")
    return width


#: Column slices of the three groups in a spec row: card, merchant, context.
CARD_COLUMNS = slice(0, _group_width("card_"))
MERCHANT_COLUMNS = slice(CARD_COLUMNS.stop, CARD_COLUMNS.stop + _group_width("merchant_"))
CONTEXT_COLUMNS = slice(MERCHANT_COLUMNS.stop, N_FEATURES)
#: Width of the merchant stage's part of a row (merchant and context groups).
MERCHANT_STAGE_WIDTH = N_FEATURES - CARD_COLUMNS.stop
CARD_WIDTH = CARD_COLUMNS.stop
if (CARD_WIDTH, MERCHANT_COLUMNS.stop - MERCHANT_COLUMNS.start) != (
        card_kernel.CARD_WIDTH, merchant_kernel.MERCHANT_WIDTH):
    raise AssertionError("the kernels' group widths disagree with the feature spec")


def group(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, offsets)``: row indices grouped by ``keys`` (int, 0..n_keys-1), stable.

    Group ``k`` is ``order[offsets[k]:offsets[k+1]]``, rows in their original order.
    """
    order = np.empty(len(keys), dtype=np.int64)
    offsets = np.zeros(n_keys + 1, dtype=np.int64)
    group_kernel(np.asarray(keys, dtype=np.int64), order, offsets)
    return order, offsets


def _packed(states: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encoded states as one int64 word array, its float64 view and word offsets."""
    raw = [s or b"" for s in states]
    sizes = list(map(len, raw))
    blob = b"".join(raw)
    if any(size & 7 for size in sizes):
        raise StateFormatError(
            "a stored state is not a whole number of 8-byte words (written by an older "
            "fraudstream): delete the state directory and the recovery directory, then restart")
    offsets = np.fromiter(accumulate(sizes, initial=0), np.int64, len(sizes) + 1) >> 3
    words = np.frombuffer(blob, dtype=np.int64)
    return words, words.view(np.float64), offsets


def _unpacked(out: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    blob = out[: offsets[-1]].tobytes()
    ends = (offsets * 8).tolist()
    return [blob[a:b] for a, b in zip(ends, ends[1:], strict=False)]


def _checked(kernel: Callable[..., None], *args: object) -> None:
    """Run a kernel; a corrupt or foreign stored state becomes a :class:`StateFormatError`."""
    try:
        kernel(*args)
    except ValueError as exc:
        raise StateFormatError(
            f"{exc}: delete the state directory and the recovery directory, then restart"
        ) from exc


def card_features(states: Sequence[bytes | None], card_of: np.ndarray, inputs: FeatureInputs,
                  *, encode: bool = True) -> tuple[np.ndarray, list[bytes]]:
    """The card group of every row, and the cards' new encoded states.

    ``states[c]``: card ``c``'s encoded state (None or empty: a new card); ``card_of``
    (int ``[n]``): each row's card; rows of a card are applied in row order. Returns
    float32 ``[n, CARD_WIDTH]`` and, when ``encode``, one bytes per card (else ``[]``).
    Raises ``ValueError`` on a state of another format or a corrupt one.
    """
    n = len(inputs)
    words, fwords, offsets = _packed(states)
    order, txn_off = group(card_of, len(states))
    features = np.zeros((n, CARD_WIDTH), dtype=np.float32)
    out = np.empty(card_kernel.MAX_STATE_WORDS * len(states) if encode else 0, dtype=np.int64)
    out_off = np.zeros(len(states) + 1, dtype=np.int64)
    _checked(card_kernel.card_batch, words, fwords, offsets, txn_off, order, inputs.event_ms,
             inputs.amount, inputs.merchant, inputs.country, inputs.lat, inputs.lon, features,
             out, out.view(np.float64), out_off, encode)
    return features, (_unpacked(out, out_off) if encode else [])


class MerchantOps:
    """The operations of a merchant batch, in the order to apply them (per merchant).

    :meth:`txn` reads a transaction's merchant group and counts it; :meth:`fraud`
    counts a fraud label joined to one of the merchant's transactions; :meth:`retract`
    ends such a count (a later "not fraud" label). Which labels count, and from when,
    is decided by :mod:`state.labels` (see :mod:`state.kernels.merchant`).
    """

    __slots__ = ("merchant", "kind", "t1", "t2", "t3", "flag", "row")

    def __init__(self) -> None:
        self.merchant: list[int] = []
        self.kind: list[int] = []
        self.t1: list[int] = []
        self.t2: list[int] = []
        self.t3: list[int] = []
        self.flag: list[int] = []
        self.row: list[int] = []

    def __len__(self) -> int:
        return len(self.kind)

    def _add(self, merchant: int, kind: int, t1: int, t2: int, t3: int, flag: int,
             row: int) -> None:
        self.merchant.append(merchant)
        self.kind.append(kind)
        self.t1.append(t1)
        self.t2.append(t2)
        self.t3.append(t3)
        self.flag.append(flag)
        self.row.append(row)

    def take(self, order: np.ndarray) -> MerchantOps:
        """The same operations in ``order`` (int array of positions)."""
        out = MerchantOps()
        for name in self.__slots__:
            setattr(out, name, np.asarray(getattr(self, name), dtype=np.int64)[order].tolist())
        return out

    def txn(self, merchant: int, event_ms: int, row: int) -> None:
        """Merchant ``merchant`` (index) reads, then counts, the transaction of ``row``."""
        self._add(merchant, merchant_kernel.TXN, event_ms, 0, 0, 0, row)

    def txns(self, merchants: np.ndarray, event_ms: np.ndarray, rows: np.ndarray) -> None:
        """:meth:`txn` for many rows at once."""
        n = len(rows)
        self.merchant += merchants.tolist()
        self.kind += [merchant_kernel.TXN] * n
        self.t1 += event_ms.tolist()
        self.t2 += [0] * n
        self.t3 += [0] * n
        self.flag += [0] * n
        self.row += rows.tolist()

    def fraud(self, merchant: int, txn_ms: int, since_ms: int, familiar: bool) -> None:
        """Merchant ``merchant`` counts a fraud label of its transaction at ``txn_ms``.

        ``since_ms``: when the label counts from (:attr:`state.labels.Effect.since`);
        ``familiar``: the card was a regular customer of the merchant.
        """
        self._add(merchant, merchant_kernel.FRAUD, txn_ms, since_ms, 0, int(familiar), -1)

    def retract(self, merchant: int, txn_ms: int, since_ms: int, until_ms: int,
                familiar: bool) -> None:
        """The count of ``fraud(merchant, txn_ms, since_ms, familiar)`` ends at ``until_ms``."""
        self._add(merchant, merchant_kernel.RETRACT, txn_ms, since_ms, until_ms,
                  int(familiar), -1)

    def effect(self, merchant: int, txn_ms: int, familiar: bool, effect: Effect) -> None:
        """The merchant operation of a label's :class:`~state.labels.Effect` (if any)."""
        if effect.kind == COUNT:
            self.fraud(merchant, txn_ms, effect.since, familiar)
        elif effect.kind == RETRACT:
            self.retract(merchant, txn_ms, effect.since, effect.until, familiar)


def merchant_features(states: Sequence[bytes | None], ops: MerchantOps, n_rows: int,
                      *, encode: bool = True) -> tuple[np.ndarray, list[bytes]]:
    """Run ``ops``: the merchant group of each transaction row, and the new merchant states.

    ``states[m]``: merchant ``m``'s encoded state (None or empty: new). Returns float32
    ``[n_rows, merchant width]`` (rows without a :meth:`MerchantOps.txn` stay 0) and,
    when ``encode``, one bytes per merchant. Raises ``ValueError`` on a bad state.
    """
    words, fwords, offsets = _packed(states)
    keys = np.asarray(ops.merchant, dtype=np.int64)
    order, op_off = group(keys, len(states))

    def col(values: list[int]) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)[order]

    features = np.zeros((n_rows, merchant_kernel.MERCHANT_WIDTH), dtype=np.float32)
    size = merchant_kernel.out_capacity(len(states), len(words), len(ops)) if encode else 0
    out = np.empty(size, dtype=np.int64)
    out_off = np.zeros(len(states) + 1, dtype=np.int64)
    _checked(merchant_kernel.merchant_batch, words, fwords, offsets, op_off, col(ops.kind),
             col(ops.t1), col(ops.t2), col(ops.t3), col(ops.flag), col(ops.row), features, out,
             out.view(np.float64), out_off, encode)
    return features, (_unpacked(out, out_off) if encode else [])


def context_features(inputs: FeatureInputs) -> np.ndarray:
    """The context group of every row (float32 ``[n, 8]``)."""
    out = np.empty((len(inputs), CONTEXT_COLUMNS.stop - CONTEXT_COLUMNS.start), np.float32)
    merchant_kernel.context_features(inputs.event_ms, inputs.amount, inputs.channel,
                                     inputs.entry_mode, out)
    return out
