"""The stream's cost guard: a rule that overruns its budget in the stream is disabled.

The compile-time check (:mod:`rules.cost`) measures a rule on a fixed reference
batch; live data can cost more (a loop over ``attributes`` meets transactions
carrying 2,000 of them). Per scoring batch the rule book
(:meth:`rules.book.RuleBook.evaluate`) times every rule and hands the time here;
this module only keeps counts (the clock is the caller's, so it is tested alone):

- **allowance** of a batch of ``n`` rows: ``row_us x max(n, MIN_ROWS)`` (a small
  batch still pays each rule's fixed per-call cost);
- **overrun**: more than :data:`OVERRUN_FACTOR` times the allowance (the compile
  check held the rule to 1x on the reference batch: twice that is the data or the
  rule, not timer noise);
- the rule is **disabled** after ``overrun_batches`` consecutive overruns, or at
  once when one batch costs more than :data:`SEVERE_FACTOR` times the allowance
  and at least :data:`SEVERE_FLOOR_S` (so one garbage-collector pause inside a
  rule does not disable it; three in a row in the same rule are unlikely);
  a rule evaluated row by row is stopped in the middle of the batch as soon as
  the rows evaluated so far cost more than that (:meth:`RuleGuard.stop_rate`:
  :data:`SEVERE_FACTOR` times the budget per row, and at least
  :data:`SEVERE_FLOOR_S`), so a rule costing 20x its budget is stopped after about
  :data:`SEVERE_FLOOR_S` whatever the batch size (measured: a 1 ms-a-row rule cost
  0.5 s in a 1,000-row batch and 2.5 s in the flow's backlog batches when only the
  batch's total was checked).

Times: thread CPU seconds for rules the library evaluates row by row (other
processes do not inflate them), the wall clock (a read costs ~50 ns, against
~1.5 µs for the CPU clock) for vectorised rules, whose cost is linear in the
batch and bounded by the expression. A disabled rule stays disabled (also across
a restart: the book's snapshot keeps it) until a new version of it is applied,
which is measured again. What it means for verdicts is in :mod:`rules.book`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rules.cost import CostBudget

#: Batches smaller than this are allowed this many rows' worth of time.
MIN_ROWS = 16
#: A batch over this many times the allowance is an overrun.
OVERRUN_FACTOR = 2.0
#: A batch over this many times the allowance disables the rule at once...
SEVERE_FACTOR = 10.0
#: ...when it also took this long: a one-off pause (a GC pass, page faults) rarely does.
SEVERE_FLOOR_S = 0.05


@dataclass(frozen=True)
class Disabled:
    """A rule version the guard took out of force, and why (analyst words, with the cost)."""

    rule_id: str
    version: int
    reason: str


class RuleGuard:
    """Consecutive overruns per rule, and the rule versions disabled for their cost."""

    def __init__(self, budget: CostBudget) -> None:
        self.budget = budget
        self._streak: dict[str, int] = {}
        #: rule id -> the disabled version and why.
        self.disabled: dict[str, Disabled] = {}

    def allowance_s(self, rows: int) -> float:
        """Seconds one rule may take over a batch of ``rows`` rows."""
        return self.budget.row_us * 1e-6 * max(rows, MIN_ROWS)

    def overrun_s(self, rows: int) -> float:
        """Seconds above which a batch is an overrun.

        Below it, :meth:`observe` can be skipped while no rule :attr:`is_counting`.
        """
        return OVERRUN_FACTOR * self.allowance_s(rows)

    @property
    def is_counting(self) -> bool:
        """Whether some rule has overrun in its latest batches (its streak is running)."""
        return bool(self._streak)

    def stop_s(self, rows: int) -> float:
        """Seconds after which a rule is stopped mid-batch and disabled."""
        return max(SEVERE_FACTOR * self.allowance_s(rows), SEVERE_FLOOR_S)

    def stop_rate(self) -> tuple[float, float]:
        """``(floor_s, per_row_s)``: when a row-by-row rule is stopped mid-batch.

        Once its CPU time after ``k`` rows passes ``max(floor_s, per_row_s * k)`` (at the
        batch's end, that is :meth:`stop_s` of its rows, :data:`MIN_ROWS` aside).
        """
        return SEVERE_FLOOR_S, SEVERE_FACTOR * self.budget.row_us * 1e-6

    def is_disabled(self, rule_id: str, version: int) -> bool:
        """Whether this version of the rule was disabled for its cost."""
        found = self.disabled.get(rule_id)
        return found is not None and found.version == version

    def observe(self, rule_id: str, version: int, seconds: float, rows: int) -> Disabled | None:
        """Count one batch's time for a rule; the :class:`Disabled` record when it is disabled."""
        allowance = self.allowance_s(rows)
        per_row = seconds / max(rows, 1) * 1e6
        if seconds > self.stop_s(rows):
            return self._disable(rule_id, version, (
                f"{per_row:,.0f} µs per transaction over a batch of {rows} "
                f"(over {SEVERE_FACTOR:g}x its budget of {self.budget.row_us:g} µs, "
                "FRAUD_RULE_COST_US)"
            ))
        if seconds <= OVERRUN_FACTOR * allowance:
            self._streak.pop(rule_id, None)
            return None
        streak = self._streak.get(rule_id, 0) + 1
        self._streak[rule_id] = streak
        if streak < self.budget.overrun_batches:
            return None
        return self._disable(rule_id, version, (
            f"{per_row:,.0f} µs per transaction in the last batch of {rows}, over "
            f"{OVERRUN_FACTOR:g}x its budget of {self.budget.row_us:g} µs (FRAUD_RULE_COST_US) "
            f"in {streak} consecutive batches (FRAUD_RULE_OVERRUN_BATCHES)"
        ))

    def stopped(self, rule_id: str, version: int, seconds: float, done: int,
                rows: int) -> Disabled:
        """A row-by-row rule stopped mid-batch after ``done`` of ``rows`` rows: disabled."""
        per_row = seconds / max(done, 1) * 1e6
        return self._disable(rule_id, version, (
            f"stopped after {done} of {rows} rows at {per_row:,.0f} µs per transaction "
            f"(over {SEVERE_FACTOR:g}x its budget of {self.budget.row_us:g} µs, "
            "FRAUD_RULE_COST_US)"
        ))

    def restore(self, rule_id: str, version: int) -> Disabled:
        """Disable a rule version again after a restart (from the book's snapshot)."""
        return self._disable(rule_id, version, "disabled for its cost before the restart")

    def forget(self, rule_id: str) -> None:
        """A new version (measured again) or a tombstone: the rule's past no longer counts."""
        self._streak.pop(rule_id, None)
        self.disabled.pop(rule_id, None)

    def _disable(self, rule_id: str, version: int, reason: str) -> Disabled:
        self._streak.pop(rule_id, None)
        record = Disabled(rule_id, version, f"rule {rule_id!r} v{version} disabled: {reason}")
        self.disabled[rule_id] = record
        return record
