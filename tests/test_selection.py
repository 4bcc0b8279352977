"""Aging evolution: the oldest leaves; the tournament winner is on the sample's Pareto front."""
import random

from search.engine.selection import Member, Population, tournament


def _dominates(a, b, goals):
    better = [(x >= y) if g == "max" else (x <= y) for x, y, g in zip(a, b, goals)]
    return all(better) and a != b


def test_aging_removes_the_oldest():
    pop = Population(3)
    evicted = [pop.add(Member(i, None, (float(10 - i),))) for i in range(6)]
    assert evicted[:3] == [None, None, None]
    # the best member (id 0, score 10) leaves first: age, not fitness, decides
    assert [m.id for m in evicted[3:]] == [0, 1, 2]
    assert [m.id for m in pop] == [3, 4, 5]


def test_winner_is_on_the_front_of_the_sample():
    goals = ("max", "max", "min")
    rng = random.Random(0)
    pop = Population(40)
    for i in range(40):
        pop.add(Member(i, None, (rng.random(), rng.random(), float(rng.randint(0, 5)))))
    for trial in range(300):
        r1, r2 = random.Random(trial), random.Random(trial)
        winner = tournament(pop, 8, goals, r1)
        sample = r2.sample(list(pop.members), 8)
        assert winner in sample
        assert not any(_dominates(m.scores, winner.scores, goals) for m in sample)


def test_every_front_member_can_win_and_dominated_never():
    goals = ("max", "max")
    pop = Population(5)
    scores = [(0.9, 0.1), (0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.0, 0.0)]
    for i, s in enumerate(scores):
        pop.add(Member(i, None, s))
    wins = {tournament(pop, 5, goals, random.Random(t)).id for t in range(200)}
    assert wins == {0, 1, 2}


def test_small_population_tournament():
    pop = Population(10)
    pop.add(Member(0, None, (0.5,)))
    assert tournament(pop, 8, ("max",), random.Random(0)).id == 0
