"""Every error a user can cause derives from `EvonormError`, defined here at the bottom layer so
that the language, the evaluators and the search share it without importing upwards. Its
message is one line that names what to fix; the CLI prints it and exits with status 2.

The layer description's own two: wrong as text (`FormulaError`) or as a graph (`GraphError`).
"""


class EvonormError(Exception):
    """Bad input a person can fix; its message is one line that names what to fix."""


class FormulaError(EvonormError, ValueError):
    """A formula outside the grammar. `column` is 1-based (None when unknown)."""

    def __init__(self, message: str, column: int | None = None):
        self.column = column
        super().__init__(f"{message} (column {column})" if column else message)


class GraphError(EvonormError, ValueError):
    """A graph that breaks the rules: cycles, unknown ops, wrong arity, no path from x."""


class UnwritableError(EvonormError, OSError):
    """An output that cannot be written; the message names the path."""
