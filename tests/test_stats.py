import math

import pytest

from search.analysis.stats import Paired, edge_of, paired, widened


def test_paired_interval_matches_a_hand_computation():
    mine = {1: 0.85, 2: 0.86, 3: 0.84, 4: 0.87, 5: 0.85}
    ref = {1: 0.84, 2: 0.845, 3: 0.835, 4: 0.85, 5: 0.842}
    # by hand: d = 0.010 0.015 0.005 0.020 0.008; mean 0.0116; sd 0.005941; t(0.975, 4) = 2.776445
    d = [0.010, 0.015, 0.005, 0.020, 0.008]
    mean = sum(d) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    half = 2.7764451051977987 * sd / math.sqrt(5)
    result = paired(mine, ref)
    assert result.n == 5
    assert result.mean == pytest.approx(0.0116)
    assert (result.low, result.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert result.verdict == "better"


def test_paired_uses_only_seeds_both_finished_and_says_within():
    result = paired({1: 0.80, 2: 0.90, 3: None, 4: 0.7}, {1: 0.81, 2: 0.88, 3: 0.85, 5: 0.9})
    assert result.n == 2 and result.mean == pytest.approx(0.005)
    assert result.low < 0 < result.high and result.verdict == "within"
    assert paired({1: 0.5}, {1: 0.4}) == Paired(1, pytest.approx(0.1), None, None)
    assert paired({1: 0.5}, {2: 0.4}).verdict == "n/a"
    assert paired({1: 0.70, 2: 0.71, 3: 0.69}, {1: 0.80, 2: 0.80, 3: 0.81}).verdict == "worse"


def test_edges_on_the_log_scale_and_widening():
    low, high = 0.02, 0.5
    assert edge_of(0.457, low, high) == "high" and edge_of(0.0134 * 20, low, high) is None
    assert edge_of(0.021, low, high) == "low" and edge_of(0.1, low, high) is None
    assert widened(low, high, "high") == (0.02, 2.0) and widened(low, high, "low") == (0.005, 0.5)
