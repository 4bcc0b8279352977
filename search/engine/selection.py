"""Multi-objective aging (regularized) evolution, after Real et al. 2019 and AutoML-Zero.

The population is a queue of at most P members in order of arrival. To make a
child: sample S members at random, keep the Pareto front of the sample over the
objectives (the K proxy accuracies, maximised; optionally parameters per
channel, minimised), draw the parent uniformly from that front, mutate it.
When a child enters, the oldest member leaves, however good it is.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from search.pareto import pareto_mask


@dataclass(frozen=True)
class Member:
    id: int
    graph: object                 # the primitives.Graph
    scores: tuple[float, ...]     # one value per objective, in `objectives` order


class Population:
    """At most `size` members; adding to a full population evicts the oldest."""

    def __init__(self, size: int):
        self.size = size
        self.members: deque[Member] = deque()

    def add(self, member: Member) -> Member | None:
        self.members.append(member)
        return self.members.popleft() if len(self.members) > self.size else None

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)


def tournament(population: Population, size: int, goals: tuple[str, ...],
               rng: random.Random) -> Member:
    """A parent: uniform over the Pareto front of `size` members sampled without replacement."""
    sample = rng.sample(list(population.members), min(size, len(population)))
    on_front = pareto_mask([m.scores for m in sample], goals)
    return rng.choice([m for m, keep in zip(sample, on_front) if keep])
