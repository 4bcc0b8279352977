"""`evonorm plot`'s hypervolume panel: a reference point at which a search's progress shows."""
from __future__ import annotations

import random
from datetime import datetime, timezone

import numpy as np

from search.analysis.plots import progress, reference_point
from search.store.reader import load_run
from search.store.writer import RunStore

ARCHS = ["resnet", "mobilenetv2"]


def _improving_run(path, n=60, seed=0):
    """Accuracies like a real search's: all near 0.85-0.9, a few low outliers, the best
    creeping up by a point or two over the run."""
    rng = random.Random(seed)
    info = {"config": {"archs": ARCHS}, "archs": ARCHS,
            "objectives": [{"column": f"acc_{a}", "goal": "max"} for a in ARCHS]}
    with RunStore.create(path, info) as store:
        for i in range(n):
            low = rng.random() < 0.1
            accs = {f"acc_{a}": (0.3 if low else 0.86 + 0.02 * i / n + 0.01 * rng.random()) for a in ARCHS}
            store.append({"id": i, "status": "ok", "formula": "x", "seconds": 1.0, "worker": "w",
                          "created_at": datetime.now(timezone.utc), **accs})
    return load_run(path)


def test_hypervolume_curve_shows_a_front_that_improves(tmp_path):
    run = _improving_run(tmp_path / "run")
    xs, best, hv, ref = progress(run)
    assert np.all(np.diff(hv) >= -1e-12)              # a front never loses volume
    assert hv[-1] > 0 and hv[len(hv) // 4] < 0.5 * hv[-1], "the curve is flat"
    assert len(np.unique(np.round(hv, 12))) >= 5
    final = np.column_stack([run.candidates[f"acc_{a}"] for a in ARCHS])
    assert all(r < final[:, j].max() for j, r in enumerate(ref))
    assert all(r > 0.8 for r in ref)          # not 0, nor the worst outlier (0.3)


def test_reference_point_is_the_final_fronts_nadir_less_a_margin():
    values = np.array([[0.9, 0.5], [0.5, 0.9], [0.4, 0.4], [0.7, 0.7]])
    ref = reference_point(values, [("acc_a", "max"), ("acc_b", "max")])
    # front {0, 1, 3}: nadir (0.5, 0.5); range 0.5 per objective, margin 5% of it
    assert ref == [0.5 - 0.025, 0.5 - 0.025]
    cost = reference_point(np.array([[0.9, 3.0], [0.8, 1.0]]), [("acc_a", "max"), ("params", "min")])
    assert cost[1] > 3.0 and cost[0] < 0.8
