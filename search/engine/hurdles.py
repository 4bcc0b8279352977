"""Progressive hurdles: train in rungs, and stop a candidate its peers clearly beat.

After the Evolved Transformer's progressive dynamic hurdles and ASHA: a candidate
that passes the screen trains every proxy to the first rung's step count (a
share of the budget, on the full budget's learning-rate schedule), is scored, and
goes on to the next rung only if it is not Pareto-dominated (on the proxy
accuracies at that rung) by more than `share` of the candidates most recently
measured at the same rung. The hurdle thus moves with the population: early on,
when few peers exist, everyone passes (at least `min_peers` are needed); as the
search improves, the bar rises. Training continues from where the rung stopped,
so a candidate that clears every hurdle costs what it would without them, plus
one evaluation per rung.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HurdleVerdict:
    passed: bool
    dominated_by: int      # rung peers that beat the candidate on every objective
    peers: int             # rung peers it was compared with

    @property
    def reason(self) -> str:
        return f"dominated by {self.dominated_by} of {self.peers} candidates at this rung"


class Hurdles:
    """The rung memory of a run: the scores of the most recent candidates at each rung."""

    def __init__(self, rungs: int, share: float = 0.5, window: int = 32, min_peers: int = 4):
        self.share, self.min_peers = share, min_peers
        self.peers = [deque(maxlen=window) for _ in range(rungs)]

    def judge(self, rung: int, point) -> HurdleVerdict:
        """Whether a candidate scoring `point` (higher is better on every objective) at
        `rung` goes on. Does not remember the point: call `add` for that."""
        peers = self.peers[rung]
        if not peers:
            return HurdleVerdict(True, 0, 0)
        p, q = np.asarray(point, dtype=float), np.asarray(peers, dtype=float)
        dominated = int(np.sum(np.all(q >= p, axis=1) & np.any(q > p, axis=1)))
        passed = len(peers) < self.min_peers or dominated <= self.share * len(peers)
        return HurdleVerdict(passed, dominated, len(peers))

    def add(self, rung: int, point) -> None:
        self.peers[rung].append(tuple(float(v) for v in point))
