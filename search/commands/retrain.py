"""`evonorm retrain DIR --top K`: the fair, longer comparison of front layers and baselines.

For each layer (the K best of the front by mean accuracy, skipping members whose
accuracies equal a better one's to the last digit, then the baselines
BN-ReLU, GN-ReLU, EvoNorm-B0, EvoNorm-S0) a small Optuna TPE study tunes the
learning rate on the validation split (mean accuracy over the proxies); the
layer is then trained with that rate for several seeds on every proxy and
scored on the held-out test set. Rows land in DIR/retrain.parquet (written
atomically); the table of mean and spread is printed. With `--workers N` the
layers are spread over N spawned processes (one torch thread each); rows still
come back in layer order.
"""
from __future__ import annotations

import math
import sys
import time

from search.cli import UsageError
from search.files import check_writable_file, write_atomic


def add_arguments(parser):
    parser.add_argument("run_dir", help="a run directory")
    parser.add_argument("--top", type=int, default=3, help="front layers to retrain (default 3)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per layer and proxy (default 3)")
    parser.add_argument("--trials", type=int, default=5, help="Optuna trials per layer (default 5)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: twice the run's)")
    parser.add_argument("--lr-range", type=float, nargs=2, default=(0.02, 0.5), metavar=("LOW", "HIGH"))
    parser.add_argument("--archs", nargs="+", default=None, help="proxies (default: the run's)")
    parser.add_argument("--dataset", default=None, help="dataset (default: the run's)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--no-baselines", action="store_true", help="retrain only the front layers")
    parser.add_argument("--device", default="auto")
    parser.add_argument("-o", "--output", default=None,
                        help="parquet file of the trainings (default: DIR/retrain.parquet)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes training layers side by side, one torch thread each (default 1: this "
                             "process, torch's threads)")


def run(args) -> int:
    from search.rundir import RunDirError, load_run

    if args.workers < 1:
        raise UsageError("--workers must be positive")
    for name in ("top", "seeds", "trials"):
        if getattr(args, name) < (0 if name == "top" else 1):
            raise UsageError(f"--{name} must be {'non-negative' if name == 'top' else 'positive'}")
    low, high = args.lr_range
    if not 0 < low < high:
        raise UsageError("--lr-range needs 0 < LOW < HIGH")
    try:
        run_ = load_run(args.run_dir)
    except RunDirError as err:
        raise UsageError(str(err)) from None
    config = run_.info.get("config", {}) if isinstance(run_.info.get("config"), dict) else {}
    archs = args.archs or run_.archs
    dataset_name = args.dataset or config.get("dataset", "fashion-mnist")
    steps = args.steps or 2 * int(config.get("steps") or 300)
    if steps < 1:
        raise UsageError("--steps must be positive")
    output = args.output or run_.dir / "retrain.parquet"
    check_writable_file(output)  # before hours of training, not after
    layers = _layers(run_, args.top, not args.no_baselines)
    if not layers:
        raise UsageError(f"{args.run_dir}: nothing to retrain (empty front and --no-baselines)")

    from evaluators.datasets import DatasetError, load_dataset
    from evaluators.evaluate import resolve_device
    from evaluators.proxies import PROXY_NAMES

    unknown = [a for a in archs if a not in PROXY_NAMES]
    if unknown:
        raise UsageError(f"unknown arch {unknown[0]!r} (expected one of: {', '.join(PROXY_NAMES)})")
    device = resolve_device(args.device)
    try:
        dataset = load_dataset(dataset_name, device, args.data_root or config.get("data_root"))
    except DatasetError as err:
        raise UsageError(str(err)) from None

    rows = _retrain(layers, archs, dataset, device, steps, args, seed=int(run_.info.get("seed") or 0))
    _write(output, rows)
    print(_table(rows, archs))
    print(f"\nwrote {output} ({len(rows)} trainings)", file=sys.stderr)
    return 0


def _layers(run_, top: int, baselines: bool) -> list[dict]:
    """[{name, formula, candidate_id, source}]: the top front layers, then the baselines."""
    from primitives import Graph, parse
    from primitives.library import REFERENCE_LAYERS, baselines as baselines_of

    layers, seen = [], set()
    front = run_.front()
    if len(front) and top:
        front = front.assign(_mean=front[run_.acc_columns].mean(axis=1)).sort_values("_mean", ascending=False)
        scores = set()
        for _, row in front.iterrows():
            if len(layers) == top:
                break
            # bit-identical accuracies on every proxy: the same training run under another
            # name (a renamed vector with the same initial value), not worth training twice
            score = tuple(row[c] for c in run_.acc_columns)
            if score in scores:
                continue
            scores.add(score)
            graph = Graph.from_json(row["graph"])
            seen.add(graph.hash)
            layers.append({"name": f"#{int(row['id'])}", "formula": str(graph),
                           "candidate_id": int(row["id"]), "source": "front"})
    if baselines:
        for name in baselines_of(run_.info.get("config", {}).get("mode", "batch")):
            graph = parse(REFERENCE_LAYERS[name])
            if graph.hash not in seen:
                layers.append({"name": name, "formula": str(graph), "candidate_id": None, "source": "baseline"})
    return layers


