"""The search configuration: defaults < TOML file < command-line flags, one dataclass.

A TOML file uses the field names below as top-level keys (hyphens or
underscores), plus an optional `[eval]` table passed to the evaluators'
`EvalConfig` (e.g. `quality_threshold`, `compile`, `device`). Every value is
type- and range-checked here, before anything is written; a bad one raises
`ConfigError` naming the key.

A new setting is one field of `SearchConfig`, `name: type = setting(default, help,
...)`: its flag (`--name`), its checks, its TOML key and its place in run.json follow.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
import tomllib
import types
import typing
from dataclasses import dataclass, field

from evaluators.proxies import PROXIES, PROXY_NAMES, SEARCH_PROXIES

from search.errors import ConfigError
from search.engine.modes import MODES

DATASETS = ("fashion-mnist", "cifar10", "synthetic")
ARCHS = SEARCH_PROXIES        # the default; any of PROXY_NAMES (the transformer and held-out ones too) may be chosen
EXECUTORS = ("local", "ray")
# each proxy's recipe batch size, for the help text: "128 for resnet mobilenetv2 ..., 64 for vit ..."
_RECIPE_BATCHES = ", ".join(
    f"{b} for {' '.join(n for n, p in PROXIES.items() if p.recipe.batch_size == b)}"
    for b in dict.fromkeys(p.recipe.batch_size for p in PROXIES.values()))
EVALUATORS = ("train", "surrogate")


def setting(default, help: str | None = None, *, resume: str | None = None, flags=None, least: int = 0,
            most: float | None = None, positive: bool = False, choices: tuple[str, ...] | None = None,
            check=None, **argparse):
    """A SearchConfig field described once, so that a new setting is one edit.

    `default`: the value (a type such as dict: a fresh one per config). Checks beyond
    the field's annotated type: `least` (integers), `most` and `positive` (numbers),
    `choices` (strings), `check` (a function of the value raising ConfigError).
    `help`: the `evonorm search` flag's text (none, no flag); `resume`: the `evonorm
    resume` flag's text, for a setting a resumed run may change; `flags`: flag names
    other than --the-field-name (booleans: (flag, value it sets, help) each; a boolean
    with only `help` is a --name that sets True);
    `argparse`: more `add_argument` keywords (None removes a derived one)."""
    meta = {"help": help, "resume": resume, "flags": flags, "least": least, "most": most,
            "positive": positive, "choices": choices, "check": check, "argparse": argparse}
    if isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Training:
    """A training setting described once: its type, what it is and its default as the help
    text says them, and its checks (`least` for integers, `positive` for numbers).
    SearchConfig's field and the flags of `eval` and `retrain` are made from it."""

    kind: type
    what: str
    default: str | None = None       # the default, as the help text says it
    least: int = 0
    positive: bool = False
    flag_default: object = None      # the flag's value when not given (None: the rule decides)

    def help(self, default: str | None = None) -> str:
        """The flag's help text; `default` says the default where a command has another
        (retrain: the run's)."""
        default = default or self.default
        return f"{self.what} ({default})" if default else self.what

    def meta(self) -> dict:
        return {"least": self.least, "most": None, "positive": self.positive, "choices": None}


# The training settings of search, resume, eval and retrain. What a value left out means
# (steps and lr follow the batch size) is the evaluators' one rule, training_budget.
NO_CACHE_HELP = ("train everything afresh: neither read nor write the cross-run training cache (default: "
                 "$EVONORM_CACHE/trainings or ~/.cache/evonorm/trainings)")

TRAINING = {
    "steps": Training(int, "training steps per proxy, the same for every proxy",
                      "default 300; at another --batch-size the count at which a CNN candidate costs the "
                      "same, e.g. 2300 at 8", least=1),
    "batch_size": Training(int, "training batch size of EVERY proxy",
                           "default: each proxy's recipe: " + _RECIPE_BATCHES, least=1),
    "lr": Training(float, "learning rate of EVERY proxy, whatever its optimiser",
                   "default: each proxy's recipe: SGD 0.1 for the CNNs, AdamW for the transformers; "
                   "scaled with --batch-size", positive=True),
    "device": Training(str, "auto (cuda if available), cpu, cuda, cuda:1 ...", flag_default="auto"),
}


def training(name: str):
    """SearchConfig's field for the training setting `name` (default None: the rule's)."""
    t = TRAINING[name]
    return setting(None, t.help(), least=t.least, positive=t.positive)


def add_cache_flag(parser) -> None:
    """`--no-cache` (dest `cache`) for eval and retrain, as search has it."""
    parser.add_argument("--no-cache", dest="cache", action="store_false", help=NO_CACHE_HELP)


def add_training_flags(parser, names, defaults: dict | None = None) -> None:
    """A flag for each training setting in `names` (eval, retrain), with the type and help
    text of `search`'s; `defaults`: {name: text} where a command's default is another."""
    for name in names:
        t = TRAINING[name]
        parser.add_argument(_flag(name), dest=name, type=t.kind, default=t.flag_default,
                            help=t.help((defaults or {}).get(name)))


def check_training(name: str, value, label: str | None = None):
    """`value` of the training setting `name` checked as SearchConfig checks it (None passes);
    a ConfigError naming `label` (default: the setting's name, as `search` says it)."""
    if value is None:
        return None
    t = TRAINING[name]
    return _CHECKS[t.kind](label or name, value, t.meta())


class _Names(argparse.Action):
    """A flag taking names apart by spaces or commas: `--archs vit charlm` or `--archs vit,charlm`."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [name for value in values for name in value.split(",") if name])


def _known_archs(archs: tuple[str, ...]) -> None:
    if not archs:
        raise ConfigError("archs may not be empty")
    for a in archs:
        if a not in PROXY_NAMES:
            raise ConfigError(f"unknown arch {a!r} (choose from {', '.join(PROXY_NAMES)})")
    if len(set(archs)) != len(archs):
        raise ConfigError("archs lists an arch twice")

@dataclass
class SearchConfig:
    """Every setting of a search. Each field is described once, here: its type (the
    annotation), default, bounds and help text (`setting`); the `evonorm search` and
    `evonorm resume` flags, the TOML and value checks and run.json's "config" all derive
    from these fields. Fields are in the order of `evonorm search --help`."""

    out: str | None = setting(None, "run directory (default results/<timestamp>-<mode>-s<seed>); "
                                    "must be new or empty")
    address: str | None = setting(
        None, "existing Ray cluster: auto, ray://HOST:10001 or HOST:PORT (default: start a local instance)",
        resume="existing Ray cluster (default: as recorded, else a local instance)")
    executor: str = setting("ray", "ray (default) or local (in-process, one candidate at a time)",
                            choices=EXECUTORS, resume="ray or local")
    workers: int | None = setting(None, "worker actors (default: one per GPU, else one per CPU)",
                                  least=1, resume="worker actors")
    gpus_per_worker: float | None = setting(None, "GPU fraction per worker (default 1 with GPUs, 0 without)",
                                            resume="GPU fraction per worker")
    budget: int = setting(120, "records in the run, rejected proposals included (default 120)", least=1,
                          resume="a new total budget (records), at least the recorded one")
    dataset: str = setting("fashion-mnist", "fashion-mnist (default), cifar10 or synthetic", choices=DATASETS)
    data_root: str | None = setting(None, "where the dataset files are",
                                    resume="where the dataset files are on this machine")
    # None: each proxy's recipe, the steps by the evaluators' rule (evaluators.evaluate.training_budget)
    steps: int | None = training("steps")
    batch_size: int | None = training("batch_size")
    lr: float | None = training("lr")
    seed: int = setting(0, "search seed (default 0)", least=0)
    mode: str = setting("batch", "batch (default), sample (no batch moments) or polynomial", choices=MODES)
    max_degree: int = setting(4, "degree limit in polynomial mode (default 4)", least=1)
    max_depth: int | None = setting(None, "multiplicative depth limit under CKKS in polynomial mode (he_depth, "
                                          "docs/he.md; default none); only per-channel layers then", least=1)
    depth_objective: bool = setting(False, flags=(("--depth-objective", True, "add the CKKS multiplicative "
                                                   "depth (he_depth, minimised) to the objectives in polynomial "
                                                   "mode; only per-channel layers then"),))
    population: int = setting(16, "population size P (default 16)", least=1)
    tournament: int = setting(4, "tournament size S (default 4)", least=1)
    evaluator: str = setting("train", "train (default) or surrogate (a cheap stand-in for smoke tests)",
                             choices=EVALUATORS)
    surrogate_seconds: float = setting(0.0, "CPU work per surrogate evaluation (default 0)")
    hurdle_share: float = setting(0.5, "stop a candidate when more than this share of its rung peers beat "
                                       "it on every proxy (default 0.5)", most=1)
    hurdle_window: int = setting(32, "rung peers: the most recent this many (default 32)", least=1)
    max_retries: int = setting(2, "resubmissions when a worker dies (default 2)", least=0)
    flush_every: int = setting(20, "records per part file at most (default 20)", least=1)
    flush_seconds: float = setting(30.0, "write a part file at least this often (default 30)")
    archs: tuple[str, ...] = setting(
        ARCHS, "proxy architectures (default resnet mobilenetv2 efficientnet; the transformer proxies vit "
               "charlm; plainnet and postvit, the held-out ones, may be chosen too; by spaces or commas)",
        check=_known_archs, metavar="ARCH", action=_Names)
    seed_formulas: tuple[str, ...] = setting(
        (), "a known layer for the first population (repeatable)", flags=("--seed-formula",),
        action="append", nargs=None, metavar="F")
    library_seeds: bool = setting(True, flags=(("--no-library-seeds", False, "start from random layers only "
                                                "(default: the first population also holds the reference "
                                                "layers that fit the mode)"),))
    hurdles: bool = setting(True, flags=(
        ("--hurdles", True, "train in rungs and stop candidates their peers clearly beat (default)"),
        ("--no-hurdles", False, "train every screened candidate to the full budget")))
    confirm: bool = setting(True, flags=(
        ("--confirm", True, "train a candidate that would enter the Pareto front on a second seed and record "
                            "the mean of the two (default)"),
        ("--no-confirm", False, "enter the front on one seed's scores")))
    predicted_hurdles: bool = setting(False, flags=(
        ("--predicted-hurdles", True, "judge a candidate at a rung by its predicted full scores (a model fitted "
                                      "on the run's own full trainings, docs/predictor.md): stop it only when "
                                      "the front dominates even its optimistic prediction; the raw hurdle "
                                      "decides until 12 full trainings"),
        ("--no-predicted-hurdles", False, "the raw rung-score hurdle only (default)")))
    predicted_proposals: bool = setting(False, flags=(
        ("--predicted-proposals", True, "propose --proposal-children children per free worker and train the "
                                        "one whose optimistic predicted scores add the most hypervolume to the "
                                        "front (docs/predictor.md)"),
        ("--no-predicted-proposals", False, "train every proposal (default)")))
    proposal_children: int = setting(4, "children proposed per trained one with --predicted-proposals "
                                        "(default 4)", least=1)
    predictor_z: float = setting(1.0, "standard deviations above the predicted mean that make a candidate's "
                                      "optimistic point (default 1: of the z tried in the replay on the "
                                      "stored runs, 1, 2 and 3, the one that stopped the most, and it stopped "
                                      "no front member there; docs/predictor.md)")
    cache: bool = setting(True, flags=(("--no-cache", False, NO_CACHE_HELP),))
    rungs: tuple[float, ...] = setting((0.34, 1.0), "where the hurdles stand, as fractions of the steps "
                                                    "(default 0.34 1.0)", metavar="FRACTION")
    cost: bool = setting(False, flags=(("--cost", True, "add parameters per channel (minimised) to the "
                                                        "objectives"),))
    live_study: bool = setting(True, flags=(("--no-live-study", False, "keep no live Optuna study (default: "
                                             "RUN/study.journal, updated at every flush, for optuna-dashboard)"),))
    mlflow: str | None = setting(None, "log the run and each candidate to MLflow at URI; without URI (TOML: "
                                       '"run") to sqlite:///RUN/mlflow.db in the run directory (needs the '
                                       "mlflow extra)", nargs="?", const="run", metavar="URI")
    eval: dict = setting(dict)           # the TOML file's [eval] table: extra EvalConfig fields

    # -- derived ----------------------------------------------------------------------------
    @property
    def objectives(self) -> tuple[str, ...]:
        return (tuple(f"acc_{a}" for a in self.archs) + (("params_per_channel",) if self.cost else ())
                + (("he_depth",) if self.depth_objective else ()))

    @property
    def goals(self) -> tuple[str, ...]:
        return ("max",) * len(self.archs) + ("min",) * (len(self.objectives) - len(self.archs))

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
        """The settings as JSON values (run.json's "config"): tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SearchConfig":
        return build_config(overrides=d)

    def full_steps(self) -> int:
        """Training steps per proxy of a full evaluation: --steps, else the [eval] table's,
        else the evaluators' rule at the batch size (training_budget: 300 at 128)."""
        from evaluators.evaluate import training_budget

        d = self.eval_config_dict()
        return int(training_budget(d.get("batch_size"), d.get("steps")).steps)

    def eval_config_dict(self) -> dict:
        """Fields for evaluators.evaluate.EvalConfig.from_dict, plain values (a worker's
        recipe travels as this): the [eval] table, then the settings given. What is left
        out follows the evaluators' rule: at another batch size the steps at which a
        candidate costs what a default one does, protocol 5 at the same share, the lr scaled."""
        d = dict(self.eval)
        d.update(dataset=self.dataset, data_root=self.data_root, archs=list(self.archs), seed=self.seed)
        if not self.cache:
            d["cache"] = False
        for key in ("steps", "batch_size", "lr"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    def eval_config(self):
        """The evaluators' EvalConfig of these settings; a bad one is a ConfigError."""
        from evaluators.evaluate import EvalConfig

        try:
            return EvalConfig.from_dict(self.eval_config_dict())
        except (TypeError, ValueError) as err:
            raise ConfigError(f"bad evaluation setting: {err}") from None


_FIELDS = {f.name: f for f in dataclasses.fields(SearchConfig)}


def _kind(hint):
    """int, float, str, bool, dict or (tuple, item type): what a field's annotation allows
    besides None."""
    if typing.get_origin(hint) is tuple:
        return (tuple, typing.get_args(hint)[0])
    if isinstance(hint, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


_KINDS = {name: _kind(hint) for name, hint in typing.get_type_hints(SearchConfig).items()}
RESUMABLE = tuple(name for name, f in _FIELDS.items() if f.metadata["resume"])  # what resume may change


def _integer(key, value, meta):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if value < meta["least"]:
        raise ConfigError(f"{key} must be at least {meta['least']}, got {value}")
    return value


def _number(key, value, meta):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    value = float(value)
    if meta["positive"] and not value > 0:
        raise ConfigError(f"{key} must be positive, got {value}")
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{key} must be a non-negative number, got {value}")
    if meta["most"] is not None and value > meta["most"]:
        raise ConfigError(f"{key} must lie in [0, {meta['most']}], got {value}")
    return value


def _string(key, value, meta):
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"unknown {key} {value!r} (choose from {', '.join(meta['choices'])})")
    return value


def _boolean(key, value, meta):
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _strings(key, value, meta):
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings, got {value!r}")
    return tuple(value)


def _fractions(key, value, meta):
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in value):
        raise ConfigError(f"{key} must be a list of fractions in (0, 1], got {value!r}")
    return tuple(sorted(float(v) for v in value))


def _table(key, value, meta):
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a table, got {value!r}")
    return dict(value)


_CHECKS = {int: _integer, float: _number, str: _string, bool: _boolean, (tuple, str): _strings,
           (tuple, float): _fractions, dict: _table}


def _check(key: str, value):
    """The value for setting `key`, checked against its field; ConfigError naming the key."""
    if value is None:
        if _FIELDS[key].default is None:
            return None
        raise ConfigError(f"{key} may not be empty")
    meta = _FIELDS[key].metadata
    value = _CHECKS[_KINDS[key]](key, value, meta)
    if meta["check"] is not None:
        meta["check"](value)
    return value


def add_flags(parser, *, resume: bool = False) -> list[str]:
    """A flag for each setting that has help text (`resume`: each a resumed run may
    change), all defaulting to None so that only what is given overrides. Returns the
    settings' names, which are the flags' dests."""
    names = []
    for name, f in _FIELDS.items():
        meta, kind = f.metadata, _KINDS[name]
        if resume:
            if meta["resume"]:
                parser.add_argument(_flag(name), dest=name, type=kind, default=None, help=meta["resume"])
                names.append(name)
        elif kind is bool and (meta["flags"] or meta["help"]):
            for flag, value, text in meta["flags"] or ((_flag(name), True, meta["help"]),):
                parser.add_argument(flag, dest=name, action="store_true" if value else "store_false",
                                    default=None, help=text)
            names.append(name)
        elif meta["help"]:
            options = {"type": kind[1], "nargs": "+"} if isinstance(kind, tuple) else {"type": kind}
            options = {k: v for k, v in {**options, **meta["argparse"]}.items() if v is not None}
            parser.add_argument(*(meta["flags"] or (_flag(name),)), dest=name, default=None,
                                help=meta["help"], **options)
            names.append(name)
    return names


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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
    if config.mode != "polynomial" and (config.max_depth is not None or config.depth_objective):
        raise ConfigError("max_depth and depth_objective bound or minimise the multiplicative depth of "
                          "polynomial layers: they need mode polynomial")
    return config
