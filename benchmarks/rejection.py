"""How much the rejection protocols throw away, and how fast.

Draws random layer graphs (primitives.random_graph, the search's initial
distribution), runs each through protocols 1-4 (`evaluators.screen.Screen`)
and, with --quality, protocol 5 (a short training on the first proxy).
Prints per protocol the fraction of candidates it rejected and its time per
candidate checked, the throughput of protocols 1-4 together, and the share of
would-be proxy trainings the protocols saved.

    python benchmarks/rejection.py                    # 1000 graphs, one core
    python benchmarks/rejection.py --quality --dataset synthetic --quality-steps 30
"""
from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_PER_SECOND = 20.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000, help="random graphs to draw")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the target is for one)")
    ap.add_argument("--quality", action="store_true", help="also run protocol 5 on the survivors")
    ap.add_argument("--dataset", default="synthetic", help="dataset for --quality")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--quality-steps", type=int, default=None, help="training steps of protocol 5")
    ap.add_argument("--show", type=int, default=0, help="print this many rejections per status")
    args = ap.parse_args(argv)

    import torch

    from primitives.random_graph import random_graph

    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    graphs = [random_graph(rng) for _ in range(args.count)]
    statuses, examples, survivors, stats, screen_seconds = _screen(graphs, args.show)
    evaluator = _quality(args, survivors, statuses, stats) if args.quality and survivors else None
    _report(args, len(graphs), statuses, stats, screen_seconds, len(survivors), evaluator)
    for status, items in examples.items():
        if not items:
            continue
        print(f"\n{status}:")
        for formula, reason in items:
            print(f"  {formula}\n      {reason}")
    return 0


def _screen(graphs, show: int):
    """Protocols 1-4 on every graph (after a warm-up on the reference layers): status
    counts, up to `show` examples per rejection, the survivors, per-protocol stats and
    the wall seconds."""
    from evaluators.screen import Screen
    from primitives.library import REFERENCE_LAYERS

    warm = Screen()  # torch's lazy initialisation (first double backward of each op kind, ...)
    for i, formula in enumerate(REFERENCE_LAYERS.values()):
        warm.check(formula, -1 - i)
    screen = Screen()
    statuses = collections.Counter()
    examples = collections.defaultdict(list)
    survivors = []
    start = time.perf_counter()
    for i, graph in enumerate(graphs):
        record = screen.check(graph, i)
        status = record["status"] or "passed"
        statuses[status] += 1
        if status == "passed":
            survivors.append(graph)
        elif len(examples[status]) < show:
            examples[status].append((record["formula"], record["reason"]))
    return statuses, examples, survivors, screen.stats, time.perf_counter() - start


def _quality(args, survivors, statuses, stats):
    """Protocol 5 (a short training on the first proxy) on the survivors; the evaluator."""
    from evaluators.evaluate import EvalConfig, Evaluator

    config = EvalConfig(dataset=args.dataset, data_root=args.data_root, seed=args.seed,
                        **({"quality_steps": args.quality_steps} if args.quality_steps else {}))
    evaluator = Evaluator(config)
    for graph in survivors:
        result = evaluator.train_arch(graph, config.archs[0], min(config.quality_steps, config.steps))
        reason = getattr(result, "reason", None)
        if reason:
            statuses["failed"] += 1
            evaluator.quality.checked += 1
            evaluator.quality.rejected += 1
            evaluator.quality.seconds += getattr(result, "seconds", 0.0) or 0.0
            continue
        verdict = evaluator.quality.judge(result.accuracy, result.seconds)
        if verdict.status:
            statuses[verdict.status] += 1
    stats["quality"] = evaluator.quality.stats()
    return evaluator


def _report(args, n, statuses, stats, screen_seconds, survivors: int, evaluator) -> None:
    from evaluators.protocols import PROTOCOLS

    print(f"rejection protocols on {n} random graphs (seed {args.seed}, torch threads {args.threads})")
    print(f"{'protocol':<13}{'checked':>8}{'rejected':>10}{'of all':>9}{'ms/cand':>10}")
    for name in PROTOCOLS:
        if name not in stats:
            continue
        s = stats[name]
        ms = 1e3 * s["seconds"] / max(s["checked"], 1)
        print(f"{name:<13}{s['checked']:>8}{s['rejected']:>10}{s['rejected'] / n:>9.1%}{ms:>10.2f}")
    print("statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items(), key=lambda kv: -kv[1])))
    rate = n / screen_seconds
    verdict = "meets" if rate >= TARGET_PER_SECOND else "MISSES"
    print(f"protocols 1-4: {rate:.1f} candidates/s ({1e3 * screen_seconds / n:.1f} ms each, "
          f"wall, graph drawing excluded) -- {verdict} the {TARGET_PER_SECOND:.0f}/s target")
    full = sum(1e3 * stats[p]["seconds"] / max(stats[p]["checked"], 1)
               for p in ("validity", "duplicate", "equivalence", "stability"))
    print(f"a candidate that reaches protocol 4 costs about {full:.1f} ms ({1e3 / full:.1f}/s if all did)")
    print(f"trainings saved by protocols 1-4: {(n - survivors) / n:.1%} of candidates never trained")
    if evaluator is not None:
        k = len(evaluator.config.archs)
        quality_rejected = evaluator.quality.rejected
        would_be = n * k
        trained = survivors * 1 + (survivors - quality_rejected) * k
        short = min(evaluator.config.quality_steps, evaluator.config.steps) / evaluator.config.steps
        cost = survivors * short + (survivors - quality_rejected) * k
        print(f"protocol 5 rejected {quality_rejected} of {survivors} survivors; proxy trainings "
              f"run {trained - survivors} of {would_be} would-be ({1 - cost / would_be:.1%} of "
              f"training compute saved, counting the short trainings)")


if __name__ == "__main__":
    sys.exit(main())
