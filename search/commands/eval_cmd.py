"""`evonorm eval FORMULA`: train one layer next to the baselines and print how it scores.

The layer and BN-ReLU, GN-ReLU, EvoNorm-B0 and EvoNorm-S0 (on Transformer proxies:
LayerNorm, RMSNorm, DyT, Derf and no normalisation, those the library holds) train on every
chosen proxy with the same seed and budget, each proxy with its own recipe. The table gives validation
accuracy per proxy, the training time per layer, and the verdict the search
would give: protocols 1-4 (validity, duplicate, equivalence, stability), then
protocol 5 judged on the first proxy's training. Rejected layers are still
trained (so you can see why), except invalid ones, which cannot run.
"""
from __future__ import annotations

import sys

from primitives.util import one_line
from search.config import add_cache_flag, add_training_flags, check_training
from search.errors import UsageError


def add_arguments(parser):
    parser.add_argument("formula", help='a layer formula in x, e.g. "x * sigmoid(v1 * x) / group_std(x) * gamma + beta"')
    parser.add_argument("--arch", action="append", metavar="NAME",
                        help="proxy architecture (repeatable; default: resnet, mobilenetv2, efficientnet; "
                             "vit and charlm are the transformer proxies; plainnet and postvit the held-out ones)")
    parser.add_argument("--dataset", default="fashion-mnist",
                        help="fashion-mnist, cifar10 or synthetic: the image proxies' data (charlm reads Python's "
                             "help texts)")
    add_training_flags(parser, ("steps", "batch_size", "lr"))
    parser.add_argument("--data-root", default=None, help="directory holding the dataset files")
    parser.add_argument("--seed", type=int, default=0)
    add_training_flags(parser, ("device",))
    parser.add_argument("--no-baselines", action="store_true", help="train only the given layer")
    add_cache_flag(parser)


def run(args) -> int:
    from evaluators.evaluate import Evaluator

    graph = _parse_formula(args)
    config, device = _config(args)
    data = _load(config, device)
    layers = _layers(graph, args.no_baselines, config.archs)
    rows = _train_all(layers, config, Evaluator(config, dataset=data))
    _print_table(rows, config.archs, config, data)
    return 0


def _parse_formula(args):
    from primitives import FormulaError, parse

    try:
        graph = parse(args.formula)
    except FormulaError as err:
        raise UsageError(f"bad formula: {err}") from None
    for name in ("steps", "batch_size", "lr"):
        check_training(name, getattr(args, name), "--" + name.replace("_", "-"))
    return graph


def _config(args):
    """The evaluation settings from the flags (what is left out follows the evaluators'
    rule: steps and lr follow the batch size), and the device they resolve to."""
    from evaluators.datasets import DATASET_NAMES
    from evaluators.evaluate import EvalConfig, resolve_device
    from evaluators.proxies import PROXY_NAMES, SEARCH_PROXIES

    archs = tuple(dict.fromkeys(args.arch)) if args.arch else SEARCH_PROXIES
    for arch in archs:
        if arch not in PROXY_NAMES:
            raise UsageError(f"unknown arch {arch!r} (expected one of: {', '.join(PROXY_NAMES)})")
    if args.dataset not in DATASET_NAMES:
        raise UsageError(f"unknown dataset {args.dataset!r} (expected one of: {', '.join(DATASET_NAMES)})")
    try:
        config = EvalConfig(dataset=args.dataset, data_root=args.data_root, archs=archs, seed=args.seed,
                            device=args.device, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            cache=getattr(args, "cache", True))
        # protocol 5 is judged on the first proxy's full training: no extra short run
        config.quality_steps = config.steps
        return config, resolve_device(config.device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err)) from None


