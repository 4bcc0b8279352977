"""A cheap, deterministic stand-in for training: tests, benchmarks, smoke runs.

`SurrogateEvaluator.train(graph_json)` has the interface of
`evaluators.evaluate.Evaluator.train` but, instead of training proxies, scores a
layer per arch by how closely its output (train mode, initial parameters, on a
fixed random input) matches a reference layer's (1 - MSE / target variance,
clipped at 0, so a constant layer scores 0): resnet ~ BN-ReLU,
mobilenetv2 ~ EvoNorm-S0, efficientnet ~ LN-GELU. The targets conflict, so the
objectives have a real Pareto front, and the score varies smoothly enough
under mutation for search quality to show. `seconds` of CPU-bound busy work
per candidate stand in for a realistic evaluation time.

`SurrogateScreen` is the matching driver-side screen: validity (compiles,
finite, not constant), duplicates by canonical hash, equivalence by output
fingerprint; no stability training.
"""
from __future__ import annotations

import math
import os
import socket
import time

from primitives import Graph, GraphError
from primitives.library import REFERENCE_LAYERS
from primitives.util import one_line

from evaluators.record import CURVE_POINTS, describe

TARGETS = {"resnet": "bn-relu", "mobilenetv2": "evonorm-s0", "efficientnet": "ln-gelu"}
_FALLBACK = ("bn-relu", "evonorm-s0", "ln-gelu", "evonorm-b0", "gn-relu")


class _Probe:
    """Compiles layers and runs them on one fixed input (lazy torch import)."""

    def __init__(self):
        import torch
        self.torch = torch
        gen = torch.Generator().manual_seed(1234)
        self.x = torch.randn(8, 8, 4, 4, generator=gen, dtype=torch.float64) * 1.5 + 0.3

    def output(self, graph: Graph):
        from primitives import compile_layer
        torch = self.torch
        layer = compile_layer(graph, self.x.shape[1]).to(torch.float64).train()
        with torch.no_grad():
            return layer(self.x)


class SurrogateEvaluator:
    def __init__(self, archs=("resnet", "mobilenetv2", "efficientnet"), seconds: float = 0.0):
        from primitives import parse
        self.archs = tuple(archs)
        self.seconds = seconds
        self.probe = _Probe()
        self.targets = {}
        for i, arch in enumerate(self.archs):
            name = TARGETS.get(arch, _FALLBACK[i % len(_FALLBACK)])
            self.targets[arch] = self.probe.output(parse(REFERENCE_LAYERS[name]))
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def scores(self, graph: Graph) -> dict:
        y = self.probe.output(graph)
        out = {}
        for arch, t in self.targets.items():
            err = ((y - t) ** 2).mean().item() / (t.var().item() + 1e-12)
            out[f"acc_{arch}"] = max(0.0, 1.0 - err) if math.isfinite(err) else float("nan")
        return out

    def train(self, task) -> dict:
        """A graph's JSON (the full budget) or a rung `{"graph", "steps", "total", "state"}`:
        a rung's scores are the full ones moved by a deterministic error that shrinks to 0
        at the full budget, as early scores of a real training rank candidates roughly.
        A task's `"seed"` other than 0 (a confirmation) moves the scores by a deterministic
        seed-to-seed spread of up to SEED_SPREAD; no seed is seed 0."""
        start = time.perf_counter()
        graph_json, steps, total = (task, 1, 1) if isinstance(task, str) else (
            task["graph"], task.get("steps", 1), task.get("total", 1))
        seed = 0 if isinstance(task, str) else int(task.get("seed") or 0)
        try:
            graph = Graph.from_json(graph_json)
            accs = _at_seed(_at_rung(self.scores(graph), graph.hash, steps, total), graph.hash, seed)
        except (GraphError, RuntimeError, ValueError) as err:
            return {"status": "failed", "reason": f"surrogate: {one_line(err, 188, kind=False)}",
                    "seconds": time.perf_counter() - start, "stage_seconds": {}}
        _busy(self.seconds)
        bad = [k for k, v in accs.items() if not math.isfinite(v)]
        status, reason = "ok", None
        if bad:
            status, reason = "failed", "non-finite output"
            accs = {k: None for k in accs}
        seconds = time.perf_counter() - start
        out = {"status": status, "reason": reason, **accs, "seconds": seconds, "steps_trained": steps,
               "stage_seconds": {"surrogate": seconds},
               "loss_curves": None if bad else _curves(self.scores(graph), graph.hash, steps, total)}
        if steps < total:
            out["checkpoint"] = f"surrogate:{graph.hash}:{steps}".encode()
        return out


