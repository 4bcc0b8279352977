"""A fixed-step, seeded trainer for proxy networks.

SGD with (Nesterov) momentum or AdamW (`TrainConfig.optimizer`; each proxy's recipe in
evaluators/proxies says which), a linear warm-up then cosine decay to zero, weight
decay on matrices only (conv/linear weights, embeddings; not on the layers' per-channel
vectors, biases or scalars), optional label smoothing, mixed precision (see below).
Batches come from the dataset's `train_batches` (`ImageDataset`: seeded epoch
permutations, augmented on the device from the second epoch on, see
`AUGMENT_FROM_EPOCH`; `TextDataset`: seeded windows of text). Evaluation is one pass over the
validation (or test) split in eval mode. A sequence model returns logits (N, V, T) for
targets (N, T): the loss, the accuracy and the non-finite tolerance count tokens.

The measurements behind the defaults below (budget, warm-up, augmentation,
compiling) are in benchmarks/MEASUREMENTS.md.

Bad layers are data, not exceptions: `train_and_score` and `build_and_train`
stop at the first non-finite loss and report it in `TrainResult.reason`
(accuracy None); any exception raised by building or running the network
becomes a reason too.

Determinism: `build_and_train` seeds the model initialisation and the data
order from `config.seed` (without disturbing the global RNG), so on CPU the
same seed, layer and thread count give the same accuracy, bit for bit.

Mixed precision and the GPU branches (``amp``, ``check_every``)
--------------------------------------------------------------
``amp="auto"`` autocasts to bfloat16 on CUDA (float16 with a loss scaler where
the GPU lacks bfloat16) and trains in float32 on CPU; ``"bf16"``/``"fp16"`` ask
for it on any device, so every CUDA branch (autocast, the scaler, compiling
under autocast) runs on CPU too. Generated layers compute in float32 under
autocast and answer in their input's dtype (primitives.codegen). The loss is
checked for non-finite values every ``check_every`` steps, a host sync on a
GPU (``"auto"``: every 25 steps on CUDA, every step on CPU); the first bad
step is still the one reported.

torch.compile (``compile="auto"``)
----------------------------------
Compiled candidate layers train at or above eager torch BN-ReLU speed, but
compiling costs about as much as a whole eager default training on a CPU, and
every candidate is a new graph (benchmarks/MEASUREMENTS.md). The rule for ``auto``:

- on CPU, compile when ``steps * batch_size >= AUTO_COMPILE_MIN_IMAGES``
  (150 000; the default budget, 300 x 128 = 38 400, trains eagerly) and the
  network's layers are not plain ``nn.BatchNorm2d``/``nn.ReLU`` modules;
- on CUDA, compile every network whose layers are not plain BatchNorm/ReLU
  (GPU compile is faster, and eager elementwise chains launch many kernels).

Compilation uses ``dynamic=False`` (fixed batch shapes; the last eval batch
runs eagerly when its size differs) and inductor's on-disk FX graph cache, so
the second training of the same layer on the same proxy skips most of the
work. Evaluation runs the eager module (no second compile for eval mode).
A compile failure falls back to eager training and is noted in
`TrainResult.note`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from primitives.codegen import unit_parameters
from primitives.ops import OPS
from primitives.util import one_line

from .proxies import build_for

# On CPU, compile only when at least this many training images go through the
# network: below it a candidate's compile costs more than its eager training, and
# every candidate is a new graph, so nothing amortises; longer runs (retrain) do
# (benchmarks/MEASUREMENTS.md).
AUTO_COMPILE_MIN_IMAGES = 150_000
# check_every="auto": check the loss for non-finite values every this many steps on
# CUDA (a host sync per check), every step on CPU (no sync to save).
CUDA_CHECK_EVERY = 25
# TrainConfig.amp -> autocast dtype; "auto" is bf16 on CUDA (fp16 without bf16), off on CPU
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}

# TrainConfig.augment -> the first augmented epoch (None: never). Random crops
# fight overfitting to images seen before; in its first epoch a network has seen
# none, so there they only make the task harder. At the default budget (300 x 128
# images, 0.7 of an epoch) augmenting cost EvoNorm-S0 on mobilenetv2 5 points
# (79.3% against 84.5% on the Fashion-MNIST validation split).
AUGMENT_FROM_EPOCH = {"auto": 1, True: 0, False: None}

_PLAIN_NORM_ACT = (nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.Sequential)
OPTIMIZERS = ("sgd", "adamw")

# Changes whenever what a training computes would: bump it in any commit that changes the
# trainer's numbers (tests/test_trainer_version.py holds a training's loss per version and
# fails when they move without a bump). 1: gradient clipping at 1.0 (34323d8), AdamW and
# the Transformer recipes; results made before it carry no version ("before versioning").
TRAINER_VERSION = 1


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"               # "sgd" (momentum, nesterov) | "adamw" (betas)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.15        # linear warm-up over this share of steps, then cosine to 0
    label_smoothing: float = 0.0
    seed: int = 0
    compile: str | bool = "auto"         # "auto" | True | False
    amp: bool | str = "auto"             # "auto" (True) | "bf16" | "fp16" | "off" (False), see above
    check_every: int | str = "auto"      # steps between non-finite loss checks; "auto": 25 on CUDA, 1 on CPU
    eval_batch_size: int = 1000
    augment: bool | str = "auto"         # "auto": from the second epoch on; True: always; False: never
    threads: int | None = None           # torch intra-op threads during this training (restored after)
    poly_lr: float = 0.003               # poly unit coefficients: this times lr, no weight decay
    rational_lr: float = 0.01            # rational unit coefficients: this times lr, no weight decay
    grad_clip: float | None = 1.0        # clip the network's gradient norm (not unit coefficients'); None: never
    shared_boost: float = 10.0           # shared=1 units: this times their kind's rate, on the channels' mean gradient

    def __post_init__(self):
        problems = []
        for key in ("steps", "batch_size", "eval_batch_size"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{key} must be a positive integer, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            problems.append(f"lr must be positive, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.betas)):
            problems.append(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not 0 <= self.warmup_fraction < 1:
            problems.append(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction!r}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must lie in [0, 1), got {self.label_smoothing!r}")
        if self.augment not in AUGMENT_FROM_EPOCH:
            problems.append(f"augment must be 'auto', True or False, got {self.augment!r}")
        if self.compile not in ("auto", True, False):
            problems.append(f"compile must be 'auto', True or False, got {self.compile!r}")
        if self.amp not in (True, False, "auto", *AMP_DTYPES):
            problems.append(f"amp must be 'auto', 'bf16', 'fp16', 'off', True or False, got {self.amp!r}")
        if self.check_every != "auto" and (isinstance(self.check_every, bool)
                                           or not isinstance(self.check_every, int) or self.check_every < 1):
            problems.append(f"check_every must be 'auto' or a positive integer, got {self.check_every!r}")
        for key in ("poly_lr", "rational_lr"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                problems.append(f"{key} must lie in [0, 1], got {v!r}")
        if isinstance(self.shared_boost, bool) or not isinstance(self.shared_boost, (int, float)) \
                or not self.shared_boost > 0:
            problems.append(f"shared_boost must be positive, got {self.shared_boost!r}")
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, (int, float))
                                           or not self.grad_clip > 0):
            problems.append(f"grad_clip must be positive or None, got {self.grad_clip!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            problems.append(f"threads must be a positive integer or None, got {self.threads!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def amp_dtype(self, device) -> torch.dtype | None:
        """The autocast dtype of a training on `device`; None trains in full precision."""
        amp = {True: "auto", False: "off"}.get(self.amp, self.amp)
        if amp != "auto":
            return AMP_DTYPES[amp]
        if torch.device(device).type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def check_interval(self, device) -> int:
        if self.check_every != "auto":
            return self.check_every
        return CUDA_CHECK_EVERY if torch.device(device).type == "cuda" else 1

    def lr_at(self, step: int) -> float:
        warm = int(self.steps * self.warmup_fraction)
        if step < warm:
            return self.lr * (step + 1) / warm
        t = (step - warm) / max(1, self.steps - warm)
        return self.lr * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class TrainResult:
    accuracy: float | None               # fraction 0..1 on `split`, None when training failed
    final_loss: float | None             # mean training loss of the last (up to) 10 steps
    steps_done: int
    seconds: float                       # wall time of the whole call (compile and eval included)
    compile_seconds: float               # estimated time spent compiling (0 when eager)
    images_per_second: float             # training throughput, compilation excluded
    reason: str | None = None            # None when fine, else why there is no accuracy
    compiled: bool = False
    eval_seconds: float = 0.0
    note: str | None = None              # e.g. a compile failure that fell back to eager
    losses: list[float] = field(default_factory=list, repr=False)
    state: dict | None = field(default=None, repr=False)  # to continue a training halted early

    @property
    def ok(self) -> bool:
        return self.reason is None


def is_plain_norm_act(model: nn.Module) -> bool:
    """True when the model has no modules beyond convs, linears, BN, ReLU, SE gates
    and containers: nothing for a compiler to fuse beyond what oneDNN/cuDNN do."""
    from .proxies.cnn import InvertedResidual, MobileProxy, PlainProxy, PreActBlock, ResNetProxy, SqueezeExcite
    known = (nn.Conv2d, nn.Linear, nn.MaxPool2d, *_PLAIN_NORM_ACT, PreActBlock, ResNetProxy, MobileProxy,
             PlainProxy, InvertedResidual, SqueezeExcite)
    return all(isinstance(m, known) for m in model.modules())


def should_compile(model: nn.Module, config: TrainConfig, device) -> bool:
    if config.compile is True or config.compile is False:
        return config.compile
    if is_plain_norm_act(model):
        return False
    if torch.device(device).type == "cuda":
        return True
    return config.steps * config.batch_size >= AUTO_COMPILE_MIN_IMAGES


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Optimiser groups: weight decay on matrices only (conv/linear weights, embeddings: every
    parameter of more than one dimension), none on vectors (biases, the layers' per-channel
    vectors) or scalars; the coefficients of the
    layers' polynomial and rational units on their own, at `config.poly_lr` and
    `config.rational_lr` times the learning rate, without weight decay (decay pulls a
    unit towards zero, not towards the activation it starts as). A unit's curvature
    grows like the moments E[e^2k] of its input, outliers included: at the full rate
    a cubic's leading coefficient grew to 0.2 in 30 steps, then the loss to 1e12. A
    rational unit, whose denominator tames its tails, takes a higher rate than a
    polynomial, which has nothing to (docs/units.md).

    A shared unit (`shared=1`: one coefficient column for C channels) gets a gradient
    summed over its channels; its group's rate divides by C, so it steps on their mean,
    `config.shared_boost` times faster than a per-channel unit: shared, the rational
    trained best at ten times the per-channel rate (docs/units.md)."""
    kinds = unit_parameters(model)              # parameter name -> unit op
    units = {name: [] for name, op in OPS.items() if op.kind == "unit"}   # a group per kind, even empty
    rest, shared = [], []
    for name, p in model.named_parameters():
        kind = kinds.get(name)
        rate = getattr(config, OPS[kind].rate) if kind else None
        channels = _channels_of_owner(model, name) if kind else None
        if kind and channels and p.shape[-1] == 1 < channels:
            shared.append({"params": [p], "weight_decay": 0.0, "clip": False,
                           "lr_scale": rate * config.shared_boost / channels})
        else:
            (units[kind] if kind else rest).append(p)
    return [{"params": [p for p in rest if p.ndim > 1], "weight_decay": config.weight_decay, "lr_scale": 1.0, "clip": True},
            {"params": [p for p in rest if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": 1.0, "clip": True},
            *({"params": units[kind], "weight_decay": 0.0, "lr_scale": getattr(config, OPS[kind].rate), "clip": False}
              for kind in units),
            *shared]


def _channels_of_owner(model: nn.Module, name: str) -> int | None:
    """The channel count of the generated layer that owns parameter `name`."""
    owner = model.get_submodule(name.rpartition(".")[0])
    return getattr(owner, "channels", None)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """`config.optimizer` over `param_groups(model, config)`: SGD with momentum, or AdamW with
    decoupled weight decay (Loshchilov & Hutter 2019), the decay again only in the matrices' group."""
    groups = param_groups(model, config)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def _compile(model: nn.Module):
    return torch.compile(model, dynamic=False, fullgraph=False)


# A rare input that escapes to inf or nan in eval mode (in a deep chain of polynomials, an
# input a little outside training's range grows doubly exponentially) is a wrong prediction,
# not a broken layer: up to this share of a split's rows are counted wrong, and the result
# says how many (`TrainResult.note`). Beyond it the layer is broken: no accuracy.
NONFINITE_ROWS_TOLERATED = 0.01


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset, split: str = "val", batch_size: int = 1000,
                      amp_dtype=None) -> tuple[float | None, str | None, int]:
    """(accuracy, reason, rows whose output was not finite): accuracy None with a reason when
    more than NONFINITE_ROWS_TOLERATED of the rows were not finite; fewer count as wrong. A row
    is a target: an image, or a token of a sequence model (logits (N, V, T), targets (N, T))."""
    was_training = model.training
    model.eval()
    correct = total = bad = 0
    limit = NONFINITE_ROWS_TOLERATED * dataset.split(split)[1].numel()
    try:
        for x, y in dataset.eval_batches(split, batch_size):
            with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(x)
            finite = torch.isfinite(out).all(1)
            bad += int((~finite).sum())
            if bad > limit:
                return None, f"non-finite output in evaluation on {split} (more than {limit:.0f} rows)", bad
            correct += int(((out.argmax(1) == y) & finite).sum())
            total += y.numel()
    finally:
        model.train(was_training)
    if total == 0:
        return None, f"the {split} split is empty", 0
    return correct / total, None, bad


def train_and_score(model: nn.Module, dataset, config: TrainConfig | None = None, device="cpu",
                    split: str = "val", progress: Callable[[int, int], None] | None = None,
                    stop_at: int | None = None, resume: dict | None = None) -> TrainResult:
    """Train `model` for `config.steps` steps on `dataset`'s training split and score
    it on `split`. Never raises for a bad model: failures come back in `reason`.

    `stop_at` halts the training after that many steps of the same schedule (a rung of
    a progressive hurdle), scores it and returns its `state`; passing that state back as
    `resume` (with a freshly built model) continues to `config.steps`, and the result
    equals the uninterrupted training's, bit for bit on CPU."""
    config = config or TrainConfig()
    args = (model, dataset, config, device, split, progress, stop_at, resume)
    if config.threads is None:
        return _train_and_score(*args)
    before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train_and_score(*args)
    finally:
        torch.set_num_threads(before)


class _Run:
    """What a training reports, kept up to date as it goes, so that a failure at any
    point still returns the steps, losses and notes so far."""

    def __init__(self):
        self.start = time.perf_counter()
        self.step = 0
        self.losses: list[float] = []
        self.compile_seconds = 0.0
        self.compiled = False
        self.note: str | None = None

    def result(self, acc=None, reason=None, images_per_second=0.0, eval_seconds=0.0) -> TrainResult:
        tail = [v for v in self.losses[-10:] if math.isfinite(v)]
        return TrainResult(accuracy=acc, final_loss=(sum(tail) / len(tail)) if tail else None,
                           steps_done=self.step, seconds=time.perf_counter() - self.start,
                           compile_seconds=self.compile_seconds, images_per_second=images_per_second,
                           reason=reason, compiled=self.compiled, eval_seconds=eval_seconds,
                           note=self.note, losses=self.losses)

    def record(self, pending: list[torch.Tensor]) -> int | None:
        """Move the losses waiting for a check into `losses` (one host sync); at a
        non-finite one, keep the losses up to it, rewind `step` to just after it and
        return its step, else None."""
        values = torch.stack(pending).float().tolist()
        pending.clear()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                bad = self.step - len(values) + i
                self.losses.extend(values[:i + 1])
                self.step = bad + 1
                return bad
        self.losses.extend(values)
        return None

    def throughput(self, first: int, first_step_seconds: float, train_seconds: float,
                   batch_size: int) -> float:
        """Training images/s without compilation, which is estimated as the first step's
        excess over the mean of the others."""
        done = self.step - first
        if self.compiled and done > 1:
            rest = (train_seconds - first_step_seconds) / (done - 1)
            self.compile_seconds = max(0.0, first_step_seconds - rest)
        return done * batch_size / max(1e-9, train_seconds - self.compile_seconds)


def _train_and_score(model, dataset, config, device, split, progress, stop_at=None, resume=None) -> TrainResult:
    run = _Run()
    device = torch.device(device)
    try:
        return _train(run, model, dataset, config, device, split, progress, stop_at, resume)
    except Exception as err:
        return run.result(reason=f"{one_line(err)} (at step {run.step})")


def _train(run: _Run, model, dataset, config, device, split, progress, stop_at, resume) -> TrainResult:
    model = model.to(device).train()
    amp_dtype = config.amp_dtype(device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    opt = make_optimizer(model, config)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    batches = dataset.train_batches(config.batch_size, gen, AUGMENT_FROM_EPOCH[config.augment])
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    if resume is not None:
        run.step, run.losses = _load_state(resume, model, opt, scaler, batches)
    net = _compile(model) if should_compile(model, config, device) else model
    run.compiled = net is not model
    step_fn = _step_function(opt, scaler, amp_dtype, config, device)
    t_train = time.perf_counter()
    first = run.step
    first_step_seconds, reason = _loop(run, net, model, step_fn, opt, batches, end, config, device, progress)
    if reason is not None:
        return run.result(reason=reason)
    if device.type == "cuda":
        torch.cuda.synchronize()
    images_per_second = run.throughput(first, first_step_seconds, time.perf_counter() - t_train,
                                       config.batch_size)
    t_eval = time.perf_counter()
    acc, reason, bad = evaluate_accuracy(model, dataset, split, config.eval_batch_size, amp_dtype)
    if bad and reason is None:
        run.note = "; ".join(filter(None, [run.note, f"{bad} {split} rows non-finite, counted wrong"]))
    out = run.result(acc, reason, images_per_second, time.perf_counter() - t_eval)
    if run.step < config.steps and reason is None:
        out.state = _save_state(run.step, run.losses, model, opt, scaler, batches)
    return out


def _step_function(opt, scaler, amp_dtype, config, device) -> Callable:
    """One optimiser step of `net` on a batch, under autocast and the loss scaler when
    asked; returns the loss, still on the device (checked later, in batches)."""

    def run_step(net, x, y):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(net(x), y, label_smoothing=config.label_smoothing)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            _clip(opt, config.grad_clip)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            _clip(opt, config.grad_clip)
            opt.step()
        return loss.detach()

    return run_step


def _clip(opt, max_norm: float | None) -> None:
    """Bound the network's step at the one search rate: layers at the edge of stability
    (GN-ReLU, LN-GELU, PolyNorm on the mobile proxies) spiked at the warm-up's peak and
    never recovered. Unit coefficients are left out: their own small rates bound them, and
    a rational's large gradients would otherwise shrink the whole network's step (docs/units.md)."""
    if max_norm is not None:
        params = [p for g in opt.param_groups if g.get("clip", True) for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


def _loop(run: _Run, net, model, run_step, opt, batches, end, config, device, progress):
    """Train from `run.step` to `end`; (seconds of the first step, the reason the training
    stopped early or None). The losses are checked every `check_interval` steps."""
    check_every = config.check_interval(device)
    pending: list[torch.Tensor] = []
    first, first_step_seconds = run.step, 0.0
    while run.step < end:
        for group in opt.param_groups:
            group["lr"] = config.lr_at(run.step) * group["lr_scale"]
        x, y = next(batches)
        t0 = time.perf_counter()
        if run.step == first and run.compiled:
            net, loss = _first_compiled_step(run, net, model, run_step, opt, x, y)
        else:
            loss = run_step(net, x, y)
        if run.step == first:
            first_step_seconds = time.perf_counter() - t0
        pending.append(loss)
        run.step += 1
        if len(pending) >= check_every or run.step == end:
            bad = run.record(pending)
            if bad is not None:
                return first_step_seconds, f"non-finite loss at step {bad}"
        if progress is not None:
            progress(run.step, config.steps)
    return first_step_seconds, None


def _first_compiled_step(run: _Run, net, model, run_step, opt, x, y):
    """The first step of a compiled network compiles it. On failure (compile trouble or a
    broken layer) retry eagerly, noting why; a broken layer fails again. (net, loss)."""
    try:
        return net, run_step(net, x, y)
    except Exception as err:
        run.note = f"compile failed, trained eagerly: {one_line(err, 200)}"
        run.compiled = False
        opt.zero_grad(set_to_none=True)
        return model, run_step(model, x, y)


def _save_state(step, losses, model, opt, scaler, batches) -> dict:
    """Everything a halted training needs to go on: weights and buffers, the optimiser's
    momentum, the loss scaler, the batch stream's position and RNG, the steps done."""
    return {"step": step, "losses": list(losses), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scaler": None if scaler is None else scaler.state_dict(),
            "batches": batches.state()}


def _load_state(state, model, opt, scaler, batches) -> tuple[int, list[float]]:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    batches.load_state(state["batches"])
    return int(state["step"]), list(state["losses"])


def trainer_fingerprint() -> dict:
    """What a result's numbers depend on besides its own settings: the trainer's version, its
    default settings (clipping included), every proxy's recipe, torch's version and the
    source commit. run.json, the retrain's table and its journal record it."""
    import dataclasses

    from primitives.util import source_commit

    from .proxies import PROXIES
    return {"version": TRAINER_VERSION, "settings": dataclasses.asdict(TrainConfig()),
            "recipes": {name: dataclasses.asdict(p.recipe) for name, p in PROXIES.items()},
            "torch": torch.__version__, "commit": source_commit()}


def proxy_config(arch: str, steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
                 **overrides) -> TrainConfig:
    """The TrainConfig of proxy `arch`'s recipe (evaluators.proxies.Recipe) for `steps` (None:
    the trainer's default); `batch_size` and `lr`, when given, override it (a batch size
    without an lr scales the recipe's lr); `overrides` are further TrainConfig fields."""
    from .proxies import get_proxy
    settings = get_proxy(arch).recipe.train_settings(batch_size, lr)
    if steps is not None:
        settings["steps"] = steps
    return TrainConfig(**{**settings, **overrides})


def build_and_train(arch: str, layer_factory, dataset, config: TrainConfig | None = None, device="cpu",
                    split: str = "val", progress=None, width: int | None = None,
                    depth: int | None = None, stop_at: int | None = None,
                    resume: dict | None = None) -> TrainResult:
    """Seed, build proxy `arch` around `layer_factory` (on CPU, so the initial weights do
    not depend on the device), train and score it on `dataset` (the data the proxy trains on:
    images, or the text for charlm). `config` is used as given: a proxy's own recipe is
    `proxy_config(arch, ...)`. Never raises for a bad layer; an unknown arch is still a
    `ProxyError`."""
    from .proxies import PROXY_NAMES, ProxyError
    config = config or TrainConfig()
    if arch not in PROXY_NAMES:
        raise ProxyError(f"unknown proxy architecture {arch!r} (expected one of: {', '.join(PROXY_NAMES)})")
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_for(arch, layer_factory, dataset, width=width, depth=depth)
    except Exception as err:
        return TrainResult(accuracy=None, final_loss=None, steps_done=0,
                           seconds=time.perf_counter() - start, compile_seconds=0.0,
                           images_per_second=0.0, reason=f"building {arch} failed: {one_line(err)}")
    return train_and_score(model, dataset, config, device, split, progress, stop_at, resume)
