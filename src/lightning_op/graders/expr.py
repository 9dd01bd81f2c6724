"""A safe arithmetic evaluator for a ``multi`` grader's ``calculate_output`` formula.

The formula is parsed with :mod:`ast` and checked node by node when the spec is loaded; only these are
allowed: numbers, the names of the sub-graders, ``+ - * / **`` (and ``^``, which OpenAI's grader
formulas use for power), unary ``+ -``, comparisons, ``and``/``or``/``not``, ``a if cond else b``,
parentheses, and calls of ``min max abs round floor ceil sqrt exp log`` with positional arguments.
Anything else (attributes, subscripts, strings, lambdas, other calls, keyword arguments) is rejected
with a message saying what and where. Nothing is ever passed to ``eval``: evaluation walks the checked
tree, in floats, so ``10 ** 10 ** 10`` raises ``OverflowError`` at once instead of computing a huge int.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

MAX_FORMULA_CHARS = 2000
MAX_NODES = 500


class FormulaError(ValueError):
    """A formula that is not allowed; the message says which part."""


def _round(x: float, ndigits: float = 0) -> float:
    return float(round(x, int(ndigits)))


FUNCTIONS: Mapping[str, Callable[..., float]] = {
    "min": lambda *a: float(min(a)),
    "max": lambda *a: float(max(a)),
    "abs": lambda x: float(abs(x)),
    "round": _round,
    "floor": lambda x: float(math.floor(x)),
    "ceil": lambda x: float(math.ceil(x)),
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
}
_ARITY: Mapping[str, tuple[int, int]] = {
    "min": (1, 64),
    "max": (1, 64),
    "abs": (1, 1),
    "round": (1, 2),
    "floor": (1, 1),
    "ceil": (1, 1),
    "sqrt": (1, 1),
    "exp": (1, 1),
    "log": (1, 2),
}
_BINOPS: Mapping[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: math.pow,  # also ``^``, which OpenAI's formulas write for power (rewritten when parsed)
}
_CMPOPS: Mapping[type[ast.cmpop], Callable[[float, float], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


def _where(node: ast.AST) -> str:
    col = getattr(node, "col_offset", None)
    return f" at column {col + 1}" if isinstance(col, int) else ""


def _check(node: ast.AST, names: frozenset[str]) -> None:
    if isinstance(node, ast.Expression):
        _check(node.body, names)
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError(f"only numbers are allowed as constants, not {node.value!r}{_where(node)}")
    elif isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(sorted(names)) or "none"
            raise FormulaError(f"name {node.id!r} is not a grader (graders: {known}){_where(node)}")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            raise FormulaError(f"operator {type(node.op).__name__} is not allowed{_where(node)}")
        _check(node.left, names)
        _check(node.right, names)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.UAdd | ast.USub | ast.Not):
            raise FormulaError(f"operator {type(node.op).__name__} is not allowed{_where(node)}")
        _check(node.operand, names)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, names)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _CMPOPS:
                raise FormulaError(f"comparison {type(op).__name__} is not allowed{_where(node)}")
        _check(node.left, names)
        for comparator in node.comparators:
            _check(comparator, names)
    elif isinstance(node, ast.IfExp):
        _check(node.test, names)
        _check(node.body, names)
        _check(node.orelse, names)
    elif isinstance(node, ast.Call):
        func = node.func
        if not isinstance(func, ast.Name) or func.id not in FUNCTIONS:
            shown = func.id if isinstance(func, ast.Name) else ast.unparse(func)
            raise FormulaError(
                f"function {shown!r} is not allowed (allowed: {', '.join(FUNCTIONS)}){_where(node)}"
            )
        if node.keywords:
            raise FormulaError(f"{func.id}() takes no keyword arguments{_where(node)}")
        low, high = _ARITY[func.id]
        if not low <= len(node.args) <= high:
            raise FormulaError(
                f"{func.id}() takes {low}..{high} arguments, got {len(node.args)}{_where(node)}"
            )
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise FormulaError(f"*arguments are not allowed{_where(arg)}")
            _check(arg, names)
    else:
        raise FormulaError(f"{type(node).__name__} is not allowed in a formula{_where(node)}")


@dataclass(frozen=True)
class Formula:
    """A checked formula over named values."""

    source: str
    tree: ast.Expression
    names: frozenset[str]

    def evaluate(self, values: Mapping[str, float]) -> float:
        """Evaluate with ``values`` for the names; raises ArithmeticError/ValueError on bad math."""
        return float(_eval(self.tree.body, values))

    def used_names(self) -> set[str]:
        return {n.id for n in ast.walk(self.tree) if isinstance(n, ast.Name) and n.id not in FUNCTIONS}


def compile_formula(source: str, names: Iterable[str]) -> Formula:
    """Parse and check ``source``; raises :class:`FormulaError` naming what is not allowed."""
    allowed = frozenset(names)
    if len(source) > MAX_FORMULA_CHARS:
        raise FormulaError(f"formula is {len(source)} characters, limit {MAX_FORMULA_CHARS}")
    try:
        # ``^`` is power in OpenAI's formulas: parsed as Python's XOR it would bind looser than ``+``
        # and ``*`` (``2 * a ^ 2`` as ``(2 * a) ^ 2``); as ``**`` it has power's precedence and right
        # associativity. No string can hold a ``^`` (strings are refused), so this touches operators only.
        tree = ast.parse(source.strip().replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"invalid syntax at column {exc.offset or 0}: {source!r}") from None
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_NODES:
        raise FormulaError(f"formula has {count} parts, limit {MAX_NODES}")
    _check(tree, allowed)
    return Formula(source, tree, allowed)


def _eval(node: ast.expr, values: Mapping[str, float]) -> float | bool:
    if isinstance(node, ast.Constant):
        return float(node.value)  # type: ignore[arg-type]  # _check allowed only int/float constants
    if isinstance(node, ast.Name):
        return float(values[node.id])
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](float(_eval(node.left, values)), float(_eval(node.right, values)))
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, values)
        if isinstance(node.op, ast.Not):
            return not operand
        return -float(operand) if isinstance(node.op, ast.USub) else float(operand)
    if isinstance(node, ast.BoolOp):
        result: float | bool = False
        for value in node.values:
            result = _eval(value, values)
            if isinstance(node.op, ast.And) and not result:
                return result
            if isinstance(node.op, ast.Or) and result:
                return result
        return result
    if isinstance(node, ast.Compare):
        left = float(_eval(node.left, values))
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = float(_eval(comparator, values))
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body, values) if _eval(node.test, values) else _eval(node.orelse, values)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = [float(_eval(arg, values)) for arg in node.args]
        return FUNCTIONS[node.func.id](*args)
    raise FormulaError(f"{type(node).__name__} is not allowed in a formula")  # unreachable after _check
