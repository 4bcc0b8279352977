"""Predict before paying: a run's own full trainings teach it what a rung score is worth.

Two models, both scikit-learn's `BayesianRidge` on standardised features (a Bayesian
linear regression: a mean and a predictive standard deviation per prediction, no
hand-written learner, deterministic, sound on a few dozen rows), one per proxy and
purpose, refitted whenever a full training arrives (lazily, at the next prediction):

- `FullScorePredictor`: from a candidate's score on the proxy at a rung (every proxy's with
  `cross`: that lowered the rank correlation in the replay), its loss curve up to there
  (`loss_curves`: where every training row has them; older runs have none) and a few of its
  graph's features (params per channel, batch statistics, node count: the full set
  overfitted), each proxy's full score (first seed), as the gain over its rung score: the
  prior (weights shrunk to 0) is "the full score is the rung score plus the run's mean
  gain", not "every layer scores the mean".
- `ProposalPredictor`: from a graph's features and its parent's full scores alone (before
  any training), each proxy's full score; it ranks a worker's candidate children.

Silent until `MIN_TRAININGS` (12) full trainings with scores at the rung: a linear model
on the 3 rung scores, the curve summaries and ~20 graph features needs a dozen rows before
its predictive spread means anything (with fewer, the evidence term is fitted on noise),
and 12 is also where the replay on results/default-v2 (benchmarks/predictor.py) first
ranks layers better than their raw rung score. Until then the raw hurdle and the plain
proposal decide.

Deterministic given its records: rows are kept by candidate id and fitted in id order, so
a resumed run that reads back the same records makes the same predictions.

`predicted_stop` is the hurdle on predictions: stop a candidate only when the current
front (full scores) dominates even its optimistic point, every proxy's mean plus `z`
standard deviations (`--predictor-z`, default 1: in the replay on the stored runs, z = 1
stopped the most without stopping a member of the final front, docs/predictor.md).
`optimistic_gain` is the hypervolume a child's optimistic point would add to the front.
"""
from __future__ import annotations

import math

import numpy as np

from evaluators.record import CURVE_POINTS
from primitives.util import finite_or_none as _num
from primitives.util import json_cell as _json

MIN_TRAININGS = 12
MOMENT_AXES = ("batch", "instance", "group", "layer", "channel")
KINDS = ("moment", "call", "infix", "prefix", "unit", "leaf")


def graph_features(graph, compact: bool = False) -> list[float]:
    """What a graph is made of: node count by op kind and by moment axis, depth, tree size,
    params per channel, batch statistics, whether it mixes positions and is a polynomial.
    `compact`: params per channel, batch statistics and node count only (the full-score
    predictor's: beside a rung score, the full set overfitted in the replay, docs/predictor.md)."""
    if compact:
        return [float(graph.params_per_channel), float(graph.uses_batch_stats), float(len(graph.nodes))]
    from primitives.ops import OPS
    kinds = dict.fromkeys(KINDS, 0)
    axes = dict.fromkeys(MOMENT_AXES, 0)
    for node in graph.nodes:
        op = OPS[node.op]
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
        if op.kind == "moment":
            axes[node.op.split("_")[0]] = axes.get(node.op.split("_")[0], 0) + 1
    return [*(float(kinds[k]) for k in KINDS), *(float(axes[a]) for a in MOMENT_AXES),
            float(len(graph.nodes)), float(graph.depth), math.log1p(graph.tree_size),
            float(graph.params_per_channel), float(graph.uses_batch_stats), float(graph.mixes_positions),
            float(graph.poly_degree is not None)]


