"""Rejection protocols: cheap tests that throw most candidate layers away.

Each protocol is a small unit that counts what it checked and rejected and
the seconds it spent (`.stats()`); a check returns a `Verdict` (status None
when the candidate passed) and never raises for a bad candidate.

1. `Validity`: the layer compiles, keeps the input shape, is finite on random
   input at its initial parameters, and is not constant in x. A non-finite
   output is reported as ``unstable`` (a numerical failure); the rest as
   ``invalid``.
2. `Duplicate`: the canonical graph hash was seen before, after vectors with
   the same initial value are renamed canonically (`primitives.canonical`), so
   ``x * v7 + beta`` is a duplicate of ``x * gamma + beta``.
3. `Equivalence`: the layer trains like an earlier one. The fingerprint is the
   layer's train-mode output, in float64, on fixed probe inputs (different
   shapes, scales and channel counts, so group counts, eps values and
   batch/instance axes show) along a short deterministic training trajectory:
   the real initial parameters (vectors at 1 or 0, units at the identity),
   then `TRAJECTORY_STEPS` normalised gradient steps on a fixed linear probe
   loss. Two layers match only when they train alike: renamed vectors of one
   initial value match, dead terms match their absence (``layer_var(beta)``
   starts at 0 with zero gradient and stays 0), while ``x * gamma`` differs
   from ``x`` after one step and ``x + beta * gamma`` from ``x + beta`` after
   two (gamma's gradient is zero until beta moves). The outputs are sketched by
   fixed random projections and matched within a relative tolerance far above
   float64 reassociation error and far below any real difference: no rounding
   boundary can split two equal layers.
4. `Stability` (the EvoNorms protocol): in a tiny residual network the input
   and each weight tensor get a log-scale; a few steps of sign-gradient ascent
   on the log-scales maximise the gradient norm of the loss. The layer is
   ``unstable`` when a gradient goes non-finite, when the worst gradient norm
   exceeds `threshold` times the unscaled one, or when the unscaled one exceeds
   `threshold` times that of BN-ReLU in the same network.
5. `Quality`: a short training on the first proxy scores below a threshold
   (the training itself runs in `evaluators.evaluate.Evaluator`).
"""
from __future__ import annotations

import hashlib
import math
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from primitives import Graph, compile_layer, parse
from primitives.canonical import canonical_hash
from primitives.library import REFERENCE_LAYERS
from primitives.util import one_line

PROTOCOLS = ("validity", "duplicate", "equivalence", "stability", "quality")


class Verdict(NamedTuple):
    status: str | None          # None: passed
    reason: str | None = None
    equivalent_to: int | None = None


PASS = Verdict(None)


