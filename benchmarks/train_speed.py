"""Training throughput of the proxies: BN-ReLU and the EvoNorms, eager and compiled.

For each proxy and layer it trains `--steps` steps (default: the trainer's budget
is 300; this script runs 60 by default to stay short) and prints images/s, the
compile time, the ratio to eager BN-ReLU on the same proxy, and the projected
default training time (default steps, compile included, plus evaluation).
Runs on CUDA when present (or --device).

    python benchmarks/train_speed.py                 # ~3-4 min on a 2-core CPU
    python benchmarks/train_speed.py --steps 20 --archs resnet --layers bn-relu evonorm-b0
    python benchmarks/train_speed.py --full          # also the full default training + accuracy
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from evaluators.datasets import load_dataset  # noqa: E402
from evaluators.proxies import PROXY_NAMES  # noqa: E402
from evaluators.trainer import TrainConfig, build_and_train  # noqa: E402
from primitives import compile_layer, parse  # noqa: E402
from primitives.library import REFERENCE_LAYERS  # noqa: E402


def factory_for(name):
    if name == "torch-bn-relu":
        return lambda c: torch.nn.Sequential(torch.nn.BatchNorm2d(c), torch.nn.ReLU())
    graph = parse(REFERENCE_LAYERS[name])
    return lambda c: compile_layer(graph, c)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per run (default 60)")
    ap.add_argument("--archs", nargs="+", default=list(PROXY_NAMES), choices=PROXY_NAMES)
    ap.add_argument("--layers", nargs="+", default=["torch-bn-relu", "bn-relu", "evonorm-b0", "evonorm-s0"],
                    help="torch-bn-relu (nn.BatchNorm2d + nn.ReLU, the baseline) or names of "
                         "primitives.library.REFERENCE_LAYERS")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--full", action="store_true", help="also train at the default budget (accuracy)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    default = TrainConfig()
    ds = load_dataset(args.dataset, args.device)
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else f'{torch.get_num_threads()} threads'}), "
          f"torch {torch.__version__}, {ds!r}")
    print(f"timed runs: {args.steps} steps of batch {default.batch_size}; default budget {default.steps} steps")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.2f}")
    modes = [False] if args.no_compile else [False, True]
    header = f"{'proxy':<13}{'layer':<12}{'mode':<9}{'img/s':>8}{'vs BN eager':>12}{'compile s':>10}{'default s':>10}"
    print(header)
    print("-" * len(header))
    totals = {}
    for arch in args.archs:
        base = None
        for name in args.layers:
            for compiled in modes:
                cfg = TrainConfig(steps=args.steps, compile=compiled)
                r = build_and_train(arch, factory_for(name), ds, cfg, args.device)
                if r.reason:
                    print(f"{arch:<13}{name:<12}{'compiled' if compiled else 'eager':<9}  failed: {r.reason}")
                    continue
                if base is None and not compiled:   # the first layer's eager run is the baseline
                    base = r.images_per_second
                ratio = r.images_per_second / base if base else float("nan")
                projected = (default.steps * default.batch_size / r.images_per_second + r.compile_seconds
                             + r.eval_seconds)
                totals[(name, compiled)] = totals.get((name, compiled), 0.0) + projected
                print(f"{arch:<13}{name:<12}{'compiled' if compiled else 'eager':<9}{r.images_per_second:>8.0f}"
                      f"{ratio:>11.2f}x{r.compile_seconds:>10.1f}{projected:>10.1f}", flush=True)
    print("\nprojected default training of all proxies (compile and eval included):")
    for (name, compiled), t in totals.items():
        print(f"  {name:<12}{'compiled' if compiled else 'eager':<9}{t:>7.1f} s")
    if args.full:
        print(f"\nfull default training ({default.steps} steps, compile='auto'), validation accuracy:")
        for name in args.layers:
            total = 0.0
            for arch in args.archs:
                r = build_and_train(arch, factory_for(name), ds, TrainConfig(), args.device)
                total += r.seconds
                acc = "-" if r.accuracy is None else f"{r.accuracy:.4f}"
                print(f"  {arch:<13}{name:<12}acc {acc}  {r.seconds:6.1f} s  compiled={r.compiled}"
                      f"{'  ' + r.reason if r.reason else ''}", flush=True)
            print(f"  {name}: all proxies {total:.1f} s")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
