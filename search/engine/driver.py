"""The driver: proposes candidates, screens them, keeps workers busy, records everything.

One loop, one writer:

1. While a worker is free and the budget allows, propose a candidate: a seed
   formula (ids below the number of seeds), a random layer (the rest of the
   first P ids, and whenever the population is empty), or the mutated winner
   of a tournament. The first population is P proposals, not P layers that
   trained: most random layers are rejected, and waiting for P of them to
   train spent a whole default run's hour on random graphs without a single
   mutation. Its RNG is derived from (seed, id), so a resumed
   run proposes what a fresh run would have from that id on.
2. Screen it in the driver (validity, duplicate, equivalence, stability). A
   rejected candidate is recorded at once; a duplicate or equivalent one gets
   the scores of the record it points at (held until that one finishes if it
   is still training); the rest go to the executor.
3. Record what the executor finished; `ok` candidates join the population and
   the oldest member leaves. (Copies never join: their original already did.)
   With `confirm` on, an `ok` candidate whose scores would put it on the current
   Pareto front is first trained again on seed + 1, and recorded with the mean
   of the two seeds (each seed's scores in `seed_scores`, the second training's
   time under `stage_seconds["confirm"]`): one seed's luck does not make a front.

Candidates still training when a driver is killed are not recorded; a resumed
run continues after the highest recorded id, so their ids stay unused.

The budget counts records: a run with budget N ends with exactly N records,
rejected proposals included.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone

import numpy as np

from primitives import Graph, GraphError, parse
from primitives.util import finite_or_none as _num

from search.engine.hurdles import Hurdles
from search.engine.modes import Mode
from search.engine.mutation import mutate
from search.pareto import pareto_mask
from search.engine.selection import Member, Population, tournament

from evaluators.record import GRAPH_FIELDS, STATUSES, VERDICT


def candidate_rng(seed: int, candidate_id: int) -> random.Random:
    return random.Random(f"evonorm:{seed}:{candidate_id}")


def initial_seeds(config, mode: Mode) -> list[Graph]:
    """The known layers that open the run: --seed-formula ones, then (unless turned off) the
    reference library's layers that fit the mode and the run's proxies. Starting next to
    known-good layers is what lets a one-hour search on a small machine improve on them
    rather than spend its budget rediscovering normalisation from random graphs. On CNN
    proxies those are the CNN layers; on Transformer proxies the layers made for a
    Transformer position (`TRANSFORMER_LAYERS`: LayerNorm, RMSNorm, DyT, Derf, none); a run
    on both families starts from both."""
    from evaluators.proxies import families_of
    from primitives.library import REFERENCE_LAYERS, TRANSFORMER_LAYERS
    formulas = list(config.seed_formulas)
    if getattr(config, "library_seeds", False):
        families = families_of(config.archs)
        formulas += [f for name, f in REFERENCE_LAYERS.items()
                     if ("transformer" if name in TRANSFORMER_LAYERS else "cnn") in families]
    seeds, seen = [], set()
    for formula in formulas:
        graph = parse(formula)
        if graph.hash not in seen and mode.accept(graph):
            seen.add(graph.hash)
            seeds.append(graph)
    return seeds


class Driver:
    def __init__(self, config, mode: Mode, store, screen, executor, *, start_id: int = 0,
                 done: int = 0, progress=sys.stderr, progress_seconds: float = 2.0, on_record=None):
        self.config, self.mode, self.store, self.screen, self.executor = config, mode, store, screen, executor
        self.archs = tuple(config.archs)
        self.acc_keys = tuple(f"acc_{a}" for a in self.archs)
        self.objectives, self.goals = tuple(config.objectives), tuple(config.goals)
        self.population = Population(config.population)
        self.seeds = initial_seeds(config, mode)
        self.next_id = start_id
        self.done = done                      # records written, this session and before
        self.counts: Counter = Counter()      # status -> records, this session
        self.best = {k: -math.inf for k in self.acc_keys}
        self.front: list[tuple] = []          # objective points of the current front
        self.scores: dict[int, dict] = {}     # id -> acc_* and steps_trained of records with scores
        self.pending: dict[int, dict] = {}    # id -> record being trained
        self.held: dict[int, list] = defaultdict(list)  # original id -> records waiting for its scores
        self.held_on: dict[int, int] = {}     # held id -> the training id it waits for
        self.graphs: dict[int, Graph] = {}    # pending id -> graph (joins the population when ok)
        self.rung_steps = config.rung_steps(config.full_steps())
        self.hurdles = Hurdles(len(self.rung_steps), config.hurdle_share, config.hurdle_window)
        self.rung: dict[int, int] = {}        # pending id -> the rung it is training towards
        self.confirming: set[int] = set()     # pending ids training on their second seed
        # predictors fitted on the run's own records (search.engine.predictor; silent at first)
        from search.engine.predictor import FullScorePredictor, ProposalPredictor
        self.predictor = (FullScorePredictor(self.archs, self.rung_steps, self.rung_steps[-1])
                          if getattr(config, "predicted_hurdles", False) and len(self.rung_steps) > 1 else None)
        self.proposer = ProposalPredictor(self.archs) if getattr(config, "predicted_proposals", False) else None
        self.z = float(getattr(config, "predictor_z", 1.0))
        self.progress, self.progress_seconds, self.on_record = progress, progress_seconds, on_record
        self.started = time.monotonic()
        self.stopping = False                 # set by stop(): end run() at its next turn
        self._last_report = 0.0
        self._last_state, self._last_line = "", 0.0

    # -- resume ------------------------------------------------------------------------------------
    def restore(self, records, checkpoints=()) -> None:
        """Rebuild from recorded candidates (dicts in id order): Screen memory, known scores,
        best/front, the hurdles' rung scores, and the population as the last P `ok` records.
        `checkpoints` ((record, state) of candidates left between rungs) go back to training
        from where they stopped."""
        ok = []
        for r in records:
            self._learn(r)
            self._remember_rungs(r)
            self.screen.remember(r)
            accs = {k: r.get(k) for k in self.acc_keys}
            if any(_num(v) is not None for v in accs.values()):
                self.scores[int(r["id"])] = {**accs, "steps_trained": r.get("steps_trained")}
            if r.get("status") == "ok":
                ok.append(r)
                self._update_front(r)
        for r in ok[-self.config.population:]:
            self.population.add(Member(int(r["id"]), Graph.from_json(r["graph"]), self._point(r)))
        for record, state in checkpoints:
            cid = int(record["id"])
            self._remember_rungs(record)
            self.screen.remember(record)
            self.pending[cid], self.graphs[cid] = record, Graph.from_json(record["graph"])
            self.next_id = max(self.next_id, cid + 1)
            rung = int(record.pop("rung"))
            if record.pop("confirm", False):
                self._confirm(cid)
            else:
                self._submit(cid, rung, state)

    def _learn(self, record) -> None:
        """Give the predictors a recorded candidate (they keep `ok` ones with full scores)."""
        if record.get("status") != "ok":
            return
        if self.predictor is not None:
            self.predictor.add(record)
        if self.proposer is not None:
            parent = _num(record.get("parent_id"))
            known = self.scores.get(int(parent)) if parent is not None else None
            self.proposer.add(record, [_num(known.get(k)) for k in self.acc_keys] if known else None)

    def _remember_rungs(self, record) -> None:
        rungs = record.get("rung_scores")
        for i, scores in enumerate(json.loads(rungs) if isinstance(rungs, str) else rungs or []):
            if i < len(self.rung_steps) - 1 and scores.get("steps") == self.rung_steps[i]:
                self.hurdles.add(i, [scores[k] for k in self.acc_keys])

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> int:
        """Propose, screen, train and record until the budget is reached. Returns records written."""
        budget = self.config.budget
        written_before = self.done
        proposed = self.done + len(self.pending)
        while self.done < budget and not self.stopping:
            checked = 0
            while (proposed < budget and self.executor.in_flight < self.executor.capacity
                   and checked < 64):
                self._propose()
                proposed += 1
                checked += 1
            busy = proposed < budget and self.executor.in_flight < self.executor.capacity
            for finished in self.executor.wait(timeout=0 if busy else 0.5):
                self._finish(finished)
            flush_if_due = getattr(self.store, "flush_if_due", None)
            if flush_if_due is not None:
                flush_if_due()
            if not self.executor.in_flight and proposed >= budget and self.done < budget:
                raise RuntimeError(f"driver stalled: {budget - self.done} records held with no original")
            self.report()
        self.report(force=True)
        return self.done - written_before

    def stop(self) -> None:
        """End `run` at its next turn (safe from another thread or a signal handler): what
        was recorded stays, candidates in training are dropped, and a resumed run proposes
        them again from the same ids."""
        self.stopping = True

    def _propose(self) -> None:
        cid = self.next_id
        self.next_id += 1
        rng = candidate_rng(self.config.seed, cid)
        parent_id, mutation = None, "random"
        if cid < len(self.seeds):
            graph, mutation = self.seeds[cid], "seed"
        elif len(self.population) == 0 or cid < self.config.population:
            graph = self.mode.random_graph(rng)
        else:
            parent = tournament(self.population, self.config.tournament, self.goals, rng)
            try:
                graph, mutation = mutate(parent.graph, rng, self.mode)
                parent_id = parent.id
            except GraphError:          # a parent with no valid mutation in reach: start afresh
                graph = self.mode.random_graph(rng)
            if parent_id is not None and self.proposer is not None and self.proposer.ready():
                graph, mutation, parent_id = self._best_child(rng, (graph, mutation, parent_id))
        start = time.perf_counter()
        check = self.screen.check(graph, cid)
        screen_seconds = time.perf_counter() - start
        record = {"id": cid, "parent_id": parent_id, "mutation": mutation,
                  **{k: check.get(k) for k in GRAPH_FIELDS + VERDICT},
                  **{k: None for k in self.acc_keys}, "steps_trained": None,
                  "seconds": screen_seconds, "worker": "driver",
                  "stage_seconds": dict(check.get("stage_seconds") or {})}
        status = record["status"]
        if status is None:
            self.pending[cid] = record
            self.graphs[cid] = graph
            self._submit(cid, 0, None)
        elif status in ("duplicate", "equivalent") and record["equivalent_to"] is not None:
            original = int(record["equivalent_to"])
            original = self.held_on.get(original, original)   # a copy of a copy waits for the same
            if original in self.pending:
                self.held[original].append(record)
                self.held_on[cid] = original
            else:
                record.update(self.scores.get(original, {}))
                self._write(record)
        else:
            self._write(record)

    def _best_child(self, rng, first):
        """Of `first` and `proposal_children - 1` more children (each of its own tournament,
        all from the candidate's rng, so a resumed run proposes the same), the one whose
        optimistic predicted point (mean + z sd per proxy) adds the most hypervolume to the
        current front; a child the screen has seen comes last; ties keep the earliest."""
        from search.engine.predictor import optimistic_gain
        children = [first]
        for _ in range(int(self.config.proposal_children) - 1):
            parent = tournament(self.population, self.config.tournament, self.goals, rng)
            try:
                graph, mutation = mutate(parent.graph, rng, self.mode)
            except GraphError:
                continue
            children.append((graph, mutation, parent.id))
        if len(children) == 1:
            return first
        points = []
        for graph, _, pid in children:
            known = self.scores.get(pid) or {}
            mu, sd = self.proposer.predict(graph, [_num(known.get(k)) for k in self.acc_keys])
            points.append(self._objective_point(mu + self.z * sd, graph))
        pool = np.asarray(self.front + points, dtype=float)
        reference = [float(np.nanmin(pool[:, j])) - 0.01 if g == "max" else float(np.nanmax(pool[:, j])) + 1.0
                     for j, g in enumerate(self.goals)]
        best, best_score = 0, None
        for i, ((graph, _, _), point) in enumerate(zip(children, points)):
            score = (not self._seen(graph), optimistic_gain(self.front, point, self.goals, reference),
                     float(np.sum(point[:len(self.acc_keys)])))
            if best_score is None or score > best_score:
                best, best_score = i, score
        return children[best]

    def _seen(self, graph) -> bool:
        duplicate = getattr(self.screen, "duplicate", None)
        if duplicate is not None:
            return duplicate.key(graph) in duplicate.seen
        return graph.hash in getattr(self.screen, "hashes", {})

    def _objective_point(self, accs, graph) -> tuple:
        """`_point` of a record with accuracies `accs` (archs order) and the graph's own
        objectives (described only when a cost or a depth is one)."""
        from evaluators.record import describe
        own = describe(graph) if set(self.objectives) - set(self.acc_keys) else {}
        return self._point({**own, **dict(zip(self.acc_keys, accs))})

    def _submit(self, cid: int, rung: int, state: bytes | None) -> None:
        """Train candidate `cid` to the end of `rung` (from `state`, the previous rung's)."""
        self.rung[cid] = rung
        graph_json = self.pending[cid]["graph"]
        if len(self.rung_steps) == 1:
            self.executor.submit(cid, graph_json)
        else:
            self.executor.submit(cid, {"graph": graph_json, "steps": self.rung_steps[rung],
                                       "total": self.rung_steps[-1], "state": state})

    def _finish(self, finished) -> None:
        cid = finished.candidate_id
        record, result = self.pending[cid], finished.result
        if cid in self.confirming:
            self.confirming.discard(cid)
            _absorb_confirmation(record, result, self.acc_keys, self.config.seed + 1)
        else:
            _absorb(record, result, self.acc_keys, finished.worker)
            rung = self.rung.pop(cid, 0)
            if record["status"] == "ok" and rung < len(self.rung_steps) - 1:
                if self._clears_hurdle(cid, record, rung, result.get("checkpoint")):
                    return
            if self._needs_confirmation(record):
                record["seed_scores"] = [{"seed": self.config.seed, **{k: record[k] for k in self.acc_keys}}]
                self.store.save_checkpoint(cid, {**record, "rung": len(self.rung_steps) - 1,
                                                 "confirm": True}, b"")
                self._confirm(cid)
                return
        del self.pending[cid]
        graph = self.graphs.pop(cid)
        self.store.drop_checkpoint(cid)
        self._write(record)
        accs = {k: record[k] for k in self.acc_keys}
        if record["status"] == "ok" and all(v is not None for v in accs.values()):
            self.population.add(Member(record["id"], graph, self._point(record)))
        for waiting in self.held.pop(record["id"], []):
            del self.held_on[waiting["id"]]
            waiting.update(accs, steps_trained=record.get("steps_trained"),
                           seed_scores=record.get("seed_scores"))
            self._write(waiting)

    def _clears_hurdle(self, cid: int, record: dict, rung: int, state: bytes | None) -> bool:
        """Judge a candidate at the end of a rung against its rung peers: it goes on to the
        next rung (True, checkpointed for resume) or is `stopped` with the rung's scores."""
        point = [record[k] for k in self.acc_keys]
        record.setdefault("rung_scores", []).append(
            {"steps": self.rung_steps[rung], **{k: record[k] for k in self.acc_keys}})
        if any(v is None for v in point) or state is None:
            record.update(status="failed", reason=f"no scores or state at rung {rung}")
            return False
        verdict = self._predicted_verdict(cid, record, rung, point) or self.hurdles.judge(rung, point)
        self.hurdles.add(rung, point)
        if not verdict.passed:
            record.update(status="stopped", reason=f"{verdict.reason} ({self.rung_steps[rung]} steps)")
            return False
        self.store.save_checkpoint(cid, {**record, "rung": rung + 1}, state)
        self._submit(cid, rung + 1, state)
        return True

    def _predicted_verdict(self, cid: int, record: dict, rung: int, point):
        """The hurdle on predicted full scores (None while the predictor is silent): stop only
        when the current front dominates even the optimistic point, each proxy's predicted
        mean plus z standard deviations."""
        if self.predictor is None:
            return None
        curves = record.get("loss_curves")
        prediction = self.predictor.predict(rung, self.graphs[cid], point,
                                            json.loads(curves) if isinstance(curves, str) else curves)
        if prediction is None:
            return None
        from search.engine.predictor import predicted_stop
        mu, sd = prediction
        optimistic = self._objective_point(mu + self.z * sd, self.graphs[cid])
        stop = predicted_stop(self.front, optimistic, self.goals)
        guess = ", ".join(f"{k[4:]} {m:.3f}±{s:.3f}" for k, m, s in zip(self.acc_keys, mu, sd))
        return PredictedVerdict(not stop, f"predicted full scores {guess}: the front dominates them "
                                          f"even at +{self.z:g} sd")

    def _needs_confirmation(self, record: dict) -> bool:
        """An `ok` candidate (fully trained, on one seed) that would enter the current front."""
        if not self.config.confirm or record["status"] != "ok" or record.get("seed_scores"):
            return False
        if any(_num(record.get(k)) is None for k in self.objectives):
            return False
        return bool(pareto_mask(self.front + [self._point(record)], self.goals)[-1])

    def _confirm(self, cid: int) -> None:
        """Train a front candidate again, in full, on the next seed."""
        self.confirming.add(cid)
        self.executor.submit(cid, {"graph": self.pending[cid]["graph"], "steps": self.rung_steps[-1],
                                   "total": self.rung_steps[-1], "state": None,
                                   "seed": self.config.seed + 1})

    def _write(self, record: dict) -> None:
        record["created_at"] = datetime.now(timezone.utc)
        record["stage_seconds"] = json.dumps(record.get("stage_seconds") or {}, sort_keys=True)
        for key in ("rung_scores", "seed_scores"):
            if isinstance(record.get(key), list):
                record[key] = json.dumps(record[key])
        self.store.append(record)
        self.done += 1
        accs = {k: record.get(k) for k in self.acc_keys}
        if any(v is not None for v in accs.values()):
            self.scores[record["id"]] = {**accs, "steps_trained": record.get("steps_trained")}
        self.counts[record["status"]] += 1
        if record["status"] == "ok":
            self._update_front(record)
            self._learn(record)
        if self.on_record is not None:
            self.on_record(self, record)

    # -- objectives, front, progress --------------------------------------------------------------------
    def _point(self, record) -> tuple:
        return tuple(float(record[k]) for k in self.objectives)

    def _update_front(self, record) -> None:
        for k in self.acc_keys:
            v = _num(record.get(k))
            if v is not None and v > self.best[k]:
                self.best[k] = v
        if any(_num(record.get(k)) is None for k in self.objectives):
            return
        points = self.front + [self._point(record)]
        self.front = [p for p, keep in zip(points, pareto_mask(points, self.goals)) if keep]

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is None or (not force and now - self._last_report < self.progress_seconds):
            return
        self._last_report = now
        elapsed = now - self.started
        session = sum(self.counts.values())
        funnel = " ".join(f"{s} {self.counts[s]}" for s in STATUSES if self.counts[s])
        best = " ".join(f"{k[4:]} {v:.3f}" for k, v in self.best.items() if v > -math.inf) or "-"
        describe = getattr(self.executor, "describe", None)   # e.g. "training 1 | queued 1 | workers 1/2"
        work = (describe() if describe else None) or f"training {len(self.pending)}"
        state = (f"[{self.done}/{self.config.budget}] {session / max(elapsed, 1e-9) * 60:.1f}/min "
                 f"| {funnel or 'nothing yet'} | {work} | best {best} "
                 f"| front {len(self.front)}")
        line = f"{state} | {elapsed:.0f}s"
        if getattr(self.progress, "isatty", lambda: False)():  # one line, redrawn in place
            print(f"\r\033[K{line}", end="\n" if force else "", file=self.progress, flush=True)
        elif force or state != self._last_state or now - self._last_line >= 60:  # a log: changes only
            print(line, file=self.progress, flush=True)
            self._last_state, self._last_line = state, now


class PredictedVerdict:
    """A hurdle decision on predicted full scores (the raw hurdle's HurdleVerdict's face)."""

    def __init__(self, passed: bool, reason: str):
        self.passed, self.reason = passed, reason


def _absorb(record: dict, result: dict, acc_keys, worker: str) -> None:
    """Fold a training result (a rung's or the whole) into the candidate's record."""
    record["status"] = result.get("status", "failed")
    record["reason"] = result.get("reason")
    for k in acc_keys:
        record[k] = _num(result.get(k))
    record["steps_trained"] = result.get("steps_trained")
    if result.get("loss_curves") is not None:
        record["loss_curves"] = result["loss_curves"]
    _absorb_cached(record, result)
    record["seconds"] += float(result.get("seconds") or 0.0)
    stages = record["stage_seconds"]
    for stage, seconds in (result.get("stage_seconds") or {}).items():
        stages[stage] = stages.get(stage, 0.0) + float(seconds)
    record["worker"] = worker


def _absorb_confirmation(record: dict, result: dict, acc_keys, seed: int) -> None:
    """Fold the second seed's full training into a front candidate's record: the scores
    become the mean of the two seeds; a second training that is not `ok` settles the
    record with its status (the first seed's scores stay, as measured)."""
    second = {k: _num(result.get(k)) for k in acc_keys}
    record["seed_scores"].append({"seed": seed, **second})
    _absorb_cached(record, result)
    seconds = float(result.get("seconds") or 0.0)
    record["seconds"] += seconds
    record["stage_seconds"]["confirm"] = record["stage_seconds"].get("confirm", 0.0) + seconds
    status = result.get("status", "failed")
    if status != "ok" or any(v is None for v in second.values()):
        record.update(status=status if status != "ok" else "failed",
                      reason=f"seed {seed}: {result.get('reason') or 'no scores'}")
        return
    for k in acc_keys:
        record[k] = sum(s[k] for s in record["seed_scores"]) / len(record["seed_scores"])


def _absorb_cached(record: dict, result: dict) -> None:
    """`cached` stays true only while every training behind the record came from the cache."""
    cached = result.get("cached")
    if cached is not None:
        before = record.get("cached")
        record["cached"] = bool(cached) if before is None else bool(before) and bool(cached)