class Protocol:
    """Counts and times its own checks."""

    name = "protocol"

    def __init__(self):
        self.checked = 0
        self.rejected = 0
        self.seconds = 0.0

    def stats(self) -> dict:
        return {"checked": self.checked, "rejected": self.rejected, "seconds": self.seconds}

    @contextmanager
    def _timing(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def _count(self, verdict: Verdict) -> Verdict:
        self.checked += 1
        self.rejected += verdict.status is not None
        return verdict


# -- fixed parameters and probe inputs ------------------------------------------------------

_SALT = 0x5EED


def seeded_parameters(module: torch.nn.Module, dtype=torch.float64) -> torch.nn.Module:
    """Set every learnable tensor to fixed random values seeded by its name: magnitude
    in [0.5, 1.5], random sign. Same name and shape -> same values, in any graph."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) ^ _SALT)
            magnitude = 0.5 + torch.rand(param.shape, generator=gen, dtype=torch.float64)
            sign = torch.where(torch.rand(param.shape, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)
            param.copy_((magnitude * sign).to(param.dtype))
    return module.to(dtype)


@dataclass(frozen=True)
class Probe:
    """A fixed random input: shape, overall scale, offset, per-(sample, channel) scale spread."""

    shape: tuple
    scale: float
    offset: float
    spread: float
    seed: int

    def tensor(self, dtype=torch.float64) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        n, c = self.shape[:2]
        x = torch.randn(self.shape, generator=gen, dtype=torch.float64)
        per = torch.exp(self.spread * torch.randn((n, c) + (1,) * (len(self.shape) - 2), generator=gen,
                                                  dtype=torch.float64))
        return (x * per * self.scale + self.offset).to(dtype)


# 96 channels: groups 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48 all differ from each other and
# from instance moments; 20 and 42 channels lower the group counts differently again.
# The small-scale probe makes eps show; the large one makes saturation and clamps show.
PROBES = (
    Probe((4, 96, 3, 3), 1.0, 0.0, 0.7, 11),
    Probe((3, 20, 4, 4), 0.01, 0.003, 0.5, 12),
    Probe((2, 42, 3, 2), 4.0, 1.0, 0.3, 13),
)
SKETCH_DIM = 32          # random projections per probe and trajectory step
MATCH_RTOL = 1e-9        # relative to sum(|R| |f|): float64 error is ~1e-15 of that
HUGE = 1e100             # beyond this a value counts as non-finite
TRAJECTORY_STEPS = 3     # a gradient that is zero until another vector moves shows at step 2
STEP_RMS = 0.25          # one step moves a lone vector by this much per channel (RMS)
GRAD_FLOOR = 1e-6        # gradient norms below this are scaled as if they were this: a
                         # gradient that is rounding noise around zero stays a tiny step


def _probe_inputs():
    return [p.tensor() for p in PROBES]


def _upstream():
    """d(probe loss)/d(output) on the first probe: fixed, random, unit norm."""
    gen = torch.Generator().manual_seed(PROBES[0].seed + 1000)
    r = torch.randn(PROBES[0].shape, generator=gen, dtype=torch.float64)
    return r / r.norm()


def _sketch_matrices():
    rng = np.random.default_rng(20200406)
    return [rng.standard_normal((SKETCH_DIM, int(np.prod(p.shape)))) for p in PROBES]


_PROBE_CACHE: dict = {}


def _cached(key, make):
    if key not in _PROBE_CACHE:
        _PROBE_CACHE[key] = make()
    return _PROBE_CACHE[key]


@dataclass(frozen=True)
class Fingerprint:
    """What `Equivalence` compares: sketches and tolerances per probe and trajectory step,
    and the mask of finite outputs (its digest must match exactly)."""

    sketch: np.ndarray       # (len(PROBES) * (TRAJECTORY_STEPS + 1) * SKETCH_DIM,)
    tolerance: np.ndarray    # same shape
    mask_digest: str
    finite_fraction: float

    @property
    def usable(self) -> bool:
        return self.finite_fraction > 0


def trajectory_outputs(graph: Graph) -> list[np.ndarray]:
    """Per probe, the layer's float64 train-mode outputs at each step of the probe
    training, shape (TRAJECTORY_STEPS + 1, probe size).

    The layer for the first probe (the widest) trains: real initial parameters, then
    steps of gradient descent on the linear loss <upstream, output>, each normalised
    to a fixed length over all parameters together (so a layer's scale does not set
    its pace, and no vector's step depends on how the others are split into tensors).
    The other probes' layers read the first channels of the same parameters (and the same
    learnable scalars)."""
    inputs = _cached("inputs", _probe_inputs)
    layers = [compile_layer(graph, p.shape[1]).to(torch.float64).train() for p in PROBES]
    trained = list(layers[0].parameters())
    mirrors = [list(layer.parameters()) for layer in layers[1:]]
    step = STEP_RMS * math.sqrt(PROBES[0].shape[1])
    outputs = [[] for _ in PROBES]
    live = bool(trained)
    for t in range(TRAJECTORY_STEPS + 1):
        with torch.no_grad():
            for params, layer, x, out in zip(mirrors, layers[1:], inputs[1:], outputs[1:]):
                for p, q in zip(trained, params):
                    q.copy_(p[..., :q.shape[-1]] if p.dim() else p)   # a learnable scalar: as it is
                out.append(layer(x).expand_as(x).reshape(-1).numpy())
        learn = live and t < TRAJECTORY_STEPS
        with torch.set_grad_enabled(learn):
            y = layers[0](inputs[0])
        outputs[0].append(y.detach().expand_as(inputs[0]).reshape(-1).numpy())
        if learn:
            live = _descend(trained, y, _cached("upstream", _upstream), step)
    return [np.stack(out) for out in outputs]


def _descend(params, y: torch.Tensor, upstream: torch.Tensor, step: float) -> bool:
    """One normalised gradient step on <upstream, y> over y's finite values. A gradient
    that is not finite turns every parameter to NaN, as it would in a real training
    (the layer's later outputs show it), and returns False: no more steps."""
    finite = y.detach().abs() < HUGE
    loss = (torch.where(finite, y, 0.0) * torch.where(finite, upstream, 0.0)).sum()
    if not loss.requires_grad:
        return False
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads):
            if math.isfinite(norm):
                p.sub_(g, alpha=step / max(norm, GRAD_FLOOR))
            else:
                p.fill_(math.nan)
    return math.isfinite(norm)


def fingerprint(graph: Graph | str) -> Fingerprint:
    """The training-aware fingerprint of a layer (see `Equivalence`). Raises on layers
    that do not run; `Screen` only fingerprints valid ones."""
    graph = parse(graph) if isinstance(graph, str) else graph
    matrices = _cached("sketch", _sketch_matrices)
    magnitudes = _cached("sketch-abs", lambda: [np.abs(r) for r in matrices])
    sketches, tolerances, masks = [], [], []
    finite = total = 0
    for f, r, r_abs in zip(trajectory_outputs(graph), matrices, magnitudes):
        with np.errstate(all="ignore"):
            ok = np.abs(f) < HUGE  # False for NaN and infinities too
            # what is not finite: 1 NaN, 2 large positive, 3 large negative
            kind = np.where(ok, 0, np.where(np.isnan(f), 1, np.where(f > 0, 2, 3))).astype(np.uint8)
        clean = np.where(ok, f, 0.0)
        sketches.append((clean @ r.T).reshape(-1))
        tolerances.append((MATCH_RTOL * (np.abs(clean) @ r_abs.T) + 1e-300).reshape(-1))
        masks.append(kind.tobytes())
        finite += int(ok.sum())
        total += ok.size
    digest = hashlib.sha1(b"|".join(masks)).hexdigest()
    return Fingerprint(np.concatenate(sketches), np.concatenate(tolerances), digest, finite / total)


class FingerprintIndex:
    """Fingerprints by mask digest; lookup is a vectorised tolerance match."""

    def __init__(self):
        self._buckets: dict[str, list] = {}   # digest -> [sketches, tolerances, ids, n]

    def __len__(self) -> int:
        return sum(b[3] for b in self._buckets.values())

    def find(self, fp: Fingerprint) -> int | None:
        """The lowest id whose fingerprint matches, or None."""
        bucket = self._buckets.get(fp.mask_digest)
        if not fp.usable or bucket is None:
            return None
        sketches, tolerances, ids, n = bucket
        close = np.abs(sketches[:n] - fp.sketch) <= tolerances[:n] + fp.tolerance
        hits = np.flatnonzero(close.all(axis=1))
        return min(ids[i] for i in hits) if hits.size else None

    def add(self, fp: Fingerprint, candidate_id: int) -> None:
        if not fp.usable:
            return
        bucket = self._buckets.get(fp.mask_digest)
        if bucket is None:
            dim = fp.sketch.shape[0]
            bucket = self._buckets[fp.mask_digest] = [np.empty((16, dim)), np.empty((16, dim)), [], 0]
        sketches, tolerances, ids, n = bucket
        if n == sketches.shape[0]:
            sketches = np.concatenate([sketches, np.empty_like(sketches)])
            tolerances = np.concatenate([tolerances, np.empty_like(tolerances)])
            bucket[0], bucket[1] = sketches, tolerances
        sketches[n], tolerances[n] = fp.sketch, fp.tolerance
        ids.append(candidate_id)
        bucket[3] = n + 1


# -- 1. validity ---------------------------------------------------------------------------------

class Validity(Protocol):
    """Compiles, keeps the input shape, finite at initial parameters, not constant in x."""

    name = "validity"
    probe = Probe((4, 12, 5, 5), 1.0, 0.0, 0.5, 21)
    other = Probe((4, 12, 5, 5), 1.0, 0.0, 0.5, 22)

    def check(self, graph: Graph) -> Verdict:
        with self._timing():
            verdict = self._check(graph)
        return self._count(verdict)

    def _check(self, graph: Graph) -> Verdict:
        x = _cached("validity-x", lambda: self.probe.tensor(torch.float32))
        x2 = _cached("validity-x2", lambda: self.other.tensor(torch.float32))
        channels = x.shape[1]
        try:
            layer = compile_layer(graph, channels).train()
            with torch.no_grad():
                y = layer(x)
        except Exception as err:  # a generated layer that does not run is data, not a crash
            return Verdict("invalid", f"does not run: {one_line(err, 200)}")
        if tuple(y.shape) != tuple(x.shape):
            return Verdict("invalid", f"output shape {tuple(y.shape)} does not keep the input shape "
                                      f"{tuple(x.shape)}")
        if not torch.isfinite(y).all():
            bad = (~torch.isfinite(y)).float().mean().item()
            return Verdict("unstable", f"non-finite output on random input at initial parameters "
                                       f"({bad:.0%} of values)")
        try:  # in float64, at the initial and at name-seeded parameters
            x64, x2_64 = x.double(), x2.double()
            layers = (compile_layer(graph, channels).double().train(),
                      seeded_parameters(compile_layer(graph, channels), torch.float64).train())
            with torch.no_grad():
                varies = [_varies(layer(x64), layer(x2_64)) for layer in layers]
        except Exception as err:
            return Verdict("invalid", f"does not run: {one_line(err, 200)}")
        if not any(varies):
            return Verdict("invalid", "output is constant in x")
        return PASS


# On the unit-scale probe inputs, an output no larger than this (float64) is zero
# that rounding left behind, not a signal.
NUMERICAL_ZERO = 1e-9


def _varies(a: torch.Tensor, b: torch.Tensor) -> bool:
    finite = torch.isfinite(a) & torch.isfinite(b)
    if not finite.any():
        return False
    a, b = a[finite], b[finite]
    scale = max(a.abs().max().item(), b.abs().max().item())
    if scale < NUMERICAL_ZERO:  # e.g. x times the variance of a constant: zero up to rounding
        return False
    return (a - b).abs().max().item() > 1e-6 * scale


# -- 2. duplicate ----------------------------------------------------------------------------------

class Duplicate(Protocol):
    """Same graph as an earlier candidate, up to renaming vectors of one initial value."""

    name = "duplicate"

    def __init__(self):
        super().__init__()
        self.seen: dict[str, tuple[int, str]] = {}   # canonical hash -> (id, its graph hash)

    @staticmethod
    def key(graph: Graph) -> str:
        return canonical_hash(graph)

    def check(self, graph: Graph) -> Verdict:
        with self._timing():
            earlier = self.seen.get(self.key(graph))
            if earlier is None:
                verdict = PASS
            else:
                renamed = "" if earlier[1] == graph.hash else " with its vectors renamed"
                verdict = Verdict("duplicate", f"same graph as candidate {earlier[0]}{renamed}", earlier[0])
        return self._count(verdict)

    def add(self, graph: Graph, candidate_id: int) -> None:
        """Remember a graph; the earliest (lowest) id wins."""
        key = self.key(graph)
        if key not in self.seen or candidate_id < self.seen[key][0]:
            self.seen[key] = (candidate_id, graph.hash)


# -- 3. equivalence --------------------------------------------------------------------------------

class Equivalence(Protocol):
    name = "equivalence"

    def __init__(self):
        super().__init__()
        self.index = FingerprintIndex()

    def check(self, graph: Graph) -> tuple[Verdict, Fingerprint | None]:
        """The verdict and the fingerprint (None when it could not be computed)."""
        with self._timing():
            try:
                fp = fingerprint(graph)
            except Exception:
                fp = None  # validity already ran it; a failure here just skips the protocol
            earlier = self.index.find(fp) if fp is not None else None
            verdict = PASS if earlier is None else Verdict(
                "equivalent", f"trains like candidate {earlier} (same outputs along the probe training)", earlier)
        return self._count(verdict), fp

    def add(self, fp: Fingerprint | None, candidate_id: int) -> None:
        if fp is not None:
            self.index.add(fp, candidate_id)


# -- 4. stability ----------------------------------------------------------------------------------

class _TinyNet:
    """conv -> layer -> conv -> layer (+ skip) -> mean pool -> linear, with a log-scale on
    the input and on each weight tensor."""

    def __init__(self, graph: Graph, channels: int, batch: int, size: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch, 3, size, size, generator=gen)
        self.y = torch.randint(0, 10, (batch,), generator=gen)
        self.weights = [
            torch.randn(channels, 3, 3, 3, generator=gen) * math.sqrt(2 / 27),
            torch.randn(channels, channels, 3, 3, generator=gen) * math.sqrt(2 / (9 * channels)),
            torch.randn(10, channels, generator=gen) * math.sqrt(1 / channels),
        ]
        for w in self.weights:
            w.requires_grad_(True)
        self.layers = [compile_layer(graph, channels).train() for _ in range(2)]
        self.params = [p for layer in self.layers for p in layer.parameters()]

    def grad_norm(self, log_scales: torch.Tensor, create_graph: bool) -> torch.Tensor:
        s = log_scales.exp()
        w1, w2, fc = (w * s[i + 1] for i, w in enumerate(self.weights))
        h = self.layers[0](F.conv2d(self.x * s[0], w1, padding=1))
        h = self.layers[1](F.conv2d(h, w2, padding=1)) + h
        loss = F.cross_entropy(h.mean(dim=(2, 3)) @ fc.T, self.y)
        wrt = [w1, w2, fc] + self.params
        grads = torch.autograd.grad(loss, wrt, create_graph=create_graph, allow_unused=True)
        total = sum((g.double() ** 2).sum() for g in grads if g is not None)
        if not torch.is_tensor(total):
            return torch.zeros((), dtype=torch.float64)
        return total.sqrt()


class Stability(Protocol):
    name = "stability"

    def __init__(self, threshold: float = 1e4, steps: int = 3, max_scale: float = 10.0,
                 channels: int = 8, batch: int = 4, size: int = 6, seed: int = 0):
        super().__init__()
        self.threshold = threshold
        self.steps = steps
        self.max_log = math.log(max_scale)
        self.net_args = dict(channels=channels, batch=batch, size=size, seed=seed)
        self._reference: float | None = None

    @property
    def reference(self) -> float:
        """BN-ReLU's unscaled gradient norm in the same network."""
        if self._reference is None:
            net = _TinyNet(parse(REFERENCE_LAYERS["bn-relu"]), **self.net_args)
            self._reference = float(net.grad_norm(torch.zeros(4), create_graph=False))
        return self._reference

    def check(self, graph: Graph) -> Verdict:
        with self._timing():
            try:
                verdict = self._check(graph)
            except Exception as err:
                verdict = Verdict("unstable", f"gradient computation failed: {one_line(err, 200)}")
        return self._count(verdict)

    def worst_case(self, graph: Graph) -> tuple[float, float, list[float]]:
        """(unscaled gradient norm, worst gradient norm found, its scales)."""
        net = _TinyNet(graph, **self.net_args)
        base = float(net.grad_norm(torch.zeros(4), create_graph=False))
        if not math.isfinite(base):
            return base, base, [1.0] * 4
        worst, worst_at = base, torch.zeros(4)
        log_scales = torch.zeros(4)
        step = self.max_log / 2
        for i in range(self.steps + 1):
            last = i == self.steps
            s = log_scales.clone().requires_grad_(not last)
            norm = net.grad_norm(s, create_graph=not last)
            value = float(norm.detach())
            if not math.isfinite(value) or value > worst:
                worst, worst_at = value, s.detach().clone()
            if not math.isfinite(value) or last:
                break
            (direction,) = torch.autograd.grad(norm.log(), s, allow_unused=True)
            if direction is None or not torch.isfinite(direction).all():
                break
            log_scales = (log_scales + step * direction.sign()).clamp(-self.max_log, self.max_log)
        return base, worst, [round(math.exp(v), 4) for v in worst_at.tolist()]

    def _check(self, graph: Graph) -> Verdict:
        base, worst, scales = self.worst_case(graph)
        if not math.isfinite(base):
            return Verdict("unstable", "non-finite gradient at initialisation")
        if not math.isfinite(worst):
            return Verdict("unstable", f"non-finite gradient with input/weight scales {scales}")
        if base > self.threshold * self.reference:
            return Verdict("unstable", f"gradient norm {base:.3g} at initialisation is "
                                       f"{base / self.reference:.3g}x BN-ReLU's")
        if worst > self.threshold * max(base, 1e-12):
            return Verdict("unstable", f"gradient norm grows {worst / max(base, 1e-12):.3g}x "
                                       f"with input/weight scales {scales}")
        return PASS


# -- 5. quality ------------------------------------------------------------------------------------

class Quality(Protocol):
    """Rejects a short training's accuracy below `threshold` (the caller trains)."""

    name = "quality"

    def __init__(self, threshold: float = 0.2):
        super().__init__()
        self.threshold = threshold

    def judge(self, accuracy: float | None, seconds: float, detail: str = "") -> Verdict:
        self.seconds += seconds
        if accuracy is None or not math.isfinite(accuracy):
            verdict = PASS  # a failed training is reported as failed by the caller
        elif accuracy < self.threshold:
            verdict = Verdict("low_quality", f"accuracy {accuracy:.4f} below {self.threshold:g}"
                                             + (f" {detail}" if detail else ""))
        else:
            verdict = PASS
        return self._count(verdict)
