"""`evonorm retrain DIR --top K`: the fair, longer comparison of front layers and baselines.

The retrain itself is `search.analysis.retrain` (how layers, learning rates, steps and
the held-out proxies are chosen); this command gives it flags, a progress bar, and prints
the table of mean and spread and the comparison with the references
(`search.analysis.report`: paired per-seed differences with Student-t intervals; `evonorm
show DIR` prints them again, `--trials` the lr trials kept in DIR/retrain-studies.journal).
A retrain stopped part-way resumes when the same command is run again; a run or a stopped
retrain recorded by another trainer version is refused unless --allow-trainer-change.
"""
from __future__ import annotations

import os
import sys

from search.analysis.retrain import DEFAULT_SEEDS, DEFAULT_TRIALS, MAX_WIDENINGS, STARTUP_TRIALS, WIDEN_TRIALS
from search.config import add_cache_flag, add_training_flags

# the training flags' defaults, where retrain's are the run's
RUN_DEFAULTS = {"steps": "default: twice the run's, or twice the recommended steps at --batch-size when it "
                         "differs from the run's",
                "batch_size": "default: the run's when it gave one, else each proxy's recipe"}


def add_arguments(parser):
    parser.add_argument("run_dir", help="a run directory")
    parser.add_argument("--top", type=int, default=3, help="front layers to retrain (default 3)")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"seeds per layer and proxy (default {DEFAULT_SEEDS}; the comparison pairs them)")
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                        help=f"Optuna trials per layer (default {DEFAULT_TRIALS}: the search's lr, "
                             f"{STARTUP_TRIALS - 1} random, then TPE)")
    add_training_flags(parser, ("steps", "batch_size"), defaults=RUN_DEFAULTS)
    parser.add_argument("--lr-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="learning rates tried first (default 0.02 0.5 at batch 128, scaled linearly "
                             f"with the batch size); a side where the best rate lands in the outer tenth is "
                             f"widened x4 for {WIDEN_TRIALS} more trials, at most {MAX_WIDENINGS} times")
    parser.add_argument("--archs", nargs="+", default=None, help="proxies (default: the run's)")
    parser.add_argument("--no-held-out", dest="held_out", action="store_false",
                        help="do not also train on the held-out proxies (default: plainnet too for CNN proxies, "
                             "postvit for transformer ones)")
    parser.add_argument("--dataset", default=None, help="dataset (default: the run's)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--no-baselines", action="store_true", help="retrain only the front layers")
    add_training_flags(parser, ("device",))
    parser.add_argument("-o", "--output", default=None,
                        help="parquet file of the trainings (default: DIR/retrain.parquet)")
    add_cache_flag(parser)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes training layers side by side, one torch thread each (default 1: this "
                             "process, torch's threads)")
    parser.add_argument("--allow-trainer-change", action="store_true",
                        help="go on although the run or a stopped retrain's journal records another trainer "
                             "version (or none: before versioning); the table records which rows came from which")


def run(args) -> int:
    from tqdm import tqdm

    from search.analysis.report import report
    from search.analysis.retrain import plan_retrain, retrain
    from search.session import stop_on_sigterm

    if not getattr(args, "cache", True):   # this process and its worker processes
        os.environ["EVONORM_CACHE"] = "off"

    plan = plan_retrain(args.run_dir, top=args.top, seeds=args.seeds, trials=args.trials, steps=args.steps,
                        batch_size=args.batch_size, lr_range=args.lr_range, archs=args.archs,
                        held_out=args.held_out, baselines=not args.no_baselines, dataset=args.dataset,
                        data_root=args.data_root, device=args.device, workers=args.workers, output=args.output,
                        allow_trainer_change=args.allow_trainer_change)
    for warning in plan.warnings():
        print(f"evonorm: warning: {warning}", file=sys.stderr)
    finished = plan.finished()
    if finished:
        print(f"evonorm: resuming: {finished} finished trainings in {plan.journal_path}", file=sys.stderr)
    bar = tqdm(total=plan.trainings, desc="retrain", unit="training", file=sys.stderr, dynamic_ncols=True)

    def progress(text):
        if bar.n >= bar.total:      # a widened range: more trials than planned
            bar.total = bar.n + 1
        bar.set_postfix_str(text)
        bar.update()
    stop_on_sigterm()   # `kill PID` stops it like Ctrl-C: workers terminated, journal kept
    try:
        rows = retrain(plan, progress)
    except KeyboardInterrupt:
        bar.close()
        print(f"evonorm: finished trainings are kept in {plan.journal_path}: run the same command to resume",
              file=sys.stderr)
        raise
    bar.close()
    print(report(rows, plan.run.mode))
    print(f"\nwrote {plan.output} ({len(rows)} trainings) and the lr studies {plan.studies_path}",
          file=sys.stderr)
    return 0
