"""Do the Transformer proxies separate normalisation layers, and rank them as longer training does?

Trains the reference layers of a Transformer position (LayerNorm, RMSNorm, DyT, Derf and no
normalisation at all) on each Transformer proxy at the default budget over several seeds, and
once more (first seed) at `--long-factor` times the steps; prints per proxy each layer's
validation accuracy, mean ± std over the seeds, the long run's, and Kendall's tau between the
two rankings (docs/transformer-proxies.md holds the output and the decisions behind it).

The layers are hand-written torch modules acting on (N, D, L) like any candidate layer
(channels on axis 1): `layernorm` and `rmsnorm` over axis 1, `dyt` = tanh(alpha x) gamma + beta
with alpha one learnable scalar starting at 0.5 (Zhu et al. 2025), `derf` = erf(alpha x + s)
gamma + beta with alpha 0.5 and s 0 (Chen et al. 2025), `identity`. `ln-formula` is LayerNorm
written in the formula language, `(x - channel_mean(x)) / channel_std(x) * gamma + beta`, run
through primitives.compile_layer; any other name is a formula or a name of
primitives.library.REFERENCE_LAYERS.

Every training runs on one thread (accuracy does not depend on the machine's load, only the
wall time does). Results are kept in `--cache` (JSON, one entry per training), so an
interrupted table resumes and a second table reuses the trainings it shares with the first.

    python benchmarks/transformer_proxies.py                       # 3 proxies x 5 layers x (3 + 1 long)
    python benchmarks/transformer_proxies.py --proxies charlm --seeds 0 --long-factor 0
    python benchmarks/transformer_proxies.py --proxies vit --set lr=0.001 warmup_fraction=0.2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

LAYERS = ("layernorm", "rmsnorm", "dyt", "derf", "identity")
LN_FORMULA = "(x - channel_mean(x)) / channel_std(x) * gamma + beta"


class ChannelLayerNorm(nn.Module):
    """LayerNorm over axis 1 of (N, C, *spatial): each position's channels."""

    def __init__(self, channels, eps=1e-5, rms=False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = None if rms else nn.Parameter(torch.zeros(channels))
        self.eps, self.rms = eps, rms

    def forward(self, x):
        y = x.movedim(1, -1)
        if self.rms:
            y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        else:
            y = nn.functional.layer_norm(y, y.shape[-1:], self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


class Squash(nn.Module):
    """DyT (tanh(alpha x)) or Derf (erf(alpha x + s)), times gamma plus beta, per channel;
    alpha (and s) are learnable scalars (0-dimensional parameters)."""

    def __init__(self, channels, fn, alpha=0.5, shift=None):
        super().__init__()
        self.fn = fn
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.shift = None if shift is None else nn.Parameter(torch.tensor(float(shift)))
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        z = self.alpha * x if self.shift is None else self.alpha * x + self.shift
        return self.fn(z) * self.gamma.view(shape) + self.beta.view(shape)


def factory(name: str, alpha: float = 0.5):
    """channels -> a fresh module of layer `name` (see the module docstring)."""
    if name == "layernorm":
        return lambda c: ChannelLayerNorm(c)
    if name == "rmsnorm":
        return lambda c: ChannelLayerNorm(c, rms=True)
    if name == "dyt":
        return lambda c: Squash(c, torch.tanh, alpha)
    if name == "derf":
        return lambda c: Squash(c, torch.erf, alpha, 0.0)
    if name == "identity":
        return lambda c: nn.Identity()
    from primitives import compile_layer, parse
    from primitives.library import REFERENCE_LAYERS
    graph = parse(LN_FORMULA if name == "ln-formula" else REFERENCE_LAYERS.get(name, name))
    return lambda c: compile_layer(graph, c)


def train_one(arch, layer, steps, seed, overrides, data, alpha=0.5, split="val") -> dict:
    from evaluators.trainer import build_and_train, proxy_config
    config = proxy_config(arch, steps, seed=seed, threads=1, compile=False, **overrides)
    start = time.perf_counter()
    r = build_and_train(arch, factory(layer, alpha), data.for_arch(arch), config, "cpu", split=split)
    return {"accuracy": r.accuracy, "reason": r.reason, "final_loss": r.final_loss,
            "seconds": time.perf_counter() - start, "losses": r.losses[::10]}


def kendall(a, b) -> float:
    from scipy.stats import kendalltau
    tau = kendalltau(a, b).statistic
    return float("nan") if tau is None else float(tau)


def separated_pairs(layers, means, errors, longs):
    """([(better, worse)] whose default-budget means differ by more than two standard errors of
    the difference, [those the long run orders the same way])."""
    separated, agree = [], []
    for i in range(len(layers)):
        for j in range(len(layers)):
            gap = means[i] - means[j]
            if gap > 0 and gap > 2 * (errors[i] ** 2 + errors[j] ** 2) ** 0.5:
                separated.append((layers[i], layers[j]))
                if longs[i] > longs[j]:
                    agree.append((layers[i], layers[j]))
    return separated, agree


def _parse_sets(items) -> dict:
    out = {}
    for item in items or ():
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def main(argv=None):
    from evaluators.evaluate import ProxyData
    from evaluators.proxies import HELD_OUT, PROXIES, TRANSFORMER_PROXIES

    transformers = [n for n in (*TRANSFORMER_PROXIES, *HELD_OUT) if PROXIES[n].family == "transformer"]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxies", nargs="+", default=transformers, choices=list(PROXIES))
    ap.add_argument("--layers", nargs="+", default=list(LAYERS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300, help="the default budget (default 300)")
    ap.add_argument("--long-factor", type=float, default=8, help="the long run's steps, times --steps (0: none)")
    ap.add_argument("--long-seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="TrainConfig fields over each proxy's recipe")
    ap.add_argument("--alpha", type=float, default=0.5, help="DyT/Derf's alpha at start (default 0.5)")
    ap.add_argument("--dataset", default="fashion-mnist", help="the image proxies' data")
    ap.add_argument("--cache", default=os.path.join("results", "transformer-proxies.json"))
    ap.add_argument("--split", default="val")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    overrides = _parse_sets(args.set)
    cache = {}
    if os.path.exists(args.cache):
        with open(args.cache) as f:
            cache = json.load(f)
    data = ProxyData(args.dataset)
    long_steps = int(round(args.steps * args.long_factor))
    tag = json.dumps(overrides, sort_keys=True) + (f" alpha={args.alpha}" if args.alpha != 0.5 else "")

    def get(arch, layer, steps, seed):
        from evaluators.trainer import proxy_config
        recipe = proxy_config(arch, **overrides)        # a changed recipe or size is a new training
        size = (PROXIES[arch].width, PROXIES[arch].depth)
        key = (f"{arch}|{layer}|{steps}|{seed}|{args.split}|{args.dataset}|{tag}|{size}|{recipe.optimizer}|"
               f"{recipe.lr:g}|{recipe.batch_size}|{recipe.weight_decay:g}|{recipe.warmup_fraction:g}|"
               f"{tuple(recipe.betas)}|{recipe.label_smoothing:g}|{recipe.grad_clip}")
        if key not in cache:
            cache[key] = train_one(arch, layer, steps, seed, overrides, data, args.alpha, args.split)
            os.makedirs(os.path.dirname(os.path.abspath(args.cache)), exist_ok=True)
            tmp = args.cache + ".tmp"
            with open(tmp, "w") as f:
                json.dump(cache, f)
            os.replace(tmp, args.cache)
            r = cache[key]
            acc = "failed: " + str(r["reason"]) if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}"
            print(f"  [{arch} {layer} {steps} steps seed {seed}: {acc}, {r['seconds']:.0f} s]", file=sys.stderr,
                  flush=True)
        return cache[key]

    print(f"torch {torch.__version__}, one thread; {args.split} accuracy (%); default budget {args.steps} steps "
          f"(seeds {' '.join(map(str, args.seeds))})"
          + (f", long run {long_steps} steps (seed {' '.join(map(str, args.long_seeds))})" if long_steps else "")
          + (f"; overrides {tag}" if tag != "{}" else ""))
    for arch in args.proxies:
        from evaluators.trainer import proxy_config
        config = proxy_config(arch, args.steps, **overrides)
        proxy = PROXIES[arch]
        print(f"\n{arch} (width {proxy.width}, depth {proxy.depth}, {config.optimizer} lr {config.lr:g} "
              f"batch {config.batch_size} wd {config.weight_decay:g} warm-up {config.warmup_fraction:g}"
              f"{' held out' if proxy.held_out else ''})")
        print(f"  {'layer':<12}{'default':>16}{'long':>9}  seconds (one default training)")
        means, longs, errors = [], [], []
        for layer in args.layers:
            runs = [get(arch, layer, args.steps, s) for s in args.seeds]
            accs = [100 * r["accuracy"] if r["accuracy"] is not None else float("nan") for r in runs]
            mean = sum(accs) / len(accs)
            std = (sum((a - mean) ** 2 for a in accs) / max(1, len(accs) - 1)) ** 0.5
            means.append(mean)
            errors.append(std / len(accs) ** 0.5)
            long_acc = float("nan")
            if long_steps:
                lr_ = [get(arch, layer, long_steps, s)["accuracy"] for s in args.long_seeds]
                lr_ = [100 * a if a is not None else float("nan") for a in lr_]
                long_acc = sum(lr_) / len(lr_)
            longs.append(long_acc)
            failed = sum(r["accuracy"] is None for r in runs)
            print(f"  {layer:<12}{mean:>9.2f} ± {std:<4.2f}{long_acc:>9.2f}  {runs[0]['seconds']:.0f}"
                  + (f"  ({failed} failed)" if failed else ""))
        spread = max(means) - min(means)
        if long_steps:
            print(f"  spread of the means {spread:.2f} points; Kendall tau default vs long: {kendall(means, longs):.2f}")
            separated, agree = separated_pairs(args.layers, means, errors, longs)
            print(f"  pairs the default budget separates (gap > 2 standard errors): {len(separated)}, "
                  f"ordered as the long run orders them: {len(agree)}"
                  + (f"; inverted: {', '.join(f'{a} > {b}' for a, b in separated if (a, b) not in agree)}"
                     if len(agree) < len(separated) else ""))
        else:
            print(f"  spread of the means {spread:.2f} points")


if __name__ == "__main__":
    main()
