"""`evonorm search`: run an evolutionary search into a run directory.

Defaults (no flags): a real search on this machine with a local Ray instance,
one CPU worker per core (one per GPU when there are GPUs), Fashion-MNIST, the
three proxies (300 steps each, the evaluators' default), `batch` mode,
population 16, tournament 4, budget 120 records (rejected proposals included;
about an hour on 2 CPU cores, where a trained candidate takes minutes), into
results/<timestamp>-<mode>-s<seed>.
Flags override a `--config FILE.toml`, which overrides the defaults.
"""
from __future__ import annotations

import argparse
import os
import sys

from search.cli import UsageError

_FLAGS = [
    # (flag, dest, type, help)
    ("--out", "out", str, "run directory (default results/<timestamp>-<mode>-s<seed>); must be new or empty"),
    ("--address", "address", str, "existing Ray cluster: auto, ray://HOST:10001 or HOST:PORT "
                                  "(default: start a local instance)"),
    ("--executor", "executor", str, "ray (default) or local (in-process, one candidate at a time)"),
    ("--workers", "workers", int, "worker actors (default: one per GPU, else one per CPU)"),
    ("--gpus-per-worker", "gpus_per_worker", float, "GPU fraction per worker (default 1 with GPUs, 0 without)"),
    ("--budget", "budget", int, "records in the run, rejected proposals included (default 120)"),
    ("--dataset", "dataset", str, "fashion-mnist (default), cifar10 or synthetic"),
    ("--data-root", "data_root", str, "where the dataset files are"),
    ("--steps", "steps", int, "training steps per proxy (default 300 at batch 128; at another --batch-size "
                              "the count at which a candidate costs the same, e.g. 2300 at 8)"),
    ("--batch-size", "batch_size", int, "training batch size (default 128)"),
    ("--lr", "lr", float, "learning rate (default 0.1 at batch 128, scaled linearly with --batch-size)"),
    ("--seed", "seed", int, "search seed (default 0)"),
    ("--mode", "mode", str, "batch (default), sample (no batch moments) or polynomial"),
    ("--max-degree", "max_degree", int, "degree limit in polynomial mode (default 4)"),
    ("--population", "population", int, "population size P (default 16)"),
    ("--tournament", "tournament", int, "tournament size S (default 4)"),
    ("--evaluator", "evaluator", str, "train (default) or surrogate (a cheap stand-in for smoke tests)"),
    ("--surrogate-seconds", "surrogate_seconds", float, "CPU work per surrogate evaluation (default 0)"),
    ("--hurdle-share", "hurdle_share", float, "stop a candidate when more than this share of its rung "
                                               "peers beat it on every proxy (default 0.5)"),
    ("--hurdle-window", "hurdle_window", int, "rung peers: the most recent this many (default 32)"),
    ("--max-retries", "max_retries", int, "resubmissions when a worker dies (default 2)"),
    ("--flush-every", "flush_every", int, "records per part file at most (default 20)"),
    ("--flush-seconds", "flush_seconds", float, "write a part file at least this often (default 30)"),
]


def add_arguments(parser):
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file with any of the settings below")
    for flag, dest, kind, help_text in _FLAGS:
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)
    parser.add_argument("--archs", nargs="+", default=None, metavar="ARCH",
                        help="proxy architectures (default resnet mobilenetv2 efficientnet; plainnet, "
                             "the held-out one, may be chosen too)")
    parser.add_argument("--seed-formula", dest="seed_formulas", action="append", default=None,
                        metavar="F", help="a known layer for the first population (repeatable)")
    parser.add_argument("--no-library-seeds", dest="library_seeds", action="store_false", default=None,
                        help="start from random layers only (default: the first population also holds "
                             "the reference layers that fit the mode)")
    parser.add_argument("--hurdles", dest="hurdles", action="store_true", default=None,
                        help="train in rungs and stop candidates their peers clearly beat (default)")
    parser.add_argument("--no-hurdles", dest="hurdles", action="store_false", default=None,
                        help="train every screened candidate to the full budget")
    parser.add_argument("--confirm", dest="confirm", action="store_true", default=None,
                        help="train a candidate that would enter the Pareto front on a second seed and "
                             "record the mean of the two (default)")
    parser.add_argument("--no-confirm", dest="confirm", action="store_false", default=None,
                        help="enter the front on one seed's scores")
    parser.add_argument("--rungs", nargs="+", type=float, default=None, metavar="FRACTION",
                        help="where the hurdles stand, as fractions of the steps (default 0.34 1.0)")
    parser.add_argument("--cost", dest="cost", action="store_true", default=None,
                        help="add parameters per channel (minimised) to the objectives")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def config_from_args(args, flags: list[str]):
    from search.config import ConfigError, build_config, load_toml
    overrides = {dest: getattr(args, dest, None) for dest in flags}
    try:
        toml = load_toml(args.config) if getattr(args, "config", None) else {}
        return build_config(toml, overrides)
    except ConfigError as err:
        raise UsageError(str(err)) from None


