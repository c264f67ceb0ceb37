"""Row-by-row evaluation by the CEL library: the fallback and the reference of the fast path.

Each row becomes a CEL activation: the row's values by name (see
:mod:`rules.names`), and for ``lists`` the already-resolved membership: list
``L`` is bound to the operands of ``x in lists.L`` whose value is a member at
the row's event time, so the library's own ``in`` gives the answer. An error
value or an exception is "no hit, error" (CEL's error semantics).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from rules.batch import RuleBatch
from rules.celast import Const, Ident, Node, Select
from rules.names import Vocabulary

if TYPE_CHECKING:  # rules.compile measures rules with this module (rules.cost)
    from rules.compile import CompiledRule

#: ``member(list, value, event_time) -> bool``
Membership = Callable[[str, str, int], bool]


def _operand_value(node: Node, row: dict[str, Any]) -> Any:
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Ident):
        return row[node.name]
    if isinstance(node, Select):
        return row["attributes"].get(node.field)
    key = node.args[1]  # type: ignore[union-attr]  # _[_](attributes, "k"), by check_tree
    assert isinstance(key, Const)
    return row["attributes"].get(key.value)


def activation(
    compiled: CompiledRule, row: dict[str, Any], vocab: Vocabulary, member: Membership
) -> dict[str, Any]:
    """The variables of ``compiled`` for one row (``row`` from :meth:`RuleBatch.row`)."""
    wanted = compiled.variables
    data: dict[str, Any] = {}
    for name, kind in vocab.kinds.items():
        if wanted is not None and name not in wanted:
            continue
        if kind in ("text", "double", "int", "bool", "attributes"):
            data[name] = row[name] if name in row else row["features"][name]
        elif kind == "features":
            data[name] = row["features"]
    lists: dict[str, list[str]] = {}
    for name, operands in compiled.list_operands.items():
        found = []
        for node in operands:
            value = _operand_value(node, row)
            if isinstance(value, str) and member(name, value, row["event_time"]):
                found.append(value)
        lists[name] = found
    if wanted is None or "lists" in wanted:
        data["lists"] = lists
    return data


def row_names(compiled: CompiledRule) -> frozenset[str] | None:
    """What :func:`activation` reads of a row for this rule (None: everything).

    The names the rule reads, ``event_time`` (list membership is judged at it), and
    what the operands of ``x in lists.<name>`` read.
    """
    if compiled.variables is None:
        return None
    names = set(compiled.variables) | {"event_time"}
    for operands in compiled.list_operands.values():
        for node in operands:
            if isinstance(node, Ident):
                names.add(node.name)
            elif not isinstance(node, Const):
                names.add("attributes")
    return frozenset(names)


def evaluate_row(compiled: CompiledRule, data: dict[str, Any]) -> tuple[bool, bool]:
    """``(hit, error)`` of one rule on one activation."""
    try:
        result = compiled.program.eval(data=data)
        value = result.value()
    except Exception:  # the library raises RuntimeError/TypeError on bad activations
        return False, True
    if isinstance(value, bool):
        return value, False
    return False, True  # an error value (or a non-bool from a dyn expression)


class RowBudgetSpent(Exception):  # noqa: N818 - a signal, like vector.Unsupported
    """Row-by-row evaluation stopped: its thread CPU time passed the limit it was given.

    ``rows``: rows evaluated (at least 1); ``seconds``: thread CPU time they took.
    """

    def __init__(self, rows: int, seconds: float) -> None:
        super().__init__(f"stopped after {rows} row(s), {seconds * 1e3:.1f} ms of CPU")
        self.rows = rows
        self.seconds = seconds


def evaluate(
    compiled: CompiledRule, batch: RuleBatch, vocab: Vocabulary, member: Membership,
    *, cpu_limit_s: float | None = None, cpu_limit_per_row_s: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(hit [n], error [n])`` of one rule over a batch, row by row in the library.

    With ``cpu_limit_s``, raises :class:`RowBudgetSpent` as soon as the rule has
    used more than that much thread CPU time (checked between rows: one library
    call cannot be interrupted, and CEL's own iteration limit bounds it). The
    cheap wall clock is read after each row, the CPU clock only once the wall
    clock has passed the limit (CPU time never exceeds wall time in one thread).
    With ``cpu_limit_per_row_s`` too, the limit after ``k`` rows is
    ``max(cpu_limit_s, cpu_limit_per_row_s * k)``: a rule is stopped by its rate so far,
    not only at the end of a large batch (the stream's guard: :meth:`RuleGuard.stop_rate
    <rules.guard.RuleGuard.stop_rate>`).
    """
    n = len(batch)
    hit = np.zeros(n, dtype=bool)
    err = np.zeros(n, dtype=bool)
    names = row_names(compiled)
    if cpu_limit_s is None:
        for i in range(n):
            row = batch.row(i, names)
            hit[i], err[i] = evaluate_row(compiled, activation(compiled, row, vocab, member))
        return hit, err
    wall, cpu = time.perf_counter, time.thread_time
    wall0, cpu0 = wall(), cpu()
    floor, rate = cpu_limit_s, cpu_limit_per_row_s
    for i in range(n):
        row = batch.row(i, names)
        hit[i], err[i] = evaluate_row(compiled, activation(compiled, row, vocab, member))
        limit = floor if rate * (i + 1) <= floor else rate * (i + 1)
        if wall() - wall0 > limit and (spent := cpu() - cpu0) > limit:
            raise RowBudgetSpent(i + 1, spent)
    return hit, err
