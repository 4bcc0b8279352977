"""What a new user pays before seeing anything, and what the training cache gives back.

Runs the README's default search (`evonorm search`, its defaults, one seed) twice, one
after the other, each into its own directory for N minutes (then SIGTERM), sharing one
training cache (`EVONORM_CACHE`, a fresh folder unless given): the first run fills it, the
second finds the library seeds (and whatever else the first trained) there. Printed per
run: records, how many came from the cache, worker-seconds, and the seconds from its start
to its first non-seed record (the first proposal of its own) and to its first recorded
non-seed `ok` layer.

Measure it ALONE on the machine (nothing else training): the lead's job.

    python benchmarks/first_minutes.py --minutes 10 --out results/first-minutes
    python benchmarks/first_minutes.py --minutes 0.5 --out /tmp/fm -- --evaluator surrogate --dataset synthetic
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_once(out: Path, minutes: float, cache: str, extra) -> float:
    """One default search into `out` for `minutes`; returns when it started (epoch seconds)."""
    env = {**os.environ, "EVONORM_CACHE": cache}
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "search", "--out", str(out), "--quiet",
                             "--budget", "100000", *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + minutes * 60
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=600)
    return started


def summary(out: Path, started: float) -> dict:
    import pandas as pd

    from search.store.reader import load_run
    df = load_run(out).candidates.sort_values("id")
    t = pd.Series([pd.Timestamp(v).timestamp() - started for v in df["created_at"]], index=df.index)
    own = df["mutation"] != "seed"
    cached = df["cached"].fillna(False).astype(bool) if "cached" in df else pd.Series(False, index=df.index)
    return {"records": len(df), "cached": int(cached.sum()), "ok": int((df["status"] == "ok").sum()),
            "worker_s": float(df["seconds"].fillna(0).sum()),
            "first_proposal_s": float(t[own].min()) if own.any() else None,
            "first_own_ok_s": float(t[own & (df["status"] == "ok")].min()) if (own & (df["status"] == "ok")).any()
            else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--out", default="results/first-minutes")
    parser.add_argument("--cache", default=None, help="EVONORM_CACHE for both runs (default: a fresh folder)")
    parser.add_argument("extra", nargs="*", help="more `evonorm search` flags (after --)")
    args = parser.parse_args()
    out = Path(args.out)
    cache = args.cache or tempfile.mkdtemp(prefix="evonorm-cache-")
    rows = {}
    for name in ("first", "second"):
        started = run_once(out / name, args.minutes, cache, args.extra)
        rows[name] = summary(out / name, started)
    print(f"default search, {args.minutes:g} minutes each, one training cache ({cache})")
    print(f"{'run':>7} {'records':>8} {'cached':>7} {'ok':>4} {'worker-s':>9} {'first proposal s':>17} "
          f"{'first own ok s':>15}")
    for name, r in rows.items():
        fmt = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
        print(f"{name:>7} {r['records']:>8} {r['cached']:>7} {r['ok']:>4} {r['worker_s']:>9.1f} "
              f"{fmt(r['first_proposal_s']):>17} {fmt(r['first_own_ok_s']):>15}")


if __name__ == "__main__":
    main()
