"""Stand-ins the tests share (fixtures live in conftest.py)."""
from __future__ import annotations

import random

from search.workers.executor import Executor, LocalExecutor


class QueuedExecutor(Executor):
    """Local training behind a queue: up to `capacity` candidates in flight, one finished per
    `wait`, first in first out or, with `shuffle_seed`, in a seeded random order (which
    exercises held duplicates). With a `log` it records every task it trains as (id, steps,
    seed) (None where the task is a bare graph or names no seed); with `stop_after` it
    raises KeyboardInterrupt (a Ctrl-C) instead of training once that many are logged."""

    def __init__(self, spec, capacity=2, log=None, stop_after=None, shuffle_seed=None):
        self.local, self.capacity, self.jobs = LocalExecutor(spec), capacity, []
        self.log, self.stop_after = log, stop_after
        self.rng = None if shuffle_seed is None else random.Random(shuffle_seed)

    def submit(self, candidate_id, task):
        self.jobs.append((candidate_id, task))

    @property
    def in_flight(self):
        return len(self.jobs)

    def wait(self, timeout=None):
        if not self.jobs:
            return []
        if self.stop_after is not None and len(self.log) >= self.stop_after:
            raise KeyboardInterrupt
        cid, task = self.jobs.pop(self.rng.randrange(len(self.jobs)) if self.rng else 0)
        if self.log is not None:
            settings = task if isinstance(task, dict) else {}
            self.log.append((cid, settings.get("steps"), settings.get("seed")))
        self.local.submit(cid, task)
        return self.local.wait()


# -- the default-budget trainings the slow tests share ---------------------------------------

_TRAINED: dict = {}


def bn_relu(c):
    """torch's own BN-ReLU, the layer every formula is measured against."""
    from torch import nn

    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())


def reference_factories(family: str | None = None) -> dict:
    """torch's own BN-ReLU and every layer of the reference library (none left out); with
    `family="cnn"` only the layers made for CNNs (the Transformer layers, DyT, Derf and the
    identity among them, are not expected to train a CNN without normalization)."""
    from primitives.library import REFERENCE_LAYERS, TRANSFORMER_LAYERS

    keep = [name for name in REFERENCE_LAYERS if family != "cnn" or name not in TRANSFORMER_LAYERS]
    return {"bn-relu(torch)": bn_relu, **{name: formula_factory(REFERENCE_LAYERS[name]) for name in keep}}


def formula_factory(formula: str):
    """channels -> a fresh module of the formula's layer."""
    from primitives import compile_layer, parse
    graph = parse(formula)
    return lambda c: compile_layer(graph, c)


def default_training(arch: str, layer: str, amp: str = "off"):
    """The default-budget training of one reference layer (or a formula) on one proxy with its
    recipe, on real Fashion-MNIST (charlm: Python's help texts), on one thread, once per test
    process: the 80% test, the two-points test, the bf16 test and the transformer proxies'
    test share them. CI runs the slow tests in two processes grouped by proxy (xdist_group),
    so each training happens once and the two cores stay busy."""
    from evaluators.datasets import SYSTEM_FASHION_MNIST, load_dataset
    from evaluators.datasets.text import load_text
    from evaluators.proxies import data_of
    from evaluators.trainer import build_and_train, proxy_config

    assert (SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), \
        "apt-get install dataset-fashion-mnist (.ci/setup does)"
    if (arch, layer, amp) not in _TRAINED:
        ds = load_text() if data_of(arch) == "text" else load_dataset("fashion-mnist", download=False)
        factory = reference_factories().get(layer) or formula_factory(layer)
        _TRAINED[arch, layer, amp] = build_and_train(arch, factory, ds,
                                                     proxy_config(arch, amp=amp, threads=1), "cpu")
    return _TRAINED[arch, layer, amp]


def surrogate_driver(store, settings: dict, executor=None, records=(), checkpoints=(), start_id=0):
    """A batch-mode Driver on the surrogate evaluator with `settings` (SearchConfig overrides),
    restored from `records` and `checkpoints` as a resume restores it; `executor` defaults to
    a LocalExecutor of the settings' evaluator. Returns (driver, evaluator spec)."""
    from search.config import build_config
    from search.engine.driver import Driver
    from search.engine.modes import get_mode
    from search.workers.executor import evaluator_spec, make_screen
    config = build_config(overrides={"evaluator": "surrogate", "executor": "local", **settings})
    spec = evaluator_spec(config)
    driver = Driver(config, get_mode("batch"), store, make_screen(spec), executor or LocalExecutor(spec),
                    start_id=start_id, done=len(records), progress=None)
    if records or checkpoints:
        driver.restore(list(records), list(checkpoints))
    return driver, spec
