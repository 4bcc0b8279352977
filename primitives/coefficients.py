"""Per-channel coefficient tables: what an encrypted-inference deployment evaluates.

A layer whose eval-mode output is, per channel, a polynomial of the input
element alone (`Graph.pointwise_at_inference`: a polynomial at inference whose
only moments of x are batch moments, which are constants there) is, once
trained, a table of C x (d + 1) numbers: y[c] = sum_k table[c, k] * x[c] ** k
with d its inference degree. HE libraries take exactly that.

The table comes from the module itself, not from a second reading of the
formula: the eval-mode module is evaluated in float64 at Chebyshev points of
[-1, 1] (twice as many as coefficients) and the Vandermonde system is solved by
least squares. Every term the code generator writes is folded in (running
estimates, eps, fused kernels), and a residual check proves that the table
reproduces the module, so a generator change cannot silently skew it.
"""
from __future__ import annotations

import math

import torch

from .graph import Graph
from .errors import EvonormError

# The fit must reproduce the module at its sample points to this relative error;
# beyond it the table would not be the layer (e.g. a degree too high for float64).
RESIDUAL_TOLERANCE = 1e-9


class NotPolynomialError(EvonormError, ValueError):
    """The layer is not a per-channel polynomial of x at inference."""


def coefficient_table(graph: Graph, state_dict: dict | None = None, channels: int | None = None) -> torch.Tensor:
    """(C, d + 1) float64 coefficients, lowest power first, of the eval-mode layer with
    `state_dict` loaded (the initial parameters when None; then `channels` is needed)."""
    from .codegen import compile_layer

    if not graph.pointwise_at_inference:
        why = ("is not a polynomial in x at inference" if graph.inference_degree is None else
               "mixes elements through an instance, group, layer or channel moment")
        raise NotPolynomialError(f"{graph} {why}: it has no per-channel coefficient table")
    if channels is None:
        if not state_dict:
            raise ValueError("give a state_dict or the channel count")
        channels = _channels_of(state_dict)
    layer = compile_layer(graph, channels).double().eval()
    if state_dict is not None:
        layer.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state_dict.items()})
    n = graph.inference_degree + 1
    k = torch.arange(2 * n, dtype=torch.float64)
    points = torch.cos(math.pi * (k + 0.5) / (2 * n))                     # Chebyshev nodes
    with torch.no_grad():
        values = layer(points.view(-1, 1, 1, 1).expand(-1, channels, 1, 1)).reshape(2 * n, channels)
    if not torch.isfinite(values).all():
        raise NotPolynomialError("the layer's output is not finite with these parameters")
    vandermonde = points.unsqueeze(1) ** torch.arange(n, dtype=torch.float64)
    table = torch.linalg.lstsq(vandermonde, values).solution.T.contiguous()  # (C, n)
    residual = (vandermonde @ table.T - values).abs().max().item()
    scale = max(values.abs().max().item(), 1.0)
    if not math.isfinite(residual) or residual > RESIDUAL_TOLERANCE * scale:
        raise NotPolynomialError(f"the degree-{n - 1} table misses the module by {residual:.3g} "
                                 f"(relative {residual / scale:.3g}); not exportable as coefficients")
    # a coefficient that is zero (e.g. the identity's c0) comes back as rounding noise
    noise = 1e-12 * table.abs().amax(dim=1, keepdim=True)
    return torch.where(table.abs() <= noise, torch.zeros_like(table), table)


def _channels_of(state_dict: dict) -> int:
    """The channel count: the last dimension of any parameter or buffer (all are (C,) or (k, C),
    but a shared unit's (k, 1))."""
    sizes = {v.shape[-1] for v in state_dict.values() if torch.is_tensor(v) and v.dim() >= 1}
    if len(sizes) > 1:
        sizes.discard(1)
    if len(sizes) != 1:
        raise ValueError(f"cannot tell the channel count from the state_dict (sizes {sorted(sizes)})")
    return sizes.pop()


def evaluate_table(table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The polynomial of `table` applied per channel to x (N, C, ...), by Horner's rule."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    out = torch.zeros_like(x) + table[:, -1].view(shape)
    for i in range(table.shape[1] - 2, -1, -1):
        out = out * x + table[:, i].view(shape)
    return out


def table_csv(table: torch.Tensor) -> str:
    """CSV: a header `channel,c0,...,cd` and one row per channel, full float64 precision."""
    header = ",".join(["channel"] + [f"c{i}" for i in range(table.shape[1])])
    rows = [",".join([str(c)] + [repr(float(v)) for v in row]) for c, row in enumerate(table.tolist())]
    return "\n".join([header, *rows]) + "\n"
