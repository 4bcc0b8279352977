"""Pareto fronts and hypervolume: pure functions on numpy arrays.

`goals` gives one direction per objective, "max" or "min". A point dominates
another when it is at least as good in every objective and strictly better in
one; equal points do not dominate each other, so duplicates of a front point
are all on the front. Rows with a NaN in any objective are never on the front.

    pareto_mask(points, goals)              # bool array, True = non-dominated
    hypervolume(points, goals, reference)   # exact, any number of objectives
    front_table(df, objectives)             # the front rows of a candidates DataFrame
"""
from __future__ import annotations

import bisect
from typing import Iterable, Sequence

import numpy as np

GOALS = ("max", "min")


def _as_minimization(points, goals: Sequence[str]) -> np.ndarray:
    """(n, d) float array where smaller is better in every column."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim == 1:
        pts = pts.reshape(-1, len(goals)) if len(goals) else pts.reshape(len(pts), 0)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D array (n, objectives), got shape {pts.shape}")
    goals = tuple(goals)
    if pts.shape[1] != len(goals):
        raise ValueError(f"{pts.shape[1]} objectives in points but {len(goals)} goals")
    bad = [g for g in goals if g not in GOALS]
    if bad:
        raise ValueError(f"goal must be 'max' or 'min', got {bad[0]!r}")
    sign = np.array([-1.0 if g == "max" else 1.0 for g in goals])
    return pts * sign


# -- non-dominated filtering ----------------------------------------------------------------------


def pareto_mask(points, goals: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `points` (n x d) under `goals`.

    Sort-based: O(n log n) for 1-3 objectives (3: a sweep over a 2-D staircase),
    a vectorised cull for more. Duplicates of a front point are all kept.
    """
    pts = _as_minimization(points, goals)
    n, d = pts.shape
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    finite = ~np.isnan(pts).any(axis=1)
    if d == 0:
        mask[:] = True
        return mask
    idx = np.flatnonzero(finite)
    if len(idx) == 0:
        return mask
    uniq, inverse = np.unique(pts[idx], axis=0, return_inverse=True)  # lexsorted, unique
    inverse = inverse.reshape(-1)
    if d == 1:
        keep = np.zeros(len(uniq), dtype=bool)
        keep[0] = True
    elif d == 2:
        keep = _nd_2(uniq)
    elif d == 3:
        keep = _nd_3(uniq)
    else:
        keep = _nd_cull(uniq)
    mask[idx] = keep[inverse]
    return mask


def _nd_2(u: np.ndarray) -> np.ndarray:
    # u is unique and lexsorted: a row is dominated iff an earlier row has f2 <= its f2.
    prev_min = np.minimum.accumulate(u[:, 1])
    keep = np.ones(len(u), dtype=bool)
    keep[1:] = u[1:, 1] < prev_min[:-1]
    return keep


def _nd_3(u: np.ndarray) -> np.ndarray:
    # u is unique and lexsorted by (f1, f2, f3): a row is dominated iff an earlier row is
    # <= in both f2 and f3. Sweep, keeping the 2-D front of earlier rows as a staircase
    # (f2 strictly increasing, f3 strictly decreasing).
    n = len(u)
    keep = np.zeros(n, dtype=bool)
    f2 = u[:, 1].tolist()
    f3 = u[:, 2].tolist()
    stair2: list[float] = []
    stair3: list[float] = []
    bl, br = bisect.bisect_left, bisect.bisect_right
    for i in range(n):
        a, b = f2[i], f3[i]
        j = br(stair2, a) - 1
        if j >= 0 and stair3[j] <= b:
            continue  # dominated
        keep[i] = True
        pos = bl(stair2, a)
        end = pos
        while end < len(stair2) and stair3[end] >= b:
            end += 1
        stair2[pos:end] = [a]
        stair3[pos:end] = [b]
    return keep


def _nd_cull(u: np.ndarray) -> np.ndarray:
    # Any number of objectives: take the remaining row with the smallest sum (it cannot be
    # dominated), drop every row it dominates, repeat. Iterations = front size.
    order = np.argsort(u.sum(axis=1), kind="stable")
    rest = u[order]
    rest_idx = order
    kept = []
    while len(rest):
        p = rest[0]
        kept.append(rest_idx[0])
        dominated = np.all(p <= rest, axis=1) & np.any(p < rest, axis=1)
        dominated[0] = True  # p itself leaves the pool (u is unique)
        rest, rest_idx = rest[~dominated], rest_idx[~dominated]
    keep = np.zeros(len(u), dtype=bool)
    keep[np.asarray(kept, dtype=int)] = True
    return keep


def pareto_mask_bruteforce(points, goals: Sequence[str]) -> np.ndarray:
    """O(n^2) reference implementation (tests, small inputs)."""
    pts = _as_minimization(points, goals)
    n = len(pts)
    mask = np.zeros(n, dtype=bool)
    for i in range(n):
        if np.isnan(pts[i]).any():
            continue
        dominated = False
        for j in range(n):
            if j != i and not np.isnan(pts[j]).any() and np.all(pts[j] <= pts[i]) and np.any(pts[j] < pts[i]):
                dominated = True
                break
        mask[i] = not dominated
    return mask


