"""Formulas: parse text into a `Graph` (printing a graph back is `primitives.printer`).

Parsing walks Python's `ast` (eval mode) through a whitelist: nothing in the
text is ever executed.
"""
from __future__ import annotations

import ast
import math

from .errors import FormulaError, GraphError
from .graph import Graph, GraphBuilder
from .ops import FUNCTIONS, LEARNABLE_VECTORS

MAX_LENGTH = 10_000
MAX_NESTING = 100

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div"}


def parse(text: str) -> Graph:
    """Parse a formula in `x` into a canonical graph; raises only `FormulaError`."""
    if not isinstance(text, str):
        raise FormulaError(f"a formula is text, got {type(text).__name__}")
    if not text.strip():
        raise FormulaError("empty formula")
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"formula longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise FormulaError(f"syntax error: {err.msg}", err.offset) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as err:
        raise FormulaError(f"formula cannot be read: {type(err).__name__}") from None
    builder = GraphBuilder()
    try:
        output = _Walker(builder).visit(tree.body, 0)
        return builder.build(output)
    except GraphError as err:
        raise FormulaError(str(err)) from None
    except RecursionError:
        raise FormulaError("formula is nested too deeply") from None


class _Walker:
    def __init__(self, builder: GraphBuilder):
        self.b = builder

    def visit(self, node: ast.AST, depth: int) -> int:
        if depth > MAX_NESTING:
            raise FormulaError(f"formula is nested more than {MAX_NESTING} deep", _col(node))
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise FormulaError(f"{_describe(node)} is not part of the formula language", _col(node))
        try:
            return method(node, depth + 1)
        except GraphError as err:
            raise FormulaError(str(err), _col(node)) from None

    def visit_Name(self, node, depth):
        if node.id == "x":
            return self.b.add("x")
        if node.id in LEARNABLE_VECTORS:
            return self.b.add("param", name=node.id)
        if node.id in FUNCTIONS:
            raise FormulaError(f"{node.id} is a function: call it as {node.id}(...)", _col(node))
        raise FormulaError(f"unknown name {node.id!r}", _col(node))

    def visit_Constant(self, node, depth):
        return self.b.add("const", value=_number(node, "a literal"))

    def visit_BinOp(self, node, depth):
        if isinstance(node.op, ast.Pow):
            exponent = node.right
            k = exponent.value if isinstance(exponent, ast.Constant) else None
            if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 9:
                raise FormulaError("the exponent of ** must be an integer literal from 2 to 9",
                                   _col(exponent))
            return self.b.add("pow", [self.visit(node.left, depth)], k=k)
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise FormulaError(f"operator {type(node.op).__name__} is not part of the formula language",
                               _col(node))
        return self.b.add(op, [self.visit(node.left, depth), self.visit(node.right, depth)])

    def visit_UnaryOp(self, node, depth):
        if not isinstance(node.op, ast.USub):
            raise FormulaError(f"unary {type(node.op).__name__} is not part of the formula language",
                               _col(node))
        return self.b.add("neg", [self.visit(node.operand, depth)])

    def visit_Call(self, node, depth):
        if not isinstance(node.func, ast.Name):
            raise FormulaError(f"only named functions can be called, not {_describe(node.func)}",
                               _col(node.func))
        name = node.func.id
        op = FUNCTIONS.get(name)
        if op is None:
            raise FormulaError(f"unknown function {name!r}", _col(node.func))
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise FormulaError(f"{name}: * and ** arguments are not part of the formula language", _col(node))
        positional = op.arity + bool(op.literal)   # `scalar(0.5)`: a leaf called on its literal
        if len(node.args) != positional:
            raise FormulaError(f"{name} takes {positional} argument(s), got {len(node.args)}", _col(node))
        attrs = {}
        if op.literal:
            attrs[op.literal] = _number(node.args[0], f"the {op.literal} of {name}")
        for kw in node.keywords:
            if kw.arg not in op.keywords:
                allowed = ", ".join(op.keywords) or "none"
                raise FormulaError(f"{name} has no keyword {kw.arg!r} (allowed: {allowed})", _col(kw.value))
            if kw.arg in attrs:
                raise FormulaError(f"{name}: keyword {kw.arg!r} given twice", _col(kw.value))
            value = _number(kw.value, f"keyword {kw.arg}")
            problem = op.keywords[kw.arg].check(value)
            if problem:
                raise FormulaError(f"{name}: {kw.arg} {problem}, got {value!r}", _col(kw.value))
            attrs[kw.arg] = value
        inputs = [self.visit(arg, depth) for arg in node.args[bool(op.literal):]]
        return self.b.add(op.name, inputs, **attrs)


def _number(node: ast.AST, what: str) -> float | int:
    """A numeric literal, optionally negated; anything else is an error."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
    value = node.value if isinstance(node, ast.Constant) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FormulaError(f"{what} must be a real number literal, not {_describe(node)}", _col(node))
    if isinstance(value, int) and abs(value) > 2**53:
        raise FormulaError(f"{what} is too large", _col(node))
    if not math.isfinite(value):
        raise FormulaError(f"{what} must be finite", _col(node))
    return sign * value


def _col(node: ast.AST) -> int | None:
    offset = getattr(node, "col_offset", None)
    return None if offset is None else offset + 1


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Constant):
        return f"the literal {node.value!r}"[:60]
    return {
        "Attribute": "attribute access", "Subscript": "subscripting", "Lambda": "a lambda",
        "Compare": "a comparison", "BoolOp": "a boolean operator", "IfExp": "a conditional",
        "ListComp": "a comprehension", "GeneratorExp": "a comprehension", "SetComp": "a comprehension",
        "DictComp": "a comprehension", "NamedExpr": "an assignment", "Starred": "unpacking",
        "Tuple": "a tuple", "List": "a list", "Dict": "a dict", "Set": "a set",
        "JoinedStr": "an f-string", "Await": "await", "Yield": "yield", "Slice": "a slice",
    }.get(type(node).__name__, type(node).__name__)
