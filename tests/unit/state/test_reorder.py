"""The merchant stage's event-time order: watermark, release, bounds, labels among transactions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from state.kernels.windows import NO_TIME
from state.reorder import EVERYTHING, EventTimeOrder, Watermark, is_late, release_limit

HOUR = 3_600_000
T0 = 1_800_000_000_000 // HOUR * HOUR


class Rows:
    """A minimal chunk: names and event times."""

    def __init__(self, names: list[str], times: list[int]) -> None:
        self.names, self.event_ms = names, np.asarray(times, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.names)

    def take(self, index: np.ndarray) -> Rows:
        return Rows([self.names[i] for i in index.tolist()], self.event_ms[index].tolist())

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        return Rows([n for p in parts for n in p.names],
                    [t for p in parts for t in p.event_ms.tolist()])


def test_the_watermark_waits_for_every_input_and_leaves_idle_ones_out() -> None:
    w = Watermark()
    w.expect(["a", "b", "c"])
    w.heard("a", T0 + 5, False)
    assert w.update() == NO_TIME  # b and c not heard yet
    w.heard("b", T0 + 9, False)
    w.heard("c", NO_TIME, True)  # c has nothing to read: it holds no one back
    assert w.update() == T0 + 5
    w.heard("a", T0 + 20, False)
    assert w.update() == T0 + 9
    w.heard("a", T0 + 1, False)  # progress never goes back
    assert w.progress["a"] == T0 + 20
    w.heard("a", T0 + 20, True)
    w.heard("b", T0 + 9, True)
    assert w.update() == T0 + 20  # all idle: everything up to the newest has arrived
    w.heard("c", T0 + 2, False)  # a late input does not move the watermark back
    assert w.update() == T0 + 20


def test_release_waits_until_every_input_passed_the_hour_minus_two() -> None:
    order: EventTimeOrder[Rows, Rows] = EventTimeOrder()
    order.watermark.expect(["p0", "p1"])
    order.add_txns(Rows(["x"], [T0 + 5 * HOUR + 10]))
    order.watermark.heard("p0", T0 + 5 * HOUR + 10, False)
    order.watermark.heard("p1", T0 + 3 * HOUR - 1, False)  # still in hour 2: hour 3 may come
    assert order.release(Rows.concat, Rows.concat) == []
    order.watermark.heard("p1", T0 + 4 * HOUR, False)  # every input is past hour 3
    ((is_label, chunk),) = order.release(Rows.concat, Rows.concat)
    assert not is_label and chunk.names == ["x"] and order.buffered == 0
    assert release_limit(T0 + 4 * HOUR) == T0 + 6 * HOUR


def test_the_watermark_moves_on_even_with_nothing_buffered() -> None:
    """The source's alignment reads the watermark: it must not freeze on an empty buffer."""
    order: EventTimeOrder[Rows, Rows] = EventTimeOrder()
    order.watermark.expect(["p0"])
    order.watermark.heard("p0", T0 + HOUR, False)
    assert order.release(Rows.concat, Rows.concat) == []
    assert order.watermark.value == T0 + HOUR


def test_labels_go_at_their_time_after_transactions_of_the_same_millisecond() -> None:
    order: EventTimeOrder[Rows, Rows] = EventTimeOrder()
    order.add_txns(Rows(["t3", "t1"], [T0 + 3, T0 + 1]))
    order.add_labels(Rows(["l1", "l0", "l9"], [T0 + 1, T0, T0 + 9]))
    order.add_txns(Rows(["t2"], [T0 + 2]))
    order.watermark.heard("p", T0 + 10 * HOUR, True)
    runs = order.release(Rows.concat, Rows.concat)
    assert [(is_label, chunk.names) for is_label, chunk in runs] == [
        (True, ["l0"]), (False, ["t1"]), (True, ["l1"]), (False, ["t2", "t3"]), (True, ["l9"])]


def test_a_full_buffer_releases_its_oldest_transactions_and_counts_them() -> None:
    order: EventTimeOrder[Rows, Rows] = EventTimeOrder(limit=3)
    order.watermark.expect(["slow"])
    order.add_txns(Rows([f"t{i}" for i in range(5)], [T0 + i * HOUR for i in (4, 0, 3, 1, 2)]))
    ((_, chunk),) = order.release(Rows.concat, Rows.concat)
    assert chunk.names == ["t1", "t3"] and order.forced == 2 and order.buffered == 3


