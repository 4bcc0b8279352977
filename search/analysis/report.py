"""The retrain's report: each layer's test accuracy per proxy, and how it compares with BN-ReLU.

`retrain` prints it when it finishes; `evonorm show DIR` prints it again from
DIR/retrain.parquet, so the numbers results/README.md quotes can be regenerated without
training. A layer "beats" the reference on a proxy when its mean test accuracy
exceeds the reference's by more than two standard errors of the difference
(Welch's: sqrt(s1²/n1 + s2²/n2) over the seeds). With 3 seeds that is a loose
screen, not a significance test: Student's t at 2+2 degrees of freedom puts the
5% two-sided bar near 2.8 standard errors.
"""
from __future__ import annotations

import math
import statistics

REFERENCE = "bn-relu"
# the layers a search mode's discoveries must beat: BN-ReLU always; at small batch (sample
# mode) the batch-free standards too; for encrypted inference the square activation and
# the library's polynomial layer
def references(mode: str) -> tuple[str, ...]:
    """The reference layers of a run in `mode`; polynomial mode's are its baselines."""
    if mode == "polynomial":
        from primitives.library import POLYNOMIAL_BASELINES  # not at import: it loads torch

        return POLYNOMIAL_BASELINES
    return {"sample": ("bn-relu", "gn-relu", "evonorm-s0")}.get(mode, (REFERENCE,))


def reference_name(rows, reference: str = REFERENCE) -> str | None:
    """The name the reference layer goes by in `rows`: its library name, or a front member's
    `#id` when the search's front held the very same layer (it is then trained once)."""
    from primitives import parse
    from primitives.library import REFERENCE_LAYERS

    formula = str(parse(REFERENCE_LAYERS[reference]))
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


def versus(rows, archs, reference: str = REFERENCE) -> list[dict]:
    """{layer, arch, diff, se, verdict} for every other layer and proxy: diff is the layer's
    mean test accuracy minus the reference's; verdict is "better" or "worse" beyond two
    standard errors, else "within" (or "n/a" with fewer than 2 seeds or a failed side)."""
    reference = reference_name(rows, reference) or reference
    out = []
    for layer in dict.fromkeys(r["layer"] for r in rows):
        if layer == reference:
            continue
        for arch in archs:
            mine, ref = finite_accs(rows, layer, arch), finite_accs(rows, reference, arch)
            if len(mine) < 2 or len(ref) < 2:
                out.append({"layer": layer, "arch": arch, "diff": None, "se": None, "verdict": "n/a"})
                continue
            diff = statistics.mean(mine) - statistics.mean(ref)
            se = math.sqrt(statistics.variance(mine) / len(mine) + statistics.variance(ref) / len(ref))
            verdict = "better" if diff > 2 * se else "worse" if diff < -2 * se else "within"
            out.append({"layer": layer, "arch": arch, "diff": diff, "se": se, "verdict": verdict})
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


def table(rows, archs, held_out=()) -> str:
    """One line per layer: tuned lr, test accuracy mean ± std per proxy, over the searched
    proxies, and the transfer gap to the held-out ones."""
    header = (["layer", "lr"] + [f"test {a} %" + (" (held out)" if a in held_out else "") for a in archs]
              + ["mean %"] + (["gap %"] if held_out else []) + ["formula"])
    lines = []
    for name in dict.fromkeys(r["layer"] for r in rows):
        mine = [r for r in rows if r["layer"] == name]
        gap = mine[0].get("transfer_gap")
        gap_cell = [("failed" if gap is None or not math.isfinite(gap) else f"{100 * gap:+.2f}")] if held_out else []
        lines.append([name, f"{mine[0]['lr']:.3g}", *[_cell(finite_accs(rows, name, a)) for a in archs],
                      _cell([r["test_acc"] for r in mine if r["arch"] not in held_out]), *gap_cell,
                      mine[0]["formula"]])
    return _columns(header, lines)


def versus_table(rows, archs, reference: str = REFERENCE) -> str:
    """Per layer and proxy: difference to the reference in points ± its standard error, with
    `>` / `<` where it is beyond two standard errors; then one line saying whether any layer
    beats the reference anywhere."""
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
            cells.append("n/a" if v["diff"] is None
                         else f"{100 * v['diff']:+.2f} ± {100 * v['se']:.2f}{mark[v['verdict']]}")
        lines.append([layer, *cells])
    winners = sorted({f"{v['layer']} on {v['arch']}" for v in results if v["verdict"] == "better"})
    verdict = (f"beyond 2 standard errors above {label}: " + ", ".join(winners) if winners
               else f"no layer beats {label} beyond 2 standard errors on any proxy")
    return "\n".join([_columns(["vs " + label, *[f"{a} (pts ± SE)" for a in archs]], lines), verdict])


def report(rows, mode: str = "batch") -> str:
    """The accuracy table and one comparison per reference of `mode`, for rows in the order
    `retrain` writes them (searched proxies, then the held-out ones)."""
    archs, held_out = proxies(rows)
    parts = [table(rows, archs + held_out, held_out)]
    parts += [versus_table(rows, archs + held_out, ref) for ref in references(mode)]
    return "\n\n".join(parts)
