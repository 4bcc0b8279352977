"""Executor overhead: the same candidates through the local executor and Ray (1 and 2 workers).

Each evaluation is the surrogate evaluator plus `--seconds` of CPU-bound work
(one core), standing in for a training of realistic duration. Worker start-up
(Ray, actors, dataset) is excluded: it is paid once per run, not per candidate.
Prints wall time per candidate, Ray's overhead per candidate over the local
executor, and the 2-worker speedup over 1 worker. Targets: overhead under 5%
of a default candidate's evaluation time, speedup at least 1.7 on 2 cores.

    python benchmarks/executor_overhead.py [--candidates 16] [--seconds 2.0]
"""
from __future__ import annotations

import argparse
import random
import time

from search.workers.executor import LocalExecutor
from search.engine.modes import get_mode
from search.workers.ray_executor import RayExecutor, init_ray


def drive(executor, graphs) -> float:
    """Steady state: keep every worker busy; returns wall seconds for all candidates."""
    start = time.perf_counter()
    todo = list(enumerate(graphs))
    done = 0
    while done < len(graphs):
        while todo and executor.in_flight < executor.capacity:
            executor.submit(*todo.pop(0))
        finished = executor.wait(timeout=1.0)
        done += len(finished)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU work per evaluation")
    parser.add_argument("--default-seconds", type=float, default=None,
                        help="evaluation time of a default candidate, to state overhead against")
    args = parser.parse_args()
    rng = random.Random(0)
    mode = get_mode("batch")
    graphs = [mode.random_graph(rng).to_json() for _ in range(args.candidates)]
    spec = {"kind": "surrogate", "archs": ["resnet", "mobilenetv2", "efficientnet"],
            "surrogate_seconds": args.seconds, "eval": {}}

    local = LocalExecutor(spec)
    local.submit(-1, graphs[0])
    local.wait()                                  # warm-up (first compile)
    t_local = drive(local, graphs)

    init_ray(num_cpus=2)
    times = {}
    for workers in (1, 2):
        executor = RayExecutor(spec, workers=workers)
        executor.wait_ready()
        drive(executor, graphs[:workers])         # warm-up
        times[workers] = drive(executor, graphs)
        executor.close()

    n = args.candidates
    per_local, per_ray1, per_ray2 = t_local / n, times[1] / n, times[2] / n
    overhead = per_ray1 - per_local
    base = args.default_seconds or args.seconds
    print(f"{n} candidates, {args.seconds:.2f} s CPU work each")
    print(f"local executor      {per_local * 1000:9.1f} ms/candidate")
    print(f"ray, 1 worker       {per_ray1 * 1000:9.1f} ms/candidate")
    print(f"ray, 2 workers      {per_ray2 * 1000:9.1f} ms/candidate (wall, both workers busy)")
    print(f"ray overhead        {overhead * 1000:9.1f} ms/candidate = {100 * overhead / base:.2f}% of a "
          f"{base:.1f} s evaluation (target < 5%: {'met' if overhead / base < 0.05 else 'NOT met'})")
    speedup = times[1] / times[2]
    print(f"2-worker speedup    {speedup:9.2f}x (target >= 1.7: {'met' if speedup >= 1.7 else 'NOT met'})")


if __name__ == "__main__":
    main()
