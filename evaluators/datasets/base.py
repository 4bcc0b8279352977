"""What every dataset shares: its error type and the download cache."""
from __future__ import annotations

import os
from pathlib import Path

from primitives.errors import EvonormError


class DatasetError(EvonormError, ValueError):
    """Bad dataset name, or data files that are missing, truncated or corrupt."""


# values of EVONORM_CACHE that turn the training cache off instead of naming a folder
OFF = ("off", "0", "no", "false", "none")


def cache_dir() -> Path:
    """evonorm's cache folder: `$EVONORM_CACHE` (unless it says off: OFF), else
    `$XDG_CACHE_HOME/evonorm`, else `~/.cache/evonorm`. Downloaded datasets live in it, the
    training cache (evaluators.cache) in its `trainings/`; EVONORM_CACHE=off turns only the
    latter off, so a download then goes to the default folder, not to one named `off`."""
    root = os.environ.get("EVONORM_CACHE", "").strip()
    if root and root.lower() not in OFF:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "evonorm"


class EpochStream:
    """Training batches, epoch by epoch, resumable: each epoch draws a permutation
    (`_permutation(n)`, from the stream's generator) of the `_size()` items and hands out
    `batch_size` of them at a time (`_batch(indices)`). `state()` (epoch, position, the
    epoch's permutation and the generator's state) restores with `load_state`, so a training
    halted at a rung continues with exactly the batches it would have seen."""

    def __init__(self, dataset, batch_size: int, generator):
        self.dataset, self.batch_size, self.generator = dataset, batch_size, generator
        self.epoch, self.position, self.perm = 0, 0, None

    def __iter__(self):
        return self

    def __next__(self):
        n = self._size()
        if self.perm is None or self.position + self.batch_size > n:
            if self.perm is not None:
                self.epoch += 1
            self.perm = self._permutation(n)
            self.position = 0
        start = self.position
        self.position += self.batch_size
        return self._batch(self.perm[start:start + self.batch_size])

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "perm": self.perm,
                "generator": self.generator.get_state()}

    def load_state(self, state: dict) -> None:
        self.epoch, self.position, self.perm = state["epoch"], state["position"], state["perm"]
        self.generator.set_state(state["generator"])