def test_records_behind_the_watermark_are_counted_late() -> None:
    order: EventTimeOrder[Rows, Rows] = EventTimeOrder()
    order.watermark.heard("p", T0 + 10 * HOUR, False)
    order.release(Rows.concat, Rows.concat)
    order.add_txns(Rows(["on time", "late"], [T0 + 10 * HOUR + 5, T0 + 9 * HOUR]))
    order.add_labels(Rows(["late label"], [T0]))
    assert (order.late, order.late_labels) == (1, 1)
    assert not is_late(T0 + 9 * HOUR, EVERYTHING) and not is_late(T0, NO_TIME)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 48 * HOUR)), min_size=1,
                max_size=80),
       st.integers(1, 10), st.integers(0, 2**32))
def test_any_arrival_order_releases_every_row_once_in_event_time_per_release(
    events: list[tuple[int, int]], chunk: int, seed: int
) -> None:
    """Each input hands its rows on in event-time order, the inputs interleaved at random:
    every row comes out once, and no row comes out before one that event time says
    must be scored two hours earlier."""
    rng = np.random.default_rng(seed)
    inputs = {i: sorted(t for j, t in events if j == i) for i in range(4)}
    order: EventTimeOrder[Rows, Rows] = EventTimeOrder()
    order.watermark.expect(list(inputs))
    out: list[int] = []
    pending = {i: list(ts) for i, ts in inputs.items()}
    while any(pending.values()):
        i = int(rng.choice([k for k, v in pending.items() if v]))
        take, pending[i] = pending[i][:chunk], pending[i][chunk:]
        order.add_txns(Rows([str(t) for t in take], [T0 + t for t in take]))
        order.watermark.heard(i, T0 + take[-1], not pending[i])
        for _, c in order.release(Rows.concat, Rows.concat):
            out += [int(t) - T0 for t in c.event_ms.tolist()]
    for i in inputs:
        order.watermark.heard(i, T0 + 10**9, True)
    for _, c in order.release(Rows.concat, Rows.concat):
        out += [int(t) - T0 for t in c.event_ms.tolist()]
    assert sorted(out) == sorted(t for _, t in events)
    for k, t in enumerate(out):  # nothing scored after a row two hours later than it
        assert all(u // HOUR < t // HOUR + 2 for u in out[:k])
    assert order.late == 0


def test_a_waking_input_makes_only_current_idle_inputs_wait_for_a_grace() -> None:
    w = Watermark(grace_s=1.0)
    w.expect(["a", "b", "stale"])
    w.heard("stale", T0, True)  # idle since long ago, far behind
    w.heard("a", T0 + 10 * HOUR, True)
    w.heard("b", T0 + 10 * HOUR, True)
    assert w.update(now=0.0) == T0 + 10 * HOUR  # all idle: the newest progress
    w.heard("a", T0 + 15 * HOUR, False, now=1.0)  # a burst: a wakes first
    assert w.update(now=1.5) == T0 + 10 * HOUR  # b may be waking too: it holds
    assert set(w.suspect_until) == {"b"} and w.recheck_at() == 2.0
    assert w.update(now=2.0) == T0 + 15 * HOUR  # b had nothing after all


def test_before_the_watermark_moves_every_idle_input_may_be_starting() -> None:
    w = Watermark(grace_s=1.0)
    w.expect(["a", "b"])
    w.heard("a", NO_TIME, True)
    w.heard("b", NO_TIME, True)
    w.heard("a", T0, False, now=5.0)
    assert w.update(now=5.5) == NO_TIME
    w.heard("b", T0 + HOUR, False, now=5.6)
    assert w.update(now=5.7) == T0


def test_a_frozen_copy_for_a_snapshot_is_untouched_by_what_follows() -> None:
    import pickle

    order: EventTimeOrder[Rows, Rows] = EventTimeOrder()
    order.watermark.expect(["p0", "p1"])
    order.add_txns(Rows(["a", "b"], [T0 + 5 * HOUR, T0 + 1]))
    order.add_labels(Rows(["L"], [T0 + 2]))
    order.watermark.heard("p0", T0 + 5 * HOUR, False)
    frozen = order.frozen()
    before = pickle.dumps(frozen)
    order.add_txns(Rows(["c"], [T0 + 3]))  # later work on the live order
    order.watermark.heard("p1", T0 + 4 * HOUR, True)
    released = order.release(Rows.concat, Rows.concat)
    assert released and order.buffered == 0
    assert pickle.dumps(frozen) == before  # the snapshot still says what it said
    assert frozen.buffered == 3 and frozen.watermark.progress["p1"] == NO_TIME
    assert [n for c in frozen.txns.chunks for n in c.names] == ["a", "b"]
    again = pickle.loads(before)  # and restores to the same state as a deep copy would
    assert again.release(Rows.concat, Rows.concat) == [] and again.buffered == 3
