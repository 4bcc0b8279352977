"""The evaluation of one candidate layer: graph -> result record.

`Screen` (driver side) runs the cheap rejection protocols 1-4 and remembers
what it has seen; `Evaluator` (worker side) holds the dataset on its device and
runs protocol 5 and the proxy trainings; `evaluate` chains them. Bad
candidates are data, not exceptions: nothing here raises for a bad layer.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

from primitives import Graph, compile_layer

from . import trainer as _trainer
from .protocols import Quality
from .screen import Screen, describe, to_graph  # noqa: F401  (part of this module's face)

_TRAIN_DEFAULTS = _trainer.TrainConfig()

from .record import CURVE_POINTS
from .record import STATUSES  # noqa: F401  (part of this module's face)


@dataclass(frozen=True)
class Budget:
    """A training's steps, batch size and learning rate."""

    steps: int
    batch_size: int
    lr: float


# the trainer's defaults: 300 steps of batch 128 at lr 0.1
TRAINER_BUDGET = Budget(_TRAIN_DEFAULTS.steps, _TRAIN_DEFAULTS.batch_size, _TRAIN_DEFAULTS.lr)


def scaled_lr(batch_size: int, lr_at_default_batch: float | None = None, *, default: Budget | None = None) -> float:
    """The learning rate for `batch_size`: linear scaling (Goyal et al. 2017, "Accurate,
    large minibatch SGD") from `lr_at_default_batch` (default: the default budget's lr) at
    the default budget's batch (the trainer's: 0.1 at 128, so batch 8 trains at 0.00625).
    SGD's noise scale goes as lr / batch: keeping the ratio keeps a small-batch training
    about as noisy per image as the default."""
    default = default or TRAINER_BUDGET
    lr = default.lr if lr_at_default_batch is None else lr_at_default_batch
    return lr * batch_size / default.batch_size


# A training step's cost on a CPU core grows like (batch + STEP_OVERHEAD_IMAGES): a fixed
# per-step overhead worth about 10 images, fitted to benchmarks/batch_cost.py (one thread,
# the four proxies, BN-ReLU and EvoNorm-S0: a batch-8 step costs 0.08-0.23 of a batch-128
# one, a batch-32 step 0.26-0.43).
STEP_OVERHEAD_IMAGES = 10


def recommended_steps(batch_size: int, default: Budget | None = None) -> int:
    """The step count at which a training at `batch_size` costs about what the default one
    (the trainer's: 300 steps of 128) does on a CPU core: 300 at 128, 990 at 32, 1590 at 16,
    2300 at 8 (then it sees 18,400 images against the default's 38,400). Rounded to 10."""
    default = default or TRAINER_BUDGET
    steps = default.steps * (default.batch_size + STEP_OVERHEAD_IMAGES) / (batch_size + STEP_OVERHEAD_IMAGES)
    return max(10, int(round(steps / 10)) * 10)


def training_budget(batch_size: int | None = None, steps: int | None = None, lr: float | None = None, *,
                    scale: int = 1, default: Budget | None = None) -> Budget:
    """The one rule linking a training's steps and learning rate to its batch size, applied
    to the settings left out (None): the batch size is the default's; the steps are the
    default's at its batch size and at another the count at which a training costs what a
    default one does (`recommended_steps`), times `scale` (retrain trains twice as long);
    the lr scales linearly with the batch size from the default's (`scaled_lr`). Given
    values are kept as they are. `default`: the budget at the default batch size, the
    trainer's 300 steps of 128 at lr 0.1 unless given (a run's own settings; later, a
    proxy's own recipe)."""
    default = default or TRAINER_BUDGET
    batch = default.batch_size if batch_size is None else batch_size
    if steps is None:
        steps = scale * (default.steps if batch == default.batch_size else recommended_steps(batch, default))
    if lr is None:
        lr = scaled_lr(batch, default=default)
    return Budget(steps, batch, lr)


