"""A polynomial layer under real encryption: train a proxy with it, export it for HE, and run
its positions under CKKS with TenSEAL (docs/he.md has the output for the README's layers).

The layer is trained on Fashion-MNIST (default budget, one thread, seed 0) in a proxy
(default plainnet), or a trained network is loaded (`--state-dict`, as saved by
`--save-net`). Its "evonorm-he" document is made from the trained network with input ranges
measured on the validation split (`primitives.he.he_export`, what `evonorm export --he`
writes), and `evaluators.he.prove` runs N test images with every position encrypted,
evaluated homomorphically and decrypted, against the plaintext network.

    python benchmarks/he_proof.py bn-poly --images 100
    python benchmarks/he_proof.py "poly((x - batch_mean(x)) / batch_std(x), norm=1) * gamma + v7" \\
        --save-net net.pt --export layer.json
    python benchmarks/he_proof.py bn-poly --state-dict net.pt        # no training
    evonorm export bn-poly-formula --he layer.json --state-dict net.pt --arch plainnet   # the same document

Needs TenSEAL (`pip install 'evonorm[he]'`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluators.datasets import load_dataset  # noqa: E402
from evaluators.evaluate import EvalConfig  # noqa: E402
from evaluators.he import format_report, prove  # noqa: E402
from evaluators.proxies import build_proxy  # noqa: E402
from evaluators.trainer import train_and_score  # noqa: E402
from primitives import compile_layer, parse  # noqa: E402
from primitives.he import dumps, he_export  # noqa: E402
from primitives.library import REFERENCE_LAYERS  # noqa: E402


def build(arch: str, graph, dataset, seed: int) -> torch.nn.Module:
    """The proxy around the layer, seeded as the trainer seeds it (`build_and_train`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_proxy(arch, lambda c: compile_layer(graph, c), dataset.in_channels, dataset.num_classes,
                           dataset.image_size)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layer", help="a library layer's name (bn-poly) or a formula")
    parser.add_argument("--arch", default="plainnet")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the default budget)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=100, help="test images run under encryption (default 100)")
    parser.add_argument("--range-images", type=int, default=None,
                        help="validation images the ranges are measured on (default: the whole split)")
    parser.add_argument("--state-dict", default=None, help="a trained network's state_dict: no training")
    parser.add_argument("--save-net", default=None, help="save the trained network's state_dict here")
    parser.add_argument("--export", default=None, help="write the evonorm-he document here")
    parser.add_argument("--json", default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> int:
    graph = parse(REFERENCE_LAYERS.get(args.layer, args.layer))
    dataset = load_dataset(args.dataset, "cpu", args.data_root)
    model = build(args.arch, graph, dataset, args.seed)
    if args.state_dict:
        model.load_state_dict(torch.load(args.state_dict, map_location="cpu", weights_only=True))
        print(f"loaded {args.state_dict}")
    else:
        config = EvalConfig(dataset=args.dataset, archs=(args.arch,), seed=args.seed, steps=args.steps,
                            compile=False).train_config()
        start = time.perf_counter()
        result = train_and_score(model, dataset, config)
        if not result.ok:
            print(f"training failed: {result.reason}", file=sys.stderr)
            return 1
        print(f"trained {args.arch} {config.steps} steps of {config.batch_size} (lr {config.lr}, seed "
              f"{config.seed}, one thread) in {time.perf_counter() - start:.0f} s: validation accuracy "
              f"{100 * result.accuracy:.2f}%" + (f" ({result.note})" if result.note else ""))
        if args.save_net:
            torch.save(model.state_dict(), args.save_net)
    model.eval()
    val_x, _ = dataset.split("val")
    n_val = len(val_x) if args.range_images is None else min(args.range_images, len(val_x))
    batches = [x for x, _ in dataset.eval_batches("val", 500)]
    batches = torch.cat(batches)[:n_val].split(500)
    document = he_export(model, graph, batches, source={"dataset": args.dataset, "split": "val", "images": n_val,
                                                        "arch": args.arch, "seed": args.seed})
    for warning in document["warnings"]:
        print(f"warning: {warning}")
    if args.export:
        Path(args.export).write_text(dumps(document))
    test_x, test_y = dataset.split("test")
    images = dataset.normalise(test_x[:args.images])
    report = prove(model, graph, document, images, test_y[:args.images])
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
