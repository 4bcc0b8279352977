"""The picture of a run (`evonorm plot`): one front per pair of objectives, the best accuracy
and the hypervolume against candidates recorded, the outcome of every candidate, and the
retrain when there is one.

    from search.analysis.plots import plot_run
    plot_run("results/example", "front.png")        # a Run or its directory; .png, .pdf or .svg
"""
from __future__ import annotations

from primitives.util import is_missing
from search.analysis.drawing import image_output
from search.analysis.report import references
from search.errors import ConfigError
from search.store.files import write_atomic

STATUS_COLORS = {"ok": "#2a9d3f", "invalid": "#9e9e9e", "duplicate": "#b0b7c3", "equivalent": "#8fa3bf",
                 "unstable": "#e07b39", "low_quality": "#d4a017", "failed": "#c0392b"}
BASELINE_MARKERS = ["*", "D", "P", "X", "^", "v", "s", "h"]
BASELINE_COLORS = ["gold", "#17becf", "#e377c2", "#bcbd22", "#ff9896", "#98df8a", "#c5b0d5", "#f7b6d2"]
PROXY_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]


MEAN_ACC = "acc_mean"       # the mean proxy accuracy, plotted against a minimised objective


def _label(col: str) -> str:
    if col == MEAN_ACC:
        return "mean proxy accuracy"
    if col.startswith("acc_"):
        return f"{col[4:]} accuracy"
    return {"params_per_channel": "parameters per channel",
            "he_depth": "multiplicative depth (CKKS)"}.get(col, col)


REFERENCE_MARGIN = 0.05   # of an objective's range over the accepted candidates


def reference_point(values, objectives):
    """For a maximised accuracy, the nadir of the final front (its worst value there) less
    a margin of REFERENCE_MARGIN of the range seen (at least 0.001); for a minimised cost,
    10% beyond the worst value seen. With the reference at 0 an accuracy of 0.88 spans
    nearly the whole box and the gains a search makes (a point or two) vanish: the curve
    was flat from the first candidates on. Measured from the final front's nadir, the
    hypervolume counts exactly the region the search fought over; every final front
    member lies inside it."""
    import numpy as np

    from search.pareto import pareto_mask

    front = values[pareto_mask(values, [g for _, g in objectives])] if len(values) else values
    ref = []
    for j, (col, goal) in enumerate(objectives):
        if goal == "max":
            if not len(values):
                ref.append(0.0)
                continue
            margin = max(REFERENCE_MARGIN * float(np.ptp(values[:, j])), 1e-3)
            ref.append(float(np.min(front[:, j])) - margin)
        else:
            worst = float(np.nanmax(values[:, j])) if len(values) else 1.0
            ref.append(worst * 1.1 + 1.0)
    return ref


def progress(run, checkpoints: int = 150):
    """(x, best accuracy per proxy, hypervolume) at up to `checkpoints` record counts."""
    import numpy as np

    from search.pareto import hypervolume, pareto_mask

    df = run.candidates
    objs = run.objectives
    goals = [g for _, g in objs]
    n = len(df)
    ok = (df["status"] == "ok").to_numpy(dtype=bool)
    vals = df[[c for c, _ in objs]].astype("float64").to_numpy(na_value=np.nan)
    usable = ok & ~np.isnan(vals).any(axis=1)
    ref = reference_point(vals[usable], objs)
    accs = {a: df[a].astype("float64").to_numpy(na_value=np.nan) for a in run.acc_columns}
    best = {a: np.fmax.accumulate(np.where(ok, v, np.nan)) for a, v in accs.items()}
    xs = np.unique(np.linspace(1, n, min(n, checkpoints)).round().astype(int)) if n else np.array([], int)
    hv = []
    front = np.empty((0, len(objs)))
    start, last = 0, 0.0
    for x in xs:
        block = vals[start:x][usable[start:x]]
        if len(block):
            pts = np.vstack([front, block])
            front = pts[pareto_mask(pts, goals)]
            last = hypervolume(front, goals, ref)
        start = x
        hv.append(last)
    return xs, {a: b[xs - 1] if len(xs) else b for a, b in best.items()}, np.array(hv), ref


def plot_run(run, output, dpi: int = 120):
    """Draw `run` (a Run, or its directory) into the image `output` (.png, .pdf or .svg,
    checked before the run is read, then written atomically; `draw` writes to a file
    object). Returns the path written. Bad input is an EvonormError: the path (ConfigError,
    UnwritableError), the dpi (ConfigError), the directory (RunDirError)."""
    from search.store.reader import Run, load_run

    path, fmt = image_output(output)
    if dpi < 20 or dpi > 1200:
        raise ConfigError("--dpi must be between 20 and 1200")
    if not isinstance(run, Run):
        run = load_run(run)
    write_atomic(path, lambda f: draw(run, f, dpi=dpi, fmt=fmt))
    return path


