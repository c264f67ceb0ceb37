"""Compile a rule once, when it arrives: check it with the CEL library, then vectorise it.

Library choice (compared in October 2026, Python 3.11, this 2-core machine):

- ``cel-expr-python`` (chosen): Google's own CEL runtime, the C++ implementation
  (cel-cpp) that production systems use, wrapped by the CEL project itself
  (github.com/cel-expr/cel-python, Apache-2.0). It **type-checks** against
  declared variables, so an unknown name, a misspelt feature or comparing text
  with a number is refused when the rule arrives, with the position of the
  mistake; it follows the cel-spec conformance suite; ~20 µs per evaluation
  from Python; it exposes the checked syntax tree (``serialize()``), which
  :mod:`rules.vector` compiles to numpy. Young (0.1.x), so the version is pinned
  to a minor range.
- ``common-expression-language`` (Rust ``cel`` crate bindings): also ~20 µs per
  evaluation, but no type checker (unknown names show up only at run time) and
  its own compliance page lists gaps (e.g. ``||`` returning non-booleans); no
  syntax tree to vectorise.
- ``cel-python`` (cloud-custodian, pure Python on lark): a readable parse tree,
  but ~1.5 ms per evaluation (75x slower) and no type checker.
- ``simpleeval`` / ``asteval``: Python-syntax evaluators, not a standard that
  analysts share with other systems, with a history of sandbox escapes; no.

CEL itself is non-Turing-complete and side-effect free: a rule cannot read
files or call out, and every evaluation ends. It is **not** cheap by
construction: comprehensions (``exists``, ``all``, ``map``, ``filter``) over list
literals nest, and the library only stops one evaluation after 10,000 iterations
(a 2,611-character rule of nested ``map`` with string concatenation costs about
40 ms per transaction, allocating a string per iteration). So a compiled rule is
also judged by its cost (:mod:`rules.cost`: a static loop bound and a
measurement on a reference batch) and refused above the budget
(``rule_too_costly``); the stream guards it again (:mod:`rules.guard`). A rule
that fails here is a :class:`Refusal` (the flow dead-letters it with the
reason), never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from rules.celast import Call, Const, Ident, Node, Opaque, Select, checked_tree, walk
from rules.contracts import Rule
from rules.cost import DEFAULT_BUDGET, CostBudget, RuleCost, judge
from rules.errors import RuleCompileError
from rules.names import Vocabulary
from rules.vector import Columns, Compiler, Unsupported

RefusalClass = Literal["rule_invalid", "rule_compile", "rule_conflict", "list_invalid",
                       "rule_too_costly", "too_many_rules", "list_full"]
FastPath = Callable[[Columns], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Refusal:
    """Why a rule or list message was not applied: a stable class and analyst words."""

    error_class: RefusalClass
    reason: str


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to evaluate: the library program, its tree, and the fast path if any."""

    rule: Rule
    program: Any = field(repr=False)  # cel_expr_python.cel.Expression
    tree: Node = field(repr=False)
    fast: FastPath | None = field(repr=False)
    #: Why the fast path does not cover the rule (it runs row by row in the library).
    fallback_reason: str | None
    #: Bare variables the tree names, or None when hidden parts (comprehensions) may name more.
    variables: frozenset[str] | None
    #: Per list name, the operands tested against it (``x`` of ``x in lists.name``).
    list_operands: Mapping[str, tuple[Node, ...]]
    #: What it costs per transaction (measured when compiled; None: not measured).
    cost: RuleCost | None = None


_HINT_NUMBERS = re.compile(r"applied to '\((double, int|int, double)\)'")


def _clean(message: str) -> str:
    text = message.replace("INVALID_ARGUMENT: ", "").replace(" [INVALID_ARGUMENT]", "")
    text = text.replace("ERROR: <input>:", "at ").strip()
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if _HINT_NUMBERS.search(message):
        text += " (CEL does not mix int and double: write 3.0 instead of 3)"
    return text[:400]


def _lists_operand_ok(node: Node, vocab: Vocabulary) -> bool:
    if isinstance(node, Ident):
        return vocab.kinds.get(node.name) == "text"
    if isinstance(node, Const):
        return node.kind == "string"
    if isinstance(node, Select):
        return (
            isinstance(node.operand, Ident) and node.operand.name == "attributes"
            and not node.test_only
        )  # fmt: skip
    if isinstance(node, Call) and node.function == "_[_]":
        target, index = node.args
        return (
            isinstance(target, Ident) and target.name == "attributes"
            and isinstance(index, Const) and index.kind == "string"
        )  # fmt: skip
    return False


def _is_list_ref(node: Node) -> bool:
    return (
        isinstance(node, Select) and isinstance(node.operand, Ident)
        and node.operand.name == "lists" and not node.test_only
    )  # fmt: skip


