"""The retrain's report: each layer's test accuracy per proxy, and how it compares with the
references (BN-ReLU and the mode's standards on CNN proxies; LayerNorm, RMSNorm, DyT and Derf
on Transformer ones).

`retrain` prints it when it finishes; `evonorm show DIR` prints it again from
DIR/retrain.parquet, so the numbers results/README.md quotes can be regenerated without
training. The comparison is paired (`search.analysis.stats.paired`): every layer trains
with the same seeds, and a seed fixes the initial weights and the data order, so per proxy
the difference layer - reference is taken seed by seed, and its mean is shown with its
Student-t 95% interval (n - 1 degrees of freedom over the n seeds both finished). A layer
"beats" the reference on a proxy (`>`) only where that interval lies above 0 (`<`: below).
Tables of any seed count read the same way (old ones had 3 seeds: wide intervals).
A tuned rate that still sits at an edge of its (widened) range is marked in the table.
"""
from __future__ import annotations

import math
import statistics

from search.analysis.stats import CONFIDENCE, paired

REFERENCE = "bn-relu"
# the layers a search mode's discoveries must beat on CNN proxies: BN-ReLU always; at small
# batch (sample mode) the batch-free standards too; for encrypted inference the square
# activation and the library's polynomial layer. On Transformer proxies: the Transformer
# baselines (primitives.library.TRANSFORMER_BASELINES), whatever the mode.
def references(mode: str, archs=()) -> tuple[str, ...]:
    """The reference layers a retrain on `archs` in `mode` is compared with (CNN ones alone
    without archs); polynomial mode's are its baselines."""
    from evaluators.proxies import families_of
    from primitives.library import POLYNOMIAL_BASELINES, TRANSFORMER_BASELINES  # not at import: torch

    families = families_of(archs)
    cnn = (POLYNOMIAL_BASELINES if mode == "polynomial"
           else {"sample": ("bn-relu", "gn-relu", "evonorm-s0")}.get(mode, (REFERENCE,)))
    return (cnn if "cnn" in families else ()) + (TRANSFORMER_BASELINES if "transformer" in families else ())


def reference_name(rows, reference: str = REFERENCE) -> str | None:
    """The name the reference layer goes by in `rows`: its library name, or a front member's
    `#id` when the search's front held the very same layer (it is then trained once); any
    other layer of `rows` by its own name."""
    from primitives import parse
    from primitives.library import REFERENCE_LAYERS

    formula = str(parse(REFERENCE_LAYERS[reference])) if reference in REFERENCE_LAYERS else None
    names = list(dict.fromkeys(r["layer"] for r in rows if r["layer"] == reference or r["formula"] == formula))
    return names[0] if names else None


def finite_accs(rows, layer, arch) -> list[float]:
    return [r["test_acc"] for r in rows if r["layer"] == layer and r["arch"] == arch
            and r["test_acc"] is not None and math.isfinite(r["test_acc"])]


def mean_se(rows, layer, arch) -> tuple[float, float] | None:
    """A layer's mean test accuracy on a proxy over the seeds and its standard error (0 with
    one seed), or None when no seed gave a finite accuracy."""
    accs = finite_accs(rows, layer, arch)
    if not accs:
        return None
    return statistics.mean(accs), (statistics.stdev(accs) / math.sqrt(len(accs)) if len(accs) > 1 else 0.0)


def proxies(rows) -> tuple[list[str], list[str]]:
    """(searched proxies, held-out proxies) of the rows, in the order `retrain` wrote them."""
    return (list(dict.fromkeys(r["arch"] for r in rows if not r.get("held_out"))),
            list(dict.fromkeys(r["arch"] for r in rows if r.get("held_out"))))


def by_seed(rows, layer, arch) -> dict:
    """seed -> test accuracy (None for a failed training) of a layer on a proxy."""
    return {r["seed"]: r["test_acc"] for r in rows if r["layer"] == layer and r["arch"] == arch}


def versus(rows, archs, reference: str = REFERENCE) -> list[dict]:
    """{layer, arch, n, diff, low, high, verdict} for every other layer and proxy: diff is the
    mean over the seeds both finished of the per-seed difference layer - reference, [low,
    high] its Student-t 95% interval; verdict is "better" or "worse" where the interval
    excludes 0, else "within" (or "n/a" with fewer than 2 paired seeds)."""
    reference = reference_name(rows, reference) or reference
    out = []
    for layer in dict.fromkeys(r["layer"] for r in rows):
        if layer == reference:
            continue
        for arch in archs:
            p = paired(by_seed(rows, layer, arch), by_seed(rows, reference, arch))
            out.append({"layer": layer, "arch": arch, "n": p.n, "diff": p.mean if p.n > 1 else None,
                        "low": p.low, "high": p.high, "verdict": p.verdict})
    return out


