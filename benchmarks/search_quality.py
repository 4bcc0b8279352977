"""Search quality: aging evolution against random search, same budget, same seeds.

Both runs use the same driver, screen and evaluator; random search is the driver
with a population as large as the budget, so every proposal is a fresh random
layer and selection never happens. The proxy is the surrogate evaluator
(search/surrogate.py): three conflicting targets (BN-ReLU, EvoNorm-S0,
LN-GELU outputs), scored 1 - normalised MSE. Prints, per seed, the hypervolume
of each run's front over the three scores (reference point 0) and the ratio.
Target: evolution ahead, mean ratio above 1.1.

    python benchmarks/search_quality.py [--budget 1000] [--seeds 5] [--mode batch]
"""
from __future__ import annotations

import argparse
import statistics
import time

from search.config import build_config
from search.engine.driver import Driver
from search.workers.executor import LocalExecutor, evaluator_spec, make_screen
from search.engine.modes import get_mode
from search.pareto import hypervolume, pareto_mask
from search.store.writer import MemoryStore


def search(seed: int, budget: int, mode: str, random_search: bool, population: int, tournament: int):
    # From random layers only: the library seeds include the surrogate's own targets, which
    # would hand both arms the answer and measure nothing about the search.
    config = build_config(overrides=dict(evaluator="surrogate", executor="local", budget=budget, seed=seed,
                                         library_seeds=False,
                                         mode=mode, population=budget if random_search else population,
                                         tournament=tournament))
    spec = evaluator_spec(config)
    store = MemoryStore()
    Driver(config, get_mode(mode), store, make_screen(spec), LocalExecutor(spec), progress=None).run()
    points = [tuple(r[k] for k in config.objectives) for r in store.records
              if all(r.get(k) is not None for k in config.objectives)]
    front = [p for p, keep in zip(points, pareto_mask(points, config.goals)) if keep]
    return hypervolume(front, config.goals, (0.0,) * len(config.goals)), len(front), len(store.records)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--mode", default="batch")
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--tournament", type=int, default=8)
    args = parser.parse_args()
    print(f"budget {args.budget} records per run, mode {args.mode}, P={args.population} S={args.tournament}, "
          f"surrogate proxy, {args.seeds} seeds")
    print(f"{'seed':>4} {'HV evolution':>13} {'front':>5} {'HV random':>10} {'front':>5} {'ratio':>6}  seconds")
    ratios, evo_all, rnd_all = [], [], []
    for seed in range(args.seeds):
        start = time.perf_counter()
        evo, evo_front, n1 = search(seed, args.budget, args.mode, False, args.population, args.tournament)
        rnd, rnd_front, n2 = search(seed, args.budget, args.mode, True, args.population, args.tournament)
        assert n1 == n2 == args.budget
        ratio = evo / rnd if rnd > 0 else float("inf")
        ratios.append(ratio)
        evo_all.append(evo)
        rnd_all.append(rnd)
        print(f"{seed:>4} {evo:>13.4f} {evo_front:>5} {rnd:>10.4f} {rnd_front:>5} {ratio:>6.2f}  "
              f"{time.perf_counter() - start:.1f}")
    mean_ratio = statistics.mean(evo_all) / statistics.mean(rnd_all)
    print(f"mean HV: evolution {statistics.mean(evo_all):.4f}, random {statistics.mean(rnd_all):.4f}; "
          f"ratio of means {mean_ratio:.2f}, median per-seed ratio {statistics.median(ratios):.2f} "
          f"(target > 1.1: {'met' if mean_ratio > 1.1 else 'NOT met'})")


if __name__ == "__main__":
    main()
