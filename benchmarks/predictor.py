"""Does predicting before paying pay? (issue #31, docs/predictor.md)

Part 1, `replay RUN...` (no training, seconds): a finished run's `ok` records, in id order,
each with its rung scores and its full score (the first seed's). The predictor
(search.engine.predictor) is fitted on the records before each one, as the driver would
have it, and predicts that one's full scores from its rung scores (and loss curves where
recorded) and its graph. Printed per run: Kendall tau of the predicted and of the raw rung
score against the full score, per proxy, on the same layers; how many full trainings the
predicted hurdle (the front of the earlier records dominates the optimistic prediction,
mean + z sd) stops at several z, and how many members of the final full-score front it
loses, beside the raw hurdle's (share 0.5, window 32) on the same layers; and the tau of the
proposal model (graph and parent scores, before any training). Only layers that went the
full distance have a full score, so the run's own `stopped` layers are missing from both.

Part 2, `search`: a live head-to-head like benchmarks/fidelity.py: two default searches
from one seed, one thread each, side by side for the same minutes: `plain` (hurdles on raw
rung scores) and `predicted` (--predicted-hurdles --predicted-proposals), both without the
training cache (--no-cache: neither may read the other's trainings). `report` prints per arm
records, full trainings, worker-hours, the final hypervolume (a shared reference), and the
worker-hours at which the predicted arm first reached the plain arm's final hypervolume
(the target: half), with the plain arm's front members the predicted arm never trained.

    python benchmarks/predictor.py replay results/default-v2 results/sample-b4 results/random-v1 \\
        results/poly-d3 results/poly-d3-nb results/poly-d3-unit
    python benchmarks/predictor.py search --minutes 120 --out results/predictor
    python benchmarks/predictor.py report --out results/predictor
    python benchmarks/predictor.py search --minutes 0.5 --evaluator surrogate --out /tmp/p  # a smoke test
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rows(run_dir):
    """(info, the ok records in id order as dicts, the run's rung steps and full steps)."""
    from search.config import build_config
    from search.store.reader import load_run
    run = load_run(run_dir)
    config = build_config(overrides={k: v for k, v in run.info["config"].items()
                                     if k not in ("out",) and v is not None})
    full = config.full_steps()
    df = run.candidates.sort_values("id")
    return run.info, config, df.to_dict(orient="records"), config.rung_steps(full), full


def _first_seed(record, archs):
    seeds = record.get("seed_scores")
    seeds = json.loads(seeds) if isinstance(seeds, str) else None
    src = seeds[0] if seeds else record
    return [float(src[f"acc_{a}"]) for a in archs]


def _rung(record, steps, archs):
    rungs = record.get("rung_scores")
    for r in json.loads(rungs) if isinstance(rungs, str) else []:
        if r.get("steps") == steps and all(r.get(f"acc_{a}") is not None for a in archs):
            return [float(r[f"acc_{a}"]) for a in archs]
    return None


def replay(run_dir, zs=(1.0, 2.0, 3.0), min_trainings=None, out=print) -> dict:
    from scipy.stats import kendalltau

    from primitives import Graph
    from search.engine.hurdles import Hurdles
    from search.engine.predictor import MIN_TRAININGS, FullScorePredictor, ProposalPredictor, predicted_stop
    from search.pareto import pareto_mask

    info, config, records, rung_steps, total = _rows(run_dir)
    archs = list(config.archs)
    min_trainings = min_trainings or MIN_TRAININGS
    if len(rung_steps) < 2:
        out(f"{run_dir}: no rungs (hurdles off), nothing to replay")
        return {}
    steps = rung_steps[0]
    predictor = FullScorePredictor(archs, rung_steps, total, min_trainings=min_trainings)
    proposer = ProposalPredictor(archs, min_trainings=min_trainings)
    ok = [r for r in records if r["status"] == "ok" and _rung(r, steps, archs) is not None]
    scores = {int(r["id"]): _first_seed(r, archs) for r in ok}
    table = []      # (id, rung, full, mu, sd, front before it)
    proposals = []  # (full, mu)
    for r in ok:
        rid = int(r["id"])
        graph = Graph.from_json(r["graph"])
        rung, full = _rung(r, steps, archs), scores[rid]
        front_before = [scores[int(q["id"])] for q in ok if int(q["id"]) < rid]
        if front_before:
            pts = np.asarray(front_before)
            front_before = pts[pareto_mask(pts, ["max"] * len(archs))].tolist()
        curves = r.get("loss_curves")
        pred = predictor.predict(0, graph, rung, json.loads(curves) if isinstance(curves, str) else None)
        if pred is not None:
            table.append((rid, rung, full, pred[0], pred[1], front_before))
        parent = r.get("parent_id")
        parent = None if parent is None or parent != parent else scores.get(int(parent))
        p = proposer.predict(graph, parent)
        if p is not None:
            proposals.append((full, p[0]))
        predictor.add(r)
        proposer.add(r, parent)
    allfull = np.asarray([scores[int(r["id"])] for r in ok])
    final_front = {int(ok[i]["id"]) for i in np.flatnonzero(pareto_mask(allfull, ["max"] * len(archs)))}
    out(f"{run_dir}: {len(ok)} ok layers with scores at {steps} of {total} steps; "
        f"{len(table)} predicted (the predictor speaks from {min_trainings} full trainings on)")
    result = {"run": str(run_dir), "layers": len(ok), "predicted": len(table)}
    if len(table) < 3:
        out("  too few predictions for a rank correlation")
        return result
    full = np.asarray([t[2] for t in table])
    rung = np.asarray([t[1] for t in table])
    mu = np.asarray([t[3] for t in table])
    sd = np.asarray([t[4] for t in table])
    out(f"  Kendall tau with the full score on those {len(table)}:   " + "  ".join(f"{a:>12}" for a in archs))
    tau_raw = [kendalltau(rung[:, j], full[:, j]).statistic for j in range(len(archs))]
    tau_pred = [kendalltau(mu[:, j], full[:, j]).statistic for j in range(len(archs))]
    out(f"  {'raw rung score':>44}" + "  ".join(f"{t:>12.2f}" for t in tau_raw))
    out(f"  {'predicted full score':>44}" + "  ".join(f"{t:>12.2f}" for t in tau_pred))
    err = np.abs(mu - full)
    inside = np.mean(np.abs(mu - full) <= 2 * sd, axis=0)
    out(f"  {'mean |error| (predicted)':>44}" + "  ".join(f"{e:>12.4f}" for e in err.mean(axis=0)))
    out(f"  {'share within 2 sd':>44}" + "  ".join(f"{e:>12.2f}" for e in inside))
    result.update(tau_raw=tau_raw, tau_pred=tau_pred)
    saving = 1 - steps / total
    predicted_ids = [t[0] for t in table]
    lost_front = final_front & set(predicted_ids)
    for z in zs:
        stopped = [t[0] for t in table if predicted_stop(t[5], np.asarray(t[3]) + z * np.asarray(t[4]),
                                                         ["max"] * len(archs))]
        lost = sorted(final_front & set(stopped))
        out(f"  predicted hurdle z={z:g}: stops {len(stopped)} of {len(table)} (saves {len(stopped) * saving:.1f} "
            f"full trainings); of the {len(lost_front)} final-front layers among them it stops {len(lost)} {lost}")
        result[f"z{z:g}"] = {"stopped": len(stopped), "lost": lost}
    hurdles = Hurdles(1, config.hurdle_share, config.hurdle_window)
    raw_stopped = []
    for r in ok:
        point = _rung(r, steps, archs)
        if int(r["id"]) in predicted_ids and not hurdles.judge(0, point).passed:
            raw_stopped.append(int(r["id"]))
        hurdles.add(0, point)
    lost = sorted(final_front & set(raw_stopped))
    out(f"  raw hurdle share {config.hurdle_share:g} on the same layers: stops {len(raw_stopped)} "
        f"(saves {len(raw_stopped) * saving:.1f}); final-front layers it stops {len(lost)} {lost}")
    if len(proposals) >= 3:
        pf = np.asarray([p[0] for p in proposals])
        pm = np.asarray([p[1] for p in proposals])
        taus = [kendalltau(pm[:, j], pf[:, j]).statistic for j in range(len(archs))]
        out(f"  proposal model (graph and parent, before training), tau on {len(proposals)}: "
            + "  ".join(f"{a} {t:.2f}" for a, t in zip(archs, taus)))
        result["tau_proposal"] = taus
    return result


# -- part 2: the live head-to-head ----------------------------------------------------------------

ARMS = {"plain": [], "predicted": ["--predicted-hurdles", "--predicted-proposals"]}


def search(args) -> None:
    out = Path(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, flags in ARMS.items():
        if args.part == "resume":
            cmd = ["resume", str(out / name), "--executor", "local", "--quiet"]
        else:
            cmd = ["search", "--executor", "local", "--budget", str(args.budget), "--seed", str(args.seed),
                   "--out", str(out / name), "--quiet", "--no-cache", "--evaluator", args.evaluator,
                   *(["--dataset", args.dataset] if args.dataset else []), *(args.extra or []), *flags]
        procs[name] = subprocess.Popen([sys.executable, "-m", "search.cli", *cmd], env=env,
                                       stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + args.minutes * 60
    while time.monotonic() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(1)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        p.wait(timeout=600)
    report(out)


def _curve(df, archs, ref):
    """(worker-hours so far, hypervolume so far) after each record, in record order."""
    from search.pareto import hypervolume, pareto_mask
    accs = [f"acc_{a}" for a in archs]
    df = df.sort_values("created_at")
    hours, hv, points = [], [], []
    spent = 0.0
    for _, r in df.iterrows():
        spent += float(r["seconds"] or 0.0) / 3600
        if r["status"] == "ok" and all(r[a] == r[a] for a in accs):
            points.append([float(r[a]) for a in accs])
        pts = np.asarray(points)
        front = pts[pareto_mask(pts, ["max"] * len(accs))] if len(pts) else pts
        hv.append(hypervolume(front, ["max"] * len(accs), [ref] * len(accs)) if len(front) else 0.0)
        hours.append(spent)
    return hours, hv


def _side_by_side(curves, step: float = 0.25) -> None:
    """Each arm's hypervolume after the same worker-hours (its last record before that point)."""
    def at(hours, hv, h):
        done = [v for x, v in zip(hours, hv) if x <= h]
        return done[-1] if done else 0.0
    end = max(c[0][-1] for c in curves.values() if c[0])
    marks = [step * k for k in range(1, int(end / step) + 1)] + [end]
    print(f"{'worker-h':>9} " + " ".join(f"{n:>11}" for n in curves))
    for h in marks:
        print(f"{h:>9.2f} " + " ".join(f"{at(*c, h):>11.6f}" for c in curves.values()))


def report(out: Path) -> None:
    from search.analysis.accounting import account
    from search.pareto import pareto_mask
    from search.store.reader import load_run

    runs = {name: load_run(out / name) for name in ARMS if (out / name).is_dir()}
    if len(runs) < 2:
        print(f"{out}: needs both arms ({', '.join(ARMS)})")
        return
    archs = list(next(iter(runs.values())).info["archs"])
    accs = [f"acc_{a}" for a in archs]
    frames = {n: r.candidates for n, r in runs.items()}
    trained = [f[f["status"].isin(["ok", "stopped"])] for f in frames.values()]
    values = [float(t[accs].min().min()) for t in trained if len(t)]
    ref = (min(values) if values else 0.0) - 0.01
    curves = {n: _curve(f, archs, ref) for n, f in frames.items()}
    print(f"{'arm':>10} {'records':>8} {'full':>6} {'stopped':>8} {'worker-h':>9} {'hypervolume':>12}")
    for name, df in frames.items():
        acc = account(df)
        print(f"{name:>10} {len(df):>8} {int((df.status == 'ok').sum()):>6} {int((df.status == 'stopped').sum()):>8} "
              f"{acc.worker_hours:>9.3f} {curves[name][1][-1] if curves[name][1] else 0.0:>12.6f}")
    _side_by_side(curves)
    target = curves["plain"][1][-1] if curves["plain"][1] else 0.0
    plain_hours = curves["plain"][0][-1] if curves["plain"][0] else 0.0
    hours, hv = curves["predicted"]
    reached = next((h for h, v in zip(hours, hv) if v >= target - 1e-12), None)
    if reached is None:
        print(f"predicted arm: never reached the plain arm's final hypervolume {target:.6f} "
              f"({plain_hours:.3f} worker-hours) in its {hours[-1] if hours else 0:.3f}")
    else:
        print(f"predicted arm: reached the plain arm's final hypervolume {target:.6f} after {reached:.3f} "
              f"worker-hours, the plain arm after {plain_hours:.3f}: {reached / plain_hours if plain_hours else 0:.2f}x "
              f"the worker-hours (target: 0.5)")
    plain = frames["plain"]
    ok = plain[plain.status == "ok"]
    pts = ok[accs].to_numpy(dtype=float)
    front = ok[pareto_mask(pts, ["max"] * len(accs))] if len(pts) else ok
    pred = frames["predicted"]
    have = set(pred.loc[pred.status == "ok", "graph_hash"])
    missing = [int(i) for i, h in zip(front["id"], front["graph_hash"]) if h not in have]
    print(f"plain front: {len(front)} layers; the predicted arm trained {len(front) - len(missing)} of them in full "
          f"(missing ids {missing})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part")
    y = sub.add_parser("replay", help="part 1: fit on earlier records, predict later ones (no training)")
    y.add_argument("runs", nargs="+")
    y.add_argument("--z", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    y.add_argument("--min-trainings", type=int, default=None)
    for name in ("search", "resume"):
        s = sub.add_parser(name, help="part 2: the live head-to-head (resume: more minutes)")
        s.add_argument("--minutes", type=float, default=120)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--budget", type=int, default=100000)
        s.add_argument("--evaluator", default="train")
        s.add_argument("--dataset", default=None)
        s.add_argument("--out", default="results/predictor")
        s.add_argument("extra", nargs="*", help="more search flags for both arms (after --)")
    r = sub.add_parser("report")
    r.add_argument("--out", default="results/predictor")
    args = parser.parse_args()
    if args.part == "replay":
        for run in args.runs:
            replay(run, tuple(args.z), args.min_trainings)
            print()
    elif args.part in ("search", "resume"):
        search(args)
    elif args.part == "report":
        report(Path(args.out))
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
