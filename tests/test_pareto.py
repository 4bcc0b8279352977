"""search.pareto against brute force (ties included) and hand-computed / Monte-Carlo volumes."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from search.pareto import front_table, hypervolume, pareto_mask, pareto_mask_bruteforce


def _ratio(work, baseline, repeats=2) -> float:
    """Best-of time of `work` over best-of time of `baseline`, measured side by side, so a
    loaded machine slows both (an absolute time limit flakes on two shared cores)."""
    def best(f):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return min(times)
    return best(work) / best(baseline)


def brute(points, goals):
    pts = np.asarray(points, float) * np.array([-1.0 if g == "max" else 1.0 for g in goals])
    n = len(pts)
    out = []
    for i in range(n):
        if np.isnan(pts[i]).any():
            out.append(False)
            continue
        out.append(not any(
            j != i and not np.isnan(pts[j]).any() and (pts[j] <= pts[i]).all() and (pts[j] < pts[i]).any()
            for j in range(n)))
    return np.array(out, dtype=bool)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("seed", range(6))
def test_mask_matches_bruteforce_with_ties(d, seed):
    rng = np.random.default_rng(seed * 10 + d)
    n = int(rng.integers(1, 120))
    levels = [3, 6, 1000][seed % 3]          # few levels -> many ties and exact duplicates
    pts = rng.integers(0, levels, size=(n, d)).astype(float)
    goals = [rng.choice(["max", "min"]) for _ in range(d)]
    if seed % 2:
        pts[rng.random(n) < 0.1, 0] = np.nan
    expected = brute(pts, goals)
    assert (pareto_mask(pts, goals) == expected).all()
    assert (pareto_mask_bruteforce(pts, goals) == expected).all()


def test_duplicates_of_front_point_both_kept():
    pts = [[0.9, 0.5], [0.9, 0.5], [0.5, 0.9], [0.5, 0.5]]
    assert pareto_mask(pts, ["max", "max"]).tolist() == [True, True, True, False]


def test_edge_inputs():
    assert pareto_mask(np.empty((0, 2)), ["max", "max"]).tolist() == []
    assert pareto_mask([(1.0, 2.0)], ("max", "min")).tolist() == [True]
    assert pareto_mask([(1.0,), (2.0,), (2.0,)], ["max"]).tolist() == [False, True, True]
    with pytest.raises(ValueError):
        pareto_mask([[1, 2]], ["max"])
    with pytest.raises(ValueError):
        pareto_mask([[1, 2]], ["max", "up"])


@pytest.mark.parametrize("d", [2, 3])
def test_100k_points_fast(d):
    pts = np.random.default_rng(0).random((100_000, d))
    mask = pareto_mask(pts, ["max"] * d)
    # a sweep costs a few sorts of the points (measured 3.5x a lexsort); a quadratic
    # algorithm would be thousands of times one
    assert _ratio(lambda: pareto_mask(pts, ["max"] * d), lambda: np.lexsort(pts.T)) < 30
    # every front point is non-dominated by every point (vectorised check per front point)
    for p in pts[mask]:
        assert not ((pts >= p).all(axis=1) & (pts > p).any(axis=1)).any()
    assert mask.sum() < 1000


def test_all_on_front_3d_fast():
    rng = np.random.default_rng(1)
    pts = rng.random((50_000, 3))
    pts[:, 2] = 1.0 - pts[:, 0] - pts[:, 1]
    assert pareto_mask(pts, ["min"] * 3).all()
    # measured 8x a lexsort of the points
    assert _ratio(lambda: pareto_mask(pts, ["min"] * 3), lambda: np.lexsort(pts.T)) < 60


def test_hypervolume_hand_computed():
    assert hypervolume([[1, 1]], ["max", "max"], [0, 0]) == pytest.approx(1.0)
    assert hypervolume([[1, 2], [2, 1]], ["max", "max"], [0, 0]) == pytest.approx(3.0)
    assert hypervolume([[1, 2], [2, 1], [1, 1]], ["max", "max"], [0, 0]) == pytest.approx(3.0)
    # minimisation with reference above
    assert hypervolume([[1, 3], [2, 2], [3, 1]], ["min", "min"], [4, 4]) == pytest.approx(6.0)
    # mixed goals: acc max (ref 0), cost min (ref 10)
    assert hypervolume([[0.5, 2], [0.8, 6]], ["max", "min"], [0, 10]) == pytest.approx(0.5 * 8 + 0.3 * 4)
    # 3-D: two boxes 1x1x2 and 2x2x1 overlapping in 1x1x1
    assert hypervolume([[1, 1, 2], [2, 2, 1]], ["max"] * 3, [0, 0, 0]) == pytest.approx(2 + 4 - 1)
    # points outside the reference count for nothing
    assert hypervolume([[-1, 5]], ["max", "max"], [0, 0]) == 0.0
    assert hypervolume(np.empty((0, 3)), ["max"] * 3, [0, 0, 0]) == 0.0


@pytest.mark.parametrize("d", [2, 3, 4])
def test_hypervolume_monte_carlo(d):
    rng = np.random.default_rng(d)
    pts = rng.random((25, d))
    hv = hypervolume(pts, ["max"] * d, [0.0] * d)
    samples = rng.random((200_000, d))
    dominated = np.zeros(len(samples), dtype=bool)
    for p in pts:
        dominated |= (samples <= p).all(axis=1)
    assert hv == pytest.approx(dominated.mean(), abs=0.01)


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_agrees_with_inclusion_exclusion(d, seed):
    from itertools import combinations

    rng = np.random.default_rng(seed)
    n = 7
    pts = rng.integers(1, 5, size=(n, d)).astype(float) / 4  # ties and duplicates
    ref = np.zeros(d)
    exact = 0.0
    for k in range(1, n + 1):
        for sub in combinations(range(n), k):
            exact += (-1) ** (k + 1) * np.prod(pts[list(sub)].min(axis=0) - ref)
    assert hypervolume(pts, ["max"] * d, ref) == pytest.approx(exact)
    # the same in minimisation form
    assert hypervolume(1 - pts, ["min"] * d, np.ones(d)) == pytest.approx(exact)


def test_hypervolume_fast_enough_for_a_few_hundred_points():
    rng = np.random.default_rng(0)
    pts = rng.random((300, 4))
    pts[:, 3] = 2.0 - pts[:, :3].sum(axis=1)  # all mutually non-dominated
    baseline = rng.random(1_000_000)
    # measured 11x a sort of a million floats; inclusion-exclusion would never finish
    assert _ratio(lambda: hypervolume(pts, ["min"] * 4, [2, 2, 2, 3]), lambda: np.sort(baseline), 1) < 150


def test_front_table_filters_status_and_nulls():
    df = pd.DataFrame({
        "id": [0, 1, 2, 3, 4],
        "status": ["ok", "ok", "invalid", "ok", "ok"],
        "acc_a": [0.5, 0.9, 0.99, None, 0.9],
        "acc_b": [0.9, 0.5, 0.99, 0.99, 0.5],
    })
    front = front_table(df, [{"column": "acc_a", "goal": "max"}, {"column": "acc_b", "goal": "max"}])
    assert front["id"].tolist() == [0, 1, 4]
    assert front_table(df.iloc[:0], ["acc_a", "acc_b"]).empty