def draw(run, output, dpi: int = 120, fmt: str | None = None) -> None:
    """The figure into `output` (a path, or a binary file with `fmt` png/pdf/svg): one
    front per pair of objectives, best accuracy and hypervolume against candidates
    recorded, and the outcome of every candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import itertools

    import matplotlib.pyplot as plt

    df = run.candidates
    accs = run.acc_columns
    ok = df[df["status"] == "ok"]
    pairs = list(itertools.combinations(accs, 2)) or [(accs[0], "params_per_channel")]
    # each minimised objective (a cost, the multiplicative depth) against the mean accuracy
    costs = [c for c, _ in run.objectives if not c.startswith("acc_") and (accs[0], c) not in pairs]
    if costs:
        ok = ok.assign(**{MEAN_ACC: ok[accs].astype("float64").mean(axis=1, skipna=False)})
        pairs += [(c, MEAN_ACC) for c in costs]
    retrained = run.retrain_rows()
    n_panels = len(pairs) + 3 + bool(retrained)
    ncols = 2 if n_panels <= 4 else 3
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 5.0 * nrows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[n_panels:]:
        ax.axis("off")
    front_ids = set(run.front()["id"].tolist())
    recorded = run.info.get("baselines") if isinstance(run.info.get("baselines"), dict) else {}
    baselines = {k: dict(v) if isinstance(v, dict) else v for k, v in recorded.items()}
    baselines.update({k: v for k, v in _recorded_baselines(df, accs, run.mode).items() if k not in baselines})
    for name, scores in baselines.items():
        if isinstance(scores, dict) and all(scores.get(a) is not None for a in accs):
            scores.setdefault(MEAN_ACC, sum(scores[a] for a in accs) / len(accs))
            _graph_objectives(name, scores, costs)
    for ax, (cx, cy) in zip(axes, pairs):
        _front_panel(ax, ok, cx, cy, front_ids, baselines)
    xs, best, hv, ref = progress(run)
    _best_panel(axes[len(pairs)], xs, best, accs)
    _hypervolume_panel(axes[len(pairs) + 1], xs, hv, ref, run.objectives)
    _funnel_panel(axes[len(pairs) + 2], df)
    if retrained:
        _retrain_panel(axes[len(pairs) + 3], retrained, references(run.mode, {r["arch"] for r in retrained}))
    fig.suptitle(f"evonorm run {run.name}: {len(df)} candidates, {len(ok)} accepted, "
                 f"{len(front_ids)} on the front", fontsize=14, fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(output, dpi=dpi, format=fmt)
    plt.close(fig)


def _graph_objectives(name: str, scores: dict, costs) -> None:
    """A library baseline's minimised objectives that come from its graph (its depth, its
    parameters per channel), so it shows on those panels too."""
    from primitives import parse
    from primitives.library import REFERENCE_LAYERS

    if name not in REFERENCE_LAYERS:
        return
    graph = parse(REFERENCE_LAYERS[name])
    for col in costs:
        if col in ("he_depth", "params_per_channel") and getattr(graph, col) is not None:
            scores.setdefault(col, getattr(graph, col))


def _front_panel(ax, ok, cx, cy, front_ids, baselines) -> None:
    """The accepted candidates on two objectives, the front of this pair (annotated with
    ids when short), members of the full front it misses, and the baselines."""
    goals = ["max" if c.startswith("acc_") else "min" for c in (cx, cy)]
    sub = ok[[cx, cy, "id"]].astype({cx: "float64", cy: "float64"}).dropna()
    pts = sub[[cx, cy]].to_numpy()
    mask = _front_points(ax, sub, pts, goals, front_ids) if len(pts) else None
    if mask is None:
        ax.text(0.5, 0.5, "no accepted candidates yet", ha="center", va="center", transform=ax.transAxes)
    _baseline_points(ax, baselines, cx, cy)
    _zoom_on_front(ax, pts, mask, baselines, cx, cy)
    ax.set_xlabel(_label(cx), fontsize=11)
    ax.set_ylabel(_label(cy), fontsize=11)
    ax.set_title(f"Pareto front: {_label(cx)} vs {_label(cy)}", fontsize=12)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8.5, loc="lower left", framealpha=0.85)


def _front_points(ax, sub, pts, goals, front_ids):
    """Scatter the candidates and step along this pair's front; return its mask."""
    import numpy as np

    from search.pareto import pareto_mask

    mask = pareto_mask(pts, goals)
    on_run_front = sub["id"].isin(front_ids).to_numpy()
    ax.scatter(pts[~mask, 0], pts[~mask, 1], s=14, c="#9aa5b1", alpha=0.55, linewidths=0,
               label=f"accepted candidates ({len(pts)})")
    fp = pts[mask]
    order = np.argsort(fp[:, 0])
    fp = fp[order]
    ax.step(fp[:, 0], fp[:, 1], where="post" if goals[1] == "max" else "pre",
            color="#d62728", lw=1.5, alpha=0.8)
    ax.scatter(fp[:, 0], fp[:, 1], s=46, c="#d62728", edgecolors="black", linewidths=0.6, zorder=3,
               label=f"front of this pair ({len(fp)})")
    extra = on_run_front & ~mask
    if extra.any():
        ax.scatter(pts[extra, 0], pts[extra, 1], s=30, facecolors="none", edgecolors="#ff7f0e",
                   linewidths=1.2, zorder=3, label="on the full front (all objectives)")
    if len(fp) <= 12:
        ids = sub["id"].to_numpy()[mask][order]
        for (x, y), i in zip(fp, ids):
            ax.annotate(f"#{int(i)}", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8,
                        color="#7a1010")
    return mask


