"""Per-step training cost of the proxies at small batch sizes, side by side.

For every proxy and layer, times training steps (forward, backward, SGD step) at
each batch size in turn, in two interleaved rounds (the faster kept, so load from
other processes hurts every batch size alike), and prints milliseconds per step,
the ratio to batch 128, and the step count at which a candidate trained at that
batch costs what the default (300 steps of 128) does. One thread by default:
the cost one worker pays on a CPU core.

    python benchmarks/batch_cost.py                       # ~5 min on a loaded 2-core CPU
    python benchmarks/batch_cost.py --archs resnet --layers bn-relu --timed 10
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from evaluators.datasets import load_dataset  # noqa: E402
from evaluators.proxies import PROXY_NAMES, build_proxy  # noqa: E402
from evaluators.trainer import TrainConfig  # noqa: E402
from primitives import compile_layer, parse  # noqa: E402
from primitives.library import REFERENCE_LAYERS  # noqa: E402


def seconds_per_step(arch, layer, dataset, batch, timed, warmup=3):
    graph = parse(REFERENCE_LAYERS[layer])
    torch.manual_seed(0)
    model = build_proxy(arch, lambda c: compile_layer(graph, c), dataset.in_channels,
                        dataset.num_classes, dataset.image_size).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = dataset.train_batches(batch, torch.Generator().manual_seed(0), None)
    for i in range(warmup + timed):
        if i == warmup:
            start = time.perf_counter()
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / timed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=list(PROXY_NAMES), choices=PROXY_NAMES)
    ap.add_argument("--layers", nargs="+", default=["bn-relu", "evonorm-s0"], choices=sorted(REFERENCE_LAYERS))
    ap.add_argument("--batches", nargs="+", type=int, default=[8, 16, 32, 128])
    ap.add_argument("--timed", type=int, default=12, help="timed steps per measurement (default 12)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", default="fashion-mnist")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset, "cpu")
    default = TrainConfig()
    base = default.batch_size if default.batch_size in args.batches else max(args.batches)
    print(f"{args.dataset}, {args.threads} thread(s), torch {torch.__version__}, load {os.getloadavg()[0]:.2f}; "
          f"ms per training step (best of {args.rounds} interleaved rounds of {args.timed} steps)")
    print(f"'x128': cost of a step relative to batch {base}; 'steps': steps costing {default.steps} "
          f"steps of batch {base}")
    header = f"{'proxy':<13}{'layer':<12}" + "".join(f"{'b' + str(b):>9}{'x' + str(base):>7}{'steps':>7}"
                                                    for b in args.batches)
    print(header)
    print("-" * len(header))
    for arch in args.archs:
        for layer in args.layers:
            best = {b: float("inf") for b in args.batches}
            for _ in range(args.rounds):
                for b in args.batches:
                    best[b] = min(best[b], seconds_per_step(arch, layer, dataset, b, args.timed))
            cells = "".join(f"{1000 * best[b]:>9.1f}{best[b] / best[base]:>7.2f}"
                            f"{round(default.steps * best[base] / best[b]):>7d}" for b in args.batches)
            print(f"{arch:<13}{layer:<12}{cells}", flush=True)


if __name__ == "__main__":
    main()
