"""Are rung scores a fair early look at full scores? And do hurdles buy candidates?

Part 1, `rank` (default): the `ok` layers of a run directory (results/example: 49
distinct trainings) are trained once per proxy on real Fashion-MNIST, halted at each
rung (the progressive hurdles' step counts, and protocol 5's quality_steps), scored,
and continued to the full budget. Printed: Kendall's tau per proxy between each
rung's scores and the full scores, and which layers of the full-score front a
hurdle at that rung would have stopped (replayed in id order, as the search would).

Part 2, `search`: two default searches from the same seed, hurdles on and off, run
side by side with one worker each for the same wall time, then stopped (SIGTERM).
Printed: full trainings, candidates judged, front hypervolume (reference: the
worst accuracy of any trained layer, minus 0.01), wasted trainings (rows whose
scores copy another's bit for bit). The off arm still scores every candidate at
the rungs (`--hurdle-share 1` stops no one), so its full trainings also give part
1's table, printed after (and again by `report`).

    python benchmarks/fidelity.py rank --run results/example --limit 40
    python benchmarks/fidelity.py search --minutes 30
    python benchmarks/fidelity.py resume --minutes 60   # both arms, more time (a later sitting)
    python benchmarks/fidelity.py replay results/default-v2 --shares 0.5 0.3 0.1  # no training
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARCHS = ["resnet", "mobilenetv2", "efficientnet"]


def rank(args) -> None:
    import pandas as pd
    import torch

    from evaluators.evaluate import EvalConfig, Evaluator
    from primitives import Graph
    from search.config import build_config

    torch.set_num_threads(args.threads)
    df = pd.read_parquet(Path(args.run) / "candidates")
    archs = ["resnet", "mobilenetv2", "efficientnet"]
    ok = df[df.status == "ok"].drop_duplicates([f"acc_{a}" for a in archs]).sort_values("id")
    ok = ok.iloc[args.skip:args.skip + args.limit]
    config = EvalConfig()
    rungs = sorted({config.quality_steps, *build_config().rung_steps(config.steps)[:-1]})
    evaluator = Evaluator(config)
    rows = []
    for n, (_, row) in enumerate(ok.iterrows()):
        graph, out = Graph.from_json(row["graph"]), {"id": int(row["id"])}
        for arch in archs:
            state, start = None, time.perf_counter()
            for steps in [*rungs, config.steps]:
                result = evaluator.train_arch(graph, arch, None, stop_at=steps, resume=state)
                out[f"{arch}@{steps}"], state = result.accuracy, result.state
            out[f"{arch}_s"] = time.perf_counter() - start
        rows.append(out)
        if args.save:
            pd.DataFrame(rows).to_csv(args.save, index=False)
        print(f"[{n + 1}/{len(ok)}] #{out['id']} " + " ".join(
            f"{a} {out[f'{a}@{config.steps}']}" for a in archs), file=sys.stderr, flush=True)
    summarise(pd.DataFrame(rows), args.run, rungs, config.steps)


def summarise(table, run, rungs, total, shares=None) -> None:
    """Kendall tau per proxy and rung; which full-score front layers each hurdle would stop
    (at the default share, or at each of `shares`)."""
    from scipy.stats import kendalltau

    from search.config import build_config
    from search.engine.hurdles import Hurdles
    from search.pareto import pareto_mask

    archs = ARCHS
    table = table.dropna()
    print(f"{len(table)} layers from {run}, full budget {total} steps; Kendall tau with the full score:")
    print(f"{'rung':>6} " + " ".join(f"{a:>13}" for a in archs))
    for steps in rungs:
        taus = [kendalltau(table[f"{a}@{steps}"], table[f"{a}@{total}"]).statistic for a in archs]
        print(f"{steps:>6} " + " ".join(f"{t:>13.2f}" for t in taus))
    full = table[[f"{a}@{total}" for a in archs]].to_numpy()
    front = set(table["id"][pareto_mask(full, ["max"] * 3)])
    defaults = build_config()
    for steps, share in [(s, h) for s in rungs for h in shares or [defaults.hurdle_share]]:
        hurdles = Hurdles(1, share, defaults.hurdle_window)
        stopped = []
        for _, r in table.iterrows():
            point = [r[f"{a}@{steps}"] for a in archs]
            if not hurdles.judge(0, point).passed:
                stopped.append(int(r["id"]))
            hurdles.add(0, point)
        lost = sorted(front & set(stopped))
        print(f"hurdle at {steps} steps, share {share}: stops {len(stopped)} of {len(table)} "
              f"(saves {len(stopped) * (1 - steps / total):.1f} full trainings); "
              f"of the {len(front)} full-score front layers it stops {len(lost)} {lost}")


def search(args) -> None:
    """Both arms side by side for `--minutes`, then SIGTERM (each stops cleanly and can be
    resumed: `resume` adds time to both, so the comparison can grow across sittings)."""
    out = Path(args.out)
    # the off arm is measured at the rungs but stops no one (share 1: never "more than all"
    # peers dominate), so its full trainings also give part 1's rank table for free; the
    # price is one evaluation per proxy per rung, as the on arm pays it too
    arms = {"hurdles": ["--hurdles"], "no-hurdles": ["--hurdles", "--hurdle-share", "1"]}
    procs = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, flags in arms.items():
        if args.part == "resume":
            cmd = ["resume", str(out / name), "--executor", "local", "--quiet"]
        else:
            cmd = ["search", "--executor", "local", "--budget", "100000",
                   "--seed", str(args.seed), "--out", str(out / name), "--quiet", *flags]
        procs[name] = subprocess.Popen([sys.executable, "-m", "search.cli", *cmd], env=env,
                                       stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    time.sleep(args.minutes * 60)
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
    for p in procs.values():
        p.wait(timeout=600)
    report(out, list(arms))


def summarise_table(table, run, shares=None) -> None:
    """`summarise` with the rungs and the full budget read from the table's `arch@steps` columns."""
    steps = sorted({int(c.split("@")[1]) for c in table.columns if "@" in c})
    summarise(table, run, steps[:-1], steps[-1], shares)


