"""Protocols 1-4 on the driver: the cheap screen every candidate passes through.

`Screen.check` runs validity, duplicate, equivalence and stability in order,
stops at the first rejection, and remembers what it has seen so later
duplicates and functional equivalents point at the earlier candidate. It needs
no dataset and no trainer, so the driver imports it without the training stack.
"""
from __future__ import annotations

import json

from primitives import FormulaError, Graph, GraphError, parse

from .protocols import Duplicate, Equivalence, Stability, Validity, fingerprint
from .record import describe, undescribed


def to_graph(graph_or_formula) -> Graph:
    """A Graph from a Graph, a formula or canonical graph JSON; raises FormulaError/GraphError."""
    if isinstance(graph_or_formula, Graph):
        return graph_or_formula
    if isinstance(graph_or_formula, str) and graph_or_formula.lstrip().startswith("{"):
        return Graph.from_json(graph_or_formula)
    return parse(graph_or_formula)


COPIES = ("duplicate", "equivalent")   # statuses whose equivalent_to names the original


def _stages(record: dict) -> set:
    """The protocols a stored record went through, from its stage_seconds (a dict or its
    JSON); when it does not say (no validity entry), every protocol is assumed."""
    stages = record.get("stage_seconds")
    if isinstance(stages, str):
        try:
            stages = json.loads(stages)
        except ValueError:
            stages = None
    if not isinstance(stages, dict) or "validity" not in stages:
        return {"validity", "duplicate", "equivalence", "stability"}
    return set(stages)


class Screen:
    """Protocols 1-4, with memory of the candidates seen (duplicates, equivalents)."""

    def __init__(self, config=None):
        """`config`: an `EvalConfig` (its stability_threshold and seed are used); None
        takes the protocols' defaults."""
        self.config = config
        stability = {} if config is None else {"threshold": config.stability_threshold, "seed": config.seed}
        self.validity = Validity()
        self.duplicate = Duplicate()
        self.equivalence = Equivalence()
        self.stability = Stability(**stability)
        self.protocols = (self.validity, self.duplicate, self.equivalence, self.stability)

    @property
    def stats(self) -> dict:
        return {p.name: p.stats() for p in self.protocols}

    def check(self, graph_or_formula, candidate_id: int = 0) -> dict:
        stage_seconds: dict[str, float] = {}
        try:
            graph = to_graph(graph_or_formula)
        except (FormulaError, GraphError) as err:
            return {**undescribed(graph_or_formula), "status": "invalid",
                    "reason": f"does not parse: {err}", "equivalent_to": None, "stage_seconds": stage_seconds}
        except Exception as err:  # e.g. a non-string: still data
            return {**undescribed(None), "status": "invalid", "reason": f"not a layer: {err}",
                    "equivalent_to": None, "stage_seconds": stage_seconds}
        record = describe(graph)
        verdict = None
        for protocol in self.protocols:
            before = protocol.seconds
            if protocol is self.equivalence:
                verdict, fp = protocol.check(graph)
                if verdict.status is None:
                    protocol.add(fp, candidate_id)
            else:
                verdict = protocol.check(graph)
            stage_seconds[protocol.name] = protocol.seconds - before
            if verdict.status is not None:
                break
        if self.duplicate.name in stage_seconds and verdict.status not in COPIES:
            self.duplicate.add(graph, candidate_id)  # a copy's key stays with its original
        return {**record, "status": verdict.status, "reason": verdict.reason,
                "equivalent_to": verdict.equivalent_to, "stage_seconds": stage_seconds}

    def remember(self, record: dict) -> None:
        """Rebuild memory from a stored record (needs "graph" JSON and "id"): its canonical
        (renamed) key, and its trajectory fingerprint when it reached the equivalence
        protocol. Cheap: no proxy training, only the fingerprint's few probe steps."""
        text, candidate_id = record.get("graph"), record.get("id")
        if not text or candidate_id is None:
            return
        try:
            graph = Graph.from_json(text)
        except Exception:
            return
        candidate_id = int(candidate_id)
        stages = _stages(record)
        if record.get("status") in ("invalid",) + COPIES or "duplicate" not in stages:
            return  # stopped before the duplicate protocol, or a copy (its original holds the key)
        self.duplicate.add(graph, candidate_id)
        if "equivalence" not in stages:
            return
        try:
            fp = fingerprint(graph)
        except Exception:
            return
        self.equivalence.add(fp, candidate_id)