def check_inputs(config):
    """Everything that can be told bad before a file is written: mode, seed formulas,
    evaluation settings. Returns the Mode."""
    from primitives import FormulaError, parse
    from search.modes import get_mode
    try:
        mode = get_mode(config.mode, config.max_degree)
    except ValueError as err:
        raise UsageError(str(err)) from None
    for formula in config.seed_formulas:
        try:
            graph = parse(formula)
        except FormulaError as err:
            raise UsageError(f"bad seed formula {formula!r}: {err}") from None
        problem = mode.why_not(graph)
        if problem:
            raise UsageError(f"seed formula {formula!r} {problem}")
    if config.evaluator == "train":
        from evaluators.evaluate import EvalConfig
        try:
            EvalConfig.from_dict(config.eval_config_dict())
        except (TypeError, ValueError) as err:
            raise UsageError(f"bad evaluation setting: {err}") from None
    return mode


def run_info(config) -> dict:
    import platform
    from datetime import datetime, timezone
    from importlib import metadata
    versions = {"python": platform.python_version()}
    for dist in ("evonorm", "torch", "ray", "numpy", "pyarrow", "pandas"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    eval_config = None
    if config.evaluator == "train":
        from evaluators.evaluate import EvalConfig
        eval_config = EvalConfig.from_dict(config.eval_config_dict()).to_dict()
    return {"config": config.to_dict(), "seed": config.seed, "versions": versions,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "objectives": [{"column": c, "goal": g} for c, g in zip(config.objectives, config.goals)],
            "archs": list(config.archs), "eval_config": eval_config, "command": sys.argv[1:]}


def make_executor(config):
    from search.executor import LocalExecutor, evaluator_spec
    spec = evaluator_spec(config)
    if config.executor == "local":
        return LocalExecutor(spec)
    from search.ray_executor import RayExecutor
    try:
        return RayExecutor(spec, workers=config.workers, gpus_per_worker=config.gpus_per_worker,
                           address=config.address, max_retries=config.max_retries)
    except ConnectionError as err:
        hint = ("" if os.environ.get("RAY_AUTH_MODE") else
                " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token)")
        raise UsageError(f"cannot connect to Ray at {config.address}: {err}{hint}") from None
    except ValueError as err:
        raise UsageError(str(err)) from None


def execute(config, mode, run_dir: str, create: bool, quiet: bool = False) -> int:
    """Build screen, executor and store; restore from earlier records when resuming; drive
    the search to the budget. Ctrl-C flushes what was recorded and returns 130."""
    from search.evolution import Driver
    from search.executor import evaluator_spec, make_screen
    from search.files import check_writable_dir
    from search.store import RunDirError, RunStore

    records, checkpoints = [], []
    store = executor = None
    try:
        # before the executor starts and before a store opens (closing one writes the front)
        for directory in (run_dir,) if create else (run_dir, os.path.join(run_dir, "candidates")):
            check_writable_dir(directory)
        if not create:
            try:
                store = RunStore.open(run_dir, **_store_options(config))
                records, checkpoints = store.records(), store.checkpoints()
            except RunDirError as err:
                raise UsageError(str(err)) from None
            if len(records) >= config.budget:
                print(f"{run_dir}: complete ({len(records)} records, budget {config.budget})", file=sys.stderr)
                store.close()
                return 0
        screen = make_screen(evaluator_spec(config))
        executor = make_executor(config)
        _stop_on_sigterm()  # after the executor: ray.init installs a SIGTERM handler of its own
        if create:
            try:
                store = RunStore.create(run_dir, run_info(config), **_store_options(config))
            except RunDirError as err:
                raise UsageError(str(err)) from None
        driver = Driver(config, mode, store, screen, executor, start_id=store.next_id, done=len(records),
                        progress=None if quiet else sys.stderr)
        if records or checkpoints:
            driver.restore(records, checkpoints)
        print(f"{'resuming' if records else 'search'}: {run_dir} ({len(records)} of {config.budget} "
              f"records, {executor.capacity} worker(s), {config.executor} executor)", file=sys.stderr)
        driver.run()
        store.close()
        store = None
        print(run_dir)
        return 0
    except KeyboardInterrupt:
        print(f"evonorm: interrupted; {run_dir} keeps what was recorded (evonorm resume {run_dir})",
              file=sys.stderr)
        return 130
    finally:
        if store is not None:
            try:
                store.close()
            except Exception as err:  # noqa: BLE001 - report, keep the original error
                print(f"evonorm: flushing {run_dir} failed: {err}", file=sys.stderr)
        if executor is not None:
            executor.close()


def _stop_on_sigterm():
    """`kill PID` (SIGTERM) stops a search like Ctrl-C: records flushed, exit 130. This also
    covers runs started in the background, where SIGINT is ignored."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _store_options(config) -> dict:
    return {"flush_every": config.flush_every, "flush_seconds": config.flush_seconds}


def run(args) -> int:
    flags = [dest for _, dest, _, _ in _FLAGS] + ["archs", "seed_formulas", "cost", "library_seeds",
                                                  "hurdles", "rungs", "confirm"]
    config = config_from_args(args, flags)
    out = config.out or config.default_out()
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UsageError(f"--out {out} exists and is not empty (use evonorm resume {out} to continue it)")
    config.out = out
    mode = check_inputs(config)
    return execute(config, mode, out, create=True, quiet=args.quiet)