def check_tree(tree: Node, vocab: Vocabulary) -> tuple[dict[str, tuple[Node, ...]], str | None]:
    """``(list operands, problem)``: our rules on top of CEL's type check.

    ``lists`` only as ``<text field, attribute or text literal> in lists.<name>``;
    ``features`` only as ``features.<known feature>``.
    """
    operands: dict[str, list[Node]] = {}
    allowed_list_refs: set[int] = set()
    allowed_feature_refs: set[int] = set()
    nodes = walk(tree)
    for node in nodes:
        if isinstance(node, Call) and node.function == "@in" and _is_list_ref(node.args[1]):
            ref = node.args[1]
            assert isinstance(ref, Select)
            if not _lists_operand_ok(node.args[0], vocab):
                return {}, (
                    f"`... in lists.{ref.field}` needs a text field (card_id, ip, bin, ...), "
                    "an attribute or a text literal on its left"
                )
            operands.setdefault(ref.field, []).append(node.args[0])
            allowed_list_refs.add(id(ref.operand))
        feature = None
        if isinstance(node, Select) and isinstance(node.operand, Ident) and (
            node.operand.name == "features"
        ):
            feature, holder = node.field, node.operand
        elif isinstance(node, Call) and node.function == "_[_]" and isinstance(
            node.args[0], Ident
        ) and node.args[0].name == "features" and isinstance(node.args[1], Const):
            feature, holder = str(node.args[1].value), node.args[0]
        if feature is not None:
            if feature not in vocab.feature_index:
                return {}, (
                    f"unknown feature {feature!r}; the running feature spec has "
                    f"{len(vocab.feature_names)} features (see state/spec.py)"
                )
            allowed_feature_refs.add(id(holder))
    for node in nodes:
        if isinstance(node, Ident) and node.name == "lists" and id(node) not in allowed_list_refs:
            return {}, "use lists only as `<field> in lists.<name>`"
        if isinstance(node, Ident) and node.name == "features" and (
            id(node) not in allowed_feature_refs
        ):
            return {}, "use features only as `features.<name>`"
    return {k: tuple(v) for k, v in operands.items()}, None


class RuleCompiler:
    """Compiles rules against one vocabulary (one feature spec), within a cost budget.

    ``budget`` (default :class:`~rules.cost.CostBudget`): its ``row_us`` is the most a
    rule may cost per transaction; None compiles without measuring (offline backtests).
    """

    def __init__(self, vocab: Vocabulary, budget: CostBudget | None = DEFAULT_BUDGET) -> None:
        from cel_expr_python import cel

        self.vocab = vocab
        self.budget = budget
        self._bool = cel.Type.BOOL
        self._dyn = cel.Type.DYN
        self._env = cel.NewEnv(variables=vocab.cel_variables())
        self._vector = Compiler(vocab)

    def program(self, expression: str) -> Any:
        """The library's checked program; raises :class:`RuleCompileError` with the reason."""
        try:
            program = self._env.compile(expression)
        except RuntimeError as exc:
            raise RuleCompileError(_clean(str(exc))) from None
        result = program.return_type()
        if not (result == self._bool or result == self._dyn):
            raise RuleCompileError(
                f"the expression gives {result.name()}, a rule needs true or false "
                "(compare it, e.g. `score > 0.9`)"
            )
        return program

    def compile(self, rule: Rule) -> CompiledRule | Refusal:
        """Compile ``rule``; a :class:`Refusal` says why it cannot be used."""
        try:
            program = self.program(rule.expression)
            tree = checked_tree(program.serialize())
        except RuleCompileError as exc:
            return Refusal("rule_compile", f"rule {rule.id!r} v{rule.version}: {exc}")
        operands, problem = check_tree(tree, self.vocab)
        if problem is not None:
            return Refusal("rule_compile", f"rule {rule.id!r} v{rule.version}: {problem}")
        # Names are read through comprehensions too (binding only those makes a row-by-row
        # rule several times cheaper); a map literal, or `lists` inside a loop (whose
        # operands check_tree does not see), still hides what the rule may read.
        shallow = {id(n) for n in walk(tree)}
        nodes = walk(tree, loops=True)
        hidden = any(
            (isinstance(n, Opaque) and n.loop is None)
            or (isinstance(n, Ident) and n.name == "lists" and id(n) not in shallow)
            for n in nodes
        )
        names = frozenset(n.name for n in nodes if isinstance(n, Ident))
        try:
            fast: FastPath | None = self._vector.compile(tree)
            why = None
        except Unsupported as exc:
            fast, why = None, str(exc)
        compiled = CompiledRule(
            rule=rule, program=program, tree=tree, fast=fast, fallback_reason=why,
            variables=None if hidden else names, list_operands=operands,
        )  # fmt: skip
        if self.budget is None:
            return compiled
        cost, problem = judge(compiled, self.vocab, self.budget)
        if problem is not None:
            return Refusal("rule_too_costly", f"rule {rule.id!r} v{rule.version}: {problem}")
        return replace(compiled, cost=cost)
