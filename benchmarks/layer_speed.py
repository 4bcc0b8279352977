"""Forward+backward time of generated reference layers against hand-written eager twins.

Each twin is the same math written directly in torch, the way one would by
hand. Timings are interleaved (A, B, B, A, ...) and the best of each side is kept,
so a noisy shared machine affects both sides alike; the first line times the
twin against itself, the noise floor of the run. Prints the ratio generated /
hand-written (target: <= 1.10) and, for the torch.compile'd generated layer,
its ratio to the eager twin.

The tokens section times the Transformer references on token tensors: the generated
`layernorm`, `rmsnorm` and `dyt` on (N, D, L), as a layer at a Transformer position sees
them, against torch.nn.LayerNorm, torch.nn.RMSNorm and a hand-written DyT on (N, L, D),
the layout they take; and the generated layer wrapped in ChannelsLast (what replace_norm
puts in a model) on the same (N, L, D) tensor as torch's.

    python benchmarks/layer_speed.py [--shape 32 64 32 32] [--repeats 15] [--compile NAME ...]
                                     [--tokens 64 192 65] [--section all|cnn|tokens] [--threads N]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from primitives import compile_layer, parse
from primitives.library import REFERENCE_LAYERS
from primitives.replace import ChannelsLast

EPS = 1e-5


class Twin(nn.Module):
    """Per-channel gamma, beta, v1..v3 and BatchNorm-style running statistics."""

    def __init__(self, channels):
        super().__init__()
        for name, value in (("gamma", 1.0), ("beta", 0.0), ("v1", 1.0), ("v2", 1.0), ("v3", 1.0)):
            setattr(self, name, nn.Parameter(torch.full((channels,), value)))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def p(self, name):
        return getattr(self, name).view(1, -1, 1, 1)

    def batch_var_mean(self, x):
        if not self.training:
            return self.running_var.view(1, -1, 1, 1), self.running_mean.view(1, -1, 1, 1)
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0, keepdim=True)
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            self.running_mean.lerp_(mean.flatten(), 0.1)
            self.running_var.lerp_(var.flatten() * n / (n - 1), 0.1)
        return var, mean

    def bn(self, x):
        var, mean = self.batch_var_mean(x)
        return (x - mean) / torch.sqrt(var + EPS)


def group_std(x, groups=32, use_rms=False):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    s = g.square().mean(-1, keepdim=True) if use_rms else g.var(-1, correction=0, keepdim=True)
    return torch.sqrt(s + EPS).expand(n, groups, c // groups).reshape(n, c, 1, 1)


class BNReLU(Twin):
    def forward(self, x):
        return torch.relu(self.bn(x) * self.p("gamma") + self.p("beta"))


class GNReLU(Twin):
    def forward(self, x):
        n, c = x.shape[:2]
        g = x.reshape(n, 32, -1)
        var, mean = torch.var_mean(g, dim=-1, correction=0, keepdim=True)
        y = ((g - mean) / torch.sqrt(var + EPS)).reshape(x.shape)
        return torch.relu(y * self.p("gamma") + self.p("beta"))


class LNGELU(Twin):
    def forward(self, x):
        var, mean = torch.var_mean(x, dim=(1, 2, 3), correction=0, keepdim=True)
        y = (x - mean) / torch.sqrt(var + EPS) * self.p("gamma") + self.p("beta")
        return 0.5 * y * (1 + torch.erf(y * 0.7071067811865476))


class EvoB0(Twin):
    def forward(self, x):
        var, _ = self.batch_var_mean(x)
        instance = torch.sqrt(x.var(dim=(2, 3), correction=0, keepdim=True) + EPS)
        return x / torch.maximum(torch.sqrt(var + EPS), self.p("v1") * x + instance) * self.p("gamma") + self.p("beta")


class EvoB1(Twin):
    def forward(self, x):
        var, _ = self.batch_var_mean(x)
        rms = torch.sqrt(x.square().mean(dim=(2, 3), keepdim=True) + EPS)
        return x / torch.maximum(torch.sqrt(var + EPS), (x + 1) * rms) * self.p("gamma") + self.p("beta")


class EvoS0(Twin):
    def forward(self, x):
        return x * torch.sigmoid(self.p("v1") * x) / group_std(x) * self.p("gamma") + self.p("beta")


class EvoS1(Twin):
    def forward(self, x):
        return x * torch.sigmoid(x) / group_std(x) * self.p("gamma") + self.p("beta")


class EvoS2(Twin):
    def forward(self, x):
        return x * torch.sigmoid(x) / group_std(x, use_rms=True) * self.p("gamma") + self.p("beta")


class BNSwish(Twin):
    def forward(self, x):
        y = self.bn(x) * self.p("gamma") + self.p("beta")
        return y * torch.sigmoid(self.p("v1") * y)


class PolyNorm(Twin):
    def forward(self, x):
        def norm(t):
            return t / torch.sqrt(t.square().mean(1, keepdim=True) + EPS)
        return self.p("v1") * norm(x) + self.p("v2") * norm(x ** 2) + self.p("v3") * norm(x ** 3) + self.p("beta")


class BNPoly(Twin):
    """e + 0.4 v1 N(e**2): the square batch-normalised with its own running statistics."""

    def __init__(self, channels):
        super().__init__(channels)
        self.square = Twin(channels)

    def forward(self, x):
        y = self.bn(x)
        return (y + 0.4 * self.p("v1") * self.square.bn(y.square())) * self.p("gamma") + self.p("beta")


class BNRational(Twin):
    def __init__(self, channels):
        super().__init__(channels)
        self.a = nn.Parameter(torch.zeros(6, channels))
        self.b = nn.Parameter(torch.zeros(4, channels))

    def forward(self, x):
        y = self.bn(x)
        a, b = self.a.view(6, 1, -1, 1, 1), self.b.view(4, 1, -1, 1, 1).abs()
        numerator = a[0] + y * (a[1] + y * (a[2] + y * (a[3] + y * (a[4] + y * a[5]))))
        z = y.abs()
        return numerator / (1 + z * (b[0] + z * (b[1] + z * (b[2] + z * b[3])))) * self.p("gamma") + self.p("beta")


TWINS = {"bn-relu": BNReLU, "gn-relu": GNReLU, "ln-gelu": LNGELU, "evonorm-b0": EvoB0,
         "evonorm-b1": EvoB1, "evonorm-s0": EvoS0, "evonorm-s1": EvoS1, "evonorm-s2": EvoS2,
         "bn-swish": BNSwish, "polynorm": PolyNorm, "bn-poly": BNPoly, "bn-rational": BNRational}


class DyT(nn.Module):
    """weight * tanh(alpha * x) + bias over the last dimension (Zhu et al. 2025)."""

    def __init__(self, dim):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.weight * torch.tanh(self.alpha * x) + self.bias


# generated layer -> torch's module (or the hand-written one) over the last dimension
TOKEN_TWINS = {"layernorm": lambda d: nn.LayerNorm(d), "rmsnorm": lambda d: nn.RMSNorm(d, eps=EPS),
               "dyt": DyT}


def step_time(layer, x, grad) -> float:
    start = time.perf_counter()
    x.grad = None
    layer(x).backward(grad)
    return time.perf_counter() - start


def interleaved(a, b, x, grad, repeats, xb=None, grad_b=None) -> tuple[float, float]:
    """Best times of a(x) and b(xb) (xb: x unless given), forward and backward."""
    xb, grad_b = (x, grad) if xb is None else (xb, grad_b)
    inputs = {id(a): (x, grad), id(b): (xb, grad_b)}
    for _ in range(2):  # warm-up
        step_time(a, x, grad), step_time(b, xb, grad_b)
    ta, tb = [], []
    for i in range(repeats):  # A B B A ... so neither side always runs right after the other
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t1, t2 = step_time(first, *inputs[id(first)]), step_time(second, *inputs[id(second)])
        ta.append(t1 if first is a else t2)
        tb.append(t2 if first is a else t1)
    return min(ta), min(tb)  # the best run: the least disturbed by other work (as timeit advises)


def tokens_section(shape, repeats) -> float:
    """The Transformer references on tokens; returns the worst generated/torch ratio."""
    n, d, length = shape
    torch.manual_seed(0)
    x_ndl = torch.randn(n, d, length, requires_grad=True)
    x_nld = torch.randn(n, length, d, requires_grad=True)
    g_ndl, g_nld = torch.randn(n, d, length), torch.randn(n, length, d)
    print(f"\ntokens: generated on (N, D, L) = {(n, d, length)} against torch on (N, L, D), forward+backward")
    print(f"{'layer':<13}{'generated ms':>13}{'torch ms':>9}{'ratio':>7}   {'wrapped ms':>10}{'ratio':>7}")
    t_a, t_b = interleaved(nn.LayerNorm(d), nn.LayerNorm(d), x_nld, g_nld, repeats)
    print(f"{'(noise: nn.LayerNorm vs itself)':<34}{t_a / t_b:>7.2f}")
    worst = 0.0
    for name, twin_cls in TOKEN_TWINS.items():
        generated, twin = compile_layer(parse(REFERENCE_LAYERS[name]), d), twin_cls(d)
        t_gen, t_twin = interleaved(generated, twin, x_ndl, g_ndl, repeats, x_nld, g_nld)
        t_wrap, t_twin2 = interleaved(ChannelsLast(generated), twin, x_nld, g_nld, repeats)
        worst = max(worst, t_gen / t_twin)
        print(f"{name:<13}{t_gen * 1e3:>13.2f}{t_twin * 1e3:>9.2f}{t_gen / t_twin:>7.2f}"
              f"   {t_wrap * 1e3:>10.2f}{t_wrap / t_twin2:>7.2f}", flush=True)
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=(32, 64, 32, 32))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--compile", nargs="*", default=["bn-relu", "evonorm-b0", "evonorm-s0"],
                        help="layers to also time under torch.compile (slow to compile)")
    parser.add_argument("--tokens", type=int, nargs=3, default=(64, 192, 65), metavar=("N", "D", "L"),
                        help="token tensor of the tokens section")
    parser.add_argument("--section", choices=("all", "cnn", "tokens"), default="all")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.section == "tokens":
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats} interleaved runs")
        print(f"worst generated/torch ratio: {tokens_section(args.tokens, args.repeats):.2f}")
        return
    torch.manual_seed(0)
    x = torch.randn(*args.shape, requires_grad=True)
    grad = torch.randn(*args.shape)
    channels = args.shape[1]
    print(f"forward+backward at {tuple(args.shape)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats} interleaved runs")
    print(f"{'layer':<13}{'generated ms':>13}{'twin ms':>9}{'ratio':>7}   {'compiled ms':>11}{'vs twin':>8}{'compile s':>10}")
    worst = 0.0
    t_a, t_b = interleaved(BNReLU(channels), BNReLU(channels), x, grad, args.repeats)
    print(f"{'(noise: bn-relu twin vs itself)':<34}{t_a / t_b:>7.2f}")
    for name, twin_cls in TWINS.items():
        generated = compile_layer(parse(REFERENCE_LAYERS[name]), channels)
        twin = twin_cls(channels)
        t_gen, t_twin = interleaved(generated, twin, x, grad, args.repeats)
        worst = max(worst, t_gen / t_twin)
        line = f"{name:<13}{t_gen * 1e3:>13.2f}{t_twin * 1e3:>9.2f}{t_gen / t_twin:>7.2f}"
        if name in args.compile:
            start = time.perf_counter()
            compiled = torch.compile(compile_layer(parse(REFERENCE_LAYERS[name]), channels), fullgraph=True)
            step_time(compiled, x, grad)
            compile_s = time.perf_counter() - start
            t_comp, t_twin = interleaved(compiled, twin, x, grad, args.repeats)
            line += f"   {t_comp * 1e3:>11.2f}{t_comp / t_twin:>8.2f}{compile_s:>10.1f}"
        print(line, flush=True)
    print(f"worst generated/twin ratio: {worst:.2f} (target <= 1.10)")
    if args.section == "all":
        print(f"worst generated/torch ratio on tokens: {tokens_section(args.tokens, args.repeats):.2f}")


if __name__ == "__main__":
    main()
