"""Vectorised evaluation of a checked CEL tree over a batch's columns (the fast path).

A per-row interpreter costs several µs per rule and row; 100 rules would cost
more than the whole scoring path. The checked tree of a rule (from the CEL
library, :mod:`rules.celast`) is compiled once into numpy operations over the
batch's columns, each column extracted once per batch and shared by all rules.

It follows CEL's semantics (cel-spec ``langdef.md``) for the subset it accepts,
including errors: an absent attribute is an error value, ``false && error`` is
``false``, ``true || error`` is ``true``, anything else with an error is an error,
and an error never makes a rule hit. Supported: literals; the variables of
:mod:`rules.names`; ``features.x``; ``attributes.k`` / ``attributes["k"]`` and
``has(attributes.k)``; ``&& || ! ?:``; ``== != < <= > >=``; ``+ - * /`` on doubles
and ``+ - *`` on ints; unary ``-``; ``x in [literals]``; ``x in lists.name``;
``startsWith``, ``endsWith``, ``contains``, ``size`` on text; ``double()`` and
``int()``. Anything else raises :class:`Unsupported` at compile time and the
rule is evaluated row by row by the library (:mod:`rules.reference`); the
property tests hold this module to the library on random rules and rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rules.batch import RuleBatch
from rules.celast import Call, Const, Ident, ListLit, Node, Opaque, Select
from rules.lists import ListIndex
from rules.names import Vocabulary

Values = Any  # np.ndarray, or a Python scalar for a constant
Err = np.ndarray | None


class Unsupported(Exception):  # noqa: N818 - a signal, not a failure
    """The tree uses something the fast path does not vectorise (the library evaluates it)."""


class Columns:
    """One batch's columns, extracted on first use and shared by every rule."""

    def __init__(self, batch: RuleBatch, lists: ListIndex, vocab: Vocabulary) -> None:
        self.batch = batch
        self.lists = lists
        self.vocab = vocab
        self.n = len(batch)
        self._cache: dict[Any, Any] = {}

    def text(self, name: str) -> np.ndarray:
        """Object array of ``str`` (absent = ``""``)."""
        key = ("text", name)
        out = self._cache.get(key)
        if out is None:
            if name == "bin":
                out = self.batch.bins
            elif name == "model_decision":
                out = self.batch.model_decision.astype(object)
            else:
                out = self.batch.text[name]
            self._cache[key] = out
        return out

    def number(self, name: str) -> np.ndarray:
        """Float64 ``[n]``: a double field, or a bare feature name."""
        if name not in ("amount", "amount_reference", "score"):
            return self.feature(name)
        key = ("number", name)
        out = self._cache.get(key)
        if out is None:
            out = np.asarray(getattr(self.batch, name), dtype=np.float64)
            self._cache[key] = out
        return out

    def boolean(self, name: str) -> np.ndarray:
        """Bool ``[n]``: a bool field of the batch (``amount_unrated``)."""
        key = ("bool", name)
        out = self._cache.get(key)
        if out is None:
            out = np.asarray(getattr(self.batch, name), dtype=bool)
            self._cache[key] = out
        return out

    def feature(self, name: str) -> np.ndarray:
        """Float64 ``[n]``: one feature column."""
        key = ("feature", name)
        out = self._cache.get(key)
        if out is None:
            out = self.batch.features[:, self.vocab.feature_index[name]].astype(np.float64)
            self._cache[key] = out
        return out

    def integer(self, name: str) -> np.ndarray:
        """Int64 ``[n]`` (``event_time``)."""
        return np.asarray(self.batch.event_time, dtype=np.int64)

    def attribute(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(values, present)``: object array of each row's ``attributes[key]`` and a mask."""
        ck = ("attr", key)
        out = self._cache.get(ck)
        if out is None:
            values = np.empty(self.n, dtype=object)
            present = np.zeros(self.n, dtype=bool)
            for i, attrs in enumerate(self.batch.attributes):
                if attrs is not None and key in attrs:
                    values[i] = attrs[key]
                    present[i] = True
            out = (values, present)
            self._cache[ck] = out
        return out

    def members(self, name: str, key: Any, values: np.ndarray) -> np.ndarray:
        """Bool ``[n]``: each value in list ``name`` at its row's event time (cached by key)."""
        ck = ("member", name, key)
        out = self._cache.get(ck)
        if out is None:
            memo = self._cache.setdefault(("parsed", key), {})
            out = self.lists.members(name, values, self.batch.event_time, memo)
            self._cache[ck] = out
        return out


@dataclass(frozen=True)
class Compiled:
    """A compiled node: its static type, and how to compute ``(values, errors)``."""

    type: str  # "bool" | "double" | "int" | "text" | "dyn"
    run: Callable[[Columns], tuple[Values, Err]]
    const: Any = None
    is_const: bool = False
    key: Any = None  # a stable description of a column operand (for the membership cache)


def _err(*errs: Err) -> Err:
    present = [e for e in errs if e is not None]
    if not present:
        return None
    out = present[0]
    for e in present[1:]:
        out = out | e
    return out


def _const(value: Any, type_: str) -> Compiled:
    return Compiled(type_, lambda c: (value, None), const=value, is_const=True, key=("c", value))


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def cel_equal(a: Any, b: Any) -> bool:
    """CEL heterogeneous equality of two scalar values (numbers across int/double compare)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    return bool(a == b)


_ORDER = {
    "_<_": np.less, "_<=_": np.less_equal, "_>_": np.greater, "_>=_": np.greater_equal,
}  # fmt: skip
_ORDER_PY: dict[str, Callable[[Any, Any], bool]] = {
    "_<_": lambda a, b: a < b, "_<=_": lambda a, b: a <= b,
    "_>_": lambda a, b: a > b, "_>=_": lambda a, b: a >= b,
}  # fmt: skip
_ARITH = {"_+_": np.add, "_-_": np.subtract, "_*_": np.multiply, "_/_": np.divide}


def _as_bool_array(values: Values, n: int) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.ndim == 1:
        return values.astype(bool, copy=False)
    return np.full(n, bool(values))


class Compiler:
    """Compiles checked trees against one vocabulary."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab

    def compile(self, tree: Node) -> Callable[[Columns], tuple[np.ndarray, np.ndarray]]:
        """``run(columns) -> (hit [n] bool, error [n] bool)``; raises :class:`Unsupported`."""
        node = self.node(tree)
        if node.type != "bool":
            raise Unsupported(f"the expression gives {node.type}, not bool")

        def run(cols: Columns) -> tuple[np.ndarray, np.ndarray]:
            values, err = node.run(cols)
            hit = _as_bool_array(values, cols.n)
            if err is None:
                return hit, np.zeros(cols.n, dtype=bool)
            return hit & ~err, err

        return run

    # ---- leaves ----------------------------------------------------------------------------

    def node(self, n: Node) -> Compiled:
        """Compile one node (recursively)."""
        if isinstance(n, Const):
            kinds = {"bool": "bool", "int": "int", "uint": "int", "double": "double",
                     "string": "text"}  # fmt: skip
            if n.kind not in kinds:
                raise Unsupported(f"{n.kind} literal")
            return _const(n.value, kinds[n.kind])
        if isinstance(n, Ident):
            return self.ident(n.name)
        if isinstance(n, Select):
            return self.select(n)
        if isinstance(n, Call):
            return self.call(n)
        if isinstance(n, Opaque):
            raise Unsupported(n.what)
        raise Unsupported(f"{type(n).__name__} outside `in`")

    def ident(self, name: str) -> Compiled:
        """A bare variable."""
        kind = self.vocab.kinds.get(name)
        if kind == "text":
            return Compiled("text", lambda c: (c.text(name), None), key=("text", name))
        if kind == "double":
            return Compiled("double", lambda c: (c.number(name), None), key=("number", name))
        if kind == "int":
            return Compiled("int", lambda c: (c.integer(name), None), key=("int", name))
        if kind == "bool":
            return Compiled("bool", lambda c: (c.boolean(name), None), key=("bool", name))
        raise Unsupported(f"bare {name}")

    def _attribute(self, key: str) -> Compiled:
        def run(c: Columns) -> tuple[Values, Err]:
            values, present = c.attribute(key)
            return values, ~present

        return Compiled("dyn", run, key=("attr", key))

    def select(self, n: Select) -> Compiled:
        """``features.x``, ``attributes.k``, ``has(attributes.k)``."""
        if isinstance(n.operand, Ident) and n.operand.name == "features" and not n.test_only:
            if n.field not in self.vocab.feature_index:
                raise Unsupported(f"unknown feature {n.field}")
            return Compiled(
                "double", lambda c: (c.feature(n.field), None), key=("feature", n.field)
            )
        if isinstance(n.operand, Ident) and n.operand.name == "attributes":
            if n.test_only:
                return Compiled("bool", lambda c: (c.attribute(n.field)[1], None))
            return self._attribute(n.field)
        raise Unsupported("selection")

    # ---- calls -----------------------------------------------------------------------------

    def call(self, n: Call) -> Compiled:  # noqa: C901 - one dispatch table
        """Operators and functions."""
        f, args = n.function, n.args
        if f in ("_&&_", "_||_"):
            return self.logic(f, [self.node(a) for a in args])
        if f == "!_":
            return self.negate(self.node(args[0]))
        if f == "_?_:_":
            return self.ternary(*(self.node(a) for a in args))
        if f in ("_==_", "_!=_"):
            return self.equality(f, self.node(args[0]), self.node(args[1]))
        if f in _ORDER:
            return self.order(f, self.node(args[0]), self.node(args[1]))
        if f in _ARITH:
            return self.arith(f, self.node(args[0]), self.node(args[1]))
        if f == "-_":
            return self.minus(self.node(args[0]))
        if f == "@in":
            return self.member(args[0], args[1])
        if f == "_[_]":
            target, index = args
            if isinstance(index, Const) and index.kind == "string" and isinstance(target, Ident):
                if target.name == "attributes":
                    return self._attribute(str(index.value))
                if target.name == "features":
                    return self.select(Select(target, str(index.value)))
            raise Unsupported("index")
        if f in ("startsWith", "endsWith", "contains") and n.target is not None:
            return self.text_test(f, self.node(n.target), args)
        if f == "size":
            operand = n.target if n.target is not None else (args[0] if args else None)
            if operand is None:
                raise Unsupported("size()")
            return self.size(self.node(operand))
        if f in ("double", "int") and n.target is None and len(args) == 1:
            return self.convert(f, self.node(args[0]))
        raise Unsupported(f"function {f}")

    def logic(self, f: str, parts: list[Compiled]) -> Compiled:
        """CEL's commutative ``&&``/``||`` with error absorption."""
        if any(p.type != "bool" for p in parts):
            raise Unsupported("logic on non-bool")
        a, b = parts
        is_and = f == "_&&_"

        def run(c: Columns) -> tuple[Values, Err]:
            va, ea = a.run(c)
            vb, eb = b.run(c)
            if ea is None and eb is None:
                return (np.logical_and(va, vb) if is_and else np.logical_or(va, vb)), None
            va = _as_bool_array(va, c.n)
            vb = _as_bool_array(vb, c.n)
            ea = np.zeros(c.n, bool) if ea is None else ea
            eb = np.zeros(c.n, bool) if eb is None else eb
            if is_and:
                decided = (~va & ~ea) | (~vb & ~eb)  # a definite false wins
                err = (ea | eb) & ~decided
                return ~decided & ~err, err
            decided = (va & ~ea) | (vb & ~eb)  # a definite true wins
            err = (ea | eb) & ~decided
            return decided, err

        return Compiled("bool", run)

    def negate(self, a: Compiled) -> Compiled:
        """``!x``."""
        if a.type != "bool":
            raise Unsupported("! on non-bool")

        def run(c: Columns) -> tuple[Values, Err]:
            v, e = a.run(c)
            return np.logical_not(v), e

        return Compiled("bool", run)

    def ternary(self, cond: Compiled, yes: Compiled, no: Compiled) -> Compiled:
        """``c ? a : b``."""
        if cond.type != "bool" or yes.type != no.type or yes.type == "dyn":
            raise Unsupported("conditional")

        def run(c: Columns) -> tuple[Values, Err]:
            vc, ec = cond.run(c)
            vy, ey = yes.run(c)
            vn, en = no.run(c)
            pick = _as_bool_array(vc, c.n)
            values = np.where(pick, vy, vn)
            err = None
            if ey is not None or en is not None:
                err = np.where(
                    pick,
                    np.zeros(c.n, bool) if ey is None else ey,
                    np.zeros(c.n, bool) if en is None else en,
                )
            return values, _err(ec, err)

        return Compiled(yes.type, run)

    def equality(self, f: str, a: Compiled, b: Compiled) -> Compiled:
        """``==`` / ``!=``, typed, or dyn against a literal (CEL heterogeneous equality)."""
        negate = f == "_!=_"
        if a.type == "dyn" or b.type == "dyn":
            if a.type == "dyn" and b.is_const:
                dyn, lit = a, b.const
            elif b.type == "dyn" and a.is_const:
                dyn, lit = b, a.const
            else:
                raise Unsupported("dyn equality")

            def run_dyn(c: Columns) -> tuple[Values, Err]:
                values, err = dyn.run(c)
                eq = np.fromiter((cel_equal(v, lit) for v in values), bool, c.n)
                return (~eq if negate else eq), err

            return Compiled("bool", run_dyn)
        if a.type != b.type:
            raise Unsupported("mixed equality")
        op = np.not_equal if negate else np.equal

        def run(c: Columns) -> tuple[Values, Err]:
            va, ea = a.run(c)
            vb, eb = b.run(c)
            return np.asarray(op(va, vb), dtype=bool), _err(ea, eb)

        return Compiled("bool", run)

    def order(self, f: str, a: Compiled, b: Compiled) -> Compiled:
        """``< <= > >=`` on doubles, ints, text; dyn against a number literal."""
        if a.type == "dyn" or b.type == "dyn":
            if a.type == "dyn" and b.is_const and _is_number(b.const):
                dyn, lit, flip = a, b.const, False
            elif b.type == "dyn" and a.is_const and _is_number(a.const):
                dyn, lit, flip = b, a.const, True
            else:
                raise Unsupported("dyn ordering")
            cmp = _ORDER_PY[f]

            def run_dyn(c: Columns) -> tuple[Values, Err]:
                values, err = dyn.run(c)
                ok = np.fromiter((_is_number(v) for v in values), bool, c.n)
                out = np.fromiter(
                    (
                        _is_number(v) and (cmp(lit, v) if flip else cmp(v, lit))
                        for v in values
                    ),
                    bool,
                    c.n,
                )
                return out, _err(err, ~ok)

            return Compiled("bool", run_dyn)
        if a.type != b.type or a.type not in ("double", "int", "text"):
            raise Unsupported("mixed ordering")
        op = _ORDER[f]

        def run(c: Columns) -> tuple[Values, Err]:
            va, ea = a.run(c)
            vb, eb = b.run(c)
            return np.asarray(op(va, vb), dtype=bool), _err(ea, eb)

        return Compiled("bool", run)

    def arith(self, f: str, a: Compiled, b: Compiled) -> Compiled:
        """``+ - * /`` on doubles; ``+ - *`` on ints (int64, overflow not detected)."""
        if a.type != b.type or a.type not in ("double", "int"):
            raise Unsupported("arithmetic types")
        if a.type == "int" and f == "_/_":
            raise Unsupported("integer division")
        op = _ARITH[f]

        def run(c: Columns) -> tuple[Values, Err]:
            va, ea = a.run(c)
            vb, eb = b.run(c)
            with np.errstate(all="ignore"):
                return op(va, vb), _err(ea, eb)

        return Compiled(a.type, run)

    def minus(self, a: Compiled) -> Compiled:
        """Unary ``-``."""
        if a.type not in ("double", "int"):
            raise Unsupported("negation")

        def run(c: Columns) -> tuple[Values, Err]:
            v, e = a.run(c)
            return np.negative(v), e

        return Compiled(a.type, run)

    def member(self, left: Node, right: Node) -> Compiled:
        """``x in [literals]`` and ``x in lists.name``."""
        lhs = self.node(left)
        if isinstance(right, Select) and isinstance(right.operand, Ident) and (
            right.operand.name == "lists" and not right.test_only
        ):
            name = right.field
            if lhs.type not in ("text", "dyn"):
                raise Unsupported("list membership of a non-text value")

            def run_list(c: Columns) -> tuple[Values, Err]:
                values, err = lhs.run(c)
                if not isinstance(values, np.ndarray):
                    values = np.full(c.n, values, dtype=object)
                return c.members(name, lhs.key, values), err

            return Compiled("bool", run_list)
        if isinstance(right, ListLit):
            if not all(isinstance(e, Const) for e in right.elements):
                raise Unsupported("list literal with non-literal elements")
            consts = [self.node(e) for e in right.elements]
            literals = [k.const for k in consts]
            if lhs.type == "dyn":

                def run_dyn(c: Columns) -> tuple[Values, Err]:
                    values, err = lhs.run(c)
                    out = np.fromiter(
                        (any(cel_equal(v, x) for x in literals) for v in values), bool, c.n
                    )
                    return out, err

                return Compiled("bool", run_dyn)
            if any(k.type != lhs.type for k in consts) or lhs.type == "bool":
                raise Unsupported("mixed list literal")
            if lhs.type == "double" and any(isinstance(x, float) and math.isnan(x)
                                            for x in literals):
                raise Unsupported("NaN in a list literal")
            table = frozenset(literals)

            def run(c: Columns) -> tuple[Values, Err]:
                values, err = lhs.run(c)
                if not isinstance(values, np.ndarray):
                    return values in table, err
                if lhs.type == "text":
                    return np.fromiter((v in table for v in values), bool, c.n), err
                return np.isin(values, list(table)), err

            return Compiled("bool", run)
        raise Unsupported("membership")

    def text_test(self, f: str, target: Compiled, args: tuple[Node, ...]) -> Compiled:
        """``s.startsWith('x')``, ``s.endsWith('x')``, ``s.contains('x')``."""
        if target.type != "text" or len(args) != 1:
            raise Unsupported(f)
        arg = self.node(args[0])
        if not (arg.is_const and arg.type == "text"):
            raise Unsupported(f"{f} with a non-literal argument")
        lit = str(arg.const)
        method = {"startsWith": str.startswith, "endsWith": str.endswith,
                  "contains": str.__contains__}[f]  # fmt: skip

        def run(c: Columns) -> tuple[Values, Err]:
            values, err = target.run(c)
            if not isinstance(values, np.ndarray):
                return method(values, lit), err
            return np.fromiter((method(v, lit) for v in values), bool, c.n), err

        return Compiled("bool", run)

    def size(self, a: Compiled) -> Compiled:
        """``size(s)`` of text, in code points."""
        if a.type != "text" or a.is_const:
            raise Unsupported("size")

        def run(c: Columns) -> tuple[Values, Err]:
            values, err = a.run(c)
            return np.fromiter((len(v) for v in values), np.int64, c.n), err

        return Compiled("int", run)

    def convert(self, f: str, a: Compiled) -> Compiled:
        """``double(int)``; ``int(double)`` (toward zero; NaN, infinities, overflow are errors)."""
        if f == "double" and a.type in ("int", "double"):

            def run_double(c: Columns) -> tuple[Values, Err]:
                v, e = a.run(c)
                return np.asarray(v, dtype=np.float64), e

            return Compiled("double", run_double)
        if f == "int" and a.type == "double":

            def run_int(c: Columns) -> tuple[Values, Err]:
                v, e = a.run(c)
                v = np.asarray(v, dtype=np.float64)
                bad = ~np.isfinite(v) | (v <= -(2.0**63)) | (v >= 2.0**63)
                with np.errstate(all="ignore"):
                    out = np.where(bad, 0.0, np.trunc(v)).astype(np.int64)
                bad = np.broadcast_to(bad, (c.n,))
                return out, _err(e, bad if bad.any() else None)

            return Compiled("int", run_int)
        if f == "int" and a.type == "int":
            return a
        raise Unsupported(f"{f}() of {a.type}")
