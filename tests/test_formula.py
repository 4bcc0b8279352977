"""Parsing and printing formulas: round trips, hostile input, error columns."""
import os

import pytest

from primitives import FormulaError, parse
from primitives.printer import format_number
from primitives.library import REFERENCE_LAYERS

CONTRACT_EXAMPLES = [
    "relu((x - batch_mean(x)) / batch_std(x) * gamma + beta)",
    "x / max(batch_std(x, eps=1e-3), v1 * x + instance_std(x, eps=1e-3)) * gamma + beta",
    "x * sigmoid(v1 * x) / group_std(x, groups=32) * gamma + beta",
]


@pytest.mark.parametrize("formula", CONTRACT_EXAMPLES + list(REFERENCE_LAYERS.values()))
def test_print_then_parse_keeps_the_graph(formula):
    graph = parse(formula)
    again = parse(str(graph))
    assert again.hash == graph.hash
    assert str(again) == str(graph)


def test_printing_uses_minimal_parentheses():
    assert str(parse("((x) * (gamma)) + (beta)")) == "x * gamma + beta"
    assert str(parse("x - (x - 1)")) == "x - (x - 1)"
    assert str(parse("(x - 1) - x")) == "x - 1 - x"
    assert str(parse("-(x ** 2)")) == "-x ** 2"
    assert str(parse("(-x) ** 2")) == "(-x) ** 2"
    assert str(parse("x / (x * v1)")) == "x / (x * v1)"
    assert str(parse("x * gamma / v1")) == "x * gamma / v1"
    assert str(parse("x * (gamma / v1)")) == "x * (gamma / v1)"


def test_defaults_are_not_printed_and_other_keywords_are():
    assert str(parse("group_std(x, groups=32, eps=1e-5)")) == "group_std(x)"
    assert str(parse("group_std(x, eps=0.001, groups=8)")) == "group_std(x, eps=1e-3, groups=8)"
    assert parse("batch_std(x)").hash == parse("batch_std(x, eps=1e-5)").hash


def test_constants_fold_and_negative_literals_print():
    assert str(parse("2 * 3 * x")) == "6 * x"
    assert str(parse("x * -2")) == "-2 * x"
    assert str(parse("x + exp(0)")) == "x + 1"
    with pytest.raises(FormulaError, match="not finite"):
        parse("x * log(0)")


def test_common_subexpressions_are_merged():
    g = parse("(x - batch_mean(x)) * (x - batch_mean(x))")
    assert len(g) == 4  # x, batch_mean, sub, mul
    assert sum(node.op == "sub" for node in g.nodes) == 1


@pytest.mark.parametrize("value", [1e-5, 1e-3, 0.1, 0.5, 1 / 3, 2.0, -7.25, 123456.789, 1e-12, 6.02e23])
def test_format_number_round_trips(value):
    assert float(format_number(value)) == value


HOSTILE = [
    "", "   ", "x +", "(x", "x)", "x ** ", "relu(x", "1 +* x",            # syntax
    "y", "z * x", "alpha * x", "v10 * x", "Gamma * x", "X",               # unknown names
    "x.real", "x.__class__", "gamma.data", "().__class__.__bases__",       # attribute access
    "__import__('os').system('touch pwned')", "open('pwned', 'w')",       # builtins
    "eval(\"open('pwned', 'w')\")", "exec(\"open('pwned', 'w')\")",
    "x * open('pwned', 'w').write('1')", "relu(__import__('pathlib').Path('pwned').touch())", "print(x)", "getattr(x, 'abs')", "compile('1', '', 'eval')",
    "lambda: x", "(lambda x: x)(x)",                                       # lambdas
    "x[0]", "x[:, 0]",                                                     # subscripts
    "[x for x in range(3)]", "sum(v for v in [x])", "{x: 1}",              # comprehensions, dicts
    "x < 1", "x == x", "x and x", "x if x else x", "not x",                # comparisons, logic
    "x ** 1.5", "x ** 10", "x ** 1", "x ** -2", "x ** x", "x ** True",     # powers
    "batch_std(x, eps=0)", "batch_std(x, eps=-1)", "group_std(x, groups=2.5)",
    "batch_std(x, epsilon=1e-3)", "relu(x, eps=1)", "poly(x, order=0)", "rational(x, q=99)",
    "batch_std(x, eps=x)", "group_std(x, groups=4, groups=8)",             # bad keywords
    "x * 1e999", "x + 1e400", "x * True", "x * 'a'", "x * b'a'", "x * 1j", "x * None",
    "relu()", "relu(x, x)", "max(x)", "relu(*[x])", "relu(**{})",          # arity
    "relu", "x @ x", "x // 2", "x % 2", "x << 1", "+x", "~x",
    "x; import os", "x\nimport os", "(x := 1)", "f'{x}'", "await x",
    "(" * 300 + "x" + ")" * 300, "-" * 500 + "x", "relu(" * 200 + "x" + ")" * 200,
    "x" + " + x" * 3000, "v1",  "gamma * beta", "2 + 3", "x * 10**400", "x\x00",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_formulas_raise_formula_error_and_run_nothing(text, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # payloads below would write files here if anything ran
    with pytest.raises(FormulaError) as info:
        parse(text)
    assert isinstance(info.value, ValueError)
    assert str(info.value)
    assert not os.listdir(tmp_path)


def test_hostile_list_is_large():
    assert len(HOSTILE) >= 40


def test_error_names_the_piece_and_its_column():
    with pytest.raises(FormulaError) as info:
        parse("x + foo(x)")
    assert info.value.column == 5 and "foo" in str(info.value)
    with pytest.raises(FormulaError) as info:
        parse("relu(x) * x.real")
    assert info.value.column == 11 and "attribute" in str(info.value)
    with pytest.raises(FormulaError) as info:
        parse("x ** 11")
    assert info.value.column == 6


def test_non_text_is_a_formula_error():
    with pytest.raises(FormulaError):
        parse(None)
    with pytest.raises(FormulaError):
        parse(42)
