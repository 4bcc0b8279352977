"""`evonorm check FORMULA`: parse a formula and describe the layer it compiles to."""
from __future__ import annotations

from search.errors import UsageError


def add_arguments(parser):
    parser.add_argument("formula", help='a layer formula in x, e.g. "x * sigmoid(v1 * x) / group_std(x) * gamma + beta"')
    parser.add_argument("--channels", type=int, default=64, help="channels of the random test input")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    import torch

    from primitives import FormulaError, compile_layer, parse

    try:
        graph = parse(args.formula)
    except FormulaError as err:
        raise UsageError(f"bad formula: {err}") from None
    if args.channels < 1:
        raise UsageError("--channels must be positive")
    torch.manual_seed(args.seed)
    layer = compile_layer(graph, args.channels)
    x = torch.randn(8, args.channels, 16, 16)
    with torch.no_grad():
        train_out = layer.train()(x)
        eval_out = layer.eval()(x)
    degree = "not a polynomial" if graph.poly_degree is None else graph.poly_degree
    inference = "not a polynomial" if graph.inference_degree is None else graph.inference_degree
    print(f"formula          {graph}")
    print(f"hash             {graph.hash}")
    print(f"nodes            {len(graph)}")
    print(f"params/channel   {graph.params_per_channel}")
    print(f"batch stats      {'yes' if graph.uses_batch_stats else 'no'}")
    print(f"poly degree      {degree}")
    print(f"inference degree  {inference}")
    print(f"he depth         {_he_depth(graph)}")
    for mode, out in (("train", train_out), ("eval", eval_out)):
        finite = torch.isfinite(out).all().item()
        print(f"output ({mode:5s})   shape {tuple(out.shape)}  mean {out.mean().item():.4g}  "
              f"std {out.std().item():.4g}  min {out.min().item():.4g}  max {out.max().item():.4g}"
              f"{'' if finite else '  NON-FINITE'}")
    return 0


def _he_depth(graph) -> str:
    """The CKKS multiplicative depth of the eval-mode layer, or why it has none."""
    if graph.he_depth is not None:
        return f"{graph.he_depth} (CKKS levels to evaluate its per-channel table; docs/he.md)"
    if graph.inference_degree is None:
        return "none: not a polynomial at inference"
    return "none: mixes elements through an instance, group, layer or channel moment (not per channel)"
