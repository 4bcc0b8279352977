"""The proof under encryption: a trained network whose layer positions run under CKKS.

    doc = he_export(model, graph, val_batches)           # primitives.he: the exported document
    report = prove(model, graph, doc, test_x[:100], test_y[:100])
    print(format_report(report))

`prove` runs the network on N images twice. Once in plaintext (eval mode). Once with every
position of the layer replaced by its encrypted evaluation: the position's real input (what
the positions before it, themselves decrypted, produced) is encrypted channel by channel
with TenSEAL, the document's polynomial is evaluated homomorphically (`polyval`, in a
context with exactly the document's depth in levels), decrypted, and put back in place of
the layer's output; the convolutions between positions stay in plaintext. It reports per
position the error of the decrypted output against the plaintext eval-mode layer (in
float64) on the same input, the inputs outside the document's interval, the values, the
ciphertexts and the time per thousand values; that one level fewer does not evaluate the
layer; and the predictions with the decrypted outputs put back against the plaintext ones
(agreement, and accuracy of each). docs/he.md has the measured numbers.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from primitives import Graph
from primitives.he import CKKS, fits_depth, layer_positions


@torch.no_grad()
def prove(model: torch.nn.Module, graph: Graph, document: dict, images: torch.Tensor,
          labels: torch.Tensor | None = None) -> dict:
    """Run `model` on `images` with every position of `graph`'s layer evaluated under CKKS
    from `document` (`primitives.he.he_export` of the same trained model); see the module
    docstring. Returns the report (a dict; `format_report` prints it)."""
    start = time.perf_counter()
    positions = layer_positions(model, graph)
    if len(positions) != len(document["positions"]):
        raise ValueError(f"the document has {len(document['positions'])} positions, the model {len(positions)}")
    ckks = CKKS(document["ckks"])
    was_training = model.training
    model.eval()
    rows = []

    def hook(i, module):
        exact = copy.deepcopy(module).double().eval()           # the plaintext eval-mode layer, float64
        entry = document["positions"][i]

        def replace(mod, args, out):
            x = args[0].detach()
            reference = exact(x.double()).numpy()
            y, seconds = ckks.evaluate(x.double().numpy(), entry["coefficients"])
            error = np.abs(y - reference)
            interval = entry.get("interval")
            outside = int(((x < interval[0]) | (x > interval[1])).sum()) if interval else None
            rows.append({"index": i, "name": entry["name"], "channels": int(x.shape[1]), "values": int(x.numel()),
                         "input_min": float(x.min()), "input_max": float(x.max()), "interval": interval,
                         "outside_interval": outside, "max_abs_output": float(np.abs(reference).max()),
                         "max_abs_error": float(error.max()), "mean_abs_error": float(error.mean()), **seconds})
            return torch.as_tensor(y, dtype=out.dtype)
        return replace

    try:
        plain = model(images)
        handles = [m.register_forward_hook(hook(i, m)) for i, (_, m) in enumerate(positions)]
        try:
            encrypted = model(images)
        finally:
            for h in handles:
                h.remove()
    finally:
        model.train(was_training)
    coefficients = document["positions"][0]["coefficients"][0]
    depth = document["depth"]
    report = {
        "formula": document["formula"], "depth": depth, "ckks": ckks.params, "images": int(len(images)),
        "positions": rows,
        # the depth claim on the layer's own polynomial: exactly `depth` levels evaluate it, one fewer does not
        "depth_check": {"levels": depth, "evaluates": fits_depth(coefficients, depth),
                        "one_fewer_evaluates": fits_depth(coefficients, depth - 1) if depth else None},
        "predictions": _predictions(plain, encrypted, labels),
        "seconds": time.perf_counter() - start,
    }
    return report


def _predictions(plain, encrypted, labels) -> dict:
    p, e = plain.argmax(1), encrypted.argmax(1)
    out = {"agreement": float((p == e).float().mean()),
           "max_logit_difference": float((plain - encrypted).abs().max())}
    if labels is not None:
        out["accuracy_plain"] = float((p == labels).float().mean())
        out["accuracy_encrypted"] = float((e == labels).float().mean())
    return out


def format_report(report: dict) -> str:
    """The report as text: the CKKS parameters and depth check, a table per position, and
    the predictions."""
    p = report["ckks"]
    check = report["depth_check"]
    one_fewer = check["one_fewer_evaluates"]
    lines = [
        f"layer      {report['formula']}",
        f"CKKS       TenSEAL, poly_modulus_degree {p['poly_modulus_degree']}, coeff_mod_bit_sizes "
        f"{p['coeff_mod_bit_sizes']}, scale 2^{p['global_scale_bits']}, {p['slots']} slots, "
        f"{p['security_bits']}-bit security",
        f"depth      {report['depth']}: {_levels(check['levels'])} evaluate the layer: "
        f"{'yes' if check['evaluates'] else 'NO'}; {_levels(check['levels'] - 1)}: "
        f"{'n/a' if one_fewer is None else 'yes (!)' if one_fewer else 'no (scale out of bounds)'}",
        f"images     {report['images']}, every position encrypted (its input is what the decrypted positions "
        f"before it produced)",
        "",
    ]
    header = ("pos", "name", "ch", "values", "cts", "fill", "input range", "outside", "max |y|", "max err",
              "mean err", "eval ms/1k", "total ms/1k")
    table = []
    for r in report["positions"]:
        total = r["encrypt"] + r["evaluate"] + r["decrypt"]
        table.append((str(r["index"]), r["name"], str(r["channels"]), str(r["values"]), str(r["ciphertexts"]),
                      f"{r['values'] / (r['ciphertexts'] * p['slots']):.0%}",
                      f"[{r['input_min']:.3g}, {r['input_max']:.3g}]",
                      "-" if r["outside_interval"] is None else str(r["outside_interval"]),
                      f"{r['max_abs_output']:.3g}", f"{r['max_abs_error']:.2e}", f"{r['mean_abs_error']:.2e}",
                      f"{1e6 * r['evaluate'] / r['values']:.2f}", f"{1e6 * total / r['values']:.2f}"))
    widths = [max(len(h), *(len(row[j]) for row in table)) for j, h in enumerate(header)]
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table]
    rows = report["positions"]
    values = sum(r["values"] for r in rows)
    evaluate = sum(r["evaluate"] for r in rows)
    total = sum(r["encrypt"] + r["evaluate"] + r["decrypt"] for r in rows)
    lines += ["", f"all        {values} values in {sum(r['ciphertexts'] for r in rows)} ciphertexts: max error "
                  f"{max(r['max_abs_error'] for r in rows):.2e}, mean error "
                  f"{sum(r['mean_abs_error'] * r['values'] for r in rows) / values:.2e}; "
                  f"{1e6 * evaluate / values:.2f} ms per 1000 values evaluating, "
                  f"{1e6 * total / values:.2f} with encryption and decryption"]
    pred = report["predictions"]
    line = f"predictions {100 * pred['agreement']:.1f}% agree with plaintext"
    if "accuracy_plain" in pred:
        line += (f"; accuracy plaintext {100 * pred['accuracy_plain']:.1f}%, with the decrypted layers "
                 f"{100 * pred['accuracy_encrypted']:.1f}%")
    lines.append(line + f" (max logit difference {pred['max_logit_difference']:.2e}); {report['seconds']:.1f} s")
    return "\n".join(lines)


def _levels(n: int) -> str:
    return f"{n} level{'' if n == 1 else 's'}"
