"""Named reference layers, written in the formula language.

The evaluators train them as baselines and the search can seed its first
population with them. Formulas follow the papers: BatchNorm/GroupNorm/
LayerNorm with their usual activations, EvoNorms (Liu et al. 2020),
PolyNorm (Zhuo et al. 2024, "PolyCom"), and learnable polynomial and
rational units behind batch normalisation; for Transformer positions, where a
layer sees tokens laid out (N, D, L) so that `channel_*` moments are per-token
statistics: LayerNorm, RMSNorm, DyT (Zhu et al. 2025, "Transformers without
Normalization") and Derf (erf in place of DyT's tanh, with a learnable shift),
and the identity, "no normalization".
"""
from __future__ import annotations

BN = "(x - batch_mean(x)) / batch_std(x) * gamma + beta"
GN = "(x - group_mean(x)) / group_std(x) * gamma + beta"
LN = "(x - layer_mean(x)) / layer_std(x) * gamma + beta"
BN_PLAIN = "(x - batch_mean(x)) / batch_std(x)"
_E2 = f"(({BN_PLAIN}) ** 2)"
SQUARE_NORMALISED = f"(({_E2} - batch_mean({_E2})) / batch_std({_E2}))"

REFERENCE_LAYERS: dict[str, str] = {
    "bn-relu": f"relu({BN})",
    "gn-relu": f"relu({GN})",
    # GELU(y) = y * Phi(y) = 0.5 * y * (1 + erf(y / sqrt 2))
    "ln-gelu": f"0.5 * ({LN}) * (1 + erf(({LN}) * 0.7071067811865476))",
    "evonorm-b0": "x / max(batch_std(x), v1 * x + instance_std(x)) * gamma + beta",
    "evonorm-b1": "x / max(batch_std(x), (x + 1) * instance_rms(x)) * gamma + beta",
    "evonorm-s0": "x * sigmoid(v1 * x) / group_std(x) * gamma + beta",
    "evonorm-s1": "x * sigmoid(x) / group_std(x) * gamma + beta",
    "evonorm-s2": "x * sigmoid(x) / group_rms(x) * gamma + beta",
    "bn-swish": f"({BN}) * sigmoid(v1 * ({BN}))",
    # PolyNorm: a weighted sum of RMS-normalised powers of x.
    "polynorm": "v1 * x / channel_rms(x) + v2 * x ** 2 / channel_rms(x ** 2)"
                " + v3 * x ** 3 / channel_rms(x ** 3) + beta",
    # A quadratic in a batch-normalised power basis: e + 0.4 * v1 * N(e**2), N a second batch
    # normalisation (AESPA's basis-wise normalisation; PolyNorm's normalised powers, over the
    # batch so that at inference both normalisations are constants and the layer stays a
    # per-channel quadratic of x). A raw square compounds a BatchNorm output's tail position
    # after position (max |y| 1,300 at init on mobilenetv2 for 0.2 * e**2), and a poly unit's
    # raw-power coefficients break the mobile proxies even at a rate of 0.001 x lr; in the
    # normalised basis the curvature is a plain per-channel weight, v1
    # (docs/units.md).
    "bn-poly": f"({BN_PLAIN} + 0.4 * v1 * {SQUARE_NORMALISED}) * gamma + beta",
    # One rational for all of a position's channels (KAT shares one per channel group): per
    # channel, the rational sat 2.5 points below BN-ReLU on mobilenetv2 with a 3.3-point seed
    # spread; shared, it is within a point of BN-ReLU on every proxy (docs/units.md).
    "bn-rational": f"rational({BN_PLAIN}, shared=1) * gamma + beta",
    # CryptoNets' square activation behind batch normalisation: the classic layer for
    # encrypted inference, the baseline of polynomial mode.
    "bn-square": f"({BN}) ** 2",
    # -- Transformer positions: tokens (N, D, L), channel moments are each token's statistics --
    # torch.nn.LayerNorm(D) over each token (eps 1e-5)
    "layernorm": "(x - channel_mean(x)) / channel_std(x) * gamma + beta",
    # torch.nn.RMSNorm(D, eps=1e-5): the language's default eps (LayerNorm's too). torch's own
    # default, eps=None, is the dtype's machine epsilon (1.19e-7 in float32): on tokens of unit
    # mean square the two differ by about 5e-6 relative (tests/test_transformer_layers.py)
    "rmsnorm": "x / channel_rms(x) * gamma",
    # DyT: weight * tanh(alpha * x) + bias, alpha one learnable scalar per layer starting at 0.5
    "dyt": "tanh(scalar(0.5) * x) * gamma + beta",
    # Derf: weight * erf(alpha * x + s) + bias, scalars alpha (0.5) and s (0)
    "derf": "erf(scalar(0.5) * x + scalar(0)) * gamma + beta",
    # no normalization at all: what a Transformer without a norm layer does
    "identity": "x",
}

# The layers every evaluation is compared against.
BASELINES = ("bn-relu", "gn-relu", "evonorm-b0", "evonorm-s0")
# Sample mode (no batch moments: the small-batch regime) is measured against BN-ReLU, which
# it should beat there, and the batch-free standards: GN-ReLU and the EvoNorm S-series.
SAMPLE_BASELINES = ("bn-relu", "gn-relu", "evonorm-s0", "evonorm-s1", "evonorm-s2")
# Polynomial mode (layers for encrypted inference) compares against BN-ReLU, the
# accuracy to approach, the square activation, the HE-friendly classic, and bn-poly, the
# library's best polynomial layer: the one a search has to beat to have found something.
POLYNOMIAL_BASELINES = ("bn-relu", "bn-square", "bn-poly")


# Transformer proxies (family "transformer") compare against the norms Transformers use and
# the two that replace normalization with a point-wise squashing function; none reads the batch
# or mixes positions, so they fit a causal model and every mode's batch-free regime alike.
TRANSFORMER_BASELINES = ("layernorm", "rmsnorm", "dyt", "derf")
# The layers made for Transformer positions (the baselines and "no normalization").
TRANSFORMER_LAYERS = TRANSFORMER_BASELINES + ("identity",)
FAMILIES = ("cnn", "transformer")


def baselines(mode: str = "batch", family: str = "cnn") -> tuple[str, ...]:
    """The reference layers a search in `mode`, or an evaluation of its layers, is compared to:
    on the CNN proxies (`family="cnn"`) per mode; on the Transformer proxies
    (`family="transformer"`) always `TRANSFORMER_BASELINES`."""
    if family == "transformer":
        return TRANSFORMER_BASELINES
    if family != "cnn":
        raise ValueError(f"unknown proxy family {family!r} (choose from {', '.join(FAMILIES)})")
    return {"polynomial": POLYNOMIAL_BASELINES, "sample": SAMPLE_BASELINES}.get(mode, BASELINES)
