"""The two ways a layer description can be wrong: as text, or as a graph."""


class FormulaError(ValueError):
    """A formula outside the grammar. `column` is 1-based (None when unknown)."""

    def __init__(self, message: str, column: int | None = None):
        self.column = column
        super().__init__(f"{message} (column {column})" if column else message)


class GraphError(ValueError):
    """A graph that breaks the rules: cycles, unknown ops, wrong arity, no path from x."""
