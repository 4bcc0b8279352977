"""The `evonorm` command line: one subcommand per module in `search.commands`.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`, and
imports heavy libraries (torch, ray, matplotlib) inside `run`, so that
`evonorm --help` and the light commands start fast.
Bad input raises `UsageError`; it becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from search.files import UnwritableError

# name -> (module under search.commands, one-line help)
COMMANDS = {
    "check": ("check", "parse a formula and describe the compiled layer"),
    "eval": ("eval_cmd", "train and score one layer next to the baselines"),
    "search": ("search_cmd", "run an evolutionary search"),
    "resume": ("resume", "resume a killed search from its run directory"),
    "front": ("front", "print the Pareto front of a run"),
    "show": ("show", "show one candidate: formula, scores, lineage"),
    "export": ("export", "export a layer as a standalone torch module"),
    "plot": ("plot", "plot a run: fronts, progress, rejection funnel"),
    "retrain": ("retrain", "retrain the best front layers with tuned learning rates"),
    "to-optuna": ("to_optuna", "convert a run into an Optuna study"),
}


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evonorm", description="Evolve normalization-activation layers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(f"search.commands.{module}") is None:
            continue  # not built yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        _load(module).add_arguments(p)
    return parser


def _load(module: str):
    return importlib.import_module(f"search.commands.{module}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(_load(args._module).run(args) or 0)
    except (UsageError, UnwritableError) as err:  # an output that cannot be written is bad input too
        print(f"evonorm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evonorm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `evonorm front DIR | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    # `python -m search.cli`: run the imported module, so UsageError is one class.
    from search.cli import main as _main
    sys.exit(_main())
