"""The GPU path, checked on one GPU in under 8 minutes (no Ray: trainings run in-process).

1. every reference layer trains a short run on each proxy under bf16 autocast (the
   trainer's CUDA default); any failure makes the exit status 1;
2. training images/s of torch BN-ReLU, the formula BN-ReLU, EvoNorm-B0 and S0, eager
   and compiled, with the ratio to eager torch BN-ReLU;
3. how many trainings one GPU runs side by side (processes) before the throughput
   per training falls below 90% of a training alone: the number of workers per
   GPU, i.e. `--gpus-per-worker 1/K`.

Data: Fashion-MNIST from --data-root when its idx files are there, else the
synthetic set (the script says which). The device copies the git working tree,
which does not hold the data; carry it as an ignored folder (about 30 MB):

    mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/
    # device run: carry [".data/fashion-mnist"], command:
    python benchmarks/gpu_check.py --data-root .data/fashion-mnist

    python benchmarks/gpu_check.py --quick     # CPU smoke test: tiny steps, bf16 autocast on CPU

Sections stop early when --minutes (default 7.5) would be exceeded; what was
skipped is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from evaluators.datasets import DatasetError, load_dataset  # noqa: E402
from evaluators.proxies import PROXY_NAMES  # noqa: E402
from evaluators.trainer import TrainConfig, build_and_train  # noqa: E402
from primitives import compile_layer, parse  # noqa: E402
from primitives.library import REFERENCE_LAYERS, TRANSFORMER_LAYERS  # noqa: E402

SPEED_LAYERS = ("torch-bn-relu", "bn-relu", "evonorm-b0", "evonorm-s0")
KEEP = 0.9  # side by side: a training keeps at least this share of its solo images/s


def factory_for(name):
    if name == "torch-bn-relu":
        return lambda c: torch.nn.Sequential(torch.nn.BatchNorm2d(c), torch.nn.ReLU())
    graph = parse(REFERENCE_LAYERS[name])
    return lambda c: compile_layer(graph, c)


def load(args, device):
    """Fashion-MNIST from --data-root (never downloaded here), else synthetic; says which."""
    if args.dataset != "synthetic":
        try:
            return load_dataset(args.dataset, device, args.data_root, download=False), ""
        except DatasetError as err:
            return load_dataset("synthetic", device), f" (fell back: {err})"
    return load_dataset("synthetic", device), ""


def bf16_sweep(args, ds, device, deadline) -> int:
    """Every reference layer of the CNN proxies on every proxy under bf16 (the Transformer
    layers belong on Transformer proxies); returns the number of failures."""
    config = TrainConfig(steps=args.steps, batch_size=args.batch, amp="bf16", compile=False)
    print(f"\n== 1. reference layers under bf16 autocast: {config.steps} steps of {config.batch_size}, eager")
    print(f"{'layer':<14}" + "".join(f"{a:>24}" for a in args.archs))
    failures = done = 0
    for name in (n for n in REFERENCE_LAYERS if n not in TRANSFORMER_LAYERS):
        cells = []
        for arch in args.archs:
            if time.monotonic() > deadline:
                cells.append("skipped (time)")
                continue
            r = build_and_train(arch, factory_for(name), ds, config, device, width=args.width)
            done += 1
            if r.ok:
                cells.append(f"{100 * r.accuracy:5.1f}% {r.images_per_second:8.0f}/s")
                continue
            # a layer that fails in float32 as well is a bad layer, not a mixed-precision bug
            full = build_and_train(arch, factory_for(name), ds, replace(config, amp="off"), device,
                                   width=args.width)
            failures += full.ok
            cells.append("FAIL" if full.ok else "fails in fp32 too")
            print(f"   {name} on {arch}: {r.reason}", file=sys.stderr)
        print(f"{name:<14}" + "".join(f"{c:>24}" for c in cells), flush=True)
    print(f"bf16 sweep: {done} trainings, {failures} failed under bf16 but not in float32")
    return failures


def speed(args, ds, device, deadline) -> None:
    modes = [False] if args.quick else [False, True]
    print(f"\n== 2. training images/s under the trainer's default precision "
          f"({TrainConfig().amp_dtype(device) or 'float32'}), {args.speed_steps} steps of {args.batch}")
    for arch in args.archs[:1]:
        base = None
        for name in SPEED_LAYERS:
            row = []
            for compiled in modes:
                if time.monotonic() > deadline:
                    row.append("skipped (time)")
                    continue
                config = TrainConfig(steps=args.speed_steps, batch_size=args.batch, compile=compiled)
                r = build_and_train(arch, factory_for(name), ds, config, device, width=args.width)
                if not r.ok:
                    row.append(f"FAIL {r.reason[:40]}")
                    continue
                base = base or (r.images_per_second if name == "torch-bn-relu" and not compiled else None)
                ratio = f" ({r.images_per_second / base:.2f}x)" if base else ""
                tag = "compiled" if r.compiled else "eager"
                extra = f" [compile {r.compile_seconds:.0f} s]" if r.compiled else ""
                row.append(f"{tag} {r.images_per_second:8.0f}/s{ratio}{extra}")
            if args.quick:
                row.append("compiled: skipped (--quick)")
            print(f"{arch:<12} {name:<14} " + "   ".join(row), flush=True)


def _side_by_side_worker(args, device, barrier, results):
    torch.set_num_threads(1)
    ds, _ = load(args, device)
    config = TrainConfig(steps=args.speed_steps, batch_size=args.batch, compile=False, threads=1)
    barrier.wait()
    r = build_and_train(args.archs[0], factory_for(args.parallel_layer), ds, config, device, width=args.width)
    results.put(r.images_per_second if r.ok else 0.0)


def side_by_side(args, device, deadline) -> float | None:
    """Per-training and total images/s with K trainings in K processes; the largest K that
    keeps each training at KEEP of its solo speed."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    print(f"\n== 3. trainings side by side ({args.parallel_layer} on {args.archs[0]}, eager, "
          f"{args.speed_steps} steps each, one process and one CPU thread per training)")
    solo = best = None
    for k in args.procs:
        if time.monotonic() > deadline:
            print(f"K={k}: skipped (time)")
            continue
        barrier, results = ctx.Barrier(k), ctx.Queue()
        procs = [ctx.Process(target=_side_by_side_worker, args=(args, device, barrier, results)) for _ in range(k)]
        for p in procs:
            p.start()
        speeds = [results.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        per = sum(speeds) / k
        solo = solo or per
        keeps = per >= KEEP * solo and min(speeds) > 0
        best = k if keeps and (best is None or k > best) else best
        print(f"K={k:<3} per training {per:8.0f} img/s ({per / solo:.2f}x of alone)   "
              f"total {sum(speeds):9.0f} img/s ({sum(speeds) / solo:.2f}x)", flush=True)
    if best:
        print(f"side by side: {best} training(s) per {device} keep >= {KEEP:.0%} of the solo speed "
              f"-> --gpus-per-worker {1 / best:.3g}")
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "synthetic"))
    ap.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files")
    ap.add_argument("--archs", nargs="+", default=list(PROXY_NAMES), choices=PROXY_NAMES)
    ap.add_argument("--steps", type=int, default=60, help="steps of each bf16 sweep training (default 60)")
    ap.add_argument("--speed-steps", type=int, default=200, help="steps of each timed training (default 200)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8], help="side-by-side counts to try")
    ap.add_argument("--parallel-layer", default="evonorm-s0", choices=list(SPEED_LAYERS))
    ap.add_argument("--minutes", type=float, default=7.5, help="stop starting work after this long")
    ap.add_argument("--quick", action="store_true", help="tiny runs (a CPU smoke test)")
    args = ap.parse_args(argv)
    args.width = None
    if args.quick:
        args.steps, args.speed_steps, args.batch, args.width = 2, 3, 16, 8
        args.procs = [k for k in args.procs if k <= 2]
        args.archs = args.archs if "--archs" in (argv or sys.argv) else args.archs[:1]
    start = time.monotonic()
    deadline = start + 60 * args.minutes
    device = args.device
    ds, note = load(args, device)
    if ds.name != args.dataset or note:
        args.dataset = ds.name  # the side-by-side workers load what was used here
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}), torch {torch.__version__}, bf16 "
          f"{'supported' if not device.startswith('cuda') or torch.cuda.is_bf16_supported() else 'MISSING'}")
    print(f"dataset: {ds.name}{note}, {len(ds.train_y)} training images of {ds.image_size}x{ds.image_size}")
    failures = bf16_sweep(args, ds, device, deadline)
    speed(args, ds, device, deadline)
    side_by_side(args, device, deadline)
    print(f"\ntotal {time.monotonic() - start:.0f} s; {'FAILED' if failures else 'ok'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