def _baseline_points(ax, baselines, cx, cy) -> None:
    import itertools

    for (name, scores), marker, color in zip(baselines.items(), itertools.cycle(BASELINE_MARKERS),
                                             itertools.cycle(BASELINE_COLORS)):
        if not isinstance(scores, dict) or scores.get(cx) is None or scores.get(cy) is None:
            continue
        ax.scatter([scores[cx]], [scores[cy]], marker=marker, s=220 if marker == "*" else 110, c=color,
                   edgecolors="black", linewidths=0.9, zorder=4, alpha=0.85, label=f"baseline {name}")


def _best_panel(ax, xs, best, accs) -> None:
    """Best accuracy per proxy against candidates recorded."""
    import itertools

    import numpy as np

    for color, a in zip(itertools.cycle(PROXY_COLORS), accs):
        y = best[a]
        if len(xs) and np.isfinite(y).any():
            ax.plot(xs, y, color=color, lw=2, drawstyle="steps-post", label=f"{a[4:]} (best {np.nanmax(y):.3f})")
    ax.set_xlabel("candidates recorded", fontsize=11)
    ax.set_ylabel("best accuracy so far", fontsize=11)
    ax.set_title("Best accuracy per proxy", fontsize=12)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no accepted candidates yet", ha="center", va="center", transform=ax.transAxes)


def _hypervolume_panel(ax, xs, hv, ref, objectives) -> None:
    """Hypervolume of the front so far, with the reference point named."""
    if len(xs):
        ax.plot(xs, hv, color="#6a3d9a", lw=2, drawstyle="steps-post")
        ax.fill_between(xs, hv, step="post", color="#6a3d9a", alpha=0.15)
    ref_text = ", ".join(f"{c[4:] if c.startswith('acc_') else c} {r:.3g}" for (c, _), r in zip(objectives, ref))
    ref_text = f"final front's nadir - {REFERENCE_MARGIN:.0%} of the range:\n{ref_text}"
    ax.set_xlabel("candidates recorded", fontsize=11)
    ax.set_ylabel("hypervolume", fontsize=11)
    ax.set_title(f"Hypervolume of the front over {len(objectives)} objectives", fontsize=12)
    ax.text(0.98, 0.04, f"reference: {ref_text}", ha="right", va="bottom", transform=ax.transAxes, fontsize=8.5,
            color="#444444", bbox=dict(facecolor="white", edgecolor="none", alpha=0.8))
    ax.grid(alpha=0.3)


def _funnel_panel(ax, df) -> None:
    """How many candidates ended in each status (the rejection funnel)."""
    import numpy as np

    from search.store.reader import STATUSES

    counts = df["status"].value_counts()
    statuses = list(STATUSES) + sorted(set(counts.index) - set(STATUSES))
    values = [int(counts.get(s, 0)) for s in statuses]
    ypos = np.arange(len(statuses))[::-1]
    ax.barh(ypos, values, color=[STATUS_COLORS.get(s, "#777777") for s in statuses], edgecolor="black",
            linewidth=0.5)
    ax.set_yticks(ypos, [s.replace("_", " ") for s in statuses], fontsize=10)
    total = max(sum(values), 1)
    for y, v in zip(ypos, values):
        ax.text(v, y, f" {v} ({100 * v / total:.0f}%)", va="center", fontsize=9)
    ax.set_xlim(0, max(values + [1]) * 1.3)
    ax.set_xlabel("candidates", fontsize=11)
    ax.set_title(f"Outcome of {len(df)} candidates", fontsize=12)
    ax.grid(axis="x", alpha=0.3)


