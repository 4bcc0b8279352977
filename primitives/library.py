"""Named reference layers, written in the formula language.

The evaluators train them as baselines and the search can seed its first
population with them. Formulas follow the papers: BatchNorm/GroupNorm/
LayerNorm with their usual activations, EvoNorms (Liu et al. 2020),
PolyNorm (Zhuo et al. 2024, "PolyCom"), and learnable polynomial and
rational units behind batch normalisation.
"""
from __future__ import annotations

BN = "(x - batch_mean(x)) / batch_std(x) * gamma + beta"
GN = "(x - group_mean(x)) / group_std(x) * gamma + beta"
LN = "(x - layer_mean(x)) / layer_std(x) * gamma + beta"
BN_PLAIN = "(x - batch_mean(x)) / batch_std(x)"

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
    # A cubic unit with a gentle start: the identity e plus a small square, 0.05 e**2. The
    # curvature a ReLU fit would give (0.2 e**2, ReLU's projection onto cubics under
    # e ~ N(0, 1)) reached 87% on resnet but left mobilenetv2 and efficientnet at chance:
    # their 12 unit positions in a row without a shortcut compound the square. 0.1 diverged
    # on mobilenetv2; 0.05 trains on all three; the identity alone is nearly a linear
    # network (README, "Polynomial and rational units").
    "bn-poly": f"(poly({BN_PLAIN}, order=3) + 0.05 * ({BN_PLAIN}) ** 2) * gamma + beta",
    # One rational for all of a position's channels (KAT shares one per channel group): per
    # channel, the rational sat 2.5 points below BN-ReLU on mobilenetv2 with a 3.3-point seed
    # spread; shared, it is within a point of BN-ReLU on every proxy (README).
    "bn-rational": f"rational({BN_PLAIN}, shared=1) * gamma + beta",
    # CryptoNets' square activation behind batch normalisation: the classic layer for
    # encrypted inference, the baseline of polynomial mode.
    "bn-square": f"({BN}) ** 2",
}

# The layers every evaluation is compared against.
BASELINES = ("bn-relu", "gn-relu", "evonorm-b0", "evonorm-s0")
# Sample mode (no batch moments: the small-batch regime) is measured against BN-ReLU, which
# it should beat there, and the batch-free standards: GN-ReLU and the EvoNorm S-series.
SAMPLE_BASELINES = ("bn-relu", "gn-relu", "evonorm-s0", "evonorm-s1", "evonorm-s2")
# Polynomial mode (layers for encrypted inference) compares against BN-ReLU, the
# accuracy to approach, and the square activation, the HE-friendly classic.
POLYNOMIAL_BASELINES = ("bn-relu", "bn-square")


def baselines(mode: str = "batch") -> tuple[str, ...]:
    """The reference layers a search in `mode`, or an evaluation of its layers, is compared to."""
    return {"polynomial": POLYNOMIAL_BASELINES, "sample": SAMPLE_BASELINES}.get(mode, BASELINES)
