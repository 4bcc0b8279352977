"""Layers under homomorphic encryption (CKKS): depth, measured input ranges, the exported
document, and the evaluation of a layer with TenSEAL (docs/he.md).

A layer whose eval-mode output is per channel a polynomial of the element alone
(`Graph.pointwise_at_inference`) is, once trained, a C x (d + 1) coefficient table
(`primitives.coefficients`). Under CKKS what a deployment pays for it is its
multiplicative depth (`Graph.he_depth`: ceil(log2(d + 1)) levels) and what it must be
sized for is how large its inputs get: a CKKS value must stay inside the integer headroom
the modulus leaves above the scale, and a Chebyshev evaluation is accurate only on the
interval it was set up for. So the exported document (`he_export`, `evonorm export
--he`) holds, per layer position and channel, the power-basis coefficients and the input
range measured on real activations of the trained network (min, max and a high quantile
of |x|), plus the depth and CKKS parameters that fit it.

The document is plain JSON, `"format": "evonorm-he"`, `"version": 1`, loadable without
evonorm; `evaluate_position` is its numpy reading. TenSEAL (the `he` extra) is imported
only where something is encrypted (`CKKS`, `fits_depth`).
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import torch

from .coefficients import NotPolynomialError, coefficient_table
from .errors import EvonormError
from .graph import Graph, he_depth_for_degree

FORMAT = "evonorm-he"
VERSION = 1
QUANTILE = 0.999           # the high quantile of |x| measured per channel
INTERVAL_MARGIN = 0.1      # the suggested interval: the measured [min, max] widened by this share of its width
SCALE_BITS = 40            # CKKS scale 2^40 and 40-bit primes between levels
EDGE_BITS = 60             # the first (data) and the special (key-switching) primes
# SEAL's largest coefficient modulus (bits) per ring dimension at 128-bit security
MAX_MODULUS_BITS = {4096: 109, 8192: 218, 16384: 438, 32768: 881}
DEPTH_SCHEME = ("per channel, y = sum_k c_k x^k with real plaintext coefficients in the power basis; every "
                "multiplication (ciphertext or plaintext) consumes one rescaling level; the powers by a product "
                "tree with the coefficient as one more factor, so c_k x^k is ceil(log2(k + 1)) levels deep and "
                "the layer ceil(log2(d + 1)): what TenSEAL 0.3.18's CKKSVector.polyval consumes (measured)")


class HEError(EvonormError, ValueError):
    """A layer or a document that cannot be evaluated under encryption, or TenSEAL missing."""


# -- CKKS parameters -------------------------------------------------------------------------------

def ckks_parameters(depth: int, scale_bits: int = SCALE_BITS, edge_bits: int = EDGE_BITS) -> dict:
    """CKKS parameters with exactly `depth` multiplicative levels: the coefficient modulus
    [edge, scale x depth, edge] bits, the smallest ring dimension that holds it at 128-bit
    security (SEAL's table), the scale, and the largest |value| a ciphertext holds at its
    last level (2^(edge - scale - 1): the first prime's headroom above the scale)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer, got {depth!r}")
    bits = [edge_bits] + [scale_bits] * depth + [edge_bits]
    rings = [n for n, most in sorted(MAX_MODULUS_BITS.items()) if sum(bits) <= most]
    if not rings:
        raise HEError(f"depth {depth} needs {sum(bits)} modulus bits, more than any ring dimension up to "
                      f"32768 holds at 128-bit security (bootstrapping is beyond this export)")
    ring = rings[0]
    return {"poly_modulus_degree": ring, "coeff_mod_bit_sizes": bits, "global_scale_bits": scale_bits,
            "slots": ring // 2, "security_bits": 128, "max_abs_value": 2.0 ** (edge_bits - scale_bits - 1)}


# -- the layer's positions in a network and their measured ranges -------------------------------------

def layer_positions(model: torch.nn.Module, graph: Graph) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every instance of `graph`'s layer in `model` (compiled or exported:
    its class carries the graph's hash), in the model's module order."""
    return [(name, m) for name, m in model.named_modules()
            if getattr(type(m), "graph_hash", None) == graph.hash]


def _as_input(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def measure_ranges(model: torch.nn.Module, graph: Graph, batches, quantile: float = QUANTILE) -> list[dict]:
    """Per position of `graph`'s layer in `model` (eval mode), per channel: the min and max
    of its input, the `quantile` of |input| (exact: the ceil(q n)-th smallest of the n values)
    and the max |output|, over the inputs of `batches` (tensors, or (x, y) pairs); and
    how many values were not finite (left out of the rest)."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile!r}")
    positions = layer_positions(model, graph)
    if not positions:
        raise HEError(f"the model holds no layer of {graph} (graph hash {graph.hash})")
    batches = [_as_input(b) for b in batches]
    images = sum(len(b) for b in batches)
    if not images:
        raise HEError("no inputs to measure the ranges on")
    stats = [dict(name=name, top=None, k=None) for name, _ in positions]

    def hook(i):
        def record(module, args, out):
            x = args[0].detach().double()
            c = x.shape[1]
            flat = x.transpose(0, 1).reshape(c, -1)                       # (C, values)
            finite = torch.isfinite(flat)
            s = stats[i]
            if s["k"] is None:                                            # first batch: sizes
                per_image = flat.shape[1] // x.shape[0]
                s.update(channels=c, shape=list(x.shape[1:]), n=images * per_image, bad=0,
                         min=torch.full((c,), math.inf, dtype=torch.float64),
                         max=torch.full((c,), -math.inf, dtype=torch.float64),
                         out=torch.zeros(c, dtype=torch.float64))
                s["k"] = s["n"] - math.ceil(quantile * s["n"]) + 1
            s["bad"] += int((~finite).sum())
            s["seen"] = s.get("seen", 0) + flat.shape[1]
            s["min"] = torch.minimum(s["min"], torch.where(finite, flat, math.inf).amin(1))
            s["max"] = torch.maximum(s["max"], torch.where(finite, flat, -math.inf).amax(1))
            top = torch.where(finite, flat.abs(), -1.0)
            if s["top"] is not None:
                top = torch.cat([s["top"], top], 1)
            s["top"] = top.topk(min(s["k"], top.shape[1]), dim=1).values
            y = out.detach().double().transpose(0, 1).reshape(c, -1)
            s["out"] = torch.maximum(s["out"], torch.where(torch.isfinite(y), y.abs(), 0.0).amax(1))
        return record

    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(positions)]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    out = []
    for s in stats:
        if s["k"] is None:
            raise HEError(f"position {s['name']} was never reached by the inputs")
        # a module called more than once per input (a shared layer) saw more values than
        # counted ahead: its quantile is then the ceil(q n)-th of the seen, an upper bound
        out.append({"name": s["name"], "channels": s["channels"], "shape": s["shape"],
                    "values_per_channel": s["seen"], "nonfinite": s["bad"],
                    "min": s["min"].tolist(), "max": s["max"].tolist(),
                    "abs_quantile": s["top"][:, -1].clamp_min(0).tolist(), "output_abs_max": s["out"].tolist()})
    return out


# -- the document ----------------------------------------------------------------------------------------

def he_export(model: torch.nn.Module, graph: Graph | str, batches=None, *, quantile: float = QUANTILE,
              interval: tuple[float, float] | None = None, source: dict | None = None) -> dict:
    """The "evonorm-he" document of `graph`'s layer as trained in `model`: per position
    (every instance of the layer in `model`, in module order) the coefficient table of its
    trained parameters and, when `batches` (inputs, e.g. the validation split's) are given,
    the measured input ranges. `interval` (lo, hi): the interval you mean to evaluate on,
    checked against the ranges (a warning per position they exceed); by default each
    position's suggested interval is its measured [min, max] widened by INTERVAL_MARGIN.
    `source`: what to record about where the ranges came from (dataset, split, arch).
    Raises HEError (NotPolynomialError) for a layer that is not a per-channel polynomial."""
    from .formula import parse

    graph = parse(graph) if isinstance(graph, str) else graph
    _check_exportable(graph)
    positions = layer_positions(model, graph)
    if not positions:
        raise HEError(f"the model holds no layer of {graph} (graph hash {graph.hash})")
    ranges = measure_ranges(model, graph, batches, quantile) if batches is not None else [None] * len(positions)
    tables = [coefficient_table(graph, {k: v.detach().cpu() for k, v in m.state_dict().items()},
                                getattr(m, "channels", None)) for _, m in positions]
    return he_document(graph, tables, ranges, names=[n for n, _ in positions], quantile=quantile,
                       interval=interval, source=source)


def he_document(graph: Graph, tables, ranges=None, *, names=None, quantile: float = QUANTILE,
                interval: tuple[float, float] | None = None, source: dict | None = None) -> dict:
    """The document from coefficient tables ((C, d + 1) each) and measured ranges (as
    `measure_ranges` gives them, or None per position): see docs/he.md for every key."""
    _check_exportable(graph)
    tables = [torch.as_tensor(t, dtype=torch.float64) for t in tables]
    ranges = list(ranges) if ranges is not None else [None] * len(tables)
    names = list(names) if names is not None else [f"position{i}" for i in range(len(tables))]
    if not len(tables) == len(ranges) == len(names):
        raise ValueError("one table, one range and one name per position")
    if interval is not None:
        interval = (float(interval[0]), float(interval[1]))
        if not interval[0] < interval[1]:
            raise ValueError(f"interval must be (lo, hi) with lo < hi, got {interval}")
    depth = graph.he_depth
    params = ckks_parameters(depth)
    warnings, positions = [], []
    for i, (name, table, measured) in enumerate(zip(names, tables, ranges)):
        position = {"index": i, "name": name, "channels": int(table.shape[0]),
                    "coefficients": table.tolist(), "range": None, "interval": list(interval) if interval else None}
        if measured is not None:
            if measured["channels"] != table.shape[0]:
                raise ValueError(f"{name}: {measured['channels']} channels measured, {table.shape[0]} in the table")
            position["shape"] = measured["shape"]
            position["range"] = {k: measured[k] for k in ("values_per_channel", "nonfinite", "min", "max",
                                                           "abs_quantile", "output_abs_max")}
            warnings += _range_warnings(i, name, table, measured, interval, params)
            if interval is None:
                position["interval"] = suggested_interval(measured)
        positions.append(position)
    return {
        "format": FORMAT, "version": VERSION,
        "formula": str(graph), "graph_hash": graph.hash,
        "degree": graph.inference_degree, "depth": depth, "depth_scheme": DEPTH_SCHEME,
        "basis": "power", "evaluate": "y = sum_k coefficients[c][k] * x ** k, x an element of channel c "
                                      "(axis 1 of the layer's input), constant term first",
        "ckks": {**params, "global_scale": 2.0 ** params["global_scale_bits"]},
        "quantile": quantile if any(r is not None for r in ranges) else None,
        "source": source,
        "positions": positions,
        "warnings": warnings,
    }


def suggested_interval(measured: dict, margin: float = INTERVAL_MARGIN) -> list[float] | None:
    """A position's measured [min, max] over its channels, widened by `margin` of its width
    on each side (None when nothing finite was measured)."""
    lo, hi = min(measured["min"]), max(measured["max"])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    pad = margin * max(hi - lo, 1e-12)
    return [lo - pad, hi + pad]


def _range_warnings(i, name, table, measured, interval, params) -> list[str]:
    where = f"position {i} ({name})"
    out = []
    if measured["nonfinite"]:
        out.append(f"{where}: {measured['nonfinite']} input values were not finite (escaped) and are left out")
    lo, hi = measured["min"], measured["max"]
    if interval is not None:
        outside = [c for c in range(len(lo)) if lo[c] < interval[0] or hi[c] > interval[1]]
        if outside:
            out.append(f"{where}: measured inputs [{min(lo):.4g}, {max(hi):.4g}] exceed the interval "
                       f"[{interval[0]:.4g}, {interval[1]:.4g}] in {len(outside)} of {len(lo)} channels")
    # the largest |c_k x^k| and |y| over the measured range must fit CKKS's headroom
    bound = torch.tensor([max(abs(a), abs(b)) for a, b in zip(lo, hi)], dtype=torch.float64)
    bound = torch.where(torch.isfinite(bound), bound, torch.zeros_like(bound))
    powers = bound.unsqueeze(1) ** torch.arange(table.shape[1], dtype=torch.float64)
    largest = max(float((table.abs() * powers).max()), max(measured["output_abs_max"], default=0.0))
    if largest >= params["max_abs_value"]:
        out.append(f"{where}: terms reach {largest:.4g} over the measured range, beyond the "
                   f"{params['max_abs_value']:.4g} a {params['coeff_mod_bit_sizes'][0]}-bit first prime leaves above "
                   f"a 2^{params['global_scale_bits']} scale: raise the first prime's bits or lower the scale")
    return out


def _check_exportable(graph: Graph) -> None:
    if graph.he_depth is None:
        why = ("is not a polynomial in x at inference" if graph.inference_degree is None else
               "mixes elements through an instance, group, layer or channel moment (it would need slot "
               "rotations, not a per-channel polynomial)")
        raise NotPolynomialError(f"{graph} {why}: it has no per-channel table to evaluate under encryption")
    if graph.inference_degree == 0:
        raise NotPolynomialError(f"{graph} is constant in x at inference: nothing to evaluate under encryption")


def dumps(document: dict) -> str:
    """The document as JSON text: objects indented, a list of numbers on one line (a table
    one row per line), non-finite numbers as null (JSON has none)."""
    return _dump(_finite(document), 0) + "\n"


def _dump(value, level: int) -> str:
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {_dump(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and not all(not isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _dump(v, level + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def evaluate_position(document: dict, index: int, x) -> np.ndarray:
    """Position `index`'s polynomial applied per channel to x (N, C, ...), in float64 numpy
    (Horner's rule): the document's plaintext reading, the reference an encrypted run is
    compared with."""
    coefficients = np.asarray(document["positions"][index]["coefficients"], dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = np.zeros_like(x) + coefficients[:, -1].reshape(shape)
    for k in range(coefficients.shape[1] - 2, -1, -1):
        y = y * x + coefficients[:, k].reshape(shape)
    return y


# -- TenSEAL --------------------------------------------------------------------------------------------

def _tenseal():
    try:
        import tenseal
    except ImportError:
        raise HEError("TenSEAL is not installed: pip install 'evonorm[he]' (tenseal==0.3.18)") from None
    return tenseal


class CKKS:
    """A TenSEAL CKKS context made from `ckks_parameters` (or a depth), and the layer's
    evaluation under it: each channel's values packed into CKKS vectors of `slots` values,
    encrypted, evaluated with that channel's polynomial by TenSEAL's `polyval`, decrypted."""

    def __init__(self, params: dict | int):
        ts = _tenseal()
        self.params = ckks_parameters(params) if isinstance(params, int) else dict(params)
        self.slots = self.params["poly_modulus_degree"] // 2
        self.context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=self.params["poly_modulus_degree"],
                                  coeff_mod_bit_sizes=list(self.params["coeff_mod_bit_sizes"]))
        self.context.global_scale = 2.0 ** self.params["global_scale_bits"]
        self._ts = ts

    def polyval(self, values, coefficients) -> tuple[np.ndarray, dict]:
        """The polynomial `coefficients` (constant term first) on `values` (1-D) under
        encryption. Returns the decrypted values and the seconds spent encrypting,
        evaluating and decrypting, with the count of ciphertexts."""
        values = np.asarray(values, dtype=np.float64).ravel()
        coefficients = [float(c) for c in coefficients]
        out = np.empty_like(values)
        seconds = {"encrypt": 0.0, "evaluate": 0.0, "decrypt": 0.0, "ciphertexts": 0}
        for start in range(0, len(values), self.slots):
            chunk = values[start:start + self.slots]
            t = time.perf_counter()
            vector = self._ts.ckks_vector(self.context, chunk.tolist())
            seconds["encrypt"] += time.perf_counter() - t
            t = time.perf_counter()
            result = vector.polyval(coefficients)
            seconds["evaluate"] += time.perf_counter() - t
            t = time.perf_counter()
            out[start:start + len(chunk)] = result.decrypt()
            seconds["decrypt"] += time.perf_counter() - t
            seconds["ciphertexts"] += 1
        return out, seconds

    def evaluate(self, x, coefficients) -> tuple[np.ndarray, dict]:
        """A layer's table `coefficients` (C, d + 1) applied to x (N, C, ...) under
        encryption, channel by channel. Returns y (x's shape, float64) and the summed
        timings of `polyval`."""
        x = np.asarray(x, dtype=np.float64)
        coefficients = np.asarray(coefficients, dtype=np.float64)
        if coefficients.ndim != 2 or coefficients.shape[0] != x.shape[1]:
            raise HEError(f"{coefficients.shape[0] if coefficients.ndim == 2 else '?'} channels of coefficients "
                          f"for an input with {x.shape[1]}")
        y = np.empty_like(x)
        total = {"encrypt": 0.0, "evaluate": 0.0, "decrypt": 0.0, "ciphertexts": 0}
        for c in range(x.shape[1]):
            values, seconds = self.polyval(x[:, c].ravel(), coefficients[c])
            y[:, c] = values.reshape(x[:, c].shape)
            for k in total:
                total[k] += seconds[k]
        return y, total


# TenSEAL's words when a multiplication needs a level the context no longer has
_OUT_OF_LEVELS = ("scale out of bounds", "end of modulus switching chain")


def fits_depth(coefficients, levels: int, values=(0.5, -0.25, 1.0)) -> bool:
    """Whether a context with exactly `levels` multiplicative levels (`ckks_parameters`)
    evaluates the polynomial `coefficients` with TenSEAL's polyval; False when TenSEAL
    runs out of levels ("scale out of bounds")."""
    try:
        CKKS(levels).polyval(values, coefficients)
    except ValueError as err:
        if any(words in str(err) for words in _OUT_OF_LEVELS):
            return False
        raise
    return True