@dataclass
class EvalConfig:
    """Everything that decides a candidate's record (it goes into run.json)."""

    dataset: str = "fashion-mnist"       # the images of the image proxies (charlm reads its own text)
    data_root: str | None = None
    archs: tuple[str, ...] = ("resnet", "mobilenetv2", "efficientnet")
    # None: training_budget's rule (300 steps; at another batch size the steps at which a CNN
    # training costs the same), one step count for every proxy
    steps: int | None = None
    # None: each proxy's recipe (evaluators.proxies.Recipe: 128 and 0.1 for the CNNs); given,
    # they override every proxy's (a batch size without an lr scales each recipe's lr)
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    # protocol 5: archs[0]'s training is scored after quality_steps (then it goes on). None:
    # a fifth of the steps when they follow the batch size, else a fifth of the trainer's (60)
    quality_steps: int | None = None
    quality_threshold: float = 0.2
    # protocol 4: reject when the adversarial gradient norm grows more than this
    stability_threshold: float = 1e4
    compile: str | bool = "auto"
    device: str = "auto"
    # the cross-run training cache (evaluators.cache): read a training someone trained before
    # instead of repeating it, and store every new one; False (--no-cache): neither
    cache: bool = True

    def __post_init__(self):
        self.archs = tuple(self.archs)
        derived = self.steps is None
        if derived and (self.batch_size is None or _positive_int(self.batch_size)):
            self.steps = training_budget(self.batch_size).steps
        if self.quality_steps is None and _positive_int(self.steps):
            self.quality_steps = max(1, (self.steps if derived else TRAINER_BUDGET.steps) // 5)
        problems = []
        if not self.archs:
            problems.append("archs is empty")
        for key in ("steps", "quality_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{key} must be a positive integer, got {value!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            problems.append(f"batch_size must be a positive integer, got {self.batch_size!r}")
        for key in ("lr", "stability_threshold"):
            value = getattr(self, key)
            if value is None and key == "lr":
                continue
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

    def train_config(self, steps: int | None = None, seed: int | None = None, arch: str | None = None):
        """The trainer's config for one training of proxy `arch` (default archs[0]): its
        recipe from the proxy registry, under this config's overrides (`seed`: another seed
        than the run's, for a confirmation)."""
        return _trainer.proxy_config(arch or self.archs[0], steps or self.steps, self.batch_size, self.lr,
                                     seed=self.seed if seed is None else seed, compile=self.compile)

    def batch_size_for(self, arch: str) -> int:
        return self.train_config(arch=arch).batch_size

    def lr_for(self, arch: str) -> float:
        return self.train_config(arch=arch).lr


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class ProxyData:
    """The datasets of a worker's proxies, each loaded once, lazily, on the worker's device:
    the run's images (`dataset`, for the image proxies) and Python's text (for charlm), as
    each proxy's registry entry says (`evaluators.proxies.Proxy.data`)."""

    def __init__(self, dataset: str = "fashion-mnist", data_root: str | None = None, device="cpu",
                 loaded: dict | None = None):
        self.name, self.data_root, self.device = dataset, data_root, device
        self.loaded = dict(loaded or {})     # "images" | "text" -> dataset

    def get(self, kind: str):
        if kind not in self.loaded:
            if kind == "text":
                from .datasets.text import load_text
                self.loaded[kind] = load_text(self.device)
            else:
                from .datasets import load_dataset
                self.loaded[kind] = load_dataset(self.name, self.device, self.data_root)
        return self.loaded[kind]

    def for_arch(self, arch: str):
        from .proxies import data_of
        return self.get(data_of(arch))

    def to(self, device) -> "ProxyData":
        """The loaded datasets moved to `device` (what is not loaded yet loads there)."""
        return ProxyData(self.name, self.data_root, device, {k: v.to(device) for k, v in self.loaded.items()})


def refusal(graph: Graph, archs) -> str | None:
    """Why `graph` may not train on `archs`, or None: a causal proxy (charlm) refuses a layer
    that mixes positions (batch, instance, group or layer moments of x: a token would see
    the ones after it, so next-character accuracy would measure a leak, not a layer)."""
    from .proxies import causal_archs
    causal = causal_archs(archs)
    if causal and graph.mixes_positions:
        return (f"{causal[0]}: the layer mixes positions (a batch, instance, group or layer moment of x, "
                f"or a batch-normalising unit), which would let a causal model see the future; "
                f"only channel moments and pointwise ops keep each token to itself")
    return None


class Evaluator:
    """Worker side: the datasets live on this worker's device, each loaded once, when a proxy
    first needs it (`ProxyData`)."""

    def __init__(self, config: EvalConfig | None = None, dataset=None):
        """`dataset`: the image dataset already loaded (else loaded when first needed), or a
        `ProxyData`."""
        self.config = config or EvalConfig()
        self.device = resolve_device(self.config.device)
        if isinstance(dataset, ProxyData):
            self.data = dataset
        else:
            self.data = ProxyData(self.config.dataset, self.config.data_root, self.device,
                                  {} if dataset is None else {_kind(dataset): dataset})
            if dataset is None:   # load what the proxies need now: a bad dataset shows at start
                for arch in self.config.archs:
                    self.data.for_arch(arch)
        self.quality = Quality(self.config.quality_threshold)
        from .cache import TrainingCache, enabled
        self.cache = TrainingCache() if getattr(self.config, "cache", False) and enabled() else None

    @property
    def dataset(self):
        """The image dataset (the run's --dataset)."""
        return self.data.get("images")

    def train_arch(self, graph: Graph, arch: str, steps: int | None = None, progress=None,
                   stop_at: int | None = None, resume: dict | None = None, seed: int | None = None):
        """One proxy training (a TrainResult); never raises for a bad layer, and never trains a
        layer that a causal proxy refuses (`refusal`: a failed result says why).
        `progress(step, steps)` is called after every step; `stop_at`/`resume` halt and
        continue it (see `trainer.train_and_score`)."""
        refused = refusal(graph, (arch,))
        if refused:
            return _trainer.TrainResult(accuracy=None, final_loss=None, steps_done=0, seconds=0.0,
                                        compile_seconds=0.0, images_per_second=0.0,
                                        reason=refused.split(": ", 1)[1])

        def factory(channels):
            return compile_layer(graph, channels)
        return _trainer.build_and_train(arch, factory, self.data.for_arch(arch),
                                        self.config.train_config(steps, seed, arch),
                                        self.device, progress=progress, stop_at=stop_at, resume=resume)

    def train(self, task, stop_on_low_quality: bool = True, progress=None) -> dict:
        """Protocol 5 on archs[0], then the proxies. `task` is the graph's JSON (train to the
        full budget) or a rung of a progressive hurdle, `{"graph": json, "steps": s,
        "state": bytes or None}`: train every proxy to step s of the full schedule (from the
        state of the previous rung, if any) and return the rung's scores with a
        `checkpoint` (bytes) to continue from; at s = steps there is no checkpoint. A task's
        `"seed"` trains with that seed instead of the run's (a front candidate's confirmation).
        `progress(step, steps)` is passed to every training (the eval command's bar)."""
        start = time.perf_counter()
        archs = self.config.archs
        graph_json, until, state, seed = _task(task, self.config.steps)
        record = {"status": "ok", "reason": None, **{f"acc_{a}": None for a in archs},
                  "steps_trained": until, "seconds": 0.0, "stage_seconds": {}, "loss_curves": {}}
        stages = record["stage_seconds"]
        self._trainings = []      # every training behind the record: True where it came from the cache

        def finish():
            record["seconds"] = time.perf_counter() - start
            done = getattr(self, "_trainings", None) or []
            record["cached"] = all(done) if done else None
            self._trainings = None
            return record

        try:
            graph = to_graph(graph_json)
        except Exception as err:
            record.update(status="failed", reason=f"graph does not load: {err}")
            return finish()
        refused = refusal(graph, archs)
        if refused:   # before any training: a causal proxy must not train it at all
            record.update(status="failed", reason=refused)
            return finish()
        states = _load_states(state, self.device) if state else {}
        first = None
        if not state:             # the first rung (a later one's checkpoint may hold no state: cached)
            first = self._quality(graph, record, until, states, stop_on_low_quality, progress, seed)
            if first is None:
                return finish()
        checkpoint = {}
        for arch in archs:
            if first is not None and arch == archs[0] and first.steps_done == until:
                result = first        # the quality run already reached the rung
            else:
                result = self._run(graph, arch, until, progress, states.get(arch), seed)
                stages[arch] = stages.get(arch, 0.0) + _seconds(result)
            record["loss_curves"][arch] = loss_curve(getattr(result, "losses", None), self.config.steps)
            failure = _failure(result)
            if failure:
                record.update(status="failed", reason=f"{arch}: {failure}")
                return finish()
            record[f"acc_{arch}"] = _accuracy(result)
            if until < self.config.steps and result.state is not None:
                checkpoint[arch] = result.state
        if until < self.config.steps:   # what a proxy from the cache lacks, the next rung trains afresh
            record["checkpoint"] = _dump_states(checkpoint)
        return finish()

    def _quality(self, graph, record, until, states, stop_on_low_quality, progress, seed=None):
        """Protocol 5: the first `quality_steps` of archs[0]'s training (its full schedule),
        scored. The training goes on from there (its state is left in `states`), so a
        candidate that passes pays only for one evaluation. Returns the training's result,
        or None when the record is settled: failed, or low quality with stop_on_low_quality."""
        arch = self.config.archs[0]
        steps = min(self.config.quality_steps, until)
        result = self._run(graph, arch, steps, progress, None, seed)
        record["stage_seconds"]["quality"] = _seconds(result)
        record["loss_curves"][arch] = loss_curve(getattr(result, "losses", None), self.config.steps)
        failure = _failure(result)
        if failure:
            record.update(status="failed", reason=f"{arch}: {failure}")
            return None
        if result.state is not None:
            states[arch] = result.state
        verdict = self.quality.judge(_accuracy(result), _seconds(result), f"after {steps} steps on {arch}")
        if verdict.status is not None:
            record.update(status=verdict.status, reason=verdict.reason)
            if stop_on_low_quality:
                return None
        return result

    def _run(self, graph, arch, until, progress=None, resume=None, seed=None):
        """archs' training on the full budget's schedule, halted at step `until`: from the
        training cache when it holds it (a result with `cached` True and no state), else
        trained (from `resume`, or from the start) and stored there."""
        from .cache import through_cache

        def train():
            try:
                return self.train_arch(graph, arch, None, progress, until, resume, seed)
            except Exception as err:  # the trainer promises not to raise; be safe anyway
                return _Failed(f"training raised {type(err).__name__}: {err}")

        key = self.cache_key(graph, arch, until, seed) if self.cache is not None else None
        result = through_cache(self.cache, key, train)
        self._count(bool(getattr(result, "cached", False)))
        return result

    def _count(self, cached: bool) -> None:
        trainings = getattr(self, "_trainings", None)
        if trainings is not None:
            trainings.append(cached)

    def cache_key(self, graph, arch: str, until: int, seed: int | None = None, split: str = "val") -> dict:
        """The training cache's key of archs' training of `graph`, halted at step `until`."""
        from .cache import data_name, training_key
        return training_key(graph_hash=graph.hash, arch=arch, data=data_name(arch, self.config.dataset),
                            split=split, stop_at=until, config=self.config.train_config(None, seed, arch),
                            device=self.device)


def loss_curve(losses, total: int, points: int = CURVE_POINTS) -> list:
    """A training's loss curve for the record (`loss_curves`): the mean of `losses` (one per
    step, from step 0) over each 1/`points` of the `total` steps of the full budget, for the
    segments complete so far, so that a rung's curve is a prefix of the full training's (and
    every candidate's curve at a rung has the same points). A segment with a non-finite loss
    is None; 5 significant digits."""
    losses = list(losses or [])
    out = []
    for i in range(points):
        lo, hi = (i * total) // points, ((i + 1) * total) // points
        if hi > len(losses):
            break
        if hi <= lo:
            continue
        chunk = losses[lo:hi]
        mean = sum(chunk) / len(chunk)
        out.append(float(f"{mean:.5g}") if math.isfinite(mean) else None)
    return out


def _kind(dataset) -> str:
    return "text" if hasattr(dataset, "vocab") else "images"


def _task(task, steps: int) -> tuple[str, int, bytes | None, int | None]:
    """(graph JSON, the step to train to, the previous rung's checkpoint, the seed or None
    for the run's)."""
    if isinstance(task, dict):
        until = int(task.get("steps") or steps)
        if not 1 <= until <= steps or task.get("total", steps) != steps:
            raise ValueError(f"a rung of {task.get('total')} steps reached a worker that trains {steps}")
        seed = task.get("seed")
        return task["graph"], until, task.get("state"), None if seed is None else int(seed)
    return task, steps, None, None


def _dump_states(states: dict) -> bytes:
    import io

    import torch
    buffer = io.BytesIO()
    torch.save(states, buffer)
    return buffer.getvalue()


def _load_states(blob: bytes, device) -> dict:
    """A rung's checkpoint: tensors and plain containers only (weights_only: no pickle)."""
    import io

    import torch
    return torch.load(io.BytesIO(blob), map_location=device, weights_only=True)


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
