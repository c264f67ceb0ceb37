"""The checked CEL syntax tree, read from the library's own compiled form.

``cel_expr_python`` (Google's CEL C++ runtime) parses, macro-expands and
type-checks an expression, and serialises the result as a ``cel.expr.CheckedExpr``
protocol buffer (cel-spec ``proto/cel/expr/checked.proto`` and ``syntax.proto``).
The package does not ship Python classes for those messages, so this module
declares the stable subset of their schema (field numbers are frozen by the spec)
to ``google.protobuf`` and converts the tree into small frozen dataclasses that
:mod:`rules.vector` compiles to numpy. Fields it does not declare (type map,
reference map, source info) are kept by protobuf as unknown fields and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from rules.errors import RuleCompileError

Scalar = bool | int | float | str | bytes | None


@dataclass(frozen=True, slots=True)
class Const:
    """A literal: ``True``, ``3`` (int), ``3.0`` (double), ``'ecom'``, ``b'..'`` or null."""

    value: Scalar
    kind: str  # "bool" | "int" | "uint" | "double" | "string" | "bytes" | "null"


@dataclass(frozen=True, slots=True)
class Ident:
    """A variable reference, e.g. ``amount``."""

    name: str


@dataclass(frozen=True, slots=True)
class Select:
    """``operand.field``; ``test_only`` is the ``has(operand.field)`` macro."""

    operand: Node
    field: str
    test_only: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """A function or operator: ``_&&_``, ``_>_``, ``@in``, ``startsWith`` (with ``target``)."""

    function: str
    args: tuple[Node, ...]
    target: Node | None = None


@dataclass(frozen=True, slots=True)
class ListLit:
    """``[a, b, c]``."""

    elements: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Loop:
    """The parts of a comprehension (cel-spec ``Expr.Comprehension``), for cost bounds.

    ``exists``/``all``/``exists_one``/``map``/``filter`` macro-expand to one: the
    loop runs over ``iter_range`` (a list, or a map's keys), starting from
    ``accu_init``, evaluating ``loop_condition`` and ``loop_step`` per element.
    """

    iter_var: str
    iter_range: Node
    accu_init: Node
    loop_condition: Node
    loop_step: Node
    result: Node


@dataclass(frozen=True, slots=True)
class Opaque:
    """Anything else (map or message literals, comprehensions from ``exists``/``all``...).

    A comprehension keeps its parts in ``loop`` (read by :mod:`rules.cost`); :func:`walk`
    does not enter them, so what a comprehension names stays hidden from the checks.
    """

    what: str
    loop: Loop | None = None


Node = Const | Ident | Select | Call | ListLit | Opaque


@cache
def _classes() -> tuple[Any, Any]:
    """``(Any, CheckedExpr)`` message classes, built once from a hand-declared descriptor."""
    from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(
        name="fraudstream/cel_expr_subset.proto", package="fraudstream.celexpr", syntax="proto3"
    )

    def message(parent: Any, name: str, fields: list[tuple[str, int, int, str, bool]]) -> Any:
        msg = parent.add(name=name)
        for fname, number, ftype, type_name, repeated in fields:
            field = msg.field.add(name=fname, number=number, type=ftype)
            field.label = f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL
            if type_name:
                field.type_name = type_name
        return msg

    p = ".fraudstream.celexpr."
    msg_t, str_t, bool_t, i64_t = f.TYPE_MESSAGE, f.TYPE_STRING, f.TYPE_BOOL, f.TYPE_INT64
    message(fd.message_type, "Constant", [
        ("null_value", 1, f.TYPE_INT32, "", False),
        ("bool_value", 2, bool_t, "", False),
        ("int64_value", 3, i64_t, "", False),
        ("uint64_value", 4, f.TYPE_UINT64, "", False),
        ("double_value", 5, f.TYPE_DOUBLE, "", False),
        ("string_value", 6, str_t, "", False),
        ("bytes_value", 7, f.TYPE_BYTES, "", False),
    ])  # fmt: skip
    constant = fd.message_type[0]
    oneof = constant.oneof_decl.add(name="constant_kind")
    for field in constant.field:
        field.oneof_index = 0
    del oneof
    expr = message(fd.message_type, "Expr", [
        ("id", 2, i64_t, "", False),
        ("const_expr", 3, msg_t, p + "Constant", False),
        ("ident_expr", 4, msg_t, p + "Expr.Ident", False),
        ("select_expr", 5, msg_t, p + "Expr.Select", False),
        ("call_expr", 6, msg_t, p + "Expr.Call", False),
        ("list_expr", 7, msg_t, p + "Expr.CreateList", False),
        ("struct_expr", 8, msg_t, p + "Expr.Opaque", False),
        ("comprehension_expr", 9, msg_t, p + "Expr.Comprehension", False),
    ])  # fmt: skip
    expr.oneof_decl.add(name="expr_kind")
    for field in expr.field[1:]:
        field.oneof_index = 0
    message(expr.nested_type, "Ident", [("name", 1, str_t, "", False)])
    message(expr.nested_type, "Select", [
        ("operand", 1, msg_t, p + "Expr", False),
        ("field", 2, str_t, "", False),
        ("test_only", 3, bool_t, "", False),
    ])  # fmt: skip
    message(expr.nested_type, "Call", [
        ("target", 1, msg_t, p + "Expr", False),
        ("function", 2, str_t, "", False),
        ("args", 3, msg_t, p + "Expr", True),
    ])  # fmt: skip
    message(expr.nested_type, "CreateList", [("elements", 1, msg_t, p + "Expr", True)])
    message(expr.nested_type, "Opaque", [])
    message(expr.nested_type, "Comprehension", [
        ("iter_var", 1, str_t, "", False),
        ("iter_range", 2, msg_t, p + "Expr", False),
        ("accu_var", 3, str_t, "", False),
        ("accu_init", 4, msg_t, p + "Expr", False),
        ("loop_condition", 5, msg_t, p + "Expr", False),
        ("loop_step", 6, msg_t, p + "Expr", False),
        ("result", 7, msg_t, p + "Expr", False),
    ])  # fmt: skip
    message(fd.message_type, "CheckedExpr", [("expr", 4, msg_t, p + "Expr", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    checked = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("fraudstream.celexpr.CheckedExpr")
    )
    return any_pb2.Any, checked


_CONST_KINDS = {
    "null_value": "null", "bool_value": "bool", "int64_value": "int", "uint64_value": "uint",
    "double_value": "double", "string_value": "string", "bytes_value": "bytes",
}  # fmt: skip


def _convert(expr: Any) -> Node:
    kind = expr.WhichOneof("expr_kind")
    if kind == "const_expr":
        which = expr.const_expr.WhichOneof("constant_kind")
        if which is None:  # a constant kind this subset does not declare (deprecated ones)
            return Opaque("constant")
        value = None if which == "null_value" else getattr(expr.const_expr, which)
        return Const(value, _CONST_KINDS[which])
    if kind == "ident_expr":
        return Ident(expr.ident_expr.name)
    if kind == "select_expr":
        s = expr.select_expr
        return Select(_convert(s.operand), s.field, s.test_only)
    if kind == "call_expr":
        c = expr.call_expr
        target = _convert(c.target) if c.HasField("target") else None
        return Call(c.function, tuple(_convert(a) for a in c.args), target)
    if kind == "list_expr":
        return ListLit(tuple(_convert(e) for e in expr.list_expr.elements))
    if kind == "struct_expr":
        return Opaque("map or message literal")
    if kind == "comprehension_expr":
        c = expr.comprehension_expr
        loop = Loop(c.iter_var, _convert(c.iter_range), _convert(c.accu_init),
                    _convert(c.loop_condition), _convert(c.loop_step), _convert(c.result))
        return Opaque("comprehension (all/exists/map/filter)", loop)
    return Opaque(str(kind))


def checked_tree(serialized: bytes) -> Node:
    """The syntax tree of ``cel.Expression.serialize()`` output (a ``CheckedExpr`` in an Any).

    Raises :class:`~rules.errors.RuleCompileError` if the bytes are not a checked expression.
    """
    from google.protobuf.message import DecodeError

    any_cls, checked_cls = _classes()
    wrapper = any_cls()
    try:
        wrapper.ParseFromString(serialized)
        if not wrapper.type_url.endswith("/cel.expr.CheckedExpr"):
            raise RuleCompileError(f"expected a cel.expr.CheckedExpr, got {wrapper.type_url!r}")
        checked = checked_cls()
        checked.ParseFromString(wrapper.value)
    except DecodeError as exc:
        raise RuleCompileError(f"cannot read the compiled expression: {exc}") from exc
    return _convert(checked.expr)


def walk(node: Node, *, loops: bool = False) -> list[Node]:
    """Every node of a tree, parents before children (pre-order).

    ``loops``: also the parts of comprehensions (:class:`Loop`), which are hidden otherwise.
    """
    out: list[Node] = []
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        out.append(current)
        if loops and isinstance(current, Opaque) and current.loop is not None:
            loop = current.loop
            stack.extend(reversed((loop.iter_range, loop.accu_init, loop.loop_condition,
                                   loop.loop_step, loop.result)))
        elif isinstance(current, Select):
            stack.append(current.operand)
        elif isinstance(current, Call):
            stack.extend(reversed(current.args))
            if current.target is not None:
                stack.append(current.target)
        elif isinstance(current, ListLit):
            stack.extend(reversed(current.elements))
    return out
