"""Shared fixtures: small synthetic run directories written through `search.store.writer.RunStore`."""
from __future__ import annotations

import hashlib
import json
import os
import random
from datetime import datetime, timedelta, timezone

import pytest

# The cross-run training cache (evaluators/cache.py) is off in tests, so that no test reads
# another's (or a user's) trainings; tests of the cache point EVONORM_CACHE at a folder of their own.
os.environ["EVONORM_CACHE"] = "off"

FORMULAS = [
    "relu((x - batch_mean(x)) / batch_std(x) * gamma + beta)",
    "relu((x - group_mean(x)) / group_std(x) * gamma + beta)",
    "x / max(batch_std(x, eps=0.001), v1 * x + instance_std(x, eps=0.001)) * gamma + beta",
    "x * sigmoid(v1 * x) / group_std(x) * gamma + beta",
    "x * sigmoid(v1 * x) / layer_rms(x) * gamma + beta",
    "tanh(x - instance_mean(x)) * gamma + beta",
    "poly(x, order=3) * gamma + beta",
    "x ** 2 * v1 + x * gamma + beta",
    "max(x, v1 * x) / sqrt(batch_var(x) + 0.001) * gamma + beta",
    "x * sigmoid(x) / group_std(x, groups=8) * gamma",
    "rational(x - batch_mean(x)) * gamma + beta",
    "abs(x) / channel_std(x) * gamma + beta",
]
REJECTED = ["invalid", "duplicate", "equivalent", "unstable", "low_quality", "stopped", "failed"]


def synthetic_records(n: int, archs=("resnet", "mobilenetv2"), seed: int = 0, initial: int = 6,
                      ties: bool = True):
    """n realistic-looking records: an initial population, then mutated children of earlier
    ok records; about half rejected; accuracies rounded so that ties happen."""
    rng = random.Random(seed)
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    out, ok_ids = [], []
    for i in range(n):
        formula = rng.choice(FORMULAS)
        if i < initial or not ok_ids:
            parent, mutation = None, None
        else:
            parent, mutation = rng.choice(ok_ids), rng.choice(["change_op", "rewire", "insert", "remove",
                                                                 "constant", "swap_vector"])
        status = "ok" if i < initial or rng.random() < 0.5 else rng.choice(REJECTED)
        rec = {
            "id": i, "parent_id": parent, "mutation": mutation, "formula": formula,
            "graph": json.dumps({"formula": formula}),
            "graph_hash": hashlib.sha256(formula.encode()).hexdigest()[:16],
            "status": status, "reason": None if status == "ok" else f"{status}: synthetic",
            "params_per_channel": rng.randint(1, 6), "uses_batch_stats": "batch" in formula,
            "poly_degree": 3 if formula.startswith("poly") else None,
            "seconds": round(rng.uniform(0.001, 20.0), 3), "worker": f"w{i % 2}",
            "created_at": t0 + timedelta(seconds=i),
            "stage_seconds": {"screen": 0.01, "train": 1.5} if status == "ok" else {"screen": 0.01},
        }
        if status in ("duplicate", "equivalent") and ok_ids:
            rec["equivalent_to"] = rng.choice(ok_ids)
        if status in ("ok", "low_quality", "stopped", "duplicate", "equivalent"):
            for a in archs:
                v = rng.random()
                rec[f"acc_{a}"] = round(v, 2) if ties else v
        if status == "ok":
            ok_ids.append(i)
        out.append(rec)
    return out


def write_run(path, n: int = 60, archs=("resnet", "mobilenetv2"), seed: int = 0, cost: bool = False,
              baselines: dict | None = None, flush_every: int = 7):
    from search.store.writer import RunStore

    objectives = [{"column": f"acc_{a}", "goal": "max"} for a in archs]
    if cost:
        objectives.append({"column": "params_per_channel", "goal": "min"})
    info = {"config": {"budget": n, "population": 6, "archs": list(archs)}, "seed": seed,
            "versions": {"evonorm": "0.1.0"}, "started_at": "2025-01-01T00:00:00+00:00",
            "archs": list(archs), "objectives": objectives}
    if baselines:
        info["baselines"] = baselines
    with RunStore.create(path, info, flush_every=flush_every) as store:
        for rec in synthetic_records(n, archs, seed):
            store.append(rec)
    return path


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """torch's thread count is process-wide: a test that changes it must put it back (the
    `one_thread` fixtures do), or every later test runs with it."""
    import torch
    before = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == before, f"torch threads left at {torch.get_num_threads()}, were {before}"


@pytest.fixture
def run_factory(tmp_path):
    counter = iter(range(1000))

    def make(**kwargs):
        return write_run(tmp_path / f"run{next(counter)}", **kwargs)
    return make


@pytest.fixture
def small_run(run_factory):
    return run_factory(n=60, baselines={"BN-ReLU": {"acc_resnet": 0.8, "acc_mobilenetv2": 0.75}})


@pytest.fixture
def a_file(tmp_path):
    """A regular file: a path below it cannot be written by anyone, root included."""
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    return path


@pytest.fixture
def real_run(tmp_path):
    """A run directory `run` of two real layers (id 0 EvoNorm-S0, id 1 BN-ReLU, scored on
    resnet), as `evonorm search` writes it."""
    from primitives import parse
    from primitives.library import REFERENCE_LAYERS
    from search.store.writer import RunStore

    path = tmp_path / "run"
    info = {"config": {"dataset": "synthetic", "archs": ["resnet"]}, "seed": 0, "archs": ["resnet"],
            "objectives": [{"column": "acc_resnet", "goal": "max"}], "started_at": "2026-01-01T00:00:00+00:00"}
    with RunStore.create(path, info) as store:
        for i, name in enumerate(["evonorm-s0", "bn-relu"]):
            g = parse(REFERENCE_LAYERS[name])
            store.append({"id": i, "formula": str(g), "graph": g.to_json(), "graph_hash": g.hash, "status": "ok",
                          "acc_resnet": 0.5 + i / 10, "params_per_channel": g.params_per_channel,
                          "uses_batch_stats": g.uses_batch_stats, "poly_degree": g.poly_degree,
                          "seconds": 1.0, "worker": "w0", "created_at": datetime.now(timezone.utc)})
    return path