def curve_features(curve, points: int) -> list[float] | None:
    """A loss curve's first `points` points, summarised: the last point, the mean of the last
    three, the drop over the last third, the first point. None when it has fewer points."""
    if not curve or len(curve) < points or points < 1:
        return None
    c = [float(v) if v is not None and math.isfinite(float(v)) else float("nan") for v in curve[:points]]
    if any(math.isnan(v) for v in c):
        return None
    third = max(1, points // 3)
    return [c[-1], float(np.mean(c[-3:])), c[-1 - third] - c[-1] if points > third else 0.0, c[0]]


class _Model:
    """One BayesianRidge per target column on standardised features; `columns(j)`: the
    feature columns of target j (None: all)."""

    def __init__(self, columns=None):
        self.models, self.columns = None, columns

    def _cols(self, j, n):
        return list(range(n)) if self.columns is None else self.columns(j)

    def fit(self, X, Y) -> None:
        from sklearn.linear_model import BayesianRidge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        X, Y = np.asarray(X, dtype=float), np.asarray(Y, dtype=float)
        self.models = [make_pipeline(StandardScaler(), BayesianRidge()).fit(X[:, self._cols(j, X.shape[1])], Y[:, j])
                       for j in range(Y.shape[1])]

    def predict(self, x) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray([x], dtype=float)
        out = [m.predict(x[:, self._cols(j, x.shape[1])], return_std=True) for j, m in enumerate(self.models)]
        return np.array([float(mu[0]) for mu, _ in out]), np.array([float(sd[0]) for _, sd in out])


class FullScorePredictor:
    """Each proxy's full score from a candidate at a rung (see the module's docstring).

    `add(record)` takes any record (only `ok` ones with a first-seed full score and scores
    at a rung are rows; each id once); `predict(rung, graph, scores, curves)` returns
    (means, stds) per proxy in `archs` order, or None while silent."""

    def __init__(self, archs, rung_steps, total: int, min_trainings: int = MIN_TRAININGS,
                 use_curves: bool = True, cross: bool = False):
        self.archs, self.rung_steps, self.total = tuple(archs), tuple(rung_steps), int(total)
        self.min_trainings, self.use_curves, self.cross = min_trainings, use_curves, cross
        self.rows: dict[int, dict] = {}          # id -> {"graph", "full", "rungs": {steps: scores}, "curves"}
        self._fitted: dict[int, tuple] = {}      # rung index -> (rows fitted, with curves, model)

    def add(self, record) -> None:
        if record.get("status") != "ok" or record.get("graph") is None:
            return
        rungs = _json(record.get("rung_scores")) or []
        seeds = _json(record.get("seed_scores")) or []
        first = seeds[0] if seeds else record
        full = [_num(first.get(f"acc_{a}")) for a in self.archs]
        if any(v is None for v in full):
            return
        by_steps = {}
        for r in rungs:
            scores = [_num(r.get(f"acc_{a}")) for a in self.archs]
            if all(v is not None for v in scores) and r.get("steps") is not None:
                by_steps[int(r["steps"])] = scores
        if not by_steps:
            return
        from primitives import Graph
        graph = Graph.from_json(record["graph"])
        self.rows[int(record["id"])] = {"graph": graph_features(graph, compact=True), "full": full, "rungs": by_steps,
                                        "curves": _json(record.get("loss_curves")) or {}}

    def trainings(self, rung: int) -> int:
        steps = self.rung_steps[rung]
        return sum(steps in row["rungs"] for row in self.rows.values())

    def ready(self, rung: int) -> bool:
        return self.trainings(rung) >= self.min_trainings

    def _points(self, rung: int) -> int:
        return (self.rung_steps[rung] * CURVE_POINTS) // self.total

    def _features(self, rung, graph_feats, scores, curves, with_curves):
        x = list(scores) + list(graph_feats)
        if with_curves:
            for a in self.archs:
                f = curve_features((curves or {}).get(a), self._points(rung))
                if f is None:
                    return None
                x += f
        return x

    def _columns(self, width: int, with_curves: bool):
        """Proxy j's features: its own rung score (or every proxy's, with `cross`), the graph's,
        and its own curve's summary."""
        if self.cross:
            return None
        n, g = len(self.archs), width - len(self.archs) - (4 * len(self.archs) if with_curves else 0)

        def columns(j):
            own = [j] + list(range(n, n + g))
            return own + (list(range(n + g + 4 * j, n + g + 4 * j + 4)) if with_curves else [])
        return columns

    def _model(self, rung: int):
        steps = self.rung_steps[rung]
        ids = sorted(i for i, row in self.rows.items() if steps in row["rungs"])
        fitted = self._fitted.get(rung)
        if fitted is not None and fitted[0] == len(ids):
            return fitted
        rows = [self.rows[i] for i in ids]
        with_curves = self.use_curves and all(
            self._features(rung, r["graph"], r["rungs"][steps], r["curves"], True) is not None for r in rows)
        X = [self._features(rung, r["graph"], r["rungs"][steps], r["curves"], with_curves) for r in rows]
        Y = [np.subtract(r["full"], r["rungs"][steps]) for r in rows]
        model = _Model(self._columns(len(X[0]), with_curves))
        model.fit(X, Y)
        self._fitted[rung] = (len(ids), with_curves, model)
        return self._fitted[rung]

    def predict(self, rung: int, graph, scores, curves=None):
        """(means, stds) of the full scores of a candidate scoring `scores` (archs order) at
        rung index `rung`, or None while fewer than `min_trainings` rows have that rung."""
        if rung >= len(self.rung_steps) - 1 or not self.ready(rung):
            return None
        _, with_curves, model = self._model(rung)
        feats = graph if isinstance(graph, list) else graph_features(graph, compact=True)
        x = self._features(rung, feats, scores, curves, with_curves)
        if x is None:     # the candidate lacks a curve the model was fitted with
            return None
        gain, sd = model.predict(x)
        return np.asarray(scores, dtype=float) + gain, sd


class ProposalPredictor:
    """Each proxy's full score from a graph and its parent's full scores, before training."""

    def __init__(self, archs, min_trainings: int = MIN_TRAININGS):
        self.archs, self.min_trainings = tuple(archs), min_trainings
        self.rows: dict[int, tuple] = {}     # id -> (graph features, parent scores or None, scores)
        self._fitted = None

    def add(self, record, parent_scores=None) -> None:
        if record.get("status") != "ok" or record.get("graph") is None:
            return
        scores = [_num(record.get(f"acc_{a}")) for a in self.archs]
        if any(v is None for v in scores):
            return
        from primitives import Graph
        self.rows[int(record["id"])] = (graph_features(Graph.from_json(record["graph"])), parent_scores, scores)

    def ready(self) -> bool:
        return len(self.rows) >= self.min_trainings

    def _x(self, feats, parent, mean):
        p = list(parent) if parent is not None and all(v is not None for v in parent) else list(mean)
        return list(feats) + p + [float(parent is not None)]

    def _model(self):
        if self._fitted is not None and self._fitted[0] == len(self.rows):
            return self._fitted
        ids = sorted(self.rows)
        Y = np.array([self.rows[i][2] for i in ids], dtype=float)
        mean = Y.mean(axis=0)
        X = [self._x(self.rows[i][0], self.rows[i][1], mean) for i in ids]
        model = _Model()
        model.fit(X, Y)
        self._fitted = (len(ids), mean, model)
        return self._fitted

    def predict(self, graph, parent_scores=None):
        if not self.ready():
            return None
        _, mean, model = self._model()
        return model.predict(self._x(graph_features(graph), parent_scores, mean))


def predicted_stop(front, optimistic, goals) -> bool:
    """Whether a point of `front` dominates `optimistic` (a candidate's best plausible
    objective point): no worse on every objective and better on one, under `goals`."""
    if not len(front):
        return False
    sign = np.array([1.0 if g == "max" else -1.0 for g in goals])
    u = np.asarray(optimistic, dtype=float) * sign
    f = np.asarray(front, dtype=float) * sign
    return bool(np.any(np.all(f >= u, axis=1) & np.any(f > u, axis=1)))


def optimistic_gain(front, point, goals, reference) -> float:
    """The hypervolume `point` adds to `front` (0 when the front dominates it)."""
    from search.pareto import hypervolume, pareto_mask
    pts = [tuple(p) for p in front]
    if predicted_stop(pts, point, goals):
        return 0.0
    before = hypervolume(np.asarray(pts), goals, reference) if pts else 0.0
    both = np.asarray(pts + [tuple(point)], dtype=float)
    after = hypervolume(both[pareto_mask(both, goals)], goals, reference)
    return float(after - before)
