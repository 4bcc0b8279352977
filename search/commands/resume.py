"""`evonorm resume DIR`: continue a killed or interrupted search from its run directory.

The configuration comes from DIR/run.json; where it runs (executor, address,
workers) may be changed, and the budget raised. The population is rebuilt from
the records (the last P `ok` ones in id order), the screen's memory from all of
them, ids continue after the highest recorded one, and each new candidate's RNG
is derived from (seed, id), as in a fresh run.
"""
from __future__ import annotations

import json
import os

from search.cli import UsageError

_OVERRIDES = [
    ("--address", "address", str, "existing Ray cluster (default: as recorded, else a local instance)"),
    ("--executor", "executor", str, "ray or local"),
    ("--workers", "workers", int, "worker actors"),
    ("--gpus-per-worker", "gpus_per_worker", float, "GPU fraction per worker"),
    ("--budget", "budget", int, "a new total budget (records), at least the recorded one"),
    ("--data-root", "data_root", str, "where the dataset files are on this machine"),
]


def add_arguments(parser):
    parser.add_argument("run_dir", metavar="DIR", help="run directory written by evonorm search")
    for flag, dest, kind, help_text in _OVERRIDES:
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args) -> int:
    from search.commands.search_cmd import check_inputs, execute
    from search.config import ConfigError, build_config

    run_dir = args.run_dir
    info_path = os.path.join(run_dir, "run.json")
    if not os.path.isdir(run_dir):
        raise UsageError(f"run directory {run_dir} does not exist")
    try:
        with open(info_path) as fh:
            info = json.load(fh)
        recorded = info["config"]
    except FileNotFoundError:
        raise UsageError(f"{run_dir} is not a run directory (no run.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{info_path} is unreadable: {err}") from None
    # runs from before hurdles trained every candidate in full, and before confirmation on one seed
    recorded = {"hurdles": False, "confirm": False, **recorded}
    overrides = {dest: getattr(args, dest) for _, dest, _, _ in _OVERRIDES}
    if overrides["budget"] is not None and overrides["budget"] < recorded.get("budget", 0):
        raise UsageError(f"--budget {overrides['budget']} is below the run's budget {recorded.get('budget')}")
    try:
        config = build_config(recorded, overrides)
    except ConfigError as err:
        raise UsageError(f"{info_path}: {err}") from None
    config.out = run_dir
    mode = check_inputs(config)
    return execute(config, mode, run_dir, create=False, quiet=args.quiet)