def _retrain(layers, archs, dataset, device, steps, args, seed) -> list[dict]:
    """All layers' rows in layer order: in this process, or over `--workers` processes."""
    from tqdm import tqdm

    total = len(layers) * len(archs) * (args.trials + args.seeds)
    bar = tqdm(total=total, desc="retrain", unit="training", file=sys.stderr, dynamic_ncols=True)
    job = {"archs": archs, "steps": steps, "trials": args.trials, "seeds": args.seeds,
           "lr_range": tuple(args.lr_range), "seed": seed, "device": str(device)}
    try:
        if args.workers == 1:
            def done(text):
                bar.set_postfix_str(text)
                bar.update()
            return [row for layer in layers for row in retrain_layer(layer, dataset, job, done)]
        return _in_processes(layers, dataset, job, args.workers, bar)
    finally:
        bar.close()


def retrain_layer(layer: dict, dataset, job: dict, done) -> list[dict]:
    """One layer: an Optuna TPE study of the learning rate on the validation split
    (mean over the proxies), then `seeds` test-set trainings per proxy at the best
    rate. `done(text)` is called after every training."""
    import optuna

    from evaluators.trainer import TrainConfig, build_and_train
    from primitives import compile_layer, parse

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    graph = parse(layer["formula"])

    def factory(channels):
        return compile_layer(graph, channels)

    def train(arch, lr, run_seed, split):
        result = build_and_train(arch, factory, dataset, TrainConfig(steps=job["steps"], lr=lr, seed=run_seed),
                                 job["device"], split=split)
        done(f"{layer['name']} {arch} lr={lr:.3g} {split}")
        return result

    def objective(trial):
        lr = trial.suggest_float("lr", *job["lr_range"], log=True)
        accs = [train(arch, lr, job["seed"], "val").accuracy for arch in job["archs"]]
        return float(sum(a or 0.0 for a in accs) / len(accs))  # a failed training scores 0

    sampler = optuna.samplers.TPESampler(seed=job["seed"], n_startup_trials=min(3, job["trials"]))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=job["trials"])
    lr = study.best_params["lr"]
    rows = []
    for s in range(job["seeds"]):
        for arch in job["archs"]:
            start = time.perf_counter()
            result = train(arch, lr, job["seed"] + 1 + s, "test")
            rows.append({"layer": layer["name"], "source": layer["source"],
                         "candidate_id": layer["candidate_id"], "formula": layer["formula"],
                         "arch": arch, "seed": job["seed"] + 1 + s, "lr": lr, "steps": job["steps"],
                         "val_acc_tuned": study.best_value, "test_acc": result.accuracy,
                         "reason": result.reason, "seconds": time.perf_counter() - start})
    return rows


# -- worker processes: one torch thread each, the dataset loaded once per process

_WORKER = {}


def _worker_init(dataset, device, messages):
    import torch
    torch.set_num_threads(1)
    _WORKER.update(dataset=dataset.to(device), messages=messages)


def _worker_layer(layer, job):
    return retrain_layer(layer, _WORKER["dataset"], job, _WORKER["messages"].put)


def _in_processes(layers, dataset, job, workers, bar) -> list[dict]:
    """Layers spread over `workers` spawned processes; their per-training messages
    drive the progress bar. Rows come back in layer order."""
    import multiprocessing
    import queue
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        messages = manager.Queue()
        with ProcessPoolExecutor(min(workers, len(layers)), mp_context=ctx, initializer=_worker_init,
                                 initargs=(dataset.to("cpu"), job["device"], messages)) as pool:
            futures = [pool.submit(_worker_layer, layer, job) for layer in layers]
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                while True:
                    try:
                        text = messages.get_nowait()
                    except queue.Empty:
                        break
                    bar.set_postfix_str(text)
                    bar.update()
            return [row for future in futures for row in future.result()]


def _write(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("layer", pa.string()), ("source", pa.string()), ("candidate_id", pa.int64()),
                        ("formula", pa.string()), ("arch", pa.string()), ("seed", pa.int64()),
                        ("lr", pa.float64()), ("steps", pa.int64()), ("val_acc_tuned", pa.float64()),
                        ("test_acc", pa.float64()), ("reason", pa.string()), ("seconds", pa.float64())])
    table = pa.Table.from_pylist(rows, schema=schema)
    write_atomic(path, lambda f: pq.write_table(table, f))


def _table(rows, archs) -> str:
    """One line per layer: tuned lr, test accuracy mean ± std per proxy, and over all."""
    import statistics

    def cell(values):
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return "failed"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"

    names = list(dict.fromkeys(r["layer"] for r in rows))
    header = ["layer", "lr"] + [f"test {a} %" for a in archs] + ["mean %", "formula"]
    lines = []
    for name in names:
        mine = [r for r in rows if r["layer"] == name]
        per_arch = [cell([r["test_acc"] for r in mine if r["arch"] == a]) for a in archs]
        lines.append([name, f"{mine[0]['lr']:.3g}", *per_arch, cell([r["test_acc"] for r in mine]),
                      mine[0]["formula"]])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = lambda cols: "  ".join(str(c).ljust(w) for c, w in zip(cols, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])
