"""The retrain: the fair, longer comparison of a run's front layers and the baselines.

    from search.analysis.report import report
    from search.analysis.retrain import plan_retrain, retrain

    plan = plan_retrain("results/example", top=3, workers=2)   # checks everything; trains nothing
    rows = retrain(plan)            # trains, resuming a stopped retrain; writes plan.output
    print(report(rows, plan.run.mode))

For each layer (the K best of the front by mean accuracy, skipping members whose
accuracies equal a better one's to the last digit, then the baselines of the run's mode:
BN-ReLU, GN-ReLU, EvoNorm-B0, EvoNorm-S0 in batch mode) an Optuna TPE study tunes the
learning rate on the validation split (mean accuracy over the searched proxies). It
starts at the search's own rate (enqueued as the first trial), then samples at random
for TPE's start-up trials (STARTUP_TRIALS) and only after that models the objective:
the default of 12 trials leaves the start-up with 7 model-guided trials; fewer than the
start-up earn a warning (`RetrainPlan.warnings`). The start-up is seeded alike for every
layer: all layers see the same first rates (a shared grid, which is fair). Where the best
rate lies in the outer tenth of the range (log scale), the range is widened on that side
and tuned on (`tune_lr`: x4, WIDEN_TRIALS more trials, at most MAX_WIDENINGS times); a rate
still at an edge is recorded (`lr_edge`) and marked in the report. Each layer's study is
kept in `RetrainPlan.studies_path` (DIR/retrain-studies.journal, an Optuna journal; study
name = layer name; per-proxy validation accuracies, the range and the stage as trial user
attributes). The layer is then trained with the best rate for several seeds (default 5)
on every proxy and scored on the test set.

The held-out proxies of the run's families (`plainnet` for CNN proxies, `postvit` for
Transformer ones; never searched on by default) are trained too, with
the rate tuned on the searched proxies (the held-out architecture plays no part in any
choice), and each row carries its layer's transfer gap: its mean test accuracy on the
held-out proxies minus its mean over the searched ones. Proxies differ in difficulty, so
a gap means little alone: a layer transfers as well as BN-ReLU when its gap is no worse
than BN-ReLU's.

Steps, batch size and the warm-start lr follow the evaluators' one rule
(`evaluators.evaluate.training_budget`) from the run's own settings: twice the run's
steps at its batch size, twice the rule's at another; the lr range (0.02-0.5 at batch
128) and the warm start scale linearly with the batch. The tuned rate is SGD's, the CNN
proxies'; a proxy whose recipe is AdamW (the Transformer proxies) trains at its recipe's
rate times the tuned rate over the warm start, so the study moves every proxy's rate by
one factor. Each proxy trains at its recipe's batch size unless the run or `batch_size`
gave one. A causal proxy (charlm) does not train a layer that mixes positions: its rows
are failed trainings with the refusal as their reason.
Rows land in `output` (default DIR/retrain.parquet, written atomically). Every training
is journaled as it finishes (`search.store.journal`, `RetrainPlan.journal_path` until
the table is written), so a retrain stopped part-way resumes when planned and run again
with the same settings. With `workers` > 1 the layers are spread over that many spawned
processes (one torch thread each); rows still come back in layer order.

The running trainer's fingerprint is recorded in the journal's header and the table's
schema metadata (key "evonorm"), its version per row (`trainer_version`); a run or a stopped
retrain's journal from another trainer version is refused unless `allow_trainer_change`
(search.provenance).

Bad input is an `EvonormError` raised by `plan_retrain`, before any training: a run
directory (RunDirError), a setting or a dataset (ConfigError), an output (UnwritableError),
another trainer (TrainerChangeError).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from search.analysis.report import finite_accs
from search.analysis.studies import check_storage
from search.analysis.stats import edge_of, widened
from search.config import check_training
from search.errors import ConfigError
from search.store.files import check_writable_file, write_atomic
from search.store.journal import Journal, key

# TPE's random start-up: trials sampled at random before it models the objective
STARTUP_TRIALS = 5
DEFAULT_TRIALS = 12
DEFAULT_SEEDS = 5
LR_RANGE_AT_128 = (0.02, 0.5)
# a best rate in the outer tenth of the range (stats.edge_of) widens that side x4 (stats.widened)
# and tunes on for WIDEN_TRIALS more trials, at most MAX_WIDENINGS times per layer
WIDEN_TRIALS = 5
MAX_WIDENINGS = 3


@dataclass
class RetrainPlan:
    """What a retrain will do, every setting settled and checked (`plan_retrain`)."""

    run: object                         # the Run (search.store.reader.Run)
    layers: list[dict]                  # [{name, formula, candidate_id, source}], training order
    archs: list[str]                    # the proxies the lr is tuned on
    held_out: list[str]                 # proxies trained at the tuned lr only
    steps: int
    batch_size: int
    lr_range: tuple[float, float]
    warm_lr: float                      # the study's first trial: the run's lr at this batch size
    batch_given: int | None             # the batch size every proxy trains at (None: each its recipe's)
    trials: int
    seeds: int
    seed: int                           # the run's; test seeds are seed + 1 ... seed + seeds
    dataset: str
    device: str
    workers: int
    output: Path
    data: object = field(default=None, repr=False)   # the dataset, loaded on `device`
    allow_trainer_change: bool = False  # go on with a journal another trainer wrote (recorded)

    @property
    def journal_path(self) -> Path:
        return self.output.with_name(self.output.name + ".journal")

    @property
    def studies_path(self) -> Path:
        """The lr studies, one per layer (study name = layer name), kept: DIR/retrain-studies.journal
        beside DIR/retrain.parquet (an Optuna JournalFileStorage; optuna-dashboard opens it)."""
        return studies_path(self.output)

    @property
    def trainings(self) -> int:
        """How many trainings the retrain runs (journaled ones included) when no rate is
        widened (each widening adds WIDEN_TRIALS trials of the searched proxies)."""
        return len(self.layers) * (len(self.archs) * (self.trials + self.seeds) + len(self.held_out) * self.seeds)

    def warnings(self) -> list[str]:
        """What a person should know before hours of training."""
        if self.trials <= STARTUP_TRIALS:
            return [f"{self.trials} trial(s) do not leave TPE's {STARTUP_TRIALS} random start-up trials: TPE "
                    f"never left random sampling (use --trials {DEFAULT_TRIALS})"]
        return []

    def finished(self) -> int:
        """Trainings a stopped retrain with these settings left in the journal (some may be
        another setting's: those are trained afresh)."""
        return len(Journal(self.journal_path).load().done)

    def job(self) -> dict:
        """The settings a worker process trains a layer by (`retrain_layer`): plain values."""
        return {"archs": self.archs, "held_out": self.held_out, "steps": self.steps,
                "batch_size": self.batch_size, "batch_given": self.batch_given, "trials": self.trials, "seeds": self.seeds,
                "lr_range": self.lr_range, "warm_lr": self.warm_lr, "seed": self.seed, "device": str(self.device),
                "dataset": self.dataset, "journal": str(self.journal_path), "studies": str(self.studies_path)}


def plan_retrain(run_or_dir, top: int = 3, seeds: int = DEFAULT_SEEDS, trials: int = DEFAULT_TRIALS, steps: int | None = None,
                 batch_size: int | None = None, lr_range: tuple[float, float] | None = None,
                 archs: list[str] | None = None, held_out: bool = True, baselines: bool = True,
                 dataset: str | None = None, data_root: str | None = None, device: str = "auto",
                 workers: int = 1, output=None, allow_trainer_change: bool = False) -> RetrainPlan:
    """The retrain of `run_or_dir` (a Run or its directory), checked and ready: the `top`
    front layers and (unless `baselines` is false) the baselines of the run's mode, `trials`
    lr trials and `seeds` test seeds each on `archs` (default: the run's) and, unless
    `held_out` is false, on the held-out proxies. `steps`, `batch_size`: None follows the
    run (see the module). `dataset`, `data_root`: default the run's. `output`: default
    DIR/retrain.parquet. Loads the dataset onto `device`; trains nothing. Raises an
    EvonormError for bad input (see the module); a TrainerChangeError when the run (its
    front was chosen by its trainer) or a stopped retrain's journal was made by another
    trainer version than the running one, unless `allow_trainer_change`."""
    from search.store.reader import Run, load_run

    if workers < 1:
        raise ConfigError("--workers must be positive")
    if top < 0:
        raise ConfigError("--top must be non-negative")
    for name, value in (("seeds", seeds), ("trials", trials)):
        if value < 1:
            raise ConfigError(f"--{name} must be positive")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        check_training(name, value, "--" + name.replace("_", "-"))
    if lr_range is not None and not 0 < lr_range[0] < lr_range[1]:
        raise ConfigError("--lr-range needs 0 < LOW < HIGH")
    run = run_or_dir if isinstance(run_or_dir, Run) else load_run(run_or_dir)
    budget = _budget(run, steps, batch_size, lr_range)
    output = Path(output or run.retrain_path)
    check_writable_file(output)  # before hours of training, not after
    check_storage(studies_path(output))   # writable, and an Optuna journal when it holds anything
    _check_trainers(run, output, allow_trainer_change)
    layers = _layers(run, top, baselines)
    if not layers:
        raise ConfigError(f"{run.dir}: nothing to retrain (empty front and --no-baselines)")

    from evaluators.proxies import PROXY_NAMES, held_out_for

    archs = list(archs or run.archs)
    unknown = [a for a in archs if a not in PROXY_NAMES]
    if unknown:
        raise ConfigError(f"unknown arch {unknown[0]!r} (expected one of: {', '.join(PROXY_NAMES)})")
    held = [a for a in held_out_for(archs) if a not in run.archs] if held_out else []
    config = run.info.get("config", {}) if isinstance(run.info.get("config"), dict) else {}
    dataset = dataset or config.get("dataset", "fashion-mnist")
    plan = RetrainPlan(run=run, layers=layers, archs=archs, held_out=held, trials=trials, seeds=seeds,
                       seed=int(run.info.get("seed") or 0), dataset=dataset, device=device, workers=workers,
                       output=output, allow_trainer_change=allow_trainer_change, **budget)
    plan.device, plan.data = _load(dataset, device, data_root or config.get("data_root"), [*archs, *held])
    return plan


def studies_path(output) -> Path:
    """The lr studies beside the retrain table `output`: DIR/retrain.parquet -> DIR/retrain-studies.journal."""
    output = Path(output)
    return output.with_name(output.stem + "-studies.journal")


def _check_trainers(run, output, allow: bool) -> None:
    """The run's trainer (a run that trained: its front was chosen by it) and a stopped
    retrain's (its journal header) against the running one (search.provenance)."""
    from search import provenance

    command = f"evonorm retrain {run.dir}"
    config = run.info.get("config") if isinstance(run.info.get("config"), dict) else {}
    if config.get("evaluator", "train") == "train":
        provenance.check(provenance.run_trainer_version(run.info), run.dir / "run.json", allow, command)
    journal = Journal(output.with_name(output.name + ".journal")).load()
    if journal.done:
        provenance.check(journal.trainer_version(), journal.path, allow, command)


def _budget(run, steps, batch_size, lr_range) -> dict:
    """Steps, batch size, lr range and warm-start lr of the retraining, from the arguments and
    the run's own evaluation settings by the evaluators' rule (its lr was chosen for its batch
    size: it scales linearly to ours)."""
    from evaluators.evaluate import scaled_lr, training_budget

    config = run.info.get("config") if isinstance(run.info.get("config"), dict) else {}
    evals = run.info.get("eval_config") if isinstance(run.info.get("eval_config"), dict) else {}
    recorded = {k: evals.get(k) or config.get(k) or None for k in ("batch_size", "steps", "lr")}
    ran = training_budget(**{k: None if v is None else (float if k == "lr" else int)(v) for k, v in recorded.items()})
    batch = batch_size or ran.batch_size
    # twice the run's steps; at another batch size, twice the rule's (the trainer's default cost)
    steps = training_budget(batch, steps, scale=2, default=ran if batch == ran.batch_size else None).steps
    low, high = lr_range or tuple(scaled_lr(batch, lr) for lr in LR_RANGE_AT_128)
    warm = min(high, max(low, scaled_lr(batch, default=ran)))
    # a batch size the run or the caller gave applies to every proxy; else each its recipe's
    given = batch_size or recorded["batch_size"]
    return {"steps": steps, "batch_size": batch, "lr_range": (low, high), "warm_lr": warm,
            "batch_given": int(given) if given else None}


def _load(name, device, data_root, archs):
    """(the device `device` resolves to, what `archs` train on loaded there: the images, the
    text or both); a ConfigError for a dataset that cannot be had."""
    from evaluators.datasets import DatasetError
    from evaluators.evaluate import ProxyData, resolve_device

    device = resolve_device(device)
    data = ProxyData(name, data_root, device)
    try:
        for arch in archs:
            data.for_arch(arch)
    except DatasetError as err:
        raise ConfigError(str(err)) from None
    return device, data


def _layers(run, top: int, baselines: bool) -> list[dict]:
    """[{name, formula, candidate_id, source}]: the top front layers, then the baselines (the
    mode's for CNN proxies, the Transformer references for Transformer proxies)."""
    from primitives import Graph, parse

    layers, seen = [], set()
    front = run.front()
    if len(front) and top:
        front = front.assign(_mean=front[run.acc_columns].mean(axis=1)).sort_values("_mean", ascending=False)
        scores = set()
        for _, row in front.iterrows():
            if len(layers) == top:
                break
            # bit-identical accuracies on every proxy: the same training run under another
            # name (a renamed vector with the same initial value), not worth training twice
            score = tuple(row[c] for c in run.acc_columns)
            if score in scores:
                continue
            scores.add(score)
            graph = Graph.from_json(row["graph"])
            seen.add(graph.hash)
            layers.append({"name": f"#{int(row['id'])}", "formula": str(graph),
                           "candidate_id": int(row["id"]), "source": "front"})
    if baselines:
        from evaluators.proxies import references_for
        for name, formula in references_for(run.archs, run.mode).items():
            graph = parse(formula)
            if graph.hash not in seen:
                layers.append({"name": name, "formula": str(graph), "candidate_id": None, "source": "baseline"})
    return layers


def retrain(plan: RetrainPlan, progress=None) -> list[dict]:
    """Run `plan`: every layer's lr study and test trainings (replaying those a stopped
    retrain journaled), in this process or over `plan.workers` processes; then the transfer
    gaps, the table written to `plan.output` and the journal removed. `progress(text)` is
    called after every training (`plan.trainings` calls in all). Returns the rows, in layer
    order. On Ctrl-C (KeyboardInterrupt) the finished trainings stay in the journal."""
    from search import provenance

    journal = Journal(plan.journal_path).load()   # mends a line torn by a crash before workers append
    if journal.done:
        provenance.check(journal.trainer_version(), journal.path, plan.allow_trainer_change,
                         f"evonorm retrain {plan.run.dir}")
    journal.begin(provenance.fingerprint())       # the header: which trainer the entries after it are
    done = progress or (lambda text: None)
    job = plan.job()
    if plan.workers == 1:
        rows = [row for layer in plan.layers for row in retrain_layer(layer, plan.data, job, done)]
    else:
        rows = _in_processes(plan.layers, plan.data, job, plan.workers, done)
    _add_transfer_gaps(rows, plan.held_out)
    _write(plan.output, rows, {"trainer": provenance.fingerprint(), "run_trainer": plan.run.info.get("trainer"),
                               "run_trainer_changes": plan.run.info.get("trainer_changes"),
                               "journal_trainers": journal.headers, "studies": plan.studies_path.name})
    Journal(plan.journal_path).remove()
    return rows


@dataclass
class Tuning:
    """The outcome of `tune_lr`: the best rate and its value, the range it was last tuned on,
    how often that range was widened, and the edge ("low", "high") the best still sits at
    (None: inside)."""

    lr: float
    value: float
    low: float
    high: float
    widenings: int
    edge: str | None
    trials: int


def tune_lr(objective, low: float, high: float, trials: int, seed: int, warm: float | None = None, *,
            study=None, widen_trials: int = WIDEN_TRIALS, max_widenings: int = MAX_WIDENINGS) -> Tuning:
    """Tune a rate on the log range [low, high] with Optuna's TPE: `trials` trials (the first
    at `warm` when given, TPE's STARTUP_TRIALS seeded random start-up, the same rates for every
    objective, then model-guided ones), then, while the best rate lies in the outer tenth of the
    range on the log scale (`stats.edge_of`), widen that side x4 (`stats.widened`) and run
    `widen_trials` more, the first at the middle (log scale) of the new stretch; at most
    `max_widenings` times. `objective(lr)` returns the value to maximise, or (value, {name: user
    attribute}). `study`: an Optuna study to record the trials in (default: a new one in
    memory, seeded); each trial carries its `range` [low, high] and `stage` (widenings before
    it) as user attributes. Seeded and deterministic: the same values give the same rates."""
    import optuna

    if study is None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
        study = optuna.create_study(direction="maximize", sampler=sampler)
    bounds, stage = [low, high], [0]

    def run(trial):
        lr = trial.suggest_float("lr", bounds[0], bounds[1], log=True)
        trial.set_user_attr("range", list(bounds))
        trial.set_user_attr("stage", stage[0])
        out = objective(lr)
        value, attrs = out if isinstance(out, tuple) else (out, {})
        for name, v in attrs.items():
            trial.set_user_attr(name, v)
        return value

    if warm is not None:
        study.enqueue_trial({"lr": warm})
    study.optimize(run, n_trials=trials)
    edge = edge_of(study.best_params["lr"], *bounds)
    while edge is not None and stage[0] < max_widenings:
        old = tuple(bounds)
        bounds[:] = widened(*old, edge)
        new_end = bounds[0] if edge == "low" else bounds[1]
        stage[0] += 1
        study.enqueue_trial({"lr": math.sqrt(new_end * (old[0] if edge == "low" else old[1]))})
        study.optimize(run, n_trials=widen_trials)
        edge = edge_of(study.best_params["lr"], *bounds)
    return Tuning(lr=study.best_params["lr"], value=study.best_value, low=bounds[0], high=bounds[1],
                  widenings=stage[0], edge=edge, trials=len(study.trials))


def layer_study(storage_path, name: str, seed: int, attrs: dict):
    """A fresh study `name` (a layer's) in the Optuna journal file `storage_path`, replacing one
    a stopped retrain left there (its trials are replayed from the training journal, so the
    seeded sampler proposes the same rates again); `attrs` become its user attributes."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(storage_path)))
    if name in optuna.study.get_all_study_names(storage=storage):
        optuna.delete_study(study_name=name, storage=storage)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler)
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    return study


def retrain_layer(layer: dict, dataset, job: dict, done) -> list[dict]:
    """One layer: its lr tuned on the validation split (mean over the searched proxies; the
    search's rate first; `tune_lr`, widening a range whose best sits at an edge) in an Optuna
    study kept in job["studies"], then `seeds` test-set trainings per proxy, held-out ones
    included, at the best rate. `done(text)` is called after every training."""
    from evaluators.evaluate import refusal
    from evaluators.trainer import TRAINER_VERSION, build_and_train
    from primitives import compile_layer, parse

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
            from evaluators.cache import TrainingCache, data_name, enabled, through_cache, training_key
            cache = TrainingCache() if enabled() else None
            ckey = training_key(graph_hash=graph.hash, arch=arch, split=split, stop_at=config.steps,
                                data=data_name(arch, job["dataset"]), config=config,
                                device=job["device"]) if cache else None
            data = dataset.for_arch(arch) if hasattr(dataset, "for_arch") else dataset
            trained = through_cache(cache, ckey,
                                    lambda: build_and_train(arch, factory, data, config, job["device"], split=split))
            result = {"accuracy": trained.accuracy, "reason": trained.reason, "note": trained.note,
                      "seconds": time.perf_counter() - start, "trainer_version": TRAINER_VERSION,
                      "cached": bool(getattr(trained, "cached", False))}
            journal.add(k, result)
        done(f"{layer['name']} {arch} lr={lr:.3g} {split}")
        return result

    def objective(lr):
        results = [train(arch, lr, job["seed"], "val") for arch in job["archs"]]
        accs = [r["accuracy"] for r in results]
        attrs = {f"val_{arch}": a for arch, a in zip(job["archs"], accs)}
        attrs["trainer_versions"] = sorted({r.get("trainer_version") for r in results}, key=str)
        return float(sum(a or 0.0 for a in accs) / len(accs)), attrs  # a failed training scores 0

    study = layer_study(job["studies"], layer["name"], job["seed"],
                        {"formula": layer["formula"], "source": layer["source"],
                         "candidate_id": layer["candidate_id"], "archs": job["archs"], "steps": job["steps"],
                         "first_range": list(job["lr_range"]), "warm_lr": job["warm_lr"],
                         "trainer_version": TRAINER_VERSION})
    tuned = tune_lr(objective, *job["lr_range"], job["trials"], job["seed"], job["warm_lr"], study=study)
    study.set_user_attr("final_range", [tuned.low, tuned.high])
    study.set_user_attr("widenings", tuned.widenings)
    study.set_user_attr("edge", tuned.edge)
    lr = tuned.lr
    rows = []
    for s in range(job["seeds"]):
        for arch in [*job["archs"], *job["held_out"]]:
            result = train(arch, lr, job["seed"] + 1 + s, "test")
            rows.append({"layer": layer["name"], "source": layer["source"],
                         "candidate_id": layer["candidate_id"], "formula": layer["formula"],
                         "arch": arch, "held_out": arch in job["held_out"], "seed": job["seed"] + 1 + s,
                         "lr": lr, "steps": job["steps"],
                         "batch_size": _train_config(arch, lr, job["seed"], job).batch_size,
                         "val_acc_tuned": tuned.value, "test_acc": result["accuracy"],
                         "reason": result["reason"], "note": result.get("note"), "seconds": result["seconds"],
                         "lr_low": tuned.low, "lr_high": tuned.high, "lr_edge": tuned.edge,
                         "widenings": tuned.widenings, "trainer_version": result.get("trainer_version")})
    return rows


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


# -- worker processes: one torch thread each, the dataset loaded once per process

_WORKER = {}


def _worker_init(dataset, device, messages):
    import signal

    import torch
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle: it stops the pool
    torch.set_num_threads(1)
    _WORKER.update(dataset=dataset.to(device), messages=messages)


def _worker_layer(layer, job):
    return retrain_layer(layer, _WORKER["dataset"], job, _WORKER["messages"].put)


def _in_processes(layers, dataset, job, workers, done) -> list[dict]:
    """Layers spread over `workers` spawned processes; their per-training messages go
    to `done`. Rows come back in layer order. On Ctrl-C (or any error) the
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
                done(text)

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


def _write(path, rows, metadata: dict | None = None):
    """The table, with `metadata` (JSON values) under the schema metadata key "evonorm"."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("layer", pa.string()), ("source", pa.string()), ("candidate_id", pa.int64()),
                        ("formula", pa.string()), ("arch", pa.string()), ("held_out", pa.bool_()),
                        ("seed", pa.int64()), ("lr", pa.float64()), ("steps", pa.int64()),
                        ("batch_size", pa.int64()), ("val_acc_tuned", pa.float64()),
                        ("test_acc", pa.float64()), ("transfer_gap", pa.float64()), ("reason", pa.string()),
                        ("note", pa.string()), ("seconds", pa.float64()), ("lr_low", pa.float64()),
                        ("lr_high", pa.float64()), ("lr_edge", pa.string()), ("widenings", pa.int64()),
                        ("trainer_version", pa.int64())])
    if metadata is not None:
        schema = schema.with_metadata({"evonorm": json.dumps(metadata, default=str)})
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
