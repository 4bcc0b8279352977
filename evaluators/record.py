"""The candidate record, defined once: its statuses, its fields (type and meaning) and
the parquet schema derived from them (the run directory's `candidates/part-*.parquet`).

Adding a column is one edit: a `Field` in FIELDS, in the place its column takes. The
schema (`schema`), the run store's value conversions and the readers of old part files
(a column they lack reads as null) follow from it; a field with `of_graph` is also in
every record the screens describe (`describe`) and the driver proposes. The `acc_<arch>`
placeholder stands for one float column per proxy architecture of the run.

Torch-free, and pyarrow only inside `schema`, so the result commands that read parquet
need not import the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# `stopped`: halted at a progressive hurdle, with the scores of the rung it reached.
STATUSES = ("ok", "invalid", "duplicate", "equivalent", "unstable", "low_quality", "stopped", "failed")

ACC = "acc_<arch>"     # the placeholder for the per-arch accuracy columns


@dataclass(frozen=True)
class Field:
    name: str
    type: str           # int64, float64, string, bool, timestamp, or json (a string holding JSON)
    meaning: str
    nullable: bool = True
    of_graph: Callable | None = None    # the value from the layer's Graph alone


# a loss curve's points (`loss_curves`): the mean training loss over each 1/CURVE_POINTS of the
# full budget's steps (evaluators.evaluate.loss_curve; the predictor's and the surrogate's curves too)
CURVE_POINTS = 30

FIELDS = (
    Field("id", "int64", "unique, in birth order", nullable=False),
    Field("parent_id", "int64", "the tournament winner it was mutated from; null in the first population"),
    Field("formula", "string", "the layer, printed", of_graph=str),
    Field("graph", "string", "the layer's canonical JSON", of_graph=lambda g: g.to_json()),
    Field("graph_hash", "string", "stable hash of the canonical JSON", of_graph=lambda g: g.hash),
    Field("status", "string", "one of STATUSES", nullable=False),
    Field("reason", "string", "why it was rejected or stopped; null when ok"),
    Field("equivalent_to", "int64", "the earlier candidate a duplicate or equivalent one copies"),
    Field(ACC, "float64", "accuracy on each proxy architecture; null when not trained"),
    Field("params_per_channel", "int64", "learnable parameters per channel",
          of_graph=lambda g: g.params_per_channel),
    Field("uses_batch_stats", "bool", "whether it uses batch moments", of_graph=lambda g: g.uses_batch_stats),
    Field("poly_degree", "int64", "degree in x when a polynomial of x, else null",
          of_graph=lambda g: g.poly_degree),
    Field("inference_degree", "int64", "degree in x of the eval-mode layer (batch moments constant)",
          of_graph=lambda g: g.inference_degree),
    Field("he_depth", "int64", "multiplicative depth of the eval-mode layer under CKKS (docs/he.md); "
          "null when not a per-channel polynomial at inference", of_graph=lambda g: g.he_depth),
    Field("seconds", "float64", "wall time spent on it: screen and training"),
    Field("worker", "string", "who settled it: a worker's name, or driver for the screen's verdicts"),
    Field("created_at", "timestamp", "when it was recorded (UTC)"),
    Field("mutation", "string", "how it was made: seed, random or the mutation applied"),
    Field("stage_seconds", "json", "seconds per protocol and training stage"),
    Field("steps_trained", "int64", "training steps per proxy behind the acc_<arch> scores"),
    Field("rung_scores", "json", "the scores at each progressive hurdle it reached"),
    Field("seed_scores", "json", "each seed's scores of a candidate confirmed on a second seed"),
    Field("loss_curves", "json", "per proxy, the training loss behind its acc_<arch> score: the mean over "
          f"each 1/{CURVE_POINTS} of the full budget's steps, the complete segments so far (a rung's curve is "
          "a prefix of the full one)"),
    Field("cached", "bool", "true when every training behind the record came from the cross-run training "
          "cache (its seconds are then the time the lookups took); null when nothing was trained"),
)

# the fields a screen's verdict fills in, besides the graph's (Screen.check, SurrogateScreen.check)
VERDICT = ("status", "reason", "equivalent_to")
GRAPH_FIELDS = tuple(f.name for f in FIELDS if f.of_graph is not None)


def acc_columns(archs) -> list[str]:
    """The accuracy columns of a run with these proxy archs, in order."""
    return [f"acc_{a}" for a in archs]


def columns(archs) -> list[tuple[str, Field]]:
    """(column name, its Field) of a run with these archs, in schema order."""
    out = []
    for f in FIELDS:
        out += [(name, f) for name in acc_columns(archs)] if f.name == ACC else [(f.name, f)]
    return out


def names(archs, *types: str) -> list[str]:
    """The column names of these types (e.g. "int64"), in schema order."""
    return [name for name, f in columns(archs) if f.type in types]


def schema(archs):
    """The fixed pyarrow schema of the candidate records of a run with these proxy archs."""
    import pyarrow as pa

    arrow = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string(), "json": pa.string(),
             "bool": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC")}
    return pa.schema([pa.field(name, arrow[f.type], nullable=f.nullable) for name, f in columns(archs)])


def describe(graph) -> dict:
    """The record fields that come from the graph alone."""
    return {f.name: f.of_graph(graph) for f in FIELDS if f.of_graph is not None}


def undescribed(formula=None) -> dict:
    """The graph's fields of a candidate that is no graph: all null but the formula text."""
    return {**dict.fromkeys(GRAPH_FIELDS), "formula": formula if isinstance(formula, str) else None}