def _at_rung(accs: dict, graph_hash: str, steps: int, total: int) -> dict:
    import random
    rng = random.Random(f"{graph_hash}:{steps}")
    spread = 0.1 * (1 - steps / total)
    return {k: v + spread * rng.uniform(-1, 1) if math.isfinite(v) else v for k, v in accs.items()}


SEED_SPREAD = 0.02


def _curves(full: dict, graph_hash: str, steps: int, total: int) -> dict:
    """A made-up training loss per proxy, like `Evaluator.train`'s `loss_curves` (a point per
    complete 1/30 of the budget): it falls from about 2.5 towards 1 - the full score, with a
    little deterministic noise, so a curve's tail says something about the full score."""
    import random
    rng = random.Random(f"{graph_hash}:curve")
    n = (steps * CURVE_POINTS) // max(1, total)
    out = {}
    for k, v in full.items():
        floor = 1.0 - v if math.isfinite(v) else 1.0
        out[k[4:]] = [round(floor + 1.5 * math.exp(-5 * (i + 1) / CURVE_POINTS) + 0.03 * rng.uniform(-1, 1), 5)
                      for i in range(n)]
    return out


def _at_seed(accs: dict, graph_hash: str, seed: int) -> dict:
    if not seed:
        return accs
    import random
    rng = random.Random(f"{graph_hash}:seed{seed}")
    return {k: v + SEED_SPREAD * rng.uniform(-1, 1) if math.isfinite(v) else v for k, v in accs.items()}


def _busy(seconds: float):
    """CPU-bound work (holds one core) for `seconds` of wall time."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for i in range(2000):
            x += i * i
    return x


class SurrogateScreen:
    """Driver-side cheap rejection for surrogate runs (the `Screen` interface)."""

    def __init__(self, config=None):
        self.probe = _Probe()
        self.hashes: dict[str, int] = {}
        self.prints: dict[bytes, int] = {}
        self.stats = {p: {"checked": 0, "rejected": 0} for p in ("validity", "duplicate", "equivalence")}

    def _fingerprint(self, y) -> bytes:
        torch = self.probe.torch
        return torch.round(y.flatten()[:64] * 1e6).to(torch.int64).numpy().tobytes()

    def check(self, graph_or_formula, candidate_id: int) -> dict:
        from primitives import parse
        start = time.perf_counter()
        graph = parse(graph_or_formula) if isinstance(graph_or_formula, str) else graph_or_formula
        out = {**describe(graph), "status": None, "reason": None, "equivalent_to": None}
        self.stats["validity"]["checked"] += 1
        try:
            y = self.probe.output(graph)
            finite = bool(self.probe.torch.isfinite(y).all())
        except Exception as err:  # noqa: BLE001 - any failure to run is invalidity
            y, finite, out["reason"] = None, False, f"does not run: {one_line(err, 185, kind=False)}"
        if y is not None and finite and float(y.std()) < 1e-9:
            y, out["reason"] = None, "constant output"
        if y is None or not finite:
            out["status"] = "invalid" if y is None else "unstable"
            out["reason"] = out["reason"] or "non-finite output"
            self.stats["validity"]["rejected"] += 1
        else:
            self.stats["duplicate"]["checked"] += 1
            if graph.hash in self.hashes:
                out.update(status="duplicate", reason="same graph", equivalent_to=self.hashes[graph.hash])
                self.stats["duplicate"]["rejected"] += 1
            else:
                self.hashes[graph.hash] = candidate_id
                self.stats["equivalence"]["checked"] += 1
                fp = self._fingerprint(y)
                if fp in self.prints:
                    out.update(status="equivalent", reason="same output", equivalent_to=self.prints[fp])
                    self.stats["equivalence"]["rejected"] += 1
                else:
                    self.prints[fp] = candidate_id
        out["stage_seconds"] = {"screen": time.perf_counter() - start}
        return out

    def remember(self, record: dict) -> None:
        if record.get("status") in ("invalid", "unstable") or record.get("graph_hash") is None:
            return
        self.hashes.setdefault(record["graph_hash"], int(record["id"]))
        if record.get("status") in ("duplicate", "equivalent"):
            return
        try:
            y = self.probe.output(Graph.from_json(record["graph"]))
        except Exception:  # noqa: BLE001
            return
        self.prints.setdefault(self._fingerprint(y), int(record["id"]))
