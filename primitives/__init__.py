"""The layer language: formulas, graphs, and the torch modules generated from them."""
from .codegen import compile_layer, export_layer, generate_source, layer_class
from .errors import FormulaError, GraphError
from .formula import parse
from .graph import Graph, GraphBuilder, Node
from .ops import OPS, get_op
from .printer import to_formula

__all__ = [
    "FormulaError", "Graph", "GraphBuilder", "GraphError", "Node", "OPS", "compile_layer",
    "export_layer", "generate_source", "get_op", "layer_class", "parse", "to_formula",
]