def _retrain_panel(ax, rows, references) -> None:
    """The retrain against its first reference (the first layer when none was trained), per
    proxy: each layer's mean per-seed difference in points with its paired Student-t 95%
    interval, the verdicts `evonorm show` prints; the reference is the dashed 0, the other
    references hollow. Differences, not accuracies, so proxies at 60% and 80% share one axis.
    A layer far below (a collapse) would flatten the rest: it falls below the axes, counted."""
    from search.analysis.report import proxies, reference_name, versus

    archs, held_out = proxies(rows)
    archs += held_out
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    present = [(ref, name) for ref in references if (name := reference_name(rows, ref))]
    names = [name for _, name in present]
    reference, base = present[0] if present else (layers[0], layers[0])
    results = versus(rows, archs, reference)
    label = base if base == reference else f"{reference} ({base})"
    width, lows, highs, diffs = 0.8 / len(layers), [], [], []
    for i, layer in enumerate(layers):
        if layer == base:
            continue
        points = [(j - 0.4 + (i + 0.5) * width, 100 * v["diff"], 100 * (v["diff"] - v["low"]), 100 * (v["high"] - v["diff"]))
                  for j, arch in enumerate(archs) for v in results
                  if v["layer"] == layer and v["arch"] == arch and v["diff"] is not None]
        if not points:
            continue
        xs, ys, below, above = zip(*points)
        diffs += ys
        lows += [y - b for y, b in zip(ys, below)]
        highs += [y + a for y, a in zip(ys, above)]
        hollow = layer in names
        ax.errorbar(xs, ys, yerr=[below, above], fmt="s" if hollow else "o", capsize=3, markersize=6,
                    mfc="white" if hollow else None, label=f"{layer} (reference)" if hollow else layer)
    ax.axhline(0.0, color="#555555", linestyle="--", linewidth=1, label=f"{label} (0)")
    if diffs:
        top = max(highs + [0.0]) + 0.5
        bottom = max(min(lows + [0.0]), top - 20.0) - 0.5
        ax.set_ylim(bottom, top)
        below = sum(d < bottom for d in diffs)
        if below:
            ax.text(0.99, 0.01, f"{below} mean(s) below the axes", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=8, color="#555555")
    ax.set_xticks(range(len(archs)), [a + ("\n(held out)" if a in held_out else "") for a in archs])
    ax.set_ylabel(f"test accuracy - {label}, points (paired 95% CI)", fontsize=11)
    seeds = len({r["seed"] for r in rows})
    ax.set_title(f"Retrain vs {label}: {len(layers)} layers, {seeds} seeds", fontsize=12)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))   # the next cell is always free
    ax.grid(axis="y", alpha=0.3)


def _recorded_baselines(df, accs, mode: str = "batch") -> dict:
    """Scores of the mode's baseline layers (batch: BN-ReLU, GN-ReLU, EvoNorm-B0/S0) where
    the run trained them itself, e.g. as seeds of its first population."""
    from primitives import parse
    from primitives.library import REFERENCE_LAYERS, baselines

    out = {}
    for name in baselines(mode):
        rows = df[(df["graph_hash"] == parse(REFERENCE_LAYERS[name]).hash) & (df["status"] == "ok")]
        if len(rows):
            out[name] = {c: float(rows.iloc[0][c]) for c in accs if not is_missing(rows.iloc[0][c])}
    return out


def _zoom_on_front(ax, pts, mask, baselines, cx, cy):
    """Frame the front and the baselines: layers near chance accuracy would otherwise
    squeeze what matters into a corner. Says how many points fall outside."""
    import numpy as np

    if mask is None or not mask.any() or not (cx.startswith("acc_") and cy.startswith("acc_")):
        return
    keep = [pts[mask]] + [[[b[cx], b[cy]]] for b in baselines.values()
                          if isinstance(b, dict) and b.get(cx) is not None and b.get(cy) is not None]
    lows = np.concatenate([np.asarray(k, dtype=float) for k in keep]).min(axis=0)
    span = np.maximum(1.0 - lows, 0.02)
    lo = np.maximum(lows - 0.6 * span, 0.0)
    outside = int(((pts[:, 0] < lo[0]) | (pts[:, 1] < lo[1])).sum())
    if outside == 0:
        return
    hi = np.minimum(pts[mask].max(axis=0) + 0.25 * span, 1.0)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.text(0.99, 0.01, f"{outside} accepted candidate(s) below the axes", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=8, color="#555555")