def run_table(run_dir: Path):
    """Part 1's table from a run's own `ok` records: rung scores (`rung_scores`) beside the
    full score of the same training (the first seed's, where a confirmation added a second)."""
    import pandas as pd

    from search.store.reader import load_run

    rows = []
    for _, r in load_run(run_dir).candidates.query("status == 'ok'").iterrows():
        rungs = json.loads(r["rung_scores"]) if isinstance(r["rung_scores"], str) else []
        seeds = json.loads(r["seed_scores"]) if isinstance(r["seed_scores"], str) else []
        full, row = (seeds[0] if seeds else r), {"id": int(r["id"])}
        for arch in ARCHS:
            row[f"{arch}@{int(r['steps_trained'])}"] = full[f"acc_{arch}"]
            row.update({f"{arch}@{rung['steps']}": rung[f"acc_{arch}"] for rung in rungs})
        rows.append(row)
    return pd.DataFrame(rows)


def report(out: Path, names) -> None:
    from search.analysis.accounting import account
    from search.pareto import hypervolume, pareto_mask
    from search.store.reader import load_run

    frames = {name: load_run(out / name).candidates for name in names}
    accs = ["acc_resnet", "acc_mobilenetv2", "acc_efficientnet"]
    trained = [f[f["status"].isin(["ok", "stopped"])] for f in frames.values()]
    ref = min(float(t[accs].min().min()) for t in trained) - 0.01
    print(f"{'arm':>11} {'records':>8} {'trained':>8} {'full':>6} {'stopped':>8} {'wasted':>7} "
          f"{'worker-h':>9} {'judged/h':>9} {'hypervolume':>12}")
    for name, df in frames.items():
        full = df[df["status"] == "ok"]
        stopped = int((df["status"] == "stopped").sum())
        trained = df[df["status"].isin(["ok", "stopped", "low_quality", "failed"])]
        wasted = int(trained.dropna(subset=accs).duplicated(accs).sum())
        acc = account(df)
        points = full[accs].to_numpy(dtype=float)
        front = points[pareto_mask(points, ["max"] * 3)] if len(points) else points
        hv = hypervolume(front, ["max"] * 3, [ref] * 3) if len(front) else 0.0
        print(f"{name:>11} {len(df):>8} {len(trained):>8} {len(full):>6} {stopped:>8} {wasted:>7} "
              f"{acc.worker_hours:>9.2f} {acc.judged_per_worker_hour or 0:>9.1f} {hv:>12.6f}")
    table = run_table(out / names[-1])
    if len(table) >= 3:
        summarise_table(table, out / names[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part")
    r = sub.add_parser("rank")
    r.add_argument("--run", default="results/example")
    r.add_argument("--limit", type=int, default=40)
    r.add_argument("--skip", type=int, default=0, help="start after this many layers (to split the work)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--save", help="CSV of every layer's rung and full scores")
    s = sub.add_parser("search")
    s.add_argument("--minutes", type=float, default=30)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="results/fidelity")
    m = sub.add_parser("resume", help="part 2 again on the same run directories, for more minutes")
    m.add_argument("--minutes", type=float, default=30)
    m.add_argument("--out", default="results/fidelity")
    p = sub.add_parser("report", help="part 2's table again, from its run directories")
    p.add_argument("--out", default="results/fidelity")
    t = sub.add_parser("summary", help="part 1's table again, from --save CSVs (of split work)")
    t.add_argument("csv", nargs="+")
    y = sub.add_parser("replay", help="part 1's table from a finished run's own rung scores, no training")
    y.add_argument("run")
    y.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.3, 0.1])
    args = parser.parse_args(sys.argv[1:] or ["rank"])
    if args.part == "summary":
        import pandas as pd
        summarise_table(pd.concat([pd.read_csv(f) for f in args.csv]).sort_values("id"), " + ".join(args.csv))
        return
    if args.part == "replay":
        summarise_table(run_table(Path(args.run)).sort_values("id"), args.run, args.shares)
        return
    {"rank": rank, "search": search, "resume": search, "report": lambda a: report(Path(a.out), ["hurdles", "no-hurdles"])}[
        args.part or "rank"](args)


if __name__ == "__main__":
    main()
