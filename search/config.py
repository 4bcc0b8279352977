"""The search configuration: defaults < TOML file < command-line flags, one dataclass.

A TOML file uses the field names below as top-level keys (hyphens or
underscores), plus an optional `[eval]` table passed to the evaluators'
`EvalConfig` (e.g. `quality_threshold`, `compile`, `device`). Every value is
type- and range-checked here, before anything is written; a bad one raises
`ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import os
import time
import tomllib
from dataclasses import dataclass, field

from .modes import MODES

from evaluators.proxies import PROXY_NAMES, SEARCH_PROXIES

DATASETS = ("fashion-mnist", "cifar10", "synthetic")
ARCHS = SEARCH_PROXIES        # the default; any of PROXY_NAMES (the held-out plainnet too) may be chosen
EXECUTORS = ("local", "ray")
EVALUATORS = ("train", "surrogate")


class ConfigError(ValueError):
    """A bad configuration value; the CLI turns it into one line and exit status 2."""


@dataclass
class SearchConfig:
    out: str | None = None               # run directory; default results/<timestamp>-<mode>-s<seed>
    address: str | None = None           # existing Ray cluster ("auto", "ray://host:10001", "host:port")
    executor: str = "ray"                # ray | local (in-process, one candidate at a time)
    workers: int | None = None           # default: one per GPU (see gpus_per_worker), else one per CPU
    gpus_per_worker: float | None = None # default 1 when the cluster has GPUs, else 0
    budget: int = 120                    # records in the run, rejected proposals included (~1 h on 2 CPU cores)
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    archs: tuple[str, ...] = ARCHS
    steps: int | None = None             # training steps per proxy; default: the evaluators'
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    mode: str = "batch"
    max_degree: int = 4                  # polynomial mode only
    population: int = 16
    tournament: int = 4
    seed_formulas: tuple[str, ...] = ()
    library_seeds: bool = True           # also seed with the reference layers that fit the mode
    cost: bool = False                   # add params_per_channel (minimised) to the objectives
    evaluator: str = "train"             # train (real proxies) | surrogate (cheap stand-in for tests)
    surrogate_seconds: float = 0.0       # CPU-bound work per surrogate evaluation
    hurdles: bool = True                 # progressive hurdles: train in rungs, stop the dominated
    rungs: tuple[float, ...] = (0.34, 1.0)  # rung ends as fractions of the steps (the last is 1)
    hurdle_share: float = 0.5            # stop when more than this share of rung peers dominate
    hurdle_window: int = 32              # rung peers: the most recent this many measured there
    confirm: bool = True                 # a candidate entering the front is trained on seed+1 too
    max_retries: int = 2                 # resubmissions of a candidate whose worker died
    flush_every: int = 20                # records per part file (at most)
    flush_seconds: float = 30.0          # and at least this often
    eval: dict = field(default_factory=dict)  # extra EvalConfig fields

    # -- derived ----------------------------------------------------------------------------
    @property
    def objectives(self) -> tuple[str, ...]:
        return tuple(f"acc_{a}" for a in self.archs) + (("params_per_channel",) if self.cost else ())

    @property
    def goals(self) -> tuple[str, ...]:
        return ("max",) * len(self.archs) + (("min",) if self.cost else ())

    def rung_steps(self, steps: int) -> tuple[int, ...]:
        """The step counts at which a candidate faces a hurdle, ending with the budget;
        just (steps,) with hurdles off."""
        if not self.hurdles:
            return (steps,)
        ends = sorted({max(1, min(steps, round(f * steps))) for f in self.rungs} | {steps})
        return tuple(ends)

    def default_out(self) -> str:
        return os.path.join("results", f"{time.strftime('%Y%m%d-%H%M%S')}-{self.mode}-s{self.seed}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["archs"], d["seed_formulas"] = list(self.archs), list(self.seed_formulas)
        d["rungs"] = list(self.rungs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SearchConfig":
        return build_config(overrides=d)

    def eval_config_dict(self) -> dict:
        """Fields for evaluators.evaluate.EvalConfig.from_dict."""
        d = dict(self.eval)
        d.update(dataset=self.dataset, data_root=self.data_root, archs=list(self.archs), seed=self.seed)
        for key in ("steps", "batch_size", "lr"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.batch_size is not None and self.steps is None and "steps" not in d:
            # a candidate at another batch size costs what a default one does (and the lr
            # scales with the batch: EvalConfig); protocol 5 judges at the same share
            from evaluators.evaluate import recommended_steps
            d["steps"] = recommended_steps(self.batch_size)
            d.setdefault("quality_steps", max(1, d["steps"] // 5))
        return d


_FIELDS = {f.name: f for f in dataclasses.fields(SearchConfig)}
_INT = {"workers", "budget", "steps", "batch_size", "seed", "max_degree", "population",
        "tournament", "max_retries", "flush_every", "hurdle_window"}
_FLOAT = {"gpus_per_worker", "lr", "surrogate_seconds", "flush_seconds", "hurdle_share"}
_STR = {"out", "address", "dataset", "data_root", "mode", "executor", "evaluator"}
_CHOICES = {"dataset": DATASETS, "mode": MODES, "executor": EXECUTORS, "evaluator": EVALUATORS}
_MIN = {"workers": 1, "budget": 1, "steps": 1, "batch_size": 1, "max_degree": 1, "population": 1,
        "tournament": 1, "max_retries": 0, "flush_every": 1, "seed": 0, "hurdle_window": 1}


def _check(key: str, value):
    if value is None:
        if _FIELDS[key].default is None:
            return None
        raise ConfigError(f"{key} may not be empty")
    if key in _INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if value < _MIN.get(key, 0):
            raise ConfigError(f"{key} must be at least {_MIN.get(key, 0)}, got {value}")
    elif key in _FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
        if not value >= 0 or value == float("inf"):
            raise ConfigError(f"{key} must be a non-negative number, got {value}")
        if key == "lr" and value == 0:
            raise ConfigError("lr must be positive")
        if key == "hurdle_share" and value > 1:
            raise ConfigError(f"hurdle_share must lie in [0, 1], got {value}")
    elif key in _STR:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"unknown {key} {value!r} (choose from {', '.join(_CHOICES[key])})")
    elif key == "rungs":
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in value):
            raise ConfigError(f"rungs must be a list of fractions in (0, 1], got {value!r}")
        value = tuple(sorted(float(v) for v in value))
    elif key in ("cost", "library_seeds", "hurdles", "confirm"):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    elif key in ("archs", "seed_formulas"):
        if isinstance(value, str) or not isinstance(value, (list, tuple)) \
                or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        value = tuple(value)
        if key == "archs":
            if not value:
                raise ConfigError("archs may not be empty")
            for a in value:
                if a not in PROXY_NAMES:
                    raise ConfigError(f"unknown arch {a!r} (choose from {', '.join(PROXY_NAMES)})")
            if len(set(value)) != len(value):
                raise ConfigError("archs lists an arch twice")
    elif key == "eval":
        if not isinstance(value, dict):
            raise ConfigError(f"eval must be a table, got {value!r}")
        value = dict(value)
    return value


def load_toml(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: {err}") from None


def build_config(toml: dict | None = None, overrides: dict | None = None) -> SearchConfig:
    """Defaults, then a TOML table, then `overrides` (flags; None values are ignored)."""
    values: dict = {}
    for source, skip_none in ((toml or {}, False), (overrides or {}, True)):
        for raw_key, value in source.items():
            key = raw_key.replace("-", "_")
            if key not in _FIELDS:
                raise ConfigError(f"unknown config key {raw_key!r}")
            if skip_none and value is None:
                continue
            values[key] = _check(key, value)
    config = SearchConfig(**values)
    if config.tournament > config.population:
        raise ConfigError(f"tournament ({config.tournament}) may not exceed population ({config.population})")
    return config
