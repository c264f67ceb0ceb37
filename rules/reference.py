"""Row-by-row evaluation by the CEL library: the fallback and the reference of the fast path.

Each row becomes a CEL activation: the row's values by name (see
:mod:`rules.names`), and for ``lists`` the already-resolved membership: list
``L`` is bound to the operands of ``x in lists.L`` whose value is a member at
the row's event time, so the library's own ``in`` gives the answer. An error
value or an exception is "no hit, error" (CEL's error semantics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rules.batch import RuleBatch
from rules.celast import Const, Ident, Node, Select
from rules.compile import CompiledRule
from rules.names import Vocabulary

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
        if kind in ("text", "double", "int", "attributes"):
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


def evaluate(
    compiled: CompiledRule, batch: RuleBatch, vocab: Vocabulary, member: Membership
) -> tuple[np.ndarray, np.ndarray]:
    """``(hit [n], error [n])`` of one rule over a batch, row by row in the library."""
    n = len(batch)
    hit = np.zeros(n, dtype=bool)
    err = np.zeros(n, dtype=bool)
    for i in range(n):
        row = batch.row(i)
        hit[i], err[i] = evaluate_row(compiled, activation(compiled, row, vocab, member))
    return hit, err
