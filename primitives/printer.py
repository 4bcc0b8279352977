"""Printing: a graph back as a formula, with the fewest parentheses that parse back to the
same graph (`parse(str(g)).hash == g.hash`), operands in reading order, numbers in their
shortest exact form. It reads a graph's nodes and the op registry only, so `graph` imports it
and nothing here imports `graph` or the parser."""
from __future__ import annotations

from .ops import OPS

_ATOM = 5


def format_number(value: float) -> str:
    """The shortest text that reads back as exactly `value` (1e-3 rather than 0.001)."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    plain = repr(value)
    for digits in range(1, 18):
        text = f"{value:.{digits - 1}e}"
        if float(text) == value:
            mantissa, _, exponent = text.partition("e")
            scientific = f"{mantissa}e{int(exponent)}"
            return scientific if len(scientific) < len(plain) else plain
    return plain


def node_label(node) -> str:
    """How a drawing names one node: x, a vector's name, a number, an operator's symbol
    (`** k` for powers), or a function with the keywords that differ from its defaults."""
    spec = node.spec
    if node.op == "param":
        return node.attrs["name"]
    if node.op == "const":
        return format_number(node.attrs["value"])
    if node.op == "pow":
        return f"** {node.attrs['k']}"
    if spec.kind in ("infix", "prefix"):
        return spec.symbol
    parts = _literal(node) + _keywords(node)
    return f"{node.op}({', '.join(parts)})" if parts else node.op


def _literal(node) -> list[str]:
    """A leaf written as a call on its number (`scalar(0.5)`): that number; else nothing."""
    return [format_number(node.attrs[node.spec.literal])] if node.spec.literal else []


def _keywords(node) -> list[str]:
    """The keywords whose values differ from their defaults, as written."""
    return [f"{key}={format_number(float(node.attrs[key]))}" for key, kw in node.spec.keywords.items()
            if node.attrs.get(key, kw.default) != kw.default]


def is_number(node) -> bool:
    """A literal or a learnable number (`scalar(0.5)`): written first in a product."""
    return node.op == "const" or bool(node.spec.literal)


def reading_order(graph, node) -> list[int]:
    """A node's inputs in the order a reader expects: for commutative ops, numbers
    (literals and learnable scalars) first in a product, then a chain of the same op,
    then what depends on x, smaller terms first (`x * gamma + beta`). The order never
    changes the graph."""
    if not node.spec.commutative:
        return list(node.inputs)
    sizes, depends = graph.subtree_sizes, graph.depends_on_x

    def key(j):
        number_first = node.op == "mul" and is_number(graph.nodes[j])
        chain_first = graph.nodes[j].op == node.op  # a + b + c rather than c + (a + b)
        return (not number_first, not chain_first, not depends[j], sizes[j], j)

    return sorted(node.inputs, key=key)


def to_formula(graph) -> str:
    """Print with minimal parentheses, operands in reading order; equal
    subexpressions are written out each time."""
    texts: list[tuple[str, int]] = []  # (text, precedence) per node
    for node in graph.nodes:
        texts.append(_print_node(node, [texts[j] for j in reading_order(graph, node)]))
    return texts[graph.output][0]


def _print_node(node, args) -> tuple[str, int]:
    spec = OPS[node.op]
    if node.op == "x":
        return "x", _ATOM
    if node.op == "param":
        return node.attrs["name"], _ATOM
    if node.op == "const":
        value = node.attrs["value"]
        return format_number(value), (OPS["neg"].precedence if value < 0 else _ATOM)
    if spec.kind == "prefix":
        text, prec = args[0]
        if prec <= spec.precedence:  # -(-a) and -(a + b) keep their parentheses
            text = f"({text})"
        return f"{spec.symbol}{text}", spec.precedence
    if node.op == "pow":
        text, prec = args[0]
        if prec <= spec.precedence:
            text = f"({text})"
        return f"{text} ** {node.attrs['k']}", spec.precedence
    if spec.kind == "infix":
        (left, lp), (right, rp) = args
        if lp < spec.precedence:
            left = f"({left})"
        if rp <= spec.precedence:  # a - (b - c), a + (b + c): the tree is left-leaning
            right = f"({right})"
        return f"{left} {spec.symbol} {right}", spec.precedence
    parts = _literal(node) + [text for text, _ in args] + _keywords(node)
    return f"{node.op}({', '.join(parts)})", _ATOM