# -- hypervolume --------------------------------------------------------------------------------


def hypervolume(points, goals: Sequence[str], reference) -> float:
    """Exact volume of the objective space dominated by `points` and bounded by `reference`.

    Points not strictly better than the reference in every objective add nothing.
    2 objectives: one sort; 3 and more: slicing along the last objective, the front of
    each slab measured one dimension down (fine for a few hundred points at d <= 4).
    """
    pts = _as_minimization(points, goals)
    ref = _as_minimization(np.asarray(reference, dtype=float).reshape(1, -1), goals)[0]
    if len(pts) == 0:
        return 0.0
    pts = pts[~np.isnan(pts).any(axis=1)]
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = np.unique(pts, axis=0)
    pts = pts[pareto_mask(pts, ("min",) * pts.shape[1])]
    return float(_hv(pts, ref))


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    n, d = pts.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(ref[0] - pts[:, 0].min())
    if d == 2:
        return _hv2(pts, ref)
    if d == 3:
        return _hv3(pts, ref)
    order = np.argsort(pts[:, -1], kind="stable")
    pts = pts[order]
    z = pts[:, -1]
    total = 0.0
    for i in range(n):
        top = z[i + 1] if i + 1 < n else ref[-1]
        height = top - z[i]
        if height <= 0:
            continue
        slab = pts[: i + 1, :-1]
        if len(slab) > 1:
            slab = slab[pareto_mask(slab, ("min",) * (d - 1))]
        total += _hv(slab, ref[:-1]) * height
    return total


def _hv3(pts: np.ndarray, ref: np.ndarray) -> float:
    # Sweep along z, keeping the 2-D staircase of (x, y) seen so far and its area.
    order = np.argsort(pts[:, 2], kind="stable")
    xs_all, ys_all, zs = pts[order, 0].tolist(), pts[order, 1].tolist(), pts[order, 2].tolist()
    rx, ry, rz = float(ref[0]), float(ref[1]), float(ref[2])
    sx: list[float] = []
    sy: list[float] = []
    area = 0.0
    volume = 0.0
    n = len(zs)
    for i in range(n):
        x, y = xs_all[i], ys_all[i]
        j = bisect.bisect_right(sx, x) - 1
        if not (j >= 0 and sy[j] <= y):
            pos = bisect.bisect_left(sx, x)
            cur_x, cur_h = x, (sy[pos - 1] if pos > 0 else ry)
            end = pos
            while end < len(sx) and sy[end] >= y:
                area += (sx[end] - cur_x) * (cur_h - y)
                cur_x, cur_h = sx[end], sy[end]
                end += 1
            nxt = sx[end] if end < len(sx) else rx
            area += (nxt - cur_x) * (cur_h - y)
            sx[pos:end] = [x]
            sy[pos:end] = [y]
        top = zs[i + 1] if i + 1 < n else rz
        volume += area * (top - zs[i])
    return volume


def _hv2(pts: np.ndarray, ref: np.ndarray) -> float:
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    x, y = pts[order, 0], pts[order, 1]
    best_y = np.minimum.accumulate(y)
    widths = np.diff(np.append(x, ref[0]))
    return float(np.sum(widths * (ref[1] - best_y)))


# -- tables ---------------------------------------------------------------------------------------


def normalize_objectives(objectives: Iterable) -> list[tuple[str, str]]:
    """[(column, goal)] from {"column":..., "goal":...} dicts, pairs, or bare column names (max)."""
    out = []
    for obj in objectives:
        if isinstance(obj, str):
            col, goal = obj, "max"
        elif isinstance(obj, dict):
            col, goal = obj.get("column"), obj.get("goal", "max")
        else:
            col, goal = obj
        if not isinstance(col, str) or goal not in GOALS:
            raise ValueError(f"bad objective {obj!r}: need a column name and goal 'max' or 'min'")
        out.append((col, goal))
    if not out:
        raise ValueError("no objectives")
    return out


def front_table(df, objectives):
    """The rows of `df` on the Pareto front over `objectives`, in id (or index) order.

    Only rows with status "ok" (when there is a status column) and every objective present
    take part.
    """
    objs = normalize_objectives(objectives)
    cols = [c for c, _ in objs]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"objective column {missing[0]!r} not in the table")
    sub = df
    if "status" in df.columns:
        sub = sub[sub["status"] == "ok"]
    values = sub[cols].astype("float64").to_numpy(na_value=np.nan) if len(sub) else np.empty((0, len(cols)))
    mask = pareto_mask(values, [g for _, g in objs])
    front = sub[mask]
    if "id" in front.columns:
        front = front.sort_values("id", kind="stable")
    return front
