"""The evaluation of one candidate layer: graph -> result record.

`Screen` (driver side) runs the cheap rejection protocols 1-4 and remembers
what it has seen; `Evaluator` (worker side) holds the dataset on its device and
runs protocol 5 and the proxy trainings; `evaluate` chains them. Bad
candidates are data, not exceptions: nothing here raises for a bad layer.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field

from primitives import FormulaError, Graph, GraphError, compile_layer, parse

from . import trainer as _trainer
from .protocols import PROTOCOLS, Quality
from .screen import Screen, describe, to_graph  # noqa: F401  (part of this module's face)

_TRAIN_DEFAULTS = _trainer.TrainConfig()

STATUSES = ("ok", "invalid", "duplicate", "equivalent", "unstable", "low_quality", "failed")


@dataclass
class EvalConfig:
    """Everything that decides a candidate's record (it goes into run.json)."""

    dataset: str = "fashion-mnist"
    data_root: str | None = None
    archs: tuple[str, ...] = ("resnet", "mobilenetv2", "efficientnet")
    steps: int = _TRAIN_DEFAULTS.steps
    batch_size: int = _TRAIN_DEFAULTS.batch_size
    lr: float = _TRAIN_DEFAULTS.lr
    seed: int = 0
    # protocol 5: a short training on archs[0]; at quality_steps >= steps it is the full
    # training of archs[0] and its score is kept.
    quality_steps: int = max(1, _TRAIN_DEFAULTS.steps // 5)
    quality_threshold: float = 0.2
    # protocol 4: reject when the adversarial gradient norm grows more than this
    stability_threshold: float = 1e4
    compile: str | bool = "auto"
    device: str = "auto"

    def __post_init__(self):
        self.archs = tuple(self.archs)
        problems = []
        if not self.archs:
            problems.append("archs is empty")
        for key in ("steps", "batch_size", "quality_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{key} must be a positive integer, got {value!r}")
        for key in ("lr", "stability_threshold"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                problems.append(f"{key} must be a positive number, got {value!r}")
        if not isinstance(self.quality_threshold, (int, float)) or not 0 <= self.quality_threshold <= 1:
            problems.append(f"quality_threshold must lie in [0, 1], got {self.quality_threshold!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["archs"] = list(self.archs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EvalConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown evaluation setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def train_config(self, steps: int | None = None):
        """The trainer's config for one proxy training."""
        return _trainer.TrainConfig(**_train_kwargs(self, steps))


def _train_kwargs(config: EvalConfig, steps: int | None) -> dict:
    kwargs = dict(steps=steps or config.steps, batch_size=config.batch_size, lr=config.lr,
                  seed=config.seed, compile=config.compile)
    names = {f.name for f in dataclasses.fields(_trainer.TrainConfig)}
    return {k: v for k, v in kwargs.items() if k in names}


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class Evaluator:
    """Worker side: the dataset lives on this worker's device, loaded once."""

    def __init__(self, config: EvalConfig | None = None, dataset=None):
        from .datasets import load_dataset

        self.config = config or EvalConfig()
        self.device = resolve_device(self.config.device)
        self.dataset = dataset if dataset is not None else load_dataset(
            self.config.dataset, self.device, self.config.data_root)
        self.quality = Quality(self.config.quality_threshold)

    def train_arch(self, graph: Graph, arch: str, steps: int | None = None, progress=None):
        """One proxy training (a TrainResult); never raises for a bad layer.
        `progress(step, steps)` is called after every step."""
        def factory(channels):
            return compile_layer(graph, channels)
        return _trainer.build_and_train(arch, factory, self.dataset, self.config.train_config(steps),
                                        self.device, progress=progress)

    def train(self, graph_json, stop_on_low_quality: bool = True, progress=None) -> dict:
        """Protocol 5 on archs[0], then the proxies. `progress(step, steps)` is passed to
        every training (the eval command's progress bar)."""
        start = time.perf_counter()
        archs = self.config.archs
        record = {"status": "ok", "reason": None, **{f"acc_{a}": None for a in archs},
                  "seconds": 0.0, "stage_seconds": {}}
        stages = record["stage_seconds"]

        def finish():
            record["seconds"] = time.perf_counter() - start
            return record

        try:
            graph = to_graph(graph_json)
        except Exception as err:
            record.update(status="failed", reason=f"graph does not load: {err}")
            return finish()

        quality_steps = min(self.config.quality_steps, self.config.steps)
        full_first = quality_steps >= self.config.steps
        result = self._run(graph, archs[0], quality_steps, progress)
        stages["quality"] = _seconds(result)
        failure = _failure(result)
        if failure:
            record.update(status="failed", reason=f"{archs[0]}: {failure}")
            return finish()
        if full_first:
            record[f"acc_{archs[0]}"] = _accuracy(result)
        verdict = self.quality.judge(_accuracy(result), _seconds(result),
                                     f"after {quality_steps} steps on {archs[0]}")
        if verdict.status is not None:
            record.update(status=verdict.status, reason=verdict.reason)
            if stop_on_low_quality:
                return finish()
        for arch in archs[1:] if full_first else archs:
            result = self._run(graph, arch, self.config.steps, progress)
            stages[arch] = _seconds(result)
            failure = _failure(result)
            if failure:
                record.update(status="failed", reason=f"{arch}: {failure}")
                return finish()
            record[f"acc_{arch}"] = _accuracy(result)
        return finish()

    def _run(self, graph, arch, steps, progress=None):
        try:
            return self.train_arch(graph, arch, steps, progress)
        except Exception as err:  # the trainer promises not to raise; be safe anyway
            return _Failed(f"training raised {type(err).__name__}: {err}")


@dataclass
class _Failed:
    reason: str
    accuracy: float | None = None
    seconds: float = 0.0


def _accuracy(result) -> float | None:
    acc = getattr(result, "accuracy", None)
    return None if acc is None else float(acc)


def _seconds(result) -> float:
    return float(getattr(result, "seconds", 0.0) or 0.0)


def _failure(result) -> str | None:
    reason = getattr(result, "reason", None)
    acc = _accuracy(result)
    if reason:
        return str(reason)
    if acc is None or not math.isfinite(acc):
        return "no accuracy"
    return None


def evaluate(graph_or_formula, config: EvalConfig | None = None, screen: Screen | None = None,
             evaluator: Evaluator | None = None, candidate_id: int = 0) -> dict:
    """The whole record of one candidate: screen (protocols 1-4), then train (5 and the
    proxies). Rejected candidates get acc_<arch> None. Never raises for a bad candidate."""
    config = config or (screen.config if screen and screen.config else
                        evaluator.config if evaluator else EvalConfig())
    start = time.perf_counter()
    screen = screen or Screen(config)
    record = screen.check(graph_or_formula, candidate_id)
    record.update({f"acc_{a}": None for a in config.archs})
    if record["status"] is None:
        evaluator = evaluator or Evaluator(config)
        trained = evaluator.train(record["graph"])
        record["stage_seconds"].update(trained.pop("stage_seconds"))
        trained.pop("seconds")
        record.update(trained)
    record["seconds"] = time.perf_counter() - start
    return record
