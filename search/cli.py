"""The `evonorm` command line: one subcommand per module in `search.commands`.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`, and
imports heavy libraries (torch, ray, matplotlib) inside `run`, so that
`evonorm --help` and the light commands start fast. A command is a thin layer over
the library (`search.session`, `search.analysis`, `search.store`): it imports neither
another command nor this module.
Bad input raises one of the `search.errors` types (`UsageError` for a flag, the
library's own for a config, a run directory or an output); each becomes one line on
stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from search.errors import EvonormError, UsageError

# name -> (module under search.commands, one-line help)
COMMANDS = {
    "check": ("check", "parse a formula and describe the compiled layer"),
    "eval": ("eval_cmd", "train and score one layer next to the baselines"),
    "search": ("search_cmd", "run an evolutionary search"),
    "resume": ("resume", "resume a killed search from its run directory"),
    "front": ("front", "print the Pareto front of a run"),
    "show": ("show", "show one candidate (formula, scores, lineage) or a run's accounting"),
    "export": ("export", "export a layer as a standalone torch module"),
    "plot": ("plot", "plot a run: fronts, progress, rejection funnel"),
    "retrain": ("retrain", "retrain the best front layers with tuned learning rates"),
    "to-optuna": ("to_optuna", "convert a run into an Optuna study"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evonorm", description="Evolve normalization-activation layers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
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
    except EvonormError as err:  # a flag, a config, a run directory, an output: bad input
        print(f"evonorm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evonorm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `evonorm front DIR | head`
        sys.stderr.close()
        return 0


__all__ = ["COMMANDS", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
