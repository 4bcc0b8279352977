"""`evonorm retrain DIR --top K`: the fair, longer comparison of front layers and baselines.

For each layer (the K best of the front by mean accuracy, skipping members whose
accuracies equal a better one's to the last digit, then the baselines
BN-ReLU, GN-ReLU, EvoNorm-B0, EvoNorm-S0) an Optuna TPE study tunes the
learning rate on the validation split (mean accuracy over the searched
proxies). It starts at the search's own rate (enqueued as the first trial),
then samples at random for TPE's start-up trials (STARTUP_TRIALS) and only
after that models the objective: the default of 12 trials leaves the start-up
with 7 model-guided trials; fewer than the start-up earn a warning. The layer
is then trained with the best rate for several seeds on every proxy and scored
on the test set.

The held-out proxies of the run's families (`plainnet` for CNN proxies, `postvit` for
Transformer ones; never searched on by default) are trained
too, with the rate tuned on the searched proxies (the held-out architecture
plays no part in any choice), and the table reports each layer's transfer gap:
its mean test accuracy on the held-out proxies minus its mean over the
searched ones. Proxies differ in difficulty, so a gap means little alone: a
layer transfers as well as BN-ReLU when its gap is no worse than BN-ReLU's.

`--batch-size B` trains at batch B; unless `--lr-range` is given the range
scales linearly with B (from 0.02-0.5 at batch 128), as does the warm start.
The tuned rate is SGD's, the CNN proxies'; a proxy whose recipe is AdamW (the Transformer
proxies) trains at its recipe's rate times the tuned rate over the warm start, so the study
moves every proxy's rate by one factor. Each proxy trains at its recipe's batch size unless
the run or `--batch-size` gave one.
Rows land in DIR/retrain.parquet (written atomically); the table of mean and
spread and the comparison with BN-ReLU are printed (`search.analysis.report`; `evonorm
show DIR` prints them again). Every training is journaled as it finishes (`search.store.journal`,
DIR/retrain.parquet.journal until the table is written), so a retrain stopped
part-way resumes when the same command is run again. With `--workers N` the layers are spread over N spawned
processes (one torch thread each); rows still come back in layer order.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

# TPE's random start-up: trials sampled at random before it models the objective
STARTUP_TRIALS = 5
DEFAULT_TRIALS = 12
LR_RANGE_AT_128 = (0.02, 0.5)

from search.errors import UsageError
from search.store.files import check_writable_file, write_atomic
from search.store.journal import Journal, key
from search.analysis.report import finite_accs, report


def add_arguments(parser):
    parser.add_argument("run_dir", help="a run directory")
    parser.add_argument("--top", type=int, default=3, help="front layers to retrain (default 3)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per layer and proxy (default 3)")
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                        help=f"Optuna trials per layer (default {DEFAULT_TRIALS}: the search's lr, "
                             f"{STARTUP_TRIALS - 1} random, then TPE)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: twice the run's, or twice the recommended steps "
                             "at --batch-size when it differs from the run's)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the run's)")
    parser.add_argument("--lr-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="learning rates tried (default 0.02 0.5 at batch 128, scaled linearly "
                             "with the batch size)")
    parser.add_argument("--archs", nargs="+", default=None, help="proxies (default: the run's)")
    parser.add_argument("--no-held-out", dest="held_out", action="store_false",
                        help="do not also train on the held-out proxies (default: plainnet too for CNN proxies, "
                             "postvit for transformer ones)")
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
    from search.store.reader import RunDirError, load_run

    if args.workers < 1:
        raise UsageError("--workers must be positive")
    for name in ("top", "seeds", "trials"):
        if getattr(args, name) < (0 if name == "top" else 1):
            raise UsageError(f"--{name} must be {'non-negative' if name == 'top' else 'positive'}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch-size must be positive")
    if args.lr_range is not None and not 0 < args.lr_range[0] < args.lr_range[1]:
        raise UsageError("--lr-range needs 0 < LOW < HIGH")
    try:
        run_ = load_run(args.run_dir)
    except RunDirError as err:
        raise UsageError(str(err)) from None
    config = run_.info.get("config", {}) if isinstance(run_.info.get("config"), dict) else {}
    dataset_name = args.dataset or config.get("dataset", "fashion-mnist")
    plan = _plan(args, run_)
    if plan["steps"] < 1:
        raise UsageError("--steps must be positive")
    archs = list(args.archs or run_.archs)
    output = Path(args.output or run_.retrain_path)
    check_writable_file(output)  # before hours of training, not after
    layers = _layers(run_, args.top, not args.no_baselines)
    if not layers:
        raise UsageError(f"{args.run_dir}: nothing to retrain (empty front and --no-baselines)")

    from evaluators.datasets import DatasetError
    from evaluators.evaluate import ProxyData, resolve_device
    from evaluators.proxies import PROXY_NAMES, held_out_for

    unknown = [a for a in archs if a not in PROXY_NAMES]
    if unknown:
        raise UsageError(f"unknown arch {unknown[0]!r} (expected one of: {', '.join(PROXY_NAMES)})")
    held_out = [a for a in held_out_for(archs) if a not in run_.archs] if args.held_out else []
    if args.trials <= STARTUP_TRIALS:
        print(f"evonorm: warning: {args.trials} trial(s) do not leave TPE's {STARTUP_TRIALS} random start-up "
              f"trials: TPE never left random sampling (use --trials {DEFAULT_TRIALS})", file=sys.stderr)
    device = resolve_device(args.device)
    dataset = ProxyData(dataset_name, args.data_root or config.get("data_root"), device)
    try:
        for arch in [*archs, *held_out]:   # what the proxies train on: the images, the text or both
            dataset.for_arch(arch)
    except DatasetError as err:
        raise UsageError(str(err)) from None

    journal = Journal(output.with_name(output.name + ".journal")).load()
    if journal.done:
        print(f"evonorm: resuming: {len(journal.done)} finished trainings in {journal.path}", file=sys.stderr)
    plan.update(dataset=dataset_name, journal=str(journal.path))
    try:
        rows = _retrain(layers, archs, held_out, dataset, device, plan, args, seed=int(run_.info.get("seed") or 0))
    except KeyboardInterrupt:
        print(f"evonorm: finished trainings are kept in {journal.path}: run the same command to resume",
              file=sys.stderr)
        raise
    _add_transfer_gaps(rows, held_out)
    _write(output, rows)
    journal.remove()
    print(report(rows, run_.mode))
    print(f"\nwrote {output} ({len(rows)} trainings)", file=sys.stderr)
    return 0


def _plan(args, run_) -> dict:
    """Steps, batch size, lr range and warm-start lr of the retraining, from the flags and
    the run's own evaluation settings (its lr was chosen for its batch size: it scales
    linearly to ours)."""
    from evaluators.evaluate import recommended_steps, scaled_lr

    config = run_.info.get("config") if isinstance(run_.info.get("config"), dict) else {}
    evals = run_.info.get("eval_config") if isinstance(run_.info.get("eval_config"), dict) else {}
    run_batch = int(evals.get("batch_size") or config.get("batch_size") or 128)
    run_steps = int(evals.get("steps") or config.get("steps") or recommended_steps(run_batch))
    run_lr = float(evals.get("lr") or config.get("lr") or scaled_lr(run_batch))
    batch = args.batch_size or run_batch
    steps = args.steps or 2 * (run_steps if batch == run_batch else recommended_steps(batch))
    low, high = args.lr_range or tuple(scaled_lr(batch, lr) for lr in LR_RANGE_AT_128)
    warm = min(high, max(low, run_lr * batch / run_batch))
    # a batch size the run or the flag gave applies to every proxy; else each its recipe's
    given = args.batch_size or evals.get("batch_size") or config.get("batch_size")
    return {"steps": steps, "batch_size": batch, "lr_range": (low, high), "warm_lr": warm,
            "batch_given": int(given) if given else None}


def _layers(run_, top: int, baselines: bool) -> list[dict]:
    """[{name, formula, candidate_id, source}]: the top front layers, then the baselines (the
    mode's for CNN proxies, the Transformer references for Transformer proxies)."""
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
        from evaluators.proxies import PROXIES, transformer_references
        families = {PROXIES[a].family for a in run_.archs if a in PROXIES} or {"cnn"}
        references = {}
        if "cnn" in families:
            references.update((name, REFERENCE_LAYERS[name]) for name in baselines_of(run_.mode))
        if "transformer" in families:   # LayerNorm, RMSNorm, DyT, Derf, none: those the language writes
            references.update(transformer_references())
        for name, formula in references.items():
            graph = parse(formula)
            if graph.hash not in seen:
                layers.append({"name": name, "formula": str(graph), "candidate_id": None, "source": "baseline"})
    return layers


def _retrain(layers, archs, held_out, dataset, device, plan, args, seed) -> list[dict]:
    """All layers' rows in layer order: in this process, or over `--workers` processes."""
    from tqdm import tqdm

    total = len(layers) * (len(archs) * (args.trials + args.seeds) + len(held_out) * args.seeds)
    bar = tqdm(total=total, desc="retrain", unit="training", file=sys.stderr, dynamic_ncols=True)
    job = {"archs": archs, "held_out": held_out, "steps": plan["steps"], "batch_size": plan["batch_size"],
           "batch_given": plan.get("batch_given"),
           "trials": args.trials, "seeds": args.seeds, "lr_range": plan["lr_range"],
           "warm_lr": plan["warm_lr"], "seed": seed, "device": str(device), "dataset": plan["dataset"],
           "journal": plan["journal"]}
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
    (mean over the searched proxies; the search's rate first), then `seeds` test-set
    trainings per proxy, held-out ones included, at the best rate. `done(text)` is
    called after every training."""
    import optuna

    from evaluators.evaluate import refusal
    from evaluators.trainer import build_and_train
    from primitives import compile_layer, parse

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    graph = parse(layer["formula"])

    def factory(channels):
        return compile_layer(graph, channels)

    journal = Journal(job["journal"]).load()

    def train(arch, lr, run_seed, split) -> dict:
        """{accuracy, reason, note, seconds}: from the journal when an earlier run finished it."""
        k = key(formula=layer["formula"], arch=arch, lr=lr, seed=run_seed, split=split, steps=job["steps"],
                batch_size=job["batch_size"], dataset=job["dataset"], device=job["device"])
        result = journal.get(k)
        refused = refusal(graph, (arch,))
        if refused:   # a causal proxy does not train a layer that mixes positions
            result = {"accuracy": None, "reason": refused, "note": None, "seconds": 0.0}
        if result is None:
            start = time.perf_counter()
            config = _train_config(arch, lr, run_seed, job)
            data = dataset.for_arch(arch) if hasattr(dataset, "for_arch") else dataset
            trained = build_and_train(arch, factory, data, config, job["device"], split=split)
            result = {"accuracy": trained.accuracy, "reason": trained.reason, "note": trained.note,
                      "seconds": time.perf_counter() - start}
            journal.add(k, result)
        done(f"{layer['name']} {arch} lr={lr:.3g} {split}")
        return result

    def objective(trial):
        lr = trial.suggest_float("lr", *job["lr_range"], log=True)
        accs = [train(arch, lr, job["seed"], "val")["accuracy"] for arch in job["archs"]]
        return float(sum(a or 0.0 for a in accs) / len(accs))  # a failed training scores 0

    sampler = optuna.samplers.TPESampler(seed=job["seed"], n_startup_trials=STARTUP_TRIALS)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({"lr": job["warm_lr"]})
    study.optimize(objective, n_trials=job["trials"])
    lr = study.best_params["lr"]
    rows = []
    for s in range(job["seeds"]):
        for arch in [*job["archs"], *job["held_out"]]:
            result = train(arch, lr, job["seed"] + 1 + s, "test")
            rows.append({"layer": layer["name"], "source": layer["source"],
                         "candidate_id": layer["candidate_id"], "formula": layer["formula"],
                         "arch": arch, "held_out": arch in job["held_out"], "seed": job["seed"] + 1 + s,
                         "lr": lr, "steps": job["steps"],
                         "batch_size": _train_config(arch, lr, job["seed"], job).batch_size,
                         "val_acc_tuned": study.best_value, "test_acc": result["accuracy"],
                         "reason": result["reason"], "note": result.get("note"), "seconds": result["seconds"]})
    return rows


# -- worker processes: one torch thread each, the dataset loaded once per process

_WORKER = {}


def _train_config(arch: str, lr: float, seed: int, job: dict):
    """Proxy `arch`'s recipe at the job's steps (and batch size, when given) and rate `lr`: an
    SGD proxy trains at `lr`, an AdamW one at its recipe's rate times lr / the warm start."""
    from evaluators.trainer import proxy_config

    batch = job.get("batch_given")
    config = proxy_config(arch, job["steps"], batch, seed=seed)
    if config.optimizer == "sgd":
        return proxy_config(arch, job["steps"], batch if batch else job["batch_size"], lr, seed=seed)
    config.lr = config.lr * lr / job["warm_lr"]
    return config


def _worker_init(dataset, device, messages):
    import signal

    import torch
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle: it stops the pool
    torch.set_num_threads(1)
    _WORKER.update(dataset=dataset.to(device), messages=messages)


def _worker_layer(layer, job):
    return retrain_layer(layer, _WORKER["dataset"], job, _WORKER["messages"].put)


def _in_processes(layers, dataset, job, workers, bar) -> list[dict]:
    """Layers spread over `workers` spawned processes; their per-training messages
    drive the progress bar. Rows come back in layer order. On Ctrl-C (or any error) the
    workers are terminated at once: their finished trainings are in the journal, and
    waiting for the layers still queued would take hours."""
    import multiprocessing
    import queue

    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        messages = manager.Queue()

        def drain():
            while True:
                try:
                    text = messages.get_nowait()
                except queue.Empty:
                    return
                bar.set_postfix_str(text)
                bar.update()

        pool = ctx.Pool(min(workers, len(layers)), initializer=_worker_init,
                        initargs=(dataset.to("cpu"), job["device"], messages))
        try:
            results = [pool.apply_async(_worker_layer, (layer, job)) for layer in layers]
            for result in results:
                while not result.ready():
                    result.wait(0.5)
                    drain()
            drain()
            return [row for result in results for row in result.get()]
        finally:
            pool.terminate()
            pool.join()


def _write(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("layer", pa.string()), ("source", pa.string()), ("candidate_id", pa.int64()),
                        ("formula", pa.string()), ("arch", pa.string()), ("held_out", pa.bool_()),
                        ("seed", pa.int64()), ("lr", pa.float64()), ("steps", pa.int64()),
                        ("batch_size", pa.int64()), ("val_acc_tuned", pa.float64()),
                        ("test_acc", pa.float64()), ("transfer_gap", pa.float64()), ("reason", pa.string()),
                        ("note", pa.string()), ("seconds", pa.float64())])
    table = pa.Table.from_pylist(rows, schema=schema)
    write_atomic(path, lambda f: pq.write_table(table, f))


def _mean(values):
    return sum(values) / len(values) if values else None


def _add_transfer_gaps(rows, held_out) -> None:
    """Each row's `transfer_gap`: its layer's mean test accuracy on the held-out proxies
    minus the mean over the searched proxies of each one's mean (None without held-out
    proxies or with a failed proxy)."""
    for name in dict.fromkeys(r["layer"] for r in rows):
        mine = [r for r in rows if r["layer"] == name]
        per_arch = {a: _mean(finite_accs(mine, name, a)) for a in dict.fromkeys(r["arch"] for r in mine)}
        searched = [v for a, v in per_arch.items() if a not in held_out]
        held = [per_arch.get(a) for a in held_out]
        gap = None
        if held and searched and None not in held + searched:
            gap = sum(held) / len(held) - sum(searched) / len(searched)
        for r in mine:
            r["transfer_gap"] = gap