def _cell(values) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "failed"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def _columns(header, lines) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = lambda cols: "  ".join(str(c).ljust(w) for c, w in zip(cols, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


def _lr_cell(row) -> str:
    """The tuned rate, marked where it still sits at an edge of its (widened) range."""
    edge = row.get("lr_edge")
    return f"{row['lr']:.3g}" + (f" ({edge} edge!)" if edge else "")


def table(rows, archs, held_out=()) -> str:
    """One line per layer: tuned lr (marked `(high edge!)` / `(low edge!)` where it still sits
    at an edge of its range after the widenings), test accuracy mean ± std per proxy, over
    the searched proxies, and the transfer gap to the held-out ones."""
    header = (["layer", "lr"] + [f"test {a} %" + (" (held out)" if a in held_out else "") for a in archs]
              + ["mean %"] + (["gap %"] if held_out else []) + ["formula"])
    lines = []
    for name in dict.fromkeys(r["layer"] for r in rows):
        mine = [r for r in rows if r["layer"] == name]
        gap = mine[0].get("transfer_gap")
        gap_cell = [("failed" if gap is None or not math.isfinite(gap) else f"{100 * gap:+.2f}")] if held_out else []
        lines.append([name, _lr_cell(mine[0]), *[_cell(finite_accs(rows, name, a)) for a in archs],
                      _cell([r["test_acc"] for r in mine if r["arch"] not in held_out]), *gap_cell,
                      mine[0]["formula"]])
    text = _columns(header, lines)
    edged = [name for name in dict.fromkeys(r["layer"] for r in rows)
             if next(r for r in rows if r["layer"] == name).get("lr_edge")]
    if edged:
        text += ("\n" + ", ".join(edged) + ": the tuned rate sits at an edge of its range after the "
                 "widenings (its best may lie beyond)")
    return text


def _points(v: float) -> str:
    return f"{100 * v:+.2f}"


def versus_table(rows, archs, reference: str = REFERENCE) -> str:
    """Per layer and proxy: the mean per-seed difference to the reference in points and its
    Student-t 95% interval, `+0.83 [+0.61, +1.05] >`, with `>` / `<` where the interval excludes
    0; then one line saying whether any layer beats the reference anywhere."""
    name = reference_name(rows, reference)
    if name is None:
        return f"no {reference} in the retrain: nothing to compare with"
    results = versus(rows, archs, reference)
    label = reference if name == reference else f"{reference} ({name})"
    mark = {"better": " >", "worse": " <", "within": "", "n/a": ""}
    lines = []
    for layer in dict.fromkeys(v["layer"] for v in results):
        cells = []
        for v in (v for v in results if v["layer"] == layer):
            cells.append("n/a" if v["diff"] is None else
                         f"{_points(v['diff'])} [{_points(v['low'])}, {_points(v['high'])}]{mark[v['verdict']]}")
        lines.append([layer, *cells])
    level = f"{100 * CONFIDENCE:.0f}%"
    pairs = sorted({v["n"] for v in results if v["n"]})
    n = "/".join(map(str, pairs)) or "0"
    winners = sorted({f"{v['layer']} on {v['arch']}" for v in results if v["verdict"] == "better"})
    verdict = (f"paired {level} interval above {label}: " + ", ".join(winners) if winners
               else f"no layer beats {label} (paired {level} interval above 0) on any proxy")
    header = ["vs " + label, *[f"{a} (pts, {level} CI)" for a in archs]]
    return "\n".join([_columns(header, lines), verdict + f"; {n} seed pairs, Student t with n-1 df"])


def report(rows, mode: str = "batch") -> str:
    """The accuracy table and one comparison per reference of `mode`, for rows in the order
    `retrain` writes them (searched proxies, then the held-out ones)."""
    archs, held_out = proxies(rows)
    parts = [table(rows, archs + held_out, held_out)]
    parts += [versus_table(rows, archs + held_out, ref) for ref in references(mode, archs + held_out)]
    return "\n\n".join(parts)


def read_studies(path) -> dict[str, list[dict]]:
    """The retrain's lr studies in the Optuna journal file `path` (`retrain`'s
    DIR/retrain-studies.journal), read back with Optuna: {layer: [{number, lr, value, range,
    stage, val_<arch>..., state}]} in the order the layers were tuned, trials in order."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(path)))
    out = {}
    for name in optuna.study.get_all_study_names(storage=storage):
        study = optuna.load_study(study_name=name, storage=storage)
        out[name] = [{"number": t.number, "lr": t.params.get("lr"), "value": t.value, "state": t.state.name,
                      **t.user_attrs} for t in study.get_trials(deepcopy=False)]
    return out


def trials_table(path) -> str:
    """Each layer's lr trials (`evonorm show DIR --trials`): rate, validation mean and per-proxy
    accuracies, the range it was drawn from (widened ones marked), `*` at the best."""
    studies = read_studies(path)
    if not studies:
        return f"{path}: no lr studies"
    parts = []
    for name, trials in studies.items():
        done = [t for t in trials if t["value"] is not None]
        best = max(done, key=lambda t: t["value"]) if done else None
        ranges = list(dict.fromkeys(tuple(t.get("range") or ()) for t in trials))
        say = " -> ".join(f"{r[0]:.3g}..{r[1]:.3g}" for r in ranges if r)
        head = (f"{name}: {len(trials)} trials, range {say}"
                + (f", best lr {best['lr']:.4g} (val {100 * best['value']:.2f}%)" if best else ""))
        archs = list(dict.fromkeys(k[4:] for t in trials for k in t if k.startswith("val_")))
        lines = []
        for t in trials:
            accs = [t.get(f"val_{a}") for a in archs]
            lines.append([("*" if t is best else "") + str(t["number"]), f"{t['lr']:.4g}" if t["lr"] else "-",
                          "-" if t["value"] is None else f"{100 * t['value']:.2f}",
                          *["failed" if a is None else f"{100 * a:.2f}" for a in accs],
                          "{:.3g}..{:.3g}".format(*t["range"]) if t.get("range") else "-",
                          (f"after {t['stage']} widening" + ("s" if t["stage"] > 1 else "")) if t.get("stage") else ""])
        header = ["trial", "lr", "val %", *[f"{a} %" for a in archs], "range", ""]
        parts.append(head + "\n" + "\n".join("  " + line for line in _columns(header, lines).splitlines()))
    return "\n\n".join(parts)