def _load(config, device):
    """The datasets the chosen proxies train on (the images, the text or both), loaded now."""
    from evaluators.datasets import DatasetError
    from evaluators.evaluate import ProxyData

    data = ProxyData(config.dataset, config.data_root, device)
    try:
        for arch in config.archs:
            data.for_arch(arch)
    except DatasetError as err:
        raise UsageError(str(err)) from None
    except RuntimeError as err:  # e.g. a device that does not exist
        raise UsageError(f"cannot load {config.dataset} on {device}: {one_line(err, kind=False)}") from None
    return data


def _layers(graph, no_baselines: bool, archs=()) -> list:
    """(name, graph) of the candidate and, unless asked not to, the baselines: the CNN ones
    for CNN proxies (a layer fit for encrypted inference is also compared with the square
    activation), the Transformer references for Transformer proxies."""
    from evaluators.proxies import references_for
    from primitives import parse

    layers = [("candidate", graph)]
    if not no_baselines:
        mode = "batch" if graph.inference_degree is None else "polynomial"
        layers += [(name, parse(formula)) for name, formula in references_for(archs, mode).items()]
    return layers


def _train_all(layers, config, evaluator) -> list:
    """Screen and train every layer on every proxy under one progress bar; one row
    (name, graph, screened, trained) per layer. Invalid layers are not trained."""
    from tqdm import tqdm

    from evaluators.evaluate import Screen

    archs = config.archs
    rows = []
    bar = tqdm(total=len(layers) * len(archs) * config.steps, file=sys.stderr, unit="step",
               dynamic_ncols=True, desc="eval")
    last = [0]

    def on_step(step, steps):
        if step == 1:  # a new training
            last[0] = 0
        bar.update(step - last[0])
        last[0] = step
    try:
        for name, layer in layers:
            screened = Screen(config).check(layer, 0)
            bar.set_postfix_str(name)
            done = bar.n + len(archs) * config.steps
            if screened["status"] == "invalid":
                trained = {f"acc_{a}": None for a in archs} | {"status": None, "reason": None, "seconds": 0.0}
            else:
                trained = evaluator.train(layer.to_json(), stop_on_low_quality=False,
                                          progress=on_step)
            bar.update(done - bar.n)  # a failed run skips the rest of its proxies
            rows.append((name, layer, screened, trained))
    finally:
        bar.close()
    return rows


def _verdict(screened: dict, trained: dict) -> tuple[str, str | None]:
    if screened["status"]:
        return screened["status"], screened["reason"]
    if trained["status"] and trained["status"] != "ok":
        return trained["status"], trained["reason"]
    return "ok", None


def _print_table(rows, archs, config, data) -> None:
    name_width = max(len("layer"), *(len(name) for name, *_ in rows))
    header = f"{'layer':<{name_width}}  " + "".join(f"{a:>14}" for a in archs) + f"{'seconds':>10}  verdict"
    proxies = []
    for arch in archs:   # each proxy trains with its recipe (the flags override them all)
        train = config.train_config(arch=arch)
        ds = data.for_arch(arch)
        what = (f"{ds.name} ({ds.split('val')[1].numel()} characters)" if hasattr(ds, "vocab")
                else f"{config.dataset} ({len(ds.val_y)} images)")
        proxies.append(f"{arch} on {what}: {config.steps} steps of batch {train.batch_size}, "
                       f"{train.optimizer} lr {train.lr:g}")
    print(f"validation accuracy, seed {config.seed}; " + "; ".join(proxies))
    print(header)
    print("-" * len(header))
    notes = []
    for name, layer, screened, trained in rows:
        accs = "".join(f"{_pct(trained.get(f'acc_{a}')):>14}" for a in archs)
        status, reason = _verdict(screened, trained)
        if reason:
            notes.append(f"  {name}: {reason}")
        print(f"{name:<{name_width}}  {accs}{trained.get('seconds', 0.0):>10.1f}  {status}")
    print()
    for name, layer, *_ in rows:
        print(f"  {name:<{name_width}}  {layer}")
    if notes:
        print()
        print("\n".join(notes))


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
