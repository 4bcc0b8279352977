"""Training throughput of the proxies: BN-ReLU and the EvoNorms, eager and compiled; on the
Transformer proxies LayerNorm (torch's, and written as a formula) and RMSNorm.

For each proxy and layer it trains `--steps` steps with the proxy's recipe (default: the
trainer's budget is 300; this script runs 60 by default to stay short) and prints samples/s
(images, or windows of text for charlm) and tokens/s for the Transformer proxies, the
compile time, the ratio to the first layer's eager run on the same proxy, and the projected
default training time (default steps at the proxy's batch size, compile included, plus
evaluation). Runs on CUDA when present (or --device).

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

from evaluators.evaluate import ProxyData  # noqa: E402
from evaluators.proxies import PROXIES, PROXY_NAMES, transformer_references  # noqa: E402
from evaluators.trainer import TrainConfig, build_and_train, proxy_config  # noqa: E402
from primitives import compile_layer, parse  # noqa: E402
from primitives.library import REFERENCE_LAYERS  # noqa: E402


class TorchLayerNorm(torch.nn.LayerNorm):
    """torch's LayerNorm over axis 1 of (N, D, L) tokens."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def factory_for(name):
    if name == "torch-bn-relu":
        return lambda c: torch.nn.Sequential(torch.nn.BatchNorm2d(c), torch.nn.ReLU())
    if name == "torch-layernorm":
        return TorchLayerNorm
    graph = parse({**transformer_references(), **REFERENCE_LAYERS}[name])
    return lambda c: compile_layer(graph, c)


def tokens_per_sample(data) -> int:
    """Tokens a Transformer proxy reads per sample: a window's characters, or 16 patches."""
    return data.context if hasattr(data, "vocab") else 16


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per run (default 60)")
    ap.add_argument("--archs", nargs="+", default=list(PROXY_NAMES), choices=PROXY_NAMES)
    ap.add_argument("--layers", nargs="+", default=["torch-bn-relu", "bn-relu", "evonorm-b0", "evonorm-s0"],
                    help="on the CNN proxies: torch-bn-relu (nn.BatchNorm2d + nn.ReLU, the baseline) or names of "
                         "primitives.library.REFERENCE_LAYERS")
    ap.add_argument("--transformer-layers", nargs="+", default=["torch-layernorm", "layernorm", "rmsnorm"],
                    help="on the Transformer proxies: torch-layernorm (the baseline) or names of the library's "
                         "layers or of primitives.library.TRANSFORMER_LAYERS")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--full", action="store_true", help="also train at the default budget (accuracy)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    default = TrainConfig()
    data = ProxyData(args.dataset, device=args.device)
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else f'{torch.get_num_threads()} threads'}), "
          f"torch {torch.__version__}")
    for kind in dict.fromkeys(PROXIES[a].data for a in args.archs):
        print(f"  {data.get(kind)!r}")
    print(f"timed runs: {args.steps} steps at each proxy's recipe batch size; default budget {default.steps} steps")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.2f}")
    modes = [False] if args.no_compile else [False, True]
    header = (f"{'proxy':<13}{'layer':<16}{'mode':<9}{'batch':>6}{'samples/s':>10}{'tokens/s':>10}{'vs first':>9}"
              f"{'compile s':>10}{'default s':>10}")
    print(header)
    print("-" * len(header))
    totals = {}
    for arch in args.archs:
        base = None
        ds = data.for_arch(arch)
        transformer = PROXIES[arch].family == "transformer"
        for name in (args.transformer_layers if transformer else args.layers):
            for compiled in modes:
                cfg = proxy_config(arch, args.steps, compile=compiled)
                r = build_and_train(arch, factory_for(name), ds, cfg, args.device)
                if r.reason:
                    print(f"{arch:<13}{name:<16}{'compiled' if compiled else 'eager':<9}  failed: {r.reason}")
                    continue
                if base is None and not compiled:   # the first layer's eager run is the baseline
                    base = r.images_per_second
                ratio = r.images_per_second / base if base else float("nan")
                projected = (default.steps * cfg.batch_size / r.images_per_second + r.compile_seconds
                             + r.eval_seconds)
                family = "transformer" if transformer else "cnn"
                key = (family, name, compiled)
                totals[key] = totals.get(key, 0.0) + projected
                tokens = f"{r.images_per_second * tokens_per_sample(ds):>10.0f}" if transformer else f"{'':>10}"
                print(f"{arch:<13}{name:<16}{'compiled' if compiled else 'eager':<9}{cfg.batch_size:>6}"
                      f"{r.images_per_second:>10.0f}{tokens}{ratio:>8.2f}x{r.compile_seconds:>10.1f}{projected:>10.1f}",
                      flush=True)
    print("\nprojected default training of all proxies of a family (compile and eval included):")
    for (family, name, compiled), t in totals.items():
        print(f"  {family:<12}{name:<16}{'compiled' if compiled else 'eager':<9}{t:>7.1f} s")
    if args.full:
        print(f"\nfull default training ({default.steps} steps, compile='auto'), validation accuracy:")
        for name in dict.fromkeys([*args.layers, *args.transformer_layers]):
            total = 0.0
            for arch in args.archs:
                if (name in args.transformer_layers) != (PROXIES[arch].family == "transformer"):
                    continue
                r = build_and_train(arch, factory_for(name), data.for_arch(arch), proxy_config(arch), args.device)
                total += r.seconds
                acc = "-" if r.accuracy is None else f"{r.accuracy:.4f}"
                print(f"  {arch:<13}{name:<12}acc {acc}  {r.seconds:6.1f} s  compiled={r.compiled}"
                      f"{'  ' + r.reason if r.reason else ''}", flush=True)
            print(f"  {name}: all proxies {total:.1f} s")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
